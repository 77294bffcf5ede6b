"""Compressed layers cost one compression to send, whatever the chunk count; a resume costs at most one span more.

``build --compression`` compresses a layer once to learn its size and digest, then sends it in chunks. Each chunk
must continue the compression where the previous one stopped: compressing again from the start of the layer for
every chunk costs the square of the chunk count (the 4 GiB gzip build of issue 11 was stopped after 26 CPU-minutes).
These tests count the model bytes read (every compression reads its input from the files once) and check that the
spans a resume restarts from give exactly the bytes ``pack`` writes, which every reader reads.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zstandard

import ocimodel.layout.tarlayer as tarlayer
from ocimodel.layout.descriptor import OCI_LAYER_GZIP
from ocimodel.layout.digestcache import layer_key
from ocimodel.layout.plan import LayerPlan, plan_layers
from ocimodel.layout.tarlayer import EncodedLayer, Member, encode_layer, tar_chunks, tar_size
from ocimodel.source import Filters
from ocimodel.source.local import LocalSource
from tests.harness.registry_stub import Fault, RegistryStub
from tests.harness.build import CHUNK, Builder, assert_holds, layer_digests, make_model, pack_model
from tests.harness.stub_log import blob_requests, content_range

KiB = 1024


class FileReads:
    """Bytes read from each model file by tarlayer (through ``open``, which a module global shadows)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes: dict[Path, int] = {}
        real_open = open
        reads = self

        class Counted:
            def __init__(self, path: Path, f: Any) -> None:
                self._path, self._f = path, f

            def read(self, n: int = -1) -> bytes:
                data: bytes = self._f.read(n)
                reads.bytes[self._path] = reads.bytes.get(self._path, 0) + len(data)
                return data

            def __getattr__(self, name: str) -> Any:
                return getattr(self._f, name)

            def __enter__(self) -> Counted:
                return self

            def __exit__(self, *exc: object) -> None:
                self._f.close()

        def opened(path: Any, *args: Any, **kwargs: Any) -> Any:
            return Counted(Path(path).resolve(), real_open(path, *args, **kwargs))

        monkeypatch.setattr(tarlayer, "open", opened, raising=False)


@pytest.fixture
def file_reads(monkeypatch: pytest.MonkeyPatch) -> FileReads:
    return FileReads(monkeypatch)


def big_model(tmp_path: Path, chunks: int) -> Path:
    """One shard of ``chunks`` upload chunks and a bit: one layer, sent in ``chunks + 1`` PATCHes."""
    return make_model(tmp_path / "model", shards=(chunks * CHUNK + 777,), small=False)


def the_plan(source: Path) -> LayerPlan:
    (plan,) = plan_layers(LocalSource.from_path(source).files(Filters()))
    return plan


def shard_file(source: Path) -> Path:
    (found,) = source.glob("*.safetensors")
    return found.resolve()


# --- a build reads and compresses each layer twice, however many chunks it is sent in ----------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_chunked_compressed_build_compresses_each_layer_twice(
    stub: RegistryStub, tmp_path: Path, file_reads: FileReads, compression: str
) -> None:
    source = big_model(tmp_path, chunks=16)
    size = shard_file(source).stat().st_size
    result = Builder(stub)(source, compression=compression, use_cache=False)
    (layer,) = layer_digests(stub, result)
    patches = [r for r in blob_requests(stub, layer, chunked=True) if r.method == "PATCH"]
    assert len(patches) == 17 and all(r.status == 202 for r in patches)
    # Once to learn the layer's size and digest, once to send it: recompressing from zero per chunk reads ~9x.
    assert file_reads.bytes[shard_file(source)] == 2 * size
    assert_holds(stub, result, pack_model(source, tmp_path / "layout", compression=compression))


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_resume_compresses_again_from_the_span_before_the_cut_only(
    stub: RegistryStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    span = 32 * KiB
    monkeypatch.setattr(tarlayer, "SPAN", span)
    source = big_model(tmp_path, chunks=12)
    size = tar_size(the_plan(source).members())
    counted = SpanInput(monkeypatch)
    stub.behaviour.faults.append(Fault(reset_after=5000, method="PATCH", nth=9))
    result = Builder(stub)(source, compression=compression, use_cache=False)
    assert stub.behaviour.faults[0].fired == 1
    (layer,) = layer_digests(stub, result)
    sent = blob_requests(stub, layer, chunked=True)
    broken = next(i for i, r in enumerate(sent) if r.method == "PATCH" and r.status is None)
    cut = 8 * CHUNK + 5000
    assert content_range(sent[broken + 2])[0] == cut  # resumed where the registry said, in the same session
    # Beyond the two passes, only what lies between the span start before the cut and where the broken chunk's
    # stream had got to was compressed again: at most the broken chunk and a span (random data barely shrinks).
    extra = counted.total - 2 * size
    assert 0 < extra <= CHUNK + 2 * span, extra
    assert_holds(stub, result, pack_model(source, tmp_path / "layout", compression=compression))


# --- EncodedLayer: any range, any order, the bytes encode_layer writes --------------------------------------------


def members_of(tmp_path: Path, sizes: tuple[int, ...] = (300 * KiB + 17, 5 * KiB, 0)) -> list[Member]:
    """Files of random bytes and bf16-like bytes (compressible), with a tar header every so often."""
    root = tmp_path / "files"
    root.mkdir()
    members = [Member("models")]
    for i, size in enumerate(sizes):
        path = root / f"f{i}.bin"
        data = bytearray(os.urandom(size))
        data[1::2] = bytes(b & 0x3F for b in data[1::2])  # a skewed high byte, like bf16 exponents
        path.write_bytes(data)
        members.append(Member(f"models/f{i}.bin", path, size))
    return members


def packed_blob(members: list[Member], compression: str) -> bytes:
    sink = io.BytesIO()
    encode_layer(tar_chunks(members, 4099), compression, sink)
    return sink.getvalue()


def read(layer: EncodedLayer, start: int, length: int) -> bytes:
    return b"".join(layer.read(start, length))


class SpanInput:
    """Tar bytes given to each codec's span compressors: what compressing costs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.total = 0
        counter = self

        def counting(make: Any) -> Any:
            def span() -> Any:
                inner = make()

                class Counted:
                    def compress(self, data: bytes) -> bytes:
                        counter.total += len(data)
                        return inner.compress(data)  # type: ignore[no-any-return]

                    def flush(self) -> bytes:
                        return inner.flush()  # type: ignore[no-any-return]

                return Counted()

            return span

        codecs = {name: replace(c, span=counting(c.span)) for name, c in tarlayer._CODECS.items()}
        monkeypatch.setattr(tarlayer, "_CODECS", codecs)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("span", [16 * KiB, 64 * KiB, 16 << 20], ids=["16KiB", "64KiB", "default"])
def test_sequential_ranges_give_the_packed_blob_compressing_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str, span: int
) -> None:
    monkeypatch.setattr(tarlayer, "SPAN", span)
    members = members_of(tmp_path)
    blob = packed_blob(members, compression)
    counted = SpanInput(monkeypatch)
    layer = EncodedLayer(members, compression)
    step = 10_007
    got = b"".join(read(layer, start, min(step, len(blob) - start)) for start in range(0, len(blob), step))
    assert got == blob
    assert counted.total == (tar_size(members) if compression != "none" else 0)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_range_before_the_stream_restarts_at_the_span_that_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    span = 16 * KiB
    monkeypatch.setattr(tarlayer, "SPAN", span)
    members = members_of(tmp_path)
    blob = packed_blob(members, compression)
    counted = SpanInput(monkeypatch)
    layer = EncodedLayer(members, compression)
    assert read(layer, 0, 200_000) == blob[:200_000]
    before = counted.total
    # A resume at an earlier offset: compressed again from the span start before it, not from the first byte.
    assert read(layer, 150_001, 30_000) == blob[150_001:180_001]
    assert 0 < counted.total - before <= (180_001 - 150_001) * 2 + 2 * span
    # Skipping ahead continues the stream; the end of the blob is where it is.
    assert read(layer, 250_000, len(blob) - 250_000) == blob[250_000:]
    assert read(layer, 3, 5) == blob[3:8]
    assert list(layer.read(len(blob), 0)) == []


def test_a_stale_reader_cannot_go_on_after_a_newer_one(tmp_path: Path) -> None:
    members = members_of(tmp_path)
    layer = EncodedLayer(members, "gzip")
    old = layer.read(0, 100_000)
    next(old)
    assert read(layer, 0, 10) == packed_blob(members, "gzip")[:10]
    with pytest.raises(RuntimeError, match="newer"):
        list(old)


# --- what the spans look like to readers -------------------------------------------------------------------------


def test_spanned_gzip_is_one_member_every_reader_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tarlayer, "SPAN", 16 * KiB)
    members = members_of(tmp_path)
    tar = b"".join(tar_chunks(members))
    blob = packed_blob(members, "gzip")
    assert blob[:10] == tarlayer.GZIP_HEADER
    assert gzip.decompress(blob) == tar
    # Python's streaming tar reader reads a single gzip member only: the spans must not be members.
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r|gz") as archive:
        assert [m.name for m in archive] == [m.name for m in members]
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(blob)
    subprocess.run(["gzip", "-t", str(path)], check=True)
    assert subprocess.run(["tar", "-tzf", str(path)], check=True, capture_output=True, text=True).stdout.split() == [
        "models/", *(m.name for m in members[1:])
    ]
    # The deflate stream is byte-aligned at each span end (an empty stored block), as pigz writes it.
    spans = -(-len(tar) // (16 * KiB))
    assert blob.count(b"\x00\x00\xff\xff") >= spans


def test_spanned_zstd_is_one_frame_per_span(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tarlayer, "SPAN", 16 * KiB)
    members = members_of(tmp_path)
    tar = b"".join(tar_chunks(members))
    blob = packed_blob(members, "zstd")
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    assert reader.read() == tar
    frames, rest = 0, blob
    while rest:
        frame = zstandard.ZstdDecompressor().decompressobj()
        assert len(frame.decompress(rest)) <= 16 * KiB
        rest, frames = frame.unused_data, frames + 1
    assert frames == -(-len(tar) // (16 * KiB))


def test_output_is_the_same_on_every_run(tmp_path: Path) -> None:
    members = members_of(tmp_path)
    for compression in ("gzip", "zstd"):
        assert packed_blob(members, compression) == packed_blob(members, compression)


def test_span_size_and_codec_are_part_of_the_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model(tmp_path / "model", shards=(1000,), small=False)
    plan = the_plan(model)
    keys = {c: layer_key(plan, c) for c in ("none", "gzip", "zstd")}
    monkeypatch.setattr(tarlayer, "SPAN", 1 << 20)
    assert layer_key(plan, "none") == keys["none"]
    assert layer_key(plan, "gzip") != keys["gzip"] and layer_key(plan, "zstd") != keys["zstd"]
    assert tarlayer.MEDIA_TYPES["gzip"] == OCI_LAYER_GZIP
