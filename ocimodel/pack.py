"""``pack``: source files → layer plan → tar layers → image → OCI layout.

Layers are independent, so they are built concurrently: sha256 and file reads release the GIL, and on a machine
without SHA instructions hashing, not the disk, is the bottleneck.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import (
    ANNOTATION_FILEPATH,
    ANNOTATION_REVISION,
    ANNOTATION_SOURCE,
    ANNOTATION_TITLE,
    OCI_CONFIG,
    OCI_MANIFEST,
    Descriptor,
    Platform,
)
from ocimodel.layout.image import Base, Layer, build_config, build_manifest, scratch
from ocimodel.layout.plan import LayerPlan, plan_layers
from ocimodel.layout.store import Layout
from ocimodel.layout.digestcache import DigestCache, layer_key
from ocimodel.layout.tarlayer import LayerDigests, encode_layer, tar_chunks, tar_size
from ocimodel.parallel import check, run_all
from ocimodel.progress import Reporter
from ocimodel.source import Filters, Provenance, Source

#: busybox 1.37.0 from ECR Public's mirror of Docker's official images (an index of all platforms).
DEFAULT_BASE = (
    "public.ecr.aws/docker/library/busybox:1.37.0"
    "@sha256:9db7b59979c38555a39def84a31fb98b5296952f9e3afd4f6f11f05b07adfab0"
)
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"


@dataclass(frozen=True)
class PackOptions:
    base: str = DEFAULT_BASE
    platform: Platform = Platform("linux", "amd64")
    tag: str = "latest"
    compression: str = "none"
    filters: Filters = Filters()
    jobs: int = min(4, os.cpu_count() or 1)
    plain_http: bool = False
    #: Reuse digests of layers whose files did not change (see ``digestcache``).
    use_cache: bool = True


def load_base(ref_text: str, platform: Platform, layout: Layout, plain_http: bool = False) -> tuple[Base, dict[str, str]]:
    """The base image and the annotations naming it; ``scratch`` means none."""
    if ref_text == "scratch":
        return scratch(platform), {}
    from ocimodel.registry.client import RegistryClient
    from ocimodel.registry.pull import pull_image
    from ocimodel.registry.reference import parse_reference

    try:
        ref = parse_reference(ref_text)
    except ValueError as exc:
        raise OcimodelError(f"--base {ref_text!r}: {exc}") from None
    with RegistryClient(ref.registry, plain_http=plain_http) as client:
        pulled = pull_image(ref, platform, layout, client=client)
    return Base(pulled.manifest_json, pulled.config_json), {
        ANNOTATION_BASE_NAME: ref_text,
        ANNOTATION_BASE_DIGEST: pulled.manifest.digest,
    }


def layer_of(plan: LayerPlan, digests: LayerDigests) -> Layer:
    """The layer's descriptor (annotated with what it holds) and history line."""
    annotations = {ANNOTATION_TITLE: plan.title}
    if len(plan.files) == 1:
        annotations[ANNOTATION_FILEPATH] = plan.files[0].path
    descriptor = Descriptor(digests.media_type, digests.digest, digests.size, annotations)
    paths = ", ".join(f.path for f in plan.files)
    return Layer(descriptor, digests.diff_id, f"ocimodel: COPY {paths} /models/")


def build_layer(
    plan: LayerPlan,
    layout: Layout,
    compression: str,
    reporter: Reporter,
    cache: DigestCache | None,
    stop: threading.Event,
) -> Layer:
    """Stream one layer into the layout, hashing tar and blob in the same pass, unless it is known and present."""
    members = plan.members()
    key = layer_key(plan, compression) if cache else None
    known = cache.get(key) if cache and key else None
    if known is not None and layout.has_blob(known.digest):
        reporter.task(plan.title, 0).finish("unchanged")
        return layer_of(plan, known)
    task = reporter.task(plan.title, tar_size(members))

    def advance(n: int) -> None:
        check(stop)
        task.advance(n)

    with layout.writer(hashing=False) as blob:
        digests = encode_layer(tar_chunks(members), compression, blob, advance)
        blob.commit(digests.digest)
    task.finish()
    if cache and key:
        cache.put(key, digests)
    return layer_of(plan, digests)


def build_layers(
    plans: Sequence[LayerPlan],
    layout: Layout,
    compression: str,
    jobs: int,
    reporter: Reporter,
    cache: DigestCache | None = None,
) -> list[Layer]:
    """Build layers on ``jobs`` threads; the first failure (or Ctrl-C) stops the others within a chunk."""
    return run_all(
        lambda plan, stop: build_layer(plan, layout, compression, reporter, cache, stop), plans, jobs, "layer"
    )


def image_annotations(provenance: Provenance, base_annotations: dict[str, str]) -> dict[str, str]:
    annotations = {ANNOTATION_TITLE: provenance.title}
    if provenance.source:
        annotations[ANNOTATION_SOURCE] = provenance.source
    if provenance.revision:
        annotations[ANNOTATION_REVISION] = provenance.revision
    return {**annotations, **provenance.extra, **base_annotations}


def pack(source: Source, layout_dir: Path, options: PackOptions, reporter: Reporter) -> Descriptor:
    """Write the image for ``source`` into the layout and tag it; returns the manifest's descriptor."""
    layout_root = layout_dir.resolve()
    files = [f for f in source.files(options.filters) if layout_root not in f.local.parents]
    plans = plan_layers(files)
    created = not layout_dir.exists()
    layout = Layout.create(layout_dir)
    try:
        base, base_annotations = load_base(options.base, options.platform, layout, options.plain_http)
    except BaseException:
        if created:  # nothing of value was written yet: leave no empty layout where there was nothing
            shutil.rmtree(layout_dir, ignore_errors=True)
        raise
    cache = DigestCache() if options.use_cache else None
    layers = build_layers(plans, layout, options.compression, options.jobs, reporter, cache)
    config = layout.put_json(OCI_CONFIG, build_config(base, options.platform, layers))
    annotations = image_annotations(source.provenance, base_annotations)
    manifest = layout.put_json(OCI_MANIFEST, build_manifest(config, base, layers, annotations))
    manifest = Descriptor(manifest.media_type, manifest.digest, manifest.size, platform=options.platform)
    layout.set_tag(options.tag, manifest)
    return manifest
