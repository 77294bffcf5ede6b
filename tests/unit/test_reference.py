from __future__ import annotations

import pytest

from ocimodel.registry.reference import EcrHost, Reference, is_loopback, parse_ecr, parse_reference, registry_url

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", Reference("docker.io", "library/busybox")),
        ("busybox:1.36", Reference("docker.io", "library/busybox", "1.36")),
        (f"busybox@{DIGEST}", Reference("docker.io", "library/busybox", None, DIGEST)),
        (f"busybox:1.36@{DIGEST}", Reference("docker.io", "library/busybox", "1.36", DIGEST)),
        ("bitnami/redis", Reference("docker.io", "bitnami/redis")),
        ("docker.io/busybox", Reference("docker.io", "library/busybox")),
        ("index.docker.io/library/busybox", Reference("docker.io", "library/busybox")),
        ("index.docker.io/busybox:latest", Reference("docker.io", "library/busybox", "latest")),
        ("localhost/foo", Reference("localhost", "foo")),
        ("localhost:5000/foo/bar:v1", Reference("localhost:5000", "foo/bar", "v1")),
        ("127.0.0.1:5000/library/busybox", Reference("127.0.0.1:5000", "library/busybox")),
        ("[::1]:5000/a/b", Reference("[::1]:5000", "a/b")),
        ("public.ecr.aws/docker/library/busybox:1", Reference("public.ecr.aws", "docker/library/busybox", "1")),
        (
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/models/llama:v1",
            Reference("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "models/llama", "v1"),
        ),
        ("Registry/foo", Reference("Registry", "foo")),  # uppercase first component: docker treats it as a host
        ("a/b-c__d.e--f", Reference("docker.io", "a/b-c__d.e--f")),
        ("ghcr.io/org/deep/nested/repo:0_1.a-b", Reference("ghcr.io", "org/deep/nested/repo", "0_1.a-b")),
        ("localhost:5000", Reference("docker.io", "library/localhost", "5000")),  # no slash: a tag, as in docker
    ],
)
def test_parse(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("docker.io/Library/busybox", "lowercase"),
        ("busybox@sha256:abc", "digest"),
        ("busybox@md5:" + "a" * 32, "digest"),
        ("busybox:-tag", "tag"),
        ("busybox:" + "t" * 129, "tag"),
        ("foo//bar", "repository"),
        ("foo/bar_", "repository"),
        ("foo/-bar", "repository"),
        ("foo/a___b", "repository"),
        ("exa_mple.com:5000/foo", "registry"),
        ("a" * 64, "image ID"),
        ("host.io/" + "a" * 250, "255"),
    ],
)
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_reference(text)


@pytest.mark.parametrize(
    "text",
    [
        "docker.io/library/busybox",
        "docker.io/library/busybox:1.36",
        f"docker.io/library/busybox:1.36@{DIGEST}",
        f"127.0.0.1:5000/a/b@{DIGEST}",
        "[::1]:5000/x:y",
    ],
)
def test_str_round_trip(text: str) -> None:
    assert str(parse_reference(text)) == text
    assert parse_reference(str(parse_reference(text))) == parse_reference(text)


def test_properties() -> None:
    ref = parse_reference("busybox:1.36")
    assert ref.api_host == "registry-1.docker.io"
    assert ref.identifier == "1.36"
    assert parse_reference("busybox").identifier == "latest"
    pinned = ref.with_digest(DIGEST)
    assert pinned.digest == DIGEST and pinned.tag == "1.36" and pinned.identifier == DIGEST
    assert parse_reference("ghcr.io/a/b").api_host == "ghcr.io"
    with pytest.raises(ValueError):
        ref.with_digest("sha256:nothex")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("registry.localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("localhost.example.com", False),
        ("10.0.0.1:5000", False),
        ("ghcr.io", False),
        ("[::2]:5000", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_registry_url() -> None:
    assert registry_url("docker.io") == "https://registry-1.docker.io"
    assert registry_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert registry_url("registry.internal:5000", plain_http=True) == "http://registry.internal:5000"


@pytest.mark.parametrize(
    "text", ["alice:hunter2-secret@registry.example.com/team/model", "alice:hunter2-secret@localhost:5000/model:v1"]
)
def test_credentials_in_a_reference_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(ValueError, match="cannot carry credentials") as err:
        parse_reference(text)
    assert "hunter2" not in str(err.value) and "alice" not in str(err.value)


ECR_HOSTS = {
    "123456789012.dkr.ecr.us-east-1.amazonaws.com": "us-east-1",
    "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn": "cn-north-1",
    "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com": "us-gov-west-1",
    "123456789012.dkr-ecr.eu-central-1.on.aws": "eu-central-1",
    "123456789012.dkr-ecr-fips.us-east-2.on.aws": "us-east-2",
    "123456789012.dkr.ecr.ap-southeast-2.amazonaws.com:443": "ap-southeast-2",
}
NOT_ECR_HOSTS = [
    "public.ecr.aws",
    "ecr.example.com",
    "123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example",
    "12345.dkr.ecr.us-east-1.amazonaws.com",
    "123456789012.dkr-ecr.eu-central-1.on.aws.example",
    "123456789012.dkr.ecr.us-east-1.on.aws",
    "localhost:5000",
]


def test_ecr_hosts_in_every_form() -> None:
    """Standard, China, FIPS and dual-stack endpoints; the region is the one ECR's API must be asked in."""
    assert {host: parse_ecr(host) for host in ECR_HOSTS} == {
        host: EcrHost("123456789012", region) for host, region in ECR_HOSTS.items()
    }
    assert [host for host in NOT_ECR_HOSTS if parse_ecr(host) is not None] == []
