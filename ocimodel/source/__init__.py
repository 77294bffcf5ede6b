"""Where model files come from: a local directory or a HuggingFace Hub repo.

A source yields ``SourceFile``s: a path inside the model (what the image calls ``/models/<path>``) and where the
bytes are on disk. Everything downstream (layer planning, tar streams) sees only that, so any source that can put
files on disk slots in: a Hub repo is downloaded into the HF cache and then read like a directory.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence, runtime_checkable

from ocimodel.errors import InvalidArgument, SourceError

if TYPE_CHECKING:
    from ocimodel.progress import Reporter

HUB_SCHEME = "hf://"
#: ``org/name`` as the Hub spells repo ids: word characters, ``.`` and ``-``, neither first nor last, 96 at most.
_REPO_ID = re.compile(r"(?!.*(?:--|\.\.))(\w(?:[\w.-]{0,94}\w)?)/(\w(?:[\w.-]{0,94}\w)?)")


#: Tar entries whose names start with this are whiteouts: unpacking deletes the file they name (``.wh..wh..opq``
#: empties the directory), so a model file named so would silently remove another one from the image.
WHITEOUT_PREFIX = ".wh."


@dataclass(frozen=True)
class FileIdentity:
    """Which file a source listed: every read checks that the file it opened is still this one.

    Between listing and reading, a file can be replaced (by a link out of the source, a FIFO, another file) or
    rewritten; packing whatever is there then would break the rules the listing checked. ``ctime_ns`` only feeds
    the digest cache's key (it changes on an edit that restores the mtime); reads compare the rest, so a chmod
    while packing is not an error.
    """

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def matches(self, st: os.stat_result) -> bool:
        return (self.device, self.inode, self.size, self.mtime_ns) == (
            st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
        )


@dataclass(frozen=True)
class SourceFile:
    path: str
    #: Where the bytes are: with ``identity``, the resolved path (no link in it), opened without following links.
    local: Path
    size: int
    #: The sha256 the source claims for the content (the Hub's LFS oid), not checked against the bytes: a key for
    #: caching digests, never a substitute for hashing what is packed.
    lfs_sha256: str | None = None
    #: The file as listed; None for a file not on disk yet (a Hub file before its download).
    identity: FileIdentity | None = None

    @property
    def sort_key(self) -> tuple[str, ...]:
        return PurePosixPath(self.path).parts


def check_model_path(path: str) -> None:
    """Refuse a path the image could not hold as the same file: a whiteout name, or one that leaves ``/models``."""
    parts = path.split("/")
    for part in parts:
        if part.startswith(WHITEOUT_PREFIX):
            raise SourceError(
                f"{path}: names starting with {WHITEOUT_PREFIX} are whiteouts in image layers (unpacking one deletes "
                "another file); rename it or exclude it"
            )
        if part in ("", ".", ".."):
            raise SourceError(f"{path!r} is not a plain relative path; it cannot go under /models")


def confinement(root: Path) -> Path:
    """The folder a source's links may point into: its root, or the HF repo cache folder for a snapshot."""
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return root.parent.parent
    return root


def pin(f: SourceFile, confine: Path) -> SourceFile:
    """``f`` as it is on disk now: links resolved (they must stay inside ``confine``) and its identity noted.

    For files that were not on disk when listed (a Hub file before its download): from here on, every read of it
    (a hashing pass, an upload, a retry) checks it is still this file.
    """
    try:
        real = f.local.resolve(strict=True)
        st = real.stat()
    except (OSError, RuntimeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "a symlink loop"
        raise SourceError(f"cannot read {f.local}: {reason}") from exc
    if confine not in real.parents:
        raise SourceError(f"{f.local} links to {real}, outside {confine}; remove the link")
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{f.local} is not a regular file; remove it")
    if st.st_size != f.size:
        raise SourceError(f"{f.local} is {st.st_size} bytes on disk, but the source lists {f.size}; run again")
    return SourceFile(f.path, real, f.size, f.lfs_sha256, FileIdentity.of(st))


@dataclass(frozen=True)
class Filters:
    """``--include``/``--exclude`` globs over paths inside the model, matched as huggingface_hub matches them.

    A pattern ending in ``/`` means everything below that directory. With includes, a file must match one;
    a file matching any exclude is dropped.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @staticmethod
    def _expand(patterns: Sequence[str]) -> list[str]:
        return [p + "*" if p.endswith("/") else p for p in patterns]

    def allows(self, path: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(path, p) for p in self._expand(self.include)):
            return False
        return not any(fnmatch.fnmatchcase(path, p) for p in self._expand(self.exclude))

    def excludes_tree(self, folder: str) -> bool:
        """True when every path below ``folder`` (given with a trailing ``/``) is excluded, so it needs no walk."""
        return any(p.endswith("*") and fnmatch.fnmatchcase(folder, p) for p in self._expand(self.exclude))


@dataclass(frozen=True)
class Provenance:
    """What the image should say about where its model came from (OCI annotations)."""

    title: str
    source: str | None = None
    revision: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


class Source(Protocol):
    @property
    def provenance(self) -> Provenance: ...

    @property
    def root(self) -> Path:
        """The directory the model is read from: a layout written there, or above it, would be packed into itself."""
        ...

    def files(self, filters: Filters) -> list[SourceFile]:
        """The model's files, sorted by path, with their bytes available on local disk."""
        ...


@runtime_checkable
class StagedSource(Source, Protocol):
    """A source whose files can be listed before they exist on disk, fetched on demand and released after.

    ``build`` uses it to download a layer's files only when the layer must be sent, overlapping downloads with
    uploads, and to stay under ``--disk-budget``.
    """

    def planned(self, filters: Filters) -> list[SourceFile]: ...
    def fetch(self, files: Sequence[SourceFile], stop: threading.Event | None = None) -> None: ...
    def release(self, files: Sequence[SourceFile]) -> None: ...


def open_source(
    spec: str, *, revision: str | None = None, cache_dir: Path | None = None, reporter: Reporter | None = None
) -> Source:
    """Pick the kind of source from what the user typed: a path that exists, else a Hub repo id.

    The path wins so that a local folder laid out as ``org/name`` still packs as a folder; ``hf://`` forces the Hub.
    A Hub source resolves its revision here, so an unknown repo or revision fails before anything is written.
    ``reporter`` shows download progress; ``cache_dir`` is where downloads go (default: huggingface_hub's cache).
    """
    from ocimodel.source.local import LocalSource

    if not spec.startswith(HUB_SCHEME) and Path(spec).exists():
        if revision is not None:
            raise InvalidArgument("revision", f"picks a Hub commit, but {spec} is a local directory; leave it out")
        return LocalSource.from_path(Path(spec))
    repo_id = spec.removeprefix(HUB_SCHEME)
    if not _REPO_ID.fullmatch(repo_id):
        raise SourceError(
            f"source {spec} is neither an existing directory nor a HuggingFace repo id (org/name or hf://org/name)"
        )
    from ocimodel.source.hub import HubSource

    return HubSource.open(repo_id, revision=revision, cache_dir=cache_dir, reporter=reporter)
