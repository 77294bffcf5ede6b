"""Where model files come from: a local directory or a HuggingFace Hub repo.

A source yields ``SourceFile``s: a path inside the model (what the image calls ``/models/<path>``) and where the
bytes are on disk. Everything downstream (layer planning, tar streams) sees only that, so any source that can put
files on disk slots in: a Hub repo is downloaded into the HF cache and then read like a directory.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence, runtime_checkable

from ocimodel.errors import OcimodelError

if TYPE_CHECKING:
    from ocimodel.progress import Reporter

HUB_SCHEME = "hf://"
#: ``org/name`` as the Hub spells repo ids: word characters, ``.`` and ``-``, neither first nor last, 96 at most.
_REPO_ID = re.compile(r"(?!.*(?:--|\.\.))(\w(?:[\w.-]{0,94}\w)?)/(\w(?:[\w.-]{0,94}\w)?)")


@dataclass(frozen=True)
class SourceFile:
    path: str
    local: Path
    size: int
    #: The sha256 the source claims for the content (the Hub's LFS oid), not checked against the bytes: a key for
    #: caching digests, never a substitute for hashing what is packed.
    lfs_sha256: str | None = None

    @property
    def sort_key(self) -> tuple[str, ...]:
        return PurePosixPath(self.path).parts


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
            raise OcimodelError(f"--revision picks a Hub commit, but {spec} is a local directory; drop --revision")
        return LocalSource.from_path(Path(spec))
    repo_id = spec.removeprefix(HUB_SCHEME)
    if not _REPO_ID.fullmatch(repo_id):
        raise OcimodelError(
            f"source {spec} is neither an existing directory nor a HuggingFace repo id (org/name or hf://org/name)"
        )
    from ocimodel.source.hub import HubSource

    return HubSource.open(repo_id, revision=revision, cache_dir=cache_dir, reporter=reporter)
