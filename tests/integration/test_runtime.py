"""ocimodel's images on a real container runtime, started the way KServe starts a modelcar.

Each image is pushed to the harness's docker-registry, then a private containerd (Debian's, with runc and the
overlayfs snapshotter) does what a node does: ``ctr -n k8s.io images pull`` by digest (fetch and unpack), a
container with no entrypoint running the sidecar's ``sh -c 'ln -sf /proc/$$/root/models /mnt/models && sleep
infinity'``, every model file read through ``/proc/<pid>/root/models`` (the serving container's view through the
pod's shared process namespace) and checked against the source file's sha256, then the container stopped and
removed and the node left cold. A ``--base scratch`` image shows the test can fail: it pulls, but cannot start,
and ``ocimodel verify`` says so first.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.busybox import native_platform
from tests.harness.containerd import Containerd, ContainerdError, sha256_tree
from tests.harness.registry import Registry
from tests.harness.cli import Env, explain
from tests.harness.models import random_shards, write_model

#: The harness's two-platform busybox base (tests/conftest.py); the node's own platform is one of them.
PLATFORMS = ("linux/amd64", "linux/arm64")
EXIT_CHECK_FAILED = 3


@dataclass(frozen=True)
class Source:
    model: Path
    #: ``relative path → sha256:…`` of every file, computed from the source directory itself.
    files: dict[str, str]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """A small model: two weight shards (own layers), configs and a nested tokenizer file (shared layer)."""
    model = tmp_path_factory.mktemp("runtime") / "model"
    rng = random.Random(5)
    write_model(model, {
        **random_shards(rng, (3 * 1024 * 1024 + 17, 1024 * 1024 + 5)),
        "config.json": json.dumps({"hidden_size": 64}),
        "tokenizer/vocab.json": json.dumps([rng.randbytes(4).hex() for _ in range(100)]),
    })
    return Source(model, sha256_tree(model))


@pytest.fixture
def node(containerd: Containerd) -> Iterator[Containerd]:
    """The session's containerd, left cold after each test: no container, image, blob or snapshot remains."""
    yield containerd
    containerd.make_cold()


def cli(env: Env, *args: str | Path) -> str:
    result = env.run(*args)
    assert result.returncode == 0, explain(result)
    return result.stdout.splitlines()[-1]


def packed_and_pushed(env: Env, source: Path, target: str, *options: str) -> str:
    """``pack`` then ``push``; the pinned ``host/repo@sha256:…`` that ``push`` printed."""
    layout = env.root / "layout"
    cli(env, "pack", source, layout, *options)
    return cli(env, "push", layout, target)


def built(env: Env, source: Path, target: str, *options: str) -> str:
    summary = json.loads(cli(env, "build", source, target, "--json", *options))
    return f"{summary['reference'].split('@')[0]}@{summary['digest']}"


#: How each image under test is made: (env, model, target, busybox_ref) → pinned reference.
Make = Callable[[Env, Path, str, str], str]
IMAGES: dict[str, Make] = {
    "default": lambda env, src, target, base: packed_and_pushed(env, src, target, "--base", base),
    "gzip": lambda env, src, target, base: packed_and_pushed(env, src, target, "--base", base, "--compression", "gzip"),
    "zstd": lambda env, src, target, base: packed_and_pushed(env, src, target, "--base", base, "--compression", "zstd"),
    "build": lambda env, src, target, base: built(env, src, target, "--base", base),
}


def pull_start_read_remove(node: Containerd, ref: str, name: str, source: Source) -> None:
    """What a node does with a modelcar image, checked at each step (timings are bench/'s business, not a test's)."""
    assert "@sha256:" in ref, ref
    # 1. Pull by digest: fetch and unpack, as the kubelet does.
    node.pull(ref)
    assert node.images() == [ref]
    # 2. Start it as KServe's sidecar; 3. read every file as the serving container does.
    with node.modelcar(ref, name) as car:
        assert car.link_target() == f"/proc/{car.inner_pid}/root/models"
        assert car.model_files() == source.files
    # 4. Stopped and removed: no task, no container, no container snapshot.
    assert car.container_id not in node.tasks() + node.containers() + node.snapshots()


@pytest.mark.parametrize("kind", list(IMAGES))
def test_the_modelcar_starts_on_containerd_and_serves_every_file(
    kind: str,
    source: Source,
    node: Containerd,
    registry: Registry,
    busybox_ref: str,
    tmp_path: Path,
) -> None:
    target = f"{registry.host}/runtime-tests/{kind}-{uuid.uuid4().hex[:8]}:v1"
    ref = IMAGES[kind](Env(tmp_path / "env"), source.model, target, busybox_ref)
    pull_start_read_remove(node, ref, kind, source)


def test_a_multi_platform_image_runs_as_the_nodes_platform_only(
    source: Source,
    node: Containerd,
    registry: Registry,
    busybox_multi_ref: str,
    tmp_path: Path,
) -> None:
    here = str(native_platform())
    assert here in PLATFORMS, f"this node ({here}) is not one of the base's platforms {PLATFORMS}"
    env = Env(tmp_path / "env")
    ref = packed_and_pushed(
        env, source.model, f"{registry.host}/runtime-tests/platforms-{uuid.uuid4().hex[:8]}:v1",
        "--base", busybox_multi_ref, "--platform", ",".join(PLATFORMS),
    )
    index = json.loads((env.root / "layout" / "blobs" / "sha256" / ref.split("@sha256:")[1]).read_bytes())
    manifests = {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"] for m in index["manifests"]}
    assert sorted(manifests) == sorted(PLATFORMS)

    # The pull below fetches what the node's platform needs and nothing of the other's (the busybox binary is the
    # same in both, so only the content store tells which manifest was taken).
    node.pull(ref)
    content = node.content()
    assert manifests[here] in content
    assert not {d for p, d in manifests.items() if p != here} & set(content), "another platform was fetched"
    node.make_cold()
    pull_start_read_remove(node, ref, "multi-platform", source)


def test_a_scratch_image_fails_to_start_and_verify_said_so(
    source: Source, node: Containerd, registry: Registry, tmp_path: Path
) -> None:
    env = Env(tmp_path / "env")
    ref = packed_and_pushed(
        env, source.model, f"{registry.host}/runtime-tests/scratch-{uuid.uuid4().hex[:8]}:v1", "--base", "scratch"
    )

    verdict = env.run("verify", ref, "--mode", "modelcar", "--json")
    assert verdict.returncode == EXIT_CHECK_FAILED, explain(verdict)
    checks = {c["id"]: c for c in json.loads(verdict.stdout)["checks"]}
    assert checks["modelcar.tools"]["result"] == "fail", explain(verdict)
    assert "sh, ln, sleep, ls not on PATH" in checks["modelcar.tools"]["detail"]

    node.pull(ref)  # the image is a valid image: the node pulls it ...
    with pytest.raises(ContainerdError, match='exec: "sh": executable file not found'):
        node.run_modelcar(ref, "scratch")  # ... and the modelcar cannot start
    assert node.containers() == [] and node.tasks() == []
