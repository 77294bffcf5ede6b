"""Digests of layers already built, keyed on the identity of the files that went in.

Hashing a 16 GB shard takes a minute on a machine without SHA instructions; when the same file (same path in the
image, and the same inode, size and mtime, or the same Hub LFS sha256) is packed again with the same settings, the
layer's bytes are the same, so its digests are too. Like make and rsync, this trusts that a file whose size and
mtime did not change did not change; ``--no-cache`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from ocimodel import localdb
from ocimodel.errors import SourceError
from ocimodel.layout.plan import LayerPlan
from ocimodel.layout.tarlayer import LayerDigests, codec_id
from ocimodel.source import FileIdentity, SourceFile

#: Part of every key: bump it whenever the bytes a plan produces change (tar headers, ordering, compression).
FORMAT = "ocimodel-tar-1"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS layer_digests (key TEXT PRIMARY KEY, media_type TEXT, digest TEXT, size INTEGER, "
    "diff_id TEXT, seen REAL)"
)
_FILE_SCHEMA = "CREATE TABLE IF NOT EXISTS file_sha256 (key TEXT PRIMARY KEY, sha256 TEXT, seen REAL)"


def layer_key(plan: LayerPlan, compression: str) -> str:
    """A key that changes whenever anything that goes into the layer's bytes may have changed."""
    files = []
    for f in plan.files:
        if f.lfs_sha256:
            identity: list[object] = ["lfs", f.lfs_sha256, f.size]
        else:
            # The file as listed: reading it later checks it is still that file, so the key names what is packed.
            known = f.identity or _identity_now(f)
            identity = ["stat", known.device, known.inode, known.size, known.mtime_ns, known.ctime_ns]
        files.append([f.path, *identity])
    blob = json.dumps([FORMAT, compression, codec_id(compression), files], separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def file_key(f: SourceFile) -> str:
    """A key for one file's content: the same file as listed (inode, size, mtime, ctime), wherever it is packed."""
    known = f.identity or _identity_now(f)
    blob = json.dumps([FORMAT, "file", known.device, known.inode, known.size, known.mtime_ns, known.ctime_ns])
    return hashlib.sha256(blob.encode()).hexdigest()


def _identity_now(f: SourceFile) -> FileIdentity:
    try:
        return FileIdentity.of(f.local.stat())
    except OSError as exc:
        raise SourceError(f"cannot read {f.local}: {exc.strerror or exc}") from exc


class DigestCache:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or localdb.default_path()

    def get(self, key: str) -> LayerDigests | None:
        try:
            with localdb.connect(self.path, _SCHEMA) as db:
                row = db.execute(
                    "SELECT media_type, digest, size, diff_id FROM layer_digests WHERE key = ?", (key,)
                ).fetchone()
        except (sqlite3.Error, OSError):
            return None
        return LayerDigests(row[0], row[1], int(row[2]), row[3]) if row else None

    def forget(self, key: str) -> None:
        try:
            with localdb.connect(self.path, _SCHEMA) as db:
                db.execute("DELETE FROM layer_digests WHERE key = ?", (key,))
        except (sqlite3.Error, OSError):
            pass

    def put(self, key: str, digests: LayerDigests) -> None:
        try:
            with localdb.connect(self.path, _SCHEMA) as db:
                db.execute(
                    "INSERT OR REPLACE INTO layer_digests VALUES (?, ?, ?, ?, ?, ?)",
                    (key, digests.media_type, digests.digest, digests.size, digests.diff_id, time.time()),
                )
        except (sqlite3.Error, OSError):
            pass  # a digest we could not remember only costs a hash next time

    def get_file(self, key: str) -> str | None:
        """A file's sha256 remembered from a signed build, so signing an unchanged layer again reads nothing."""
        try:
            with localdb.connect(self.path, _FILE_SCHEMA) as db:
                row = db.execute("SELECT sha256 FROM file_sha256 WHERE key = ?", (key,)).fetchone()
        except (sqlite3.Error, OSError):
            return None
        return str(row[0]) if row else None

    def put_file(self, key: str, sha256: str) -> None:
        try:
            with localdb.connect(self.path, _FILE_SCHEMA) as db:
                db.execute("INSERT OR REPLACE INTO file_sha256 VALUES (?, ?, ?)", (key, sha256, time.time()))
        except (sqlite3.Error, OSError):
            pass  # forgetting it costs one read of the file next time
