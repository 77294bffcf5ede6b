"""Run Debian's real ``docker-registry`` (distribution 2.8) for integration tests.

Tests push and pull against a genuine registry rather than a mock, so
protocol details (digest headers, auth challenges, index handling) are
whatever a real registry does.  Each instance gets its own config, port,
storage and log under a private directory and listens only on 127.0.0.1,
so it never collides with a system-wide registry on :5000.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import bcrypt
import requests

from tests.harness.oci import OCI_INDEX, OCI_MANIFEST, blob, reachable

REGISTRY_BINARY = "/usr/bin/docker-registry"
READINESS_DEADLINE_S = 20.0
READINESS_POLL_INTERVAL_S = 0.05
STOP_GRACE_S = 10.0
#: Start attempts; a retry only happens when the chosen port was taken in the meantime.
START_ATTEMPTS = 3

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


class RegistryError(RuntimeError):
    """The registry process failed to start or died while tests used it."""


@dataclass(frozen=True)
class Manifest:
    """A manifest as the registry served it, bytes untouched so digests can be checked."""

    body: bytes
    media_type: str
    digest: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Registry:
    """A running registry and the facts a test needs to talk to it."""

    host: str
    storage_dir: Path
    log_path: Path
    config_path: Path
    process: subprocess.Popen[bytes]
    username: str | None = None
    password: str | None = None
    _session: requests.Session = field(default_factory=requests.Session, repr=False)

    def __post_init__(self) -> None:
        # Never pick up proxies from the environment: everything is on loopback.
        self._session.trust_env = False
        if self.username is not None and self.password is not None:
            self._session.auth = (self.username, self.password)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def creds(self) -> tuple[str, str] | None:
        """``(user, password)`` for tools such as skopeo, or ``None`` for an open registry."""
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    def get(self, path: str, authenticated: bool = True, **kwargs: Any) -> requests.Response:
        """GET a registry API path (``/v2/...``); ``authenticated=False`` sends no credentials."""
        kwargs.setdefault("timeout", 10)
        if not authenticated:
            with requests.Session() as anonymous:
                anonymous.trust_env = False
                return anonymous.get(self.url + path, **kwargs)
        return self._session.get(self.url + path, **kwargs)

    def list_tags(self, repo: str) -> list[str]:
        """Tags of ``repo``, sorted; an unknown repository yields an empty list."""
        response = self.get(f"/v2/{repo}/tags/list")
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return sorted(response.json().get("tags") or [])

    def list_repositories(self) -> list[str]:
        response = self.get("/v2/_catalog")
        response.raise_for_status()
        return sorted(response.json().get("repositories") or [])

    def fetch_manifest(self, repo: str, reference: str) -> Manifest:
        """Fetch a manifest or index by tag or digest, accepting OCI and Docker types."""
        response = self.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
        response.raise_for_status()
        return Manifest(
            body=response.content,
            media_type=response.headers.get("Content-Type", "").split(";")[0].strip(),
            digest=response.headers.get("Docker-Content-Digest", ""),
        )

    def fetch_blob(self, repo: str, digest: str) -> bytes:
        response = self.get(f"/v2/{repo}/blobs/{digest}")
        response.raise_for_status()
        return response.content

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def assert_alive(self) -> None:
        """Raise with the log tail if the process exited, to explain odd test failures."""
        code = self.process.poll()
        if code is not None:
            raise RegistryError(
                f"docker-registry on {self.host} exited with {code}; log tail:\n{self.log_tail()}"
            )


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "<no log file>"
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """Ask the kernel for an unused loopback port; the registry binds it right after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_htpasswd(path: Path, username: str, password: str) -> None:
    """bcrypt entry in the ``$2b$`` form, which distribution's htpasswd reader accepts."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    path.write_text(f"{username}:{hashed}\n")


def _registry_config(port: int, storage_dir: Path, htpasswd: Path | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage_dir)},
            "delete": {"enabled": True},
            # Upload purging runs a background sweeper we have no use for in tests.
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"127.0.0.1:{port}",
            # An explicit secret silences distribution's "no secret configured" warning.
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "ocimodel-test", "path": str(htpasswd)}}
    return config


def _wait_until_ready(process: subprocess.Popen[bytes], url: str, log_path: Path, expect: int) -> None:
    """Poll ``/v2/`` until the registry answers ``expect`` or the deadline passes."""
    deadline = time.monotonic() + READINESS_DEADLINE_S
    last_error = "no attempt made"
    with requests.Session() as probe:
        probe.trust_env = False
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                raise RegistryError(
                    f"docker-registry exited with {code} before becoming ready; log tail:\n"
                    f"{_tail(log_path, 40)}"
                )
            try:
                response = probe.get(url + "/v2/", timeout=1)
            except requests.ConnectionError as error:
                last_error = f"{type(error).__name__}: {error}"
            else:
                if response.status_code == expect:
                    return
                last_error = f"HTTP {response.status_code}"
            time.sleep(READINESS_POLL_INTERVAL_S)
    raise RegistryError(
        f"docker-registry at {url} not ready within {READINESS_DEADLINE_S}s ({last_error}); "
        f"log tail:\n{_tail(log_path, 40)}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_GRACE_S)


def _port_in_use(log_path: Path) -> bool:
    return "address already in use" in _tail(log_path, 20)


@contextlib.contextmanager
def run_registry(
    workdir: Path,
    auth: bool = False,
    username: str = "ocimodel",
    password: str | None = None,
    binary: str = REGISTRY_BINARY,
) -> Iterator[Registry]:
    """Start a private registry under ``workdir`` and stop it on exit.

    With ``auth=True`` the registry demands HTTP Basic credentials from an
    htpasswd file (a random password unless one is given).  If the process
    died on its own while in use, leaving the block raises with its log
    tail, because a silently crashed registry makes test failures puzzling.
    """
    if shutil.which(binary) is None and not Path(binary).exists():
        raise RegistryError(f"{binary} not found (apt-get install docker-registry)")

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    storage_dir = workdir / "storage"
    storage_dir.mkdir(exist_ok=True)
    log_path = workdir / "registry.log"
    config_path = workdir / "config.yml"

    htpasswd: Path | None = None
    if auth:
        password = password if password is not None else secrets.token_urlsafe(12)
        htpasswd = workdir / "htpasswd"
        write_htpasswd(htpasswd, username, password)

    process: subprocess.Popen[bytes] | None = None
    host = ""
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        host = f"127.0.0.1:{port}"
        # JSON is valid YAML, so no YAML library is needed to write the config.
        config_path.write_text(json.dumps(_registry_config(port, storage_dir, htpasswd), indent=2))
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [binary, "serve", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        try:
            _wait_until_ready(process, f"http://{host}", log_path, expect=401 if auth else 200)
            break
        except RegistryError:
            _stop(process)
            if attempt < START_ATTEMPTS and _port_in_use(log_path):
                continue
            raise
    assert process is not None

    registry = Registry(
        host=host,
        storage_dir=storage_dir,
        log_path=log_path,
        config_path=config_path,
        process=process,
        username=username if auth else None,
        password=password if auth else None,
    )
    try:
        yield registry
    finally:
        died_early = process.poll()
        _stop(process)
        registry._session.close()
        if died_early is not None:
            raise RegistryError(
                f"docker-registry on {host} died during the tests (exit {died_early}); log tail:\n"
                f"{_tail(log_path, 40)}"
            )


# --- judging what a registry holds -------------------------------------------------------------------------------


def assert_registry_holds(registry: Registry, repo: str, tag: str, layout: Path, digest: str) -> None:
    """The tag names ``digest``, and every manifest and blob of the image is in the repository, byte for byte."""
    top = registry.fetch_manifest(repo, tag)
    assert top.digest == digest and top.body == blob(layout, digest)
    for part, data in reachable(layout, digest).items():
        if part == digest:
            continue
        if b'"schemaVersion"' in data and json.loads(data).get("mediaType") in (OCI_MANIFEST, OCI_INDEX):
            assert registry.fetch_manifest(repo, part).body == data
        else:
            assert registry.fetch_blob(repo, part) == data, f"{part} differs in {repo}"


def access_log(registry: Registry, method: str, repo: str) -> list[str]:
    return [line for line in registry.log_path.read_text().splitlines() if f'"{method} /v2/{repo}/' in line]


def registry_has_nothing(registry: Registry, repo: str) -> bool:
    return repo not in registry.list_repositories() and registry.list_tags(repo) == []
