"""``ocimodel build`` end to end: the real CLI in a subprocess, straight from a model directory into docker-registry.

The yardstick is ``pack`` + ``push`` run by another user (its own cache, so neither can lend the other a digest or a
mount): a build must leave the same manifest digest and the same blob bytes in the registry, read back through the
registry's own HTTP API and compared with the layout ``pack`` wrote. Along the way nothing of the model may land on
disk: the model directory stays as it was, no layout appears, and the only blobs in the user's cache are the base's.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import Env, assert_clean_error, explain
from tests.harness.models import random_shards, write_model
from tests.harness.oci import blob, reachable
from tests.harness.registry import Registry, access_log, assert_registry_holds, registry_has_nothing

MIB = 1 << 20
#: Chunked at 1 MiB, whole at the default chunk size.
BIG_SHARD = 2 * 1024 * 1024 + 4321
SMALL_SHARD = 300_000
COMMANDS = ("pack", "push", "build")


def unique(name: str) -> str:
    return f"build-tests/{name}-{uuid.uuid4().hex[:8]}"


def make_model(root: Path, seed: int = 11) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    return write_model(root, {
        **random_shards(rng, (BIG_SHARD, SMALL_SHARD)),
        "config.json": json.dumps({"hidden_size": 64, "seed": seed}),
        "tokenizer.json": json.dumps({"vocab": [rng.randbytes(6).hex() for _ in range(200)]}),
    })


def snapshot(root: Path, *skip: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (but those under ``skip``) with its size and mtime."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if not any(s == p or s in p.parents for s in skip)
    }


def build(env: Env, source: Path, target: str, *options: str | Path, stdin: str | None = None) -> str:
    """Run ``ocimodel build`` and return its last stdout line."""
    result = env.run("build", source, target, *options, stdin=stdin)
    assert result.returncode == 0, explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    return result.stdout.splitlines()[-1]


def build_json(env: Env, source: Path, target: str, *options: str | Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(build(env, source, target, "--json", *options))
    return summary


def pack(env: Env, source: Path, layout: Path, *options: str) -> str:
    result = env.run("pack", source, layout, *options)
    assert result.returncode == 0, explain(result)
    return result.stdout.splitlines()[-1]


def push(env: Env, layout: Path, target: str) -> str:
    result = env.run("push", layout, target)
    assert result.returncode == 0, explain(result)
    return result.stdout.splitlines()[-1]


def together(first: Callable[[], str], second: Callable[[], str]) -> tuple[str, str]:
    """Two CLI runs at once (they share nothing but the model files, which both only read)."""
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(first), pool.submit(second)
        return a.result(), b.result()


def manifest_parts(layout: Path, digest: str) -> dict[str, int]:
    """Config and layers of the image: digest → size."""
    manifest = json.loads(blob(layout, digest))
    return {d["digest"]: d["size"] for d in [manifest["config"], *manifest["layers"]]}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_model(tmp_path / "model")


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path / "env")


# --- the image pack + push would store -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compression", "chunk_size"), [("none", "1MiB"), ("gzip", "128MiB"), ("zstd", "0")], ids=["none", "gzip", "zstd"]
)
def test_build_stores_what_pack_and_push_store(
    registry: Registry, busybox_ref: str, busybox_layout: Path, tmp_path: Path, compression: str, chunk_size: str
) -> None:
    work = tmp_path / "work"  # everything the build may see; the other user works elsewhere
    source, builder = make_model(work / "model"), Env(work / "env")
    packer, layout = Env(tmp_path / "packer"), tmp_path / "layout"
    built_repo, pushed_repo = unique(f"built-{compression}"), unique(f"pushed-{compression}")
    before = snapshot(work, builder.root)
    line, digest = together(
        lambda: build(builder, source, f"{registry.host}/{built_repo}:v1", "--base", busybox_ref,
                      "--compression", compression, "--chunk-size", chunk_size),
        # Another user packs the same model, to push it the long way round.
        lambda: pack(packer, source, layout, "--base", busybox_ref, "--compression", compression),
    )
    # Nothing on disk: the model as it was, no layout anywhere, and in the cache only the base's blobs.
    assert snapshot(work, builder.root) == before
    cached = builder.root / "cache" / "ocimodel"
    base_top = json.loads((busybox_layout / "index.json").read_bytes())["manifests"][0]["digest"]
    base_blobs = {d.removeprefix("sha256:") for d in reachable(busybox_layout, base_top)}
    for path in cached.rglob("*"):
        if path.is_file():
            rel = path.relative_to(cached)
            assert rel.parts[0] == "bases" or rel.name.startswith("cache.sqlite"), rel
            if rel.parts[:3] == ("bases", "blobs", "sha256"):
                assert rel.name in base_blobs, f"{rel} is not a blob of the base"

    assert push(packer, layout, f"{registry.host}/{pushed_repo}:v1") == f"{registry.host}/{pushed_repo}@{digest}"
    assert line == f"{registry.host}/{built_repo}@{digest}"
    assert_registry_holds(registry, built_repo, "v1", layout, digest)
    assert registry.fetch_manifest(built_repo, "v1").body == registry.fetch_manifest(pushed_repo, "v1").body
    parts = manifest_parts(layout, digest)
    assert len(parts) == 1 + 1 + 3  # config, the busybox layer, the small files' layer and one per shard
    if compression == "none":
        # Hashed on the way up, so never asked about: the registry saw HEADs for the base layer and the config only.
        heads = {entry.split("/blobs/")[1].split()[0] for entry in access_log(registry, "HEAD", built_repo)}
        manifest = json.loads(blob(layout, digest))
        assert heads == {manifest["config"]["digest"], manifest["layers"][0]["digest"]}
        # Each model layer streamed: in 1 MiB chunks, or in one PATCH when no bigger than that. The base layer's
        # digest is known, so it goes in chunks too if it is bigger than one, else whole with its PUT.
        base_size, *sizes = (d["size"] for d in manifest["layers"])
        chunks = sum(-(-n // MIB) for n in sizes) + (-(-base_size // MIB) if base_size > MIB else 0)
        assert max(sizes) > 2 * MIB and len(access_log(registry, "PATCH", built_repo)) == chunks


# --- the summary, and a second build ---------------------------------------------------------------------------


def test_json_summary_and_a_rebuild_that_sends_nothing(
    registry: Registry, source: Path, env: Env, tmp_path: Path
) -> None:
    repo = unique("json")
    target = f"{registry.host}/{repo}"
    layout = tmp_path / "layout"
    output, digest = together(
        lambda: build(env, source, target, "--base", "scratch", "--json"),
        lambda: pack(Env(tmp_path / "packer"), source, layout, "--base", "scratch"),
    )
    first = json.loads(output)
    parts = manifest_parts(layout, digest)
    assert first["reference"] == f"{target}@{digest}" and first["digest"] == digest
    assert first["uri"] == f"oci://{target}@{digest}"
    assert first["uploadedBytes"] == sum(parts.values()) and first["skippedBytes"] == 0
    assert {b["digest"]: b["size"] for b in first["blobs"]} == parts
    assert set(first["seconds"]) == {"source", "layers", "manifest"}
    assert all(isinstance(v, (int, float)) and v >= 0 for v in first["seconds"].values())
    assert registry.list_tags(repo) == ["latest"]
    assert_registry_holds(registry, repo, "latest", layout, digest)

    posts = len(access_log(registry, "POST", repo))
    second = build_json(env, source, target, "--base", "scratch")
    assert second["digest"] == digest
    assert {b["outcome"] for b in second["blobs"]} == {"skipped"}
    assert second["uploadedBytes"] == 0 and second["skippedBytes"] == sum(parts.values())
    assert len(access_log(registry, "POST", repo)) == posts  # not one upload session was opened


# --- keeping a layout too --------------------------------------------------------------------------------------


def test_layout_option_keeps_the_image_it_pushes(registry: Registry, source: Path, env: Env, tmp_path: Path) -> None:
    repo = unique("layout")
    kept = tmp_path / "kept"
    line, digest = together(
        lambda: build(env, source, f"{registry.host}/{repo}:v2", "--base", "scratch", "--layout", kept),
        lambda: pack(Env(tmp_path / "packer"), source, tmp_path / "packed", "--base", "scratch"),
    )
    (entry,) = json.loads((kept / "index.json").read_bytes())["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v2"
    assert entry["digest"] == digest  # the image a plain pack makes
    assert line == f"{registry.host}/{repo}@{digest}"
    assert_registry_holds(registry, repo, "v2", kept, digest)


# --- failing cleanly -------------------------------------------------------------------------------------------


def test_unreachable_registry(dead_port: int, source: Path, env: Env) -> None:
    host = f"127.0.0.1:{dead_port}"
    result = env.run("build", source, f"{host}/{unique('nowhere')}", "--base", "scratch")
    assert_clean_error(result, f"cannot reach registry {host}", "connection refused")


def test_wrong_password_is_one_line_without_it(auth_registry: Registry, source: Path, env: Env) -> None:
    wrong = "Wr0ng-bu1ld-" + uuid.uuid4().hex
    repo = unique("denied")
    result = env.run(
        "build", source, f"{auth_registry.host}/{repo}", "--base", "scratch", "--username", "ocimodel",
        "--password-stdin", stdin=wrong + "\n",
    )
    assert_clean_error(result, f"registry {auth_registry.host}", "refused the credentials")
    assert auth_registry.password
    for secret in (wrong, base64.b64encode(f"ocimodel:{wrong}".encode()).decode(), auth_registry.password):
        assert secret not in result.stdout + result.stderr
    assert registry_has_nothing(auth_registry, repo)


def test_missing_source(registry: Registry, env: Env, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such-model"
    repo = unique("missing")
    result = env.run("build", missing, f"{registry.host}/{repo}", "--base", "scratch")
    assert_clean_error(result, str(missing))
    assert registry_has_nothing(registry, repo)


def test_help_of_every_command(env: Env) -> None:
    """Help strings go through rich markup: a stray ``[/…]`` in one once crashed ``--help``."""
    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(COMMANDS, pool.map(lambda command: env.run(command, "--help"), COMMANDS)))
    for command, result in results.items():
        assert result.returncode == 0, explain(result)
        assert "Traceback" not in result.stderr and "Usage:" in result.stdout, explain(result)
        usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
        assert f" {command} " in usage and "--json" in result.stdout, explain(result)
    assert "--layout" in results["build"].stdout
    assert "--two-pass" not in results["build"].stdout  # the benchmark switch stays hidden
