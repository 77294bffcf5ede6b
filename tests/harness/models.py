"""Small model directories written by the tests: weight shards named as on the Hub (a layer each), random bytes from
a seeded generator (the same model every run), JSON configs, and the awkward cases packing must keep (a nested path, an
empty file, a name longer than ustar holds, a link to a file inside the model)."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

LONG_NAME = "a-file-whose-name-is-longer-than-the-hundred-bytes-a-ustar-name-field-holds-" + "x" * 40 + ".txt"
assert len(LONG_NAME) > 100


def shard_name(i: int, count: int) -> str:
    return f"model-{i:05d}-of-{count:05d}.safetensors"


def random_shards(rng: random.Random, sizes: Sequence[int]) -> dict[str, bytes]:
    """Weight shards of these sizes, drawn from ``rng`` in order."""
    return {shard_name(i, len(sizes)): rng.randbytes(size) for i, size in enumerate(sizes, 1)}


def write_model(root: Path, files: Mapping[str, bytes | str]) -> Path:
    """Write ``{path inside the model: content}`` under ``root``, making folders as needed; returns ``root``."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    return root


def make_model(root: Path, seed: int = 0, shards: int = 3) -> dict[str, bytes]:
    """Write a small model under ``root``; returns ``{path inside the model: bytes}`` as the image must hold it."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(1, shards + 1):
        files[shard_name(i, shards)] = rng.randbytes(rng.randrange(20_000, 60_000))
    files["config.json"] = json.dumps({"seed": seed, "hidden_size": rng.randrange(1000)}).encode()
    files["tokenizer.json"] = json.dumps({"vocab": [rng.randbytes(8).hex() for _ in range(64)]}).encode()
    files["sub/dir/file.txt"] = rng.randbytes(513)
    files["sub/empty.txt"] = b""
    files["sub/block.txt"] = rng.randbytes(512)
    files[LONG_NAME] = rng.randbytes(511)
    write_model(root, files)
    # A link to a file inside the model (as in a HuggingFace cache snapshot): packed as the file it points to.
    (root / "alias.txt").symlink_to("sub/dir/file.txt")
    files["alias.txt"] = files["sub/dir/file.txt"]
    return files


def model(tmp_path: Path, name: str = "tiny-model", seed: int = 0, shards: int = 3) -> tuple[Path, dict[str, bytes]]:
    source = tmp_path / f"src-{seed}-{uuid.uuid4().hex[:8]}" / name
    source.mkdir(parents=True)
    return source, make_model(source, seed, shards)
