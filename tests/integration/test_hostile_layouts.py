"""Hand-made and hostile layouts through the real CLI: one clear line each from ``push``, ``verify`` and ``kserve``.

Each layout is written here byte by byte (a busybox-less image: one config, one tar layer, one manifest), then
damaged the way a hand edit, another tool or an attacker would. Nothing here reaches a registry: every case must
be refused while the layout is read, before ``push`` opens a connection (its destination is a closed port).
The subprocess timeout is only a safety net for the cases that used to hang.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable

import pytest

from ocimodel.layout.descriptor import (
    ANNOTATION_REF_NAME,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Descriptor,
    canonical_json,
)
from ocimodel.layout.store import Layout
from tests.harness.cli import assert_clean_error, explain

NOWHERE = "127.0.0.1:9/hostile/model:latest"  # the discard port: nothing listens, nothing may be sent


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocimodel", *(str(a) for a in args)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
    )


def _tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("models/config.json")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"{}"))
    return out.getvalue()


def image(root: Path) -> tuple[Layout, Descriptor]:
    """A tiny valid image, tagged ``latest``: the starting point every damage is applied to."""
    layout = Layout.create(root)
    layer = layout.put_bytes(OCI_LAYER, _tar())
    config = layout.put_json(OCI_CONFIG, {
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]}, "history": [{"created_by": "test"}],
    })
    manifest = layout.put_json(OCI_MANIFEST, {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(), "layers": [layer.to_json()],
    })
    layout.set_tag("latest", manifest)
    return layout, manifest


def write_index(layout: Layout, index: Any) -> None:
    layout.index_path.write_bytes(json.dumps(index).encode())


def entry(desc: Descriptor, **extra: Any) -> dict[str, Any]:
    return {**desc.to_json(), "annotations": {ANNOTATION_REF_NAME: "latest"}, **extra}


def _array(layout: Layout, manifest: Descriptor) -> None:
    write_index(layout, [entry(manifest)])


def _null_manifests(layout: Layout, manifest: Descriptor) -> None:
    write_index(layout, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": None})


def _annotations_not_an_object(layout: Layout, manifest: Descriptor) -> None:
    write_index(layout, {"schemaVersion": 2, "manifests": [entry(manifest, annotations=7)]})


def _ref_name_a_list(layout: Layout, manifest: Descriptor) -> None:
    write_index(layout, {"schemaVersion": 2, "manifests": [entry(manifest, annotations={ANNOTATION_REF_NAME: ["x"]})]})


def _manifest_is_a_directory(layout: Layout, manifest: Descriptor) -> None:
    path = layout.blob_path(manifest.digest)
    path.unlink()
    path.mkdir()


DAMAGES: dict[str, tuple[Callable[[Layout, Descriptor], None], str]] = {
    "index.json is a JSON array": (_array, "index.json is not a JSON object"),
    "manifests is null": (_null_manifests, "manifests is None, not a list"),
    "annotations are not an object": (_annotations_not_an_object, "has annotations 7"),
    "ref.name is a list": (_ref_name_a_list, "has annotations"),
    "the manifest blob is a directory": (_manifest_is_a_directory, "is not a regular file"),
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("command", ["push", "verify", "kserve"])
def test_a_malformed_layout_is_one_clear_line(tmp_path: Path, damage: str, command: str) -> None:
    layout, manifest = image(tmp_path / "layout")
    apply, says = DAMAGES[damage]
    apply(layout, manifest)
    args = {
        "push": ["push", layout.root, NOWHERE, "--plain-http"],
        "verify": ["verify", layout.root],
        "kserve": ["kserve", layout.root, "--ref", "127.0.0.1:9/hostile/model", "--name", "m"],
    }[command]
    result = run(*args)
    if command == "kserve" and damage == "the manifest blob is a directory":
        # kserve reads index.json alone: the digest there is all a storageUri needs.
        assert result.returncode == 0 and manifest.digest in result.stdout, explain(result)
        return
    assert_clean_error(result, says)


def test_a_fifo_where_a_layer_belongs_is_refused_not_waited_on(tmp_path: Path) -> None:
    layout, manifest = image(tmp_path / "layout")
    layer = json.loads(layout.read_blob(manifest.digest))["layers"][0]["digest"]
    path = layout.blob_path(layer)
    path.unlink()
    os.mkfifo(path)
    assert_clean_error(run("verify", layout.root), layer, "is not a regular file")
    assert_clean_error(run("push", layout.root, NOWHERE, "--plain-http"), layer)


def _nest(layout: Layout, child: Descriptor, levels: int, fan_out: int) -> Descriptor:
    """``levels`` indexes above ``child``, each naming the one below ``fan_out`` times."""
    for _ in range(levels):
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {**child.to_json(), "platform": {"os": "linux", "architecture": "amd64"}} for _ in range(fan_out)
        ]}
        data = canonical_json(index)
        child = Descriptor.of_bytes(OCI_INDEX, data)
        layout.blob_path(child.digest).write_bytes(data)  # put_bytes would fsync each of a thousand blobs
    return child


@pytest.mark.parametrize(
    ("levels", "fan_out"), [(1200, 1), (26, 2)], ids=["a 1200-deep chain", "a 26-deep fan-out-2 DAG"]
)
def test_deeply_nested_indexes_are_refused_in_one_line(tmp_path: Path, levels: int, fan_out: int) -> None:
    layout, manifest = image(tmp_path / "layout")
    layout.set_tag("latest", _nest(layout, manifest, levels, fan_out))
    for args in (["push", layout.root, NOWHERE, "--plain-http"], ["verify", layout.root]):
        assert_clean_error(run(*args), "nests image indexes more than 4 deep")
