"""An in-process OCI distribution registry for unit tests.

``RegistryStub`` serves in-memory repositories from a ``ThreadingHTTPServer`` on 127.0.0.1 (port 0), plus a second
"storage" server that blob GETs can be redirected to, the way ECR hands blobs off to S3. Every request to either
is logged (with what was answered and how many body bytes arrived), so tests can assert what was sent and what the
registry actually received.

It speaks the distribution spec's upload protocol the way docker-registry (distribution 2.8) does: POST opens a
session (``Location`` with an opaque ``_state``, ``Range: 0-0``), PATCH appends (in order, or 416), GET reports
progress, PUT ``?digest=`` verifies and commits, POST ``?mount=&from=`` mounts, and manifest PUTs are refused while
the blobs or manifests they reference are missing. Bodies are read from the socket as they arrive, so a fault can
reset the connection halfway through one and the registry keeps what it had read, as a real one does.

Everything it can do differently lives in ``Behaviour`` (registry quirks such as ECR's) and ``Fault`` (errors,
resets and side effects on chosen requests); every request goes through ``_Server.dispatch`` and a route table::

    with RegistryStub(Behaviour(auth="bearer", users={"alice": "s3cret"})) as stub:
        digest = stub.add_blob("library/busybox", b"layer")
        stub.behaviour.faults.append(Fault(reset_after=1000, method="PATCH", nth=2))
        ...
        assert not any(r.authorization for r in stub.requests_to("storage"))
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import secrets
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

import requests
import requests.adapters

from ocimodel.registry.auth import Credentials, Keychain
from ocimodel.registry.client import RegistryClient
from ocimodel.retry import RetryPolicy
from urllib.parse import parse_qs, unquote, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

SERVICE = "stub-registry"
#: What the spec asks registries to accept at least; above the configured cap a manifest PUT gets 413.
MANIFEST_MAX_BYTES = 4 * 1024 * 1024
#: ECR's chunked uploads stop advancing after this many PATCHes (aws/containers-roadmap#2831).
ECR_STUCK_AFTER = 2

_PIECE = 64 * 1024
# A body no route wants is read and thrown away (so the client hears the answer and the connection stays usable);
# one bigger than this is left unread and the connection closed, as Go's net/http does.
_DRAIN_MAX = 256 * 1024 * 1024


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Fault:
    """A deviation from normal service for chosen requests: an error answer, a reset connection, or a side effect.

    A request matches when its path contains ``path_contains``, its (decoded) query contains ``query_contains`` and its
    method is ``method`` (any if None). Every fault counts the requests it matches; it fires on matching requests
    number ``nth``, ``nth + every``, ``nth + 2 * every``... at most ``times`` times, and at most one fault (the first
    in the list whose turn it is) fires per request. Firing runs ``before`` (expire tokens, lose upload sessions...),
    then:

    - with ``reset_after``: the request is served as usual while the stub reads at most that many body bytes (so a
      PATCH keeps what arrived), then the connection is reset without an answer;
    - with ``status``: that error is answered instead of serving (``code`` in the error body; a 401 carries the
      challenge the stub would send);
    - with neither: the request is served normally, after ``before``, with ``headers`` added to the answer (a
      ``Range`` the registry cannot hold, say) and, with ``cut_answer``, its body broken off after that many bytes
      (the full length announced, then the connection closed).
    """

    status: int | None = None
    path_contains: str = ""
    method: str | None = None
    times: int = 1
    headers: dict[str, str] = field(default_factory=dict)
    code: str = "STUB_FAULT"
    query_contains: str = ""
    nth: int = 1
    every: int = 1
    reset_after: int | None = None
    before: Callable[[], None] | None = None
    cut_answer: int | None = None
    #: Matching requests seen, and how many times the fault fired: for assertions.
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def matches(self, method: str, path: str, query: str) -> bool:
        return (
            self.path_contains in path
            and self.query_contains in query
            and self.method in (None, method)
        )

    def turn(self) -> bool:
        """Count one matching request; whether the fault fires on it."""
        self.seen += 1
        since = self.seen - self.nth
        return self.times > 0 and since >= 0 and since % max(1, self.every) == 0


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
    # Bearer: a token stops working after this many authorised requests, so it runs out in the middle of an upload.
    token_max_uses: int | None = None
    # Blob GETs answer 307 to the storage server.
    redirect_blobs: bool = False
    # Digests (blobs or manifests) served with one byte flipped.
    corrupt: set[str] = field(default_factory=set)
    # Blob digests whose body breaks off halfway (the full length is announced, then the connection closes).
    truncate: set[str] = field(default_factory=set)
    # Sent as ``OCI-Chunk-Min-Length`` when an upload session opens.
    chunk_min_length: int | None = None
    # Cross-repository mounts (POST ?mount=&from=); when off, every mount request opens an ordinary session (202).
    mount_enabled: bool = True
    # A chunked session's ``Range`` stops advancing after this many PATCHes, and later data is dropped.
    stuck_range_after: int | None = None
    # distribution's strictness: a ``_state`` records the size the upload had when it was handed out, and a request
    # whose ``_state`` no longer matches (the client's URL after a PATCH that broke off) cancels the session with 400
    # BLOB_UPLOAD_INVALID. Off, any ``_state`` issued for the session is good, as a registry that resumes needs.
    strict_state: bool = False
    # Blob GETs ignore ``Range`` and answer the whole blob, as a registry without range support does.
    ignore_range: bool = False
    # Basic passwords answered 403 DENIED "Your authorization token has expired", as ECR answers an expired login token.
    expired_passwords: set[str] = field(default_factory=set)
    # ECR as it behaves: PATCH answers 201, ``Range`` sticks after the 2nd chunk (data dropped), Basic auth only (a
    # configured "bearer" becomes Basic), and manifest PUTs come back without ``Docker-Content-Digest``.
    ecr_like: bool = False
    # Manifest PUTs bigger than this get 413.
    manifest_max_bytes: int = MANIFEST_MAX_BYTES
    # The OCI 1.1 referrers API (GET /v2/<name>/referrers/<digest>); off, that path 404s as docker-registry 2.8's does.
    referrers_api: bool = False
    faults: list[Fault] = field(default_factory=list)


@dataclass
class LoggedRequest:
    server: Literal["registry", "storage"]
    method: str
    path: str
    query: Mapping[str, list[str]]
    # Header names and values as received, except Authorization, reduced to its scheme in ``authorization``.
    headers: Mapping[str, str]
    authorization: str | None
    # Filled in once the request is over: the status answered (None: the connection was reset or the client left),
    # the answer's headers, and how many body bytes the stub read.
    status: int | None = None
    answer: Mapping[str, str] = field(default_factory=dict)
    received: int = 0


class Stored(NamedTuple):
    """A blob or manifest becoming available in a repository, in the order it happened."""

    kind: Literal["blob", "manifest"]
    repo: str
    digest: str
    via: Literal["upload", "monolithic", "mount", "put"]


@dataclass
class Repository:
    blobs: dict[str, bytes] = field(default_factory=dict)
    # tag or digest -> (bytes, media type)
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)


@dataclass
class Upload:
    """One upload session: the bytes received so far, and every ``_state`` handed out for it with the size then."""

    repo: str
    uuid: str
    data: bytearray = field(default_factory=bytearray)
    states: dict[str, int] = field(default_factory=dict)
    patches: int = 0


class _Reset(Exception):
    """Reset the connection without answering (an injected fault)."""


class _ClientGone(Exception):
    """The client closed the connection in the middle of its body."""


class RequestBody:
    """The body of one request, read from the socket piece by piece (Content-Length or chunked).

    With ``limit`` set, reading past that many bytes raises ``_Reset``: how a fault breaks a body off halfway.
    """

    def __init__(self, rfile: io.BufferedIOBase, headers: Mapping[str, str]) -> None:
        self._rfile = rfile
        lowered = {k.lower(): v for k, v in headers.items()}
        self._chunked = "chunked" in lowered.get("transfer-encoding", "").lower()
        self._left = 0 if self._chunked else int(lowered.get("content-length") or 0)
        self._chunk_left = 0
        self._ended = not self._chunked and self._left == 0
        self.received = 0
        self.limit: int | None = None

    def read(self, n: int = _PIECE) -> bytes:
        """Up to ``n`` bytes; b"" at the end of the body."""
        if self._ended:
            return b""
        if self.limit is not None:
            room = self.limit - self.received
            if room <= 0:
                raise _Reset
            n = min(n, room)
        data = self._read_chunked(n) if self._chunked else self._read_plain(n)
        self.received += len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while piece := self.read():
            yield piece

    def read_all(self) -> bytes:
        return b"".join(self)

    def drain(self) -> bool:
        """Read and drop the rest; False if it was too big to bother (the connection must then close)."""
        while not self._ended:
            if self.received > _DRAIN_MAX:
                return False
            self.read()
        return True

    def _read_plain(self, n: int) -> bytes:
        data = self._rfile.read(min(n, self._left))
        if not data:
            raise _ClientGone
        self._left -= len(data)
        self._ended = self._left == 0
        return data

    def _read_chunked(self, n: int) -> bytes:
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            if not line:
                raise _ClientGone
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self._rfile.readline(1024).strip():
                    pass  # trailers
                self._ended = True
                return b""
            self._chunk_left = size
        data = self._rfile.read(min(n, self._chunk_left))
        if not data:
            raise _ClientGone
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._rfile.readline(1024)  # the CRLF closing the chunk
        return data


@dataclass(frozen=True)
class Call:
    """One request as a route handler sees it."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    match: re.Match[str]
    body: RequestBody

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Announce this length instead of the body's (and close the connection after sending the body).
    content_length: int | None = None
    # Close the connection after answering.
    close: bool = False

    @classmethod
    def json(cls, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> Reply:
        return cls(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def error(
        cls, status: int, code: str, message: str, headers: Mapping[str, str] | None = None, detail: Any = None
    ) -> Reply:
        return cls.json(status, {"errors": [{"code": code, "message": message, "detail": detail}]}, headers)


Route = tuple[frozenset[str], re.Pattern[str], Callable[[Call], Reply]]


@dataclass
class _Token:
    scopes: frozenset[tuple[str, str]]  # (repository, action)
    valid: bool = True
    uses: int = 0


class RegistryStub:
    """The registry and its storage host; a context manager that starts and stops both (use it in a fixture)."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.repositories: dict[str, Repository] = {}
        self.uploads: dict[str, Upload] = {}
        self.stored: list[Stored] = []
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
            self.stored.clear()

    def expire_tokens(self) -> None:
        """Make every issued token invalid, as if it had run out: the next use gets a 401."""
        with self.lock:
            for token in self.tokens.values():
                token.valid = False

    def forget_uploads(self) -> None:
        """Lose every upload session, as a registry restart does: their URLs now answer 404 BLOB_UPLOAD_UNKNOWN."""
        with self.lock:
            self.uploads.clear()

    # -- routes

    def _registry_routes(self) -> list[Route]:
        get = frozenset({"GET", "HEAD"})
        name = r"^/v2/(?P<name>.+)"
        session = re.compile(name + r"/blobs/uploads/(?P<uuid>[^/]+)$")
        return [
            (get, re.compile(r"^/v2/?$"), self._ping),
            (frozenset({"GET"}), re.compile(r"^/token$"), self._token),
            (get, re.compile(name + r"/manifests/(?P<ref>[^/]+)$"), self._get_manifest),
            (frozenset({"PUT"}), re.compile(name + r"/manifests/(?P<ref>[^/]+)$"), self._put_manifest),
            (get, re.compile(name + r"/blobs/(?P<digest>sha256:[a-f0-9]{64})$"), self._get_blob),
            (frozenset({"POST"}), re.compile(name + r"/blobs/uploads/?$"), self._start_upload),
            (frozenset({"PATCH"}), session, self._patch_upload),
            (frozenset({"PUT"}), session, self._finish_upload),
            (frozenset({"GET"}), session, self._upload_status),
            (frozenset({"DELETE"}), session, self._cancel_upload),
            (frozenset({"GET"}), re.compile(name + r"/referrers/(?P<digest>sha256:[a-f0-9]{64})$"), self._referrers),
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

    def _referrers(self, call: Call) -> Reply:
        """The manifests whose ``subject`` is the digest, as an index: empty, not 404, when there are none."""
        name, digest = call.match["name"], call.match["digest"]
        if not self.behaviour.referrers_api:
            return Reply.error(404, "NOT_FOUND", f"no route for GET {call.path}")
        denied = self._authorize(call, name)
        if denied:
            return denied
        with self.lock:
            stored = dict(self.repositories.get(name, Repository()).manifests)
        entries = []
        for ref, (data, media_type) in stored.items():
            doc = json.loads(data)
            if ref.startswith("sha256:") and (doc.get("subject") or {}).get("digest") == digest:
                entry = {"mediaType": media_type, "digest": ref, "size": len(data),
                         "artifactType": doc.get("artifactType") or doc["config"]["mediaType"]}
                entries.append(entry | ({"annotations": doc["annotations"]} if doc.get("annotations") else {}))
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
        return Reply.json(200, index, {"Content-Type": "application/vnd.oci.image.index.v1+json"})

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
        return self._blob_reply(data, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}, call)

    def _storage_blob(self, call: Call) -> Reply:
        with self.lock:
            data = self.repositories.get(call.match["name"], Repository()).blobs.get(call.match["digest"])
        if data is None:
            return Reply(404, b"NoSuchKey")
        return self._blob_reply(data, {"Content-Type": "application/octet-stream"}, call)

    def _blob_reply(self, data: bytes, headers: dict[str, str], call: Call) -> Reply:
        if digest_of(data) in self.behaviour.truncate:
            return Reply(200, data[: len(data) // 2], headers, content_length=len(data))
        served = self._served(data)
        wanted = re.fullmatch(r"bytes=(\d+)-", call.headers.get("Range", ""))
        if wanted and call.method == "GET" and int(wanted[1]) < len(served) and not self.behaviour.ignore_range:
            start = int(wanted[1])
            headers = {**headers, "Content-Range": f"bytes {start}-{len(served) - 1}/{len(served)}"}
            return Reply(206, served[start:], headers)
        return Reply(200, served, headers)

    def _served(self, data: bytes) -> bytes:
        if digest_of(data) not in self.behaviour.corrupt:
            return data
        return data[:-1] + bytes([data[-1] ^ 1]) if data else b"\0"

    # -- uploads

    def _start_upload(self, call: Call) -> Reply:
        """POST: mount from another repository, take the whole blob at once (``?digest=``), or open a session."""
        name = call.match["name"]
        denied = self._authorize(call, name)
        if denied:
            return denied
        mount, source = call.arg("mount"), call.arg("from")
        if mount and source and self.behaviour.mount_enabled and self._granted(call, source, "pull"):
            with self.lock:
                data = self.repositories.get(source, Repository()).blobs.get(mount)
            if data is not None:
                self._store_blob(name, data, "mount")
                return Reply(201, headers=self._blob_headers(name, mount))
        digest = call.arg("digest")
        if digest:
            data = call.body.read_all()
            if digest_of(data) != digest:
                return Reply.error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
            self._store_blob(name, data, "monolithic")
            return Reply(201, headers=self._blob_headers(name, digest))
        upload = Upload(name, secrets.token_hex(16))
        with self.lock:
            self.uploads[upload.uuid] = upload
        headers = self._session_headers(upload)
        if self.behaviour.chunk_min_length:
            headers["OCI-Chunk-Min-Length"] = str(self.behaviour.chunk_min_length)
        return Reply(202, headers=headers)

    def _patch_upload(self, call: Call) -> Reply:
        """PATCH: append a chunk (``Content-Range`` must start at the current end, else 416) or a stream."""
        found = self._session(call)
        if isinstance(found, Reply):
            return found
        upload = found
        content_range = call.headers.get("Content-Range")
        if content_range is not None:
            bounds = re.fullmatch(r"(\d+)-(\d+)", content_range.strip())
            if bounds is None:
                return Reply.error(400, "BLOB_UPLOAD_INVALID", f"malformed Content-Range {content_range!r}")
            start, end = int(bounds[1]), int(bounds[2])
            if start != len(upload.data) or end < start:
                # distribution answers an out-of-order chunk with a bare 416 and where the upload stands.
                return Reply(416, headers=self._session_headers(upload))
            length = call.headers.get("Content-Length")
            if length is not None and int(length) != end - start + 1:
                return Reply.error(400, "SIZE_INVALID", "Content-Length does not match Content-Range")
        with self.lock:
            upload.patches += 1
            stuck_after = ECR_STUCK_AFTER if self.behaviour.ecr_like else self.behaviour.stuck_range_after
            keep = stuck_after is None or upload.patches <= stuck_after
        for piece in call.body:
            if keep:
                with self.lock:
                    upload.data += piece
        return Reply(201 if self.behaviour.ecr_like else 202, headers=self._session_headers(upload))

    def _finish_upload(self, call: Call) -> Reply:
        """PUT ``?digest=``: append the last bytes (if any), check the digest, and make the blob available."""
        found = self._session(call)
        if isinstance(found, Reply):
            return found
        upload = found
        digest = call.arg("digest")
        if not digest:
            return Reply.error(400, "DIGEST_INVALID", "digest parameter missing")
        for piece in call.body:
            with self.lock:
                upload.data += piece
        with self.lock:
            data = bytes(upload.data)
            self.uploads.pop(upload.uuid, None)  # a bad digest ends the session too, as in distribution
        if digest_of(data) != digest:
            return Reply.error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        self._store_blob(upload.repo, data, "upload")
        return Reply(201, headers=self._blob_headers(upload.repo, digest))

    def _upload_status(self, call: Call) -> Reply:
        found = self._session(call)
        if isinstance(found, Reply):
            return found
        return Reply(204, headers=self._session_headers(found))

    def _cancel_upload(self, call: Call) -> Reply:
        found = self._session(call)
        if isinstance(found, Reply):
            return found
        with self.lock:
            self.uploads.pop(found.uuid, None)
        return Reply(204)

    def _session(self, call: Call) -> Upload | Reply:
        """The session a request names, or the error a registry answers for a bad or forgotten one."""
        name, uuid = call.match["name"], call.match["uuid"]
        denied = self._authorize(call, name)
        if denied:
            return denied
        with self.lock:
            upload = self.uploads.get(uuid)
        if upload is None or upload.repo != name:
            return Reply.error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", detail=uuid)
        # distribution signs where an upload stands into ``_state``; a client that drops the query loses its session.
        state = call.arg("_state")
        if state not in upload.states:
            return Reply.error(400, "BLOB_UPLOAD_INVALID", "blob upload invalid: missing or unknown _state")
        with self.lock:
            if self.behaviour.strict_state and upload.states[state] != len(upload.data):
                self.uploads.pop(uuid, None)
                return Reply.error(400, "BLOB_UPLOAD_INVALID", "blob upload invalid: upload resumed at wrong offset")
        return upload

    def _session_headers(self, upload: Upload) -> dict[str, str]:
        state = secrets.token_urlsafe(12)
        with self.lock:
            size = len(upload.data)
            upload.states[state] = size
        return {
            "Location": f"/v2/{upload.repo}/blobs/uploads/{upload.uuid}?_state={state}",
            # distribution's way: "0-0" for an empty upload as for a one-byte one.
            "Range": f"0-{max(size - 1, 0)}",
            "Docker-Upload-UUID": upload.uuid,
        }

    def _blob_headers(self, repo: str, digest: str) -> dict[str, str]:
        return {"Location": f"/v2/{repo}/blobs/{digest}", "Docker-Content-Digest": digest}

    def _store_blob(self, repo: str, data: bytes, via: Literal["upload", "monolithic", "mount"]) -> None:
        with self.lock:
            digest = self.add_blob(repo, data)
            self.stored.append(Stored("blob", repo, digest, via))

    def _put_manifest(self, call: Call) -> Reply:
        """Store the exact bytes, once everything they reference is in the repository."""
        name, ref = call.match["name"], call.match["ref"]
        denied = self._authorize(call, name)
        if denied:
            return denied
        limit = self.behaviour.manifest_max_bytes
        if int(call.headers.get("Content-Length") or 0) > limit:
            return Reply.error(413, "SIZE_INVALID", f"manifest larger than {limit} bytes")
        data = call.body.read_all()
        if len(data) > limit:
            return Reply.error(413, "SIZE_INVALID", f"manifest larger than {limit} bytes")
        media_type = call.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            doc = json.loads(data)
        except ValueError:
            return Reply.error(400, "MANIFEST_INVALID", "manifest invalid: not JSON")
        if not isinstance(doc, dict) or doc.get("mediaType", media_type) != media_type:
            return Reply.error(400, "MANIFEST_INVALID", f"manifest invalid: Content-Type {media_type!r} does not match")
        digest = digest_of(data)
        if ref.startswith("sha256:") and ref != digest:
            return Reply.error(400, "DIGEST_INVALID", "manifest digest did not match")
        with self.lock:
            repo = self.repository(name)
            if "manifests" in doc:
                wanted = [m.get("digest") for m in doc.get("manifests", [])]
                missing = [d for d in wanted if d not in repo.manifests]
            else:
                wanted = [d.get("digest") for d in [doc.get("config") or {}, *doc.get("layers", [])]]
                missing = [d for d in wanted if d not in repo.blobs]
            if missing:
                return Reply.error(400, "MANIFEST_BLOB_UNKNOWN", "blob unknown to registry", detail=missing[0])
            self.add_manifest(name, data, media_type, None if ref == digest else ref)
            self.stored.append(Stored("manifest", name, digest, "put"))
        headers = {"Location": f"/v2/{name}/manifests/{digest}"}
        if not self.behaviour.ecr_like:
            headers["Docker-Content-Digest"] = digest
        return Reply(201, headers=headers)

    # -- auth

    def _scheme(self) -> Literal["none", "basic", "bearer"]:
        auth = self.behaviour.auth
        return "basic" if auth != "none" and self.behaviour.ecr_like else auth

    def _authorize(self, call: Call, repo: str | None) -> Reply | None:
        """None if the request may proceed, else the 401 a real registry would send."""
        scheme = self._scheme()
        if scheme == "none":
            return None
        action = "pull" if call.method in ("GET", "HEAD") else "push"
        given, _, value = call.headers.get("Authorization", "").partition(" ")
        if scheme == "basic":
            if given.lower() == "basic" and self._expired_basic(value):
                return Reply.error(403, "DENIED", "Your authorization token has expired. Reauthenticate and try again.")
            if given.lower() == "basic" and self._valid_basic(value):
                return None
        elif given.lower() == "bearer":
            with self.lock:
                token = self.tokens.get(value)
                if token and token.valid and (repo is None or (repo, action) in token.scopes):
                    token.uses += 1
                    max_uses = self.behaviour.token_max_uses
                    if max_uses is not None and token.uses >= max_uses:
                        token.valid = False
                    return None
        return self._unauthorized(repo, action)

    def _unauthorized(self, repo: str | None, action: str) -> Reply:
        if self._scheme() == "basic":
            challenge = 'Basic realm="stub-registry"'
        else:
            challenge = f'Bearer realm="http://{self.host}/token",service="{SERVICE}"'
            if repo is not None:
                challenge += f',scope="repository:{repo}:{action}"'
        return Reply.error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge})

    def _granted(self, call: Call, repo: str, action: str) -> bool:
        """Whether the request's credentials cover ``action`` on another repository (a mount's source)."""
        if self._scheme() != "bearer":
            return True
        given, _, value = call.headers.get("Authorization", "").partition(" ")
        with self.lock:
            token = self.tokens.get(value) if given.lower() == "bearer" else None
            return bool(token and token.valid and (repo, action) in token.scopes)

    def _expired_basic(self, value: str) -> bool:
        try:
            return base64.b64decode(value).decode().partition(":")[2] in self.behaviour.expired_passwords
        except ValueError:
            return False

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

    # -- faults

    def fault_for(self, method: str, path: str, query: str) -> Fault | None:
        """The fault whose turn this request is, if any (see ``Fault``); counts the request for every match."""
        firing = None
        with self.lock:
            for fault in self.behaviour.faults:
                if fault.matches(method, path, query) and fault.turn() and firing is None:
                    fault.times -= 1
                    fault.fired += 1
                    firing = fault
        if firing is not None and firing.before is not None:
            firing.before()
        return firing

    def fault_reply(self, fault: Fault, method: str, path: str) -> Reply:
        headers = dict(fault.headers)
        if fault.status == 401 and "WWW-Authenticate" not in headers:
            repo = re.match(r"^/v2/(.+)/(?:blobs|manifests)/", path)
            action = "pull" if method in ("GET", "HEAD") else "push"
            headers.update(self._unauthorized(repo[1] if repo else None, action).headers)
            headers["Content-Type"] = "application/json"
        assert fault.status is not None
        return Reply.error(fault.status, fault.code, "injected fault", headers)


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

    def dispatch(self, method: str, target: str, headers: Mapping[str, str], body: RequestBody) -> Reply:
        """Log, apply faults, route, and read whatever body is left; raises ``_Reset`` to reset the connection."""
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        authorization = headers.get("Authorization")
        entry = LoggedRequest(
            self.name,
            method,
            parts.path,
            query,
            {k: v for k, v in headers.items() if k.lower() != "authorization"},
            authorization.split(" ", 1)[0] if authorization else None,
        )
        with self.stub.lock:
            self.stub.log.append(entry)
        try:
            fault = self.stub.fault_for(method, parts.path, unquote(parts.query)) if self.name == "registry" else None
            if fault is not None and fault.reset_after is not None:
                body.limit = fault.reset_after
                self._route(method, parts.path, query, headers, body)
                body.drain()
                raise _Reset
            if fault is not None and fault.status is not None:
                reply = self.stub.fault_reply(fault, method, parts.path)
            else:
                reply = self._route(method, parts.path, query, headers, body)
                if fault is not None:
                    reply.headers.update(fault.headers)
                    if fault.cut_answer is not None and fault.cut_answer < len(reply.body):
                        reply.content_length = len(reply.body)
                        reply.body = reply.body[: fault.cut_answer]
            if not body.drain():
                reply.close = True
            entry.status, entry.answer = reply.status, dict(reply.headers)
            return reply
        finally:
            entry.received = body.received

    def _route(
        self, method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str], body: RequestBody
    ) -> Reply:
        for methods, pattern, handle in self.routes:
            match = pattern.match(path)
            if match and method in methods:
                return handle(Call(method, path, query, headers, match, body))
        return Reply.error(404, "NOT_FOUND", f"no route for {method} {path}")


def _handler_class(server: _Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; with Nagle on, keep-alive clients stall ~40 ms per request.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            headers = {k: v for k, v in self.headers.items()}
            try:
                reply = server.dispatch(self.command, self.path, headers, RequestBody(self.rfile, headers))
            except _Reset:
                self._reset()
                return
            except (_ClientGone, OSError):
                self.close_connection = True
                return
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            length = len(reply.body)
            if reply.content_length is not None:
                length = reply.content_length
                reply.close = True
            self.send_header("Content-Length", str(length))
            if reply.close:
                # Said out loud, so the client does not send its next request into a closing connection.
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)

        def _reset(self) -> None:
            """Close with RST (linger 0) rather than FIN: the client sees "connection reset", not a clean end."""
            self.close_connection = True
            with suppress(OSError):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # The descriptor is released only once the reader made from the socket is closed too.
            self.rfile.close()
            self.connection.close()

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


# --- the stub answering for ECR -----------------------------------------------------------------------------------

#: An ECR registry's name, for the code paths that depend on it (whole-blob uploads, ECR's limits); a ``Redirector``
#: mounted on a session sends its requests to the stub.
ECR_HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


class Redirector(requests.adapters.HTTPAdapter):
    """Sends requests for ``host`` to the stub, while the client keeps seeing ``host`` in every URL."""

    def __init__(self, host: str, target: str) -> None:
        super().__init__()
        self.host, self.target = host, target

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        original = request.url or ""
        request.url = original.replace(f"http://{self.host}/", f"http://{self.target}/", 1)
        try:
            response = super().send(request, **kwargs)
        finally:
            request.url = original
        response.url = original
        return response


def stub_client(
    host: str, creds: Credentials | None = None, session: requests.Session | None = None, sleeps: list[float] | None = None
) -> RegistryClient:
    """A client of ``host`` (the stub's, or one a session's ``Redirector`` sends to it) offering ``creds`` and whose
    retries never sleep: the delays they ask for are kept in ``sleeps``."""
    asked = sleeps if sleeps is not None else []
    return RegistryClient(
        host,
        plain_http=True,
        keychain=Keychain((lambda _: creds,)),
        session=session,
        retry=RetryPolicy(sleep=asked.append),
    )
