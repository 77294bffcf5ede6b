"""The one walk over index graphs, as push, pull and verify use it: each digest once, nesting bounded, no recursion.

Layouts are hand-made: one small image, with indexes stacked above it that name the level below many times (a DAG
that repeats) or once (a chain). Reads are counted, not timed: a walk without a visited set reads the manifest
fan-out^depth times.
"""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from ocimodel.errors import OcimodelError
from ocimodel.image.walk import walk
from ocimodel.layout.descriptor import (
    MAX_INDEX_DEPTH,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    canonical_json,
)
from ocimodel.layout.source import LayoutSource
from ocimodel.layout.store import Layout
from ocimodel.registry.pull import pull_image
from ocimodel.registry.push import collect
from ocimodel.registry.reference import parse_reference
from ocimodel.verification import gather

AMD64 = Platform("linux", "amd64")


class CountingLayout(Layout):
    """A layout that counts the documents read from it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: Counter[str] = Counter()

    def read_blob(self, digest: str) -> bytes:
        self.reads[digest] += 1
        return super().read_blob(digest)


def image(root: Path) -> tuple[CountingLayout, Descriptor]:
    Layout.create(root)
    layout = CountingLayout(root)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        archive.addfile(tarfile.TarInfo("models/a"))
    layer = layout.put_bytes(OCI_LAYER, out.getvalue())
    config = layout.put_json(OCI_CONFIG, {**AMD64.to_json(), "config": {}, "rootfs": {"diff_ids": [layer.digest]}})
    manifest = layout.put_json(OCI_MANIFEST, {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(), "layers": [layer.to_json()],
    })
    return layout, manifest


def nest(layout: Layout, child: Descriptor, levels: int, fan_out: int = 1) -> list[Descriptor]:
    """``levels`` indexes stacked above ``child``, each naming the one below ``fan_out`` times; bottom first."""
    stacked = []
    for _ in range(levels):
        entry = {**child.to_json(), "platform": AMD64.to_json()}
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry] * fan_out}
        data = canonical_json(index)
        child = Descriptor.of_bytes(OCI_INDEX, data)
        layout.blob_path(child.digest).write_bytes(data)  # put_bytes would fsync each of a thousand blobs
        stacked.append(child)
    return stacked


def test_push_reads_each_document_of_a_repeating_dag_once(tmp_path: Path) -> None:
    layout, manifest = image(tmp_path / "layout")
    indexes = nest(layout, manifest, MAX_INDEX_DEPTH, fan_out=8)
    layout.set_tag("latest", indexes[-1])
    layout.reads.clear()
    pushed = collect(LayoutSource(layout))
    assert layout.reads == Counter({d.digest: 1 for d in [manifest, *indexes]})  # not 8^4 reads of the manifest
    # Each document sent once, every child before the index that names it, the top last.
    assert [d.digest for d, _ in pushed.manifests] == [d.digest for d in [manifest, *indexes]]
    assert [d.media_type for d, _ in pushed.manifests] == [OCI_MANIFEST] + [OCI_INDEX] * MAX_INDEX_DEPTH


@pytest.mark.parametrize("levels", [MAX_INDEX_DEPTH + 1, 1200])
def test_push_pull_and_verify_share_one_nesting_bound(tmp_path: Path, levels: int) -> None:
    layout, manifest = image(tmp_path / "layout")
    deepest = nest(layout, manifest, MAX_INDEX_DEPTH)[-1]
    layout.set_tag("latest", deepest)
    assert collect(LayoutSource(layout)).top.digest == deepest.digest
    pin = parse_reference(f"127.0.0.1:9/deep@{deepest.digest}")  # every document is in the layout: nothing is fetched
    assert pull_image(pin, AMD64, layout).manifest.digest == manifest.digest
    assert [what.split()[0] for what, _ in gather(LayoutSource(layout), AMD64).documents] == (
        ["index"] * MAX_INDEX_DEPTH + ["manifest"]
    )

    top = nest(layout, deepest, levels - MAX_INDEX_DEPTH)[-1]
    layout.set_tag("latest", top)
    pin = parse_reference(f"127.0.0.1:9/deep@{top.digest}")
    refusals = [
        lambda: collect(LayoutSource(layout)),
        lambda: pull_image(pin, AMD64, layout),
        lambda: gather(LayoutSource(layout), AMD64),
    ]
    for refusal in refusals:
        layout.reads.clear()
        with pytest.raises(OcimodelError, match=f"nests image indexes more than {MAX_INDEX_DEPTH} deep"):
            refusal()
        assert sum(layout.reads.values()) <= MAX_INDEX_DEPTH + 1  # stopped at the bound, not at the bottom


def test_one_platform_walk_is_a_path_to_the_exact_entry_else_the_first_compatible(tmp_path: Path) -> None:
    layout, manifest = image(tmp_path / "layout")
    attestation = layout.put_json(OCI_MANIFEST, {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []})
    v8, bare = Platform("linux", "arm64", "v8"), Platform("linux", "arm64")
    entries = [(attestation, Platform("unknown", "unknown")), (attestation, v8), (manifest, bare), (manifest, AMD64)]
    index = layout.put_json(OCI_INDEX, {
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{**d.to_json(), "platform": p.to_json()} for d, p in entries],
    })
    layout.set_tag("latest", index)
    source = LayoutSource(layout)

    # Every entry for push (each digest once), children first; only the chosen entry for one platform.
    assert [n.descriptor.digest for n in walk(source)] == [attestation.digest, manifest.digest, index.digest]
    exact = walk(source, bare)  # linux/arm64/v8 comes first and is compatible, but linux/arm64 is exact
    assert [(n.descriptor.digest, n.is_index) for n in exact] == [(manifest.digest, False), (index.digest, True)]
    assert walk(source, Platform("linux", "arm64", "v8"))[0].descriptor.digest == attestation.digest
    no_exact = [Descriptor(d.media_type, d.digest, d.size, platform=v8) for d in (attestation, manifest)]
    assert bare.choose(no_exact) == no_exact[0]  # no exact entry: the first compatible one
    assert bare.choose([d for d, _ in entries]) is None  # entries without a platform are never chosen

    # Nothing for the platform: the walk ends at the index, which lists what it has (attestations left out).
    [last] = walk(source, Platform("linux", "s390x"))
    assert last.is_index and last.platforms() == (v8, bare, AMD64)
