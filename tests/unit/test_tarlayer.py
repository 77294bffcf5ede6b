"""Deterministic tar layers: exact sizes, headers other tools read, digests, and files that change underfoot.

Sizes of 8 GiB and more are checked without writing or hashing 8 GiB: hashing runs at about 210 MB/s on this
machine (no SHA instructions), so one pass over 8 GiB costs ~40 s, and even streaming a sparse 8 GiB file through
``tar_chunks`` costs 1.5-5 s and fills 8 GiB of page cache. Instead the header that ``tar_chunks`` really emits for
a sparse 8 GiB + 1 byte file is placed in a sparse archive file whose data region is a hole (reads as the zeros the
sparse source holds), followed by a real small member and the end blocks; GNU tar and Python's tarfile seek over
the hole, so listing and extracting the member *after* the huge one proves that the size field, the padding and
``tar_size`` agree with what those readers expect.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from ocimodel.errors import OcimodelError
from ocimodel.layout.tarlayer import (
    BLOCK,
    END_OF_ARCHIVE,
    Member,
    encode_layer,
    header,
    tar_chunks,
    tar_size,
)
from tests.harness.oci import decompress

GiB = 1 << 30
LAYER_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def stream(members: list[Member], chunk_size: int = 1 << 20) -> bytes:
    return b"".join(tar_chunks(members, chunk_size))


def files_to_members(root: Path, files: dict[str, bytes]) -> list[Member]:
    """Write ``files`` under ``root`` and return members (parents first, path order) as a layer plan would."""
    members: dict[tuple[str, ...], Member] = {}
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        parts = ("models", *rel.split("/"))
        for i in range(1, len(parts)):
            members.setdefault(parts[:i], Member("/".join(parts[:i])))
        members[parts] = Member("/".join(parts), path, len(data))
    return [members[key] for key in sorted(members)]




# --- huge members ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [8 * GiB - 1, 8 * GiB, 8 * GiB + 1, 9 * GiB, 1 << 40, 5 * (1 << 50) + 123], ids=str
)
def test_header_of_a_huge_member_is_read_by_tarfile(size: int) -> None:
    member = Member("models/huge.safetensors", Path("/nonexistent"), size)
    buf = header(member)
    assert len(buf) == BLOCK
    info = tarfile.TarInfo.frombuf(buf, "utf-8", "strict")
    assert (info.name, info.size, info.type, info.mode) == ("models/huge.safetensors", size, tarfile.REGTYPE, 0o644)
    assert (info.uid, info.gid, info.uname, info.gname, info.mtime) == (0, 0, "", "", 0)
    size_field = buf[124:136]
    if size < 8 * GiB:
        assert size_field == b"%011o\0" % size  # plain octal while it fits
    else:
        assert size_field[0] == 0x80  # GNU base-256, not a PAX record
        assert int.from_bytes(size_field[1:], "big") == size
    assert tar_size([member]) == BLOCK + size + (-size % BLOCK) + len(END_OF_ARCHIVE)


def test_gnu_tar_and_tarfile_read_past_an_8_gib_member(tmp_path: Path) -> None:
    size = 8 * GiB + 1
    sparse = tmp_path / "huge.safetensors"
    with open(sparse, "wb") as f:
        f.truncate(size)  # a hole: instant, and reads as zeros
    after = tmp_path / "after.txt"
    after.write_bytes(b"found after the huge member\n")
    members = [
        Member("models"),
        Member("models/huge.safetensors", sparse, size),
        Member("models/z-after.txt", after, after.stat().st_size),
    ]

    # What tar_chunks really emits up to the huge member's data: the two headers, then the first data chunk.
    chunks = tar_chunks(members[:2], chunk_size=4096)
    head = next(chunks) + next(chunks)
    assert next(chunks) == bytes(4096)
    chunks.close()
    assert head == header(members[0]) + header(members[1])

    # The data (zeros) and its 511 bytes of padding stay a hole; the member after it and the end blocks are real.
    archive = tmp_path / "layer.tar"
    with open(archive, "wb") as f:
        f.write(head)
        f.seek(size + (-size % BLOCK), os.SEEK_CUR)
        f.write(stream(members[2:]))
    assert archive.stat().st_size == tar_size(members)
    assert archive.stat().st_blocks * 512 < 1 << 20

    listing = subprocess.run(
        ["tar", "--numeric-owner", "-tvf", str(archive)], capture_output=True, text=True, timeout=60, check=False
    )
    assert listing.returncode == 0 and listing.stderr == "", listing
    lines = [line.split() for line in listing.stdout.splitlines()]
    assert [(fields[0], fields[2], fields[-1]) for fields in lines] == [
        ("drwxr-xr-x", "0", "models/"),
        ("-rw-r--r--", str(size), "models/huge.safetensors"),
        ("-rw-r--r--", str(after.stat().st_size), "models/z-after.txt"),
    ]
    extracted = subprocess.run(
        ["tar", "-xOf", str(archive), "models/z-after.txt"], capture_output=True, timeout=60, check=False
    )
    assert extracted.returncode == 0 and extracted.stdout == after.read_bytes(), extracted.stderr

    with tarfile.open(archive, "r:") as reader:
        infos = reader.getmembers()
        assert [(i.name, i.size) for i in infos] == [(m.name, m.size) for m in members]
        assert infos[1].offset_data == 2 * BLOCK
        extracted_file = reader.extractfile(infos[2])
        assert extracted_file is not None and extracted_file.read() == after.read_bytes()


# --- exact sizes -------------------------------------------------------------------------------------------------


SHAPES = {
    "empty-file": {"empty": b""},
    "one-byte": {"one": b"x"},
    "511": {"a.bin": b"a" * 511},
    "512": {"a.bin": b"b" * 512},
    "513": {"a.bin": b"c" * 513},
    "1023-1024-1025": {"x/1023": b"1" * 1023, "x/1024": b"2" * 1024, "x/1025": b"3" * 1025},
    "long-name": {"n" * 101: b"long", "m" * 200 + ".json": b"{}"},
    "long-path": {"/".join(["deep-directory-name"] * 14) + "/" + "f" * 120: b"deep"},
    "nested": {"a/b/c/d.txt": b"d", "a/b/e.txt": b"e" * 700, "a/f.txt": b"", "a-b.txt": b"g", "z": b"z" * 5000},
    "unicode": {"модель/вес.txt": "привет".encode(), "日本/設定.json": b"{}"},
    "mixed": {f"shard-{i}.bin": os.urandom(i * 301) for i in range(8)},
}


@pytest.mark.parametrize("chunk_size", [1 << 20, 512, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_tar_size_is_the_stream_length(shape: str, chunk_size: int, tmp_path: Path) -> None:
    files = SHAPES[shape]
    members = files_to_members(tmp_path, files)
    data = stream(members, chunk_size)
    assert len(data) == tar_size(members)
    assert len(data) % BLOCK == 0
    assert data.endswith(END_OF_ARCHIVE)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as reader:
        infos = reader.getmembers()
        assert [i.name for i in infos] == [m.name for m in members]
        for info in infos:
            if info.isreg():
                rel = info.name.removeprefix("models/")
                extracted = reader.extractfile(info)
                assert extracted is not None and extracted.read() == files[rel]
    gnu = subprocess.run(["tar", "-tf", "-"], input=data, capture_output=True, timeout=60, check=False)
    assert gnu.returncode == 0, gnu.stderr
    assert [line.rstrip("/") for line in gnu.stdout.decode().splitlines()] == [m.name for m in members]


def test_stream_does_not_depend_on_file_metadata(tmp_path: Path) -> None:
    members = files_to_members(tmp_path, {"a/b.txt": b"hello", "c.bin": b"\0" * 600})
    before = stream(members)
    for path in tmp_path.rglob("*"):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
        os.utime(path, (1234567, 7654321))
    assert stream(members) == before


# --- digests -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_encode_layer_digests(compression: str, tmp_path: Path) -> None:
    members = files_to_members(tmp_path, {**SHAPES["nested"], **SHAPES["long-name"], "w.bin": os.urandom(300_000)})
    tar = stream(members)
    sink = io.BytesIO()
    progress: list[int] = []
    digests = encode_layer(tar_chunks(members, 4096), compression, sink, progress.append)
    blob = sink.getvalue()
    assert digests.media_type == LAYER_TYPES[compression]
    assert digests.digest == sha256(blob)
    assert digests.size == len(blob)
    assert digests.diff_id == sha256(tar)
    assert decompress(blob, compression) == tar
    assert sum(progress) == len(tar)
    if compression == "none":
        assert digests.digest == digests.diff_id and blob == tar
    else:
        assert digests.digest != digests.diff_id
    again = io.BytesIO()
    assert encode_layer(tar_chunks(members, 999), compression, again) == digests
    assert again.getvalue() == blob


def test_gzip_header_is_machine_independent() -> None:
    sink = io.BytesIO()
    encode_layer([END_OF_ARCHIVE], "gzip", sink)
    blob = sink.getvalue()
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0, OS unknown
    assert gzip.decompress(blob) == END_OF_ARCHIVE


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_empty_stream(compression: str) -> None:
    sink = io.BytesIO()
    digests = encode_layer([], compression, sink)
    assert digests.diff_id == sha256(b"")
    assert digests.digest == sha256(sink.getvalue())
    assert decompress(sink.getvalue(), compression) == b""


# --- files that change while packed ------------------------------------------------------------------------------


def test_file_smaller_than_announced(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * 1000)
    with pytest.raises(OcimodelError, match="changed size"):
        stream([Member("models/w.bin", path, 1500)])


def test_file_larger_than_announced(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * 1000)
    with pytest.raises(OcimodelError, match="changed size"):
        stream([Member("models/w.bin", path, 999)])


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_file_changing_during_packing(change: str, tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * 10_000)
    chunks = tar_chunks([Member("models"), Member("models/w.bin", path, 10_000)], chunk_size=1024)
    assert len(next(chunks)) == BLOCK  # models/
    assert len(next(chunks)) == BLOCK  # models/w.bin
    assert next(chunks) == b"x" * 1024
    if change == "grow":
        with open(path, "ab") as f:
            f.write(b"more")
    else:
        os.truncate(path, 5000)
    with pytest.raises(OcimodelError, match="changed size") as caught:
        for _ in chunks:
            pass
    assert str(path) in str(caught.value)


def test_change_fails_encode_layer(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"y" * 3000)

    def shrink_midway(n: int) -> None:
        if n == 1024:
            os.truncate(path, 1500)

    with pytest.raises(OcimodelError, match="changed size"):
        encode_layer(tar_chunks([Member("models/w.bin", path, 3000)], 1024), "gzip", io.BytesIO(), shrink_midway)


def test_vanished_file(tmp_path: Path) -> None:
    with pytest.raises(OcimodelError, match="cannot read"):
        stream([Member("models/gone.bin", tmp_path / "gone.bin", 10)])
