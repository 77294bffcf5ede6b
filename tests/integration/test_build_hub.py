"""``ocimodel build ORG/NAME`` end to end: the local Hub look-alike, the real docker-registry, and --disk-budget."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cli import assert_clean_error, pack, run_cli
from tests.harness.hub import HubServer, hub_env, run_hub, tiny_repo
from tests.harness.registry import Registry

TINY_MAIN = tiny_repo().at("main")


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    with run_hub([tiny_repo()], {}) as running:
        yield running


@pytest.fixture
def env(tmp_path: Path, hub: HubServer) -> dict[str, str]:
    return hub_env(hub, tmp_path)


def _weights_in_cache(env: dict[str, str]) -> list[Path]:
    blobs = Path(env["HF_HOME"]) / "hub" / "models--acme--tiny" / "blobs"
    return [p for p in blobs.iterdir() if p.stat().st_size > 4096] if blobs.is_dir() else []


def test_build_from_the_hub_under_a_disk_budget(env: dict[str, str], registry: Registry, tmp_path: Path) -> None:
    packed = pack("acme/tiny", tmp_path / "layout", env=env | {"HF_HOME": str(tmp_path / "hf-pack")})
    largest = max(len(data) for data in TINY_MAIN.files.values())
    budget = ("--disk-budget", str(largest + 1024))
    result = run_cli("build", "acme/tiny", f"{registry.host}/hub/tiny:v1", "--base", "scratch", "--json", *budget, env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["digest"] == packed
    assert registry.fetch_manifest("hub/tiny", "v1").digest == packed
    # The build downloaded each file, sent it, and deleted it: nothing of the model is left in its cache.
    assert _weights_in_cache(env) == []

    # Files that were in the cache before belong to the user (and maybe to other snapshots): they stay.
    cached_env = env | {"HF_HOME": str(tmp_path / "hf-pack"), "XDG_CACHE_HOME": str(tmp_path / "fresh-cache")}
    before = _weights_in_cache(cached_env)
    assert before
    again = run_cli("build", "acme/tiny", f"{registry.host}/hub/tiny2:v1", "--base", "scratch", *budget, env=cached_env)
    assert again.returncode == 0, again.stderr
    assert _weights_in_cache(cached_env) == before


def test_budget_too_small_for_a_layer(env: dict[str, str], registry: Registry) -> None:
    result = run_cli("build", "acme/tiny", f"{registry.host}/hub/tight:v1", "--base", "scratch",
                     "--disk-budget", "1KiB", env=env)
    assert_clean_error(result, "--disk-budget: layer ", "raise the budget", code=2)
