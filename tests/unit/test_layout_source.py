"""Which image of a layout a command means (``Layout.select_tag``), and the layout seen as an ``ImageSource``.

Layouts from skopeo and olot hold one tag, ours may hold several after repeated packs, and hand-made ones none:
guessing among several would push or check the wrong image, so only the unambiguous cases are decided.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import OCI_LAYER, OCI_MANIFEST, Descriptor
from ocimodel.layout.source import LayoutSource
from ocimodel.layout.store import Layout


def manifest(layout: Layout, n: int) -> Descriptor:
    return layout.put_json(OCI_MANIFEST, {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [], "n": n})


def test_the_only_tag_else_latest_else_the_one_named(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path / "layout")
    one, two = manifest(layout, 1), manifest(layout, 2)
    layout.set_tag("v1", one)
    assert layout.select_tag() == ("v1", layout.tags()["v1"])
    layout.set_tag("v2", two)
    with pytest.raises(OcimodelError, match=r"several tags \(v1, v2\)"):
        layout.select_tag()
    layout.set_tag("latest", two)
    assert layout.select_tag()[0] == "latest"
    assert layout.select_tag("v1")[1].digest == one.digest
    with pytest.raises(OcimodelError, match=r"has no tag 'v3' \(tags: latest, v1, v2\)"):
        layout.select_tag("v3")


def test_an_untagged_layout_means_its_only_image(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path / "layout")
    with pytest.raises(OcimodelError, match="no tagged image"):
        layout.select_tag()
    only = manifest(layout, 1)
    layout.index_path.write_text(json.dumps({"schemaVersion": 2, "manifests": [only.to_json()]}))
    assert layout.select_tag() == ("latest", only)


def test_a_layout_source_reads_the_selected_image_and_seeks_its_layers(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path / "layout")
    layer = layout.put_bytes(OCI_LAYER, b"layer bytes")
    top = manifest(layout, 1)
    layout.set_tag("v1", top)
    source = LayoutSource(layout)
    assert (source.name, source.tag, source.seekable) == (f"{layout.root}:v1", "v1", True)
    assert source.top()[1] == layout.read_blob(top.digest)
    with source.layer(layer) as stream:
        stream.seek(6)
        assert stream.read() == b"bytes"
