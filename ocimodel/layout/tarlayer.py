"""Deterministic tar layers, generated as a stream of chunks straight from the source files.

Every header field that could vary between machines is fixed (owner 0:0 without names, modes 0644/0755, mtime 0,
members sorted), so the same names and contents always give the same bytes. Headers use the GNU format: sizes of
8 GiB and more are written in base-256 in the header itself, which GNU tar, Python, Go (umoci, containerd) and
Clair all read, unlike PAX size records. The stream's exact length is known before a byte is read, which lets a
push announce ``Content-Length`` for a layer that was never written to disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from ocimodel.source import FileIdentity

BLOCK = 512
CHUNK = 1 << 20
MTIME = 0
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


@dataclass(frozen=True)
class Member:
    """One tar entry: a directory (``source`` is None) or a regular file read from ``source``."""

    name: str
    source: Path | None = None
    size: int = 0
    #: The file the source listed at ``source``; reads refuse any other.
    identity: FileIdentity | None = None

    @property
    def is_dir(self) -> bool:
        return self.source is None


def header(member: Member) -> bytes:
    info = tarfile.TarInfo(member.name)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = MTIME
    if member.is_dir:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.type = tarfile.REGTYPE
        info.mode = 0o644
        info.size = member.size
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")


def _padding(size: int) -> int:
    return -size % BLOCK


@dataclass(frozen=True)
class _Segment:
    """A run of the tar stream: literal bytes (headers, padding, the end) or a file's content."""

    start: int
    length: int
    data: bytes = b""
    source: Path | None = None
    identity: FileIdentity | None = None


def _segments(members: Iterable[Member]) -> list[_Segment]:
    segments: list[_Segment] = []
    offset = 0

    def add(length: int, data: bytes = b"", source: Path | None = None, identity: FileIdentity | None = None) -> None:
        nonlocal offset
        if length:
            segments.append(_Segment(offset, length, data, source, identity))
            offset += length

    for member in members:
        head = header(member)
        add(len(head), head)
        if not member.is_dir:
            add(member.size, source=member.source, identity=member.identity)
            pad = _padding(member.size)
            add(pad, b"\0" * pad)
    add(len(END_OF_ARCHIVE), END_OF_ARCHIVE)
    return segments


def tar_size(members: Iterable[Member]) -> int:
    """The exact length of ``tar_chunks(members)``, computed without reading any file."""
    return sum(len(header(m)) + m.size + _padding(m.size) for m in members) + len(END_OF_ARCHIVE)


def tar_chunks(members: Iterable[Member], chunk_size: int = CHUNK) -> Iterator[bytes]:
    """Yield the tar stream; each file is read once, in ``chunk_size`` pieces, and must not change meanwhile."""
    return tar_range(members, 0, None, chunk_size)


def tar_range(members: Iterable[Member], start: int, length: int | None, chunk_size: int = CHUNK) -> Iterator[bytes]:
    """Yield bytes ``start`` to ``start + length`` of the tar stream, reading only the files that range covers.

    The stream is a pure function of the members and the files' bytes, so any part of it can be produced again:
    an upload that failed halfway resumes from the registry's offset by seeking into the right file.
    """
    segments = _segments(members)
    end = segments[-1].start + segments[-1].length if length is None else start + length
    for seg in segments:
        lo, hi = max(start, seg.start), min(end, seg.start + seg.length)
        if lo >= hi:
            continue
        if seg.source is None:
            yield seg.data[lo - seg.start : hi - seg.start]
        else:
            yield from read_range(seg.source, lo - seg.start, hi - lo, seg.length, chunk_size, seg.identity)


def _open_flags(identity: FileIdentity | None) -> int:
    """Never block on a FIFO or device put in a file's place; never follow a link where the listing saw none."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    return flags | os.O_NOFOLLOW if identity is not None else flags


def read_range(
    path: Path, offset: int, length: int, size: int, chunk_size: int = CHUNK, identity: FileIdentity | None = None
) -> Iterator[bytes]:
    """Bytes of a file that must still be the regular file listed (``identity``), ``size`` long.

    A file replaced since it was listed (by a link out of the source, a FIFO, another file) or changed while read
    would put other bytes in the layer than the listing vouched for, or hang: both are refused.
    """
    changed = OcimodelError(f"{path} changed size while being read; run again once it is complete")
    replaced = OcimodelError(f"{path} was replaced or modified since it was listed; run again once it is stable")
    try:
        with open(path, "rb", buffering=0, opener=lambda name, _: os.open(name, _open_flags(identity))) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise OcimodelError(f"{path} is no longer a regular file; remove what replaced it and run again")
            if identity is not None and not identity.matches(st):
                raise replaced
            if st.st_size != size:
                raise changed
            f.seek(offset)
            remaining = length
            while remaining:
                data = f.read(min(chunk_size, remaining))
                if not data:
                    raise changed
                remaining -= len(data)
                yield data
            st = os.fstat(f.fileno())
            if st.st_size != size:
                raise changed
            if identity is not None and not identity.matches(st):
                raise replaced
    except OSError as exc:
        if exc.errno == errno.ELOOP and identity is not None:
            raise OcimodelError(f"{path} was replaced by a symlink since it was listed; remove the link") from exc
        raise OcimodelError(f"cannot read {path}: {exc.strerror or exc}") from exc


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _Gzip:
    """gzip with a fixed header (no name, mtime 0, OS 255) so output does not depend on the machine."""

    HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

    def __init__(self, level: int = 6) -> None:
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._crc = 0
        self._size = 0
        self._started = False

    def compress(self, data: bytes) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        out = self._deflate.compress(data)
        if not self._started:
            self._started = True
            return self.HEADER + out
        return out

    def flush(self) -> bytes:
        head = b"" if self._started else self.HEADER
        trailer = self._crc.to_bytes(4, "little") + (self._size & 0xFFFFFFFF).to_bytes(4, "little")
        return head + self._deflate.flush() + trailer


def _zstd() -> Compressor:
    import zstandard

    return zstandard.ZstdCompressor(level=3, threads=0).compressobj()


COMPRESSIONS: dict[str, tuple[str, Callable[[], Compressor]]] = {
    "none": (OCI_LAYER, _Identity),
    "gzip": (OCI_LAYER_GZIP, _Gzip),
    "zstd": (OCI_LAYER_ZSTD, _zstd),
}


@dataclass(frozen=True)
class LayerDigests:
    media_type: str
    digest: str
    size: int
    diff_id: str


def encoded_range(members: Sequence[Member], compression: str, start: int, length: int) -> Iterator[bytes]:
    """Bytes ``start`` to ``start + length`` of the layer blob, produced again from the files.

    An uncompressed layer seeks straight to the range; a compressed one has to be compressed again from the start,
    since deflate and zstd streams cannot be entered in the middle (a resumed compressed upload costs CPU, not disk).
    """
    if compression == "none":
        yield from tar_range(members, start, length)
        return
    compressor = COMPRESSIONS[compression][1]()
    position, end = 0, start + length
    for data in _compressed(members, compressor):
        lo, hi = max(start, position), min(end, position + len(data))
        if lo < hi:
            yield data[lo - position : hi - position]
        position += len(data)
        if position >= end:
            return


def _compressed(members: Sequence[Member], compressor: Compressor) -> Iterator[bytes]:
    for chunk in tar_chunks(members):
        yield compressor.compress(chunk)
    yield compressor.flush()


class Discard:
    """A sink that keeps nothing: hashing a layer without storing it."""

    def write(self, chunk: bytes) -> None:
        pass


class Sink(Protocol):
    def write(self, chunk: bytes) -> object: ...


def encode_layer(
    chunks: Iterable[bytes], compression: str, sink: Sink, progress: Callable[[int], None] | None = None
) -> LayerDigests:
    """Compress a tar stream into ``sink`` in one pass, hashing both the tar (diff_id) and the blob (digest).

    ``progress`` is told how many uncompressed bytes went through, so bars track source bytes read.
    """
    media_type, make = COMPRESSIONS[compression]
    compressor = make()
    tar_hash = hashlib.sha256()
    blob_hash = tar_hash if compression == "none" else hashlib.sha256()
    size = 0

    def emit(data: bytes) -> None:
        nonlocal size
        if data:
            if blob_hash is not tar_hash:
                blob_hash.update(data)
            sink.write(data)
            size += len(data)

    for chunk in chunks:
        tar_hash.update(chunk)
        emit(compressor.compress(chunk))
        if progress:
            progress(len(chunk))
    emit(compressor.flush())
    return LayerDigests(media_type, "sha256:" + blob_hash.hexdigest(), size, "sha256:" + tar_hash.hexdigest())

