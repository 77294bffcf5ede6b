"""The ocimodel a CodeBuild build runs: this one, as a wheel, delivered as the build's S3 source zip.

The wheel is built from the source tree this ocimodel is installed from (an editable install or a checkout), with
``SOURCE_DATE_EPOCH`` fixed so the same code gives the same bytes: a second bootstrap then finds the uploaded zip
unchanged and uploads nothing. The tree is copied first, because setuptools' ``build/`` keeps files deleted from
the source and would put them in the wheel. From a non-editable install, pass a wheel with ``--wheel``.

CodeBuild unzips an S3 source into the build's working directory, so the wheel arrives with no ``aws s3 cp`` in the
buildspec, and the role needs only ``s3:GetObject`` on that one object.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import ocimodel
from ocimodel.errors import OcimodelError

#: 1980-01-01, the earliest time a zip can record.
SOURCE_DATE_EPOCH = "315532800"
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ci", "tests", "bench", "*.pyc"
)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Bundle:
    wheel_name: str
    wheel_sha256: str
    #: The zip uploaded as the CodeBuild source: the wheel alone, at its top level.
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def source_tree() -> Path | None:
    """The project directory ocimodel was installed from, when it is still there."""
    root = Path(ocimodel.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "ocimodel"' in pyproject.read_text(encoding="utf-8"):
        return root
    return None


def build_wheel(tree: Path, out_dir: Path, *, isolated: bool = True) -> Path:
    """``pip wheel --no-deps`` of a clean copy of ``tree``, reproducibly.

    ``isolated=False`` builds with the setuptools already installed instead of fetching one from the package index
    (tests, which must not leave the machine).
    """
    with tempfile.TemporaryDirectory(prefix="ocimodel-wheel-") as work:
        copy = Path(work) / "src"
        copy.mkdir()
        # Only what the wheel is made of: a checkout may also hold venvs and multi-GB layouts.
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(tree / name, copy / name)
        shutil.copytree(tree / "ocimodel", copy / "ocimodel", ignore=_COPY_IGNORE)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-input",
                "--disable-pip-version-check",
                "--quiet",
                "--wheel-dir",
                str(out_dir),
                *([] if isolated else ["--no-build-isolation"]),
                str(copy),
            ],
            env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        # pip's own last lines only say that a subprocess failed; its full output says why.
        raise OcimodelError(
            f"pip could not build the ocimodel wheel from {tree} (python3 -m pip wheel --no-deps {tree} shows why); "
            "or pass --wheel PATH"
        )
    wheels = sorted(out_dir.glob("ocimodel-*.whl"))
    if len(wheels) != 1:
        raise OcimodelError(f"pip wheel left {len(wheels)} ocimodel wheels in {out_dir}, expected one")
    return wheels[0]


def bundle(wheel: Path) -> Bundle:
    """The source zip for ``wheel``, the same bytes for the same wheel (fixed time and modes)."""
    if not (wheel.name.startswith("ocimodel-") and wheel.name.endswith(".whl")):
        raise OcimodelError(f"{wheel} is not an ocimodel wheel (ocimodel-VERSION-….whl)")
    try:
        data = wheel.read_bytes()
    except OSError as exc:
        raise OcimodelError(f"cannot read wheel {wheel}: {exc.strerror or exc}") from None
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        info = zipfile.ZipInfo(wheel.name, _ZIP_TIME)
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_STORED
        archive.writestr(info, data)
    return Bundle(wheel.name, hashlib.sha256(data).hexdigest(), out.getvalue())


def local_bundle(explicit: Path | None) -> Bundle:
    """``--wheel`` if given, else a wheel built from the source tree."""
    if explicit is not None:
        return bundle(explicit)
    tree = source_tree()
    if tree is None:
        raise OcimodelError(
            "this ocimodel is not installed from a source tree, so bootstrap cannot build its wheel: pass --wheel "
            "PATH (e.g. from pip download --no-deps ocimodel)"
        )
    with tempfile.TemporaryDirectory(prefix="ocimodel-wheel-out-") as out:
        return bundle(build_wheel(tree, Path(out)))
