"""``build`` against the in-process registry stub: model files straight to a registry, with no blob on disk.

Every test writes a small model under ``tmp_path``, builds it in-process with a client and a push policy that never
sleep, and asserts on what the stub received. The yardstick is ``pack`` + ``push``: a build must leave exactly the
image they leave (same manifest digest, same blob bytes), whether its layer digests came from the digest cache, a
hashing pass, or the upload itself, and whatever the registry did to the upload on the way.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

import ocimodel.layout.modellayer
import ocimodel.layout.tarlayer
from ocimodel import localdb
from ocimodel.layout.descriptor import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from ocimodel.layout.store import BlobWriter, Layout
from ocimodel.registry.auth import Credentials
from ocimodel.registry.push import PushOptions, push
from ocimodel.registry.reference import parse_reference
from ocimodel.results import BuildResult
from tests.harness.registry_stub import Behaviour, Fault, LoggedRequest, RegistryStub, digest_of
from tests.harness.build import (
    BIG,
    CHUNK,
    PASSWORD,
    REPO,
    SMALL_SHARD,
    Builder,
    Packed,
    assert_holds,
    layer_digests,
    make_model,
    pack_model,
    packed,
)
from tests.harness.progress import Recorder
from tests.harness.registry_stub import ECR_HOST, Redirector
from tests.harness.stub_log import blob_requests, content_range, manifest_puts, methods, session_of

LAYER_TYPES = {"none": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}


# --- models and bases ------------------------------------------------------------------------------------------


def shard(root: Path, i: int) -> Path:
    (found,) = root.glob(f"model-{i:05d}-of-*.safetensors")
    return found


def add_base(stub: RegistryStub, repo: str = "library/base") -> str:
    """A one-layer base image in the stub, with an Entrypoint the build must drop; returns its pinned reference."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        data = b"#!/bin/sh\necho base\n"
        info = tarfile.TarInfo("bin/hello")
        info.size, info.mode = len(data), 0o755
        archive.addfile(info, io.BytesIO(data))
    layer = buffer.getvalue()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/hello"], "Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]},
        "history": [{"created_by": "test base"}],
    }
    manifest = stub.add_image(repo, [layer], config)
    return f"{stub.host}/{repo}@{manifest['digest']}"


# --- building --------------------------------------------------------------------------------------------------


@pytest.fixture
def builder(stub: RegistryStub) -> Builder:
    return Builder(stub)


def outcomes(result: BuildResult) -> dict[str, str]:
    return {b.digest: b.outcome for b in result.push.blobs}


def config_digest(stub: RegistryStub, result: BuildResult, repo: str = REPO) -> str:
    digest: str = json.loads(stub.repository(repo).manifests[result.push.digest][0])["config"]["digest"]
    return digest


def streamed(requests_: Sequence[LoggedRequest]) -> bool:
    """The blob's upload opened without its digest: no HEAD, no mount, and the first request a bare POST."""
    return bool(requests_) and requests_[0].method == "POST" and "mount" not in requests_[0].query and all(
        r.method != "HEAD" for r in requests_
    )


def assert_progress_complete(builder: Builder) -> None:
    """Each uploaded blob's bar ends at its size: resends, resumes and restarts are neither lost nor counted twice."""
    uploaded = [t for t in builder.reporter.tasks if t.note == "uploaded"]
    assert uploaded
    for task in uploaded:
        assert task.done == task.total, f"{task.label}: progress {task.done} of {task.total}"


@dataclass
class ReadLog:
    """Every range of a layer regenerated from the files, and every file opened for it."""

    ranges: list[tuple[int, int]] = field(default_factory=list)
    opened: list[Path] = field(default_factory=list)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> ReadLog:
    log = ReadLog()
    real_open = open

    class EncodedLayer(ocimodel.layout.modellayer.EncodedLayer):
        def read(self, start: int, length: int) -> Iterator[bytes]:
            log.ranges.append((start, length))
            return super().read(start, length)

    def opened(path: Any, *args: Any, **kwargs: Any) -> Any:
        log.opened.append(Path(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(ocimodel.layout.modellayer, "EncodedLayer", EncodedLayer)
    # tarlayer reads every file through ``open``; a module global shadows the builtin for that module alone.
    monkeypatch.setattr(ocimodel.layout.tarlayer, "open", opened, raising=False)
    return log


def forbid_reading(monkeypatch: pytest.MonkeyPatch, allowed: Sequence[Path] = ()) -> list[str]:
    """Make every way of reading a layer fail (except files in ``allowed``); returns what was attempted."""
    attempts: list[str] = []
    real_open = open

    def refuse(name: str) -> Any:
        def refused(*args: Any, **kwargs: Any) -> Any:
            attempts.append(name)
            raise AssertionError(f"{name} called: a layer was read")

        return refused

    def guarded_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path) not in allowed:
            attempts.append(f"open {path}")
            raise AssertionError(f"{path} was read")
        return real_open(path, *args, **kwargs)

    if not allowed:
        for name in ("EncodedLayer", "tar_chunks", "encode_layer"):
            monkeypatch.setattr(ocimodel.layout.modellayer, name, refuse(name))
    monkeypatch.setattr(ocimodel.layout.tarlayer, "open", guarded_open, raising=False)
    return attempts


# --- the same image as pack + push -----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_build_stores_the_image_pack_and_push_store(
    stub: RegistryStub, builder: Builder, tmp_path: Path, compression: str
) -> None:
    source = make_model(tmp_path / "model")
    base = add_base(stub)
    # Built first, with an empty digest cache, so every digest is found by the build itself.
    result = builder(source, compression=compression, base=base)
    built_log = stub.requests_to()
    image = pack_model(source, tmp_path / "layout", compression=compression, base=base)
    with builder.client() as client:
        pushed = push(Layout.open(tmp_path / "layout"), parse_reference(f"{stub.host}/models/pushed"), tag=None,
                      options=PushOptions(chunk_size=CHUNK), reporter=Recorder(), client=client)
    assert result.push.digest == pushed.digest == image.digest
    assert_holds(stub, result, image)
    assert_holds(stub, pushed, image, repo="models/pushed")
    assert stub.repository(REPO).manifests["latest"] == stub.repository("models/pushed").manifests["latest"]
    assert result.push.reference == f"{stub.host}/{REPO}@{image.digest}"
    # Three model layers on the base's one; the base's Entrypoint is gone, as pack drops it.
    assert len(image.layers) == 1 + 3
    assert {image.manifest["layers"][i]["mediaType"] for i in (1, 2, 3)} == {LAYER_TYPES[compression]}
    config = json.loads(image.blobs[image.manifest["config"]["digest"]])
    assert "Entrypoint" not in config["config"] and config["config"]["Cmd"] == ["sh"]
    # Uncompressed layers were hashed on the way up; a compressed one's size is only known once it is compressed,
    # so it was hashed first and looked up with HEAD like any known blob.
    for digest in image.layers[1:]:
        first = next(r for r in built_log if r.path.endswith(f"/blobs/{digest}") or r.query.get("digest") == [digest])
        assert (first.method == "PUT") if compression == "none" else (first.method == "HEAD"), first
    assert set(outcomes(result).values()) == {"uploaded"}


# --- nothing on disk but the files -----------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_no_blob_is_written_to_disk(
    stub: RegistryStub, builder: Builder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _private_cache: Path
) -> None:
    source = make_model(tmp_path / "model")
    base = add_base(stub)
    bases = localdb.default_path().parent / "bases"
    written: list[Path] = []
    real_init = BlobWriter.__init__

    def guarded(self: BlobWriter, layout: Layout, hashing: bool = True) -> None:
        written.append(layout.root)
        if layout.root != bases:
            raise AssertionError(f"a blob was written to {layout.root}")
        real_init(self, layout, hashing)

    monkeypatch.setattr(BlobWriter, "__init__", guarded)
    before = snapshot(tmp_path)
    result = builder(source, base=base)
    assert snapshot(tmp_path) == before  # the model dir untouched, and no layout anywhere near it
    assert written and set(written) == {bases}  # the guard was live: the base went to the base cache, only there
    # The whole cache: the digest database, and the base image's blobs; not one byte of a model layer.
    base_blobs = {d.removeprefix("sha256:") for d in (base.split("@")[1], *stub.repository("library/base").blobs)}
    for path in _private_cache.rglob("*"):
        if path.is_file():
            rel = path.relative_to(_private_cache / "ocimodel")
            assert rel.parts[0] == "bases" or rel.name.startswith("cache.sqlite"), rel
            if rel.parts[:3] == ("bases", "blobs", "sha256"):
                assert rel.name in base_blobs, rel
    layers = set(layer_digests(stub, result)) - set(stub.repository("library/base").blobs)
    assert len(layers) == 3 and not {d.removeprefix("sha256:") for d in layers} & {p.name for p in bases.rglob("*")}


# --- the digest is computed on the way -------------------------------------------------------------------------


def test_uncompressed_layers_stream_without_a_digest(stub: RegistryStub, builder: Builder, tmp_path: Path) -> None:
    source = make_model(tmp_path / "model")
    result = builder(source)
    image = pack_model(source, tmp_path / "layout")
    assert_holds(stub, result, image)
    for digest in image.layers:
        sent = blob_requests(stub, digest)
        assert streamed(sent), methods(sent)
        *patches, close = sent[1:]
        assert close.method == "PUT" and close.query["digest"] == [digest] and close.received == 0
        assert close.status == 201
        assert all(p.method == "PATCH" and p.status == 202 for p in patches)
        size = len(image.blobs[digest])
        assert sum(p.received for p in patches) == size
        if size > CHUNK:  # chunked: ordered ranges, each of the chunk size but the last
            expected = [(start, min(start + CHUNK, size) - 1) for start in range(0, size, CHUNK)]
            assert [content_range(p) for p in patches] == expected
        else:  # one streamed PATCH with the length announced up front
            assert len(patches) == 1 and patches[0].headers["Content-Length"] == str(size)
            assert "Content-Range" not in patches[0].headers
    # The config's digest is known before it is sent: HEAD, then one PUT.
    assert methods(blob_requests(stub, image.manifest["config"]["digest"])) == ["HEAD", "POST", "PUT"]
    assert_progress_complete(builder)


def test_ecr_gets_one_streamed_patch_per_layer(stub: RegistryStub, tmp_path: Path) -> None:
    """ECR: whole-blob uploads only, and it answers a PATCH with 201; a layer of unknown digest is one PATCH."""
    stub.behaviour = Behaviour(ecr_like=True, auth="basic", users={"AWS": PASSWORD})
    session = requests.Session()
    session.trust_env = False
    session.mount(f"http://{ECR_HOST}/", Redirector(ECR_HOST, stub.host))
    builder = Builder(stub, Credentials("AWS", PASSWORD), ECR_HOST, session)
    source = make_model(tmp_path / "model")
    result = builder(source)
    image = pack_model(source, tmp_path / "layout")
    assert_holds(stub, result, image)
    assert result.push.reference == f"{ECR_HOST}/{REPO}@{image.digest}"
    for digest in image.layers:
        sent = [r for r in blob_requests(stub, digest) if r.status != 401]  # the first request drew the challenge
        assert methods(sent) == ["POST", "PATCH", "PUT"]
        assert sent[1].received == len(image.blobs[digest]) and "Content-Range" not in sent[1].headers
        assert sent[2].query["digest"] == [digest]
    # Not one chunked PATCH was tried (ECR's Range would have got stuck), and no session was given up.
    assert sum(1 for r in stub.requests_to() if r.method == "PATCH") == len(image.layers)
    assert sum(1 for r in stub.requests_to() if r.method == "POST" and r.status == 202) == len(image.blobs) - 1
    assert_progress_complete(builder)


# --- faults during a streamed upload ---------------------------------------------------------------------------


def one_layer_model(tmp_path: Path) -> Path:
    """A model that is one big shard: every PATCH of a build belongs to its layer."""
    return make_model(tmp_path / "model", shards=(BIG,), small=False)


def clean_build(builder: Builder, source: Path, tmp_path: Path) -> Packed:
    """The image a build without faults leaves (built last, so it lends the faulty build no cached digest)."""
    builder.stub.behaviour.faults.clear()
    clean = builder(source, "models/clean", use_cache=False)
    image = pack_model(source, tmp_path / "clean-layout")
    assert_holds(builder.stub, clean, image, repo="models/clean")
    return image


def test_reset_mid_chunk_resumes_from_the_registry_range(
    stub: RegistryStub, builder: Builder, tmp_path: Path, reads: ReadLog
) -> None:
    source = one_layer_model(tmp_path)
    cut = 2 * CHUNK + 5000  # the registry keeps two chunks and 5000 bytes of the third
    stub.behaviour.faults.append(Fault(reset_after=5000, method="PATCH", nth=3))
    result = builder(source)
    (layer,) = layer_digests(stub, result)
    sent = blob_requests(stub, layer, chunked=True)
    assert streamed(sent) and methods(sent).count("POST") == 1  # one session throughout
    broken = next(i for i, r in enumerate(sent) if r.method == "PATCH" and r.status is None)
    status, resumed = sent[broken + 1], sent[broken + 2]
    assert status.method == "GET" and status.status == 204 and status.answer["Range"] == f"0-{cut - 1}"
    assert resumed.method == "PATCH" and content_range(resumed)[0] == cut
    size = len(stub.repository(REPO).blobs[layer])
    assert sum(r.received for r in sent if r.method == "PATCH") == size  # not a byte twice
    # The bytes from the cut on were produced again from the model file, from the cut, not from zero.
    assert (cut, min(CHUNK, size - cut)) in reads.ranges
    assert shard(source, 1).resolve() in reads.opened
    assert sent[-1].query["digest"] == [layer] and sent[-1].status == 201
    image = clean_build(builder, source, tmp_path)
    assert result.push.digest == image.digest
    assert_holds(stub, result, image)


@pytest.mark.parametrize(
    "case",
    [
        "stale-state",  # docker-registry cancels a session asked about with the _state of before a broken PATCH
        "lost-session-patch",  # the registry restarted mid-upload: 404 BLOB_UPLOAD_UNKNOWN
        "lost-session-put",  # ...just before the digest closes the session
        "reset-whole-patch",  # a whole-blob streamed PATCH breaks off: nothing to resume from
    ],
)
def test_upload_started_over_still_gets_the_right_digest(
    stub: RegistryStub, builder: Builder, tmp_path: Path, case: str
) -> None:
    """A fresh session hashes the stream again from its first byte: a digest of two half-streams would be wrong."""
    source = one_layer_model(tmp_path)
    chunk_size = CHUNK
    if case == "stale-state":
        stub.behaviour.strict_state = True
        stub.behaviour.faults.append(Fault(reset_after=5000, method="PATCH", nth=3))
    elif case == "lost-session-patch":
        stub.behaviour.faults.append(Fault(before=stub.forget_uploads, method="PATCH", nth=3))
    elif case == "lost-session-put":
        stub.behaviour.faults.append(Fault(before=stub.forget_uploads, method="PUT", query_contains="digest="))
    else:
        chunk_size = 0
        stub.behaviour.faults.append(Fault(reset_after=100_000, method="PATCH"))
    result = builder(source, chunk_size=chunk_size)
    assert stub.behaviour.faults[0].fired == 1
    (layer,) = layer_digests(stub, result)
    sent = blob_requests(stub, layer, chunked=True)
    assert streamed(sent)
    posts = [i for i, r in enumerate(sent) if r.method == "POST"]
    assert len(posts) == 2 and session_of(sent[posts[0]]) != session_of(sent[posts[1]])
    fresh = sent[posts[1] :]
    size = len(stub.repository(REPO).blobs[layer])
    # The fresh session got the whole blob from byte 0, and was closed with the digest of exactly those bytes.
    assert sum(r.received for r in fresh if r.method == "PATCH") == size
    if chunk_size:
        assert content_range(fresh[1]) == (0, CHUNK - 1)
    assert fresh[-1].method == "PUT" and fresh[-1].query["digest"] == [layer] and fresh[-1].status == 201
    assert outcomes(result)[layer] == "uploaded"
    image = clean_build(builder, source, tmp_path)
    assert result.push.digest == image.digest
    assert_holds(stub, result, image)
    assert_progress_complete(builder)


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_credentials_refused_mid_upload_carry_on(stub: RegistryStub, tmp_path: Path, auth: str) -> None:
    stub.behaviour = Behaviour(auth=auth, users={"alice": PASSWORD}, anonymous_pull=False)  # type: ignore[arg-type]
    if auth == "basic":
        stub.behaviour.faults.append(Fault(401, method="PATCH", nth=2))
    else:  # the token runs out between two chunks
        stub.behaviour.faults.append(Fault(before=stub.expire_tokens, method="PATCH", nth=3))
    builder = Builder(stub, Credentials("alice", PASSWORD))
    source = one_layer_model(tmp_path)
    result = builder(source)
    (layer,) = layer_digests(stub, result)
    sent = blob_requests(stub, layer, chunked=True)
    assert methods(sent).count("POST") == 1  # carried on in the same session
    refused = next(i for i, r in enumerate(sent) if r.method == "PATCH" and r.status == 401)
    resent = sent[refused + 1]
    assert resent.method == "PATCH" and content_range(resent) == content_range(sent[refused])
    assert resent.status == 202 and resent.received == CHUNK
    assert sent[-1].query["digest"] == [layer] and sent[-1].status == 201
    image = clean_build(builder, source, tmp_path)
    assert result.push.digest == image.digest
    assert_holds(stub, result, image)
    assert_progress_complete(builder)


# --- building again --------------------------------------------------------------------------------------------


def test_rebuild_reads_and_sends_only_what_changed(
    stub: RegistryStub, builder: Builder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_model(tmp_path / "model", shards=(BIG, SMALL_SHARD, SMALL_SHARD + 1))
    first = builder(source)
    layers = layer_digests(stub, first)
    sizes = {b.digest: b.size for b in first.push.blobs}

    # Unchanged: every digest comes from the cache, every blob is found with one HEAD, no file is even opened.
    stub.clear_log()
    with monkeypatch.context() as patch:
        attempts = forbid_reading(patch)
        second = builder(source)
    assert attempts == []
    assert second.push.digest == first.push.digest
    assert set(outcomes(second).values()) == {"skipped"}
    blob_calls = [r for r in stub.requests_to() if "/blobs/" in r.path]
    assert methods(blob_calls) == ["HEAD"] * (len(layers) + 1) and all(r.received == 0 for r in blob_calls)
    assert [s.kind for s in stub.stored] == ["manifest"]
    summary = second.to_json()
    assert summary["uploadedBytes"] == 0 and summary["skippedBytes"] == sum(sizes.values())

    # One shard gets new bytes of the same size: only its layer is read, streamed and sent.
    changed = shard(source, 2)
    st = changed.stat()
    changed.write_bytes(random.Random(99).randbytes(st.st_size))
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as an edit a second later would
    stub.clear_log()
    with monkeypatch.context() as patch:
        attempts = forbid_reading(patch, allowed=[changed.resolve()])
        third = builder(source)
    assert attempts == []
    image = pack_model(source, tmp_path / "layout")
    assert_holds(stub, third, image)
    assert third.push.digest != first.push.digest
    new_layers = layer_digests(stub, third)
    assert [a == b for a, b in zip(layers, new_layers)] == [True, True, False, True]
    new_config = config_digest(stub, third)
    assert outcomes(third) == {
        **{d: "skipped" for d in new_layers if d != new_layers[2]}, new_layers[2]: "uploaded", new_config: "uploaded"
    }
    assert streamed(blob_requests(stub, new_layers[2]))
    assert sum(r.received for r in stub.requests_to() if "/blobs/" in r.path) == sum(
        len(image.blobs[d]) for d in (new_layers[2], new_config)
    )


def test_no_cache_streams_every_layer_again(stub: RegistryStub, builder: Builder, tmp_path: Path) -> None:
    source = make_model(tmp_path / "model")
    first = builder(source)
    layers = layer_digests(stub, first)
    stub.clear_log()
    again = builder(source, use_cache=False)
    assert again.push.digest == first.push.digest
    for digest in layers:
        sent = blob_requests(stub, digest)
        assert streamed(sent), methods(sent)  # hashed on the way again, although the registry has it
        assert sent[-1].query["digest"] == [digest] and sent[-1].status == 201
    assert {d: o for d, o in outcomes(again).items() if d in layers} == {d: "uploaded" for d in layers}
    assert outcomes(again)[config_digest(stub, again)] == "skipped"
    assert_holds(stub, again, pack_model(source, tmp_path / "layout"))


def test_cached_digests_serve_a_new_repository(stub: RegistryStub, builder: Builder, tmp_path: Path) -> None:
    """The same model into another repository: each layer asked about once, then sent under its known digest."""
    source = make_model(tmp_path / "model")
    first = builder(source)
    layers = layer_digests(stub, first)
    stub.clear_log()
    other = builder(source, "models/other")
    assert other.push.digest == first.push.digest
    for digest in layers:
        sent = blob_requests(stub, digest)
        assert [r.path.split("/blobs/")[0] for r in sent] == ["/v2/models/other"] * len(sent)
        assert methods(sent)[:2] == ["HEAD", "POST"], methods(sent)  # one HEAD, not one per code path
        assert sent[-1].method == "PUT" and sent[-1].query["digest"] == [digest]
        if digest != layers[1]:  # known digest, whole blob: the bytes go with the closing PUT
            assert methods(sent) == ["HEAD", "POST", "PUT"]
    assert set(outcomes(other).values()) == {"uploaded"}
    assert_holds(stub, other, pack_model(source, tmp_path / "layout"), repo="models/other")


# --- two passes ------------------------------------------------------------------------------------------------


def test_two_pass_hashes_before_asking(stub: RegistryStub, builder: Builder, tmp_path: Path) -> None:
    source = make_model(tmp_path / "model")
    result = builder(source, two_pass=True)
    layers = layer_digests(stub, result)
    for digest in layers:
        sent = blob_requests(stub, digest)
        assert methods(sent)[:2] == ["HEAD", "POST"], methods(sent)
        assert sent[-1].method == "PUT" and sent[-1].query["digest"] == [digest]
        if digest != layers[1]:  # small enough to go whole: the digest is known, so one PUT with the bytes
            assert methods(sent) == ["HEAD", "POST", "PUT"]
            assert sent[-1].received == len(stub.repository(REPO).blobs[digest])
    hashed = [t for t in builder.reporter.tasks if t.label.startswith("hash ")]
    assert len(hashed) == len(layers) and all(t.done == t.total for t in hashed)
    image = pack_model(source, tmp_path / "layout")
    assert_holds(stub, result, image)
    # One pass, from an empty cache and into another repository, builds the very same image.
    stub.clear_log()
    one_pass = builder(source, "models/one-pass", use_cache=False)
    assert streamed(blob_requests(stub, layers[0]))
    assert one_pass.push.digest == result.push.digest
    assert_holds(stub, one_pass, image, repo="models/one-pass")


# --- keeping a layout too --------------------------------------------------------------------------------------


def test_layout_option_keeps_the_image_and_pushes_it(stub: RegistryStub, builder: Builder, tmp_path: Path) -> None:
    source = make_model(tmp_path / "model")
    result = builder(source, tag="v1", layout=tmp_path / "kept")
    kept = Layout.open(tmp_path / "kept")
    assert set(kept.tags()) == {"v1"} and kept.tags()["v1"].digest == result.push.digest  # the tag it was pushed as
    image = packed(tmp_path / "kept", result.push.digest)
    assert_holds(stub, result, image, tag="v1")
    assert set(result.phases) == {"pack", "push"}
    assert len(manifest_puts(stub)) == 1
    plain = builder(source, "models/plain", use_cache=False)
    assert plain.push.digest == result.push.digest
