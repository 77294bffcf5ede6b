"""``build`` into the registry stub in-process, with policies that never sleep, and the yardstick it is judged by:
the image ``pack`` makes of the same model (its manifest, config and layer bytes), which a build must leave in the
registry byte for byte."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

import ocimodel
from ocimodel.layout.pack import PackOptions, pack
from ocimodel.layout.store import Layout
from ocimodel.registry.auth import Credentials
from ocimodel.registry.client import RegistryClient
from ocimodel.results import BuildResult, PushResult
from ocimodel.retry import RetryPolicy
from ocimodel.source.local import LocalSource
from tests.harness.models import random_shards, write_model
from tests.harness.progress import Recorder
from tests.harness.registry_stub import RegistryStub, stub_client

REPO = "models/built"
CHUNK = 64 * 1024
PASSWORD = "bu1ld-Pa55word-never-shown"
#: The one shard big enough to be chunked: its layer is five full chunks and a ragged end, plus tar framing.
BIG = 5 * CHUNK + 1234
SMALL_SHARD = 40_000


def make_model(root: Path, shards: Sequence[int] = (BIG, SMALL_SHARD), small: bool = True, seed: int = 0) -> Path:
    """Weights (a layer each) and, with ``small``, configs that share one layer."""
    rng = random.Random(seed)
    files: dict[str, bytes | str] = dict(random_shards(rng, shards))
    if small:
        files["config.json"] = json.dumps({"hidden_size": 64, "seed": seed})
        files["tokenizer/vocab.txt"] = "\n".join(rng.randbytes(4).hex() for _ in range(300))
    root.mkdir(parents=True)
    return write_model(root, files)


@dataclass
class Builder:
    """Builds into the stub with policies that never sleep; keeps the delays that were asked for."""

    stub: RegistryStub
    creds: Credentials | None = None
    registry: str | None = None
    session: requests.Session | None = None
    client_sleeps: list[float] = field(default_factory=list)
    push_sleeps: list[float] = field(default_factory=list)
    reporter: Recorder = field(default_factory=Recorder)

    def client(self) -> RegistryClient:
        return stub_client(self.registry or self.stub.host, self.creds, self.session, self.client_sleeps)

    def __call__(
        self,
        source: Path,
        repo: str = REPO,
        *,
        tag: str = "latest",
        compression: str = "none",
        base: str = "scratch",
        use_cache: bool = True,
        two_pass: bool = False,
        layout: Path | None = None,
        chunk_size: int = CHUNK,
    ) -> BuildResult:
        """``ocimodel.build``, as a library caller runs it, into the stub."""
        with _StubRegistry(self) as registry:
            return ocimodel.build(
                source, f"{self.registry or self.stub.host}/{repo}:{tag}", base=base, compression=compression,
                use_cache=use_cache, two_pass=two_pass, layout=layout, chunk_size=chunk_size, check=False,
                registry=registry, progress=self.reporter,
            )


class _StubRegistry(ocimodel.Registry):
    """The API's registry with the builder's client (its credentials, session and sleeps) and push policy."""

    def __init__(self, builder: Builder) -> None:
        super().__init__(retry=RetryPolicy(sleep=builder.push_sleeps.append), remember_blobs=False)
        self._client = builder.client()

    def client(self, registry: str) -> RegistryClient:
        assert registry == self._client.registry, registry
        return self._client

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class Packed:
    """What ``pack`` made of a model: the manifest digest, and the manifest, config and layer bytes by digest."""

    digest: str
    manifest: dict[str, Any]
    blobs: dict[str, bytes]

    @property
    def layers(self) -> list[str]:
        return [d["digest"] for d in self.manifest["layers"]]


def packed(layout_dir: Path, digest: str) -> Packed:
    layout = Layout.open(layout_dir)
    manifest = json.loads(layout.read_blob(digest))
    parts = [manifest["config"]["digest"], *(d["digest"] for d in manifest["layers"])]
    return Packed(digest, manifest, {digest: layout.read_blob(digest), **{d: layout.read_blob(d) for d in parts}})


def pack_model(source: Path, layout_dir: Path, *, compression: str = "none", base: str = "scratch") -> Packed:
    """The yardstick image, made without the digest cache so it cannot lend a build its digests."""
    options = PackOptions(base=base, compression=compression, use_cache=False)
    manifest = pack(LocalSource.from_path(source), layout_dir, options, Recorder())
    return packed(layout_dir, manifest.digest)


def assert_holds(stub: RegistryStub, result: BuildResult | PushResult, image: Packed, repo: str = REPO,
                 tag: str = "latest") -> None:
    """The registry holds ``image`` under the tag, and the result says so: every byte as ``pack`` wrote it."""
    pushed = result.push if isinstance(result, BuildResult) else result
    assert pushed.digest == image.digest
    assert pushed.reference == f"{pushed.reference.split('/', 1)[0]}/{repo}@{image.digest}"
    held = stub.repository(repo)
    assert held.manifests[tag][0] == image.blobs[image.digest]
    for digest, data in image.blobs.items():
        if digest != image.digest:
            assert held.blobs.get(digest) == data, f"blob {digest} differs or is missing"
    assert {b.digest for b in pushed.blobs} == set(image.blobs) - {image.digest}
    assert_dependency_order(stub, repo)


def assert_dependency_order(stub: RegistryStub, repo: str) -> None:
    """Nothing was stored in ``repo`` before what it references (unless the repository held that already), and
    its last manifest PUT came after its last blob was complete.

    Unlike push's version, several builds may share the log, and a rebuild stores no blob it skipped.
    """
    stored = [s for s in stub.stored if s.repo == repo]
    in_log, seen = {s.digest for s in stored}, set[str]()
    for event in stored:
        if event.kind == "manifest":
            doc = json.loads(stub.repository(repo).manifests[event.digest][0])
            refs = {d["digest"] for d in [doc["config"], *doc["layers"]]}
            assert refs & in_log <= seen, f"manifest {event.digest} stored before {(refs & in_log) - seen}"
        seen.add(event.digest)
    log = [r for r in stub.requests_to() if r.path.startswith(f"/v2/{repo}/")]
    manifests = [i for i, r in enumerate(log) if r.method == "PUT" and "/manifests/" in r.path]
    blobs_done = [i for i, r in enumerate(log) if r.status == 201 and "/blobs/" in r.path]
    assert manifests and all(i < manifests[-1] for i in blobs_done)


def layer_digests(stub: RegistryStub, result: BuildResult, repo: str = REPO) -> list[str]:
    manifest = json.loads(stub.repository(repo).manifests[result.push.digest][0])
    return [d["digest"] for d in manifest["layers"]]
