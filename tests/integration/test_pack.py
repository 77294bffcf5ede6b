"""``ocimodel pack`` end to end: the real CLI in a subprocess, real registries, umoci, skopeo and chroot.

Every test builds its own small model directory, runs ``python3 -m ocimodel pack`` and inspects the
result with tools that know nothing about ocimodel: Python's tarfile for the layer bytes, umoci to
unpack, skopeo to inspect, busybox in a chroot to look at ``/models``.  The only shared state is the
session registries and busybox images from ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.harness.busybox import (
    MEDIA_TYPE_MANIFEST,
    canonical_json,
    layout_top_descriptor,
    manifest_digests_by_platform,
    pinned_reference,
    push_layout_with_skopeo,
    read_blob,
)
from tests.harness.registry import Registry
from tests.harness.oci import decompress, rootfs_command
from tests.harness.cli import assert_clean_error, cli_command, cli_env, explain, pack, run_cli
from tests.harness.models import LONG_NAME, model

# Spelled out here rather than imported from ocimodel: the tests pin the wire format, not the code's names.
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
REF_NAME = "org.opencontainers.image.ref.name"
TITLE = "org.opencontainers.image.title"
FILEPATH = "org.cncf.model.filepath"
BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"

#: A digest no registry holds: syntactically valid, so only the registry can refuse it.
UNKNOWN_DIGEST = "sha256:" + "0" * 64
#: The harness's busybox image has exactly one layer.
BUSYBOX_LAYERS = 1



# --- running the CLI ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def private_cache(work: Path) -> Iterator[None]:
    """For module-scoped fixtures, which run before conftest's per-test XDG_CACHE_HOME: never touch ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(work / "xdg-cache"))
        yield


def run_tool(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, explain(result)
    return result


def umoci_unpack(layout: Path, tag: str, bundle: Path) -> Path:
    run_tool(["umoci", "unpack", "--rootless", "--image", f"{layout}:{tag}", str(bundle)])
    return bundle / "rootfs"






# --- reading a layout without ocimodel ---------------------------------------------------------------------------


class OciLayout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"

    def index(self) -> dict[str, Any]:
        index = json.loads((self.root / "index.json").read_bytes())
        assert index["schemaVersion"] == 2
        assert json.loads((self.root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
        return index

    def entries(self, tag: str) -> list[dict[str, Any]]:
        return [m for m in self.index()["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]

    def tags(self) -> list[str]:
        return [m.get("annotations", {}).get(REF_NAME) for m in self.index()["manifests"]]

    def entry(self, tag: str) -> dict[str, Any]:
        (entry,) = self.entries(tag)
        return entry

    def blob(self, digest: str) -> bytes:
        data = (self.blob_dir / digest.removeprefix("sha256:")).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, f"blob {digest} is corrupt"
        return data

    def json_blob(self, digest: str) -> Any:
        return json.loads(self.blob(digest))

    def manifest(self, tag: str = "latest") -> dict[str, Any]:
        entry = self.entry(tag)
        assert entry["mediaType"] == OCI_MANIFEST
        manifest = self.json_blob(entry["digest"])
        assert entry["size"] == len(self.blob(entry["digest"]))
        return manifest

    def config(self, tag: str = "latest") -> dict[str, Any]:
        descriptor = self.manifest(tag)["config"]
        assert descriptor["mediaType"] == OCI_CONFIG
        return self.json_blob(descriptor["digest"])

    def blob_names(self) -> set[str]:
        """Committed blobs: temp files (dot-prefixed) are not part of the layout."""
        return {p.name for p in self.blob_dir.iterdir() if not p.name.startswith(".")}

    def temp_files(self) -> set[str]:
        return {p.name for p in self.blob_dir.iterdir() if p.name.startswith(".")}

    def model_layers(self, tag: str = "latest", base_layers: int = 0) -> list[dict[str, Any]]:
        return self.manifest(tag)["layers"][base_layers:]


@dataclass
class Snapshot:
    """What an aborted pack must leave untouched."""

    layout: Path
    index_bytes: bytes
    blobs: set[str]

    @classmethod
    def of(cls, layout: Path) -> Snapshot:
        return cls(layout, (layout / "index.json").read_bytes(), OciLayout(layout).blob_names())

    def assert_unchanged(self) -> None:
        assert (self.layout / "index.json").read_bytes() == self.index_bytes
        assert OciLayout(self.layout).blob_names() == self.blobs




def read_model_layer(tar_bytes: bytes) -> dict[str, bytes]:
    """Check every header rule of a model layer and return its files as ``{path under models/: bytes}``."""
    files: dict[str, bytes] = {}
    seen_dirs: set[tuple[str, ...]] = set()
    keys: list[tuple[str, ...]] = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as archive:
        for member in archive.getmembers():
            name = member.name
            parts = PurePosixPath(name).parts
            assert parts[0] == "models", f"{name!r} is not under models/"
            assert not name.startswith(("/", "./")) and "/./" not in name and ".." not in parts, name
            assert "/".join(parts) == name, f"{name!r} is not a normalised path"
            for i in range(1, len(parts)):
                assert parts[:i] in seen_dirs, f"{name!r} comes before (or without) its parent {'/'.join(parts[:i])}"
            assert (member.uid, member.gid, member.uname, member.gname, member.mtime) == (0, 0, "", "", 0), name
            assert member.pax_headers == {}, f"{name!r} has PAX records {member.pax_headers}"
            if member.isdir():
                assert member.mode == 0o755, f"{name!r} mode {member.mode:o}"
                seen_dirs.add(parts)
            else:
                assert member.type == tarfile.REGTYPE, f"{name!r} has type {member.type!r}"
                assert member.mode == 0o644, f"{name!r} mode {member.mode:o}"
                extracted = archive.extractfile(member)
                assert extracted is not None
                files["/".join(parts[1:])] = extracted.read()
            keys.append(parts)
    assert keys == sorted(keys), "members are not in path order"
    assert len(set(keys)) == len(keys), "duplicate members"
    return files


def layer_files(layout: OciLayout, layer: dict[str, Any], compression: str = "none") -> dict[str, bytes]:
    assert layer["mediaType"] == LAYER_TYPES[compression]
    return read_model_layer(decompress(layout.blob(layer["digest"]), compression))


# --- model directories -------------------------------------------------------------------------------------------


def image_files(layout: OciLayout, tag: str = "latest", base_layers: int = 0, compression: str = "none") -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for layer in layout.model_layers(tag, base_layers):
        for path, data in layer_files(layout, layer, compression).items():
            assert path not in files, f"{path} is in two layers"
            files[path] = data
    return files


def unpacked_files(rootfs: Path) -> dict[str, bytes]:
    models = rootfs / "models"
    out = {}
    for path in sorted(models.rglob("*")):
        assert not path.is_symlink(), f"{path} is a symlink in the image"
        if path.is_file():
            out[path.relative_to(models).as_posix()] = path.read_bytes()
    return out


# --- packing on the busybox base ---------------------------------------------------------------------------------


@dataclass
class Packed:
    source: Path
    expected: dict[str, bytes]
    layout: OciLayout
    digest: str
    rootfs: Path


@pytest.fixture(scope="module")
def busybox_pack(tmp_path_factory: pytest.TempPathFactory, busybox_ref: str) -> Packed:
    work = tmp_path_factory.mktemp("busybox-pack")
    source, expected = model(work)
    layout = work / "layout"
    with private_cache(work):
        digest = pack(source, layout, base=busybox_ref)
    rootfs = umoci_unpack(layout, "latest", work / "bundle")
    return Packed(source, expected, OciLayout(layout), digest, rootfs)


def test_pack_prints_the_digest_it_tagged(busybox_pack: Packed, busybox_ref: str) -> None:
    layout = busybox_pack.layout
    entry = layout.entry("latest")
    assert entry["digest"] == busybox_pack.digest
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest = layout.manifest()
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == OCI_MANIFEST
    annotations = manifest["annotations"]
    assert annotations[TITLE] == "tiny-model"
    assert annotations[BASE_NAME] == busybox_ref
    assert annotations[BASE_DIGEST] == busybox_ref.split("@", 1)[1]
    assert layout.temp_files() == set()


def test_unpacked_image_holds_every_file_byte_for_byte(busybox_pack: Packed) -> None:
    unpacked = unpacked_files(busybox_pack.rootfs)
    assert set(unpacked) == set(busybox_pack.expected)
    for path, data in busybox_pack.expected.items():
        assert unpacked[path] == data, path
    # The symlink became a regular file holding its target's bytes.
    alias = busybox_pack.rootfs / "models" / "alias.txt"
    assert alias.is_file() and not alias.is_symlink()
    assert alias.read_bytes() == (busybox_pack.source / "sub/dir/file.txt").read_bytes()
    # The base is still there underneath.
    assert (busybox_pack.rootfs / "bin" / "busybox").is_file()


def test_layer_tars_are_normalised(busybox_pack: Packed) -> None:
    layout = busybox_pack.layout
    assert image_files(layout, base_layers=BUSYBOX_LAYERS) == busybox_pack.expected


def test_models_are_visible_to_a_shell_in_the_image(busybox_pack: Packed) -> None:
    result = run_tool(rootfs_command(busybox_pack.rootfs, "ls -1 /models; cat /models/config.json"))
    top_level = {path.split("/")[0] for path in busybox_pack.expected}
    lines = result.stdout.splitlines()
    assert set(lines[: len(top_level)]) == top_level
    assert "\n".join(lines[len(top_level) :]).encode() == busybox_pack.expected["config.json"]


def test_config_keeps_the_base_runtime_settings(busybox_pack: Packed, busybox_layout: Path) -> None:
    layout = busybox_pack.layout
    config = layout.config()
    base_manifest = json.loads(read_blob(busybox_layout, layout_top_descriptor(busybox_layout)["digest"]))
    base_config = json.loads(read_blob(busybox_layout, base_manifest["config"]["digest"]))
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert "Entrypoint" not in config["config"]
    assert config["config"]["Cmd"] == base_config["config"]["Cmd"] == ["sh"]
    assert config["config"]["Env"] == base_config["config"]["Env"]
    layers = layout.manifest()["layers"]
    diff_ids = config["rootfs"]["diff_ids"]
    assert config["rootfs"]["type"] == "layers"
    assert len(diff_ids) == len(layers)
    assert diff_ids[:BUSYBOX_LAYERS] == base_config["rootfs"]["diff_ids"]
    assert layers[:BUSYBOX_LAYERS] == base_manifest["layers"]
    for layer, diff_id in zip(layers, diff_ids):
        assert layer["mediaType"] == LAYER_TYPES["none"]
        assert diff_id == layer["digest"]  # uncompressed: the diff_id is the blob digest
    history = [h for h in config["history"] if not h.get("empty_layer")]
    assert len(history) == len(layers)


def test_skopeo_reads_the_layout(busybox_pack: Packed) -> None:
    layout_ref = f"oci:{busybox_pack.layout.root}:latest"
    info = json.loads(run_tool(["skopeo", "--insecure-policy", "inspect", layout_ref]).stdout)
    assert info["Digest"] == busybox_pack.digest
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    manifest = busybox_pack.layout.manifest()
    assert info["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    raw = subprocess.run(
        ["skopeo", "--insecure-policy", "inspect", "--raw", layout_ref],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=True,
    ).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == busybox_pack.digest


def test_each_weight_gets_its_own_layer_and_small_files_share_one(busybox_pack: Packed) -> None:
    layout = busybox_pack.layout
    layers = layout.model_layers(base_layers=BUSYBOX_LAYERS)
    contents = [set(layer_files(layout, layer)) for layer in layers]
    weights = sorted(p for p in busybox_pack.expected if p.endswith(".safetensors"))
    small = {p for p in busybox_pack.expected if not p.endswith(".safetensors")}
    assert contents == [small, *({w} for w in weights)]
    group, *weight_layers = layers
    assert group["annotations"][TITLE]
    assert FILEPATH not in group["annotations"]
    for layer, weight in zip(weight_layers, weights):
        assert layer["annotations"][TITLE] == weight
        assert layer["annotations"][FILEPATH] == weight


def test_busybox_pack_is_reproducible(busybox_pack: Packed, busybox_ref: str, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert pack(busybox_pack.source, again, base=busybox_ref) == busybox_pack.digest
    assert OciLayout(again).blob_names() == busybox_pack.layout.blob_names()


@pytest.fixture(scope="module")
def entrypoint_ref(registry: Registry, busybox_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The test busybox with an Entrypoint, which a modelcar must not keep."""
    layout = tmp_path_factory.mktemp("entrypoint") / "layout"
    shutil.copytree(busybox_layout, layout)
    manifest = json.loads(read_blob(layout, layout_top_descriptor(layout)["digest"]))
    config = json.loads(read_blob(layout, manifest["config"]["digest"]))
    config["config"]["Entrypoint"] = ["/bin/sh", "-c"]

    def put(data: bytes, media_type: str) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    manifest["config"] = put(canonical_json(config), OCI_CONFIG)
    top = put(canonical_json(manifest), MEDIA_TYPE_MANIFEST)
    top["annotations"] = {REF_NAME: "latest"}
    (layout / "index.json").write_bytes(canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]}))
    push_layout_with_skopeo(layout, registry.host, "library/busybox-entrypoint", "latest")
    return pinned_reference(registry.host, "library/busybox-entrypoint", top["digest"])


def test_entrypoint_of_the_base_is_dropped(entrypoint_ref: str, tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    layout = OciLayout(tmp_path / "layout")
    pack(source, layout.root, base=entrypoint_ref)
    runtime = layout.config()["config"]
    assert "Entrypoint" not in runtime
    assert runtime["Cmd"] == ["sh"]


# --- reproducibility ---------------------------------------------------------------------------------------------


def test_same_model_gives_the_same_image(tmp_path: Path) -> None:
    source, expected = model(tmp_path)
    first, second = OciLayout(tmp_path / "one"), OciLayout(tmp_path / "two")
    digest = pack(source, first.root)
    assert pack(source, second.root) == digest
    assert first.blob_names() == second.blob_names()
    assert (first.root / "index.json").read_bytes() == (second.root / "index.json").read_bytes()
    assert image_files(first) == expected

    # Metadata that must not leak into the image: mtimes, modes, and where the directory lives.
    moved = tmp_path / "elsewhere" / "deeper" / source.name
    shutil.copytree(source, moved, symlinks=True)
    rng = random.Random(7)
    for i, path in enumerate(sorted(moved.rglob("*"))):
        if path.is_symlink():
            continue
        if path.is_file():
            os.chmod(path, 0o600 if i % 2 else 0o755)
        else:
            os.chmod(path, 0o700)
        os.utime(path, (rng.randrange(1, 2**31), rng.randrange(1, 2**31)))
    assert (moved / "config.json").stat().st_mtime != (source / "config.json").stat().st_mtime
    assert pack(moved, tmp_path / "three") == digest

    # Different bytes, different image.
    shard = moved / "model-00002-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    assert pack(moved, tmp_path / "four") != digest


def test_repacking_in_place_notices_an_edit_that_keeps_size_and_mtime(tmp_path: Path) -> None:
    """Packing into the same layout again may reuse remembered digests, but never for a file that changed."""
    source, expected = model(tmp_path)
    layout = OciLayout(tmp_path / "layout")
    digest = pack(source, layout.root)
    assert pack(source, layout.root) == digest  # unchanged files: same image, whether hashed again or not
    shard = source / "model-00001-of-00003.safetensors"
    before = shard.stat()
    data = bytearray(shard.read_bytes())
    data[0] ^= 0xFF
    with open(shard, "r+b") as f:  # same inode, same size ...
        f.write(bytes(data))
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))  # ... and the same mtime
    assert (shard.stat().st_size, shard.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    expected[shard.name] = bytes(data)
    changed = pack(source, layout.root)
    assert changed != digest
    assert image_files(layout) == expected
    assert pack(source, tmp_path / "fresh", "--no-cache") == changed


# --- compression -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_layers(compression: str, tmp_path: Path) -> None:
    source, expected = model(tmp_path)
    layout = OciLayout(tmp_path / "layout")
    digest = pack(source, layout.root, "--compression", compression)
    layers = layout.manifest()["layers"]
    diff_ids = layout.config()["rootfs"]["diff_ids"]
    assert len(diff_ids) == len(layers) > 1
    for layer, diff_id in zip(layers, diff_ids):
        assert layer["mediaType"] == LAYER_TYPES[compression]
        blob = layout.blob(layer["digest"])
        assert layer["size"] == len(blob)
        tar_bytes = decompress(blob, compression)
        assert "sha256:" + hashlib.sha256(tar_bytes).hexdigest() == diff_id
        assert diff_id != layer["digest"]
    assert image_files(layout, compression=compression) == expected

    again = OciLayout(tmp_path / "again")
    assert pack(source, again.root, "--compression", compression) == digest
    assert again.blob_names() == layout.blob_names()
    # Compression changes the blobs, so it changes the image.
    assert pack(source, tmp_path / "plain") != digest


def test_umoci_unpacks_a_gzip_image(tmp_path: Path) -> None:
    source, expected = model(tmp_path)
    layout = tmp_path / "layout"
    pack(source, layout, "--compression", "gzip")
    assert unpacked_files(umoci_unpack(layout, "latest", tmp_path / "bundle")) == expected


# --- packing into an existing layout -----------------------------------------------------------------------------


def test_tags_accumulate_and_replace(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "layout")
    source_a, files_a = model(tmp_path, "model-a", seed=1)
    source_b, files_b = model(tmp_path, "model-b", seed=2)
    digest_a = pack(source_a, layout.root, "--tag", "a")
    digest_b = pack(source_b, layout.root, "--tag", "b")
    assert digest_a != digest_b
    assert sorted(layout.tags()) == ["a", "b"]
    assert layout.entry("a")["digest"] == digest_a
    entry_b = layout.entry("b")
    assert entry_b["digest"] == digest_b
    assert image_files(layout, "a") == files_a
    assert image_files(layout, "b") == files_b

    # The same model again, under its own tag and under a new one: every blob is reused.
    blobs = layout.blob_names()
    assert pack(source_a, layout.root, "--tag", "a") == digest_a
    assert pack(source_a, layout.root, "--tag", "a-again") == digest_a
    assert layout.blob_names() == blobs
    assert sorted(layout.tags()) == ["a", "a-again", "b"]

    # New content under tag a replaces it; b is untouched.
    (source_a / "config.json").write_bytes(b'{"changed": true}')
    files_a["config.json"] = b'{"changed": true}'
    new_a = pack(source_a, layout.root, "--tag", "a")
    assert new_a != digest_a
    assert sorted(layout.tags()) == ["a", "a-again", "b"]
    assert layout.entry("a")["digest"] == new_a
    assert layout.entry("a-again")["digest"] == digest_a
    assert layout.entry("b") == entry_b
    assert image_files(layout, "a") == files_a
    assert image_files(layout, "b") == files_b
    # Only the small-files layer, config and manifest are new.
    assert len(layout.blob_names() - blobs) == 3
    for tag in ("a", "b"):
        rootfs = umoci_unpack(layout.root, tag, tmp_path / f"bundle-{tag}")
        assert unpacked_files(rootfs) == (files_a if tag == "a" else files_b)


def _log_sentinel(registry: Registry) -> str:
    """Make a request that marks the registry log, and wait (bounded) until it is there."""
    marker = f"ocimodel-sentinel-{uuid.uuid4().hex}"
    assert registry.get(f"/v2/?{marker}").status_code == 200
    deadline = time.monotonic() + 10
    while marker not in registry.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"sentinel request never reached the log:\n{registry.log_tail()}"
        time.sleep(0.01)
    return marker


def _requests_between(registry: Registry, first: str, second: str) -> list[str]:
    text = registry.log_path.read_text(errors="replace")
    between = text[text.index(first) : text.index(second)]
    # Access-log lines look like: 127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 ...
    return [line for line in between.splitlines() if re.search(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) /', line)
            and first not in line and second not in line]


def test_second_pack_on_the_same_base_makes_no_registry_request(
    registry: Registry, busybox_ref: str, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    source_a, _ = model(tmp_path, "model-a", seed=1)
    source_b, files_b = model(tmp_path, "model-b", seed=2)
    pack(source_a, layout, "--tag", "a", base=busybox_ref)
    before = _log_sentinel(registry)
    # A sanity check that the log shows this process's requests: the first pack did ask.
    text = registry.log_path.read_text(errors="replace")
    assert "/v2/library/busybox/" in text[: text.index(before)]
    pack(source_b, layout, "--tag", "b", base=busybox_ref)
    after = _log_sentinel(registry)
    assert _requests_between(registry, before, after) == []
    rootfs = umoci_unpack(layout, "b", tmp_path / "bundle")
    assert unpacked_files(rootfs) == files_b
    assert (rootfs / "bin" / "busybox").is_file()


# --- filters -----------------------------------------------------------------------------------------------------


def _with_git(source: Path) -> None:
    (source / ".git" / "objects" / "ab").mkdir(parents=True)
    (source / ".git" / "config").write_text("[core]\n")
    (source / ".git" / "objects" / "ab" / "cdef.json").write_text("{}")
    (source / ".git" / "HEAD.safetensors").write_bytes(b"not a weight")


@pytest.mark.parametrize(
    ("options", "wanted"),
    [
        ((), None),
        (("--include", "*"), None),
        (("--include", ".git/*", "--include", "*.json"), {"config.json", "tokenizer.json"}),
        (("--include", "*.json"), {"config.json", "tokenizer.json"}),
        (("--exclude", "*.safetensors"), "small"),
        (("--include", "*.txt", "--exclude", "sub/"), {"alias.txt", LONG_NAME}),
        (("--include", "sub/", "--exclude", "*empty*"), {"sub/dir/file.txt", "sub/block.txt"}),
    ],
    ids=["default", "include-all", "include-git", "include-json", "exclude-weights", "txt-not-sub", "sub-not-empty"],
)
def test_filters_select_files_and_never_git(options: tuple[str, ...], wanted: Any, tmp_path: Path) -> None:
    source, expected = model(tmp_path)
    _with_git(source)
    if wanted is None:
        wanted = set(expected)
    elif wanted == "small":
        wanted = {p for p in expected if not p.endswith(".safetensors")}
    layout = OciLayout(tmp_path / "layout")
    pack(source, layout.root, *options)
    assert image_files(layout) == {p: expected[p] for p in wanted}


def test_filters_that_match_nothing_fail_cleanly(tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    layout = tmp_path / "layout"
    assert_clean_error(run_cli("pack", source, layout, "--base", "scratch", "--include", "*.gguf"), "no files")
    assert not layout.exists()


def test_linked_directory_inside_the_source_is_packed_as_a_copy(tmp_path: Path) -> None:
    source, expected = model(tmp_path)
    (source / "linked").symlink_to("sub/dir", target_is_directory=True)
    layout = OciLayout(tmp_path / "layout")
    pack(source, layout.root)
    assert image_files(layout) == {**expected, "linked/file.txt": expected["sub/dir/file.txt"]}


def test_excluded_bad_links_do_not_matter(tmp_path: Path) -> None:
    source, expected = model(tmp_path)
    (source / "escape.txt").symlink_to("/etc/hostname")
    (source / "broken.txt").symlink_to("nowhere")
    layout = OciLayout(tmp_path / "layout")
    pack(source, layout.root, "--exclude", "escape.txt", "--exclude", "broken.txt")
    assert image_files(layout) == expected


# --- platforms ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["arm64", "amd64"])
def test_platform_picks_the_manifest_from_an_index(
    arch: str, busybox_multi_ref: str, busybox_multi_layout: Path, tmp_path: Path
) -> None:
    source, expected = model(tmp_path)
    layout = OciLayout(tmp_path / "layout")
    pack(source, layout.root, "--platform", f"linux/{arch}", base=busybox_multi_ref)
    assert layout.entry("latest")["platform"] == {"architecture": arch, "os": "linux"}
    config = layout.config()
    assert (config["os"], config["architecture"]) == ("linux", arch)
    base_manifest = json.loads(read_blob(busybox_multi_layout, manifest_digests_by_platform(busybox_multi_layout)[f"linux/{arch}"]))
    base_config = json.loads(read_blob(busybox_multi_layout, base_manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"][:BUSYBOX_LAYERS] == base_config["rootfs"]["diff_ids"]
    assert image_files(layout, base_layers=BUSYBOX_LAYERS) == expected


def test_unknown_platform_fails_cleanly(busybox_multi_ref: str, tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    result = run_cli("pack", source, tmp_path / "layout", "--base", busybox_multi_ref, "--platform", "linux/s390x")
    assert_clean_error(result, "s390x")


# --- errors ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("template")
    source, _ = model(work)
    layout = work / "layout"
    with private_cache(work):
        pack(source, layout)
    return layout


@pytest.fixture
def existing(template_layout: Path, tmp_path: Path) -> Snapshot:
    """A layout already holding ``latest``, which no failed pack may change."""
    layout = tmp_path / "existing-layout"
    shutil.copytree(template_layout, layout)
    return Snapshot.of(layout)


def test_missing_source(existing: Snapshot, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    assert_clean_error(run_cli("pack", missing, existing.layout, "--base", "scratch"), str(missing))
    existing.assert_unchanged()


def test_source_is_a_file(existing: Snapshot, tmp_path: Path) -> None:
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"weights")
    assert_clean_error(run_cli("pack", source, existing.layout, "--base", "scratch"), str(source))
    existing.assert_unchanged()


def test_layout_is_a_regular_file(tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    layout = tmp_path / "layout"
    layout.write_bytes(b"not a directory")
    assert_clean_error(run_cli("pack", source, layout, "--base", "scratch"), str(layout))
    assert layout.read_bytes() == b"not a directory"


def test_base_by_tag_only_asks_for_a_digest(registry: Registry, existing: Snapshot, tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    result = run_cli("pack", source, existing.layout, "--base", f"{registry.host}/library/busybox:latest")
    assert_clean_error(result, "digest")
    existing.assert_unchanged()


def test_base_digest_unknown_to_the_registry(registry: Registry, existing: Snapshot, tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    result = run_cli("pack", source, existing.layout, "--base", f"{registry.host}/library/busybox@{UNKNOWN_DIGEST}")
    assert_clean_error(result)
    existing.assert_unchanged()


def test_unreachable_registry(dead_port: int, existing: Snapshot, tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    started = time.monotonic()
    result = run_cli("pack", source, existing.layout, "--base", f"127.0.0.1:{dead_port}/library/busybox@{UNKNOWN_DIGEST}")
    assert_clean_error(result, f"127.0.0.1:{dead_port}")
    assert time.monotonic() - started < 60
    existing.assert_unchanged()


def test_symlink_out_of_the_source(existing: Snapshot, tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (source / "sub" / "escape.txt").symlink_to(outside)
    assert_clean_error(run_cli("pack", source, existing.layout, "--base", "scratch"), "escape.txt")
    existing.assert_unchanged()


def test_relative_symlink_out_of_the_source(existing: Snapshot, tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    (source.parent / "sibling.txt").write_text("not part of the model")
    (source / "sub" / "escape.txt").symlink_to("../../sibling.txt")
    assert_clean_error(run_cli("pack", source, existing.layout, "--base", "scratch"), "escape.txt")
    existing.assert_unchanged()


def test_broken_symlink(existing: Snapshot, tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    (source / "sub" / "dangling.json").symlink_to("missing.json")
    assert_clean_error(run_cli("pack", source, existing.layout, "--base", "scratch"), "dangling.json")
    existing.assert_unchanged()


def test_symlink_loop(existing: Snapshot, tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    (source / "sub" / "self.json").symlink_to("self.json")
    assert_clean_error(run_cli("pack", source, existing.layout, "--base", "scratch"), "self.json")
    existing.assert_unchanged()


def test_directory_link_loop(existing: Snapshot, tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    (source / "sub" / "dir" / "up").symlink_to("../..")
    assert_clean_error(run_cli("pack", source, existing.layout, "--base", "scratch"), "up")
    existing.assert_unchanged()


def test_file_name_that_is_not_utf8(existing: Snapshot, tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    os.close(os.open(bytes(source / "sub") + b"/latin1-\xe9.txt", os.O_CREAT | os.O_WRONLY, 0o644))
    assert_clean_error(run_cli("pack", source, existing.layout, "--base", "scratch"), "UTF-8")
    existing.assert_unchanged()


def test_fifo_in_the_source(existing: Snapshot, tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    os.mkfifo(source / "sub" / "pipe")
    assert_clean_error(run_cli("pack", source, existing.layout, "--base", "scratch"), "pipe")
    existing.assert_unchanged()


@pytest.mark.parametrize("name", [".wh.config.json", ".wh..wh..opq", "sub/.wh.file.txt"])
def test_whiteout_names_are_refused(existing: Snapshot, tmp_path: Path, name: str) -> None:
    """Unpacking ``.wh.config.json`` would delete ``config.json`` from the image (and ``.wh..wh..opq`` its folder)."""
    source, _ = model(tmp_path)
    (source / name).write_text("{}")
    assert_clean_error(run_cli("pack", source, existing.layout, "--base", "scratch"), name, ".wh.")
    existing.assert_unchanged()


@pytest.mark.parametrize("command", ["pack", "build"])
@pytest.mark.parametrize("where", ["source", "parent"])
def test_layout_that_is_the_source_or_holds_it_is_refused(tmp_path: Path, command: str, where: str) -> None:
    source, _ = model(tmp_path)
    before = sorted(p.relative_to(source.parent) for p in source.parent.rglob("*"))
    layout = source if where == "source" else source.parent
    if command == "pack":
        result = run_cli("pack", source, layout, "--base", "scratch")
    else:  # refused before any registry is asked: port 9 (discard) is never contacted
        result = run_cli("build", source, "127.0.0.1:9/models/m:v1", "--layout", layout, "--base", "scratch")
    assert_clean_error(result, "LAYOUT: " if command == "pack" else "--layout: ", str(layout), "model directory", code=2)
    assert sorted(p.relative_to(source.parent) for p in source.parent.rglob("*")) == before


@pytest.mark.parametrize("command", ["pack", "build"])
@pytest.mark.parametrize("platforms", ["", ",", " ", " , "], ids=["empty", "comma", "space", "spaced-comma"])
def test_an_empty_platform_list_is_refused(tmp_path: Path, command: str, platforms: str) -> None:
    source, _ = model(tmp_path)
    target = tmp_path / "layout" if command == "pack" else "127.0.0.1:9/models/m:v1"
    result = run_cli(command, source, target, "--base", "scratch", "--platform", platforms)
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr and "--platform" in result.stderr, explain(result)
    assert result.stdout == "" and not (tmp_path / "layout").exists()


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2


def _drop_file_read_override() -> None:
    """preexec_fn: make root subject to file permissions, as any other user is.

    The brief's first idea, setuid(65534), cannot work here: the interpreter lives under /root (mode 0700), which
    uid 65534 cannot even traverse. Dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set
    (root's inheritable set is empty) means the exec'd interpreter runs as uid 0 without them, so a root-owned
    mode-000 file is unreadable to it, to open() and to access() alike.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(97)


def test_unreadable_file(existing: Snapshot, tmp_path: Path) -> None:
    source, _ = model(tmp_path)
    secret = source / "sub" / "locked.json"
    secret.write_text("{}")
    secret.chmod(0)
    # Prove the privilege drop works, or this test would pass for the wrong reason.
    probe = subprocess.run(
        [sys.executable, "-c", f"open({str(secret)!r}).read()"],
        preexec_fn=_drop_file_read_override, capture_output=True, text=True, timeout=60, check=False,
    )
    assert probe.returncode == 1 and "PermissionError" in probe.stderr, probe.stderr
    result = run_cli("pack", source, existing.layout, "--base", "scratch", preexec_fn=_drop_file_read_override)
    assert_clean_error(result, "locked.json")
    existing.assert_unchanged()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli("--debug", "pack", tmp_path / "no-such-model", tmp_path / "layout", "--base", "scratch")
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "SourceError" in result.stderr
    assert "does not exist" in result.stderr or "no-such-model" in result.stderr


# --- interruption ------------------------------------------------------------------------------------------------


def _big_model(root: Path) -> None:
    root.mkdir(parents=True)
    for i in range(1, 4):
        block = os.urandom(1 << 20)
        (root / f"model-0000{i}-of-00003.safetensors").write_bytes(block * 64)
    (root / "config.json").write_text('{"big": true}')


def test_killed_pack_leaves_the_layout_valid(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "layout")
    old_source, old_files = model(tmp_path)
    old_digest = pack(old_source, layout.root)
    index_before = (layout.root / "index.json").read_bytes()

    big, process = _start_big_pack(tmp_path, layout.root)
    try:
        _stop_while_writing(process, layout)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    stale = layout.temp_files()
    assert stale and all(name.startswith(".upload-") and name.endswith(".tmp") for name in stale)

    assert (layout.root / "index.json").read_bytes() == index_before
    assert layout.entry("latest")["digest"] == old_digest
    assert image_files(layout) == old_files
    assert unpacked_files(umoci_unpack(layout.root, "latest", tmp_path / "old-bundle")) == old_files

    digest = pack(big, layout.root, "--jobs", "1")
    clean = OciLayout(tmp_path / "clean")
    assert pack(big, clean.root, "--jobs", "1", "--no-cache") == digest
    assert layout.entry("latest")["digest"] == digest
    # The rerun removed what the killed run left (no process held it any more), and every committed blob is intact.
    assert layout.temp_files() == set()
    assert clean.blob_names() <= layout.blob_names()
    for name in layout.blob_names():
        layout.blob("sha256:" + name)
    info = json.loads(run_tool(["skopeo", "--insecure-policy", "inspect", f"oci:{layout.root}:latest"]).stdout)
    assert info["Digest"] == digest
    run_tool(["umoci", "gc", "--layout", str(layout.root)])  # refuses a layout with a stray file among the blobs
    assert layout.entry("latest")["digest"] == digest


def _start_big_pack(tmp_path: Path, layout: Path) -> tuple[Path, subprocess.Popen[bytes]]:
    """A pack of 192 MiB in 64 MiB layers, one at a time: long enough to be interrupted in the middle."""
    big = tmp_path / "big" / "big-model"
    _big_model(big)
    process = subprocess.Popen(
        cli_command("pack", big, layout, "--base", "scratch", "--jobs", "1"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(),
    )
    return big, process


def _all_threads_stopped(pid: int) -> bool:
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            # "tid (comm) STATE ...": comm may hold spaces and parentheses, the state follows the last one.
            states.append(task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return all(state in "tT" for state in states)


def _wait_for_temp_file(process: subprocess.Popen[bytes], layout: OciLayout) -> None:
    deadline = time.monotonic() + 60
    while not layout.temp_files():
        assert process.poll() is None, "pack ended before it was interrupted"
        assert time.monotonic() < deadline, "no .upload-*.tmp appeared in the layout within 60 s"
        time.sleep(0.002)


def _stop_while_writing(process: subprocess.Popen[bytes], layout: OciLayout) -> None:
    """SIGSTOP ``process`` at a moment when it has a blob temp file: a SIGKILL sent next lands mid-write for sure."""
    while True:
        _wait_for_temp_file(process, layout)
        process.send_signal(signal.SIGSTOP)
        while not _all_threads_stopped(process.pid):
            time.sleep(0.001)
        if layout.temp_files():
            return
        process.send_signal(signal.SIGCONT)  # the temp file was renamed just before the stop: try the next one


def test_sigterm_stops_pack_cleanly(tmp_path: Path) -> None:
    """CI cancelling a job sends SIGTERM: the pack removes its temp files, keeps the layout as it was, exits 143."""
    layout = OciLayout(tmp_path / "layout")
    old_source, old_files = model(tmp_path)
    old_digest = pack(old_source, layout.root)
    index_before = (layout.root / "index.json").read_bytes()
    blobs_before = layout.blob_names()

    _, process = _start_big_pack(tmp_path, layout.root)
    try:
        # Not stopped first: a signal sent to a stopped process may be taken by any thread when it resumes, while
        # one sent to a running process goes to the main thread, as it does when CI cancels a job. Most of the
        # 192 MiB of layers is still ahead, so the signal lands mid-pack.
        _wait_for_temp_file(process, layout)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.communicate(timeout=60)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout.decode(), stderr.decode())
    assert process.returncode == 143, explain(result)
    assert "Traceback" not in result.stderr and result.stdout == "", explain(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ocimodel: ")]
    assert len(errors) == 1 and errors[0].startswith("ocimodel: error: terminated"), explain(result)
    assert layout.temp_files() == set()
    assert (layout.root / "index.json").read_bytes() == index_before
    assert layout.entry("latest")["digest"] == old_digest
    # Whole layers finished before the signal may stay as blobs (a rerun reuses them); nothing else was added.
    for name in layout.blob_names() - blobs_before:
        layout.blob("sha256:" + name)
    run_tool(["umoci", "gc", "--layout", str(layout.root)])
    assert image_files(layout) == old_files
