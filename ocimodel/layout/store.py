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
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, Iterable, Iterator

from ocimodel.errors import DigestMismatch, OcimodelError
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
            raise OcimodelError(f"{what} is not a regular file ({path}); the layout is damaged: pack it again")
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
        raise OcimodelError(f"{what} is too large for {kind}: more than {limit >> 20} MiB; refusing to read it")
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
        raise OcimodelError(f"cannot write {path}: {exc.strerror or exc}; free space or fix permissions, then rerun") from exc


def _temp_file(folder: Path, prefix: str) -> tuple[int, Path]:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    return fd, Path(tmp)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a torn one."""
    with _writing(path):
        fd, tmp = _temp_file(path.parent, f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
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
            fd, self._tmp = _temp_file(layout.blob_dir, ".upload-")
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
            self._file.close()
            if expected is not None and digest != expected:
                self._tmp.unlink(missing_ok=True)
                raise DigestMismatch(f"content announced as {expected} hashes to {digest}; refusing it")
            target = self._layout.blob_path(digest)
            if target.exists():
                self._tmp.unlink()
            else:
                os.replace(self._tmp, target)
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

    @classmethod
    def create(cls, root: Path) -> Layout:
        """Open ``root`` as a layout, making it (and an empty index) if it does not exist yet."""
        if root.exists() and not root.is_dir():
            raise OcimodelError(f"layout {root} exists and is not a directory; choose a directory path")
        layout = cls(root)
        try:
            layout.blob_dir.mkdir(parents=True, exist_ok=True)
            marker = root / "oci-layout"
            if not marker.exists():
                atomic_write(marker, canonical_json(LAYOUT_VERSION))
            if not layout.index_path.exists():
                atomic_write(layout.index_path, _index_bytes([]))
        except OSError as exc:
            raise OcimodelError(f"cannot write layout {root}: {exc.strerror or exc}") from exc
        return layout

    @classmethod
    def open(cls, root: Path) -> Layout:
        """Open an existing layout for reading; a directory without ``oci-layout`` is refused."""
        if not (root / "oci-layout").is_file() or not (root / "index.json").is_file():
            raise OcimodelError(f"{root} is not an OCI image layout (no oci-layout or index.json)")
        return cls(root)

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def blob_path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise OcimodelError(f"unsupported digest {digest!r}")
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
            raise OcimodelError(f"layout {self.root} lacks blob {digest}") from None
        except OSError as exc:
            raise OcimodelError(f"cannot read blob {digest} in {self.root}: {exc.strerror or exc}") from None

    def read_blob(self, digest: str) -> bytes:
        """Read a small blob (manifest, config, index) whole and check it against its name.

        A damaged index can name a multi-GB layer where a manifest belongs: that is refused, not read into memory.
        """
        what = f"blob {digest} in {self.root}"
        try:
            data = _read_small(self.blob_path(digest), DOCUMENT_MAX_BYTES, what, "a manifest, index or config")
        except FileNotFoundError:
            raise OcimodelError(f"layout {self.root} lacks blob {digest}") from None
        except OSError as exc:
            raise OcimodelError(f"cannot read {what}: {exc.strerror or exc}") from None
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
            raise OcimodelError(f"cannot read {self.index_path}: {exc.strerror or exc}") from None
        return descriptor_list(parse_document(data, what), "manifests", what)

    def tags(self) -> dict[str, Descriptor]:
        return {
            d.annotations[ANNOTATION_REF_NAME]: d for d in self.manifests() if ANNOTATION_REF_NAME in d.annotations
        }

    def set_tag(self, tag: str, desc: Descriptor) -> None:
        """Point ``tag`` at ``desc``: exactly one entry per tag, other entries kept in place.

        The blob directory is synced first, so after a power loss the index never names a blob whose directory
        entry was lost; a lock keeps two packs into one layout from dropping each other's tags.
        """
        entry = Descriptor(
            desc.media_type, desc.digest, desc.size, {**desc.annotations, ANNOTATION_REF_NAME: tag}, desc.platform
        )
        with _writing(self.index_path), open(self.root / "oci-layout", "rb") as marker:
            _fsync_dir(self.blob_dir)
            fcntl.flock(marker.fileno(), fcntl.LOCK_EX)
            entries = [d for d in self.manifests() if d.annotations.get(ANNOTATION_REF_NAME) != tag]
            atomic_write(self.index_path, _index_bytes([*entries, entry]))


def _index_bytes(entries: list[Descriptor]) -> bytes:
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [e.to_json() for e in entries]}
    return json.dumps(index, indent=2).encode() + b"\n"
