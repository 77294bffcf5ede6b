"""``pack``: source files → layer plan → tar layers → image → OCI layout.

Layers are independent, so they are built concurrently: sha256 and file reads release the GIL, and on a machine
without SHA instructions hashing, not the disk, is the bottleneck.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import (
    ANNOTATION_FILE_METADATA,
    ANNOTATION_FILEPATH,
    ANNOTATION_REVISION,
    ANNOTATION_SOURCE,
    ANNOTATION_TITLE,
    Descriptor,
    Platform,
)
from ocimodel.layout.image import EPOCH, Base, Layer, PlatformBase, assemble, history_line, scratch
from ocimodel.layout.plan import LayerPlan, plan_layers
from ocimodel.layout.store import Layout
from ocimodel.layout.digestcache import DigestCache, layer_key
from ocimodel.layout.tarlayer import LayerDigests, encode_layer, tar_chunks, tar_size
from ocimodel.parallel import run_all
from ocimodel.progress import Reporter, stoppable
from ocimodel.source import Filters, Provenance, Source, SourceFile

#: busybox 1.37.0 from ECR Public's mirror of Docker's official images (an index of all platforms).
DEFAULT_BASE = (
    "public.ecr.aws/docker/library/busybox:1.37.0"
    "@sha256:9db7b59979c38555a39def84a31fb98b5296952f9e3afd4f6f11f05b07adfab0"
)
#: The same busybox by the same digest on Docker Hub and on Google's mirror of it, tried in order when ECR Public
#: cannot serve it (the image, and so every digest built on it, is the same whichever answers).
DEFAULT_BASE_MIRRORS = (
    "docker.io/library/busybox:1.37.0@sha256:9db7b59979c38555a39def84a31fb98b5296952f9e3afd4f6f11f05b07adfab0",
    "mirror.gcr.io/library/busybox:1.37.0@sha256:9db7b59979c38555a39def84a31fb98b5296952f9e3afd4f6f11f05b07adfab0",
)
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"


@dataclass(frozen=True)
class PackOptions:
    base: str = DEFAULT_BASE
    #: Other references to the same base digest, tried in order when ``base`` cannot be fetched; None: the default
    #: base's mirrors for the default base, none for any other.
    base_mirrors: tuple[str, ...] | None = None
    #: One image per platform, sharing the model layers; several make the tag point at an index.
    platforms: tuple[Platform, ...] = (Platform("linux", "amd64"),)
    tag: str = "latest"
    compression: str = "none"
    filters: Filters = Filters()
    jobs: int = min(4, os.cpu_count() or 1)
    plain_http: bool = False
    #: Reuse digests of layers whose files did not change (see ``digestcache``).
    use_cache: bool = True
    #: Config labels and manifest annotations given by the user (``--label``, ``--annotation``).
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.platforms:
            raise OcimodelError("no platform to build for: give at least one os/arch, e.g. linux/amd64")


def load_base(
    ref_text: str, platform: Platform, layout: Layout, plain_http: bool = False, mirrors: Sequence[str] = ()
) -> PlatformBase:
    """The base image for ``platform`` and the annotations naming it; ``scratch`` means none.

    The annotations name ``ref_text`` whichever mirror served it, so the image digest does not depend on that.
    """
    if ref_text == "scratch":
        return PlatformBase(platform, scratch(platform), {})
    from ocimodel.registry.pull import pull_first
    from ocimodel.registry.reference import parse_reference

    refs = []
    for text in (ref_text, *mirrors):
        try:
            refs.append(parse_reference(text))
        except ValueError as exc:
            raise OcimodelError(f"--base {text!r}: {exc}") from None
    pulled = pull_first(refs, platform, layout, plain_http=plain_http)
    return PlatformBase(platform, Base(pulled.manifest_json, pulled.config_json), {
        ANNOTATION_BASE_NAME: ref_text,
        ANNOTATION_BASE_DIGEST: pulled.manifest.digest,
    })


def load_bases(options: PackOptions, layout: Layout) -> list[PlatformBase]:
    mirrors = options.base_mirrors
    if mirrors is None:
        mirrors = DEFAULT_BASE_MIRRORS if options.base == DEFAULT_BASE else ()
    return [load_base(options.base, p, layout, options.plain_http, mirrors) for p in options.platforms]


def file_metadata(f: SourceFile) -> dict[str, object]:
    """ModelPack's per-file metadata, with the constant owner, mode and mtime of our tar headers (so reproducible)
    and the sha256 the Hub gave for the file, when there was one."""
    meta: dict[str, object] = {"name": f.path, "mode": 0o644, "uid": 0, "gid": 0, "size": f.size,
                               "mtime": EPOCH, "typeflag": 0}
    if f.lfs_sha256:
        meta["sha256"] = f.lfs_sha256
    return meta


def layer_of(plan: LayerPlan, digests: LayerDigests) -> Layer:
    """The layer's descriptor (annotated with what it holds) and history line."""
    annotations = {ANNOTATION_TITLE: plan.title}
    metadata = [file_metadata(f) for f in plan.files]
    if len(plan.files) == 1:
        annotations[ANNOTATION_FILEPATH] = plan.files[0].path
    annotations[ANNOTATION_FILE_METADATA] = json.dumps(metadata[0] if len(metadata) == 1 else metadata,
                                                       separators=(",", ":"))
    descriptor = Descriptor(digests.media_type, digests.digest, digests.size, annotations)
    return Layer(descriptor, digests.diff_id, history_line([f.path for f in plan.files]))


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
    with layout.writer(hashing=False) as blob:
        digests = encode_layer(tar_chunks(members), compression, blob, stoppable(task, stop))
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


def image_annotations(provenance: Provenance, extra: Mapping[str, str]) -> dict[str, str]:
    annotations = {ANNOTATION_TITLE: provenance.title}
    if provenance.source:
        annotations[ANNOTATION_SOURCE] = provenance.source
    if provenance.revision:
        annotations[ANNOTATION_REVISION] = provenance.revision
    return {**annotations, **provenance.extra, **extra}


def pack(source: Source, layout_dir: Path, options: PackOptions, reporter: Reporter) -> Descriptor:
    """Write the image for ``source`` into the layout and tag it; returns what the tag points at."""
    layout_root = layout_dir.resolve()
    if layout_root == source.root or layout_root in source.root.parents:
        raise OcimodelError(
            f"layout {layout_dir} is the model directory {source.root} or holds it: the image would be written into "
            "the model; give a layout directory outside it"
        )
    # A layout inside the model directory is left out of it (a repack must not pack the previous image).
    files = [f for f in source.files(options.filters) if layout_root not in f.local.parents]
    if not files:
        raise OcimodelError(f"every file to pack is inside the layout {layout_dir}; give a layout directory elsewhere")
    plans = plan_layers(files)
    layout = Layout.create(layout_dir)
    try:
        bases = load_bases(options, layout)
    except BaseException:
        layout.remove_if_unused()  # leave no empty layout where this run made one
        raise
    cache = DigestCache() if options.use_cache else None
    layers = build_layers(plans, layout, options.compression, options.jobs, reporter, cache)
    image = assemble(bases, layers, image_annotations(source.provenance, options.annotations), options.labels)
    for doc in (*image.configs, *image.manifests, image.top):
        layout.put_bytes(doc.descriptor.media_type, doc.data)
    layout.set_tag(options.tag, image.top.descriptor)
    return image.top.descriptor
