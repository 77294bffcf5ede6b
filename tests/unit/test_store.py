"""The layout store's guards: what a damaged layout must not make it do."""

from __future__ import annotations

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
