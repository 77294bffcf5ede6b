"""A model directory on local disk, walked safely.

Symlinks are followed and packed as the files they point to (a HuggingFace cache snapshot is nothing but links
into ``../../blobs``), but only while they stay inside the source: a link out of it would pack whatever it
reaches. For a cache snapshot, the repo's cache folder counts as inside.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ocimodel.errors import SourceError
from ocimodel.source import FileIdentity, Filters, Provenance, SourceFile, check_model_path, confinement

ALWAYS_EXCLUDED = (".git/", ".cache/huggingface/")


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


@dataclass(frozen=True)
class LocalSource:
    root: Path
    provenance: Provenance

    @classmethod
    def from_path(cls, path: Path) -> LocalSource:
        if not path.exists():
            raise SourceError(f"source {path} does not exist; give a model directory (or an org/name Hub repo id)")
        if not path.is_dir():
            raise SourceError(f"source {path} is not a directory; give the directory that holds the model files")
        root = path.resolve()
        return cls(root, Provenance(title=root.name))

    def files(self, filters: Filters) -> list[SourceFile]:
        filters = Filters(filters.include, (*filters.exclude, *ALWAYS_EXCLUDED))
        found: list[SourceFile] = []
        self._walk(self.root, "", confinement(self.root), filters, found, {self.root})
        if not found:
            raise SourceError(f"no files to pack in {self.root} (check the include/exclude patterns)")
        return sorted(found, key=lambda f: f.sort_key)

    def _walk(
        self, folder: Path, prefix: str, confine: Path, filters: Filters, found: list[SourceFile], seen: set[Path]
    ) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise SourceError(f"cannot list {folder}: {exc.strerror or exc}") from exc
        for entry in entries:
            try:
                name = entry.name.encode("utf-8").decode("utf-8")
            except UnicodeError:
                raise SourceError(f"{folder}/{entry.name!r}: file names must be UTF-8 to go into an image") from None
            rel = prefix + name
            path = Path(entry.path)
            link = entry.is_symlink()
            try:
                real = path.resolve() if link else path
            except (RuntimeError, OSError):  # a link loop: RuntimeError before Python 3.13, OSError after
                raise SourceError(f"{path} is a symlink loop; remove the link") from None
            try:
                # ``real`` has no link in it: one there now was put there since, and is not followed.
                st: os.stat_result | None = real.stat(follow_symlinks=False)
            except FileNotFoundError:
                if not link:
                    continue  # deleted since the directory was listed: it is not part of the model any more
                st = None
            except OSError as exc:
                raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
            is_dir = st is not None and stat.S_ISDIR(st.st_mode)
            if filters.excludes_tree(rel + "/") if is_dir else not filters.allows(rel):
                continue
            if link and not _within(real, confine):
                raise SourceError(f"{path} links to {real}, outside the source; copy the file in instead")
            if st is None:
                raise SourceError(f"{path} is a broken link (to {real}); fix or remove it")
            if is_dir:
                if real in seen:
                    raise SourceError(f"{path} links back to {real}, a loop; remove the link")
                self._walk(real, rel + "/", confine, filters, found, seen | {real})
            elif not stat.S_ISREG(st.st_mode):
                raise SourceError(f"{path} is not a regular file or directory (socket, device or fifo); remove it")
            elif not os.access(real, os.R_OK):
                raise SourceError(f"cannot read {path}: permission denied; make it readable or exclude it")
            else:
                check_model_path(rel)
                found.append(SourceFile(rel, real, st.st_size, identity=FileIdentity.of(st)))
