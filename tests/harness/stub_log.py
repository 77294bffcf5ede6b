"""Questions about the registry stub's request log: which requests concerned a blob, what ranges they sent, which
upload session each belonged to."""

from __future__ import annotations

import re
from collections.abc import Sequence

from tests.harness.registry_stub import LoggedRequest, RegistryStub


def session_of(request: LoggedRequest) -> str | None:
    """The upload session a request opened (POST) or used."""
    if request.method == "POST":
        return request.answer.get("Docker-Upload-UUID")
    match = re.search(r"/blobs/uploads/([^/]+)$", request.path)
    return match[1] if match else None


def blob_requests(stub: RegistryStub, digest: str, *, chunked: bool = False) -> list[LoggedRequest]:
    """Every request about one blob: its HEADs, mount POSTs, and every request of each session that tried to
    upload it. A session is tied to the blob by the PUT that closed it; with ``chunked`` (for a test where only
    this blob is big enough to be chunked) also every session that saw a PATCH, abandoned ones included."""
    log = stub.requests_to()
    sessions = {session_of(r) for r in log if r.method == "PUT" and r.query.get("digest") == [digest]}
    if chunked:
        sessions |= {session_of(r) for r in log if r.method == "PATCH"}
    sessions.discard(None)
    return [
        r
        for r in log
        if r.path.endswith(f"/blobs/{digest}") or r.query.get("mount") == [digest] or session_of(r) in sessions
    ]


def content_range(request: LoggedRequest) -> tuple[int, int]:
    start, end = request.headers["Content-Range"].split("-")
    return int(start), int(end)


def methods(requests_: Sequence[LoggedRequest]) -> list[str]:
    return [r.method for r in requests_]


def manifest_puts(stub: RegistryStub) -> list[LoggedRequest]:
    return [r for r in stub.requests_to() if r.method == "PUT" and "/manifests/" in r.path]
