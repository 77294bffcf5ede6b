"""The public API (``import ocimodel``) against the in-process registry stub: what a library caller relies on.

Silence (nothing printed, ``os.environ`` untouched), progress through a callable, cancellation through a stop
event, argument errors naming the keyword, frozen results, and one reusable ``Registry``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import os
import pkgutil
import re
import threading
from pathlib import Path

import pytest

import ocimodel
from ocimodel.layout.store import Layout
from tests.harness.registry_stub import RegistryStub

SOURCE_ROOT = Path(ocimodel.__file__).parent
#: The command lines, which may (and must) name their flags; ``ocimodel aws`` is a command, not part of the API.
CLI_MODULES = {SOURCE_ROOT / "cli.py", SOURCE_ROOT / "aws"}


def make_model(root: Path) -> Path:
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "tiny"}))
    (root / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (root / "model-00001-of-00002.safetensors").write_bytes(os.urandom(300_000))
    (root / "model-00002-of-00002.safetensors").write_bytes(os.urandom(200_000))
    return root


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "model")


def test_no_submodule_shadows_a_public_name() -> None:
    """Importing ``ocimodel.x`` sets attribute ``x`` on the package: no module may be named like a public name."""
    for info in pkgutil.walk_packages(ocimodel.__path__, "ocimodel."):
        if info.name != "ocimodel.__main__":  # that one runs the CLI
            importlib.import_module(info.name)
    for name in ocimodel.__all__:
        assert not inspect.ismodule(getattr(ocimodel, name)), f"ocimodel.{name} is a module, not the API's {name}"


def test_every_public_name_is_documented() -> None:
    for name in ocimodel.__all__:
        value = getattr(ocimodel, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            assert inspect.getdoc(value), f"ocimodel.{name} has no docstring"
    signature = inspect.signature(ocimodel.pack)
    assert [p.name for p in signature.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD] == ["source", "layout"]


def test_library_errors_do_not_name_command_line_flags() -> None:
    """A library caller has no flags: messages raised outside the CLI modules name the thing, not ``--option``."""
    flag = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
    found = []
    for path in SOURCE_ROOT.rglob("*.py"):
        if CLI_MODULES & {path, *path.parents}:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                for part in ast.walk(node.exc):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str) and flag.search(part.value):
                        found.append(f"{path.relative_to(SOURCE_ROOT)}:{node.lineno}: {part.value.strip()}")
    assert found == []


def test_pack_push_build_are_silent_and_leave_the_environment_alone(
    stub: RegistryStub, model: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    before = dict(os.environ)
    packed = ocimodel.pack(model, tmp_path / "layout", base="scratch", tag="v1")
    pushed = ocimodel.push(str(tmp_path / "layout"), f"{stub.host}/api/model:v1")
    built = ocimodel.build(str(model), ocimodel.Reference(stub.host, "api/model", tag="v2"), base="scratch")

    assert packed.digest == pushed.digest == built.digest
    assert pushed.reference == built.reference == f"{stub.host}/api/model@{packed.digest}"
    assert built.uri == f"oci://{built.reference}"
    assert set(stub.repository("api/model").manifests) >= {"v1", "v2", packed.digest}
    assert capfd.readouterr() == ("", "")
    assert dict(os.environ) == before


def test_progress_goes_to_a_callable(stub: RegistryStub, model: Path, tmp_path: Path) -> None:
    events: list[ocimodel.ProgressEvent] = []
    lock = threading.Lock()

    def record(event: ocimodel.ProgressEvent) -> None:
        with lock:
            events.append(event)

    ocimodel.pack(model, tmp_path / "layout", base="scratch", use_cache=False, progress=record)
    finished = {e.label: e for e in events if e.finished}
    assert set(finished) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "2 files"}
    assert all(e.done == e.total > 0 for e in finished.values())


def test_a_stop_event_cancels_and_calling_again_finishes(model: Path, tmp_path: Path) -> None:
    stop = threading.Event()

    def stop_at_first_bytes(event: ocimodel.ProgressEvent) -> None:
        if event.done:
            stop.set()

    layout = tmp_path / "layout"
    with pytest.raises(ocimodel.Cancelled):
        ocimodel.pack(model, layout, base="scratch", use_cache=False, progress=stop_at_first_bytes, stop=stop)
    assert Layout.open(layout).tags() == {}, "a valid layout, with no tag pointing at a half-made image"

    again = ocimodel.pack(model, layout, base="scratch")
    fresh = ocimodel.pack(model, tmp_path / "fresh", base="scratch", use_cache=False)
    assert again.digest == fresh.digest
    assert Layout.open(layout).tags()["latest"].digest == again.digest


def test_a_stop_event_already_set_does_nothing(model: Path, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(ocimodel.Cancelled):
        ocimodel.pack(model, tmp_path / "layout", base="scratch", stop=stop)
    assert not (tmp_path / "layout").exists()


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda m, t: ocimodel.pack(m, t / "l", base="scratch", tag="-x"), "tag"),
        (lambda m, t: ocimodel.pack(m, t / "l", base="scratch", platforms=[]), "platforms"),
        (lambda m, t: ocimodel.pack(m, t / "l", base="scratch", platforms=["linux"]), "platforms"),
        (lambda m, t: ocimodel.pack(m, t / "l", base="scratch", compression="lz4"), "compression"),
        (lambda m, t: ocimodel.pack(m, t / "l", base="scratch", revision="main"), "revision"),
        (lambda m, t: ocimodel.build(m, "localhost:1/x@sha256:" + "0" * 64), "ref"),
        (lambda m, t: ocimodel.build(m, "localhost:1/x", layout=t / "l", disk_budget=1), "layout"),
        (lambda m, t: ocimodel.verify(t, modes=["sidecar"]), "modes"),
        (lambda m, t: ocimodel.kserve_manifest("localhost:1/x@sha256:" + "0" * 64, name="x", kind="pod"), "kind"),
        (lambda m, t: ocimodel.kserve_manifest("localhost:1/x@sha256:" + "0" * 64, name="X"), "name"),
        (lambda m, t: ocimodel.kserve_manifest(t, name="x"), "pushed_to"),
    ],
)
def test_argument_errors_name_the_keyword_and_touch_nothing(call, argument: str, model: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ocimodel.InvalidArgument) as err:
        call(model, tmp_path)
    assert err.value.argument == argument
    assert isinstance(err.value, ocimodel.OcimodelError) and isinstance(err.value, ValueError)
    assert "--" not in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "l").exists()


def test_results_are_frozen(model: Path, tmp_path: Path) -> None:
    packed = ocimodel.pack(model, tmp_path / "layout", base="scratch")
    with pytest.raises(dataclasses.FrozenInstanceError):
        packed.digest = "sha256:" + "0" * 64  # type: ignore[misc]


def test_one_registry_serves_many_calls(stub: RegistryStub, model: Path, tmp_path: Path) -> None:
    ocimodel.pack(model, tmp_path / "layout", base="scratch")
    with ocimodel.Registry(jobs=2) as registry:
        first = ocimodel.push(tmp_path / "layout", f"{stub.host}/api/a:v1", registry=registry)
        client = registry.client(stub.host)
        second = ocimodel.push(tmp_path / "layout", f"{stub.host}/api/a:v2", registry=registry)
        assert registry.client(stub.host) is client
    assert first.digest == second.digest
    assert {b.outcome for b in second.blobs} == {"skipped"}
    assert all(b.seconds > 0 for b in (*first.blobs, *second.blobs)), "each blob's outcome says what it took"
