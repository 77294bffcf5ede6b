"""A small local record of which repositories of a registry hold which blobs.

It lets a push mount a 16 GB shard from the repository that already has it (a cross-repository mount is one request)
instead of uploading it again, as pushing the same base or model to several repositories does. It is only a hint:
a mount the registry refuses falls back to an ordinary upload, so a stale record costs one request.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Iterable, Iterator

#: Repositories tried per blob at most: each refused mount is a wasted round trip.
MAX_CANDIDATES = 2


def default_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ocimodel" / "known-blobs.sqlite"


class KnownBlobs:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection that commits on success and is always closed (sqlite3's own ``with`` does not close)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10)
        try:
            with db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS blobs (registry TEXT, digest TEXT, repository TEXT, seen REAL, "
                    "PRIMARY KEY (registry, digest, repository))"
                )
                yield db
        finally:
            db.close()

    def repositories(self, registry: str, digest: str) -> list[str]:
        """Repositories last seen holding ``digest``, most recent first."""
        try:
            with self._connect() as db:
                rows = db.execute(
                    "SELECT repository FROM blobs WHERE registry = ? AND digest = ? ORDER BY seen DESC LIMIT ?",
                    (registry, digest, MAX_CANDIDATES),
                ).fetchall()
        except (sqlite3.Error, OSError):
            return []
        return [r[0] for r in rows]

    def record(self, registry: str, repository: str, digests: Iterable[str]) -> None:
        now = time.time()
        try:
            with self._connect() as db:
                db.executemany(
                    "INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?)",
                    [(registry, d, repository, now) for d in digests],
                )
        except (sqlite3.Error, OSError):
            pass  # a hint we could not save only costs a future upload
