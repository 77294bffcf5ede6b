"""ocimodel's local SQLite file under the user's cache directory: hints that save work, never the source of truth.

Everything stored here can be lost without harm (a missing hint costs a hash or an upload), so errors opening or
writing it are swallowed by the callers, and concurrent runs share it through SQLite's own locking.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def default_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ocimodel" / "cache.sqlite"


@contextmanager
def connect(path: Path, schema: str) -> Iterator[sqlite3.Connection]:
    """A connection with ``schema`` applied, committed on success and always closed (sqlite3's ``with`` only commits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=10)
    try:
        with db:
            db.execute(schema)
            yield db
    finally:
        db.close()
