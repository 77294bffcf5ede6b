"""The layout store's guards: what a damaged layout must not make it do."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import DOCUMENT_MAX_BYTES
from ocimodel.layout.store import FILE_MODE, Layout


def test_a_huge_blob_is_not_read_as_a_document(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path / "layout")
    digest = "sha256:" + "ab" * 32
    with open(layout.blob_path(digest), "wb") as f:
        f.truncate(DOCUMENT_MAX_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(OcimodelError, match="too large for a manifest"):
        layout.read_blob(digest)


def test_blobs_and_index_get_the_mode_open_would_give_not_0600(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path / "layout")
    desc = layout.put_bytes("application/vnd.oci.image.config.v1+json", b"{}")
    layout.set_tag("latest", desc)
    assert FILE_MODE != 0o600  # under any usual umask (022, 002) others may read
    assert layout.blob_path(desc.digest).stat().st_mode & 0o777 == FILE_MODE
    assert layout.index_path.stat().st_mode & 0o777 == FILE_MODE


def test_a_huge_index_json_is_refused_without_reading_it(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path / "layout")
    with open(layout.index_path, "r+b") as f:
        f.truncate(124 << 20)  # sparse, the size that took 400 MB of memory to refuse
    tracemalloc.start()
    try:
        with pytest.raises(OcimodelError, match="index.json is too large for an image index: more than 16 MiB"):
            layout.manifests()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_only_regular_files_are_read_as_blobs(tmp_path: Path, kind: str) -> None:
    """A FIFO would block an open() forever; here it must be refused at once (the CLI test guards the hang)."""
    layout = Layout.create(tmp_path / "layout")
    digest = layout.put_bytes("application/vnd.oci.image.config.v1+json", b"{}").digest
    path = layout.blob_path(digest)
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(OcimodelError, match=f"blob {digest} in .* is not a regular file"):
        layout.open_blob(digest)
    if kind == "directory":  # read_blob on a FIFO would hang the test run before the fix
        with pytest.raises(OcimodelError, match="is not a regular file"):
            layout.read_blob(digest)
