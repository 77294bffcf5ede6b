"""Tar headers of untrusted layers, read within a budget: what a layer holds, never its file data.

Layers are untrusted: a few MB can decompress to a terabyte, or hold millions of tar members. One run of the
checks (all platforms of an image) shares a ``Budget`` of decompressed bytes, members and name bytes; the layer that
overdraws it raises ``TooLarge``, and is never read further.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import tarfile
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

import zstandard

from ocimodel.errors import OcimodelError
from ocimodel.units import human_size

if TYPE_CHECKING:
    from ocimodel.verification.gather import LayerContents

#: Layers this small are read whatever it takes: base images and the small-files layer.
SMALL_LAYER = 64 << 20
#: Decompressed tar bytes one run of the checks may read, whatever the layers' sizes: base layers under
#: ``SMALL_LAYER`` expand 2-4 times, to a few hundred MiB together.
EXPANDED_BASE = 1 << 30
#: On top of ``EXPANDED_BASE``, this many times the compressed size of every layer read: code and text expand
#: 3-5 times, weights barely at all; a decompression bomb expands a thousand times and more.
EXPANSION_RATIO = 10
#: Tar members one run keeps in memory (about 300 bytes each) and parses (tarfile: about 20,000 a second): big
#: CUDA or PyTorch images hold one or two hundred thousand files in all.
ENTRIES_MAX = 500_000
#: Bytes of member names (each path counted once per directory level, the parents it implies) one run keeps.
NAMES_MAX = 512 << 20
#: What the warnings after ``pack``, ``push`` and ``build`` may spend: a few seconds, whatever the image.
QUICK_EXPANDED = 1 << 30
QUICK_ENTRIES = 100_000
QUICK_NAMES = 64 << 20
#: The longest path Linux takes (PATH_MAX): a runtime cannot create a member with a longer name.
NAME_MAX_BYTES = 4096

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Kind(str, Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    WHITEOUT = "whiteout"
    OPAQUE = "opaque"
    DEVICE = "device"
    FIFO = "fifo"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Entry:
    """One tar member: ``raw`` as written in the tar, ``path`` as a runtime places it (relative to ``/``)."""

    raw: str
    path: str
    kind: Kind
    mode: int = 0o644
    link: str = ""


@dataclass(frozen=True)
class ReadPolicy:
    small: int = SMALL_LAYER
    #: Stream through big layers that can be neither seeked over nor judged from annotations.
    stream_big: bool = True
    #: Decompressed bytes a run may read: ``expanded``, plus ``ratio`` times the size of each layer read.
    expanded: int = EXPANDED_BASE
    ratio: int = EXPANSION_RATIO
    #: Tar members, and bytes of their names, a run may keep.
    entries: int = ENTRIES_MAX
    names: int = NAMES_MAX


#: What the warnings after ``pack``, ``push`` and ``build`` may read: never a big layer in full, and a fixed
#: budget whatever the layers claim, so they take seconds.
QUICK = ReadPolicy(stream_big=False, expanded=QUICK_EXPANDED, ratio=0, entries=QUICK_ENTRIES, names=QUICK_NAMES)


class TooLarge(OcimodelError):
    """A layer overdrew the run's budget; the message says which limit, for the line that names the layer."""


class Budget:
    """What one run of the checks may still read and keep, shared by every layer and platform of an image (so
    neither many layers nor many platforms multiply it), and the layers already read, by digest."""

    def __init__(self, policy: ReadPolicy = ReadPolicy()) -> None:
        self.policy = policy
        self.allowed = policy.expanded
        self.expanded = 0
        self.entries = 0
        self.names = 0
        self.contents: dict[str, LayerContents] = {}

    def open_layer(self, size: int) -> None:
        self.allowed += self.policy.ratio * size

    def read(self, n: int) -> None:
        self.expanded += n
        if self.expanded > self.allowed:
            base, ratio = human_size(self.policy.expanded), self.policy.ratio
            scaled = f" ({base} plus {ratio}x the layers read)" if ratio else ""
            raise TooLarge(f"decompresses past {human_size(self.allowed)}, what one check may read{scaled}")

    def keep(self, info: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > self.policy.entries:
            raise TooLarge(f"brings the image past {self.policy.entries:,} tar members, what one check keeps")
        longest = max(len(info.name), len(info.linkname))
        if longest > NAME_MAX_BYTES:
            raise TooLarge(f"has a member name of {longest:,} bytes; no runtime creates paths over {NAME_MAX_BYTES:,}")
        self.names += len(info.linkname) + len(info.name) * (info.name.count("/") + 1)
        if self.names > self.policy.names:
            raise TooLarge(
                f"brings the image past {human_size(self.policy.names)} of member names, what one check keeps"
            )


class Metered:
    """A tar stream that charges the budget for every byte it hands out and never asks for more than is left.

    It seeks for ``tarfile``'s random-access mode: for real when ``seekable`` (file data is then never read), else
    forward only, by reading (and charging) what it skips. That mode reads each header straight from here;
    ``tarfile``'s stream mode instead copies its whole buffer on every header, which made a layer of many small
    members take minutes.
    """

    def __init__(self, source: Any, budget: Budget, seekable: bool) -> None:
        self._source = source
        self._budget = budget
        self._seekable = seekable
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        left = self._budget.allowed - self._budget.expanded
        data = cast(bytes, self._source.read(left + 1 if size < 0 or size > left else size))
        self._position += len(data)
        self._budget.read(len(data))
        return data

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only absolute seeks")
        if self._seekable:
            self._position = self._source.seek(offset)
        elif offset < self._position:
            raise io.UnsupportedOperation("a stream cannot seek backwards")
        while self._position < offset and self.read(min(offset - self._position, 1 << 20)):
            pass
        return self._position


def read_entries(
    stream: io.BufferedReader, seekable: bool, what: str, budget: Budget | None = None
) -> tuple[Entry, ...]:
    """Tar headers of a layer (plain, gzip or zstd, told by its first bytes, whatever the media type claims).

    A seekable plain tar is read header by header, seeking over file data; anything else is streamed through.
    Every byte the tar reader takes and every member kept is charged to ``budget``: ``TooLarge`` when it runs out.
    """
    budget = budget or Budget()
    opened = decompressed(stream, stream)
    if opened is None:
        return ()
    source, compressed = opened
    entries = []
    try:
        metered = Metered(source, budget, seekable and not compressed)
        with tarfile.open(fileobj=metered, mode="r:") as tar:  # type: ignore[call-overload]
            while (info := tar.next()) is not None:
                tar.members.clear()  # TarFile keeps every member it has read: only our slimmer Entry is kept
                budget.keep(info)
                entries.append(entry_of(info))
        return tuple(entries)
    except TAR_ERRORS as exc:
        raise OcimodelError(f"{what} is not a readable tar ({exc})") from None


#: What a damaged or truncated layer raises while it is read as a tar.
TAR_ERRORS = (tarfile.TarError, zstandard.ZstdError, OSError, EOFError)


def decompressed(stream: io.BufferedReader, raw: Any) -> tuple[Any, bool] | None:
    """The tar stream of a layer, told plain, gzip or zstd by ``stream``'s first bytes (whatever the media type
    claims), read from ``raw`` (``stream`` itself, or a wrapper around it); with whether it was compressed. None for
    an empty blob."""
    magic = stream.peek(4)[:4]
    if magic.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb"), True
    if magic == _ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True), True
    if not magic:
        return None
    return raw, False


def entry_of(info: tarfile.TarInfo) -> Entry:
    raw = info.name
    path = normalize(raw)
    base = posixpath.basename(path)
    if base == _OPAQUE:
        return Entry(raw, posixpath.dirname(path), Kind.OPAQUE)
    if base.startswith(_WHITEOUT):
        return Entry(raw, posixpath.join(posixpath.dirname(path), base[len(_WHITEOUT) :]), Kind.WHITEOUT)
    kind = (
        Kind.DIR if info.isdir() else
        Kind.SYMLINK if info.issym() else
        Kind.HARDLINK if info.islnk() else
        Kind.FILE if info.isreg() else
        Kind.DEVICE if info.ischr() or info.isblk() else
        Kind.FIFO if info.isfifo() else
        Kind.OTHER
    )
    return Entry(raw, raw if path == raw else path, kind, info.mode & 0o7777, info.linkname)


def normalize(name: str) -> str:
    """Where a runtime puts a member: relative to ``/``, ``.`` and ``..`` resolved, never above the root."""
    return posixpath.normpath("/" + name).lstrip("/")
