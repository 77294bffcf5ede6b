"""``build`` with a staged source (the Hub's shape): files fetched per layer, and released under ``--disk-budget``.

The source here is a local "remote" folder that ``fetch`` copies into a staging folder and ``release`` deletes
from it, recording how many bytes are on disk at every moment, so the budget is checked against what was really
there, not against the code's own bookkeeping.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from ocimodel.registry.build import BuildOptions, build
from ocimodel.errors import OcimodelError
from ocimodel.layout.pack import PackOptions
from ocimodel.registry.auth import Keychain
from ocimodel.registry.client import RegistryClient
from ocimodel.registry.push import PushOptions
from ocimodel.registry.reference import parse_reference
from ocimodel.retry import RetryPolicy
from ocimodel.source import Filters, Provenance, SourceFile, StagedSource
from ocimodel.source.local import LocalSource
from tests.harness.registry_stub import RegistryStub
from tests.harness.progress import Recorder

SHARD = 300_000


class FakeHub:
    """A staged source over ``remote``: files appear under ``stage`` only between ``fetch`` and ``release``."""

    def __init__(self, remote: Path, stage: Path) -> None:
        self.remote, self.stage = remote, stage
        self.on_disk = 0
        self.peak = 0
        self.fetched: list[str] = []
        self._lock = threading.Lock()

    @property
    def provenance(self) -> Provenance:
        return Provenance(title="acme/fake", source="http://hub.invalid/acme/fake", revision="0" * 40)

    @property
    def root(self) -> Path:
        return self.stage

    def files(self, filters: Filters) -> list[SourceFile]:
        planned = self.planned(filters)
        self.fetch(planned)
        return planned

    def planned(self, filters: Filters) -> list[SourceFile]:
        remote = LocalSource.from_path(self.remote).files(filters)
        # Like the Hub: weights are LFS files with a sha256 id, small files are not.
        return [
            SourceFile(f.path, self.stage / f.path, f.size, f"{i:064x}" if f.path.endswith(".safetensors") else None)
            for i, f in enumerate(remote)
        ]

    def fetch(self, files: Sequence[SourceFile], stop: threading.Event | None = None) -> None:
        for f in files:
            f.local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.remote / f.path, f.local)
            with self._lock:
                self.fetched.append(f.path)
                self.on_disk += f.size
                self.peak = max(self.peak, self.on_disk)

    def release(self, files: Sequence[SourceFile]) -> None:
        for f in files:
            f.local.unlink()
            with self._lock:
                self.on_disk -= f.size




@pytest.fixture
def hub(tmp_path: Path) -> FakeHub:
    remote = tmp_path / "remote"
    remote.mkdir()
    for i in range(1, 5):
        (remote / f"model-0000{i}-of-00004.safetensors").write_bytes(os.urandom(SHARD))
    (remote / "config.json").write_text('{"model_type": "fake"}\n')
    return FakeHub(remote, tmp_path / "stage")


def run(stub: RegistryStub, source: StagedSource, repo: str, budget: int | None, jobs: int = 4) -> str:
    options = BuildOptions(
        pack=PackOptions(base="scratch"),
        push=PushOptions(jobs=jobs, chunk_size=0, retry=RetryPolicy(sleep=lambda s: None)),
        disk_budget=budget,
    )
    client = RegistryClient(stub.host, plain_http=True, keychain=Keychain(()), retry=RetryPolicy(sleep=lambda s: None))
    with client:
        return build(source, parse_reference(f"{stub.host}/{repo}:v1"), options, Recorder(), client).push.digest


def test_budget_bounds_the_bytes_on_disk_and_changes_nothing_in_the_image(stub: RegistryStub, hub: FakeHub) -> None:
    unbounded = run(stub, hub, "models/free", None)
    assert hub.peak == hub.on_disk == 4 * SHARD + len('{"model_type": "fake"}\n')  # fetched, never released

    hub.peak = hub.on_disk = 0
    shutil.rmtree(hub.stage)
    budget = 2 * SHARD + 100  # two shards at once, never three
    bounded = run(stub, hub, "models/bounded", budget)
    assert bounded == unbounded
    assert hub.peak <= budget
    assert hub.peak >= 2 * SHARD, "with 4 jobs, two shards should have been in flight together"
    assert hub.on_disk == 0 and not any(p.is_file() for p in hub.stage.rglob("*"))


def test_unchanged_layers_are_not_even_downloaded(stub: RegistryStub, hub: FakeHub) -> None:
    run(stub, hub, "models/again", None)
    hub.fetched.clear()
    shutil.rmtree(hub.stage)
    run(stub, hub, "models/again", SHARD + 100)
    # Every shard's digest came from the cache (keyed on its LFS id) and the registry had it: no download. The
    # small-files layer has no LFS id, so its files are fetched to be identified and sent again (they are small).
    assert hub.fetched == ["config.json"]


def test_a_layer_larger_than_the_budget_is_refused_before_anything_moves(stub: RegistryStub, hub: FakeHub) -> None:
    with pytest.raises(OcimodelError, match="disk_budget: layer .* more than the budget"):
        run(stub, hub, "models/tight", SHARD - 1)
    assert hub.fetched == []
    assert not stub.log, "nothing may be sent to the registry"


def test_budget_needs_a_staged_source(stub: RegistryStub, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(OcimodelError, match="disk_budget: is for Hub sources"):
        run(stub, LocalSource.from_path(tmp_path / "m"), "models/local", 10**9)  # type: ignore[arg-type]


def test_a_stale_cached_digest_is_forgotten_and_the_layer_sent_again(stub: RegistryStub, tmp_path: Path) -> None:
    """A file rewritten in place with its size and times kept would leave the cache wrong: the registry refuses the
    digest, and the build recovers instead of failing on every run after."""
    import sqlite3

    from ocimodel import localdb

    model = tmp_path / "m"
    model.mkdir()
    (model / "model.safetensors").write_bytes(os.urandom(SHARD))
    (model / "config.json").write_text("{}")
    first = run(stub, LocalSource.from_path(model), "models/a", None)  # type: ignore[arg-type]
    with sqlite3.connect(localdb.default_path()) as db:
        db.execute("UPDATE layer_digests SET digest = ?, diff_id = ?", ("sha256:" + "0" * 64, "sha256:" + "0" * 64))
    db.close()
    again = run(stub, LocalSource.from_path(model), "models/b", None)  # type: ignore[arg-type]
    assert again == first
    with sqlite3.connect(localdb.default_path()) as db:
        digests = {row[0] for row in db.execute("SELECT digest FROM layer_digests")}
    db.close()
    assert "sha256:" + "0" * 64 not in digests, "the wrong digests were replaced by the right ones"
