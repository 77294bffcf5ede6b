"""Small helpers the tests share for looking inside images: layer bytes and root file systems."""

from __future__ import annotations

import gzip
import io
import os
import shutil
from pathlib import Path

import zstandard


def decompress(data: bytes, compression: str) -> bytes:
    if compression == "none":
        return data
    if compression == "gzip":
        return gzip.decompress(data)
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
        return reader.read()


def rootfs_command(rootfs: Path, script: str) -> list[str]:
    """Run ``script`` with ``rootfs`` as ``/``; an unprivileged user maps itself to root first."""
    chroot = ["chroot", str(rootfs), "/bin/sh", "-c", script]
    if os.geteuid() == 0:
        return chroot
    unshare = shutil.which("unshare")
    assert unshare is not None, "non-root runs need util-linux's unshare for a user namespace"
    return [unshare, "-r", *chroot]
