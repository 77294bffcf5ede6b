"""Digests for files the caller has no digest for: streamed, never held in memory whole.

Pack knows most digests already (Hub LFS sha256, digest cache, hashing while a layer is written); these helpers
cover the rest, and let a folder (an unpacked image, a local model) be listed as ``model_signing`` lists it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from ocimodel.errors import OcimodelError
from ocimodel.signing.statement import ModelFile

#: A folder with more entries than this is not a model; the walk stops and says so rather than run unbounded.
MAX_FOLDER_ENTRIES = 1_000_000
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The sha256 hex of a file's content, read in 1 MiB chunks."""
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise OcimodelError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    return h.hexdigest()


def folder_files(root: Path) -> list[ModelFile]:
    """Every regular file under ``root`` with its sha256, refusing symlinks and special files as
    ``model_signing`` does by default (``allow_symlinks`` false)."""
    files: list[ModelFile] = []
    stack = [""]
    seen = 0
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(root / rel if rel else root))
        except OSError as exc:
            raise OcimodelError(f"cannot list {root / rel}: {exc.strerror or type(exc).__name__}") from None
        for entry in entries:
            seen += 1
            if seen > MAX_FOLDER_ENTRIES:
                raise OcimodelError(f"{root} has more than {MAX_FOLDER_ENTRIES} entries: not a model folder")
            path = f"{rel}/{entry.name}" if rel else entry.name
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                stack.append(path)
            elif stat.S_ISREG(mode):
                files.append(ModelFile(path, sha256_file(Path(entry.path))))
            else:
                kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
                raise OcimodelError(f"{root / path} is {kind}: model signatures cover regular files only")
    return files
