"""Benchmarks: ocimodel against this machine's floors and against peer tools, on a synthetic bf16-like model.

Not a test: it prints (and optionally writes) Markdown tables of wall time, throughput, ratio to a floor, CPU
seconds, peak RSS and bytes written to disk. Run it from the repo root on a quiet machine, e.g.::

    python3 bench/bench.py --size 4GiB --out docs/benchmarks.md
    python3 bench/bench.py --only scaling --sizes 1GiB,4GiB,16GiB
    sudo .venv/bin/python bench/bench.py --only node --size 4GiB   # root, containerd, runc, buildah: bench/node.py

Every command runs under GNU ``/usr/bin/time``, so CPU, peak RSS and disk writes are the kernel's numbers. Caches
are warm: the model is read once before timing, so every contender sees the same page cache. Each registry case
gets a fresh Debian ``docker-registry`` on 127.0.0.1 (the tests' harness), so nothing is skipped because an earlier
case uploaded it. olot (PyPI) is installed into a venv under the work directory on first use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ocimodel.units import parse_size  # noqa: E402
from tests.harness.busybox import build_busybox_layout, push_layout_with_skopeo  # noqa: E402
from tests.harness.registry import Registry, run_registry  # noqa: E402

SHARD = 1 << 30
CHUNK = 1 << 20
OCIMODEL = [sys.executable, "-m", "ocimodel"]


def _bf16_high_bytes(sigma: float = 0.02) -> bytes:
    """A table that turns a uniform random byte into the high byte of a bf16 weight drawn from N(0, sigma).

    That byte holds the sign and the top seven exponent bits, so it takes a handful of values; the low byte (the
    last exponent bit and the mantissa) is near uniform. Real bf16 checkpoints are like that, which is why gzip and
    zstd take 20-22 % off them, and no more (docs/benchmarks.md measures this generator against numpy's normal).
    """
    weights = []
    for e7 in range(128):
        lo, hi = 2.0 ** (2 * e7 - 127), 2.0 ** (2 * e7 + 2 - 127)
        weights.append(math.erf(hi / (sigma * math.sqrt(2))) - math.erf(lo / (sigma * math.sqrt(2))))
    total, table, cumulative = sum(weights), bytearray(), 0.0
    for e7, w in enumerate(weights):
        cumulative += w / total
        table += bytes([e7]) * (round(cumulative * 128) - len(table))
    table = table[:128].ljust(128, b"\x3f")
    return bytes(table) + bytes(b | 0x80 for b in table)


BF16_HIGH = _bf16_high_bytes()


def make_model(root: Path, total: int, shard: int = SHARD) -> None:
    """bf16-like shards (barely compressible, like real weights, never repeating) and small config files."""
    root.mkdir(parents=True, exist_ok=True)
    count = max(1, -(-total // shard))
    for i in range(count):
        size = min(shard, total - i * shard)
        path = root / f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        if path.exists() and path.stat().st_size == size:
            continue
        rng = random.Random(i)
        block = bytearray(CHUNK)
        with open(path.with_suffix(".partial"), "wb") as f:
            written = 0
            while written < size:
                block[0::2] = rng.randbytes(CHUNK // 2)
                block[1::2] = rng.randbytes(CHUNK // 2).translate(BF16_HIGH)
                n = min(CHUNK, size - written)
                f.write(block[:n])
                written += n
        path.with_suffix(".partial").rename(path)
    (root / "config.json").write_text('{"architectures": ["Synthetic"], "torch_dtype": "bfloat16"}\n')
    (root / "tokenizer.json").write_text('{"version": "1.0"}\n')


def model_dir(work: Path, size: int, shards: int | None = None) -> Path:
    """Where the synthetic model of this size lives (``bf16`` in the name: older runs' random models differ)."""
    return work / (f"model-bf16-{size}" + (f"-{shards}shards" if shards else ""))


def model_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.iterdir() if p.is_file())


@dataclass(frozen=True)
class Run:
    name: str
    wall: float
    cpu: float
    rss_mib: float
    written_mib: float
    #: CPU seconds the registry spent meanwhile: on one machine, client and registry share the cores.
    registry_cpu: float | None = None


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(name: str, argv: list[str], env: dict[str, str] | None = None, registry: Registry | None = None) -> Run:
    before = process_cpu(registry.process.pid) if registry else 0.0
    with tempfile.NamedTemporaryFile("r") as out:
        subprocess.run(
            ["/usr/bin/time", "-f", "%e %U %S %M %O", "-o", out.name, *argv],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        wall, user, system, rss, blocks = out.read().split()[-5:]
    registry_cpu = process_cpu(registry.process.pid) - before if registry else None
    return Run(name, float(wall), float(user) + float(system), int(rss) / 1024, int(blocks) * 512 / 2**20,
               registry_cpu)


HASH_FLOOR = """
import hashlib, os, sys
from concurrent.futures import ThreadPoolExecutor
out = sys.argv[1]
def one(src):
    h = hashlib.sha256()
    dst = open(os.path.join(out, os.path.basename(src)), "wb") if out != "-" else None
    with open(src, "rb", buffering=0) as f:
        while b := f.read(1 << 20):
            h.update(b)
            if dst: dst.write(b)
    if dst: dst.flush(); os.fsync(dst.fileno()); dst.close()
with ThreadPoolExecutor(int(sys.argv[2])) as ex:
    list(ex.map(one, sys.argv[3:]))
"""

CURL_FLOOR = r"""
set -eu
host=$1; shift
put() {
  file=$1; digest=sha256:$(basename "$file")
  loc=$(curl -sS -D - -o /dev/null -X POST "http://$host/v2/bench/floor/blobs/uploads/" | tr -d '\r' |
        sed -n 's/^[Ll]ocation: //p')
  case $loc in http*) ;; *) loc="http://$host$loc" ;; esac
  curl -sS -f -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' -T "$file" "$loc&digest=$digest"
}
export -f put; export host
printf '%s\n' "$@" | xargs -P 2 -I{} bash -c 'put {}'
"""


def hash_floor(model: Path, threads: int) -> Run:
    return timed(f"hash floor: read + sha256, {threads} thread(s)",
                 [sys.executable, "-c", HASH_FLOOR, "-", str(threads), *model_files(model)])


class Bench:
    def __init__(self, work: Path, jobs: int) -> None:
        self.work = work
        self.jobs = jobs
        self.env = {**os.environ, "XDG_CACHE_HOME": str(work / "xdg-cache")}
        self.busybox = work / "busybox-layout"
        if not self.busybox.exists():
            build_busybox_layout(self.busybox)

    def fresh_cache(self) -> None:
        shutil.rmtree(self.work / "xdg-cache", ignore_errors=True)

    @contextmanager
    def registry(self, name: str) -> Iterator[Registry]:
        """A fresh registry with the test busybox base in it (pushed untimed), removed afterwards."""
        path = self.work / f"registry-{name}"
        shutil.rmtree(path, ignore_errors=True)
        with run_registry(path) as registry:
            push_layout_with_skopeo(self.busybox, registry.host, "library/busybox", "latest")
            yield registry
        shutil.rmtree(path, ignore_errors=True)

    def base_ref(self, registry: Registry) -> str:
        digest = registry.fetch_manifest("library/busybox", "latest").digest
        return f"{registry.host}/library/busybox@{digest}"

    # --- sections -----------------------------------------------------------------------------------------------

    def pack(self, model: Path) -> list[Run]:
        files = model_files(model)
        runs = [
            timed("page-cache read (cat)", ["sh", "-c", f"cat {shlex.join(files)} > /dev/null"]),
            timed("openssl dgst -sha256 (1 core)", ["openssl", "dgst", "-sha256", *files]),
            hash_floor(model, self.jobs),
        ]
        out = self.work / "floor-out"
        out.mkdir(exist_ok=True)
        runs.append(timed(f"floor: read + sha256 + write + fsync, {self.jobs} thread(s)",
                          [sys.executable, "-c", HASH_FLOOR, str(out), str(self.jobs), *files]))
        shutil.rmtree(out)
        layout = self.work / "pack-layout"
        self.fresh_cache()
        runs.append(timed(f"ocimodel pack (--jobs {self.jobs})",
                          [*OCIMODEL, "pack", str(model), str(layout), "--base", "scratch", "--jobs", str(self.jobs)],
                          self.env))
        runs.append(timed("ocimodel pack again (layers cached)",
                          [*OCIMODEL, "pack", str(model), str(layout), "--base", "scratch"], self.env))
        shutil.rmtree(layout)
        return runs

    def push(self, model: Path) -> list[Run]:
        layout = self.work / "push-layout"
        subprocess.run([*OCIMODEL, "pack", str(model), str(layout), "--base", "scratch"], check=True,
                       capture_output=True, env=self.env)
        blobs = [str(p) for p in (layout / "blobs" / "sha256").iterdir() if p.stat().st_size > CHUNK]
        cases: list[tuple[str, Callable[[Registry], list[str]]]] = [
            ("registry ingest floor: curl PUT per blob, 2 at a time",
             lambda r: ["bash", "-c", CURL_FLOOR, "floor", r.host, *blobs]),
            ("ocimodel push (chunked 128MiB, --jobs 4)",
             lambda r: [*OCIMODEL, "push", str(layout), f"{r.host}/bench/ocimodel:v1"]),
            ("ocimodel push (whole-blob, --jobs 4)",
             lambda r: [*OCIMODEL, "push", str(layout), f"{r.host}/bench/ocimodel:v1", "--chunk-size", "0"]),
            ("skopeo copy --preserve-digests",
             lambda r: ["skopeo", "--insecure-policy", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false",
                        f"oci:{layout}:latest", f"docker://{r.host}/bench/skopeo:v1"]),
        ]
        runs = []
        for i, (name, argv) in enumerate(cases):
            with self.registry(f"push-{i}") as registry:
                self.fresh_cache()
                runs.append(timed(name, argv(registry), self.env, registry))
        shutil.rmtree(layout)
        return runs

    def build(self, model: Path) -> list[Run]:
        runs = [hash_floor(model, self.jobs)]
        with self.registry("build-floor") as registry:
            blobs = model_files(model)
            staged = self.work / "staged"
            staged.mkdir(exist_ok=True)
            # The curl floor needs files named by digest; link them (no copy) under those names.
            for f in blobs:
                digest = subprocess.run(["sha256sum", f], capture_output=True, text=True, check=True).stdout.split()[0]
                target = staged / digest
                if not target.exists():
                    os.link(f, target)
            runs.append(timed("registry ingest floor: curl PUT per file, 2 at a time",
                              ["bash", "-c", CURL_FLOOR, "floor", registry.host, *map(str, staged.iterdir())],
                              registry=registry))
            shutil.rmtree(staged)
        key = self.work / "model-signing.pem"
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)], check=True)
        for name, extra in (
            ("ocimodel build (one pass)", []),
            ("ocimodel build --sign-key (one pass, each file hashed on the way)", ["--sign-key", str(key)]),
            ("ocimodel build --two-pass", ["--two-pass"]),
        ):
            with self.registry(extra[0].strip("-") if extra else "pass") as registry:
                self.fresh_cache()
                argv = [*OCIMODEL, "build", str(model), f"{registry.host}/bench/build:v1",
                        "--base", self.base_ref(registry), *extra]
                runs.append(timed(name, argv, self.env, registry))
                if not extra:
                    runs.append(timed("ocimodel build again (unchanged: cached digests, HEAD only)", argv, self.env,
                                      registry))
        with self.registry("pack-push") as registry:
            self.fresh_cache()
            layout = self.work / "pp-layout"
            script = (f"{shlex.join([*OCIMODEL, 'pack', str(model), str(layout), '--base', self.base_ref(registry)])}"
                      f" && {shlex.join([*OCIMODEL, 'push', str(layout), f'{registry.host}/bench/pp:v1'])}")
            runs.append(timed("ocimodel pack + ocimodel push", ["sh", "-c", script], self.env, registry))
            shutil.rmtree(layout)
        for compression in ("gzip", "zstd"):
            with self.registry(f"build-{compression}") as registry:
                self.fresh_cache()
                runs.append(timed(f"ocimodel build --compression {compression}",
                                  [*OCIMODEL, "build", str(model), f"{registry.host}/bench/build:{compression}",
                                   "--base", self.base_ref(registry), "--compression", compression],
                                  self.env, registry))
            with self.registry(f"pack-push-{compression}") as registry:
                self.fresh_cache()
                layout = self.work / "pp-layout"
                pack = [*OCIMODEL, "pack", str(model), str(layout), "--base", self.base_ref(registry),
                        "--compression", compression]
                script = f"{shlex.join(pack)} && {shlex.join([*OCIMODEL, 'push', str(layout), f'{registry.host}/bench/pp:v1'])}"
                runs.append(timed(f"ocimodel pack --compression {compression} + ocimodel push", ["sh", "-c", script],
                                  self.env, registry))
                shutil.rmtree(layout)
        olot = self.olot()
        with self.registry("olot") as registry:
            layout = self.work / "olot-layout"
            shutil.rmtree(layout, ignore_errors=True)
            script = " && ".join([
                shlex.join(["cp", "-r", str(self.busybox), str(layout)]),
                shlex.join([olot, "--root-dir", str(model), str(layout), *model_files(model)]),
                shlex.join(["skopeo", "--insecure-policy", "copy", "-q", "--preserve-digests",
                            "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{registry.host}/bench/olot:v1"]),
            ])
            runs.append(timed("olot + skopeo copy (the closest peer)", ["sh", "-c", script], registry=registry))
            shutil.rmtree(layout)
        return runs

    def olot(self) -> str:
        venv = self.work / "olot-venv"
        if not (venv / "bin" / "olot").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "olot"], check=True)
        return str(venv / "bin" / "olot")

    def scaling(self, sizes: list[int]) -> list[tuple[int, Run]]:
        rows = []
        for size in sizes:
            model = model_dir(self.work, size)
            make_model(model, size)
            subprocess.run(["sh", "-c", f"cat {shlex.quote(str(model))}/* > /dev/null"], check=True)
            with self.registry(f"scale-{size}") as registry:
                self.fresh_cache()
                rows.append((size, timed(f"ocimodel build, {size / 2**30:.0f} GiB",
                                         [*OCIMODEL, "build", str(model), f"{registry.host}/bench/scale:v1",
                                          "--base", self.base_ref(registry)], self.env, registry)))
        return rows


CODEC_SAMPLE = 64 << 20


def codec_candidates() -> dict[str, Callable[[], object]]:
    """Deflate and zstd compressors a gzip or zstd layer could use; those not installed are left out."""
    import zlib

    import zstandard

    found: dict[str, Callable[[], object]] = {
        "zlib level 6 (Python's zlib: the gzip of ocimodel before)": lambda: zlib.compressobj(6, zlib.DEFLATED, -15),
        "zlib level 1": lambda: zlib.compressobj(1, zlib.DEFLATED, -15),
    }
    try:
        from isal import isal_zlib

        found["ISA-L level 1 (python-isal: ocimodel's gzip)"] = lambda: isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)
        found["ISA-L level 2"] = lambda: isal_zlib.compressobj(2, isal_zlib.DEFLATED, -15)
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng

        found["zlib-ng level 2"] = lambda: zlib_ng.compressobj(2, zlib_ng.DEFLATED, -15)
        found["zlib-ng level 6"] = lambda: zlib_ng.compressobj(6, zlib_ng.DEFLATED, -15)
    except ImportError:
        pass
    found["zstd level 3 (ocimodel's zstd)"] = lambda: zstandard.ZstdCompressor(level=3).compressobj()
    return found


def codecs(work: Path) -> str:
    """Ratio and single-core speed of each codec on bf16-like weights, and what 16 MiB spans cost in size."""
    sample_dir = work / "codec-sample"
    make_model(sample_dir, CODEC_SAMPLE, CODEC_SAMPLE)
    data = (sample_dir / "model-00001-of-00001.safetensors").read_bytes()
    lines = ["| codec | output / input | MB/s per core |", "|---|---:|---:|"]
    for name, make in codec_candidates().items():
        compressor = make()
        started, out = time.process_time(), 0
        for i in range(0, len(data), CHUNK):
            out += len(compressor.compress(data[i : i + CHUNK]))  # type: ignore[attr-defined]
        out += len(compressor.flush())  # type: ignore[attr-defined]
        lines.append(f"| {name} | {out / len(data):.4f} | {len(data) / (time.process_time() - started) / 1e6:.0f} |")
    from ocimodel.layout import tarlayer

    spans = ["| layer codec | spans of 16 MiB | one span | cost |", "|---|---:|---:|---:|"]
    member = [tarlayer.Member("models"), tarlayer.Member("models/w.safetensors", sample_dir / "model-00001-of-00001.safetensors", len(data))]
    for compression in ("gzip", "zstd"):
        sizes = []
        for span in (16 << 20, 1 << 40):
            tarlayer.SPAN = span
            sizes.append(tarlayer.encode_layer(tarlayer.tar_chunks(member), compression, tarlayer.Discard()).size)
        tarlayer.SPAN = 16 << 20
        spans.append(f"| {compression} | {sizes[0]} B | {sizes[1]} B | {(sizes[0] - sizes[1]) / sizes[1]:+.4%} |")
    return "\n".join([f"## codecs on {CODEC_SAMPLE >> 20} MiB of bf16-like weights", "", *lines, "", *spans, ""])


def table(runs: list[Run], size: int, floor: Run) -> str:
    with_registry = any(r.registry_cpu is not None for r in runs)
    head = "| what | wall s | GB/s | × floor | CPU s | peak RSS MiB | disk written MiB |"
    lines = [head + (" registry CPU s |" if with_registry else ""),
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if with_registry else "")]
    for r in runs:
        rate = size / r.wall / 1e9 if r.wall else float("inf")
        line = (f"| {r.name} | {r.wall:.2f} | {rate:.2f} | {r.wall / floor.wall:.2f} | {r.cpu:.1f} | "
                f"{r.rss_mib:.0f} | {r.written_mib:.0f} |")
        if with_registry:
            line += f" {r.registry_cpu:.1f} |" if r.registry_cpu is not None else " |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="4GiB", help="synthetic model size (default 4GiB)")
    parser.add_argument("--sizes", default="1GiB,4GiB,16GiB", help="model sizes for --only scaling")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "out", help="scratch directory (models reused)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument("--only", choices=("pack", "push", "build", "scaling", "node", "codecs"),
                        help="run one part only")
    parser.add_argument("--node-runs", type=int, default=2, help="cold pulls per image in the node section")
    args = parser.parse_args()

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(work, args.jobs)
    size = parse_size(args.size)
    model = model_dir(work, size)
    if args.only in (None, "pack", "push", "build"):
        make_model(model, size)
        total = sum(p.stat().st_size for p in model.iterdir())
        subprocess.run(["sh", "-c", f"cat {shlex.quote(str(model))}/* > /dev/null"], check=True)
        title = f"{total / 2**30:.1f} GiB synthetic model"
    sections = []
    if args.only in (None, "pack"):
        runs = bench.pack(model)
        sections.append(f"## pack: {title}\n\n{table(runs, total, runs[3])}\n\n× floor: relative to *{runs[3].name}*, "
                        "the same bytes read once, hashed once, written and fsynced once.\n")
    if args.only in (None, "push"):
        runs = bench.push(model)
        sections.append(f"## push to a fresh local docker-registry: {title}\n\n{table(runs, total, runs[0])}\n\n"
                        f"× floor: relative to *{runs[0].name}*, the registry's own ingest limit.\n")
    if args.only in (None, "build"):
        runs = bench.build(model)
        floor = max(runs[:2], key=lambda r: r.wall)
        # Client and registry run on the same cores here: hashing on both sides has to fit in them together.
        shared = (runs[0].cpu + (runs[1].registry_cpu or 0)) / (os.cpu_count() or 1)
        one_pass = next(r for r in runs if r.name == "ocimodel build (one pass)")
        sections.append(f"## build: model files to a fresh local docker-registry, busybox base: {title}\n\n"
                        f"{table(runs, total, floor)}\n\n× floor: relative to the slower of the hash floor and the "
                        f"registry's ingest limit (*{floor.name}*). Both run on the same {os.cpu_count()} cores "
                        f"here, so the CPU both need (the hash floor's {runs[0].cpu:.1f} s plus the registry's "
                        f"{runs[1].registry_cpu or 0:.1f} s while ingesting) gives a shared floor of {shared:.1f} s; "
                        f"one-pass build is {one_pass.wall / max(shared, floor.wall):.2f}× the larger of the two.\n")
    if args.only in (None, "codecs"):
        sections.append(codecs(work))
    if args.only == "node":  # root, containerd and half an hour: only when asked for
        from node import NODE_SHARDS, node_section

        node_model = model_dir(work, size, NODE_SHARDS)
        make_model(node_model, size, -(-size // NODE_SHARDS))
        subprocess.run(["sh", "-c", f"cat {shlex.quote(str(node_model))}/* > /dev/null"], check=True)
        sections.append(node_section(bench, timed, process_cpu, node_model, args.node_runs))
    if args.only == "scaling":
        rows = bench.scaling([parse_size(s) for s in args.sizes.split(",")])
        lines = ["| model | wall s | s per GiB | CPU s | peak RSS MiB | disk written MiB |", "|---|---:|---:|---:|---:|---:|"]
        for s, r in rows:
            lines.append(f"| {s / 2**30:.0f} GiB | {r.wall:.1f} | {r.wall / (s / 2**30):.2f} | {r.cpu:.1f} | "
                         f"{r.rss_mib:.0f} | {r.written_mib:.0f} |")
        sections.append("## build time against model size\n\n" + "\n".join(lines) + "\n")
    command = shlex.join(["python3", "bench/bench.py", *sys.argv[1:]])
    report = "\n".join([f"`{command}` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs "
                        f"({json.dumps(os.uname().machine)}), warm page cache.", "", *sections])
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
