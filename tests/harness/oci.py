"""Small helpers the tests share for looking inside images without ocimodel: layout blobs, layer bytes and root
file systems."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import zstandard

# Spelled out rather than imported from ocimodel: the tests pin the wire format, not the code's names.
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


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


def blob(layout: Path, digest: str) -> bytes:
    data = (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def reachable(layout: Path, digest: str) -> dict[str, bytes]:
    """Every blob the image ``digest`` consists of (manifests, index, configs, layers), by digest."""
    found: dict[str, bytes] = {}
    pending = [digest]
    while pending:
        current = pending.pop()
        data = blob(layout, current)
        found[current] = data
        doc = json.loads(data)
        pending += [m["digest"] for m in doc.get("manifests", [])]
        for desc in [doc["config"], *doc["layers"]] if "config" in doc else []:
            found[desc["digest"]] = blob(layout, desc["digest"])
    return found
