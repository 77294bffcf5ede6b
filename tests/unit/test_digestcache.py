"""The layer digest cache: keys follow file identity, and a hit lets pack skip reading the files at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ocimodel.layout import modellayer
from ocimodel.layout.digestcache import DigestCache, layer_key
from ocimodel.layout.plan import LayerPlan
from ocimodel.layout.tarlayer import LayerDigests
from ocimodel.layout.pack import PackOptions, pack
from ocimodel.progress import PlainReporter
from ocimodel.source import SourceFile
from ocimodel.source.local import LocalSource


def _plan(path: Path, name: str = "w.safetensors", lfs: str | None = None) -> LayerPlan:
    return LayerPlan((SourceFile(name, path, path.stat().st_size, lfs),))


def test_key_is_stable_and_follows_identity(tmp_path: Path) -> None:
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 100)
    key = layer_key(_plan(f), "none")
    assert layer_key(_plan(f), "none") == key
    assert layer_key(_plan(f), "gzip") != key
    assert layer_key(_plan(f, "other.safetensors"), "none") != key
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert layer_key(_plan(f), "none") != key
    f.write_bytes(b"a" * 101)
    assert layer_key(_plan(f), "none") != key


def test_key_uses_lfs_sha256_when_known(tmp_path: Path) -> None:
    """A Hub file re-downloaded into a fresh cache (new inode and mtime) keeps its key."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 10)
    b.write_bytes(b"x" * 10)
    assert layer_key(_plan(a, lfs="ab" * 32), "none") == layer_key(_plan(b, lfs="ab" * 32), "none")
    assert layer_key(_plan(a), "none") != layer_key(_plan(b), "none")


def test_put_get_roundtrip(tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "c.sqlite")
    d = LayerDigests("application/vnd.oci.image.layer.v1.tar", "sha256:" + "1" * 64, 42, "sha256:" + "2" * 64)
    assert cache.get("k") is None
    cache.put("k", d)
    assert DigestCache(tmp_path / "c.sqlite").get("k") == d


def test_unusable_cache_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "c.sqlite").write_bytes(b"this is not a database")
    cache = DigestCache(tmp_path / "c.sqlite")
    cache.put("k", LayerDigests("t", "sha256:" + "1" * 64, 1, "sha256:" + "1" * 64))
    assert cache.get("k") is None


def test_second_pack_reads_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(os.urandom(100_000))
    (model / "config.json").write_text("{}")
    options = PackOptions(base="scratch")
    first = pack(LocalSource.from_path(model), tmp_path / "layout", options, PlainReporter())

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached layer was read again")

    monkeypatch.setattr(modellayer, "tar_chunks", no_reading)
    second = pack(LocalSource.from_path(model), tmp_path / "layout", options, PlainReporter())
    assert second == first
    # Without the cache, or with the blob gone from the layout, the files are read again.
    with pytest.raises(AssertionError, match="read again"):
        pack(LocalSource.from_path(model), tmp_path / "layout", PackOptions(base="scratch", use_cache=False), PlainReporter())
    for blob in (tmp_path / "layout" / "blobs" / "sha256").iterdir():
        blob.unlink()
    with pytest.raises(AssertionError, match="read again"):
        pack(LocalSource.from_path(model), tmp_path / "layout", options, PlainReporter())
