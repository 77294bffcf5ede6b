"""``verify``'s checks on small images built in tmp: a model packed on ``scratch``, under hand-made base layers.

Every image is a real OCI layout: the model part comes from ``pack`` (so its names, modes and per-layer annotations
are exactly what ocimodel writes), and the base and any extra layers are tar files written here with the quirks
each check is about (busybox applets as symlinks and hard links, whiteouts, ``./models`` names, absolute links,
private modes, zstd). Limits that would need gigabytes or hundreds of blobs are judged from descriptors alone.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import tarfile
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
import zstandard

from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import (
    ANNOTATION_FILEPATH,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Platform,
)
from ocimodel.layout.image import history_line, parse_history_line
from ocimodel.layout.store import Layout
from ocimodel.layout.pack import PackOptions, pack
from ocimodel.progress import PlainReporter
from ocimodel.source.local import LocalSource
from ocimodel.layout.source import LayoutSource
from ocimodel.verification import (
    QUICK,
    Budget,
    Entry,
    Image,
    Kind,
    LayerContents,
    ReadPolicy,
    Report,
    Result,
    gather,
    judge,
    layout_warnings,
    verify,
)
from ocimodel.verification import warnings as warnings_module
from ocimodel.verification.overlay import lookup, overlay
from ocimodel.verification.tarread import read_entries

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")
MIB = 1 << 20

# --- building images ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class M:
    """A tar member to write: kind is file, dir, sym (symlink), hard (hard link), chr (device) or fifo."""

    name: str
    kind: str = "file"
    mode: int | None = None
    data: bytes = b""
    link: str = ""


def tar(*members: M) -> bytes:
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
             "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = types[m.kind]
            info.mode = m.mode if m.mode is not None else {"dir": 0o755, "file": 0o644}.get(m.kind, 0o777)
            info.linkname = m.link
            info.size = len(m.data)
            archive.addfile(info, io.BytesIO(m.data) if m.kind == "file" else None)
    return out.getvalue()


#: busybox's usual install: one binary, applets as symlinks (relative and absolute) and a hard link.
BUSYBOX = (
    M("bin", "dir"),
    M("bin/busybox", mode=0o755, data=b"\x7fELF not really busybox"),
    M("bin/sh", "sym", link="busybox"),
    M("bin/ln", "hard", link="bin/busybox"),
    M("bin/sleep", "sym", link="/bin/busybox"),
    M("bin/ls", "sym", link="./busybox"),
)
#: The tag ``packed`` leaves on the image ``pack`` wrote, which ``rebase`` rewrites into ``latest``.
PACKED = "packed"
BUSYBOX_ENV = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]}


def plain(data: bytes) -> tuple[str, bytes]:
    return OCI_LAYER, data


def make_model(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden_size": 8}')
    (root / "sub" / "tokenizer.json").write_text('{"vocab": []}')
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    return root


def packed(tmp_path: Path, compression: str = "none", name: str = "layout") -> Path:
    layout = tmp_path / name
    pack(
        LocalSource.from_path(make_model(tmp_path / f"{name}-model")),
        layout,
        PackOptions(base="scratch", compression=compression),
        PlainReporter(io.StringIO()),
    )
    store = Layout.open(layout)
    store.set_tag(PACKED, store.tags()["latest"])
    return layout


def rebase(
    layout_dir: Path,
    base: Sequence[tuple[str, bytes]] = (plain(tar(*BUSYBOX)),),
    extra: Sequence[tuple[str, bytes]] = (),
    runtime: dict[str, Any] | None = None,
    platform: Platform | None = None,
) -> Descriptor:
    """Tag ``latest`` the packed image with ``base`` layers under the model layers, ``extra`` ones over them, and
    the config's ``config`` section replaced by ``runtime`` (a busybox-like one by default)."""
    layout = Layout.open(layout_dir)
    top = layout.tags()[PACKED]
    manifest = json.loads(layout.read_blob(top.digest))
    config = json.loads(layout.read_blob(manifest["config"]["digest"]))
    below = [layout.put_bytes(t, data) for t, data in base]
    above = [layout.put_bytes(t, data) for t, data in extra]
    config["config"] = dict(BUSYBOX_ENV if runtime is None else runtime)
    config["rootfs"]["diff_ids"] = [d.digest for d in below] + config["rootfs"]["diff_ids"] + [d.digest for d in above]
    config["history"] = (
        [{"created_by": "base"} for _ in below] + config["history"] + [{"created_by": "extra"} for _ in above]
    )
    if platform is not None:
        config.update(platform.to_json())
    manifest["config"] = layout.put_json(OCI_CONFIG, config).to_json()
    manifest["layers"] = [d.to_json() for d in below] + manifest["layers"] + [d.to_json() for d in above]
    new = layout.put_json(OCI_MANIFEST, manifest)
    layout.set_tag("latest", new)
    return new


def index_of(layout_dir: Path, entries: Sequence[tuple[Descriptor, Platform]]) -> None:
    """Point ``latest`` at an index of the given manifests."""
    layout = Layout.open(layout_dir)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{**d.to_json(), "platform": p.to_json()} for d, p in entries],
    }
    layout.set_tag("latest", layout.put_json(OCI_INDEX, index))


def check(layout_dir: Path, platform: Platform = AMD64, policy: ReadPolicy = ReadPolicy()) -> Report:
    return verify(LayoutSource(Layout.open(layout_dir)), platform, policy=policy)


def results(report: Report) -> dict[str, Result]:
    return {c.id: c.result for c in report.checks}


def detail(report: Report, check_id: str) -> str:
    return next(c.detail for c in report.checks if c.id == check_id)


# --- the good image ----------------------------------------------------------------------------------------------


def test_a_model_on_a_busybox_like_base_passes_every_mode(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    digest = rebase(layout).digest
    report = check(layout)
    assert set(results(report).values()) == {Result.PASS}, report.table()
    assert report.ok
    assert report.digest == digest
    assert report.mode_results() == {"modelcar": Result.PASS, "native": Result.PASS, "fetch": Result.PASS}
    assert detail(report, "modelcar.models") == "/models holds 3 file(s)"
    # Every check is in the table and in the JSON, and the JSON says how each layer was read.
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["ok"] is True and doc["digest"] == digest and doc["platform"] == "linux/amd64"
    assert [c["id"] for c in doc["checks"]] == [c.id for c in report.checks]
    assert [layer["read"] for layer in doc["layers"]] == ["read", "read", "read"]
    assert all(c.id in report.table() for c in report.checks)


def test_scratch_has_no_shell_for_the_modelcar_but_serves_native_and_fetch(tmp_path: Path) -> None:
    report = check(packed(tmp_path))
    assert results(report)["modelcar.tools"] is Result.FAIL
    assert "sh, ln, sleep, ls not on PATH" in detail(report, "modelcar.tools")
    assert report.mode_results() == {"modelcar": Result.FAIL, "native": Result.PASS, "fetch": Result.PASS}


def test_only_the_checks_of_the_chosen_modes_run(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    report = verify(LayoutSource(Layout.open(layout)), AMD64, modes=["native"])
    assert report.modes == ("native",)
    assert {c.id for c in report.checks} == {
        "native.models", "limits.layers", "limits.layer-size", "limits.manifest-size", "limits.zstd", "node.pull",
        "image.checkable", "files.readable", "files.special",
    }
    assert report.ok  # the missing shell only matters to the modelcar


# --- modelcar ----------------------------------------------------------------------------------------------------


def test_tools_are_found_through_a_merged_usr_symlink_and_the_configured_path(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    merged_usr = tar(
        M("bin", "sym", link="usr/bin"),
        M("usr", "dir"),
        M("usr/bin", "dir"),
        M("usr/bin/busybox", mode=0o755, data=b"bb"),
        *(M(f"usr/bin/{t}", "hard", link="usr/bin/busybox") for t in ("sh", "ln", "sleep")),
        M("usr/bin/ls", "sym", link="/usr/bin/busybox"),
    )
    rebase(layout, [plain(merged_usr)], runtime={"Env": ["PATH=/bin"]})
    assert results(check(layout))["modelcar.tools"] is Result.PASS


def test_a_missing_applet_and_a_path_without_it(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout, [plain(tar(*(m for m in BUSYBOX if m.name != "bin/sleep")))])
    report = check(layout)
    assert results(report)["modelcar.tools"] is Result.FAIL
    assert detail(report, "modelcar.tools").startswith("sleep not on PATH")
    # The applets exist, but PATH does not lead to them.
    rebase(layout, runtime={"Env": ["PATH=/usr/bin"]})
    assert detail(check(layout), "modelcar.tools").startswith("sh, ln, sleep, ls not on PATH /usr/bin")


def test_a_dangling_applet_symlink_is_not_a_tool(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout, [plain(tar(*BUSYBOX[2:]))])  # links to a busybox that is not there
    assert results(check(layout))["modelcar.tools"] is Result.FAIL


def test_tools_only_root_can_run(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    private = [M("bin/busybox", mode=0o750, data=b"bb") if m.name == "bin/busybox" else m for m in BUSYBOX]
    rebase(layout, [plain(tar(*private))])
    report = check(layout)
    assert results(report)["modelcar.tools"] is Result.FAIL
    assert "not executable by every uid" in detail(report, "modelcar.tools") and "0750" in detail(report, "modelcar.tools")


def test_an_entrypoint_fails_the_modelcar(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout, runtime={**BUSYBOX_ENV, "Entrypoint": ["/bin/sh", "-c"]})
    report = check(layout)
    assert results(report)["modelcar.entrypoint"] is Result.FAIL
    assert '["/bin/sh", "-c"]' in detail(report, "modelcar.entrypoint")
    assert report.mode_results()["native"] is Result.PASS


def test_an_image_for_another_architecture(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout, platform=ARM64)
    report = check(layout, AMD64)
    assert results(report)["modelcar.platform"] is Result.FAIL
    assert "image is for linux/arm64, not linux/amd64" in detail(report, "modelcar.platform")
    assert results(check(layout, ARM64))["modelcar.platform"] is Result.PASS


def test_an_index_is_checked_for_the_nodes_platform(tmp_path: Path) -> None:
    amd = packed(tmp_path, name="amd")
    amd_manifest = rebase(amd)
    arm_manifest = rebase(amd, base=[plain(tar(M("etc", "dir")))], platform=ARM64)  # same layout, no shell
    index_of(amd, [(amd_manifest, AMD64), (arm_manifest, ARM64)])
    on_amd, on_arm = check(amd, AMD64), check(amd, ARM64)
    assert on_amd.ok, on_amd.table()
    assert "index has linux/amd64, linux/arm64" in detail(on_amd, "modelcar.platform")
    assert results(on_arm)["modelcar.tools"] is Result.FAIL
    assert on_amd.digest == on_arm.digest == Layout.open(amd).tags()["latest"].digest  # the index's digest

    missing = check(amd, Platform("linux", "s390x"))
    assert [(c.id, c.result) for c in missing.checks] == [
        ("image.platform", Result.FAIL), ("limits.manifest-size", Result.PASS)
    ]
    assert "(it has: linux/amd64, linux/arm64)" in detail(missing, "image.platform")


# --- /models -----------------------------------------------------------------------------------------------------


def test_no_models_directory(tmp_path: Path) -> None:
    layout = tmp_path / "empty"
    Layout.create(layout)
    store = Layout.open(layout)
    layer = store.put_bytes(OCI_LAYER, tar(*BUSYBOX))
    config = store.put_json(OCI_CONFIG, {**AMD64.to_json(), "config": BUSYBOX_ENV, "rootfs": {}, "history": []})
    store.set_tag("latest", store.put_json(OCI_MANIFEST, {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(), "layers": [layer.to_json()],
    }))
    report = check(layout)
    got = results(report)
    assert got["modelcar.models"] is got["native.models"] is got["fetch.names"] is Result.FAIL
    assert got["files.readable"] is Result.SKIP
    assert "extract nothing" in detail(report, "fetch.names")


def test_whiteouts_delete_from_lower_layers_only(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    # Delete sleep and everything the model layers put in /models; the same layer's own entries survive.
    wipe = tar(M("bin/.wh.sleep"), M("models/.wh..wh..opq"), M("models/README", data=b"replaced"))
    rebase(layout, extra=[plain(wipe)])
    report = check(layout)
    assert results(report)["modelcar.tools"] is Result.FAIL and detail(report, "modelcar.tools").startswith("sleep")
    assert detail(report, "modelcar.models") == "/models holds 1 file(s)"
    # An opaque /models with nothing new in it: the runtime's /models is empty.
    rebase(layout, extra=[plain(tar(M("models/.wh..wh..opq")))])
    report = check(layout)
    assert results(report)["modelcar.models"] is Result.FAIL
    assert results(report)["native.models"] is Result.WARN


def test_a_file_replacing_the_models_directory(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout, extra=[plain(tar(M("models", data=b"not a directory")))])
    got = results(check(layout))
    assert got["modelcar.models"] is got["native.models"] is Result.FAIL


# --- fetch -------------------------------------------------------------------------------------------------------


def test_names_with_a_dot_slash_or_slash_prefix_fail_fetch_only(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout, extra=[plain(tar(M("./models/extra.bin", data=b"x"), M("/models/other.bin", data=b"y")))])
    report = check(layout)
    assert results(report)["fetch.names"] is Result.FAIL
    assert "./models/extra.bin, /models/other.bin" in detail(report, "fetch.names")
    assert report.mode_results() == {"modelcar": Result.PASS, "native": Result.PASS, "fetch": Result.FAIL}


def test_names_that_climb_out_of_models(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout, extra=[plain(tar(M("models/../etc/evil", data=b"x")))])
    report = check(layout)
    assert results(report)["fetch.names"] is Result.FAIL and "leave models/" in detail(report, "fetch.names")


@pytest.mark.parametrize(
    ("link", "verdict"),
    [
        (M("models/weights", "sym", link="/data/weights"), Result.FAIL),
        (M("models/sh", "sym", link="../bin/sh"), Result.FAIL),
        (M("models/deep/up", "sym", link="../../models/config.json"), Result.PASS),
        (M("models/alias.json", "sym", link="config.json"), Result.PASS),
        (M("models/hard.json", "hard", link="models/config.json"), Result.PASS),
        (M("models/passwd", "hard", link="etc/passwd"), Result.FAIL),
    ],
)
def test_links_must_stay_inside_models(tmp_path: Path, link: M, verdict: Result) -> None:
    layout = packed(tmp_path)
    rebase(layout, [plain(tar(*BUSYBOX, M("etc", "dir"), M("etc/passwd", data=b"root")))], extra=[plain(tar(link))])
    report = check(layout)
    assert results(report)["fetch.links"] is verdict, report.table()
    if verdict is Result.FAIL:
        assert link.name in detail(report, "fetch.links")


def test_zstd_layers_fail_fetch_and_warn_for_the_other_modes(tmp_path: Path) -> None:
    layout = packed(tmp_path, compression="zstd")
    rebase(layout)
    report = check(layout)
    got = results(report)
    assert got["fetch.compression"] is Result.FAIL and "2 zstd layer(s)" in detail(report, "fetch.compression")
    assert got["limits.zstd"] is Result.WARN and "Bottlerocket" in detail(report, "limits.zstd")
    assert got["fetch.names"] is got["modelcar.models"] is Result.PASS  # zstd layers were decompressed and read
    assert report.mode_results() == {"modelcar": Result.WARN, "native": Result.WARN, "fetch": Result.FAIL}


def test_gzip_layers_are_fine_for_fetch(tmp_path: Path) -> None:
    layout = packed(tmp_path, compression="gzip")
    rebase(layout, [(OCI_LAYER_GZIP, gzip.compress(tar(*BUSYBOX)))])
    report = check(layout)
    assert set(results(report).values()) == {Result.PASS}, report.table()


# --- permissions -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "private",
    [M("models/secret.bin", mode=0o600, data=b"s"), M("models/private", "dir", mode=0o700), M("models", "dir", mode=0o750)],
)
def test_files_and_directories_every_uid_must_read(tmp_path: Path, private: M) -> None:
    layout = packed(tmp_path)
    rebase(layout, extra=[plain(tar(private))])
    report = check(layout)
    assert results(report)["files.readable"] is Result.FAIL
    assert f"/{private.name} ({private.mode:04o})" in detail(report, "files.readable")


def test_a_private_root_directory(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout, [plain(tar(M("./", "dir", mode=0o700), *BUSYBOX))])
    assert "/ (0700)" in detail(check(layout), "files.readable")


def test_devices_fifos_and_setuid_files_under_models_fail(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    assert results(check(layout))["files.special"] is Result.PASS
    odd = (M("models/null", "chr"), M("models/pipe", "fifo"), M("models/run", mode=0o4755, data=b"x"),
           M("models/grp", mode=0o2755, data=b"y"), M("etc/tool", mode=0o4755, data=b"z"))
    rebase(layout, [plain(tar(*BUSYBOX, *odd))])
    report = check(layout)
    assert results(report)["files.special"] is Result.FAIL
    assert "/models/grp (setgid 2755), /models/null (device), /models/pipe (fifo), /models/run (setuid 4755)" in detail(
        report, "files.special"
    )
    assert "etc/tool" not in detail(report, "files.special")  # outside /models is the base image's business


# --- limits ------------------------------------------------------------------------------------------------------


def _image(layers: Sequence[Descriptor], documents: Sequence[tuple[str, int]] = (("manifest m", 1000),)) -> Image:
    entries = (Entry("models", "models", Kind.DIR, 0o755), Entry("models/a", "models/a", Kind.FILE, 0o644))
    contents = tuple(LayerContents("read", entries) for _ in layers)
    return Image("img", "sha256:" + "0" * 64, tuple(documents), (), {**AMD64.to_json(), "config": {}}, tuple(layers), contents)


def _layers(n: int, size: int = 1000) -> list[Descriptor]:
    return [Descriptor(OCI_LAYER, "sha256:" + f"{i:064x}", size) for i in range(n)]


@pytest.mark.parametrize(("count", "verdict"), [(100, Result.PASS), (101, Result.WARN), (300, Result.WARN), (301, Result.FAIL)])
def test_layer_count(count: int, verdict: Result) -> None:
    report = judge(_image(_layers(count)), AMD64)
    assert results(report)["limits.layers"] is verdict
    assert detail(report, "limits.layers").startswith(f"{count} layers")


def test_layer_and_manifest_sizes_against_ecr() -> None:
    under = judge(_image(_layers(1, 52_000 * MIB), [("manifest m", 4 * MIB)]), AMD64)
    assert results(under)["limits.layer-size"] is results(under)["limits.manifest-size"] is Result.PASS
    over = judge(_image(_layers(1, 52_000 * MIB + 1), [("index i", 100), ("manifest m", 4 * MIB + 1)]), AMD64)
    assert results(over)["limits.layer-size"] is results(over)["limits.manifest-size"] is Result.FAIL
    assert "52,000 MiB" in detail(over, "limits.layer-size")
    assert detail(over, "limits.manifest-size").startswith("manifest m (4.0 MiB)")


# --- what gets read ----------------------------------------------------------------------------------------------


class Streamed:
    """A layout seen as a registry sees it: no seeking, every read a stream, and a count of layers opened."""

    def __init__(self, layout: Path) -> None:
        self._inner = LayoutSource(Layout.open(layout))
        self.opened: list[str] = []
        self.name = self._inner.name
        self.seekable = False

    def top(self) -> tuple[Descriptor, bytes]:
        return self._inner.top()

    def document(self, desc: Descriptor) -> bytes:
        return self._inner.document(desc)

    def config(self, desc: Descriptor) -> bytes:
        return self._inner.config(desc)

    def layer(self, desc: Descriptor) -> AbstractContextManager[io.BufferedReader]:
        self.opened.append(desc.digest)
        return self._inner.layer(desc)


def _model_layer_digests(layout: Path) -> list[str]:
    layout_ = Layout.open(layout)
    manifest = json.loads(layout_.read_blob(layout_.tags()["latest"].digest))
    return [layer["digest"] for layer in manifest["layers"] if ANNOTATION_FILEPATH in layer.get("annotations", {})]


def test_big_one_file_layers_of_ours_are_judged_from_their_annotations(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout)
    store = Streamed(layout)
    # Every layer counts as big here: only the annotated model layer is spared a read.
    image = gather(store, AMD64, ReadPolicy(small=0))
    hows = [c.how for c in image.contents]
    assert hows == ["read", "read", "annotations"]
    assert _model_layer_digests(layout)[0] not in store.opened and len(store.opened) == 2
    assert (Entry("models/model.safetensors", "models/model.safetensors", Kind.FILE, 0o644)) in image.contents[2].entries
    assert judge(image, AMD64).ok


def test_quick_reads_skip_big_layers_and_the_checks_that_need_them(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout, extra=[plain(tar(M("models/x.bin", mode=0o600, data=b"x")))])
    store = Streamed(layout)
    report = judge(gather(store, AMD64, ReadPolicy(small=0, stream_big=False)), AMD64)
    assert store.opened == []
    got = results(report)
    for skipped in ("modelcar.tools", "modelcar.models", "native.models", "fetch.names", "fetch.links", "files.readable"):
        assert got[skipped] is Result.SKIP, report.table()
    assert "3 layer(s) not read" in detail(report, "modelcar.tools")
    assert got["modelcar.entrypoint"] is got["fetch.compression"] is got["limits.layers"] is Result.PASS
    assert report.mode_results()["modelcar"] is Result.SKIP
    # In a layout, uncompressed layers are read by seeking past file data, whatever their size: nothing is skipped.
    assert results(check(layout, policy=ReadPolicy(small=0, stream_big=False)))["files.readable"] is Result.FAIL


def test_the_history_lines_pack_writes_name_each_layers_files(tmp_path: Path) -> None:
    layout = Layout.open(packed(tmp_path))
    manifest = json.loads(layout.read_blob(layout.tags()["latest"].digest))
    config = json.loads(layout.read_blob(manifest["config"]["digest"]))
    named = [parse_history_line(h["created_by"]) for h in config["history"]]
    one_file = [layer["annotations"].get(ANNOTATION_FILEPATH) for layer in manifest["layers"]]
    assert sorted(path for paths in named if paths for path in paths) == [
        "config.json", "model.safetensors", "sub/tokenizer.json"
    ]
    assert [paths == (path,) for paths, path in zip(named, one_file)] == [path is not None for path in one_file]
    assert parse_history_line(history_line(["a b.bin", "c/d"])) == ("a b.bin", "c/d")
    assert parse_history_line("COPY model.safetensors /models/") is None


def test_annotations_of_another_tool_are_not_trusted(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout)
    lay = Layout.open(layout)
    manifest = json.loads(lay.read_blob(lay.tags()["latest"].digest))
    config = json.loads(lay.read_blob(manifest["config"]["digest"]))
    config["history"] = [{"created_by": "someone else"} for _ in config["history"]]
    manifest["config"] = lay.put_json(OCI_CONFIG, config).to_json()
    lay.set_tag("latest", lay.put_json(OCI_MANIFEST, manifest))
    image = gather(Streamed(layout), AMD64, ReadPolicy(small=0, stream_big=False))
    assert [c.how for c in image.contents] == ["skipped", "skipped", "skipped"]


def test_a_layer_that_is_not_a_tar(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout, extra=[(OCI_LAYER, b"this is no tar archive at all" * 40)])
    with pytest.raises(OcimodelError, match="is not a readable tar"):
        check(layout)


def test_read_entries_streams_gzip_and_zstd_and_keeps_raw_names() -> None:
    data = tar(M("./models", "dir"), M("models/a", data=b"a" * 5000), M("models/.wh.b"), M("/abs", "sym", link="/x"))
    for blob in (data, gzip.compress(data), zstandard.ZstdCompressor().compress(data)):
        entries = read_entries(io.BufferedReader(io.BytesIO(blob)), False, "layer")
        assert [(e.raw, e.path, e.kind) for e in entries] == [
            ("./models", "models", Kind.DIR),
            ("models/a", "models/a", Kind.FILE),
            ("models/.wh.b", "models/b", Kind.WHITEOUT),
            ("/abs", "abs", Kind.SYMLINK),
        ]
    assert read_entries(io.BufferedReader(io.BytesIO(b"")), False, "layer") == ()


def test_lookup_follows_links_like_a_chroot() -> None:
    tree = overlay([[
        Entry("a", "a", Kind.DIR, 0o755),
        Entry("a/f", "a/f", Kind.FILE, 0o644),
        Entry("up", "up", Kind.SYMLINK, link="../../../a"),
        Entry("loop1", "loop1", Kind.SYMLINK, link="loop2"),
        Entry("loop2", "loop2", Kind.SYMLINK, link="/loop1"),
        Entry("x/y", "x/y", Kind.FILE, 0o600),
    ]])
    assert lookup(tree, "/up/f") == ("a/f", tree["a/f"])  # `..` stops at the root
    assert lookup(tree, "loop1") is None
    assert lookup(tree, "a/f/g") is None  # a file is not a directory
    assert tree["x"].kind is Kind.DIR and tree["x"].mode == 0o755  # implied parents, as runtimes create them


def test_warnings_after_pack_name_the_problems_and_nothing_else(tmp_path: Path) -> None:
    good = packed(tmp_path, name="good")
    rebase(good)
    assert layout_warnings(good, None) == []
    zstd = packed(tmp_path, compression="zstd", name="zstd")
    rebase(zstd)
    lines = layout_warnings(zstd, None)
    assert [line.split(":")[0] for line in lines] == ["fetch.compression", "limits.zstd"]
    assert layout_warnings(tmp_path / "nowhere", None)[0].startswith("could not check the image for KServe")


def test_warnings_name_the_platform_only_when_not_all_have_the_problem(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    amd = rebase(layout)
    arm = rebase(layout, base=[plain(tar(M("etc", "dir")))], platform=ARM64)
    # A build attestation rides along as an unknown/unknown manifest: nobody runs it, so nothing is said about it.
    index_of(layout, [(amd, AMD64), (arm, ARM64), (arm, Platform("unknown", "unknown"))])
    lines = layout_warnings(layout, "latest")
    assert lines and all(line.startswith("linux/arm64: modelcar.tools:") for line in lines)
    assert QUICK.stream_big is False


# --- hostile layers: what one check may cost -------------------------------------------------------------------


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def bomb(compression: str, expanded: int) -> tuple[str, bytes]:
    """A layer of one file of ``expanded`` zero bytes: a few KB compressed, written without holding it."""
    out = io.BytesIO()
    if compression == "zstd":
        media, sink = OCI_LAYER_ZSTD, zstandard.ZstdCompressor().stream_writer(out, closefd=False)
    else:
        media, sink = OCI_LAYER_GZIP, gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9)
    with sink, tarfile.open(fileobj=sink, mode="w|", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("models/zeros.bin")
        info.size = expanded
        archive.addfile(info, io.BufferedReader(_Zeros(expanded), MIB))
    return media, out.getvalue()


def members(count: int, name: str = "models/f{}") -> bytes:
    return zstandard.ZstdCompressor().compress(tar(*(M(name.format(i)) for i in range(count))))


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_a_decompression_bomb_is_read_up_to_the_budget_only(tmp_path: Path, compression: str) -> None:
    layout = packed(tmp_path)
    media, data = bomb(compression, 64 * MIB)
    assert len(data) < MIB // 8  # expands 500 times and more
    bad = rebase(layout, extra=[(media, data)])
    policy = ReadPolicy(expanded=2 * MIB, ratio=0)
    budget = Budget(policy)
    image = gather(LayoutSource(Layout.open(layout)), AMD64, policy, budget)
    assert budget.expanded <= 2 * MIB + 1  # what was decompressed: not one byte past the cap, of 64 MiB
    assert [c.how for c in image.contents][-1] == "too-large"
    report = judge(image, AMD64)
    assert results(report)["image.checkable"] is Result.WARN
    layer = json.loads(Layout.open(layout).read_blob(bad.digest))["layers"][-1]["digest"]
    assert f"too large to check: layer {layer[7:19]} decompresses past 2.0 MiB" in detail(report, "image.checkable")
    assert results(report)["files.readable"] is Result.SKIP


def test_the_budget_grows_with_the_layers_read_but_not_with_a_bomb(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    media, data = bomb("zstd", 64 * MIB)
    rebase(layout, extra=[(media, data)])
    budget = Budget(ReadPolicy(expanded=MIB, ratio=10))
    gather(LayoutSource(Layout.open(layout)), AMD64, budget=budget)
    sizes = sum(d.size for d in gather(LayoutSource(Layout.open(layout)), AMD64, QUICK).layers)
    assert budget.allowed == MIB + 10 * sizes < 2 * MIB
    assert budget.expanded <= budget.allowed + 1


def test_the_warnings_after_push_name_a_layer_too_large_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = packed(tmp_path)
    rebase(layout, extra=[bomb("zstd", 16 * MIB)])
    monkeypatch.setattr(warnings_module, "QUICK", replace(QUICK, expanded=MIB))
    lines = layout_warnings(layout, None)
    assert any(line.startswith("image.checkable: too large to check: layer ") and "1.0 MiB" in line for line in lines)


def test_members_past_the_cap_are_not_kept(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout, extra=[(OCI_LAYER_ZSTD, members(5000))])
    policy = ReadPolicy(entries=1000)
    budget = Budget(policy)
    report = judge(gather(LayoutSource(Layout.open(layout)), AMD64, policy, budget), AMD64)
    assert budget.entries == 1001  # the one over the cap stops the read
    assert "past 1,000 tar members" in detail(report, "image.checkable")


def test_member_names_longer_than_a_runtime_takes_are_too_large(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    rebase(layout, extra=[plain(tar(M("models/" + "a/" * 3000 + "x")))])
    report = check(layout)
    assert "has a member name of 6,008 bytes" in detail(report, "image.checkable")
    budget = Budget(ReadPolicy(names=10_000))
    rebase(layout, extra=[plain(tar(*(M(f"models/{i:04}/" + "d/" * 20 + "f") for i in range(40))))])
    report = judge(gather(LayoutSource(Layout.open(layout)), AMD64, budget=budget), AMD64)
    assert "of member names" in detail(report, "image.checkable")  # deep paths are charged for the parents they imply


def _line_events(work: Callable[[], object]) -> int:
    """Lines of Python executed by ``work``: an operation count that, unlike a clock, load cannot skew."""
    count = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        count += event == "line"
        return tracer

    sys.settrace(tracer)
    try:
        work()
    finally:
        sys.settrace(None)
    return count


def _wiped(n: int) -> list[list[Entry]]:
    below = [Entry(f"data/f{i}", f"data/f{i}", Kind.FILE) for i in range(n)]
    below += [Entry(f"dirs/d{i}/f", f"dirs/d{i}/f", Kind.FILE) for i in range(n)]
    above = [Entry(f"data/.wh.f{i}", f"data/f{i}", Kind.WHITEOUT) for i in range(n)]
    above += [Entry(f"dirs/d{i}/.wh..wh..opq", f"dirs/d{i}", Kind.OPAQUE) for i in range(n)]
    return [below, above]


def test_whiteouts_cost_what_they_delete_not_the_whole_tree() -> None:
    small, large = (_line_events(lambda: overlay(_wiped(n))) for n in (300, 1200))
    assert large < 5 * small, (small, large)  # 4x the whiteouts, about 4x the work; quadratic would be 16x
    tree = overlay(_wiped(10))
    assert sorted(tree) == ["data", "dirs", *sorted(f"dirs/d{i}" for i in range(10))]
    # Deletions leave the tree whole: what a whiteout removed can come back, with the parents it needs.
    tree = overlay([
        [Entry("a/b/c", "a/b/c", Kind.FILE), Entry("a/x", "a/x", Kind.FILE), Entry("k", "k", Kind.DIR)],
        [Entry("a/.wh.b", "a/b", Kind.WHITEOUT), Entry("a/b/new", "a/b/new", Kind.FILE)],
        [Entry(".wh.a", "a", Kind.WHITEOUT), Entry("a", "a", Kind.FILE), Entry("k/l/m", "k/l/m", Kind.FILE)],
    ])
    assert sorted(tree) == ["a", "k", "k/l", "k/l/m"] and tree["a"].kind is Kind.FILE


def test_the_warnings_check_a_bounded_number_of_platforms(tmp_path: Path) -> None:
    layout = packed(tmp_path)
    manifest = rebase(layout)
    many = [(manifest, Platform("linux", f"arch{i}")) for i in range(warnings_module.QUICK_PLATFORMS + 4)]
    index_of(layout, [(manifest, AMD64), *many])
    lines = layout_warnings(layout, "latest")
    assert lines[-1].startswith(f"checked the first {warnings_module.QUICK_PLATFORMS} of 21 platforms")
