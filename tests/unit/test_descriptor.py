"""Descriptors keep what they do not model: a base's foreign layer (``urls``), embedded ``data``, an ``artifactType``,
fields of later spec versions and unknown annotations come out of pack exactly as they went in, key order included.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import (
    DOCKER_LAYER_GZIP,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    canonical_json,
    descriptor_list,
)
from ocimodel.layout.image import Base, build_manifest, scratch
from ocimodel.layout.store import Layout
from ocimodel.layout.pack import PackOptions, pack
from ocimodel.progress import PlainReporter
from ocimodel.source.local import LocalSource
from tests.harness.registry_stub import RegistryStub

CONTENT = b"a small blob"
DIGEST = "sha256:" + hashlib.sha256(CONTENT).hexdigest()
OTHER = "sha256:" + "1" * 64


def foreign_layer(digest: str = DIGEST, size: int = len(CONTENT), **more: Any) -> dict[str, Any]:
    """A layer descriptor as another tool may write it: docker's key order, a foreign layer's ``urls``, an
    ``artifactType``, a field from a later spec and one from nobody's, annotations we have never heard of."""
    return {
        "mediaType": DOCKER_LAYER_GZIP,
        "size": size,
        "digest": digest,
        "urls": ["https://example.com/layers/1", "https://mirror.example.com/layers/1"],
        "annotations": {"com.example.signed-by": "build-bot", "org.example.empty": ""},
        "artifactType": "application/vnd.example.layer",
        "org.example.provenance": {"builder": "kaniko", "steps": [1, 2, {"nested": None}]},
        "x-weight": 0.5,
        **more,
    }


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"mediaType": OCI_LAYER, "digest": DIGEST, "size": 12}, id="plain"),
        pytest.param({"size": 12, "digest": DIGEST, "mediaType": OCI_LAYER}, id="other-key-order"),
        pytest.param(foreign_layer(), id="foreign"),
        pytest.param(
            {"mediaType": OCI_LAYER, "digest": DIGEST, "size": len(CONTENT), "data": base64.b64encode(CONTENT).decode()},
            id="embedded-data",
        ),
        pytest.param({"mediaType": OCI_LAYER, "digest": DIGEST, "size": 12, "annotations": {}, "urls": []}, id="empty"),
        pytest.param(
            {"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 3, "platform": {"architecture": "arm64", "os": "linux",
             "variant": "v8"}, "artifactType": "application/vnd.example+json"},
            id="platform",
        ),
    ],
)
def test_a_descriptor_read_is_written_back_byte_for_byte(obj: dict[str, Any]) -> None:
    assert canonical_json(Descriptor.from_json(obj).to_json()) == canonical_json(obj)


def test_the_fields_are_modelled_where_they_are_named() -> None:
    d = Descriptor.from_json(foreign_layer(data=base64.b64encode(CONTENT).decode()))
    assert d.urls == ("https://example.com/layers/1", "https://mirror.example.com/layers/1")
    assert d.artifact_type == "application/vnd.example.layer" and d.data == base64.b64encode(CONTENT).decode()
    assert d.annotations["com.example.signed-by"] == "build-bot"
    assert set(d.unknown) == {"org.example.provenance", "x-weight"}


def test_our_own_descriptors_are_written_as_before() -> None:
    """Key order is part of a manifest's digest: descriptors we make must serialise exactly as they always did."""
    ours = Descriptor(OCI_MANIFEST, DIGEST, 3, {"a": "b"}, Platform("linux", "amd64"))
    assert list(ours.to_json().items()) == [
        ("mediaType", OCI_MANIFEST),
        ("digest", DIGEST),
        ("size", 3),
        ("platform", {"architecture": "amd64", "os": "linux"}),
        ("annotations", {"a": "b"}),
    ]


def test_key_order_does_not_make_two_descriptors_different() -> None:
    a = Descriptor.from_json({"mediaType": OCI_LAYER, "digest": DIGEST, "size": 12})
    b = Descriptor.from_json({"size": 12, "digest": DIGEST, "mediaType": OCI_LAYER})
    assert a == b == Descriptor(OCI_LAYER, DIGEST, 12)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("data", "not base64!", "not base64 of 12 bytes"),
        ("data", base64.b64encode(CONTENT[:-1]).decode(), "not base64 of 12 bytes"),
        ("data", base64.b64encode(CONTENT.upper()).decode(), "embedded data that hashes to sha256:"),
        ("data", 12, "not base64"),
        ("urls", "https://example.com/layer", "urls 'https://example.com/layer', not a list of strings"),
        ("urls", [1], "not a list of strings"),
        ("artifactType", ["a"], "artifactType ['a'], not a string"),
    ],
)
def test_what_the_spec_forbids_in_those_fields_is_refused_in_one_line(field: str, value: Any, message: str) -> None:
    """image-spec descriptor.md: ``data`` MUST be base64 of exactly the referenced content; ``urls`` is a list of
    strings; ``artifactType`` a media type. A lie in ``data`` is not carried into our image."""
    doc = {"layers": [{"mediaType": OCI_LAYER, "digest": DIGEST, "size": len(CONTENT), field: value}]}
    with pytest.raises(OcimodelError) as err:
        descriptor_list(doc, "layers", "manifest of the base")
    assert str(err.value).startswith("manifest of the base is malformed: descriptor of sha256:")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_build_manifest_keeps_the_bases_layer_descriptors_whole() -> None:
    """Only the docker media type becomes its OCI twin (same bytes); urls, artifactType, unknown fields and
    annotations stay, in their order."""
    base = Base({"layers": [foreign_layer()]}, scratch(Platform("linux", "amd64")).config)
    config = Descriptor(OCI_CONFIG, OTHER, 2)
    manifest = build_manifest(config, base, [], {})
    assert canonical_json(manifest["layers"]) == canonical_json([{**foreign_layer(), "mediaType": OCI_LAYER_GZIP}])


def _tar(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_pack_on_a_base_with_a_foreign_layer_keeps_its_descriptor(stub: RegistryStub, tmp_path: Path) -> None:
    layer = _tar("etc/base.txt", b"from the base\n")
    layer_digest = stub.add_blob("library/base", layer)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}, "history": [{"created_by": "base"}],
    }).encode()
    described = foreign_layer(
        layer_digest, len(layer), mediaType=OCI_LAYER, data=base64.b64encode(layer).decode()
    )
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": stub.add_blob("library/base", config), "size": len(config)},
        "layers": [described],
    }).encode()
    base = f"{stub.host}/library/base@{stub.add_manifest('library/base', manifest, OCI_MANIFEST)}"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")

    top = pack(LocalSource.from_path(model), tmp_path / "layout", PackOptions(base=base), PlainReporter(io.StringIO()))

    ours = json.loads(Layout(tmp_path / "layout").read_blob(top.digest))
    assert canonical_json(ours["layers"][0]) == canonical_json(described)
    assert len(ours["layers"]) == 2


def test_tagging_keeps_what_other_tools_wrote_in_index_json(tmp_path: Path) -> None:
    """index.json is shared with other tools (skopeo, oras): rewriting it for our tag must not strip their entries."""
    layout = Layout.create(tmp_path / "layout")
    theirs = {
        "mediaType": OCI_MANIFEST, "size": 3, "digest": OTHER, "artifactType": "application/vnd.example.sbom",
        "annotations": {"org.opencontainers.image.ref.name": "sbom", "com.example.kind": "spdx"},
        "x-tool": {"version": 2},
    }
    index = {"schemaVersion": 2, "manifests": [theirs]}
    layout.index_path.write_text(json.dumps(index))
    layout.set_tag("mine", Descriptor(OCI_MANIFEST, DIGEST, 12))
    layout.set_tag("sbom-again", layout.tags()["sbom"])
    written = json.loads(layout.index_path.read_text())["manifests"]
    assert canonical_json(written[0]) == canonical_json(theirs)
    retagged = {**theirs, "annotations": {**theirs["annotations"], "org.opencontainers.image.ref.name": "sbom-again"}}
    assert canonical_json(written[2]) == canonical_json(retagged)
