"""An in-process OCI distribution registry for unit tests.

``RegistryStub`` serves in-memory repositories from a ``ThreadingHTTPServer`` on 127.0.0.1 (port 0), plus a second
"storage" server that blob GETs can be redirected to, the way ECR hands blobs off to S3. Every request to either
is logged, so tests can assert what was sent (and that no Authorization went where it must not).

Everything it can do differently lives in ``Behaviour``; every request goes through ``_Server.dispatch`` and a
route table, so upload routes (POST/PATCH/PUT, chunking, Range) and new quirks are additions, not rewrites::

    with RegistryStub(Behaviour(auth="bearer", users={"alice": "s3cret"})) as stub:
        digest = stub.add_blob("library/busybox", b"layer")
        ...
        assert not any(r.authorization for r in stub.requests_to("storage"))
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

SERVICE = "stub-registry"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Fault:
    """Answer ``status`` instead of serving, ``times`` times, for requests whose path contains ``path_contains``."""

    status: int
    path_contains: str = ""
    method: str | None = None
    times: int = 1
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Behaviour:
    """The switches of the stub; tests may flip them while it runs."""

    auth: Literal["none", "basic", "bearer"] = "none"
    # Accepted by Basic auth and by the token endpoint.
    users: dict[str, str] = field(default_factory=dict)
    # Bearer: hand out pull tokens without credentials, as Docker Hub does for public images.
    anonymous_pull: bool = True
    # Bearer: ``expires_in`` of issued tokens; None leaves it out (clients must assume 60 s).
    token_expires_in: int | None = 300
    # Bearer: name of the token field in the token response ("token" or "access_token").
    token_field: str = "token"
    # Blob GETs answer 307 to the storage server.
    redirect_blobs: bool = False
    # Digests (blobs or manifests) served with one byte flipped.
    corrupt: set[str] = field(default_factory=set)
    # Blob digests whose body breaks off halfway (the full length is announced, then the connection closes).
    truncate: set[str] = field(default_factory=set)
    faults: list[Fault] = field(default_factory=list)


@dataclass(frozen=True)
class LoggedRequest:
    server: Literal["registry", "storage"]
    method: str
    path: str
    query: Mapping[str, list[str]]
    # Header names and values as received, except Authorization, reduced to its scheme in ``authorization``.
    headers: Mapping[str, str]
    authorization: str | None


@dataclass
class Repository:
    blobs: dict[str, bytes] = field(default_factory=dict)
    # tag or digest -> (bytes, media type)
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """One request as a route handler sees it."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    match: re.Match[str]


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Announce this length instead of the body's (and close the connection after sending the body).
    content_length: int | None = None

    @classmethod
    def json(cls, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> Reply:
        return cls(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def error(cls, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Reply:
        return cls.json(status, {"errors": [{"code": code, "message": message, "detail": None}]}, headers)


Route = tuple[frozenset[str], re.Pattern[str], Callable[[Call], Reply]]


@dataclass
class _Token:
    scopes: frozenset[tuple[str, str]]  # (repository, action)
    valid: bool = True


class RegistryStub:
    """The registry and its storage host; a context manager that starts and stops both (use it in a fixture)."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.repositories: dict[str, Repository] = {}
        self.log: list[LoggedRequest] = []
        self.tokens: dict[str, _Token] = {}
        self.lock = threading.RLock()
        self._registry = _Server(self, "registry", self._registry_routes())
        self._storage = _Server(self, "storage", self._storage_routes())

    # -- lifecycle

    def __enter__(self) -> RegistryStub:
        self._registry.start()
        self._storage.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._registry.stop()
        self._storage.stop()

    @property
    def host(self) -> str:
        return self._registry.host

    @property
    def storage_host(self) -> str:
        return self._storage.host

    # -- content

    def repository(self, name: str) -> Repository:
        with self.lock:
            return self.repositories.setdefault(name, Repository())

    def add_blob(self, repo: str, data: bytes) -> str:
        digest = digest_of(data)
        self.repository(repo).blobs[digest] = data
        return digest

    def add_manifest(self, repo: str, data: bytes, media_type: str, tag: str | None = None) -> str:
        digest = digest_of(data)
        manifests = self.repository(repo).manifests
        manifests[digest] = (data, media_type)
        if tag:
            manifests[tag] = (data, media_type)
        return digest

    def add_image(
        self,
        repo: str,
        layers: list[bytes],
        config: Mapping[str, Any],
        *,
        tag: str | None = None,
        media_type: str = OCI_MANIFEST,
        config_media_type: str = OCI_CONFIG,
        layer_media_type: str = OCI_LAYER,
    ) -> dict[str, Any]:
        """Store an image; returns its manifest descriptor (mediaType, digest, size) as JSON."""

        def descriptor(kind: str, data: bytes) -> dict[str, Any]:
            return {"mediaType": kind, "digest": self.add_blob(repo, data), "size": len(data)}

        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": descriptor(config_media_type, json.dumps(config).encode()),
            "layers": [descriptor(layer_media_type, layer) for layer in layers],
        }
        data = json.dumps(manifest).encode()
        return {"mediaType": media_type, "digest": self.add_manifest(repo, data, media_type, tag), "size": len(data)}

    def add_index(
        self, repo: str, manifests: list[dict[str, Any]], *, tag: str | None = None, media_type: str = OCI_INDEX
    ) -> dict[str, Any]:
        """Store an index over manifest descriptors (which should carry a ``platform``); returns its descriptor."""
        data = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}).encode()
        return {"mediaType": media_type, "digest": self.add_manifest(repo, data, media_type, tag), "size": len(data)}

    # -- observation and control

    def requests_to(self, server: Literal["registry", "storage"] = "registry") -> list[LoggedRequest]:
        with self.lock:
            return [r for r in self.log if r.server == server]

    def token_requests(self) -> list[LoggedRequest]:
        return [r for r in self.requests_to("registry") if r.path == "/token"]

    def clear_log(self) -> None:
        with self.lock:
            self.log.clear()

    def expire_tokens(self) -> None:
        """Make every issued token invalid, as if it had run out: the next use gets a 401."""
        with self.lock:
            for token in self.tokens.values():
                token.valid = False

    # -- routes

    def _registry_routes(self) -> list[Route]:
        get = frozenset({"GET", "HEAD"})
        return [
            (get, re.compile(r"^/v2/?$"), self._ping),
            (frozenset({"GET"}), re.compile(r"^/token$"), self._token),
            (get, re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$"), self._get_manifest),
            (get, re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[a-f0-9]{64})$"), self._get_blob),
        ]

    def _storage_routes(self) -> list[Route]:
        blob = re.compile(r"^/blobs/(?P<name>.+)/(?P<digest>sha256:[a-f0-9]{64})$")
        return [(frozenset({"GET"}), blob, self._storage_blob)]

    def _ping(self, call: Call) -> Reply:
        return self._authorize(call, None) or Reply.json(200, {})

    def _get_manifest(self, call: Call) -> Reply:
        name, ref = call.match["name"], call.match["ref"]
        denied = self._authorize(call, name)
        if denied:
            return denied
        with self.lock:
            found = self.repositories.get(name, Repository()).manifests.get(ref)
        if found is None:
            return Reply.error(404, "MANIFEST_UNKNOWN", f"manifest unknown to registry: {ref}")
        data, media_type = found
        return Reply(200, self._served(data), {"Content-Type": media_type, "Docker-Content-Digest": digest_of(data)})

    def _get_blob(self, call: Call) -> Reply:
        name, digest = call.match["name"], call.match["digest"]
        denied = self._authorize(call, name)
        if denied:
            return denied
        with self.lock:
            data = self.repositories.get(name, Repository()).blobs.get(digest)
        if data is None:
            return Reply.error(404, "BLOB_UNKNOWN", f"blob unknown to registry: {digest}")
        if self.behaviour.redirect_blobs and call.method == "GET":
            location = f"http://{self.storage_host}/blobs/{name}/{digest}?X-Amz-Signature={secrets.token_hex(8)}"
            return Reply(307, headers={"Location": location})
        return self._blob_reply(data, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest})

    def _storage_blob(self, call: Call) -> Reply:
        with self.lock:
            data = self.repositories.get(call.match["name"], Repository()).blobs.get(call.match["digest"])
        if data is None:
            return Reply(404, b"NoSuchKey")
        return self._blob_reply(data, {"Content-Type": "application/octet-stream"})

    def _blob_reply(self, data: bytes, headers: dict[str, str]) -> Reply:
        if digest_of(data) in self.behaviour.truncate:
            return Reply(200, data[: len(data) // 2], headers, content_length=len(data))
        return Reply(200, self._served(data), headers)

    def _served(self, data: bytes) -> bytes:
        if digest_of(data) not in self.behaviour.corrupt:
            return data
        return data[:-1] + bytes([data[-1] ^ 1]) if data else b"\0"

    # -- auth

    def _authorize(self, call: Call, repo: str | None) -> Reply | None:
        """None if the request may proceed, else the 401 a real registry would send."""
        behaviour = self.behaviour
        if behaviour.auth == "none":
            return None
        action = "pull" if call.method in ("GET", "HEAD") else "push"
        scheme, _, value = call.headers.get("Authorization", "").partition(" ")
        if behaviour.auth == "basic":
            if scheme.lower() == "basic" and self._valid_basic(value):
                return None
            challenge = 'Basic realm="stub-registry"'
        else:
            with self.lock:
                token = self.tokens.get(value) if scheme.lower() == "bearer" else None
                if token and token.valid and (repo is None or (repo, action) in token.scopes):
                    return None
            challenge = f'Bearer realm="http://{self.host}/token",service="{SERVICE}"'
            if repo is not None:
                challenge += f',scope="repository:{repo}:{action}"'
        return Reply.error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge})

    def _valid_basic(self, value: str) -> bool:
        try:
            username, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        return bool(username) and self.behaviour.users.get(username) == password

    def _token(self, call: Call) -> Reply:
        scheme, _, value = call.headers.get("Authorization", "").partition(" ")
        authenticated = scheme.lower() == "basic" and self._valid_basic(value)
        if scheme and not authenticated:
            return Reply.error(401, "UNAUTHORIZED", "invalid username or password")
        if not authenticated and not self.behaviour.anonymous_pull:
            return Reply.error(401, "UNAUTHORIZED", "authentication required")
        granted = set()
        for scope in call.query.get("scope", []):
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            if kind == "repository":
                granted |= {(repo, a) for a in actions.split(",") if authenticated or a == "pull"}
        value = secrets.token_urlsafe(16)
        with self.lock:
            self.tokens[value] = _Token(frozenset(granted))
        answer: dict[str, Any] = {self.behaviour.token_field: value}
        if self.behaviour.token_expires_in is not None:
            answer["expires_in"] = self.behaviour.token_expires_in
        return Reply.json(200, answer)

    def injected_fault(self, method: str, path: str) -> Reply | None:
        with self.lock:
            for fault in self.behaviour.faults:
                if fault.times > 0 and fault.path_contains in path and fault.method in (None, method):
                    fault.times -= 1
                    return Reply.error(fault.status, "STUB_FAULT", "injected fault", fault.headers)
        return None


class _Server:
    """One listening HTTP server with a route table; both the registry and the storage host are one of these."""

    def __init__(self, stub: RegistryStub, name: Literal["registry", "storage"], routes: list[Route]) -> None:
        self.stub = stub
        self.name = name
        self.routes = routes
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._httpd.daemon_threads = True
        # A short poll interval only bounds how long ``stop`` takes; nothing waits on it to synchronise.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, name=f"stub-{name}", daemon=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def dispatch(self, method: str, target: str, headers: Mapping[str, str]) -> Reply:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        authorization = headers.get("Authorization")
        with self.stub.lock:
            self.stub.log.append(
                LoggedRequest(
                    self.name,
                    method,
                    parts.path,
                    query,
                    {k: v for k, v in headers.items() if k.lower() != "authorization"},
                    authorization.split(" ", 1)[0] if authorization else None,
                )
            )
        fault = self.stub.injected_fault(method, parts.path) if self.name == "registry" else None
        if fault:
            return fault
        for methods, pattern, handle in self.routes:
            match = pattern.match(parts.path)
            if match and method in methods:
                return handle(Call(method, parts.path, query, headers, match))
        return Reply.error(404, "NOT_FOUND", f"no route for {method} {parts.path}")


def _handler_class(server: _Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; with Nagle on, keep-alive clients stall ~40 ms per request.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            headers = {k: v for k, v in self.headers.items()}
            if self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"):
                # No route reads bodies yet: do not let an unread body be parsed as the next request.
                self.close_connection = True
            reply = server.dispatch(self.command, self.path, headers)
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            length = len(reply.body)
            if reply.content_length is not None:
                length = reply.content_length
                self.close_connection = True
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler



def isolate_credentials(monkeypatch: Any, home: Path) -> Path:
    """Point every credential location ocimodel reads at an empty ``home``; returns the docker config directory.

    Tests must never see the developer's own ``docker login``.
    """
    docker_config = home / ".docker"
    docker_config.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return docker_config
