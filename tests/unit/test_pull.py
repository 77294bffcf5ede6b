from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any, Literal

import pytest

from ocimodel.errors import DigestMismatch, OcimodelError, RegistryError
from ocimodel.layout.descriptor import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    Platform,
)
from ocimodel.layout.store import Layout
from ocimodel.registry.auth import Credentials, Keychain
from ocimodel.registry.client import RegistryClient
from ocimodel.registry.pull import PulledImage, pull_image
from ocimodel.registry.reference import Reference, parse_reference
from ocimodel.retry import RetryPolicy
from tests.harness.registry_stub import Behaviour, Fault, RegistryStub

REPO = "library/busybox"
AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
PASSWORD = "stub-pa55word"




@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout.create(tmp_path / "layout")


class Client:
    """Builds clients that never sleep, recording the delays they would have waited."""

    def __init__(self, stub: RegistryStub) -> None:
        self.stub = stub
        self.sleeps: list[float] = []

    def __call__(self, creds: Credentials | None = None) -> RegistryClient:
        keychain = Keychain((lambda host: creds,))
        return RegistryClient(self.stub.host, keychain=keychain, retry=RetryPolicy(sleep=self.sleeps.append))


@pytest.fixture
def client(stub: RegistryStub) -> Client:
    return Client(stub)


def config_for(platform: Platform, tag: str = "") -> dict[str, Any]:
    return {**platform.to_json(), "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Labels": {"t": tag}}}


def layers_for(platform: Platform) -> list[bytes]:
    return [f"{platform} layer {i}".encode() * 1000 for i in range(2)]


def ref_to(stub: RegistryStub, digest: str) -> Reference:
    return parse_reference(f"{stub.host}/{REPO}@{digest}")


def blob_files(layout: Layout) -> set[str]:
    """Every file under blobs/, temp files included: what "layout unchanged" compares."""
    return {str(p.relative_to(layout.root)) for p in layout.blob_dir.iterdir()}


def multi_platform_image(stub: RegistryStub) -> dict[str, Any]:
    """An index over three platforms plus a buildx-style attestation entry."""
    entries = []
    for platform in (AMD64, ARM64, Platform("linux", "arm", "v7")):
        manifest = stub.add_image(REPO, layers_for(platform), config_for(platform))
        entries.append({**manifest, "platform": platform.to_json()})
    attestation = stub.add_image(REPO, [b"attestation"], {})
    entries.append({**attestation, "platform": {"os": "unknown", "architecture": "unknown"}})
    return stub.add_index(REPO, entries)


def test_pull_single_manifest(stub: RegistryStub, layout: Layout, client: Client) -> None:
    manifest = stub.add_image(REPO, layers_for(AMD64), config_for(AMD64), tag="latest")
    with client() as c:
        pulled = pull_image(ref_to(stub, manifest["digest"]), AMD64, layout, client=c)
    assert isinstance(pulled, PulledImage)
    assert pulled.manifest.digest == manifest["digest"]
    assert pulled.manifest.media_type == OCI_MANIFEST
    assert pulled.manifest.size == manifest["size"]
    assert pulled.manifest.platform == AMD64
    assert pulled.config_json["architecture"] == "amd64"
    digests = [pulled.manifest.digest, pulled.manifest_json["config"]["digest"]]
    digests += [layer["digest"] for layer in pulled.manifest_json["layers"]]
    assert all(layout.has_blob(d) for d in digests)
    assert layout.read_blob(manifest["digest"]) == stub.repository(REPO).manifests["latest"][0]
    assert len(blob_files(layout)) == 4


def test_pull_index_picks_the_platform(stub: RegistryStub, layout: Layout, client: Client) -> None:
    index = multi_platform_image(stub)
    with client() as c:
        pulled = pull_image(ref_to(stub, index["digest"]), Platform("linux", "arm64"), layout, client=c)
    assert pulled.manifest.platform == ARM64
    assert pulled.config_json["architecture"] == "arm64"
    assert layout.has_blob(index["digest"])
    assert len(blob_files(layout)) == 5  # index, manifest, config, two layers: nothing of other platforms
    fetched = {r.path.rsplit("/", 1)[1] for r in stub.requests_to()}
    wanted = {pulled.manifest.digest, pulled.manifest_json["config"]["digest"]}
    wanted |= {layer["digest"] for layer in pulled.manifest_json["layers"]}
    assert fetched == wanted | {index["digest"]}


def test_pull_docker_manifest_list(stub: RegistryStub, layout: Layout, client: Client) -> None:
    entries = []
    for platform in (AMD64, ARM64):
        manifest = stub.add_image(
            REPO,
            layers_for(platform),
            config_for(platform),
            media_type=DOCKER_MANIFEST,
            config_media_type=DOCKER_CONFIG,
            layer_media_type=DOCKER_LAYER_GZIP,
        )
        entries.append({**manifest, "platform": platform.to_json()})
    index = stub.add_index(REPO, entries, media_type=DOCKER_MANIFEST_LIST)
    with client() as c:
        pulled = pull_image(ref_to(stub, index["digest"]), AMD64, layout, client=c)
    assert pulled.manifest.media_type == DOCKER_MANIFEST
    assert pulled.manifest.digest == entries[0]["digest"]


def test_unknown_platform_lists_the_available_ones(stub: RegistryStub, layout: Layout, client: Client) -> None:
    index = multi_platform_image(stub)
    with client() as c, pytest.raises(OcimodelError) as err:
        pull_image(ref_to(stub, index["digest"]), Platform("linux", "s390x"), layout, client=c)
    assert "no image for linux/s390x" in str(err.value)
    assert "linux/amd64, linux/arm64/v8, linux/arm/v7" in str(err.value)
    assert blob_files(layout) == set()


def test_single_manifest_for_another_platform_is_refused(stub: RegistryStub, layout: Layout, client: Client) -> None:
    manifest = stub.add_image(REPO, layers_for(ARM64), config_for(ARM64))
    with client() as c, pytest.raises(OcimodelError, match="image for linux/arm64/v8, not linux/amd64"):
        pull_image(ref_to(stub, manifest["digest"]), AMD64, layout, client=c)


@pytest.mark.parametrize("corrupt", ["layer", "config", "manifest", "index"])
def test_bad_digest_is_refused_and_layout_unchanged(
    stub: RegistryStub, layout: Layout, client: Client, corrupt: str
) -> None:
    index = multi_platform_image(stub)
    amd64 = json.loads(stub.repository(REPO).manifests[index["digest"]][0])["manifests"][0]
    manifest = json.loads(stub.repository(REPO).manifests[amd64["digest"]][0])
    bad = {
        "layer": manifest["layers"][1]["digest"],
        "config": manifest["config"]["digest"],
        "manifest": amd64["digest"],
        "index": index["digest"],
    }[corrupt]
    stub.behaviour.corrupt.add(bad)
    before = blob_files(layout)
    with client() as c, pytest.raises(DigestMismatch) as err:
        pull_image(ref_to(stub, index["digest"]), AMD64, layout, client=c)
    assert bad in str(err.value) and f"registry {stub.host}" in str(err.value)
    if corrupt == "layer":
        # Layers are fetched in order: the good first one may stay, as a reusable blob nothing refers to yet.
        assert blob_files(layout) - before <= {f"blobs/sha256/{manifest['layers'][0]['digest'][7:]}"}
    else:
        assert blob_files(layout) - before <= {f"blobs/sha256/{layer['digest'][7:]}" for layer in manifest["layers"]}
    assert not layout.has_blob(bad)
    assert not layout.has_blob(index["digest"]) and not layout.has_blob(amd64["digest"])


def test_broken_download_is_explained_and_layout_unchanged(
    stub: RegistryStub, layout: Layout, client: Client
) -> None:
    manifest = stub.add_image(REPO, layers_for(AMD64), config_for(AMD64))
    layer = json.loads(stub.repository(REPO).manifests[manifest["digest"]][0])["layers"][0]["digest"]
    stub.behaviour.truncate.add(layer)
    with client() as c, pytest.raises(OcimodelError) as err:
        pull_image(ref_to(stub, manifest["digest"]), AMD64, layout, client=c)
    assert str(err.value) == (
        f"lost the connection to registry {stub.host} while reading blob {layer} of {REPO} (the answer broke off): "
        "try again"
    )
    assert blob_files(layout) == set()


def test_second_pull_makes_no_requests(stub: RegistryStub, layout: Layout, client: Client) -> None:
    index = multi_platform_image(stub)
    with client() as c:
        first = pull_image(ref_to(stub, index["digest"]), AMD64, layout, client=c)
    stub.clear_log()
    second = pull_image(ref_to(stub, index["digest"]), AMD64, layout)
    assert stub.log == []
    assert second == first


def test_missing_blobs_are_fetched_and_present_ones_reused(stub: RegistryStub, layout: Layout, client: Client) -> None:
    manifest = stub.add_image(REPO, layers_for(AMD64), config_for(AMD64))
    with client() as c:
        pulled = pull_image(ref_to(stub, manifest["digest"]), AMD64, layout, client=c)
    missing = pulled.manifest_json["layers"][0]["digest"]
    layout.blob_path(missing).unlink()
    stub.clear_log()
    pull_image(ref_to(stub, manifest["digest"]), AMD64, layout, client=Client(stub)())
    assert [r.path.rsplit("/", 1)[1] for r in stub.log] == [missing]


def test_tag_only_reference_is_refused(stub: RegistryStub, layout: Layout) -> None:
    with pytest.raises(OcimodelError) as err:
        pull_image(parse_reference(f"{stub.host}/{REPO}:1.36"), AMD64, layout)
    message = str(err.value)
    assert "not pinned by digest" in message and f"{stub.host}/{REPO}@sha256:" in message
    assert "crane digest" in message and "skopeo inspect" in message
    assert stub.log == []


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_redirected_blobs_get_no_authorization(
    stub: RegistryStub, layout: Layout, client: Client, auth: Literal["basic", "bearer"]
) -> None:
    stub.behaviour = Behaviour(auth=auth, users={"alice": PASSWORD}, anonymous_pull=False, redirect_blobs=True)
    manifest = stub.add_image(REPO, layers_for(AMD64), config_for(AMD64))
    with client(Credentials("alice", PASSWORD)) as c:
        pull_image(ref_to(stub, manifest["digest"]), AMD64, layout, client=c)
    storage = stub.requests_to("storage")
    assert len(storage) == 3  # config and two layers
    assert all(r.authorization is None for r in storage)
    registry_blob_gets = [r for r in stub.requests_to() if "/blobs/" in r.path]
    assert registry_blob_gets and all(r.authorization for r in registry_blob_gets)


def test_transient_failures_are_retried(stub: RegistryStub, layout: Layout, client: Client) -> None:
    manifest = stub.add_image(REPO, layers_for(AMD64), config_for(AMD64))
    layer = json.loads(stub.repository(REPO).manifests[manifest["digest"]][0])["layers"][0]["digest"]
    stub.behaviour.faults += [
        Fault(503, path_contains=layer, times=2),
        Fault(429, path_contains="/manifests/", headers={"Retry-After": "7"}),
    ]
    with client() as c:
        pull_image(ref_to(stub, manifest["digest"]), AMD64, layout, client=c)
    assert layout.has_blob(layer)
    assert len(client.sleeps) == 3 and client.sleeps[0] == 7.0


def test_persistent_failure_is_explained(stub: RegistryStub, layout: Layout, client: Client) -> None:
    manifest = stub.add_image(REPO, layers_for(AMD64), config_for(AMD64))
    stub.behaviour.faults.append(Fault(500, path_contains="/manifests/", times=100))
    with client() as c, pytest.raises(OcimodelError) as err:
        pull_image(ref_to(stub, manifest["digest"]), AMD64, layout, client=c)
    assert str(err.value) == (
        f"registry {stub.host} failed with 500 on GET of manifest {manifest['digest']} of {REPO} "
        "(STUB_FAULT: injected fault): try again later"
    )
    assert isinstance(err.value, RegistryError)
    assert (err.value.status, err.value.codes, err.value.transient) == (500, {"STUB_FAULT"}, True)
    assert len(client.sleeps) == RetryPolicy().attempts - 1


def test_unknown_manifest(stub: RegistryStub, layout: Layout, client: Client) -> None:
    digest = "sha256:" + "0" * 64
    with client() as c, pytest.raises(OcimodelError) as err:
        pull_image(ref_to(stub, digest), AMD64, layout, client=c)
    assert str(err.value) == (
        f"registry {stub.host} has no manifest {digest} of {REPO} "
        f"(MANIFEST_UNKNOWN: manifest unknown to registry: {digest}): check the reference"
    )
    assert isinstance(err.value, RegistryError) and not err.value.transient


def test_unreachable_registry(layout: Layout, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{sock.getsockname()[1]}"
    sleeps: list[float] = []
    client = RegistryClient(host, keychain=Keychain(()), retry=RetryPolicy(attempts=3, sleep=sleeps.append))
    caplog.set_level(logging.INFO, logger="ocimodel")
    with pytest.raises(OcimodelError) as err:
        pull_image(parse_reference(f"{host}/{REPO}@sha256:{'0' * 64}"), AMD64, layout, client=client)
    assert str(err.value) == (
        f"cannot reach registry {host} for {REPO} (connection refused): check the registry address and your network"
    )
    assert isinstance(err.value, RegistryError) and err.value.status is None and err.value.transient
    assert len(sleeps) == 2 and "retrying" in caplog.text


def test_head_blob(stub: RegistryStub, client: Client) -> None:
    digest = stub.add_blob(REPO, b"x")
    with client() as c:
        assert c.head_blob(REPO, digest) == 1
        assert c.head_blob(REPO, "sha256:" + "1" * 64) is None


@pytest.mark.parametrize("honours_range", [True, False])
def test_connection_dropped_mid_blob_is_resumed(
    stub: RegistryStub, layout: Layout, client: Client, honours_range: bool
) -> None:
    """A base layer whose download breaks off after its first MiB is picked up there (or read again from the start
    by a registry that ignores Range) and still verified against its digest."""
    big = bytes(range(256)) * 6000  # ~1.5 MiB, cut after 1.2 MB
    manifest = stub.add_image(REPO, [big], config_for(AMD64))
    layer = json.loads(stub.repository(REPO).manifests[manifest["digest"]][0])["layers"][0]["digest"]
    stub.behaviour.faults.append(Fault(method="GET", path_contains=layer, cut_answer=1_200_000))
    stub.behaviour.ignore_range = not honours_range
    with client() as c:
        pull_image(ref_to(stub, manifest["digest"]), AMD64, layout, client=c)
    assert layout.read_blob(layer) == big
    gets = [r for r in stub.requests_to() if r.path.endswith(layer)]
    assert [r.status for r in gets] == [200, 206 if honours_range else 200]
    assert gets[1].headers.get("Range") == "bytes=1200000-"
    assert len(client.sleeps) == 1


def test_base_mirrors_are_tried_in_order_for_the_same_digest(stub: RegistryStub, layout: Layout, tmp_path: Path) -> None:
    """The first registry lacks the image, the second wants credentials, the third serves it: the image (and the
    annotations naming it, so the digest built on it) is the one the first reference names."""
    from ocimodel.base import load_bases

    with RegistryStub() as empty, RegistryStub(Behaviour(auth="basic", users={"u": PASSWORD})) as private:
        manifest = stub.add_image(REPO, layers_for(AMD64), config_for(AMD64))
        digest = manifest["digest"]
        private.add_image(REPO, layers_for(AMD64), config_for(AMD64))
        refs = [f"{host}/{REPO}@{digest}" for host in (empty.host, private.host, stub.host)]
        [base] = load_bases(refs[0], [AMD64], layout, mirrors=refs[1:])
        assert base.annotations["org.opencontainers.image.base.name"] == refs[0]
        assert base.annotations["org.opencontainers.image.base.digest"] == digest
        assert layout.has_blob(digest)
        assert [r.status for r in empty.requests_to()] == [404]
        assert [r.status for r in private.requests_to()] == [401]

        stub.repositories.clear()
        with pytest.raises(OcimodelError) as err:
            load_bases(refs[0], [AMD64], Layout.create(tmp_path / "other"), mirrors=refs[1:])
    message = str(err.value)
    assert message.startswith(f"cannot fetch base image {digest} from any of {empty.host}, {private.host}, {stub.host} (")
    assert "\n" not in message and "OCIMODEL_BASE_IMAGE" in message


def test_mirrors_must_name_one_digest(stub: RegistryStub, layout: Layout) -> None:
    from ocimodel.base import load_bases

    one, other = f"{stub.host}/{REPO}@sha256:{'a' * 64}", f"{stub.host}/{REPO}@sha256:{'b' * 64}"
    with pytest.raises(OcimodelError, match="must name one digest"):
        load_bases(one, [AMD64], layout, mirrors=(other,))
    assert stub.log == []


def test_default_base_comes_with_its_mirrors_and_a_team_base_with_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ocimodel
    from ocimodel.base import DEFAULT_BASE, DEFAULT_BASE_MIRRORS

    class Seen(Exception):
        pass

    seen: list[tuple[str, tuple[str, ...]]] = []

    def record(text: str, platform: Platform, layout: Layout, plain: bool, mirrors: tuple[str, ...]) -> None:
        seen.append((text, tuple(mirrors)))
        raise Seen

    monkeypatch.setattr("ocimodel.base.load_base", record)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")

    def pack(base: str | None) -> None:
        with pytest.raises(Seen):
            ocimodel.pack(tmp_path / "model", tmp_path / "layout", base=base)

    pack(None)
    monkeypatch.setenv("OCIMODEL_BASE_IMAGE", f"registry.example.com/team/base@sha256:{'c' * 64}")
    pack(None)
    pack("scratch")
    digests = {parse_reference(m).digest for m in DEFAULT_BASE_MIRRORS}
    assert digests == {parse_reference(DEFAULT_BASE).digest}
    assert {parse_reference(m).api_host for m in DEFAULT_BASE_MIRRORS} == {"registry-1.docker.io", "mirror.gcr.io"}
    assert seen == [
        (DEFAULT_BASE, DEFAULT_BASE_MIRRORS),
        (f"registry.example.com/team/base@sha256:{'c' * 64}", ()),
        ("scratch", ()),
    ]
