"""Benchmarks: ocimodel against this machine's floors, on a synthetic bf16-like model.

Not a test: it prints (and optionally writes) a Markdown table of wall time, throughput, ratio to the floor,
CPU seconds and peak RSS. Run it from the repo root, e.g.::

    python3 bench/bench.py --size 4GiB --out docs/bench-pack.md

Every command runs under GNU ``/usr/bin/time`` so CPU and peak RSS are the kernel's numbers, not ours. Caches are
warm: the model is read once before timing, so the floors and ocimodel see the same page cache.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ocimodel.units import parse_size

SHARD = 1 << 30
CHUNK = 1 << 20


def make_model(root: Path, total: int, shard: int = SHARD) -> None:
    """bf16-like shards: random high bytes (barely compressible, like real weights) and a small config."""
    root.mkdir(parents=True, exist_ok=True)
    count = max(1, -(-total // shard))
    rng = random.Random(0)
    block = bytearray(rng.randbytes(CHUNK))
    for i in range(count):
        size = min(shard, total - i * shard)
        path = root / f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        if path.exists() and path.stat().st_size == size:
            continue
        with open(path, "wb") as f:
            written = 0
            while written < size:
                block[:8] = written.to_bytes(8, "little")
                block[8:16] = i.to_bytes(8, "little")
                n = min(CHUNK, size - written)
                f.write(block[:n])
                written += n
    (root / "config.json").write_text('{"architectures": ["Synthetic"], "torch_dtype": "bfloat16"}\n')
    (root / "tokenizer.json").write_text('{"version": "1.0"}\n')


def model_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@dataclass(frozen=True)
class Run:
    name: str
    wall: float
    cpu: float
    rss_mib: float
    command: str


def timed(name: str, argv: list[str], **kwargs: object) -> Run:
    fmt = "%e %U %S %M"
    with tempfile.NamedTemporaryFile("r") as out:
        subprocess.run(
            ["/usr/bin/time", "-f", fmt, "-o", out.name, *argv],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **kwargs,  # type: ignore[arg-type]
        )
        wall, user, system, rss = out.read().split()[-4:]
    return Run(name, float(wall), float(user) + float(system), int(rss) / 1024, shlex.join(argv))


FLOOR_SCRIPT = """
import hashlib, os, sys
from concurrent.futures import ThreadPoolExecutor
def one(src):
    h = hashlib.sha256()
    dst = os.path.join(sys.argv[1], os.path.basename(src))
    with open(src, "rb", buffering=0) as f, open(dst, "wb") as o:
        while b := f.read(1 << 20):
            h.update(b); o.write(b)
        o.flush(); os.fsync(o.fileno())
with ThreadPoolExecutor(int(sys.argv[2])) as ex:
    list(ex.map(one, sys.argv[3:]))
"""


def bench_pack(model: Path, work: Path, jobs: int) -> list[Run]:
    files = sorted(str(p) for p in model.iterdir() if p.is_file())
    runs = [timed("page-cache read (cat)", ["sh", "-c", f"cat {' '.join(map(shlex.quote, files))} > /dev/null"])]
    runs.append(timed("openssl dgst -sha256 (1 core)", ["openssl", "dgst", "-sha256", *files]))
    for threads in sorted({1, jobs}):
        out = work / f"floor-{threads}"
        out.mkdir()
        runs.append(
            timed(
                f"floor: read+sha256+write+fsync, {threads} thread(s)",
                [sys.executable, "-c", FLOOR_SCRIPT, str(out), str(threads), *files],
            )
        )
        shutil.rmtree(out)
    for compression in ("none",):
        layout = work / f"layout-{compression}"
        runs.append(
            timed(
                f"ocimodel pack (--compression {compression}, --jobs {jobs})",
                [sys.executable, "-m", "ocimodel", "pack", str(model), str(layout), "--base", "scratch",
                 "--compression", compression, "--jobs", str(jobs)],
            )
        )
        shutil.rmtree(layout)
    return runs


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


def bench_push(layout: Path, work: Path, jobs: int) -> list[Run]:
    """Each case gets a fresh registry, so nothing is skipped because an earlier case uploaded it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.harness.registry import run_registry

    blobs = [str(p) for p in (layout / "blobs" / "sha256").iterdir() if p.stat().st_size > 1 << 20]
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
    cases: list[tuple[str, list[str]]] = [
        ("registry ingest floor: curl PUT per blob, 2 at a time", ["bash", "-c", CURL_FLOOR, "floor", "{host}", *blobs]),
        (f"ocimodel push (chunked 128MiB, --jobs {jobs})",
         [sys.executable, "-m", "ocimodel", "push", str(layout), "{host}/bench/ocimodel:v1", "--jobs", str(jobs)]),
        (f"ocimodel push (whole-blob, --jobs {jobs})",
         [sys.executable, "-m", "ocimodel", "push", str(layout), "{host}/bench/ocimodel:v1", "--jobs", str(jobs),
          "--chunk-size", "0"]),
        ("skopeo copy --preserve-digests",
         ["skopeo", "--insecure-policy", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false",
          f"oci:{layout}:latest", "docker://{host}/bench/skopeo:v1"]),
    ]
    runs = []
    for i, (name, argv) in enumerate(cases):
        with run_registry(work / f"registry-{i}") as registry:
            runs.append(timed(name, [a.replace("{host}", registry.host) for a in argv], env=env))
        shutil.rmtree(work / f"registry-{i}")
    return runs


def table(runs: list[Run], size: int, floor_name: str) -> str:
    floor = next(r.wall for r in runs if r.name == floor_name)
    lines = [
        "| what | wall s | GB/s | × floor | CPU s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        rate = size / r.wall / 1e9 if r.wall else float("inf")
        lines.append(f"| {r.name} | {r.wall:.2f} | {rate:.2f} | {r.wall / floor:.2f} | {r.cpu:.1f} | {r.rss_mib:.0f} |")
    return "\n".join(lines)


def section(title: str, size: int, body: str, note: str) -> str:
    return f"## {title}: {size / 2**30:.1f} GiB synthetic model\n\n{body}\n\n{note}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="4GiB", help="synthetic model size (default 4GiB)")
    parser.add_argument("--work", type=Path, default=Path("bench/out"), help="scratch directory (kept: reused)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument("--only", choices=("pack", "push"), help="run one part only")
    args = parser.parse_args()

    size = parse_size(args.size)
    args.work = args.work.resolve()
    model = args.work / f"model-{size}"
    make_model(model, size)
    total = model_bytes(model)
    subprocess.run(["sh", "-c", f"cat {shlex.quote(str(model))}/* > /dev/null"], check=True)
    sections = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        if args.only in (None, "pack"):
            runs = bench_pack(model, Path(tmp), args.jobs)
            floor_name = f"floor: read+sha256+write+fsync, {args.jobs} thread(s)"
            sections.append(
                section("pack", total, table(runs, total, floor_name),
                        f"× floor is relative to *{floor_name}*: the same bytes read once, hashed once, written once.")
            )
        if args.only in (None, "push"):
            layout = Path(tmp) / "push-layout"
            subprocess.run([sys.executable, "-m", "ocimodel", "pack", str(model), str(layout), "--base", "scratch"],
                           check=True, capture_output=True)
            runs = bench_push(layout, Path(tmp), 4)
            floor_name = runs[0].name
            sections.append(
                section("push to a fresh local docker-registry", total, table(runs, total, floor_name),
                        f"× floor is relative to *{floor_name}*: the registry's own ingest limit.")
            )
    report = "\n".join(
        [f"`{shlex.join(['python3', 'bench/bench.py', *sys.argv[1:]])}` on {time.strftime('%Y-%m-%d')}, "
         f"{os.cpu_count()} CPUs, warm page cache", "", *sections]
    )
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
