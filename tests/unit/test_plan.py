"""Layer planning: which files share a layer, and what each layer's tar holds."""

from __future__ import annotations

import functools
import random
from pathlib import Path, PurePosixPath

import pytest

from ocimodel.layout.plan import MAX_MODEL_LAYERS, OWN_LAYER_SIZE, LayerPlan, plan_layers
from ocimodel.source import SourceFile

MiB = 1 << 20


def sf(path: str, size: int) -> SourceFile:
    return SourceFile(path, Path("/nonexistent") / path, size)


def paths(plans: list[LayerPlan]) -> list[list[str]]:
    return [[f.path for f in p.files] for p in plans]


def shards(n: int, size: int | list[int] = 100 * MiB, suffix: str = ".safetensors") -> list[SourceFile]:
    sizes = size if isinstance(size, list) else [size] * n
    return [sf(f"model-{i:05d}-of-{n:05d}{suffix}", sizes[i - 1]) for i in range(1, n + 1)]


@functools.lru_cache(maxsize=None)
def _solver(sizes: tuple[int, ...]):  # type: ignore[no-untyped-def]
    n = len(sizes)
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)

    @functools.lru_cache(maxsize=None)
    def best(start: int, groups: int) -> int:
        if start == n:
            return 0
        if groups == 0:
            return 1 << 62
        return min(max(prefix[end] - prefix[start], best(end, groups - 1)) for end in range(start + 1, n + 1))

    return best


def optimal_max_group(sizes: list[int], limit: int) -> int:
    """The smallest possible largest group when splitting ``sizes`` into at most ``limit`` contiguous runs (DP)."""
    return _solver(tuple(sizes))(0, limit)


def test_each_weight_alone_and_small_files_together() -> None:
    files = [
        sf("tokenizer.json", 2 * MiB),
        sf("model-00002-of-00002.safetensors", 300 * MiB),
        sf("config.json", 700),
        sf("README.md", 5000),
        sf("model-00001-of-00002.safetensors", 10),
        sf("pytorch_model.bin", 50),
        sf("gguf/q4.gguf", 3 * MiB),
        sf("sub/dir/vocab.txt", 0),
    ]
    plans = plan_layers(files)
    assert paths(plans) == [
        # Path order compares components, so sub/dir/vocab.txt sorts as ("sub", ...) before "tokenizer.json".
        ["README.md", "config.json", "sub/dir/vocab.txt", "tokenizer.json"],
        ["gguf/q4.gguf"],
        ["model-00001-of-00002.safetensors"],
        ["model-00002-of-00002.safetensors"],
        ["pytorch_model.bin"],
    ]
    assert plans[0].size == 2 * MiB + 700 + 5000
    assert plans[0].title  # a group still has a title
    assert [p.title for p in plans[1:]] == [p.files[0].path for p in plans[1:]]


def test_input_order_does_not_matter() -> None:
    files = [*shards(5), sf("a.json", 1), sf("b/c.json", 2), sf("b-c.json", 3)]
    expected = paths(plan_layers(files))
    for seed in range(5):
        shuffled = files[:]
        random.Random(seed).shuffle(shuffled)
        assert paths(plan_layers(shuffled)) == expected


def test_big_non_weight_file_gets_its_own_layer() -> None:
    files = [sf("tokenizer.model", OWN_LAYER_SIZE), sf("vocab.txt", OWN_LAYER_SIZE - 1), sf("config.json", 10)]
    assert paths(plan_layers(files)) == [["config.json", "vocab.txt"], ["tokenizer.model"]]


def test_only_weights_or_only_small_files() -> None:
    assert paths(plan_layers(shards(3))) == [[f.path] for f in shards(3)]
    assert paths(plan_layers([sf("b.json", 1), sf("a.json", 1)])) == [["a.json", "b.json"]]
    assert plan_layers([]) == []


def test_max_layers_below_two_is_refused() -> None:
    with pytest.raises(ValueError):
        plan_layers(shards(3), max_layers=1)


def test_too_many_equal_shards_are_grouped_evenly() -> None:
    weights = shards(100)
    plans = plan_layers([*weights, sf("config.json", 10)])
    assert len(plans) <= MAX_MODEL_LAYERS
    groups = paths(plans[1:])
    # 100 shards in at most 47 layers: no layer can hold fewer than ceil(100 / 47) = 3 at its largest.
    assert max(len(g) for g in groups) == 3
    assert [p for g in groups for p in g] == [w.path for w in weights]


def test_exactly_max_layers_shards_stay_alone() -> None:
    weights = shards(MAX_MODEL_LAYERS - 1)
    plans = plan_layers([*weights, sf("config.json", 10)])
    assert len(plans) == MAX_MODEL_LAYERS
    assert all(len(p.files) == 1 for p in plans)
    assert len(plan_layers(shards(MAX_MODEL_LAYERS))) == MAX_MODEL_LAYERS


@pytest.mark.parametrize("with_small", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_grouping_is_balanced_ordered_and_within_the_limit(seed: int, with_small: bool) -> None:
    rng = random.Random(seed)
    n = rng.randrange(12, 40)
    sizes = [rng.choice([1, 10, 100, 1000]) * rng.randrange(1, 50) * MiB for _ in range(n)]
    weights = shards(n, sizes)
    small = [sf("config.json", 100), sf("sub/tokenizer.json", 200)] if with_small else []
    for max_layers in range(2, n + 2):
        plans = plan_layers([*small, *weights], max_layers=max_layers)
        assert len(plans) <= max_layers
        if small:
            assert paths(plans[:1]) == [["config.json", "sub/tokenizer.json"]]
            plans = plans[1:]
        limit = max_layers - len(small[:1])
        groups = paths(plans)
        # Every weight exactly once, neighbours together, shard order kept.
        assert [p for g in groups for p in g] == [w.path for w in weights]
        assert all(g for g in groups)
        largest = max(p.size for p in plans)
        assert largest == optimal_max_group(sizes, limit), (max_layers, groups)
        if n <= limit:
            assert all(len(g) == 1 for g in groups)


def test_zero_sized_weights_are_grouped_without_error() -> None:
    plans = plan_layers(shards(10, 0), max_layers=3)
    assert len(plans) <= 3
    assert [p for g in paths(plans) for p in g] == [w.path for w in shards(10, 0)]


def test_members_list_parents_first_once_each() -> None:
    files = (sf("a/b/c.txt", 3), sf("a/d.txt", 4), sf("a-b.txt", 5), sf("z", 0), sf("a/b/e/f.json", 6))
    members = LayerPlan(files).members()
    names = [m.name for m in members]
    assert len(names) == len(set(names))
    seen: set[str] = set()
    for m in members:
        parts = PurePosixPath(m.name).parts
        assert parts[0] == "models"
        for i in range(1, len(parts)):
            assert "/".join(parts[:i]) in seen, f"{m.name} before its parent"
        seen.add(m.name)
    dirs = {m.name for m in members if m.is_dir}
    assert dirs == {"models", "models/a", "models/a/b", "models/a/b/e"}
    assert all(m.source is None and m.size == 0 for m in members if m.is_dir)
    by_name = {m.name: m for m in members if not m.is_dir}
    assert {name: (m.source, m.size) for name, m in by_name.items()} == {
        f"models/{f.path}": (f.local, f.size) for f in files
    }
    keys = [PurePosixPath(n).parts for n in names]
    assert keys == sorted(keys)
