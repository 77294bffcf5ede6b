"""``build``: model files → registry in one streamed pass, with no blob ever written to disk.

Each layer's tar stream is generated from the source files and sent as it is generated; its digest is computed on
the way and closes the upload. A retry or a resume regenerates the bytes it needs from the files, which are
seekable, so disk use is the model files alone and memory stays flat. Layers go up concurrently (``--jobs``): while
one waits on the network, another is being hashed.

The image is exactly the one ``pack`` + ``push`` would produce: the same plan, the same layer bytes, the same
config and manifest builders (``layout.image``), so the same digest.

Two ways to know a layer's digest were measured (docs/benchmarks.md): one pass that hashes while uploading, and a
hashing pass followed by an upload of what the registry lacks. One pass reads the files once; the two-pass way only
wins when most layers already exist in the registry, and the digest cache gives that without hashing at all:
a layer whose files did not change since the last build is looked up by its known digest, found with one HEAD, and
neither read nor sent. So one pass is the default, and ``two_pass`` stays for the benchmark.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator

from ocimodel.base import base_store, load_bases
from ocimodel.errors import InvalidArgument, RegistryError
from ocimodel.layout.descriptor import OCI_LAYER, Descriptor
from ocimodel.layout.filehashes import FileHashes
from ocimodel.layout.image import Layer, assemble, base_layers
from ocimodel.layout.modellayer import ModelLayer
from ocimodel.layout.pack import PackOptions, image_annotations, model_layers
from ocimodel.layout.plan import LayerPlan, plan_layers
from ocimodel.layout.store import Layout
from ocimodel.layout.tarlayer import Discard, LayerDigests
from ocimodel.parallel import check, run_all
from ocimodel.progress import Reporter, stoppable
from ocimodel.registry.client import RegistryClient
from ocimodel.registry.known import KnownBlobs
from ocimodel.registry.push import Pusher, PushOptions, Upload, layout_upload
from ocimodel.registry.push import refuse_oversized_layers
from ocimodel.registry.reference import Reference
from ocimodel.results import BlobOutcome, BuildResult, PushResult
from ocimodel.source import Source, StagedSource, confinement, pin
from ocimodel.units import human_size


@dataclass(frozen=True)
class BuildOptions:
    pack: PackOptions = PackOptions()
    push: PushOptions = PushOptions()
    #: Hash every layer before uploading it (option (a) of the issue), instead of hashing while uploading.
    two_pass: bool = False
    #: Hub sources: bytes of model files allowed on disk at once; files are deleted once their layer is sent.
    disk_budget: int | None = None


class ByteBudget:
    """Bytes of disk that layers in flight may hold; a layer waits until its files fit.

    Each layer takes its whole share at once, so two layers can never each hold half of what both need.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, size: int, stop: threading.Event) -> Iterator[None]:
        with self._cond:
            while self._free < size:
                check(stop)
                self._cond.wait(timeout=1.0)  # wakes on a release; the timeout only lets a cancelled build notice
            self._free -= size
        try:
            yield
        finally:
            with self._cond:
                self._free += size
                self._cond.notify_all()


def build(
    source: Source,
    ref: Reference,
    options: BuildOptions,
    reporter: Reporter,
    client: RegistryClient,
    known: KnownBlobs | None = None,
) -> BuildResult:
    phases: dict[str, float] = {}
    started = time.monotonic()
    pack_options = options.pack
    staged = source if isinstance(source, StagedSource) else None
    if options.disk_budget is not None and staged is None:
        raise InvalidArgument("disk_budget", "is for Hub sources: a local directory is on disk already")
    files = staged.planned(pack_options.filters) if staged else source.files(pack_options.filters)
    layers = model_layers(plan_layers(files), pack_options)
    if pack_options.compression == "none":  # sizes known before any download; compressed ones once hashed
        refuse_oversized_layers(client.registry, ((f"layer {layer.title}", layer.tar_size) for layer in layers))
    budget = ByteBudget(options.disk_budget) if options.disk_budget is not None else None
    if budget is not None:
        for layer in layers:
            if layer.plan.size > budget.total:
                raise InvalidArgument(
                    "disk_budget", f"layer {layer.title} needs {human_size(layer.plan.size)} on disk, more than the "
                    f"budget of {human_size(budget.total)}; raise the budget"
                )
    phases["source"] = time.monotonic() - started

    started = time.monotonic()
    store = base_store()
    bases = load_bases(pack_options.base, pack_options.platforms, store, pack_options.plain_http,
                       pack_options.base_mirrors)
    pusher = Pusher(client, ref.repository, options.push, reporter, known)
    pusher.check_access()
    context = _Context(pusher, options.two_pass, reporter, staged, budget, pack_options.signer is not None)
    layer_jobs = [partial(_model_layer, layer, context) for layer in layers]
    base_descs = {d.digest: d for pb in bases for d in base_layers(pb.base)}  # platforms may share base layers
    base_jobs = [partial(_base_layer, store, desc, pusher) for desc in base_descs.values()]
    results = run_all(lambda job, stop: job(stop), [*layer_jobs, *base_jobs], options.push.jobs, "build")
    built = [layer for layer, _, _ in results[: len(layers)] if layer is not None]
    outcomes = [outcome for _, outcome, _ in results]
    phases["layers"] = time.monotonic() - started

    started = time.monotonic()
    signature = None
    if pack_options.signer is not None:
        from ocimodel.signing.image import sign_model

        file_sha256 = {path: sha for _, _, shas in results for path, sha in shas.items()}
        signature = sign_model(file_sha256, pack_options.signer, pack_options.compression)
        sig = signature.layer.descriptor
        outcomes += pusher.push_all([Upload.of_bytes(signature.blob, sig.digest, SIGNATURE_LABEL)])
        built.append(signature.layer)
    image = assemble(bases, built, image_annotations(source.provenance, pack_options.annotations), pack_options.labels)
    outcomes += pusher.push_all(Upload.of_bytes(c.data, c.descriptor.digest, "config") for c in image.configs)
    if len(image.manifests) > 1:
        for manifest in image.manifests:
            pusher.put_manifest(manifest.descriptor, manifest.data, manifest.descriptor.digest)
    top = image.top.descriptor
    pusher.put_manifest(top, image.top.data, ref.tag or pack_options.tag)
    attached = None
    if signature is not None:
        from ocimodel.registry import referrers

        attached = referrers.attach(pusher, top, signature.bundle).manifest.digest
    if known is not None:
        known.record(client.registry, ref.repository, [o.digest for o in outcomes])
    phases["manifest"] = time.monotonic() - started
    result = PushResult(f"{ref.registry}/{ref.repository}@{top.digest}", top.digest, top.media_type, tuple(outcomes),
                        signature=attached)
    return BuildResult(result, phases)


@dataclass(frozen=True)
class _Context:
    pusher: Pusher
    two_pass: bool
    reporter: Reporter
    staged: StagedSource | None
    budget: ByteBudget | None
    #: Take each file's sha256 as its layer goes by, for the signature.
    signing: bool = False


#: How the signature's layer is named in progress and outcomes.
SIGNATURE_LABEL = "model.sig"


def _model_layer(
    layer: ModelLayer, ctx: _Context, stop: threading.Event
) -> tuple[Layer, BlobOutcome, dict[str, str]]:
    """One layer from files to registry; its digest from the cache, a hashing pass, or the upload itself; and, when
    signing, its files' sha256 (taken on the way, before a disk budget deletes them).

    A layer the registry already has (by cached digest) is not even downloaded. Otherwise its files are fetched
    (Hub sources), sent, and, under a disk budget, deleted.
    """
    digests = layer.cached()
    if digests is not None and ctx.pusher.client.head_blob(ctx.pusher.repository, digests.digest) is not None:
        ctx.reporter.task(layer.title, 0).finish("unchanged")
        shas = layer.file_sha256() if ctx.signing else {}  # Hub or remembered sha256s; a file is read only if not
        return layer.layer(digests), BlobOutcome(digests.digest, digests.size, "skipped"), shas
    with ctx.budget.hold(layer.plan.size, stop) if ctx.budget else nullcontext():
        if ctx.staged is not None:
            ctx.staged.fetch(layer.plan.files, stop)
            # Every read from here on (hashing, upload, retries) checks it is this file.
            layer = layer.with_plan(LayerPlan(tuple(pin(f, confinement(ctx.staged.root)) for f in layer.plan.files)))
        try:
            hashes = FileHashes() if ctx.signing else None
            # A cached digest was just looked up and found missing; one looked up after the fetch was not.
            sent, outcome = _send_layer(layer, ctx, digests or layer.cached(), stop, hashes, absent=digests is not None)
            return sent, outcome, layer.file_sha256(hashes) if hashes is not None else {}
        finally:
            if ctx.budget is not None and ctx.staged is not None:
                ctx.staged.release(layer.plan.files)


def _send_layer(
    layer: ModelLayer,
    ctx: _Context,
    digests: LayerDigests | None,
    stop: threading.Event,
    hashes: FileHashes | None,
    absent: bool = False,
) -> tuple[Layer, BlobOutcome]:
    if digests is None and (ctx.two_pass or layer.compression != "none"):
        # A compressed layer's size is only known once compressed, and an upload must announce it.
        task = ctx.reporter.task(f"hash {layer.title}", layer.tar_size)
        digests = layer.encode(Discard(), stoppable(task, stop), hashes)
        task.finish()
    size = digests.size if digests else layer.tar_size
    upload = Upload(size, digests.digest if digests else None, layer.reader(hashes).read, layer.title)
    try:
        outcome = ctx.pusher.push_blob(upload, stop, absent=absent)
    except RegistryError as exc:
        if digests is None or layer.cache is None or "DIGEST_INVALID" not in exc.codes:
            raise
        # The cache's digest no longer matches the bytes (a file rewritten with its size and mtime kept): forget
        # it and send the layer again, hashing it as it goes.
        layer.forget()
        return _send_layer(layer, ctx, None, stop, hashes)
    if digests is None:
        digests = LayerDigests(OCI_LAYER, outcome.digest, size, outcome.digest)
    layer.remember(digests)
    return layer.layer(digests), outcome


def _base_layer(
    store: Layout, desc: Descriptor, pusher: Pusher, stop: threading.Event
) -> tuple[None, BlobOutcome, dict[str, str]]:
    return None, pusher.push_blob(layout_upload(store, desc), stop), {}


def build_with_layout(
    source: Source,
    ref: Reference,
    layout_dir: Path,
    options: BuildOptions,
    reporter: Reporter,
    client: RegistryClient,
    known: KnownBlobs | None = None,
) -> BuildResult:
    """``--layout``: keep an OCI layout too, by packing into it and pushing from it (the disk is the user's choice)."""
    from ocimodel.layout.pack import pack
    from ocimodel.registry.push import push

    started = time.monotonic()
    pack(source, layout_dir, options.pack, reporter)
    packed = time.monotonic() - started
    result = push(Layout.open(layout_dir), ref, tag=options.pack.tag, options=options.push, reporter=reporter,
                  client=client, known=known)
    return BuildResult(result, {"pack": packed, "push": time.monotonic() - started - packed})
