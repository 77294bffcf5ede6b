"""Where model files come from: a local directory now, a HuggingFace repo next.

A source yields ``SourceFile``s: a path inside the model (what the image calls ``/models/<path>``) and where the
bytes are on disk. Everything downstream (layer planning, tar streams) sees only that, so any source that can put
files on disk slots in.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Mapping, Protocol, Sequence


@dataclass(frozen=True)
class SourceFile:
    path: str
    local: Path
    size: int

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
    provenance: Provenance

    def files(self, filters: Filters) -> list[SourceFile]:
        """The model's files, sorted by path, with their bytes available on local disk."""
        ...


def open_source(spec: str) -> Source:
    """Pick the kind of source from what the user typed."""
    from ocimodel.source.local import LocalSource

    return LocalSource.from_path(Path(spec))
