"""The node section of the benchmark: what a Kubernetes node pays before a modelcar's files can be read.

For each kind of image of the same synthetic model (ocimodel's default, gzip, zstd, one layer holding everything,
and the seed's way: a Containerfile ``FROM busybox`` + ``COPY model /models`` built and pushed by Debian's buildah)
it measures, against a private containerd (tests/harness/containerd.py) and a local docker-registry:

- the cold pull: ``ctr -n k8s.io images pull`` after every image, blob and snapshot was removed, with 3 layers
  fetched at a time as the CRI plugin does by default (``ctr`` alone sets no bound); ``ctr`` of containerd 1.6
  fetches every layer first, then unpacks them in order, and prints how long the unpack took, so the pull splits
  into fetch and unpack;
- the start of the modelcar exactly as KServe starts it, until its ``/mnt/models`` link exists;
- one read of every model file through ``/proc/<pid>/root/models``, as the serving container reads it;
- the floors: every layer blob fetched with curl (3 at a time) to /dev/null, and the same blobs untarred in layer
  order with GNU tar (through ``gzip -dc`` or ``zstd -dc``), then ``sync``.

CPU is reported for ``ctr`` (it does the fetching), containerd (it hashes, stores and unpacks) and the registry,
which all share the machine's cores.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tests.harness.containerd import CRI_MAX_CONCURRENT_DOWNLOADS, SNAPSHOTTER, Containerd, run_containerd
from tests.harness.registry import Registry

#: The node model is cut into this many weight shards whatever its size, so the layer count (and so what 3
#: concurrent downloads can do with it) is the same at every size; a 4 GiB model gets 1 GiB shards.
NODE_SHARDS = 4
PULL_TIMEOUT_S = 3600.0
READ_CHUNK = 1 << 20

#: ``ocimodel build`` with every model file in one layer: what the per-shard split buys, measured.
ONE_LAYER = """
import sys
import ocimodel.registry.build
from ocimodel.layout.plan import LayerPlan
ocimodel.registry.build.plan_layers = lambda files, *args: [LayerPlan(tuple(sorted(files, key=lambda f: f.sort_key)))]
from ocimodel.cli import main
sys.argv[0] = "ocimodel"
main()
"""

CURL_GET = r"""
set -eu
printf '%s\n' "$@" | xargs -P 3 -I{} curl -sS -f -o /dev/null {}
"""


@dataclass(frozen=True)
class Image:
    name: str
    ref: str
    layers: tuple[tuple[str, str, int], ...]  # media type, digest, size

    @property
    def stored(self) -> int:
        return sum(size for _, _, size in self.layers)


@dataclass(frozen=True)
class Pull:
    wall: float
    unpack: float
    ctr_cpu: float
    containerd_cpu: float
    registry_cpu: float

    @property
    def fetch(self) -> float:
        return self.wall - self.unpack


@dataclass(frozen=True)
class NodeResult:
    image: Image
    pulls: tuple[Pull, ...]
    start: float
    read: float

    def median(self, field: Callable[[Pull], float]) -> float:
        return statistics.median(field(p) for p in self.pulls)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_GO_DURATION = re.compile(r"([\d.]+)(h|ms|µs|us|ns|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}


def go_duration(text: str) -> float:
    """``1m2.5s`` → 62.5 (how ``ctr`` prints a ``time.Duration``)."""
    return sum(float(n) * _UNITS[u] for n, u in _GO_DURATION.findall(text))


def unpack_seconds(output: str) -> float:
    """``ctr images pull`` ends with ``unpacking <platform> <digest>...`` then ``done: <duration>``."""
    match = re.search(r"^done: (\S+)", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no unpack time in ctr's output:\n{output[-2000:]}")
    return go_duration(match.group(1))


def image_of(registry: Registry, name: str, repo: str, tag: str = "v1") -> Image:
    fetched = registry.fetch_manifest(repo, tag)
    manifest = json.loads(fetched.body)
    layers = tuple((d["mediaType"], d["digest"], int(d["size"])) for d in manifest["layers"])
    return Image(name, f"{registry.host}/{repo}@{fetched.digest}", layers)


class NodeBench:
    """Builds the images into one registry (timing the builds), then pulls and starts each in a private containerd."""

    def __init__(self, bench: Any, timed: Callable[..., Any], process_cpu: Callable[[int], float], model: Path,
                 runs: int) -> None:
        self.bench = bench
        self.timed = timed
        self.process_cpu = process_cpu
        self.model = model
        self.runs = runs
        self.builds: list[tuple[Any, Image]] = []

    # --- images ----------------------------------------------------------------------------------------------

    def build_images(self, registry: Registry) -> list[Image]:
        base = self.bench.base_ref(registry)
        ocimodel = [sys.executable, "-m", "ocimodel"]
        cases = [
            ("ocimodel default (uncompressed, a layer per shard)", "default", ocimodel, []),
            ("ocimodel --compression gzip", "gzip", ocimodel, ["--compression", "gzip"]),
            ("ocimodel --compression zstd", "zstd", ocimodel, ["--compression", "zstd"]),
            ("ocimodel, one layer for every file", "onelayer", [sys.executable, "-c", ONE_LAYER], []),
        ]
        images = []
        for name, repo, command, extra in cases:
            self.bench.fresh_cache()
            argv = [*command, "build", str(self.model), f"{registry.host}/bench/{repo}:v1", "--base", base, *extra]
            run = self.timed(f"{name}: ocimodel build", argv, self.bench.env, registry)
            image = image_of(registry, name, f"bench/{repo}")
            self.builds.append((run, image))
            images.append(image)
        images.append(self.buildah(registry, base))
        return images

    def buildah(self, registry: Registry, base: str) -> Image:
        """The seed's way: a Containerfile built by buildah (vfs, chroot isolation, no daemon), pushed gzipped."""
        root = self.bench.work / "buildah"
        context = self.bench.work / "buildah-context"
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(context, ignore_errors=True)
        (context / "model").mkdir(parents=True)
        for f in self.model.iterdir():
            os.link(f, context / "model" / f.name)  # the build context, without copying the weights
        (context / "Containerfile").write_text(f"FROM {base}\nCOPY model /models\n")
        buildah = ["buildah", "--root", str(root / "storage"), "--runroot", str(root / "run"),
                   "--storage-driver", "vfs"]
        name = "seed: Containerfile FROM busybox + COPY model /models, buildah"
        build = [*buildah, "bud", "--isolation", "chroot", "--tls-verify=false", "--layers=false", "-q",
                 "-f", str(context / "Containerfile"), "-t", "localhost/bench/seed:v1", str(context)]
        push = [*buildah, "push", "--tls-verify=false", "-q", "localhost/bench/seed:v1",
                f"docker://{registry.host}/bench/seed:v1"]
        built = self.timed(f"{name}: buildah bud", build, None, registry)
        pushed = self.timed(f"{name}: buildah push", push, None, registry)
        both = type(built)(f"{name}: buildah bud + push", built.wall + pushed.wall, built.cpu + pushed.cpu,
                           max(built.rss_mib, pushed.rss_mib), built.written_mib + pushed.written_mib,
                           (built.registry_cpu or 0) + (pushed.registry_cpu or 0))
        image = image_of(registry, "seed: FROM busybox + COPY, buildah (gzip)", "bench/seed")
        self.builds += [(built, image), (pushed, image), (both, image)]
        subprocess.run([*buildah, "rmi", "--all", "--force"], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(context, ignore_errors=True)
        return image

    # --- the node --------------------------------------------------------------------------------------------

    def pull(self, node: Containerd, registry: Registry, image: Image, concurrency: int) -> Pull:
        node.make_cold()
        process_cpu = self.process_cpu
        before = (children_cpu(), process_cpu(node.process.pid), process_cpu(registry.process.pid))
        started = time.monotonic()
        result = node.ctr("images", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER,
                          "--max-concurrent-downloads", str(concurrency), image.ref, timeout=PULL_TIMEOUT_S)
        wall = time.monotonic() - started
        return Pull(wall, unpack_seconds(result.stdout), children_cpu() - before[0],
                    process_cpu(node.process.pid) - before[1], process_cpu(registry.process.pid) - before[2])

    def start_and_read(self, node: Containerd, image: Image) -> tuple[float, float]:
        with node.modelcar(image.ref, "bench") as car:
            started = time.monotonic()
            read = 0
            for directory, _dirs, files in os.walk(car.models):
                for name in files:
                    with open(Path(directory) / name, "rb", buffering=0) as f:
                        while chunk := f.read(READ_CHUNK):
                            read += len(chunk)
            if read < sum(f.stat().st_size for f in self.model.iterdir()):
                raise RuntimeError(f"{image.name}: read {read} bytes through /proc, less than the model")
            return car.started_s, time.monotonic() - started

    def curl_floor(self, registry: Registry, image: Image) -> float:
        """Every layer blob fetched with curl, 3 at a time, to /dev/null: what the registry serves."""
        repo = image.ref.split("/", 1)[1].split("@")[0]
        urls = [f"http://{registry.host}/v2/{repo}/blobs/{digest}" for _, digest, _ in image.layers]
        started = time.monotonic()
        subprocess.run(["bash", "-c", CURL_GET, "get", *urls], check=True)
        return time.monotonic() - started

    def untar_floor(self, node: Containerd, image: Image) -> float:
        """The pulled blobs, still in containerd's content store, untarred in layer order by GNU tar, then sync."""
        blobs = node.workdir / "root" / "io.containerd.content.v1.content" / "blobs" / "sha256"
        target = self.bench.work / "untar-floor"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        into = shlex.quote(str(target))
        steps = []
        for media_type, digest, _ in image.layers:
            blob = shlex.quote(str(blobs / digest.split(":", 1)[1]))
            if media_type.endswith("gzip"):
                steps.append(f"gzip -dc {blob} | tar -x -C {into}")
            elif media_type.endswith("zstd"):
                steps.append(f"zstd -dcq {blob} | tar -x -C {into}")
            else:
                steps.append(f"tar -x -C {into} -f {blob}")
        started = time.monotonic()
        subprocess.run(["bash", "-o", "pipefail", "-c", " && ".join([*steps, "sync"])], check=True)
        elapsed = time.monotonic() - started
        shutil.rmtree(target)
        return elapsed

    def run(self) -> str:
        with self.bench.registry("node") as registry:
            images = self.build_images(registry)
            workdir = self.bench.work / "containerd"
            shutil.rmtree(workdir, ignore_errors=True)
            with run_containerd(workdir) as node:
                results, floors = [], []
                for image in images:
                    pulls = tuple(self.pull(node, registry, image, CRI_MAX_CONCURRENT_DOWNLOADS)
                                  for _ in range(self.runs))
                    start, read = self.start_and_read(node, image)
                    results.append(NodeResult(image, pulls, start, read))
                    floors.append((image, self.curl_floor(registry, image), self.untar_floor(node, image)))
                concurrency = [(n, self.pull(node, registry, images[0], n)) for n in (1, 3, 0)]
                node.make_cold()
        return self.report(results, concurrency, floors)

    # --- the report ------------------------------------------------------------------------------------------

    def report(self, results: list[NodeResult], concurrency: list[tuple[int, Pull]],
               floors: list[tuple[Image, float, float]]) -> str:
        size = sum(f.stat().st_size for f in self.model.iterdir())
        lines = [
            "| image | layers | stored MiB | cold pull s | fetch s | unpack s | modelcar start s | read /models s "
            "| ctr CPU s | containerd CPU s | registry CPU s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results:
            lines.append(
                f"| {r.image.name} | {len(r.image.layers)} | {r.image.stored / 2**20:.0f} | "
                f"{r.median(lambda p: p.wall):.1f} | {r.median(lambda p: p.fetch):.1f} | "
                f"{r.median(lambda p: p.unpack):.1f} | {r.start:.2f} | {r.read:.1f} | "
                f"{r.median(lambda p: p.ctr_cpu):.1f} | {r.median(lambda p: p.containerd_cpu):.1f} | "
                f"{r.median(lambda p: p.registry_cpu):.1f} |"
            )
        builds = ["| what | wall s | CPU s | registry CPU s | layers | stored MiB |", "|---|---:|---:|---:|---:|---:|"]
        for run, image in self.builds:
            builds.append(f"| {run.name} | {run.wall:.1f} | {run.cpu:.1f} | {run.registry_cpu or 0:.1f} | "
                          f"{len(image.layers)} | {image.stored / 2**20:.0f} |")
        conc = ["| `--max-concurrent-downloads` | cold pull s | fetch s | unpack s |", "|---|---:|---:|---:|"]
        for n, p in concurrency:
            label = f"{n}" + (" (ctr's default: no bound)" if n == 0 else " (the CRI plugin's default)" if n == 3 else "")
            conc.append(f"| {label} | {p.wall:.1f} | {p.fetch:.1f} | {p.unpack:.1f} |")
        floor = ["| image | curl GET of the layers, 3 at a time, s | untar of the layers in order + sync, s |",
                 "|---|---:|---:|"]
        for image, fetch, untar in floors:
            floor.append(f"| {image.name} | {fetch:.1f} | {untar:.1f} |")
        title = f"{size / 2**30:.1f} GiB synthetic model in {NODE_SHARDS} shards"
        runs = f"median of {self.runs} cold pulls" if self.runs > 1 else "one cold pull"
        return "\n".join([
            f"## node: cold pull, modelcar start and first read of /models: {title}", "",
            f"Pulled into a private containerd ({containerd_version()}, overlayfs) by `ctr -n k8s.io images pull "
            f"--max-concurrent-downloads {CRI_MAX_CONCURRENT_DOWNLOADS}`, {runs}, after removing every image, blob "
            "and snapshot; fetch = pull − the unpack time `ctr` prints.", "",
            *lines, "",
            "### building those images", "", *builds, "",
            f"### layers fetched at once (ocimodel default image)", "", *conc, "",
            "### floors: the registry serving the blobs, and GNU tar unpacking them", "", *floor, "",
        ])


def containerd_version() -> str:
    out = subprocess.run(["containerd", "--version"], capture_output=True, text=True, check=False).stdout.split()
    return f"containerd {out[2]}" if len(out) > 2 else "containerd"


def node_section(bench: Any, timed: Callable[..., Any], process_cpu: Callable[[int], float], model: Path,
                 runs: int) -> str:
    """``timed`` and ``process_cpu`` are bench.py's: every section measures commands and the registry alike."""
    return NodeBench(bench, timed, process_cpu, model, runs).run()
