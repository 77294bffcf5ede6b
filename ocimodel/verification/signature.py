"""The ``signature.model`` check: does ``/models/model.sig`` verify with the given key, and do the files under
``/models`` of the image as a runtime would see it match what it signed?

Unlike the KServe checks this reads every byte of every model file, so it has its own limits
(``SignatureLimits``), separate from the ``Budget`` the other checks share. Each layer is streamed once,
top layer first: ocimodel's signed images carry ``model.sig`` in the top layer, so a forged or foreign signature
is refused before the weight layers are read. Files are hashed as their tar members go by, never held in memory;
the layers are then merged as a runtime merges them (whiteouts) and the surviving files compared with the
statement, as ``model_signing verify key`` compares an unpacked folder.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ocimodel.errors import OcimodelError, VerificationError
from ocimodel.image.source import ImageSource
from ocimodel.layout.descriptor import Descriptor
from ocimodel.layout.plan import MODEL_DIR
from ocimodel.parallel import check as check_stop
from ocimodel.progress import Reporter, SilentReporter
from ocimodel.signing.bundle import MAX_BUNDLE_BYTES
from ocimodel.signing.keys import PublicKey
from ocimodel.signing.statement import SIGNATURE_NAME, ModelFile, Statement
from ocimodel.signing.verify import check_files, verify_signature
from ocimodel.units import human_size
from ocimodel.verification.overlay import overlay
from ocimodel.verification.report import MODES, Check, Result
from ocimodel.verification.tarread import (
    TAR_ERRORS,
    Budget,
    Entry,
    Kind,
    Metered,
    ReadPolicy,
    TooLarge,
    decompressed,
    entry_of,
)

CHECK_ID = "signature.model"
SIGNATURE_PATH = f"{MODEL_DIR}/{SIGNATURE_NAME}"
_CHUNK = 1 << 20

#: Decompressed bytes one signature check may read: every layer in full, so the whole of each layer's size
#: (uncompressed weights), up to ten times it for compressed ones (text compresses 3-5 times), plus 1 GiB.
SIGNATURE_EXPANDED = 1 << 30
SIGNATURE_RATIO = 10
#: Tar members, and bytes of their names, one signature check keeps: as many as the other checks allow.
SIGNATURE_ENTRIES = 500_000
SIGNATURE_NAMES = 512 << 20
#: A layer that yields less than ``STALL_BYTES`` in ``STALL_SECONDS`` has stalled (a registry trickling bytes).
STALL_SECONDS = 120.0
STALL_BYTES = 1 << 20


@dataclass(frozen=True)
class SignatureLimits:
    """What one signature check may read: ``policy`` bounds bytes and members (as the other checks' ``Budget``
    does, with its own, larger numbers), ``stall_seconds``/``stall_bytes`` how slow a layer may come in."""

    policy: ReadPolicy = field(
        default_factory=lambda: ReadPolicy(
            expanded=SIGNATURE_EXPANDED, ratio=SIGNATURE_RATIO, entries=SIGNATURE_ENTRIES, names=SIGNATURE_NAMES
        )
    )
    stall_seconds: float = STALL_SECONDS
    stall_bytes: int = STALL_BYTES


@dataclass(frozen=True)
class _Layer:
    """What one layer holds for the signature: its entries (hard links to model files resolved to files, so the
    merge treats them as the file they share an inode with), the sha256 of each model file it holds, and the bytes
    of ``models/model.sig`` if it holds one."""

    entries: tuple[Entry, ...]
    digests: dict[str, str]
    signature: bytes | None


class _Unverifiable(VerificationError):
    """The image cannot be checked against a signature (no model.sig, a symlink, a layer past the limits)."""


def check_signature(
    source: ImageSource,
    layers: Sequence[Descriptor],
    key: PublicKey,
    limits: SignatureLimits = SignatureLimits(),
    reporter: Reporter | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Check:
    """The ``signature.model`` check of one platform's image (its ``layers``, bottom first), as a ``Check``."""
    reporter = reporter or SilentReporter()
    task = reporter.task("signature: hashing /models", sum(d.size for d in layers))
    budget = Budget(limits.policy)
    read: dict[int, _Layer] = {}
    statement: Statement | None = None
    where = f"/{SIGNATURE_PATH} of {source.name}"
    try:
        if not layers:
            raise _Unverifiable(f"{source.name} has no layers for this platform, so no /{SIGNATURE_PATH}")
        for i in reversed(range(len(layers))):
            read[i] = _read_layer(source, layers[i], budget, limits, task.advance, stop, clock)
            if statement is None and read[i].signature is not None and _survives(read, i, SIGNATURE_PATH):
                statement = verify_signature(read[i].signature or b"", key, where)
        ordered = [read[i] for i in range(len(layers))]
        tree = overlay([layer.entries for layer in ordered])
        if statement is None:
            statement = verify_signature(_final_signature(tree, ordered, source.name), key, where)
        files = _model_files(tree, ordered, source.name)
        check_files(statement, files, source.name)
    except VerificationError as exc:  # the signature's, the files', the limits', a layer that is no tar
        task.finish("failed")
        return Check(CHECK_ID, MODES, Result.FAIL, str(exc))
    task.finish()
    signed = len(statement.files)
    return Check(CHECK_ID, MODES, Result.PASS,
                 f"/{SIGNATURE_PATH} verifies with {key.source}; the {signed} signed files under /{MODEL_DIR} match it")


def _survives(read: dict[int, _Layer], index: int, path: str) -> bool:
    """Whether layer ``index``'s ``path`` is the one the image shows: only the layers above it (all read, since
    layers are read top first) can replace or delete it."""
    tree = overlay([read[i].entries for i in sorted(read) if i >= index])
    entry = tree.get(path)
    return entry is not None and entry.kind is Kind.FILE and path in read[index].digests and all(
        path not in read[i].digests for i in read if i > index
    )


def _final_signature(tree: dict[str, Entry], layers: Sequence[_Layer], name: str) -> bytes:
    entry = tree.get(SIGNATURE_PATH)
    if entry is None:
        raise _Unverifiable(f"{name} has no /{SIGNATURE_PATH}: the image is not signed (sign it when packing)")
    if entry.kind is not Kind.FILE:
        raise _Unverifiable(f"/{SIGNATURE_PATH} of {name} is a {entry.kind.value}, not a file")
    for layer in reversed(layers):
        if SIGNATURE_PATH in layer.digests:
            if layer.signature is None:
                raise _Unverifiable(f"/{SIGNATURE_PATH} of {name} is a hard link; a signature must be a plain file")
            return layer.signature
    raise _Unverifiable(f"/{SIGNATURE_PATH} of {name} is a hard link to a file outside /{MODEL_DIR}")


def _model_files(tree: dict[str, Entry], layers: Sequence[_Layer], name: str) -> list[ModelFile]:
    """Each regular file under /models with the digest of the layer that placed it (the topmost that lists it:
    a layer above that replaced or deleted it would have taken it out of the tree)."""
    top = tree.get(MODEL_DIR)
    if top is None or top.kind is not Kind.DIR:
        what = "no" if top is None else f"a {top.kind.value} for its"
        raise _Unverifiable(f"{name} has {what} /{MODEL_DIR} directory")
    prefix = MODEL_DIR + "/"
    files = []
    for path in sorted(p for p in tree if p.startswith(prefix)):
        entry = tree[path]
        if entry.kind is Kind.DIR:
            continue
        shown = "/" + path if path.isprintable() else repr("/" + path)
        if entry.kind is not Kind.FILE:
            kind = f"a hard link to {entry.link}" if entry.kind is Kind.HARDLINK else f"a {entry.kind.value}"
            raise _Unverifiable(f"{shown} in {name} is {kind}: model signatures cover regular files only")
        digest = next((layer.digests[path] for layer in reversed(layers) if path in layer.digests), None)
        if digest is None:
            raise _Unverifiable(f"{shown} in {name} is a hard link to a file outside /{MODEL_DIR}")
        files.append(ModelFile(path[len(prefix):], digest))
    return files


class _Paced(io.RawIOBase):
    """A layer's bytes as they come: counted for progress, checked for cancellation and for stalls (a remote
    failure, so an error rather than a failed check)."""

    def __init__(
        self, stream: Any, limits: SignatureLimits, advance: Callable[[int], None], stop: threading.Event | None,
        clock: Callable[[], float], what: str,
    ) -> None:
        self._stream = stream
        self._what = what
        self._limits = limits
        self._advance = advance
        self._stop = stop
        self._clock = clock
        self._window_start = clock()
        self._window_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        check_stop(self._stop)
        data = self._stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._advance(n)
        self._window_bytes += n
        now = self._clock()
        if now - self._window_start >= self._limits.stall_seconds:
            if self._window_bytes < self._limits.stall_bytes:
                raise OcimodelError(
                    f"{self._what} stalled: less than {human_size(self._limits.stall_bytes)} came in "
                    f"{self._limits.stall_seconds:.0f} s; try again, or from closer to the registry"
                )
            self._window_start, self._window_bytes = now, 0
        return n


def _read_layer(
    source: ImageSource,
    layer: Descriptor,
    budget: Budget,
    limits: SignatureLimits,
    advance: Callable[[int], None],
    stop: threading.Event | None,
    clock: Callable[[], float],
) -> _Layer:
    what = f"layer {layer.digest} of {source.name}"
    if "tar" not in layer.media_type:
        return _Layer((), {}, None)
    budget.open_layer(layer.size)
    try:
        with source.layer(layer) as stream:
            # Read through, never seeked: the model files are read anyway, and the base's are few.
            paced = io.BufferedReader(_Paced(stream, limits, advance, stop, clock, what), _CHUNK)
            opened = decompressed(stream, paced)
            if opened is None:
                return _Layer((), {}, None)
            return _members(Metered(opened[0], budget, False), budget)
    except TooLarge as exc:
        raise _Unverifiable(f"{what} {exc}") from None
    except TAR_ERRORS as exc:
        raise _Unverifiable(f"{what} is not a readable tar ({exc})") from None


def _members(metered: Metered, budget: Budget) -> _Layer:
    """One pass over a layer's tar: every member's header kept, every model file's data hashed as it goes by."""
    entries: list[Entry] = []
    digests: dict[str, str] = {}
    signature: bytes | None = None
    prefix = MODEL_DIR + "/"
    with tarfile.open(fileobj=metered, mode="r:") as tar:  # type: ignore[call-overload]
        while (info := tar.next()) is not None:
            tar.members.clear()  # TarFile keeps every member it has read: only our slimmer Entry is kept
            budget.keep(info)
            entry = entry_of(info)
            if entry.path.startswith(prefix):
                if entry.kind is Kind.FILE:
                    digest, data = _hash_member(tar, info, keep=entry.path == SIGNATURE_PATH)
                    digests[entry.path] = digest
                    if data is not None:
                        signature = data
                elif entry.kind is Kind.HARDLINK:
                    target = posixpath.normpath("/" + entry.link).lstrip("/")
                    if target in digests:  # a tar's hard link names a member earlier in the same tar
                        digests[entry.path] = digests[target]
                        entry = Entry(entry.raw, entry.path, Kind.FILE, entry.mode)
            entries.append(entry)
    return _Layer(tuple(entries), digests, signature)


def _hash_member(tar: tarfile.TarFile, info: tarfile.TarInfo, keep: bool) -> tuple[str, bytes | None]:
    """The sha256 of a member's data, read in chunks; its bytes too when ``keep`` and it is small enough to be a
    signature (a larger one is kept cut short, which ``verify_signature`` refuses as too large)."""
    h = hashlib.sha256()
    kept = bytearray() if keep else None
    member = tar.extractfile(info)
    assert member is not None  # a regular file always has data, possibly empty
    with member:
        while chunk := member.read(_CHUNK):
            h.update(chunk)
            if kept is not None and len(kept) <= MAX_BUNDLE_BYTES:
                kept += chunk[: MAX_BUNDLE_BYTES + 1 - len(kept)]
    return h.hexdigest(), bytes(kept) if kept is not None else None
