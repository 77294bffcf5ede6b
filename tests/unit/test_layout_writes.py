"""Writing a layout next to other writers, after killed ones, and where it must not go.

Other processes are real processes here (a writer holding a temp file open, a second pack into the same layout);
the only thing simulated is timing, through the registry stub's ``before`` hook, which runs the second pack at the
exact moment the first is waiting for its base.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import Platform
from ocimodel.layout.store import Layout
from ocimodel.layout.pack import PackOptions, pack
from ocimodel.progress import PlainReporter
from ocimodel.source.local import LocalSource
from tests.harness.registry_stub import Fault, RegistryStub

REF_NAME = "org.opencontainers.image.ref.name"


def make_model(root: Path, seed: int = 0) -> Path:
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(bytes([seed]) * 3000)
    (root / "config.json").write_text(json.dumps({"seed": seed}))
    return root


def tags(layout: Path) -> dict[str, str]:
    index = json.loads((layout / "index.json").read_text())
    return {m["annotations"][REF_NAME]: m["digest"] for m in index["manifests"]}


def temp_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith(".tmp")}


# --- temp files of writers that died -----------------------------------------------------------------------------

_HOLD_A_WRITER = """
import sys
from pathlib import Path
from ocimodel.layout.store import Layout
writer = Layout.create(Path(sys.argv[1])).writer()
writer.write(b"half a blob")
print(writer._tmp.name, flush=True)
sys.stdin.read()
"""


def test_the_next_write_removes_temp_files_whose_writer_was_killed_and_keeps_live_ones(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_A_WRITER, str(layout)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        live = holder.stdout.readline().strip()  # the writer has its temp file (and its lock) from here on
        blob_dir = layout / "blobs" / "sha256"
        assert live in temp_files(blob_dir)
        # What a writer killed mid-way leaves (no process holds these), and files that are not ours.
        (blob_dir / ".upload-killed.tmp").write_bytes(b"stale")
        (layout / ".index.json.killed.tmp").write_bytes(b"{")
        (blob_dir / ".somebody-elses.tmp").write_bytes(b"not ours")
        (layout / "notes.tmp").write_bytes(b"not ours")

        Layout.create(layout)
        assert temp_files(blob_dir) == {live, ".somebody-elses.tmp"}, "a live writer's file was taken away"
        assert temp_files(layout) == {"notes.tmp"}

        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        Layout.create(layout)
        assert temp_files(blob_dir) == {".somebody-elses.tmp"}
    finally:
        holder.kill()
        holder.wait(timeout=60)


def test_a_writer_whose_temp_file_was_cleaned_away_before_it_locked_it_makes_another(tmp_path: Path) -> None:
    """The window between creating a temp file and locking it: a cleaner that wins it must not break the writer."""
    import ocimodel.layout.store as store

    layout = Layout.create(tmp_path / "layout")
    real_mkstemp = store.tempfile.mkstemp
    made: list[str] = []

    def mkstemp_then_clean(**kwargs: object) -> tuple[int, str]:
        fd, name = real_mkstemp(**kwargs)  # type: ignore[arg-type]
        made.append(name)
        if len(made) == 1:
            store.remove_stale_temps(layout.blob_dir, (store.BLOB_TEMP_PREFIX,))  # unlocked yet: removed
        return fd, name

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store.tempfile, "mkstemp", mkstemp_then_clean)
        digest, size = layout.write_blob([b"blob bytes"])
    assert len(made) == 2 and not Path(made[0]).exists()
    assert layout.blob_path(digest).read_bytes() == b"blob bytes" and size == 10
    assert temp_files(layout.blob_dir) == set()


# --- a failing pack next to a succeeding one ---------------------------------------------------------------------


def test_a_failing_pack_keeps_what_another_pack_wrote_into_the_layout_it_created(
    stub: RegistryStub, tmp_path: Path
) -> None:
    layout = tmp_path / "new" / "layout"
    other = make_model(tmp_path / "other", seed=2)
    finished: list[str] = []

    def other_pack_finishes_meanwhile() -> None:
        options = PackOptions(base="scratch", tag="other")
        finished.append(pack(LocalSource.from_path(other), layout, options, PlainReporter()).digest)

    # The first pack has made the layout and asks for its base: the other pack runs to the end, then the base is
    # not found and the first pack fails.
    stub.behaviour.faults.append(
        Fault(status=404, code="MANIFEST_UNKNOWN", path_contains="/manifests/", before=other_pack_finishes_meanwhile)
    )
    failing = PackOptions(base=f"{stub.host}/library/base@sha256:{'0' * 64}", tag="mine")
    with pytest.raises(OcimodelError):
        pack(LocalSource.from_path(make_model(tmp_path / "mine", seed=1)), layout, failing, PlainReporter())
    assert finished, "the other pack did not run"
    assert tags(layout) == {"other": finished[0]}
    manifest = json.loads((layout / "blobs" / "sha256" / finished[0].removeprefix("sha256:")).read_text())
    for blob in (manifest["config"], *manifest["layers"]):
        assert (layout / "blobs" / "sha256" / blob["digest"].removeprefix("sha256:")).is_file()


def test_a_failing_pack_into_a_new_directory_leaves_nothing(stub: RegistryStub, tmp_path: Path) -> None:
    work = tmp_path / "work"
    layout = work / "new" / "deeper" / "layout"
    failing = PackOptions(base=f"{stub.host}/library/base@sha256:{'0' * 64}")
    with pytest.raises(OcimodelError):
        pack(LocalSource.from_path(make_model(work / "model")), layout, failing, PlainReporter())
    assert list(work.iterdir()) == [work / "model"]


def test_a_failing_pack_into_an_existing_empty_directory_keeps_the_directory(stub: RegistryStub, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    failing = PackOptions(base=f"{stub.host}/library/base@sha256:{'0' * 64}")
    with pytest.raises(OcimodelError):
        pack(LocalSource.from_path(make_model(tmp_path / "model")), layout, failing, PlainReporter())
    assert layout.is_dir() and list(layout.iterdir()) == []


# --- where a layout must not go ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["source", "parent"])
def test_layout_that_is_the_source_or_holds_it_is_refused(tmp_path: Path, where: str) -> None:
    model = make_model(tmp_path / "models" / "m")
    before = sorted(p.name for p in model.iterdir())
    layout = model if where == "source" else model.parent
    with pytest.raises(OcimodelError, match="model directory"):
        pack(LocalSource.from_path(model), layout, PackOptions(base="scratch"), PlainReporter())
    assert sorted(p.name for p in model.iterdir()) == before
    assert not (layout / "oci-layout").exists()


def test_layout_inside_the_source_is_left_out_of_the_image(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    layout = model / "image"
    first = pack(LocalSource.from_path(model), layout, PackOptions(base="scratch"), PlainReporter())
    again = pack(LocalSource.from_path(model), layout, PackOptions(base="scratch"), PlainReporter())
    assert again == first  # the layout written by the first pack did not go into the second image


def test_no_platform_is_refused() -> None:
    with pytest.raises(OcimodelError, match="platform"):
        PackOptions(platforms=())
    assert PackOptions(platforms=(Platform("linux", "arm64"),)).platforms
