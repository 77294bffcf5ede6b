"""Every file's sha256 for a signature, at no extra read: taken as the layer's tar stream passes (a resumed upload
re-sends bytes, which are not hashed twice), else remembered from a signed build before, else read once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import ocimodel
import ocimodel.layout.modellayer
from ocimodel.layout.filehashes import EMPTY_SHA256, FileHashes
from ocimodel.layout.modellayer import ModelLayer
from ocimodel.layout.plan import LayerPlan
from ocimodel.layout.tarlayer import EncodedLayer
from ocimodel.signing.keys import load_public_key
from ocimodel.signing.verify import verify_model
from ocimodel.signing.statement import ModelFile
from ocimodel.source.local import LocalSource
from tests.harness.openssl import KeyPair, ec_key
from tests.harness.registry_stub import RegistryStub

DATA = bytes(range(256)) * 4096  # 1 MiB: several pieces of the stream


def test_pieces_sent_again_are_not_hashed_twice() -> None:
    hashes = FileHashes()
    hashes("models/w.bin", len(DATA), 0, DATA[:300_000])
    hashes("models/w.bin", len(DATA), 100_000, DATA[100_000:500_000])  # a resume from an earlier offset
    hashes("models/w.bin", len(DATA), 500_000, DATA[500_000:])
    assert hashes.get("w.bin", len(DATA)) == hashlib.sha256(DATA).hexdigest()


def test_a_stream_that_skipped_bytes_vouches_for_nothing() -> None:
    hashes = FileHashes()
    hashes("models/w.bin", len(DATA), 0, DATA[:1000])
    hashes("models/w.bin", len(DATA), 2000, DATA[2000:])
    assert hashes.get("w.bin", len(DATA)) is None
    assert hashes.get("empty.txt", 0) == EMPTY_SHA256


def test_a_resumed_upload_still_yields_each_files_sha256(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "a.bin").write_bytes(DATA)
    (model / "b.bin").write_bytes(DATA[::-1])
    source = LocalSource.from_path(model)
    layer = ModelLayer(LayerPlan(tuple(source.files(ocimodel.source.Filters()))), "gzip")
    hashes = FileHashes()
    reader: EncodedLayer = layer.reader(hashes)
    blob = b"".join(reader.read(0, 700_000))
    blob = blob[:400_000] + b"".join(reader.read(400_000, 10**9))  # the registry kept only 400 kB: resume there
    assert blob  # the whole blob went by, part of it twice
    assert layer.file_sha256(hashes) == {
        "a.bin": hashlib.sha256(DATA).hexdigest(), "b.bin": hashlib.sha256(DATA[::-1]).hexdigest()
    }


@pytest.fixture
def key(tmp_path: Path) -> KeyPair:
    (tmp_path / "keys").mkdir()
    return ec_key(tmp_path / "keys")


def test_an_unchanged_signed_rebuild_reads_no_file(
    tmp_path: Path, key: KeyPair, stub: RegistryStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    files = {"w1.safetensors": DATA, "w2.safetensors": DATA[::-1], "config.json": b"{}", "sub/empty": b""}
    for rel, data in files.items():
        (model / rel).write_bytes(data)
    ref = f"{stub.host}/signed/model"
    first = ocimodel.build(model, f"{ref}:v1", base="scratch", sign_key=key.private, check=False)

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model file was read again")

    monkeypatch.setattr(ocimodel.layout.modellayer, "read_range", no_reading)
    monkeypatch.setattr(ocimodel.layout.modellayer, "tar_chunks", no_reading)
    monkeypatch.setattr(ocimodel.layout.modellayer, "EncodedLayer", no_reading)
    again = ocimodel.build(model, f"{ref}:v2", base="scratch", sign_key=key.private, check=False)
    assert {b.outcome for b in again.push.blobs} == {"skipped"}
    assert again.digest == first.digest, "signed images are as reproducible as unsigned ones"

    stored = stub.repository("signed/model")
    for result in (first, again):
        manifest = json.loads(stored.manifests[result.digest][0])
        assert manifest["layers"][-1]["annotations"]["org.opencontainers.image.title"] == "model.sig"
        artifact = json.loads(stored.manifests[result.signature][0])
        bundle = stored.blobs[artifact["layers"][0]["digest"]]
        present = [ModelFile(rel, hashlib.sha256(data).hexdigest()) for rel, data in files.items()]
        verify_model(bundle, load_public_key(key.public), present, "the pushed model.sig")
