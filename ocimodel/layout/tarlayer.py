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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Protocol, Sequence

from ocimodel.errors import SourceError
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
    """A run of the tar stream: literal bytes (headers, padding, the end) or a file's content (of member ``name``)."""

    start: int
    length: int
    data: bytes = b""
    source: Path | None = None
    identity: FileIdentity | None = None
    name: str = ""


#: Told of every piece of file content the tar stream passes: member name, file size, offset in the file, bytes.
ContentObserver = Callable[[str, int, int, bytes], None]


def _segments(members: Iterable[Member]) -> list[_Segment]:
    segments: list[_Segment] = []
    offset = 0

    def add(
        length: int, data: bytes = b"", source: Path | None = None, identity: FileIdentity | None = None, name: str = ""
    ) -> None:
        nonlocal offset
        if length:
            segments.append(_Segment(offset, length, data, source, identity, name))
            offset += length

    for member in members:
        head = header(member)
        add(len(head), head)
        if not member.is_dir:
            add(member.size, source=member.source, identity=member.identity, name=member.name)
            pad = _padding(member.size)
            add(pad, b"\0" * pad)
    add(len(END_OF_ARCHIVE), END_OF_ARCHIVE)
    return segments


def tar_size(members: Iterable[Member]) -> int:
    """The exact length of ``tar_chunks(members)``, computed without reading any file."""
    return sum(len(header(m)) + m.size + _padding(m.size) for m in members) + len(END_OF_ARCHIVE)


def small_tar(folder: str, files: Mapping[str, bytes]) -> bytes:
    """A tar of a few small files made in memory (a model's signature), with every other layer's headers."""
    parts = [header(Member(folder))]
    for name, data in files.items():
        # ``source`` only marks a regular file here: header() never reads it.
        parts += [header(Member(f"{folder}/{name}", Path(name), len(data))), data, b"\0" * _padding(len(data))]
    return b"".join([*parts, END_OF_ARCHIVE])


def tar_chunks(
    members: Iterable[Member], chunk_size: int = CHUNK, observe: ContentObserver | None = None
) -> Iterator[bytes]:
    """Yield the tar stream; each file is read once, in ``chunk_size`` pieces, and must not change meanwhile."""
    return tar_range(members, 0, None, chunk_size, observe)


def tar_range(
    members: Iterable[Member],
    start: int,
    length: int | None,
    chunk_size: int = CHUNK,
    observe: ContentObserver | None = None,
) -> Iterator[bytes]:
    """Yield bytes ``start`` to ``start + length`` of the tar stream, reading only the files that range covers.

    The stream is a pure function of the members and the files' bytes, so any part of it can be produced again:
    an upload that failed halfway resumes from the registry's offset by seeking into the right file. ``observe``
    sees each piece of file content as it goes by (to hash each file on the way, for a signature).
    """
    segments = _segments(members)
    end = segments[-1].start + segments[-1].length if length is None else start + length
    for seg in segments:
        lo, hi = max(start, seg.start), min(end, seg.start + seg.length)
        if lo >= hi:
            continue
        if seg.source is None:
            yield seg.data[lo - seg.start : hi - seg.start]
        elif observe is None:
            yield from read_range(seg.source, lo - seg.start, hi - lo, seg.length, chunk_size, seg.identity)
        else:
            at = lo - seg.start
            for piece in read_range(seg.source, at, hi - lo, seg.length, chunk_size, seg.identity):
                observe(seg.name, seg.length, at, piece)
                at += len(piece)
                yield piece


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
    changed = SourceError(f"{path} changed size while being read; run again once it is complete")
    replaced = SourceError(f"{path} was replaced or modified since it was listed; run again once it is stable")
    try:
        with open(path, "rb", buffering=0, opener=lambda name, _: os.open(name, _open_flags(identity))) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(f"{path} is no longer a regular file; remove what replaced it and run again")
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
            raise SourceError(f"{path} was replaced by a symlink since it was listed; remove the link") from exc
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc


# --- compression -----------------------------------------------------------------------------------------------
#
# A compressed layer is cut into spans of SPAN tar bytes, each compressed from a clean state by a compressor of its
# own. Build sends a layer as it compresses it; when an upload has to resume in the middle of a layer, the bytes
# from the registry's offset on are compressed again from the start of the span that holds it, not from the start
# of the layer (a deflate or zstd stream cannot be entered in the middle, and compressor state cannot be copied).
# The spans cost nothing measurable in size (docs/benchmarks.md: a 32 KiB deflate window or a 2 MiB zstd window
# against 16 MiB spans), and any reader reads them: gzip stays one member whose deflate blocks are byte-aligned at
# each span end by an empty stored block (as pigz writes them), zstd becomes one frame per span, which the format
# defines as one stream (zstd:chunked layers are built the same way).

#: Tar bytes per independently compressed span; part of the digest cache key (``codec_id``).
SPAN = 16 << 20


class SpanCompressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes:
        """The rest of the span, ending so that the next span may start from a clean compressor."""
        ...


@dataclass(frozen=True)
class _Codec:
    media_type: str
    span: Callable[[], SpanCompressor]
    #: Before the first span, and after the last one (given the CRC-32 and length of the whole tar stream).
    prefix: bytes
    suffix: Callable[[int, int], bytes]
    #: The running checksum the suffix needs (gzip's CRC-32), or None.
    checksum: Callable[[bytes, int], int] | None
    version: Callable[[], str]


#: gzip with a fixed header (no name, mtime 0, OS 255) so output does not depend on the machine.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
#: The closing deflate block: final, fixed Huffman codes, holding nothing but its end code.
_DEFLATE_END = b"\x03\x00"


class _DeflateSpan:
    """Raw deflate through ISA-L's igzip (python-isal), level 1: ~15x zlib's speed on bf16 weights, for a smaller
    output than zlib's level 6 (docs/benchmarks.md). Its bytes are fixed for a given ISA-L version on any x86-64
    with SSE4.2; other CPUs may get other (equally valid) bytes, so the version is part of the digest cache key."""

    def __init__(self) -> None:
        from isal import isal_zlib

        self._deflate = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
        self._sync = isal_zlib.Z_SYNC_FLUSH

    def compress(self, data: bytes) -> bytes:
        return self._deflate.compress(data)

    def flush(self) -> bytes:
        return self._deflate.flush(self._sync)


def _gzip_suffix(crc: int, size: int) -> bytes:
    return _DEFLATE_END + crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little")


def _isal_crc32(data: bytes, crc: int) -> int:
    from isal import isal_zlib

    return isal_zlib.crc32(data, crc)


def _isal_version() -> str:
    import isal

    return f"isal {isal.__version__} isa-l {isal.ISAL_VERSION} level 1"


def _zstd_span() -> SpanCompressor:
    import zstandard

    return zstandard.ZstdCompressor(level=3, threads=0).compressobj()


def _zstd_version() -> str:
    import zstandard

    return "zstd " + ".".join(map(str, zstandard.ZSTD_VERSION)) + " level 3"


_CODECS: dict[str, _Codec] = {
    "gzip": _Codec(OCI_LAYER_GZIP, _DeflateSpan, GZIP_HEADER, _gzip_suffix, _isal_crc32, _isal_version),
    "zstd": _Codec(OCI_LAYER_ZSTD, _zstd_span, b"", lambda crc, size: b"", None, _zstd_version),
}
MEDIA_TYPES = {"none": OCI_LAYER, **{name: codec.media_type for name, codec in _CODECS.items()}}


def codec_id(compression: str) -> str:
    """What decides the compressed bytes besides the tar: another library version or span gives other bytes."""
    codec = _CODECS.get(compression)
    return f"{codec.version()} span {SPAN}" if codec else ""


@dataclass(frozen=True)
class LayerDigests:
    media_type: str
    digest: str
    size: int
    diff_id: str


@dataclass(frozen=True)
class _Checkpoint:
    """Where a span starts: its offset in the tar stream and in the blob, and the CRC-32 of the tar before it."""

    tar: int
    blob: int
    crc: int


_START = _Checkpoint(0, 0, 0)


def _pieces(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The same bytes cut into ``size``-byte pieces (the last may be shorter), however they arrive.

    Compressors are fed the same pieces whether a span is reached from the start of the layer or resumed at, so
    their output cannot depend on how the files happened to be read.
    """
    buffer = bytearray()
    for chunk in chunks:
        if not buffer and len(chunk) == size:
            yield chunk
            continue
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def _compressed(
    tar: Iterable[bytes], codec: _Codec, at: _Checkpoint, seen: Callable[[_Checkpoint], None]
) -> Iterator[bytes]:
    """The blob from checkpoint ``at`` on, given the tar stream from ``at.tar`` on; ``seen`` learns each span start."""
    span = SPAN
    tar_offset, blob_offset, crc = at.tar, at.blob, at.crc
    if tar_offset == 0 and codec.prefix:
        yield codec.prefix
        blob_offset += len(codec.prefix)
    compressor: SpanCompressor | None = None
    for piece in _pieces(tar, min(CHUNK, span)):
        if tar_offset % span == 0:  # pieces never straddle a span boundary
            if compressor is not None:
                out = compressor.flush()
                blob_offset += len(out)
                yield out
            seen(_Checkpoint(tar_offset, blob_offset, crc))
            compressor = codec.span()
        if codec.checksum is not None:
            crc = codec.checksum(piece, crc)
        tar_offset += len(piece)
        out = compressor.compress(piece)  # type: ignore[union-attr]
        blob_offset += len(out)
        yield out
    if compressor is None:  # an empty stream is one empty span, a valid stream to every reader
        compressor = codec.span()
    yield compressor.flush()
    yield codec.suffix(crc, tar_offset)


class EncodedLayer:
    """Any range of a layer blob, produced from its files: the ``read`` of a build's ``Upload``.

    Ranges asked for in order (an upload's chunks) continue one compression stream, so a layer sent in many chunks
    is compressed once. A range that starts before what was produced (a resume after a failure) is compressed again
    from the nearest span start before it; one that starts further on skips ahead. An uncompressed layer just seeks.
    """

    def __init__(self, members: Sequence[Member], compression: str, observe: ContentObserver | None = None) -> None:
        self._members = members
        self._observe = observe
        self._codec = _CODECS.get(compression)
        self._checkpoints = [_START]
        self._stream: Iterator[bytes] | None = None
        self._offset = 0  # blob offset of the first byte of _pending
        self._pending = b""
        self._reader = 0  # the read() now allowed to consume the stream; an older one must not resume

    def read(self, start: int, length: int) -> Iterator[bytes]:
        if self._codec is None:
            return tar_range(self._members, start, length, observe=self._observe)
        return self._compressed_range(start, length)

    def _seen(self, checkpoint: _Checkpoint) -> None:
        if checkpoint.tar > self._checkpoints[-1].tar:
            self._checkpoints.append(checkpoint)

    def _restart(self, start: int) -> None:
        assert self._codec is not None
        at = max((c for c in self._checkpoints if c.blob <= start), key=lambda c: c.blob)
        if self._stream is not None:
            self._stream.close()  # type: ignore[attr-defined]
        self._stream = _compressed(
            tar_range(self._members, at.tar, None, observe=self._observe), self._codec, at, self._seen
        )
        self._offset, self._pending = at.blob, b""

    def _compressed_range(self, start: int, length: int) -> Iterator[bytes]:
        self._reader += 1
        me = self._reader
        if self._stream is None or start < self._offset:
            self._restart(start)
        end = start + length
        while self._offset < end:
            if self._reader != me:
                raise RuntimeError("a layer range was read after a newer one began")
            if not self._pending:
                assert self._stream is not None
                piece = next(self._stream, None)
                if piece is None:
                    return  # the blob ended early: the caller, who knows the size it announced, says so
                self._pending = piece
                continue
            lo = self._offset
            cut = min(len(self._pending), end - lo)
            data, self._pending = self._pending[:cut], self._pending[cut:]
            self._offset = lo + cut
            if lo + cut > start:
                yield data[max(0, start - lo) :]


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
    tar_hash = hashlib.sha256()

    def tar() -> Iterator[bytes]:
        for chunk in chunks:
            tar_hash.update(chunk)
            yield chunk
            if progress:
                progress(len(chunk))

    codec = _CODECS.get(compression)
    blob_hash = tar_hash if codec is None else hashlib.sha256()
    size = 0
    for data in tar() if codec is None else _compressed(tar(), codec, _START, lambda checkpoint: None):
        if data:
            if blob_hash is not tar_hash:
                blob_hash.update(data)
            sink.write(data)
            size += len(data)
    return LayerDigests(MEDIA_TYPES[compression], "sha256:" + blob_hash.hexdigest(), size,
                        "sha256:" + tar_hash.hexdigest())
