"""Which files go into which layer.

Each weight file gets a layer of its own, so a changed shard re-uploads only itself and nodes pull shards in
parallel; everything else (configs, tokenizers, READMEs) shares one layer. ECR refuses images with a few hundred
layers and containerd gives up on a layer whose unpack shows no progress for minutes, so when there are too many
shards, neighbouring ones are grouped into balanced layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Sequence

from ocimodel.layout.tarlayer import Member
from ocimodel.source import SourceFile

MODEL_DIR = "models"
WEIGHT_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".ggml", ".onnx", ".onnx_data", ".h5", ".msgpack",
     ".tflite", ".npz", ".pdparams", ".nemo", ".mlmodel", ".ot", ".params", ".pkl", ".joblib", ".keras"}
)
#: Non-weight files this large also get their own layer: grouping them would make a big layer change whenever a
#: small config does.
OWN_LAYER_SIZE = 64 << 20
#: Model layers at most, leaving room for the base image's layers under ECR's practical limit.
MAX_MODEL_LAYERS = 48


@dataclass(frozen=True)
class LayerPlan:
    files: tuple[SourceFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def title(self) -> str:
        if len(self.files) == 1:
            return self.files[0].path
        return f"{len(self.files)} files"

    def members(self) -> list[Member]:
        """Tar members: every parent directory once, then files, in path order (parents sort before children)."""
        dirs: set[tuple[str, ...]] = set()
        entries: list[tuple[tuple[str, ...], Member]] = []
        for f in self.files:
            parts = (MODEL_DIR, *PurePosixPath(f.path).parts)
            for i in range(1, len(parts)):
                if parts[:i] not in dirs:
                    dirs.add(parts[:i])
                    entries.append((parts[:i], Member("/".join(parts[:i]))))
            entries.append((parts, Member("/".join(parts), f.local, f.size, f.identity)))
        return [m for _, m in sorted(entries, key=lambda e: e[0])]


def is_weight(f: SourceFile) -> bool:
    return PurePosixPath(f.path).suffix.lower() in WEIGHT_SUFFIXES or f.size >= OWN_LAYER_SIZE


def plan_layers(files: Sequence[SourceFile], max_layers: int = MAX_MODEL_LAYERS) -> list[LayerPlan]:
    """Small files first in one layer, then the weights in path order, grouped only if there are too many."""
    if max_layers < 2:
        raise ValueError("need room for at least two model layers")
    ordered = sorted(files, key=lambda f: f.sort_key)
    small = tuple(f for f in ordered if not is_weight(f))
    weights = [f for f in ordered if is_weight(f)]
    plans = [LayerPlan(small)] if small else []
    plans += [LayerPlan(g) for g in _balanced_groups(weights, max_layers - len(plans))]
    return plans


def _balanced_groups(files: list[SourceFile], limit: int) -> list[tuple[SourceFile, ...]]:
    """Split ``files`` into at most ``limit`` runs of neighbours, making the largest run as small as possible.

    Binary search on the largest allowed run size; a greedy left-to-right fill tells whether a size fits.
    Neighbours stay together so a model's shard order is kept and layers stay stable across similar models.
    """
    if len(files) <= limit:
        return [(f,) for f in files]

    def fill(cap: int) -> list[tuple[SourceFile, ...]]:
        groups: list[list[SourceFile]] = []
        total = cap + 1
        for f in files:
            if total + f.size > cap:
                groups.append([])
                total = 0
            groups[-1].append(f)
            total += f.size
        return [tuple(g) for g in groups]

    low, high = max(f.size for f in files), sum(f.size for f in files)
    while low < high:
        mid = (low + high) // 2
        if len(fill(mid)) <= limit:
            high = mid
        else:
            low = mid + 1
    return fill(low)
