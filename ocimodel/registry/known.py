"""A small local record of which repositories of a registry hold which blobs.

It lets a push mount a 16 GB shard from the repository that already has it (a cross-repository mount is one request)
instead of uploading it again, as pushing the same base or model to several repositories does. It is only a hint:
a mount the registry refuses falls back to an ordinary upload, so a stale record costs one request.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable

from ocimodel import localdb

#: Repositories tried per blob at most: each refused mount is a wasted round trip.
MAX_CANDIDATES = 2
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS known_blobs (registry TEXT, digest TEXT, repository TEXT, seen REAL, "
    "PRIMARY KEY (registry, digest, repository))"
)


class KnownBlobs:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or localdb.default_path()

    def repositories(self, registry: str, digest: str) -> list[str]:
        """Repositories last seen holding ``digest``, most recent first."""
        try:
            with localdb.connect(self.path, _SCHEMA) as db:
                rows = db.execute(
                    "SELECT repository FROM known_blobs WHERE registry = ? AND digest = ? ORDER BY seen DESC LIMIT ?",
                    (registry, digest, MAX_CANDIDATES),
                ).fetchall()
        except (sqlite3.Error, OSError):
            return []
        return [r[0] for r in rows]

    def record(self, registry: str, repository: str, digests: Iterable[str]) -> None:
        now = time.time()
        try:
            with localdb.connect(self.path, _SCHEMA) as db:
                db.executemany(
                    "INSERT OR REPLACE INTO known_blobs VALUES (?, ?, ?, ?)",
                    [(registry, d, repository, now) for d in digests],
                )
        except (sqlite3.Error, OSError):
            pass  # a hint we could not save only costs a future upload
