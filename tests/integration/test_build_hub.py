"""``ocimodel build ORG/NAME`` end to end: the local Hub look-alike, the real docker-registry, and --disk-budget."""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness.registry import Registry
from tests.integration.test_hub import TINY_MAIN, env, hub, ocimodel, pack  # noqa: F401 (fixtures)

__all__ = ["env", "hub"]


def _weights_in_cache(env: dict[str, str]) -> list[Path]:
    blobs = Path(env["HF_HOME"]) / "hub" / "models--acme--tiny" / "blobs"
    return [p for p in blobs.iterdir() if p.stat().st_size > 4096] if blobs.is_dir() else []


def test_build_from_the_hub_under_a_disk_budget(env: dict[str, str], registry: Registry, tmp_path: Path) -> None:
    packed = pack(env, "acme/tiny", tmp_path / "layout")
    largest = max(len(data) for data in TINY_MAIN.files.values())
    result = ocimodel(env, "build", "acme/tiny", f"{registry.host}/hub/tiny:v1", "--base", "scratch", "--json",
                      "--disk-budget", str(largest + 1024))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["digest"] == packed
    assert registry.fetch_manifest("hub/tiny", "v1").digest == packed
    # pack filled the cache; the budgeted build fetched what it needed and deleted every file once sent.
    assert _weights_in_cache(env) == []


def test_budget_too_small_for_a_layer(env: dict[str, str], registry: Registry) -> None:
    result = ocimodel(env, "build", "acme/tiny", f"{registry.host}/hub/tight:v1", "--base", "scratch",
                      "--disk-budget", "1KiB")
    assert result.returncode == 1
    assert result.stderr.startswith("ocimodel: error: layer ") and "--disk-budget" in result.stderr
    assert "Traceback" not in result.stderr
