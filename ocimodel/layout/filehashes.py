"""The sha256 of each model file, taken from its bytes as a layer's tar stream passes them.

A signature lists every file with its sha256; the layer being written or sent reads every byte anyway, so hashing
there costs CPU but no read. An upload that resumes sends some bytes again: they were hashed already and are
skipped. A stream that starts past a file's beginning (a resume into a layer whose first attempt was another
process's) leaves that file unknown, and the caller hashes it on its own.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from ocimodel.layout.plan import MODEL_DIR

#: sha256 of no bytes: a zero-byte file passes no content through the stream.
EMPTY_SHA256 = hashlib.sha256().hexdigest()


class FileHashes:
    """Hashes the content ``tarlayer`` shows it (a ``ContentObserver``), keyed by path in the model folder."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, tuple[Any, int]] = {}
        self._done: dict[str, str] = {}
        self._gaps: set[str] = set()

    def __call__(self, name: str, size: int, offset: int, data: bytes) -> None:
        path = name.removeprefix(f"{MODEL_DIR}/")
        with self._lock:
            if path in self._done or path in self._gaps:
                return
            hasher, at = self._open.pop(path, None) or (hashlib.sha256(), 0)
            if offset > at:  # bytes before this piece never passed: this stream cannot vouch for the file
                self._gaps.add(path)
                return
            fresh = memoryview(data)[at - offset :]
            hasher.update(fresh)
            at += len(fresh)
            if at >= size:
                self._done[path] = hasher.hexdigest()
            else:
                self._open[path] = (hasher, at)

    def get(self, path: str, size: int) -> str | None:
        """The file's sha256 if all its bytes passed, in order; None if the caller must hash it itself."""
        if size == 0:
            return EMPTY_SHA256
        with self._lock:
            return self._done.get(path)
