"""A source that changes between listing and packing: what was listed is what is read, or one clear error.

The listing checks the rules (links stay inside the source, only regular files, readable, names an image can hold);
everything after it reads by the identity the listing noted. Each test lists a real directory, then changes it the
way a concurrent process or an attacker could, then packs or builds what was listed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocimodel.registry.build import BuildOptions, build
from ocimodel.errors import OcimodelError
from ocimodel.layout.pack import PackOptions, pack
from ocimodel.progress import PlainReporter
from ocimodel.registry.auth import Keychain
from ocimodel.registry.client import RegistryClient
from ocimodel.registry.push import PushOptions
from ocimodel.registry.reference import parse_reference
from ocimodel.retry import RetryPolicy
from ocimodel.source import Filters, Provenance, SourceFile
from ocimodel.source.hub import HubFile, HubSource
from ocimodel.source.local import LocalSource
from tests.harness.registry_stub import RegistryStub

WEIGHTS = b"w" * 5000
SECRET = b"s" * len(WEIGHTS)  # as long as the file it replaces, so no size check can catch the swap


@dataclass
class ChangedAfterListing:
    """A local source whose directory is changed right after it was listed, before anything is read."""

    inner: LocalSource
    change: Callable[[], None]

    @property
    def provenance(self) -> Provenance:
        return self.inner.provenance

    @property
    def root(self) -> Path:
        return self.inner.root

    def files(self, filters: Filters) -> list[SourceFile]:
        listed = self.inner.files(filters)
        self.change()
        return listed


def make_model(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(WEIGHTS)
    (model / "config.json").write_text('{"a": 1}')
    (model / "sub" / "vocab.txt").write_text("a\nb\n")
    return model


def swapped(model: Path, change: Callable[[], None]) -> ChangedAfterListing:
    return ChangedAfterListing(LocalSource.from_path(model), change)


def all_blob_bytes(layout: Path) -> bytes:
    blobs = layout / "blobs" / "sha256"
    return b"".join(p.read_bytes() for p in blobs.iterdir()) if blobs.is_dir() else b""


def run_pack(source: ChangedAfterListing, layout: Path, use_cache: bool = True) -> None:
    pack(source, layout, PackOptions(base="scratch", use_cache=use_cache), PlainReporter())


# --- replaced files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_file_swapped_for_a_link_out_of_the_source_is_not_followed(tmp_path: Path, use_cache: bool) -> None:
    model = make_model(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    weights = model / "model.safetensors"

    def swap() -> None:
        weights.unlink()
        weights.symlink_to(secret)

    with pytest.raises(OcimodelError, match="model.safetensors") as caught:
        run_pack(swapped(model, swap), tmp_path / "layout", use_cache)
    assert "symlink" in str(caught.value)
    assert SECRET not in all_blob_bytes(tmp_path / "layout")


def test_directory_swapped_for_a_link_out_of_the_source_is_not_followed(tmp_path: Path) -> None:
    """O_NOFOLLOW guards the last component only; the identity check catches a parent replaced by a link."""
    model = make_model(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "vocab.txt").write_text("x\ny\n")  # the same size as the listed file

    def swap() -> None:
        (model / "sub").rename(tmp_path / "moved-away")
        (model / "sub").symlink_to(outside)

    with pytest.raises(OcimodelError, match="vocab.txt") as caught:
        run_pack(swapped(model, swap), tmp_path / "layout")
    assert "replaced" in str(caught.value)
    assert b"x\ny\n" not in all_blob_bytes(tmp_path / "layout")


def test_file_replaced_by_another_of_the_same_size_is_refused(tmp_path: Path) -> None:
    model = make_model(tmp_path)
    other = tmp_path / "other.bin"
    other.write_bytes(SECRET)

    def swap() -> None:
        other.replace(model / "model.safetensors")

    with pytest.raises(OcimodelError, match="model.safetensors.*replaced"):
        run_pack(swapped(model, swap), tmp_path / "layout")


def test_file_swapped_for_a_fifo_fails_instead_of_hanging(tmp_path: Path) -> None:
    model = make_model(tmp_path)
    fifo = model / "model.safetensors"

    def swap() -> None:
        fifo.unlink()
        os.mkfifo(fifo)

    failure: list[BaseException] = []

    def attempt() -> None:
        try:
            run_pack(swapped(model, swap), tmp_path / "layout")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failure.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive():
        # Blocked opening the FIFO for reading: a writer opening it releases the pack, so the test can end.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=60)
        pytest.fail("pack blocked on a FIFO put in place of a listed file")
    assert len(failure) == 1 and isinstance(failure[0], OcimodelError), failure
    assert "model.safetensors" in str(failure[0]) and "regular file" in str(failure[0])


# --- deleted files -----------------------------------------------------------------------------------------------


def test_file_deleted_after_listing_gives_the_same_clean_error_with_or_without_the_cache(tmp_path: Path) -> None:
    messages = []
    for use_cache in (True, False):
        model = make_model(tmp_path / f"cache-{use_cache}")
        with pytest.raises(OcimodelError, match="model.safetensors") as caught:
            run_pack(swapped(model, (model / "model.safetensors").unlink), tmp_path / f"layout-{use_cache}", use_cache)
        messages.append(str(caught.value).replace(str(model), "MODEL"))
    assert messages[0] == messages[1]
    assert "No such file" in messages[0]


# --- build reads the same way -------------------------------------------------------------------------------------


@pytest.mark.parametrize("two_pass", [False, True], ids=["streamed", "hashed-first"])
def test_build_refuses_a_file_swapped_after_listing(stub: RegistryStub, tmp_path: Path, two_pass: bool) -> None:
    model = make_model(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    weights = model / "model.safetensors"

    def swap() -> None:
        weights.unlink()
        weights.symlink_to(secret)

    options = BuildOptions(
        pack=PackOptions(base="scratch"),
        push=PushOptions(chunk_size=0, retry=RetryPolicy(sleep=lambda s: None)),
        two_pass=two_pass,
    )
    client = RegistryClient(stub.host, plain_http=True, keychain=Keychain(()), retry=RetryPolicy(sleep=lambda s: None))
    with client, pytest.raises(OcimodelError, match="model.safetensors"):
        build(swapped(model, swap), parse_reference(f"{stub.host}/models/m:v1"), options, PlainReporter(), client)
    assert not any(SECRET in blob for repo in stub.repositories.values() for blob in repo.blobs.values())


@dataclass
class LinkingHub:
    """A staged source (the Hub's shape) whose download leaves a link to a file outside its folder."""

    stage: Path
    target: Path

    @property
    def provenance(self) -> Provenance:
        return Provenance(title="acme/m")

    @property
    def root(self) -> Path:
        return self.stage

    def files(self, filters: Filters) -> list[SourceFile]:
        planned = self.planned(filters)
        self.fetch(planned)
        return planned

    def planned(self, filters: Filters) -> list[SourceFile]:
        return [SourceFile("model.safetensors", self.stage / "model.safetensors", self.target.stat().st_size)]

    def fetch(self, files: Sequence[SourceFile], stop: threading.Event | None = None) -> None:
        self.stage.mkdir(exist_ok=True)
        (self.stage / "model.safetensors").symlink_to(self.target)

    def release(self, files: Sequence[SourceFile]) -> None:
        pass


def test_build_refuses_a_downloaded_file_that_links_out_of_the_source(stub: RegistryStub, tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    source = LinkingHub(tmp_path / "stage", secret)
    options = BuildOptions(pack=PackOptions(base="scratch"), push=PushOptions(chunk_size=0))
    client = RegistryClient(stub.host, plain_http=True, keychain=Keychain(()), retry=RetryPolicy(sleep=lambda s: None))
    with client, pytest.raises(OcimodelError, match="model.safetensors.*outside"):
        build(source, parse_reference(f"{stub.host}/models/m:v1"), options, PlainReporter(), client)
    assert not any(SECRET in blob for repo in stub.repositories.values() for blob in repo.blobs.values())


# --- names the layer format gives a meaning to -------------------------------------------------------------------


@pytest.mark.parametrize("name", [".wh.config.json", ".wh..wh..opq", "sub/.wh.vocab.txt", ".wh.dir/file.txt"])
def test_whiteout_names_are_refused_in_a_local_source(tmp_path: Path, name: str) -> None:
    model = make_model(tmp_path)
    (model / name).parent.mkdir(parents=True, exist_ok=True)
    (model / name).write_text("{}")
    with pytest.raises(OcimodelError, match=r"\.wh\.") as caught:
        LocalSource.from_path(model).files(Filters())
    assert name in str(caught.value)
    # Left out, it does not matter.
    excluded = LocalSource.from_path(model).files(Filters(exclude=(name,)))
    assert {f.path for f in excluded} == {"config.json", "model.safetensors", "sub/vocab.txt"}


@pytest.mark.parametrize("name", [".wh.config.json", "sub/.wh..wh..opq", "a//b", "../escape", "a/./b"])
def test_whiteout_and_unplain_names_are_refused_in_a_hub_listing(tmp_path: Path, name: str) -> None:
    listing = (HubFile("config.json", 2, None), HubFile(name, 2, None))
    source = HubSource(
        "acme/m", "0" * 40, "0" * 40, tmp_path / "hub-cache", Provenance("acme/m"), PlainReporter(), listing
    )
    with pytest.raises(OcimodelError, match="wh|plain relative path"):
        source.planned(Filters())
    assert not (tmp_path / "hub-cache").exists(), "nothing may be written for a refused listing"
