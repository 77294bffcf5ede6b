"""An OCI image layout on disk, written so that a crash at any moment leaves the previous state valid.

Blobs go to a temp file in the blob directory and are renamed into place only once their digest is known (and
checked, when it was announced); ``index.json`` is replaced atomically and last. A rerun reuses every blob that
made it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, Iterable, Iterator, Sequence

from ocimodel.errors import DigestMismatch, InvalidArgument, LayoutError
from ocimodel.layout.descriptor import (
    ANNOTATION_REF_NAME,
    DOCUMENT_MAX_BYTES,
    OCI_INDEX,
    Descriptor,
    canonical_json,
    descriptor_list,
    is_digest,
    parse_document,
)

LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_regular(path: Path, what: str) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file: a FIFO put where a blob belongs would block a plain
    ``open`` forever (O_NONBLOCK makes that open return at once), a directory or device is not a blob either."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LayoutError(f"{what} is not a regular file ({path}); the layout is damaged: pack it again")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_small(path: Path, limit: int, what: str, kind: str) -> bytes:
    """A whole small file, refused past ``limit`` bytes (before reading, and however it grows while read)."""
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise LayoutError(f"{what} is too large for {kind}: more than {limit >> 20} MiB; refusing to read it")
    return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Files get the mode ``open`` would give them (0644 under the usual umask), not mkstemp's 0600: a layout packed by
#: one user is read by others (skopeo, a web server, a container running as non-root).
FILE_MODE = 0o666 & ~_umask()


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Disk full, permission denied, read-only file system: one line naming the place, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise LayoutError(f"cannot write {path}: {exc.strerror or exc}; free space or fix permissions, then rerun") from exc


TEMP_SUFFIX = ".tmp"
#: The temp files this module writes start so (``atomic_write``'s with ``.<name>.``): nothing else is removed as stale.
BLOB_TEMP_PREFIX = ".upload-"


def _temp_file(folder: Path, prefix: str) -> tuple[int, Path]:
    """A new temp file, locked (``flock``) for as long as this process has it open.

    The lock is what tells a live writer's temp file from one left by a killed process: the kernel drops it when
    the holder dies, and ``remove_stale_temps`` removes only files whose lock it can take. Between creating the
    file and locking it, a cleaner can take the lock first and remove the file; the writer notices (the name no
    longer leads to its file) and makes another.
    """
    while True:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=TEMP_SUFFIX)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a cleaner looks at it
            if os.path.samestat(os.fstat(fd), os.stat(tmp, follow_symlinks=False)):
                os.fchmod(fd, FILE_MODE)
                return fd, Path(tmp)
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
        os.close(fd)


def _make_dirs(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; returns the ones this call made, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    made = []
    for path in reversed(missing):
        try:
            path.mkdir()
            made.append(path)
        except FileExistsError:
            pass  # made by another process just now: not ours to remove
    return made


def _remove_empty_dirs(folders: list[Path]) -> bool:
    """``rmdir`` innermost first, stopping at the first that is not empty; whether all went."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return False
    return True


def _is_temp(name: str, prefixes: tuple[str, ...]) -> bool:
    return name.endswith(TEMP_SUFFIX) and name.startswith(prefixes)


def remove_stale_temps(folder: Path, prefixes: tuple[str, ...]) -> list[str]:
    """Remove temp files in ``folder`` whose writer is gone (killed, or the machine lost power); returns their names.

    A live writer holds its file's lock, so its file is left alone; a file is removed only while this holds the
    lock, so no writer can be using it.
    """
    removed = []
    try:
        names = [e.name for e in os.scandir(folder) if _is_temp(e.name, prefixes)]
    except OSError:
        return removed
    for name in names:
        path = folder / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
                path.unlink()
                removed.append(name)
        except OSError:
            pass  # held by a live writer, or gone already
        finally:
            os.close(fd)
    return removed


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a torn one."""
    with _writing(path):
        fd, tmp = _temp_file(path.parent, f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                os.replace(tmp, path)  # while the lock is held: a cleaner cannot take the file away first
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


class BlobWriter:
    """Streams one blob to a temp file while hashing it; ``commit`` names it by its digest.

    A writer made with ``hashing=False`` serves a caller that already hashes the same bytes (a layer encoder):
    hashing twice would halve throughput on machines without SHA instructions. Used as a context manager: leaving
    the block without ``commit`` (an error, an interrupt) removes the temp file.
    """

    def __init__(self, layout: Layout, hashing: bool = True) -> None:
        self._layout = layout
        with _writing(layout.blob_dir):
            fd, self._tmp = _temp_file(layout.blob_dir, BLOB_TEMP_PREFIX)
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256() if hashing else None
        self.size = 0

    def write(self, chunk: bytes | memoryview) -> None:
        if self._hash is not None:
            self._hash.update(chunk)
        with _writing(self._layout.blob_dir):
            self._file.write(chunk)
        self.size += len(chunk)

    def commit(self, expected: str | None = None) -> str:
        """Rename the blob into place under its digest; refuse it if it is not the ``expected`` digest."""
        if self._hash is None:
            if expected is None:
                raise ValueError("a writer without hashing needs the digest its caller computed")
            digest = expected
        else:
            digest = "sha256:" + self._hash.hexdigest()
        with _writing(self._layout.blob_dir):
            self._file.flush()
            os.fsync(self._file.fileno())
            if expected is not None and digest != expected:
                self._file.close()
                self._tmp.unlink(missing_ok=True)
                raise DigestMismatch(f"content announced as {expected} hashes to {digest}; refusing it")
            target = self._layout.blob_path(digest)
            # Renamed (or dropped) before closing: the file's lock keeps cleaners off it until it has its name.
            if target.exists():
                self._tmp.unlink()
            else:
                os.replace(self._tmp, target)
            self._file.close()
        return digest

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


class Layout:
    """A directory holding ``oci-layout``, ``index.json`` and ``blobs/sha256``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        #: What ``create`` made, for ``remove_if_unused``: directories (outermost first), and files with their bytes.
        self._made_dirs: list[Path] = []
        self._made_files: list[tuple[Path, bytes]] = []

    @classmethod
    def create(cls, root: Path) -> Layout:
        """Open ``root`` as a layout, making it (and an empty index) if it does not exist yet.

        Temp files left by writers that were killed are removed first (see ``remove_stale_temps``).
        """
        if root.exists() and not root.is_dir():
            raise LayoutError(f"layout {root} exists and is not a directory; choose a directory path")
        layout = cls(root)
        try:
            layout._made_dirs = _make_dirs(layout.blob_dir)
            for name, data in (("oci-layout", canonical_json(LAYOUT_VERSION)), ("index.json", _index_bytes([]))):
                if not (root / name).exists():
                    atomic_write(root / name, data)
                    layout._made_files.append((root / name, data))
        except OSError as exc:
            raise LayoutError(f"cannot write layout {root}: {exc.strerror or exc}") from exc
        remove_stale_temps(layout.blob_dir, (BLOB_TEMP_PREFIX,))
        remove_stale_temps(root, (".oci-layout.", ".index.json."))
        return layout

    def remove_if_unused(self) -> None:
        """Undo ``create`` after a failure: what it made, and only while nothing else was stored there.

        Another pack may have started writing into the new layout meanwhile: its blobs (and temp files) keep the
        blob directory from being removed, and then every file and directory stays.
        """
        if self.blob_dir not in self._made_dirs:
            return
        inside = [d for d in self._made_dirs if self.root in d.parents]
        if not _remove_empty_dirs(inside):
            return
        for path, data in self._made_files:
            try:
                if path.read_bytes() == data:
                    path.unlink()
            except OSError:
                pass
        _remove_empty_dirs([d for d in self._made_dirs if d not in inside])

    @classmethod
    def open(cls, root: Path) -> Layout:
        """Open an existing layout for reading; a directory without ``oci-layout`` is refused."""
        if not (root / "oci-layout").is_file() or not (root / "index.json").is_file():
            raise LayoutError(f"{root} is not an OCI image layout (no oci-layout or index.json)")
        return cls(root)

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def blob_path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise LayoutError(f"unsupported digest {digest!r}")
        return self.blob_dir / digest.split(":", 1)[1]

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def writer(self, hashing: bool = True) -> BlobWriter:
        return BlobWriter(self, hashing)

    def write_blob(self, chunks: Iterable[bytes], expected: str | None = None) -> tuple[str, int]:
        """Store a stream of bytes as a blob; returns (digest, size)."""
        with self.writer() as w:
            for chunk in chunks:
                w.write(chunk)
            return w.commit(expected), w.size

    def put_bytes(self, media_type: str, data: bytes, annotations: dict[str, str] | None = None) -> Descriptor:
        desc = Descriptor.of_bytes(media_type, data, annotations)
        if not self.has_blob(desc.digest):
            self.write_blob([data], desc.digest)
        return desc

    def put_json(self, media_type: str, obj: Any) -> Descriptor:
        return self.put_bytes(media_type, canonical_json(obj))

    def open_blob(self, digest: str) -> BinaryIO:
        """A blob (a layer, say) to stream: a regular file, never a FIFO or directory put in its place."""
        try:
            return open_regular(self.blob_path(digest), f"blob {digest} in {self.root}")
        except FileNotFoundError:
            raise LayoutError(f"layout {self.root} lacks blob {digest}") from None
        except OSError as exc:
            raise LayoutError(f"cannot read blob {digest} in {self.root}: {exc.strerror or exc}") from None

    def read_blob(self, digest: str) -> bytes:
        """Read a small blob (manifest, config, index) whole and check it against its name.

        A damaged index can name a multi-GB layer where a manifest belongs: that is refused, not read into memory.
        """
        what = f"blob {digest} in {self.root}"
        try:
            data = _read_small(self.blob_path(digest), DOCUMENT_MAX_BYTES, what, "a manifest, index or config")
        except FileNotFoundError:
            raise LayoutError(f"layout {self.root} lacks blob {digest}") from None
        except OSError as exc:
            raise LayoutError(f"cannot read {what}: {exc.strerror or exc}") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise DigestMismatch(f"blob {digest} in {self.root} is corrupt (its content hashes differently)")
        return data

    def manifests(self) -> list[Descriptor]:
        """The entries of ``index.json``, in file order; a hand-edited or hostile one gives one line, not a traceback.

        ``index.json`` is capped like any document read whole: tens of thousands of tags fit in it.
        """
        what = str(self.index_path)
        try:
            data = _read_small(self.index_path, DOCUMENT_MAX_BYTES, what, "an image index")
        except OSError as exc:
            raise LayoutError(f"cannot read {self.index_path}: {exc.strerror or exc}") from None
        return descriptor_list(parse_document(data, what), "manifests", what)

    def tags(self) -> dict[str, Descriptor]:
        return {
            d.annotations[ANNOTATION_REF_NAME]: d for d in self.manifests() if ANNOTATION_REF_NAME in d.annotations
        }

    def select_tag(self, tag: str | None = None) -> tuple[str, Descriptor]:
        """The image a command means: ``tag``, else the only tag, else ``latest``, else the only untagged entry.

        skopeo and olot write one tag; a layout packed several times holds several, and guessing among them
        would push or check the wrong image.
        """
        tags = self.tags()
        if tag is not None:
            if tag not in tags:
                known = ", ".join(sorted(tags)) or "none"
                raise LayoutError(f"layout {self.root} has no tag {tag!r} (tags: {known})")
            return tag, tags[tag]
        if len(tags) == 1:
            return next(iter(tags.items()))
        if "latest" in tags:
            return "latest", tags["latest"]
        if not tags:
            entries = self.manifests()
            if len(entries) == 1:
                return "latest", entries[0]
            raise LayoutError(f"layout {self.root} has no tagged image to push")
        raise InvalidArgument(
            "tag", f"layout {self.root} has several tags ({', '.join(sorted(tags))}); pick one of them"
        )

    def set_tag(self, tag: str, desc: Descriptor, untagged: Sequence[Descriptor] = ()) -> None:
        """Point ``tag`` at ``desc``: exactly one entry per tag, other entries kept in place; ``untagged`` entries
        (artifacts referring to ``desc``, such as its signature) are listed too, once each, in the same write.

        The blob directory is synced first, so after a power loss the index never names a blob whose directory
        entry was lost; a lock keeps two packs into one layout from dropping each other's tags.
        """
        entry = replace(desc, annotations={**desc.annotations, ANNOTATION_REF_NAME: tag})
        added = {d.digest for d in untagged}
        with _writing(self.index_path), open(self.root / "oci-layout", "rb") as marker:
            _fsync_dir(self.blob_dir)
            fcntl.flock(marker.fileno(), fcntl.LOCK_EX)
            entries = [
                d for d in self.manifests()
                if d.annotations.get(ANNOTATION_REF_NAME) != tag
                and not (d.digest in added and ANNOTATION_REF_NAME not in d.annotations)
            ]
            atomic_write(self.index_path, _index_bytes([*entries, *untagged, entry]))


def _index_bytes(entries: list[Descriptor]) -> bytes:
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [e.to_json() for e in entries]}
    return json.dumps(index, indent=2).encode() + b"\n"
