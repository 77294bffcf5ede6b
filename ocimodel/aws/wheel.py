"""The ocimodel a CodeBuild build runs: this one, as a wheel, delivered as the build's S3 source zip.

The wheel is assembled from the installed distribution itself: its metadata (``METADATA``, entry points, licences)
through ``importlib.metadata``, and its package files from its ``RECORD``, or, for an editable install, from the
source tree the install points at. No pip, no build backend, no package index: it works from a plain
``pip install``, a wheel or a venv without the source tree. The zip is deterministic (sorted entries, one fixed
date, fixed modes, fixed compression), so the same installed code gives the same bytes, and a second bootstrap finds
the uploaded source unchanged and uploads nothing.

CodeBuild unzips an S3 source into the build's working directory, so the wheel arrives with no ``aws s3 cp`` in the
buildspec, and the role needs only ``s3:GetObject`` on that one object.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

import ocimodel
from ocimodel.errors import OcimodelError

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_WHEEL_FILE = "Wheel-Version: 1.0\nGenerator: ocimodel\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


@dataclass(frozen=True)
class Bundle:
    wheel_name: str
    wheel_sha256: str
    #: The zip uploaded as the CodeBuild source: the wheel alone, at its top level.
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def installed_wheel() -> tuple[str, bytes]:
    """The running ocimodel as a wheel (name, bytes), from its installed distribution."""
    try:
        dist = metadata.distribution("ocimodel")
    except metadata.PackageNotFoundError:
        raise OcimodelError(
            "ocimodel has no installed distribution metadata (run from a bare checkout?), so bootstrap cannot make "
            "its wheel: pip install . first, or pass --wheel PATH"
        ) from None
    version = dist.version
    info_dir = f"ocimodel-{version}.dist-info"
    package = Path(ocimodel.__file__).resolve().parent
    # METADATA (PKG-INFO in an egg-info) and the entry points that make the ``ocimodel`` command.
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
    if not text:
        raise OcimodelError(f"the ocimodel {version} installation lacks its METADATA: reinstall it, or pass --wheel")
    entries = {f"{info_dir}/METADATA": text.encode()}
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        entries[f"{info_dir}/entry_points.txt"] = entry_points.encode()
    files = dist.files or []
    for record in files:
        parts = PurePosixPath(str(record)).parts
        if len(parts) > 2 and parts[0].endswith(".dist-info") and parts[1] == "licenses":
            entries[f"{info_dir}/{'/'.join(parts[1:])}"] = _read(Path(str(record.locate())))
    # The package's files: its RECORD lists them for a regular install; an editable one lists only a finder, and its
    # files are in the source tree it points at, which is where this very module was imported from.
    recorded = [
        str(r) for r in files if PurePosixPath(str(r)).parts[0] == package.name and _wanted(PurePosixPath(str(r)))
    ]
    if recorded and Path(str(dist.locate_file(recorded[0]))).resolve().is_relative_to(package.parent):
        for name in recorded:
            entries[name] = _read(Path(str(dist.locate_file(name))))
    else:
        for path in sorted(package.rglob("*")):
            relative = PurePosixPath(path.relative_to(package.parent).as_posix())
            if path.is_file() and _wanted(relative):
                entries[str(relative)] = _read(path)
    return f"ocimodel-{version}-py3-none-any.whl", wheel_bytes(entries, info_dir)


def _wanted(path: PurePosixPath) -> bool:
    return "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OcimodelError(f"cannot read {path} of the installed ocimodel: {exc.strerror or exc}") from None


def wheel_bytes(entries: dict[str, bytes], info_dir: str) -> bytes:
    """A wheel of ``entries`` plus its ``WHEEL`` and ``RECORD``: sorted, dated 1980-01-01, mode 0644."""
    files = {**entries, f"{info_dir}/WHEEL": _WHEEL_FILE.encode()}
    record = f"{info_dir}/RECORD"
    lines = [f"{name},sha256={_urlsafe_sha256(data)},{len(data)}" for name, data in sorted(files.items())]
    files[record] = ("\n".join([*lines, f"{record},,"]) + "\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        # The dist-info last, RECORD at the very end, as wheel installers expect.
        for name in sorted(files, key=lambda n: (n.startswith(info_dir), n == record, n)):
            _add(archive, name, files[name], zipfile.ZIP_DEFLATED)
    return out.getvalue()


def _urlsafe_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _add(archive: zipfile.ZipFile, name: str, data: bytes, compression: int) -> None:
    info = zipfile.ZipInfo(name, _ZIP_TIME)
    info.external_attr = 0o644 << 16
    info.compress_type = compression
    archive.writestr(info, data, compresslevel=6 if compression == zipfile.ZIP_DEFLATED else None)


def bundle_of(wheel_name: str, data: bytes) -> Bundle:
    """The source zip for a wheel, the same bytes for the same wheel (fixed time and modes)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        _add(archive, wheel_name, data, zipfile.ZIP_STORED)
    return Bundle(wheel_name, hashlib.sha256(data).hexdigest(), out.getvalue())


def bundle(wheel: Path) -> Bundle:
    """The source zip for the wheel file ``wheel`` (``--wheel``)."""
    if not (wheel.name.startswith("ocimodel-") and wheel.name.endswith(".whl")):
        raise OcimodelError(f"{wheel} is not an ocimodel wheel (ocimodel-VERSION-….whl)")
    try:
        data = wheel.read_bytes()
    except OSError as exc:
        raise OcimodelError(f"cannot read wheel {wheel}: {exc.strerror or exc}") from None
    return bundle_of(wheel.name, data)


def local_bundle(explicit: Path | None) -> Bundle:
    """``--wheel`` if given, else the installed ocimodel made into a wheel (in memory: nothing is written)."""
    if explicit is not None:
        return bundle(explicit)
    return bundle_of(*installed_wheel())

