"""Registries that accept the connection and then keep us waiting: silent, or trickling a byte at a time.

A tiny socket server on 127.0.0.1 plays the registry; the deadlines are injected small, so each test takes about a
second. The server paces its trickle itself; nothing in the test waits for it.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from ocimodel.registry.auth import Keychain
from ocimodel.errors import RegistryError
from ocimodel.registry.client import Deadlines, RegistryClient
from ocimodel.retry import RetryPolicy

DIGEST = "sha256:" + "a" * 64
DEADLINES = Deadlines(connect=5, read=30, small=0.5, stall=0.5, notice=0.1)

Respond = Callable[[str, socket.socket, threading.Event], None]


class SlowRegistry:
    """Accepts connections and answers each request with ``respond(path, connection, stop)``."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.stop = threading.Event()
        self.paths: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> SlowRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._server.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(65536)
                if not data:
                    return
                request += data
            path = request.split(b" ", 2)[1].decode()
            self.paths.append(path)
            try:
                self.respond(path, conn, self.stop)
            except OSError:
                pass  # the client gave up on us, as it should


def silent(path: str, conn: socket.socket, stop: threading.Event) -> None:
    stop.wait(30)


def trickle(head: bytes) -> Respond:
    def respond(path: str, conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        while not stop.wait(0.05):
            conn.sendall(b"x")

    return respond


def client(registry: SlowRegistry, sleeps: list[float]) -> RegistryClient:
    return RegistryClient(
        registry.host, keychain=Keychain(()), retry=RetryPolicy(attempts=2, sleep=sleeps.append), deadlines=DEADLINES
    )


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.WARNING, logger="ocimodel")
    yield caplog


@pytest.mark.parametrize(
    "respond",
    [silent, trickle(b"HTTP/1.1 200 OK\r\nX-Slow: "), trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")],
    ids=["silent", "trickled-headers", "trickled-body"],
)
def test_small_request_has_an_overall_deadline(respond: Respond, warnings: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []
    with SlowRegistry(respond) as registry, client(registry, sleeps) as c:
        with pytest.raises(RegistryError) as err:
            c.get_manifest("team/model", "latest")
    assert str(err.value) == (
        f"registry {registry.host} accepted the connection but kept us waiting for team/model (no complete answer "
        "within 0.5s): it may be overloaded, or a proxy or firewall holds the connection; try again later"
    )
    assert err.value.transient and len(sleeps) == 1
    assert registry.paths == ["/v2/team/model/manifests/latest"] * 2
    notices = [r.getMessage() for r in warnings.records if "still waiting" in r.getMessage()]
    assert notices and notices[0].startswith(
        f"still waiting for registry {registry.host} to answer GET of manifest latest of team/model ("
    )


def test_token_request_has_an_overall_deadline(warnings: pytest.LogCaptureFixture) -> None:
    def respond(path: str, conn: socket.socket, stop: threading.Event) -> None:
        if path.startswith("/token"):
            trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{")(path, conn, stop)
            return
        host = conn.getsockname()
        challenge = f'Bearer realm="http://{host[0]}:{host[1]}/token",service="slow"'
        # One request per connection here, and said so: a client must not send the token request into a closing one.
        conn.sendall(
            f"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )

    sleeps: list[float] = []
    with SlowRegistry(respond) as registry, client(registry, sleeps) as c:
        with pytest.raises(RegistryError, match=r"no complete answer within 0\.5s"):
            c.head_blob("team/model", DIGEST)
    assert [p.split("?")[0] for p in registry.paths] == [f"/v2/team/model/blobs/{DIGEST}", "/token", "/token"]
    assert any(f"token service {registry.host}" in r.getMessage() for r in warnings.records)


def test_stalled_blob_download_is_given_up(warnings: pytest.LogCaptureFixture) -> None:
    """A blob can take hours, so it has no overall deadline; less than 64 KiB in ``stall`` seconds ends it."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"y" * 70000
    sleeps: list[float] = []
    with SlowRegistry(trickle(head)) as registry, client(registry, sleeps) as c:
        received = 0
        with pytest.raises(RegistryError) as err:
            for chunk in c.stream_blob("team/model", DIGEST):
                received += len(chunk)
    assert str(err.value) == (
        f"lost the connection to registry {registry.host} while reading blob {DIGEST} of team/model "
        "(less than 64 KiB in 0.5s): try again"
    )
    assert received >= 65536  # the first piece came quickly; then the trickle
    assert len(registry.paths) == 2 and len(sleeps) == 1
    assert any("to send more of blob" in r.getMessage() for r in warnings.records)
