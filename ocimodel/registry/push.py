"""Push an OCI image layout to a registry: blobs in parallel, then manifests, then the index.

Each blob is checked with HEAD first, mounted from another repository when one is known to hold it, and otherwise
uploaded from disk, never from memory. Uploads are chunked where the registry does chunking right, so a failure
resumes from the registry's ``Range`` instead of from zero; registries that get chunking wrong (ECR: 201 for an
intermediate PATCH, a ``Range`` that stops advancing) get whole-blob uploads. Every failure mode either resumes,
restarts the blob with a fresh upload session, or stops with one line saying why, before any manifest is pushed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urljoin

import requests

from ocimodel.errors import OcimodelError, RegistryError
from ocimodel.image.walk import walk
from ocimodel.layout.descriptor import Descriptor, descriptor_list
from ocimodel.layout.source import LayoutSource
from ocimodel.layout.store import Layout
from ocimodel.layout.tarlayer import read_range
from ocimodel.parallel import check, run_all
from ocimodel.progress import Reporter
from ocimodel.registry.client import RegistryClient
from ocimodel.registry.known import KnownBlobs
from ocimodel.registry.reference import Reference, parse_ecr
from ocimodel.results import BlobOutcome, PushResult
from ocimodel.retry import RetryPolicy, retry
from ocimodel.units import human_size

log = logging.getLogger("ocimodel.registry")

DEFAULT_CHUNK_SIZE = 128 << 20
_SESSION_LOST = frozenset({"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"})
#: ECR's largest layer ("Layer size", ECR service quotas): anything bigger is refused after it was all sent.
ECR_MAX_LAYER_BYTES = 52_000 << 20


def is_ecr(registry: str) -> bool:
    return parse_ecr(registry) is not None


def refuse_oversized_layers(registry: str, layers: Iterable[tuple[str, int]]) -> None:
    """Stop before any byte moves if ECR would refuse a layer (``layers``: what to call it, its size)."""
    if not is_ecr(registry):
        return
    for name, size in layers:
        if size > ECR_MAX_LAYER_BYTES:
            raise OcimodelError(
                f"{name} is {human_size(size)}, more than the {human_size(ECR_MAX_LAYER_BYTES)} ECR accepts in one "
                f"layer ({registry}); nothing was sent: leave it out (exclude it) or use another registry"
            )


@dataclass(frozen=True)
class PushOptions:
    jobs: int = 4
    #: Chunk size for chunked uploads; 0 forces whole-blob uploads everywhere.
    chunk_size: int = DEFAULT_CHUNK_SIZE
    mount_from: tuple[str, ...] = ()
    #: Upload attempts per blob (fresh sessions); resumes within a session do not count.
    attempts: int = 5
    retry: RetryPolicy = RetryPolicy()


@dataclass(frozen=True)
class _Image:
    """What a push sends: blobs (deduplicated), then manifests in dependency order (children before parents)."""

    top: Descriptor
    blobs: tuple[Descriptor, ...]
    manifests: tuple[tuple[Descriptor, bytes], ...]


def collect(source: LayoutSource) -> _Image:
    """Walk the image, every platform of it, and check every blob is in the layout with its size, before anything
    is sent."""
    layout = source.layout
    nodes = walk(source)
    blobs: dict[str, Descriptor] = {}
    for node in nodes:
        if not node.is_index:
            if "config" not in node.doc:
                raise OcimodelError(f"{node.what} is malformed: it has no config; nothing was pushed")
            try:
                config = Descriptor.from_json(node.doc["config"])
            except ValueError as exc:
                raise OcimodelError(f"{node.what} is malformed: {exc}; nothing was pushed") from None
            for blob in (config, *descriptor_list(node.doc, "layers", node.what)):
                blobs.setdefault(blob.digest, blob)
    manifests = tuple((node.descriptor, node.data) for node in nodes)
    for blob in blobs.values():
        path = layout.blob_path(blob.digest)
        if not path.is_file():
            raise OcimodelError(f"layout {layout.root} lacks blob {blob.digest}; pack it again (nothing was pushed)")
        if path.stat().st_size != blob.size:
            raise OcimodelError(
                f"blob {blob.digest} in {layout.root} is {path.stat().st_size} bytes, not {blob.size}; "
                "the layout is damaged: pack it again (nothing was pushed)"
            )
    return _Image(manifests[-1][0], tuple(blobs.values()), manifests)


@dataclass(frozen=True)
class Upload:
    """A blob to send: its size, its digest when known up front, and how to produce any range of its bytes again.

    ``read(start, length)`` yields the bytes; it is called again for every resend, resume or fresh session, so a blob
    never has to be held in memory or even exist on disk (a tar layer is regenerated from the model files). With
    ``digest`` None the digest is computed from the bytes as they are sent, and there is nothing to HEAD or mount.
    """

    size: int
    digest: str | None
    read: Callable[[int, int], Iterable[bytes]]
    label: str
    #: The file the bytes are read from, when there is one: named when the registry finds they do not match.
    path: Path | None = None

    @classmethod
    def of_bytes(cls, data: bytes, digest: str, label: str) -> Upload:
        """A small document (a config) already in memory."""
        return cls(len(data), digest, lambda start, length: [data[start : start + length]], label)


def layout_upload(layout: Layout, blob: Descriptor) -> Upload:
    path = layout.blob_path(blob.digest)
    return Upload(blob.size, blob.digest, partial(read_range, path, size=blob.size), _label(blob), path)


class _StreamHash:
    """sha256 of a blob as it is sent, across resends and resumes: each byte counts once, in order."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.position = 0

    def feed(self, offset: int, data: bytes) -> None:
        if offset > self.position:
            # The registry claimed to hold bytes this upload never sent: its Range cannot be trusted.
            raise _ChunkingBroken(f"registry resumed at byte {offset}, but only {self.position} were sent")
        if offset + len(data) > self.position:
            self._hash.update(data[self.position - offset :])
            self.position = offset + len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class _Window:
    """``length`` bytes from ``start`` of an upload, as a body requests can stream (``read``) and measure (``len``)."""

    def __init__(
        self, upload: Upload, start: int, length: int, progress: Callable[[int], None], hasher: _StreamHash | None
    ) -> None:
        self._chunks = iter(upload.read(start, length))
        self._pending = b""
        self._position = start
        self._end = start + length
        self._label = upload.label
        self._length = length
        self._progress = progress
        self._hasher = hasher

    def __len__(self) -> int:
        return self._length

    def read(self, n: int = -1) -> bytes:
        if not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending and self._position < self._end:
                # The registry was promised Content-Length bytes; sending fewer would leave it waiting forever.
                raise OcimodelError(
                    f"{self._label}: its bytes ended {self._end - self._position} short of its size; if its files "
                    "changed, run again without the digest cache"
                )
        data = self._pending if n is None or n < 0 else self._pending[:n]
        self._pending = self._pending[len(data) :]
        if self._hasher is not None:
            self._hasher.feed(self._position, data)
        self._position += len(data)
        self._progress(len(data))
        return data

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> _Window:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Body:
    """Opens the window a request sends, again for each resend, and keeps count of what the progress bar was told.

    A resend after a 401 starts again from the window's first byte, so what the bar already counted is taken back;
    after a failure, ``counted`` says how much of this body the bar holds.
    """

    def __init__(
        self, upload: Upload, start: int, length: int, progress: Callable[[int], None], hasher: _StreamHash | None
    ) -> None:
        self._args = (upload, start, length)
        self._progress = progress
        self._hasher = hasher
        self.counted = 0

    def _count(self, n: int) -> None:
        self.counted += n
        self._progress(n)

    def __call__(self) -> _Window:
        if self.counted:
            self._progress(-self.counted)
            self.counted = 0
        return _Window(*self._args, self._count, self._hasher)


class _ChunkingBroken(Exception):
    """The registry mishandled a chunked upload; the blob starts over as a whole-blob upload."""


@dataclass
class _Session:
    location: str
    min_chunk: int = 0


@dataclass
class Pusher:
    """Sends blobs and manifests to one repository; shared by ``push`` (from a layout) and ``build`` (from files)."""

    client: RegistryClient
    repository: str
    options: PushOptions
    reporter: Reporter
    known: KnownBlobs | None = None
    chunking: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.chunking = self.chunking and self.options.chunk_size > 0 and not is_ecr(self.client.registry)

    def check_access(self) -> None:
        """Fail fast, before any upload, on a registry that is unreachable or refuses us push access.

        Without it, every parallel upload would find out on its own, after its own retries.
        """
        self.client.request(
            "GET", f"{self.client.base_url}/v2/", self.repository, actions=("pull", "push"), ok=(200,)
        ).close()

    def push_all(self, uploads: Iterable[Upload]) -> list[BlobOutcome]:
        """Upload on ``jobs`` threads, largest first so the long ones start early; the first failure stops all."""
        order = sorted(uploads, key=lambda u: -u.size)
        return run_all(self.push_blob, order, self.options.jobs, "push")

    def push_blob(self, upload: Upload, stop: threading.Event | None = None, *, absent: bool = False) -> BlobOutcome:
        """``absent``: the caller has just found (HEAD) that the repository lacks the blob, so it is not asked twice.

        The outcome says how long the blob took, retries included (what a slow blob cost, for callers and ``--json``).
        """
        started = time.monotonic()
        outcome = self._push_blob(upload, stop, absent)
        return replace(outcome, seconds=time.monotonic() - started)

    def _push_blob(self, upload: Upload, stop: threading.Event | None, absent: bool) -> BlobOutcome:
        refuse_oversized_layers(self.client.registry, [(f"layer {upload.label}", upload.size)])
        if (
            upload.digest is not None
            and not absent
            and self.client.head_blob(self.repository, upload.digest) is not None
        ):
            return BlobOutcome(upload.digest, upload.size, "skipped")
        task = self.reporter.task(upload.label, upload.size)
        candidates = self._mount_candidates(upload.digest) if upload.digest else []
        sent = 0

        def progress(n: int) -> None:
            nonlocal sent
            check(stop)
            sent += n
            task.advance(n)

        def attempt() -> BlobOutcome:
            """One upload session (or mount) for the blob, from its first byte."""
            nonlocal sent
            if sent:  # what an earlier session sent is sent again
                task.advance(-sent)
                sent = 0
            mount = candidates.pop(0) if candidates else None
            session = self._start(upload, mount)
            if session is None:
                assert upload.digest is not None
                task.finish(f"mounted from {mount}")
                return BlobOutcome(upload.digest, upload.size, "mounted", mount)
            hasher = None if upload.digest else _StreamHash()
            if self._use_chunks(upload.size):
                try:
                    digest = self._upload_chunked(upload, session, progress, hasher)
                except _ChunkingBroken as exc:
                    with self.lock:
                        if self.chunking:
                            log.warning("registry %s mishandles chunked uploads (%s): using whole-blob uploads", self.client.registry, exc)
                        self.chunking = False
                    return attempt()  # at once, not as a failure; once, since chunking is now off for good
            else:
                digest = self._upload_whole(upload, session, progress, hasher)
            task.finish("uploaded")
            return BlobOutcome(digest, upload.size, "uploaded")

        def restartable(exc: Exception) -> bool:
            # 416: the registry and we disagree on how much of the session it holds; a fresh one settles it.
            return (
                isinstance(exc, RegistryError)
                and not _digest_refused(upload, exc)
                and (exc.transient or bool(exc.codes & _SESSION_LOST) or exc.status == 416)
            )

        def starting_over(exc: Exception, delay: float) -> None:
            log.info("blob %s: %s; starting over in %.1fs", upload.label, exc, delay)

        try:
            return retry(
                attempt,
                retryable=restartable,
                policy=replace(self.options.retry, attempts=self.options.attempts),
                on_retry=starting_over,
                stop=stop,
            )
        except RegistryError as exc:
            if _digest_refused(upload, exc):
                raise self._mismatch(upload, exc) from None
            raise

    def _mismatch(self, upload: Upload, exc: RegistryError) -> RegistryError:
        """The registry found the bytes do not hash to the digest they were sent under: name the blob, not the
        upload session the error came from (codes kept, so a caller can still tell what happened)."""
        where = f" ({upload.path})" if upload.path else ""
        fix = "the file is damaged (pack the layout again)" if upload.path else "its files changed (run again without the digest cache)"
        return RegistryError(
            f"blob {upload.digest}{where}: registry {self.client.registry} found that the bytes it received do not hash "
            f"to that digest (DIGEST_INVALID): {fix}, or the registry lost part of the upload (try again)",
            status=exc.status,
            codes=exc.codes,
        )

    def _mount_candidates(self, digest: str) -> list[str]:
        candidates = list(self.options.mount_from)
        if self.known is not None:
            candidates += [r for r in self.known.repositories(self.client.registry, digest) if r not in candidates]
        return [r for r in candidates if r != self.repository]

    def _start(self, upload: Upload, mount: str | None) -> _Session | None:
        """Open an upload session; with ``mount``, first ask for a cross-repository mount (None: mounted)."""
        url = self.client.url(self.repository, "blobs/uploads/")
        params = {"mount": upload.digest or "", "from": mount} if mount else None
        scopes = [f"repository:{mount}:pull"] if mount else []
        response = self.client.request(
            "POST", url, self.repository, actions=("pull", "push"), extra_scopes=scopes, params=params,
            ok=(201, 202), retry=True,
        )
        with response:
            if response.status_code == 201 and mount:
                return None
            if response.status_code == 201:
                raise OcimodelError(f"registry {self.client.registry} answered 201 to a new upload of {upload.label}")
            location = urljoin(response.url, response.headers.get("Location", ""))
            if not response.headers.get("Location"):
                raise OcimodelError(f"registry {self.client.registry} opened an upload without a Location")
            announced = response.headers.get("OCI-Chunk-Min-Length", "")
            min_chunk = int(announced) if announced.isdigit() else 0
        if mount:
            log.info("blob %s: mount from %s refused; uploading", upload.label, mount)
        return _Session(location, min_chunk)

    def _use_chunks(self, size: int) -> bool:
        return self.chunking and self.options.chunk_size > 0 and size > self.options.chunk_size

    def _upload_whole(
        self, upload: Upload, session: _Session, progress: Callable[[int], None], hasher: _StreamHash | None
    ) -> str:
        """The whole blob in one request: a PUT when the digest is known (the fewest round trips, and what ECR
        handles), else one streamed PATCH and a PUT with the digest computed on the way."""
        body = _Body(upload, 0, upload.size, progress, hasher)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(upload.size)}
        if upload.digest is not None:
            self._request("PUT", session.location, headers, body, params={"digest": upload.digest}).close()
            return upload.digest
        # ECR answers a PATCH with 201 (not the spec's 202); the blob is only committed by the PUT either way.
        response = self._request("PATCH", session.location, headers, body, ok=(201, 202))
        with response:
            session.location = urljoin(response.url, response.headers.get("Location") or session.location)
        return self._close(upload, session, hasher)

    def _upload_chunked(
        self, upload: Upload, session: _Session, progress: Callable[[int], None], hasher: _StreamHash | None
    ) -> str:
        """PATCH chunk after chunk; after a failure, ask the registry how far it got and go on from there.

        Only failures without progress in between add up (each chunk has the retry budget), so a long upload may meet
        many: the first try and ``attempts`` resumes per chunk.
        """
        chunk = max(self.options.chunk_size, session.min_chunk)
        offset = 0
        sent_end = 0  # the end of the bytes sent so far in this session: the registry cannot hold more
        failed: tuple[int, _Body, RegistryError] | None = None  # the last PATCH, when it failed: its end, body, error

        def patch() -> int:
            """Send the chunk at ``offset``, after a failure from where the registry got to; the next offset."""
            nonlocal offset, sent_end, failed
            if failed is not None:
                end, body, exc = failed
                failed = None  # a failure of the query below is not a stalled PATCH: it ends the session
                resumed = self._resume_point(session)
                if resumed > sent_end:
                    # A Range past what was ever sent (past the blob's end, even) is not a place to resume from.
                    raise RegistryError(
                        f"registry {self.client.registry} says the upload of {upload.label} holds {resumed} bytes, "
                        f"but only {sent_end} were sent",
                        codes=frozenset({"BLOB_UPLOAD_INVALID"}),
                    ) from None
                log.info("blob %s: chunk %d-%d failed (%s); resuming at %d", upload.label, offset, end, exc, resumed)
                # The bar counted what left this process, not what the registry kept.
                progress(resumed - offset - body.counted)
                offset = resumed
            length = min(chunk, upload.size - offset)
            end = offset + length - 1
            body = _Body(upload, offset, length, progress, hasher)
            sent_end = max(sent_end, end + 1)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{end}",
                "Content-Length": str(length),
            }
            try:
                response = self._request("PATCH", session.location, headers, body, ok=(201, 202))
            except RegistryError as exc:
                failed = end, body, exc
                raise
            with response:
                if response.status_code != 202:
                    raise _ChunkingBroken(f"PATCH answered {response.status_code}, not 202")
                got = _range_end(response.headers.get("Range"))
                if got != end:
                    raise _ChunkingBroken(f"Range {response.headers.get('Range')!r} after sending bytes {offset}-{end}")
                session.location = urljoin(response.url, response.headers.get("Location") or session.location)
            return end + 1

        policy = replace(self.options.retry, attempts=self.options.attempts + 1)
        while offset < upload.size:
            offset = retry(patch, retryable=lambda _: failed is not None and failed[2].transient, policy=policy)
        return self._close(upload, session, hasher)

    def _close(self, upload: Upload, session: _Session, hasher: _StreamHash | None) -> str:
        """Finish the session with the blob's digest: known up front, or computed from every byte sent."""
        if upload.digest is None:
            assert hasher is not None and hasher.position == upload.size
        digest = upload.digest or hasher.digest  # type: ignore[union-attr]
        # patient: the registry may now read the whole blob back to check its digest before it answers.
        self._request(
            "PUT", session.location, {"Content-Length": "0"}, None, params={"digest": digest}, retry=True, patient=True
        ).close()
        return digest

    def _request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: _Body | None,
        *,
        params: dict[str, str] | None = None,
        ok: tuple[int, ...] = (201, 204),
        retry: bool = False,
        patient: bool = False,
    ) -> requests.Response:
        return self.client.request(
            method, url, self.repository, actions=("pull", "push"), headers=headers, params=params, body=body,
            ok=ok, retry=retry, patient=patient,
        )

    def _resume_point(self, session: _Session) -> int:
        """The next byte the registry expects, from ``GET <upload URL>`` (204 with ``Range: 0-<end>``)."""
        response = self.client.request(
            "GET", session.location, self.repository, actions=("pull", "push"), ok=(204, 200)
        )
        with response:
            session.location = urljoin(response.url, response.headers.get("Location") or session.location)
            end = _range_end(response.headers.get("Range"))
        # distribution answers "0-0" for an empty upload as for a one-byte one: read it as empty. Should the registry
        # hold that one byte after all, the next PATCH gets 416 and the blob starts over in a fresh session.
        return 0 if not end else end + 1

    # --- manifests ------------------------------------------------------------------------------------------

    def put_manifest(self, desc: Descriptor, data: bytes, reference: str) -> None:
        response = self.client.request(
            "PUT", self.client.url(self.repository, f"manifests/{reference}"), self.repository,
            actions=("pull", "push"), headers={"Content-Type": desc.media_type}, body=data, ok=(200, 201),
            retry=True,
        )
        with response:
            answered = response.headers.get("Docker-Content-Digest")
        if answered and answered != desc.digest:
            raise OcimodelError(
                f"registry {self.client.registry} answered the PUT of manifest {desc.digest} (as {reference}) with "
                f"digest {answered}: it stored something other than the bytes sent, and {self.repository}:{reference} "
                f"may now point at {answered}; do not deploy it, and report the registry's behaviour"
            )


def _digest_refused(upload: Upload, exc: RegistryError) -> bool:
    """The registry found a blob's bytes do not hash to the digest named up front: sending them again cannot help."""
    return upload.digest is not None and "DIGEST_INVALID" in exc.codes


def _range_end(value: str | None) -> int | None:
    """``0-1023`` (or ``bytes=0-1023``) → 1023."""
    if not value:
        return None
    match = re.search(r"(\d+)-(\d+)", value)
    return int(match.group(2)) if match else None


def _short(digest: str) -> str:
    return digest.split(":", 1)[1][:12]


def _label(blob: Descriptor) -> str:
    title = blob.annotations.get("org.opencontainers.image.title")
    return f"{_short(blob.digest)} {title}" if title else _short(blob.digest)


def push(
    layout: Layout,
    ref: Reference,
    *,
    tag: str | None,
    options: PushOptions,
    reporter: Reporter,
    client: RegistryClient,
    known: KnownBlobs | None = None,
) -> PushResult:
    """Push the layout's image (``tag``, or its only tag) to ``ref``; the tag pushed defaults to the layout's."""
    source = LayoutSource(layout, tag)
    image = collect(source)
    refuse_oversized_layers(
        client.registry, ((f"blob {b.digest} ({layout.blob_path(b.digest)})", b.size) for b in image.blobs)
    )
    pusher = Pusher(client, ref.repository, options, reporter, known)
    pusher.check_access()
    by_digest = {o.digest: o for o in pusher.push_all(layout_upload(layout, b) for b in image.blobs)}
    for desc, data in image.manifests[:-1]:
        pusher.put_manifest(desc, data, desc.digest)
    top_desc, top_data = image.manifests[-1]
    pusher.put_manifest(top_desc, top_data, ref.tag or source.tag)
    # The signature pack kept beside the image goes up as its referrer (referrers imports this module).
    from ocimodel.registry import referrers

    signature = None
    for _, bundle in referrers.stored(layout, top_desc):
        signature = referrers.attach(pusher, top_desc, bundle).manifest.digest
    if known is not None:
        known.record(client.registry, ref.repository, list(by_digest))
    outcomes = tuple(by_digest[b.digest] for b in image.blobs)
    return PushResult(
        f"{ref.registry}/{ref.repository}@{top_desc.digest}", top_desc.digest, top_desc.media_type, outcomes,
        signature=signature,
    )


def describe(result: PushResult) -> str:
    counts = {k: sum(1 for b in result.blobs if b.outcome == k) for k in ("uploaded", "mounted", "skipped")}
    sent = sum(b.size for b in result.blobs if b.outcome == "uploaded")
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n) + f" ({human_size(sent)} sent)"

