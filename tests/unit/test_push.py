"""``push`` against the in-process registry stub: what the registry received, under a clean run and under faults.

Every test builds a small layout by hand, pushes it with a client and a push policy that never sleep (recording the
delays asked for), and asserts on the stub's request log, its upload sessions and the bytes it stored. After every
fault that must be survived, the registry must hold exactly what a clean push leaves: the layout's manifest digest
under the tag and every blob byte for byte.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from ocimodel.errors import OcimodelError, RegistryError
from ocimodel.layout.descriptor import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    canonical_json,
)
from ocimodel.layout.store import Layout
from ocimodel.registry.auth import Credentials, EcrCredentials, Keychain
from ocimodel.registry.client import RegistryClient
from ocimodel.registry.known import KnownBlobs
from ocimodel.registry.push import ECR_MAX_LAYER_BYTES, PushOptions, Upload, is_ecr, push
from ocimodel.registry.push import Pusher as BlobSender
from ocimodel.registry.reference import parse_reference
from ocimodel.results import PushResult
from ocimodel.retry import RetryPolicy
from tests.harness.progress import Recorder
from tests.harness.registry_stub import (
    ECR_HOST,
    Behaviour,
    Fault,
    LoggedRequest,
    Redirector,
    RegistryStub,
    digest_of,
    stub_client,
)
from tests.harness.stub_log import blob_requests, content_range, manifest_puts, methods, session_of

REPO = "models/tiny"
CHUNK = 64 * 1024
PASSWORD = "pu5h-Pa55word-never-shown"
AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
#: Size of the one blob big enough to be chunked: five full chunks and a ragged end.
BIG = 5 * CHUNK + 1234



# --- layouts ---------------------------------------------------------------------------------------------------


@dataclass
class Image:
    layout: Layout
    top: Descriptor
    blobs: dict[str, bytes]  # config and layer blobs, by digest
    manifests: dict[str, bytes]  # manifests and index, by digest
    big: str  # digest of the largest layer

    def blob_digests(self) -> set[str]:
        return set(self.blobs)


def build_image(
    root: Path, layer_sizes: Sequence[int] = (BIG, 3000, 700), platforms: Sequence[Platform] = (AMD64,), seed: int = 0
) -> Image:
    """A layout tagged ``latest``: one image, or an index over ``platforms`` sharing the layers (one config each)."""
    rng = random.Random(seed)
    layout = Layout.create(root)
    blobs: dict[str, bytes] = {}
    manifests: dict[str, bytes] = {}
    layers = []
    for size in layer_sizes:
        data = rng.randbytes(size)
        layers.append(layout.put_bytes(OCI_LAYER, data))
        blobs[layers[-1].digest] = data
    entries = []
    for platform in platforms:
        config = canonical_json(
            {**platform.to_json(), "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layers]}}
        )
        config_desc = layout.put_bytes(OCI_CONFIG, config)
        blobs[config_desc.digest] = config
        manifest = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config_desc.to_json(),
                "layers": [d.to_json() for d in layers],
            }
        )
        desc = layout.put_bytes(OCI_MANIFEST, manifest)
        manifests[desc.digest] = manifest
        entries.append(Descriptor(OCI_MANIFEST, desc.digest, desc.size, platform=platform))
    if len(entries) == 1:
        top = entries[0]
    else:
        index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [e.to_json() for e in entries]})
        top = layout.put_bytes(OCI_INDEX, index)
        manifests[top.digest] = index
    layout.set_tag("latest", top)
    big = max(layers, key=lambda d: d.size).digest
    return Image(layout, top, blobs, manifests, big)


@pytest.fixture
def image(tmp_path: Path) -> Image:
    return build_image(tmp_path / "layout")


# --- pushing ---------------------------------------------------------------------------------------------------


@dataclass
class Pusher:
    """Pushes to the stub with policies that never sleep; keeps the delays that were asked for."""

    stub: RegistryStub
    creds: Credentials | None = None
    client_sleeps: list[float] = field(default_factory=list)
    push_sleeps: list[float] = field(default_factory=list)
    reporter: Recorder = field(default_factory=Recorder)

    def client(self, registry: str | None = None, session: requests.Session | None = None) -> RegistryClient:
        return stub_client(registry or self.stub.host, self.creds, session, self.client_sleeps)

    def __call__(
        self,
        image: Image,
        repo: str = REPO,
        *,
        tag: str = "latest",
        known: KnownBlobs | None = None,
        client: RegistryClient | None = None,
        registry: str | None = None,
        **options: Any,
    ) -> PushResult:
        options.setdefault("chunk_size", CHUNK)
        opts = PushOptions(retry=RetryPolicy(sleep=self.push_sleeps.append), **options)
        ref = parse_reference(f"{registry or self.stub.host}/{repo}:{tag}")
        with client or self.client() as c:
            return push(image.layout, ref, tag=None, options=opts, reporter=self.reporter, client=c, known=known)



@pytest.fixture
def pusher(stub: RegistryStub) -> Pusher:
    return Pusher(stub)


# --- reading the stub ------------------------------------------------------------------------------------------


def patches(stub: RegistryStub) -> list[LoggedRequest]:
    return [r for r in stub.requests_to() if r.method == "PATCH"]


def assert_pushed(stub: RegistryStub, image: Image, result: PushResult, repo: str = REPO, tag: str = "latest") -> None:
    """What a clean push leaves: the layout's digest under the tag, every manifest and blob byte for byte."""
    assert result.digest == image.top.digest
    assert result.reference == f"{result.reference.split('/', 1)[0]}/{repo}@{image.top.digest}"
    held = stub.repository(repo)
    assert held.manifests[tag] == (image.manifests[image.top.digest], image.top.media_type)
    for digest, data in image.manifests.items():
        assert held.manifests[digest][0] == data
    for digest, data in image.blobs.items():
        assert held.blobs.get(digest) == data, f"blob {digest} differs or is missing"
    assert {b.digest for b in result.blobs} == image.blob_digests()
    assert_dependency_order(stub, repo)


def assert_dependency_order(stub: RegistryStub, repo: str) -> None:
    """Nothing was stored before what it references: blobs before manifests, manifests before their index."""
    seen: set[str] = set()
    for stored in [s for s in stub.stored if s.repo == repo]:
        if stored.kind == "manifest":
            doc = json.loads(stub.repository(repo).manifests[stored.digest][0])
            refs = [m["digest"] for m in doc.get("manifests", [])] or [
                d["digest"] for d in [doc["config"], *doc["layers"]]
            ]
            assert set(refs) <= seen, f"manifest {stored.digest} stored before {set(refs) - seen}"
        seen.add(stored.digest)
    # ...and no manifest PUT was even attempted before the last blob was complete.
    log = stub.requests_to()
    first_manifest = next((i for i, r in enumerate(log) if r.method == "PUT" and "/manifests/" in r.path), len(log))
    blob_done = [i for i, r in enumerate(log) if r.status == 201 and "/blobs/" in r.path and "/manifests/" not in r.path]
    assert all(i < first_manifest for i in blob_done)


def assert_progress_complete(pusher: Pusher, image: Image) -> None:
    """Each uploaded blob's bar ends at its size: resends and resumes are neither lost nor counted twice."""
    for task in pusher.reporter.tasks:
        if task.note == "uploaded":
            assert task.done == task.total, f"{task.label}: progress {task.done} of {task.total}"


# --- the stub is strict where registries are -------------------------------------------------------------------


def test_stub_enforces_the_upload_protocol(stub: RegistryStub) -> None:
    """If the stub accepted anything, the push tests could not fail: check it refuses what registries refuse."""
    base = f"http://{stub.host}"
    with requests.Session() as s:
        s.trust_env = False
        opened = s.post(f"{base}/v2/{REPO}/blobs/uploads/")
        assert (opened.status_code, opened.headers["Range"]) == (202, "0-0")
        location = base + opened.headers["Location"]
        bare = location.split("?")[0]
        assert s.get(bare).json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"  # the _state query was dropped
        first = s.patch(location, data=b"abc", headers={"Content-Range": "0-2"})
        assert (first.status_code, first.headers["Range"]) == (202, "0-2")
        gap = s.patch(base + first.headers["Location"], data=b"x", headers={"Content-Range": "4-4"})
        assert (gap.status_code, gap.headers["Range"]) == (416, "0-2")
        wrong = s.put(base + first.headers["Location"], params={"digest": digest_of(b"abd")})
        assert wrong.json()["errors"][0]["code"] == "DIGEST_INVALID"
        gone = s.get(base + first.headers["Location"])
        assert gone.status_code == 404 and gone.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        manifest = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": digest_of(b"{}"), "size": 2},
                "layers": [],
            }
        )
        refused = s.put(f"{base}/v2/{REPO}/manifests/v1", data=manifest, headers={"Content-Type": OCI_MANIFEST})
        assert refused.status_code == 400 and refused.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert REPO not in stub.repositories or not stub.repository(REPO).manifests


# --- clean pushes ----------------------------------------------------------------------------------------------


def test_whole_blob_upload_is_one_put_with_the_digest(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    result = pusher(image, chunk_size=0)
    assert_pushed(stub, image, result)
    assert result.reference == f"{stub.host}/{REPO}@{image.top.digest}"
    assert result.uri == f"oci://{stub.host}/{REPO}@{image.top.digest}"
    assert result.media_type == OCI_MANIFEST
    assert all(b.outcome == "uploaded" for b in result.blobs)
    assert patches(stub) == []
    for digest, data in image.blobs.items():
        sent = blob_requests(stub, digest)
        assert methods(sent) == ["HEAD", "POST", "PUT"]
        put = sent[-1]
        assert put.received == len(data) and put.headers["Content-Length"] == str(len(data))
        assert put.status == 201 and "_state" in put.query  # the session URL's query was kept
    assert [s.via for s in stub.stored if s.kind == "blob"] == ["upload"] * len(image.blobs)
    assert_progress_complete(pusher, image)


@pytest.mark.parametrize("min_length", [None, 100_000])
def test_chunked_upload_sends_ordered_ranges(
    stub: RegistryStub, pusher: Pusher, image: Image, min_length: int | None
) -> None:
    stub.behaviour.chunk_min_length = min_length
    result = pusher(image)
    assert_pushed(stub, image, result)
    chunk = max(CHUNK, min_length or 0)
    sent = patches(stub)
    expected = [(start, min(start + chunk, BIG) - 1) for start in range(0, BIG, chunk)]
    assert [content_range(p) for p in sent] == expected
    for request in sent:
        start, end = content_range(request)
        assert request.headers["Content-Length"] == str(end - start + 1) == str(request.received)
        assert request.status == 202
    # The session is closed by an empty PUT on the Location of the last PATCH answer.
    closing = [r for r in blob_requests(stub, image.big) if r.method == "PUT"]
    assert len(closing) == 1 and closing[0].received == 0
    assert closing[0].query["_state"][0] in sent[-1].answer["Location"]
    # Blobs no bigger than a chunk go whole.
    for digest in image.blob_digests() - {image.big}:
        assert methods(blob_requests(stub, digest)) == ["HEAD", "POST", "PUT"]
    assert_progress_complete(pusher, image)


def test_index_goes_after_its_manifests_which_go_after_their_blobs(stub: RegistryStub, tmp_path: Path) -> None:
    image = build_image(tmp_path / "multi", platforms=(AMD64, ARM64, Platform("linux", "arm", "v7")))
    result = Pusher(stub)(image)
    assert_pushed(stub, image, result)
    assert result.media_type == OCI_INDEX
    puts = manifest_puts(stub)
    children = [d for d in image.manifests if d != image.top.digest]
    # Children by digest, with their media type; the index last, by tag.
    assert [p.path.rsplit("/", 1)[1] for p in puts] == [*children, "latest"]
    assert all(p.headers["Content-Type"] == OCI_MANIFEST for p in puts[:-1])
    assert puts[-1].headers["Content-Type"] == OCI_INDEX
    assert [s.digest for s in stub.stored if s.kind == "manifest"] == [*children, image.top.digest]
    assert len(image.blobs) == 3 + 3  # three layers shared, one config per platform, each sent once
    assert sum(1 for r in stub.requests_to() if r.method == "PUT" and "digest" in r.query) == len(image.blobs)


def test_second_push_only_asks(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    first = pusher(image)
    stub.clear_log()
    second = pusher(image)
    assert second.digest == first.digest
    assert all(b.outcome == "skipped" for b in second.blobs)
    blob_calls = [r for r in stub.requests_to() if "/blobs/" in r.path]
    assert methods(blob_calls) == ["HEAD"] * len(image.blobs)
    assert all(r.received == 0 for r in blob_calls)
    assert [s.kind for s in stub.stored] == ["manifest"]  # the tag is set again; no blob moves
    assert second.to_json()["uploadedBytes"] == 0


# --- mounts ----------------------------------------------------------------------------------------------------


def test_mount_from_another_repository(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    pusher(image, "models/source")
    stub.clear_log()
    result = pusher(image, mount_from=("models/source",))
    assert_pushed(stub, image, result)
    assert {(b.outcome, b.source) for b in result.blobs} == {("mounted", "models/source")}
    posts = [r for r in stub.requests_to() if r.method == "POST"]
    assert len(posts) == len(image.blobs) and all(r.status == 201 for r in posts)
    assert {r.query["from"][0] for r in posts} == {"models/source"}
    assert not [r for r in stub.requests_to() if r.received and "/blobs/" in r.path]  # no blob byte was sent
    assert {s.via for s in stub.stored if s.kind == "blob"} == {"mount"}


def test_refused_mount_uploads_on_the_session_it_opened(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    pusher(image, "models/source")
    stub.behaviour.mount_enabled = False
    stub.clear_log()
    result = pusher(image, mount_from=("models/source",))
    assert_pushed(stub, image, result)
    assert all(b.outcome == "uploaded" for b in result.blobs)
    for digest in image.blobs:
        sent = blob_requests(stub, digest)
        post = next(r for r in sent if r.method == "POST")
        assert post.status == 202 and post.query["mount"] == [digest]
        # One POST per blob: the 202 session is the one used, not thrown away.
        assert methods(sent).count("POST") == 1
        assert all(session_of(r) == session_of(post) for r in sent if r.method in ("PATCH", "PUT"))


def test_known_blobs_mount_into_another_repository(stub: RegistryStub, image: Image, tmp_path: Path) -> None:
    known = KnownBlobs(tmp_path / "known.sqlite")
    Pusher(stub)(image, "team/a", known=known)
    stub.clear_log()
    result = Pusher(stub)(image, "team/b", known=known)
    assert_pushed(stub, image, result, repo="team/b")
    assert {(b.outcome, b.source) for b in result.blobs} == {("mounted", "team/a")}
    assert {s.via for s in stub.stored if s.kind == "blob"} == {"mount"}
    # Stale hints (the sources lost the blob) cost one refused mount, then the upload goes on that session.
    del stub.repository("team/a").blobs[image.big]
    del stub.repository("team/b").blobs[image.big]
    stub.clear_log()
    third = Pusher(stub)(image, "team/c", known=known)
    assert_pushed(stub, image, third, repo="team/c")
    outcomes = {b.digest: b.outcome for b in third.blobs}
    assert outcomes.pop(image.big) == "uploaded" and set(outcomes.values()) == {"mounted"}
    posts = [r for r in blob_requests(stub, image.big) if r.method == "POST"]
    assert [(r.query["from"], r.status) for r in posts] == [(["team/b"], 202)]  # the latest holder is tried first


# --- ECR -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "quirk",
    [
        pytest.param(Behaviour(ecr_like=True, auth="basic", users={"AWS": PASSWORD}), id="ecr-like"),
        pytest.param(Behaviour(stuck_range_after=2), id="stuck-range"),
    ],
)
def test_broken_chunking_falls_back_to_whole_blobs(
    stub: RegistryStub, tmp_path: Path, quirk: Behaviour, caplog: pytest.LogCaptureFixture
) -> None:
    stub.behaviour = quirk
    image = build_image(tmp_path / "layout", layer_sizes=(BIG, BIG - 1000, 500))
    pusher = Pusher(stub, Credentials("AWS", PASSWORD))
    caplog.set_level(logging.WARNING, logger="ocimodel")
    result = pusher(image, jobs=1)
    assert_pushed(stub, image, result)
    assert "mishandles chunked uploads" in caplog.text
    # Chunking was tried on the first big blob only; the registry's broken session was given up for a whole PUT.
    sent = patches(stub)
    assert len({session_of(p) for p in sent}) == 1
    assert len(sent) == (1 if quirk.ecr_like else 3)
    for digest in image.blobs:
        whole = [r for r in blob_requests(stub, digest) if r.method == "PUT"]
        assert len(whole) == 1 and whole[0].received == len(image.blobs[digest])
    assert_progress_complete(pusher, image)


def test_ecr_host_gets_whole_blob_uploads_without_trying_chunks(stub: RegistryStub, image: Image) -> None:
    assert is_ecr(ECR_HOST) and is_ecr("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com")
    assert not is_ecr("public.ecr.aws") and not is_ecr(stub.host) and not is_ecr("ecr.example.com")
    stub.behaviour = Behaviour(ecr_like=True, auth="basic", users={"AWS": PASSWORD})
    session = requests.Session()
    session.trust_env = False
    session.mount(f"http://{ECR_HOST}/", Redirector(ECR_HOST, stub.host))
    pusher = Pusher(stub, Credentials("AWS", PASSWORD))
    result = pusher(image, registry=ECR_HOST, client=pusher.client(ECR_HOST, session))
    assert_pushed(stub, image, result)
    assert result.reference == f"{ECR_HOST}/{REPO}@{image.top.digest}"
    assert patches(stub) == []
    for digest in image.blobs:
        answered = [r for r in blob_requests(stub, digest) if r.status != 401]  # the very first request drew the challenge
        assert methods(answered) == ["HEAD", "POST", "PUT"]
    # ECR's manifest PUT answer has no Docker-Content-Digest: the digest we report is our own.
    assert "Docker-Content-Digest" not in manifest_puts(stub)[-1].answer
    assert {r.authorization for r in stub.requests_to() if r.status != 401} == {"Basic"}


# --- surviving faults ------------------------------------------------------------------------------------------


def test_reset_mid_chunk_resumes_where_the_registry_says(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    cut = 2 * CHUNK + 5000  # the registry keeps two chunks and 5000 bytes of the third
    stub.behaviour.faults.append(Fault(reset_after=5000, method="PATCH", nth=3))
    result = pusher(image)
    assert_pushed(stub, image, result)
    sent = blob_requests(stub, image.big, chunked=True)
    assert methods(sent).count("POST") == 1  # same session throughout
    broken = next(i for i, r in enumerate(sent) if r.method == "PATCH" and r.status is None)
    status, resumed = sent[broken + 1], sent[broken + 2]
    assert status.method == "GET" and status.status == 204 and status.answer["Range"] == f"0-{cut - 1}"
    assert resumed.method == "PATCH" and content_range(resumed)[0] == cut
    received = sum(r.received for r in sent if r.method == "PATCH")
    assert received == BIG  # not a byte twice; starting over would have needed cut + BIG
    assert received < cut + BIG
    assert_progress_complete(pusher, image)


def test_chunk_broken_off_early_is_counted_once(stub: RegistryStub, pusher: Pusher, tmp_path: Path) -> None:
    """A 16 MiB chunk does not fit in the socket buffers: the send breaks partway, and the bar must know how far."""
    size = 24 << 20
    image = build_image(tmp_path / "layout", layer_sizes=(size,))
    stub.behaviour.faults.append(Fault(reset_after=1000, method="PATCH"))
    result = pusher(image, chunk_size=16 << 20)
    assert_pushed(stub, image, result)
    assert sum(r.received for r in blob_requests(stub, image.big, chunked=True) if r.method == "PATCH") == size
    assert_progress_complete(pusher, image)


def test_stale_upload_state_refused_as_distribution_does(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    """docker-registry cancels a session asked about with the ``_state`` of before a broken PATCH: start over."""
    stub.behaviour.strict_state = True
    stub.behaviour.faults.append(Fault(reset_after=5000, method="PATCH", nth=3))
    result = pusher(image)
    assert_pushed(stub, image, result)
    sent = blob_requests(stub, image.big, chunked=True)
    status = next(r for r in sent if r.method == "GET")
    assert status.status == 400 and sent[sent.index(status) + 1].method == "POST"
    assert methods(sent).count("POST") == 2
    assert_progress_complete(pusher, image)


def test_first_chunk_failure_resumes_from_zero(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    """After a failed first PATCH the registry says ``Range: 0-0`` for an empty upload, as distribution does."""
    stub.behaviour.faults.append(Fault(503, method="PATCH"))
    result = pusher(image)
    assert_pushed(stub, image, result)
    sent = [r for r in blob_requests(stub, image.big, chunked=True) if r.method in ("PATCH", "GET")]
    assert [(r.method, r.status) for r in sent[:3]] == [("PATCH", 503), ("GET", 204), ("PATCH", 202)]
    assert content_range(sent[2])[0] == 0
    assert methods(blob_requests(stub, image.big, chunked=True)).count("POST") == 1


def test_first_chunk_cut_after_one_byte_starts_over(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    """One byte kept also reads ``Range: 0-0``: resuming from 0 then gets 416, which must mean a fresh session."""
    stub.behaviour.faults.append(Fault(reset_after=1, method="PATCH"))
    result = pusher(image)
    assert_pushed(stub, image, result)
    sent = blob_requests(stub, image.big, chunked=True)
    assert [(r.method, r.status) for r in sent[:5]] == [
        ("HEAD", 404), ("POST", 202), ("PATCH", None), ("GET", 204), ("PATCH", 416)
    ]
    assert sent[3].answer["Range"] == "0-0" and sent[2].received == 1
    assert methods(sent).count("POST") == 2
    assert_progress_complete(pusher, image)


def test_scattered_failures_in_a_long_upload_do_not_add_up(stub: RegistryStub, pusher: Pusher, tmp_path: Path) -> None:
    """A reset every third chunk: each resume makes progress, so a long blob gets through in one session."""
    size = 30 * CHUNK + 17
    image = build_image(tmp_path / "layout", layer_sizes=(size,))
    stub.behaviour.faults.append(Fault(reset_after=CHUNK // 2, method="PATCH", nth=3, every=3, times=10**6))
    result = pusher(image)
    assert_pushed(stub, image, result)
    assert stub.behaviour.faults[0].fired > PushOptions().attempts
    sent = blob_requests(stub, image.big, chunked=True)
    assert methods(sent).count("POST") == 1
    assert sum(r.received for r in sent if r.method == "PATCH") == size
    assert_progress_complete(pusher, image)


def test_reset_during_whole_put_starts_over_with_a_fresh_session(
    stub: RegistryStub, pusher: Pusher, image: Image
) -> None:
    stub.behaviour.faults.append(Fault(reset_after=100_000, method="PUT", query_contains=image.big))
    result = pusher(image, chunk_size=0)
    assert_pushed(stub, image, result)
    sent = blob_requests(stub, image.big)
    assert methods(sent) == ["HEAD", "POST", "PUT", "POST", "PUT"]
    assert sent[2].status is None and sent[4].status == 201
    assert session_of(sent[1]) != session_of(sent[3])
    assert len(pusher.push_sleeps) == 1
    assert_progress_complete(pusher, image)


def test_every_third_request_failing_is_survived(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    stub.behaviour.faults.append(Fault(503, nth=3, every=3, times=10**6))
    result = pusher(image, jobs=1)
    assert_pushed(stub, image, result)
    assert stub.behaviour.faults[0].fired >= 5
    assert_progress_complete(pusher, image)


def test_retry_after_is_honoured(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    stub.behaviour.faults += [
        Fault(429, method="POST", headers={"Retry-After": "2"}),
        Fault(429, method="PATCH", nth=2, headers={"Retry-After": "2"}),
        Fault(429, method="PUT", path_contains="/manifests/", headers={"Retry-After": "3"}),
    ]
    result = pusher(image, jobs=1)
    assert_pushed(stub, image, result)
    assert pusher.client_sleeps == [2.0, 3.0]  # the POST and the manifest PUT were retried by the client
    assert pusher.push_sleeps == [2.0]  # the PATCH was resumed by the push
    assert all(f.fired == 1 for f in stub.behaviour.faults)


def test_token_expiring_mid_upload_is_renewed(stub: RegistryStub, image: Image) -> None:
    stub.behaviour = Behaviour(auth="bearer", users={"alice": PASSWORD}, anonymous_pull=False)
    stub.behaviour.faults.append(Fault(before=stub.expire_tokens, method="PATCH", nth=3))
    pusher = Pusher(stub, Credentials("alice", PASSWORD))
    result = pusher(image, jobs=1)
    assert_pushed(stub, image, result)
    log = stub.requests_to()
    refused = next(i for i, r in enumerate(log) if r.method == "PATCH" and r.status == 401)
    renewal, resent = log[refused + 1], log[refused + 2]
    # A new push token, then the refused chunk again, whole, from the same offset.
    assert renewal.path == "/token" and f"repository:{REPO}:pull,push" in renewal.query["scope"]
    assert renewal.authorization == "Basic" and renewal.status == 200
    assert resent.method == "PATCH" and content_range(resent) == content_range(log[refused])
    assert resent.status == 202 and resent.received == CHUNK
    assert sum(1 for r in log if r.status == 401) == 1 + 1 + 1  # the first HEAD, the PATCH, the next blob's HEAD
    assert_progress_complete(pusher, image)


def test_tokens_that_run_out_every_few_requests(stub: RegistryStub, image: Image) -> None:
    stub.behaviour = Behaviour(auth="bearer", users={"alice": PASSWORD}, anonymous_pull=False, token_max_uses=3)
    pusher = Pusher(stub, Credentials("alice", PASSWORD))
    result = pusher(image, jobs=1)
    assert_pushed(stub, image, result)
    assert any(r.status == 401 for r in patches(stub))
    assert len(stub.token_requests()) > 3
    assert_progress_complete(pusher, image)


def test_basic_auth_refused_once_mid_upload(stub: RegistryStub, image: Image) -> None:
    stub.behaviour = Behaviour(auth="basic", users={"alice": PASSWORD})
    stub.behaviour.faults.append(Fault(401, method="PATCH", nth=2))
    pusher = Pusher(stub, Credentials("alice", PASSWORD))
    result = pusher(image)
    assert_pushed(stub, image, result)
    assert [r.status for r in patches(stub)].count(401) == 1
    assert_progress_complete(pusher, image)


@pytest.mark.parametrize("method", ["PATCH", "GET"])
def test_lost_upload_session_starts_over(stub: RegistryStub, pusher: Pusher, image: Image, method: str) -> None:
    """The registry restarted: the session's URL now answers 404 BLOB_UPLOAD_UNKNOWN, so a fresh POST follows."""
    if method == "GET":  # lost while the client was finding out where to resume
        stub.behaviour.faults += [Fault(503, method="PATCH", nth=2), Fault(before=stub.forget_uploads, method="GET", path_contains="/blobs/uploads/")]
    else:
        stub.behaviour.faults.append(Fault(before=stub.forget_uploads, method="PATCH", nth=3))
    result = pusher(image, jobs=1)  # one blob at a time, so the restart loses no other blob's session
    assert_pushed(stub, image, result)
    sent = blob_requests(stub, image.big, chunked=True)
    lost = [r for r in sent if r.status == 404 and "/uploads/" in r.path]
    assert [r.method for r in lost] == [method]
    posts = [i for i, r in enumerate(sent) if r.method == "POST"]
    assert len(posts) == 2 and posts[1] == sent.index(lost[0]) + 1  # a fresh session straight away
    assert content_range(sent[posts[1] + 1]) == (0, CHUNK - 1)
    assert sum(1 for r in stub.requests_to() if r.method == "POST" and r.status == 202) == len(image.blobs) + 1
    assert_progress_complete(pusher, image)


# --- failing cleanly -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "chunk_size", "expected"),
    [
        # Whole PUT fails each time: 5 fresh sessions (PushOptions.attempts), no retry inside a session.
        pytest.param(Fault(500, method="PUT", query_contains="digest=", times=10**6), 0, {"POST": 5, "PUT": 5}, id="put-500"),
        # Chunk resets each time: per session 1 POST, 6 PATCHes (5 resumes), 5 GETs; 5 sessions; 1 GET /v2/ first.
        pytest.param(
            Fault(reset_after=10, method="PATCH", times=10**6), CHUNK, {"POST": 5, "PATCH": 30, "GET": 5 * 5 + 1}, id="patch-reset"
        ),
        # POST never opens a session: the client tries 5 times, the push 5 times.
        pytest.param(
            Fault(503, method="POST", times=10**6), CHUNK, {"POST": 25}, id="post-503"
        ),
    ],
)
def test_persistent_failure_stops_without_a_manifest(
    stub: RegistryStub, pusher: Pusher, tmp_path: Path, fault: Fault, chunk_size: int, expected: dict[str, int]
) -> None:
    image = build_image(tmp_path / "layout", layer_sizes=(BIG,))
    config = next(d for d in image.blobs if d != image.big)
    stub.add_blob(REPO, image.blobs[config])  # only the big blob needs sending
    stub.behaviour.faults.append(fault)
    with pytest.raises(RegistryError) as err:
        pusher(image, chunk_size=chunk_size)
    assert f"registry {stub.host}" in str(err.value)
    assert err.value.transient
    counts = {m: methods(stub.requests_to()).count(m) for m in expected}
    assert counts == expected
    assert manifest_puts(stub) == []
    assert not stub.repository(REPO).manifests


def test_missing_blob_fails_before_any_request(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    image.layout.blob_path(image.big).unlink()
    with pytest.raises(OcimodelError) as err:
        pusher(image)
    assert str(err.value) == f"layout {image.layout.root} lacks blob {image.big}; pack it again (nothing was pushed)"
    assert stub.log == []


def test_damaged_blob_fails_before_any_request(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    path = image.layout.blob_path(image.big)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(OcimodelError, match=f"blob {image.big} in .* is {BIG - 1} bytes, not {BIG}"):
        pusher(image)
    assert stub.log == []


def test_manifest_too_large_is_a_clean_error(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    stub.behaviour.manifest_max_bytes = 200
    with pytest.raises(OcimodelError) as err:
        pusher(image)
    message = str(err.value)
    assert f"registry {stub.host}" in message and "413" in message
    assert f"manifest latest of {REPO}" in message
    assert "\n" not in message
    assert not stub.repository(REPO).manifests


def test_rejected_manifest_is_not_retried(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    """A registry that lost a blob between upload and manifest (MANIFEST_BLOB_UNKNOWN) fails once, clearly."""
    stub.behaviour.faults.append(Fault(400, path_contains="/manifests/", code="MANIFEST_BLOB_UNKNOWN", times=10))
    with pytest.raises(RegistryError) as err:
        pusher(image)
    assert "MANIFEST_BLOB_UNKNOWN" in str(err.value) and not err.value.transient
    assert len(manifest_puts(stub)) == 1


# --- secrets ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_no_secret_in_errors_or_logs(
    stub: RegistryStub, image: Image, auth: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    stub.behaviour = Behaviour(auth=auth, users={"alice": PASSWORD}, anonymous_pull=False, token_max_uses=4)  # type: ignore[arg-type]
    stub.behaviour.faults += [Fault(reset_after=1000, method="PATCH", nth=2), Fault(503, method="PUT", nth=1)]
    if auth == "basic":  # Bearer tokens already run out mid-upload (token_max_uses)
        stub.behaviour.faults.append(Fault(401, method="PATCH", nth=4))
    caplog.set_level(logging.DEBUG, logger="ocimodel")
    messages = []
    # One blob at a time: a token good for 4 uses, shared by parallel uploads, could run out before a resend.
    result = Pusher(stub, Credentials("alice", PASSWORD))(image, jobs=1)
    assert_pushed(stub, image, result)
    # Then the password changes and the push fails: the error must not quote what was sent.
    stub.behaviour.users = {"alice": "changed"}
    stub.expire_tokens()
    other = build_image(tmp_path / "other", seed=1)
    with pytest.raises(OcimodelError) as err:
        Pusher(stub, Credentials("alice", PASSWORD))(other)
    messages.append(str(err.value))
    assert "refused the credentials" in messages[0] and stub.host in messages[0]
    assert "PATCH http://" in caplog.text and "PUT http://" in caplog.text  # debug logging was on
    assert any(r.status == 401 for r in patches(stub))  # credentials were sent again in the middle of an upload
    states = {s for upload in stub.uploads.values() for s in upload.states}
    states |= {r.query["_state"][0] for r in stub.requests_to() if "_state" in r.query}
    secrets = [PASSWORD, base64.b64encode(f"alice:{PASSWORD}".encode()).decode(), *stub.tokens, *states]
    assert len(secrets) > 3
    for secret in secrets:
        assert secret not in caplog.text
        assert all(secret not in m for m in messages)


# --- registries that misbehave: ECR's token and size limit, impossible ranges, rewritten or refused bytes --------


class FakeEcr:
    """ECR's GetAuthorizationToken: a new token per call, valid 12 hours."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def get_authorization_token(self) -> dict[str, Any]:
        self.tokens.append(f"ecr-token-{len(self.tokens) + 1}")
        auth = base64.b64encode(f"AWS:{self.tokens[-1]}".encode()).decode()
        expires = datetime.now(timezone.utc) + timedelta(hours=12)
        return {"authorizationData": [{"authorizationToken": auth, "expiresAt": expires}]}


def ecr_client(stub: RegistryStub, fake: FakeEcr, sleeps: list[float]) -> RegistryClient:
    session = requests.Session()
    session.trust_env = False
    session.mount(f"http://{ECR_HOST}/", Redirector(ECR_HOST, stub.host))
    keychain = Keychain((EcrCredentials(lambda region: fake),))
    return RegistryClient(ECR_HOST, plain_http=True, keychain=keychain, session=session,
                          retry=RetryPolicy(sleep=sleeps.append))


def push_to_ecr(stub: RegistryStub, image: Image, fake: FakeEcr) -> Any:
    sleeps: list[float] = []
    ref = parse_reference(f"{ECR_HOST}/{REPO}:latest")
    options = PushOptions(jobs=1, chunk_size=CHUNK, retry=RetryPolicy(sleep=sleeps.append))
    with ecr_client(stub, fake, sleeps) as client:
        return push(image.layout, ref, tag=None, options=options, reporter=Pusher(stub).reporter, client=client)


def test_ecr_token_expiring_mid_push_is_renewed_with_one_login(stub: RegistryStub, image: Image) -> None:
    """ECR answers an expired token with 403 DENIED, not 401: log in again once and finish with the same digest."""
    fake = FakeEcr()
    stub.behaviour = Behaviour(ecr_like=True, auth="basic", users={"AWS": "ecr-token-1"})

    def expire() -> None:
        stub.behaviour.expired_passwords.add("ecr-token-1")
        stub.behaviour.users = {"AWS": "ecr-token-2"}

    stub.behaviour.faults.append(Fault(before=expire, method="PUT", query_contains="digest=", nth=2))
    result = push_to_ecr(stub, image, fake)
    assert_pushed(stub, image, result)
    assert result.reference == f"{ECR_HOST}/{REPO}@{image.top.digest}"
    assert fake.tokens == ["ecr-token-1", "ecr-token-2"]
    denied = [r for r in stub.requests_to() if r.status == 403]
    assert len(denied) == 1 and denied[0].method == "PUT"


def test_genuine_ecr_denial_fails_after_one_new_login(stub: RegistryStub, image: Image) -> None:
    """A 403 that a new login does not cure (IAM denies the push) fails cleanly; other registries get no retry."""
    fake = FakeEcr()
    stub.behaviour = Behaviour(ecr_like=True, auth="basic", users={"AWS": "ecr-token-1"})
    stub.behaviour.faults.append(Fault(403, path_contains="/manifests/", method="PUT", code="DENIED", times=10**6))
    with pytest.raises(RegistryError) as err:
        push_to_ecr(stub, image, fake)
    assert str(err.value).startswith(f"registry {ECR_HOST} denied PUT of manifest latest of {REPO} (DENIED")
    assert "\n" not in str(err.value)
    assert fake.tokens == ["ecr-token-1", "ecr-token-2"]
    assert len(manifest_puts(stub)) == 2
    stub.clear_log()
    stub.behaviour.ecr_like, stub.behaviour.auth = False, "none"
    with pytest.raises(RegistryError, match="denied PUT"):
        Pusher(stub)(image)
    assert len(manifest_puts(stub)) == 1


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_layer_too_big_for_ecr_is_refused_before_any_request(stub: RegistryStub, tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", layer_sizes=(3000,))
    # Swap the layer for a sparse one of ECR's maximum plus one byte, with a manifest that says so.
    huge = Descriptor(OCI_LAYER, "sha256:" + "e" * 64, ECR_MAX_LAYER_BYTES + 1)
    sparse(image.layout.blob_path(huge.digest), huge.size)
    manifest = json.loads(image.manifests[image.top.digest])
    manifest["layers"] = [huge.to_json()]
    top = image.layout.put_bytes(OCI_MANIFEST, canonical_json(manifest))
    image.layout.set_tag("latest", top)
    with pytest.raises(OcimodelError) as err:
        push_to_ecr(stub, image, FakeEcr())
    message = str(err.value)
    assert f"blob {huge.digest} ({image.layout.blob_path(huge.digest)}) is 50.8 GiB" in message
    assert "more than the 50.8 GiB ECR accepts" in message and ECR_HOST in message
    assert stub.log == []


def test_upload_too_big_for_ecr_is_refused_before_any_request(stub: RegistryStub) -> None:
    """build's compressed layers (size known once hashed) and base layers come through here."""
    upload = Upload(ECR_MAX_LAYER_BYTES + 1, None, lambda start, length: iter(()), "model.safetensors")
    with ecr_client(stub, FakeEcr(), []) as client:
        pusher = BlobSender(client, REPO, PushOptions(), Pusher(stub).reporter)
        with pytest.raises(OcimodelError, match="layer model.safetensors is 50.8 GiB, more than"):
            pusher.push_blob(upload)
    assert stub.log == []


@pytest.mark.parametrize("known_digest", [True, False], ids=["push", "build"])
def test_range_past_the_blob_end_starts_the_blob_over(
    stub: RegistryStub, pusher: Pusher, image: Image, known_digest: bool
) -> None:
    """After a failed chunk, the registry claims more bytes than were ever sent: a lost session, not a resume."""
    stub.behaviour.faults += [
        Fault(503, method="PATCH", nth=2),
        Fault(method="GET", path_contains="/blobs/uploads/", headers={"Range": f"0-{BIG + 10**6}"}),
    ]
    if known_digest:
        result = pusher(image, jobs=1)
        assert_pushed(stub, image, result)
        assert_progress_complete(pusher, image)
        return
    data = image.blobs[image.big]
    upload = Upload(len(data), None, lambda start, length: [data[start : start + length]], "streamed layer")
    with pusher.client() as client:
        blob_pusher = BlobSender(client, REPO, PushOptions(chunk_size=CHUNK, retry=RetryPolicy(sleep=lambda _: None)),
                                 pusher.reporter)
        outcome = blob_pusher.push_blob(upload)
    assert outcome.digest == image.big and stub.repository(REPO).blobs[image.big] == data
    assert sum(1 for r in stub.requests_to() if r.method == "POST") == 2  # the lost session, then a fresh one


def test_manifest_stored_as_another_digest_names_both(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    other = "sha256:" + "f" * 64
    stub.behaviour.faults.append(Fault(path_contains="/manifests/", method="PUT", headers={"Docker-Content-Digest": other}))
    with pytest.raises(OcimodelError) as err:
        pusher(image)
    message = str(err.value)
    assert image.top.digest in message and other in message and "stored something other than the bytes sent" in message


def test_corrupt_local_blob_is_named_by_digest_and_path(stub: RegistryStub, pusher: Pusher, image: Image) -> None:
    path = image.layout.blob_path(image.big)
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError) as err:
        pusher(image, chunk_size=0)
    message = str(err.value)
    assert message.startswith(f"blob {image.big} ({path}): registry {stub.host} found that the bytes it received do")
    assert "the file is damaged (pack the layout again)" in message
    assert "DIGEST_INVALID" in err.value.codes and "uploads/" not in message
    assert digest_of(bytes(data)) not in stub.repository(REPO).blobs
