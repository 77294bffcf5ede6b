from __future__ import annotations

import base64
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from ocimodel.errors import OcimodelError
from ocimodel.registry.auth import (
    Authenticator,
    Challenge,
    Credentials,
    EcrCredentials,
    Keychain,
    config_credentials,
    default_keychain,
)
from ocimodel.registry.client import RegistryClient
from ocimodel.retry import RetryPolicy
from tests.harness.registry_stub import RegistryStub, isolate_credentials

PASSWORD = "pa55-Word-never-shown"
REPO = "library/busybox"


@pytest.fixture(autouse=True)
def docker_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate_credentials(monkeypatch, tmp_path / "home")


@pytest.fixture
def stub_with_blobs() -> Iterator[tuple[RegistryStub, list[str]]]:
    with RegistryStub() as stub:
        yield stub, [stub.add_blob(REPO, f"blob {i}".encode()) for i in range(5)]


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def client_for(stub: RegistryStub, creds: Credentials | None = None) -> RegistryClient:
    keychain = Keychain((lambda host: creds if host == stub.host else None,))
    return RegistryClient(stub.host, keychain=keychain, retry=RetryPolicy(sleep=lambda _: None))


def install_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, store: dict[str, list[str]]) -> Path:
    """A ``docker-credential-<name>`` on PATH answering from ``store``; returns the file it logs server URLs to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / f"{name}.calls"
    script = bin_dir / f"docker-credential-{name}"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"store = {store!r}\n"
        "server = sys.stdin.read().strip()\n"
        f"open({str(calls)!r}, 'a').write(server + '\\n')\n"
        "if sys.argv[1:] != ['get'] or server not in store:\n"
        "    print('credentials not found in native keychain')\n"
        "    sys.exit(1)\n"
        "print(json.dumps({'ServerURL': server, 'Username': store[server][0], 'Secret': store[server][1]}))\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


# -- credentials


def test_credentials_repr_hides_password() -> None:
    creds = Credentials("alice", PASSWORD)
    assert PASSWORD not in repr(creds) and PASSWORD not in str(creds)
    assert "alice" in repr(creds)


def test_docker_config_auths(docker_config: Path) -> None:
    write_json(
        docker_config / "config.json",
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpass")},
                "127.0.0.1:5000": {"auth": b64("local:pa:ss")},
                "http://registry.example.com/v1/": {"username": "fielduser", "password": "fieldpass"},
                "empty.example.com": {},
            }
        },
    )
    assert config_credentials("docker.io") == Credentials("hubuser", "hubpass")
    assert config_credentials("127.0.0.1:5000") == Credentials("local", "pa:ss")
    assert config_credentials("registry.example.com") == Credentials("fielduser", "fieldpass")
    assert config_credentials("empty.example.com") is None
    assert config_credentials("other.example.com") is None


def test_docker_hub_matched_under_podman_key(docker_config: Path) -> None:
    write_json(docker_config / "config.json", {"auths": {"docker.io": {"auth": b64("u:p")}}})
    assert config_credentials("docker.io") == Credentials("u", "p")


def test_malformed_auth_entry_is_named_without_content(docker_config: Path) -> None:
    write_json(docker_config / "config.json", {"auths": {"h.example.com": {"auth": "!!" + PASSWORD}}})
    with pytest.raises(OcimodelError, match="h.example.com") as err:
        config_credentials("h.example.com")
    assert PASSWORD not in str(err.value)


def test_cred_helper(docker_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = install_helper(tmp_path, monkeypatch, "test", {"127.0.0.1:5000": ["helperuser", "helpersecret"]})
    write_json(
        docker_config / "config.json",
        {
            "credHelpers": {"127.0.0.1:5000": "test", "fallback.example.com": "test"},
            "auths": {"fallback.example.com": {"auth": b64("inline:pw")}},
        },
    )
    assert config_credentials("127.0.0.1:5000") == Credentials("helperuser", "helpersecret")
    # "credentials not found" from the helper means none there: the inline entry still counts.
    assert config_credentials("fallback.example.com") == Credentials("inline", "pw")
    assert calls.read_text().split() == ["127.0.0.1:5000", "fallback.example.com"]


def test_creds_store_gets_docker_hub_server_url(
    docker_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = install_helper(tmp_path, monkeypatch, "store", {"https://index.docker.io/v1/": ["hub", "hubsecret"]})
    write_json(docker_config / "config.json", {"credsStore": "store", "auths": {"https://index.docker.io/v1/": {}}})
    assert config_credentials("docker.io") == Credentials("hub", "hubsecret")
    assert config_credentials("ghcr.io") is None
    assert calls.read_text().split() == ["https://index.docker.io/v1/", "ghcr.io"]


def test_missing_helper_is_a_clear_error(docker_config: Path) -> None:
    write_json(docker_config / "config.json", {"credsStore": "nonexistent-helper-xyz"})
    with pytest.raises(OcimodelError, match="docker-credential-nonexistent-helper-xyz .* not on PATH"):
        config_credentials("ghcr.io")


def test_lookup_order(docker_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = "registry.example.com"
    runtime = tmp_path / "run"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    write_json(runtime / "containers" / "auth.json", {"auths": {host: {"auth": b64("xdg:1")}}})
    assert config_credentials(host) == Credentials("xdg", "1")

    write_json(docker_config / "config.json", {"auths": {host: {"auth": b64("docker:2")}}})
    assert config_credentials(host) == Credentials("docker", "2")

    auth_file = write_json(tmp_path / "auth.json", {"auths": {host: {"auth": b64("authfile:3")}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    assert config_credentials(host) == Credentials("authfile", "3")

    explicit = Credentials("explicit", "4")
    assert default_keychain({host: explicit}).resolve(host) == explicit
    assert default_keychain({host: explicit}).resolve("elsewhere.example.com") is None
    assert default_keychain({"index.docker.io": explicit}).resolve("docker.io") == explicit


# -- challenges and tokens


def test_challenge_parse() -> None:
    challenge = Challenge.parse(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull,push",error="insufficient_scope"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull,push",
        "error": "insufficient_scope",
    }
    assert Challenge.parse('Basic realm="Registry \\"Realm\\""') == Challenge("basic", {"realm": 'Registry "Realm"'})
    assert Challenge.parse("Bearer realm=https://x/token, service=svc").params == {
        "realm": "https://x/token",
        "service": "svc",
    }


def test_bearer_anonymous_token_is_cached(stub_with_blobs: tuple[RegistryStub, list[str]]) -> None:
    stub, digests = stub_with_blobs
    stub.behaviour.auth = "bearer"
    with client_for(stub) as client:
        for digest in digests:
            assert b"".join(client.stream_blob(REPO, digest)).startswith(b"blob")
        assert client.head_blob(REPO, digests[0]) == len(b"blob 0")
    tokens = stub.token_requests()
    assert len(tokens) == 1
    assert tokens[0].authorization is None
    assert tokens[0].query == {"service": ["stub-registry"], "scope": [f"repository:{REPO}:pull"]}
    blob_gets = [r for r in stub.requests_to() if "/blobs/" in r.path]
    # Only the very first request went out bare (and drew the 401).
    assert [r.authorization for r in blob_gets] == [None] + ["Bearer"] * (len(digests) + 1)


def test_bearer_with_credentials(stub_with_blobs: tuple[RegistryStub, list[str]]) -> None:
    stub, digests = stub_with_blobs
    stub.behaviour.auth, stub.behaviour.users, stub.behaviour.anonymous_pull = "bearer", {"alice": PASSWORD}, False
    stub.behaviour.token_field, stub.behaviour.token_expires_in = "access_token", None
    with client_for(stub, Credentials("alice", PASSWORD)) as client:
        for digest in digests:
            b"".join(client.stream_blob(REPO, digest))
    assert [r.authorization for r in stub.token_requests()] == ["Basic"]


def test_bearer_wrong_password(stub_with_blobs: tuple[RegistryStub, list[str]]) -> None:
    stub, digests = stub_with_blobs
    stub.behaviour.auth, stub.behaviour.users = "bearer", {"alice": "right"}
    with client_for(stub, Credentials("alice", PASSWORD)) as client, pytest.raises(OcimodelError) as err:
        b"".join(client.stream_blob(REPO, digests[0]))
    message = str(err.value)
    assert f"registry {stub.host} refused the credentials for {REPO}" in message
    assert "docker login" in message and PASSWORD not in message


def test_bearer_anonymous_refused(stub_with_blobs: tuple[RegistryStub, list[str]]) -> None:
    stub, digests = stub_with_blobs
    stub.behaviour.auth, stub.behaviour.anonymous_pull = "bearer", False
    with client_for(stub) as client, pytest.raises(OcimodelError, match=f"requires credentials for {REPO}"):
        client.head_blob(REPO, digests[0])


def test_server_side_token_expiry_reauthenticates_once(stub_with_blobs: tuple[RegistryStub, list[str]]) -> None:
    stub, digests = stub_with_blobs
    stub.behaviour.auth = "bearer"
    with client_for(stub) as client:
        client.head_blob(REPO, digests[0])
        stub.expire_tokens()
        assert client.head_blob(REPO, digests[1]) == len(b"blob 1")
    assert len(stub.token_requests()) == 2


def test_token_renewed_before_it_expires() -> None:
    now = [1000.0]
    fetched: list[list[tuple[str, str]]] = []

    def fetch(url: str, params: list[tuple[str, str]], headers: dict[str, str]) -> requests.Response:
        fetched.append(params)
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps({"token": f"t{len(fetched)}", "expires_in": 100}).encode()
        return response

    auth = Authenticator("r.example.com", Keychain(()), fetch, clock=lambda: now[0])
    scopes = ["repository:a:pull"]
    assert auth.authorization(scopes) is None
    auth.authenticate('Bearer realm="https://r.example.com/token",service="svc"', scopes)
    assert auth.authorization(scopes) == "Bearer t1"
    now[0] += 75
    assert auth.authorization(scopes) == "Bearer t1"
    now[0] += 10  # within the renewal margin of the 100 s lifetime
    assert auth.authorization(scopes) == "Bearer t2"
    assert auth.authorization(["repository:b:pull"]) == "Bearer t3"
    assert fetched[0] == [("service", "svc"), ("scope", "repository:a:pull")]
    assert fetched[2] == [("service", "svc"), ("scope", "repository:b:pull")]


def test_basic(stub_with_blobs: tuple[RegistryStub, list[str]]) -> None:
    stub, digests = stub_with_blobs
    stub.behaviour.auth, stub.behaviour.users = "basic", {"alice": PASSWORD}
    with client_for(stub, Credentials("alice", PASSWORD)) as client:
        for digest in digests:
            client.head_blob(REPO, digest)
    assert [r.authorization for r in stub.requests_to()] == [None] + ["Basic"] * len(digests)
    assert stub.token_requests() == []

    with client_for(stub) as client, pytest.raises(OcimodelError, match="requires credentials .* docker login"):
        client.head_blob(REPO, digests[0])
    with client_for(stub, Credentials("alice", "wrong")) as client:
        with pytest.raises(OcimodelError, match=f"registry {stub.host} refused the credentials for {REPO}"):
            client.head_blob(REPO, digests[0])


def test_no_secret_in_logs_or_errors(
    stub_with_blobs: tuple[RegistryStub, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    stub, digests = stub_with_blobs
    stub.behaviour.auth, stub.behaviour.users = "bearer", {"alice": PASSWORD}
    stub.behaviour.redirect_blobs = True
    caplog.set_level(logging.DEBUG, logger="ocimodel")
    messages = []
    with client_for(stub, Credentials("alice", PASSWORD)) as client:
        for digest in digests:
            b"".join(client.stream_blob(REPO, digest))
        stub.behaviour.users = {"alice": "changed"}
        stub.expire_tokens()
        with pytest.raises(OcimodelError) as err:
            client.head_blob(REPO, digests[0])
        messages.append(str(err.value))
    assert "GET http://" in caplog.text  # debug logging is on, and it is what we inspect
    secrets = [PASSWORD, base64.b64encode(f"alice:{PASSWORD}".encode()).decode(), *stub.tokens, "X-Amz-Signature"]
    assert len(stub.tokens) == 1
    for secret in secrets:
        assert secret not in caplog.text
        assert all(secret not in m for m in messages)


# -- ECR


class FakeEcr:
    def __init__(self, expires_at: datetime | None) -> None:
        self.calls = 0
        self.expires_at = expires_at

    def get_authorization_token(self) -> dict[str, Any]:
        self.calls += 1
        data: dict[str, Any] = {"authorizationToken": b64(f"AWS:ecr-password-{self.calls}")}
        if self.expires_at:
            data["expiresAt"] = self.expires_at
        return {"authorizationData": [data]}


def test_ecr_credentials_are_cached_until_near_expiry() -> None:
    now = [datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp()]
    fake = FakeEcr(datetime(2025, 1, 1, 12, tzinfo=timezone.utc))
    regions: list[str] = []

    def factory(region: str) -> FakeEcr:
        regions.append(region)
        return fake

    ecr = EcrCredentials(factory, clock=lambda: now[0])
    host = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    assert ecr("ghcr.io") is None
    assert ecr("public.ecr.aws") is None
    assert ecr(host) == Credentials("AWS", "ecr-password-1")
    now[0] += timedelta(hours=11).total_seconds()
    assert ecr(host) == Credentials("AWS", "ecr-password-1")
    now[0] += timedelta(minutes=40).total_seconds()
    assert ecr(host) == Credentials("AWS", "ecr-password-2")
    assert regions == ["eu-west-1", "eu-west-1"]
    assert "ecr-password" not in repr(ecr(host))


def test_ecr_errors_are_explained() -> None:
    from botocore.exceptions import NoCredentialsError

    def factory(region: str) -> Any:
        raise NoCredentialsError()

    with pytest.raises(OcimodelError, match="cannot get an ECR login token for .*AWS credentials"):
        EcrCredentials(factory)("123456789012.dkr.ecr.us-east-1.amazonaws.com")


def test_ecr_token_from_boto3_against_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default factory is real boto3: region from the host, the standard credential chain, Basic AWS:<token>."""
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        creds = EcrCredentials()("123456789012.dkr.ecr.ap-southeast-2.amazonaws.com")
    assert creds is not None and creds.username == "AWS" and creds.password
    assert creds.password not in repr(creds)


def test_token_requests_ignore_netrc(stub_with_blobs: tuple[RegistryStub, list[str]], docker_config: Path) -> None:
    """A ~/.netrc entry for the token host must neither be sent anonymously nor replace the credentials given."""
    stub, digests = stub_with_blobs
    stub.behaviour.auth, stub.behaviour.users = "bearer", {"alice": PASSWORD, "netrc-user": "netrc-pass"}
    netrc = Path(os.environ["HOME"]) / ".netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-pass\n")
    netrc.chmod(0o600)
    with client_for(stub) as client:
        client.head_blob(REPO, digests[0])
    assert [r.authorization for r in stub.token_requests()] == [None]
    stub.clear_log()
    stub.behaviour.users = {"alice": PASSWORD}  # the netrc user would now be refused by the token service
    with client_for(stub, Credentials("alice", PASSWORD)) as client:
        client.head_blob(REPO, digests[0])
    assert [(r.authorization, r.status) for r in stub.token_requests()] == [("Basic", 200)]


def test_basic_credentials_are_looked_up_again_as_their_source_renews_them() -> None:
    """An ECR token renewed by its source is used from then on, with no 401 needed to notice it."""
    now = [datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp()]
    fake = FakeEcr(None)
    ecr = EcrCredentials(lambda region: fake, clock=lambda: now[0])
    host = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    auth = Authenticator(host, Keychain((ecr,)), fetch_token=lambda *a: None, clock=lambda: now[0])  # type: ignore[arg-type, return-value]
    auth.authenticate('Basic realm="ecr"', [])
    first = auth.authorization([])
    assert first == Credentials("AWS", "ecr-password-1").basic_header
    now[0] += timedelta(hours=12).total_seconds()  # ECR's token would have expired; its source renewed it
    assert auth.authorization([]) == Credentials("AWS", "ecr-password-2").basic_header
