"""``pack``: source files → layer plan → tar layers → image → OCI layout.

Layers are independent, so they are built concurrently: sha256 and file reads release the GIL, and on a machine
without SHA instructions hashing, not the disk, is the bottleneck.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ocimodel.base import DEFAULT_BASE, load_bases
from ocimodel.errors import InvalidArgument
from ocimodel.layout.descriptor import ANNOTATION_REVISION, ANNOTATION_SOURCE, ANNOTATION_TITLE, Descriptor, Platform
from ocimodel.layout.digestcache import DigestCache
from ocimodel.layout.image import Layer, assemble
from ocimodel.layout.modellayer import ModelLayer
from ocimodel.layout.plan import LayerPlan, plan_layers
from ocimodel.layout.store import Layout
from ocimodel.parallel import run_all
from ocimodel.progress import Reporter, stoppable
from ocimodel.source import Filters, Provenance, Source


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
            raise InvalidArgument("platforms", "names no platform; give os/arch, e.g. linux/amd64")


def write_layer(layer: ModelLayer, layout: Layout, reporter: Reporter, stop: threading.Event) -> Layer:
    """Stream one layer into the layout, hashing tar and blob in the same pass, unless it is known and present."""
    known = layer.cached()
    if known is not None and layout.has_blob(known.digest):
        reporter.task(layer.title, 0).finish("unchanged")
        return layer.layer(known)
    task = reporter.task(layer.title, layer.tar_size)
    with layout.writer(hashing=False) as blob:
        digests = layer.encode(blob, stoppable(task, stop))
        blob.commit(digests.digest)
    task.finish()
    return layer.layer(digests)


def write_layers(layers: Sequence[ModelLayer], layout: Layout, jobs: int, reporter: Reporter) -> list[Layer]:
    """Write layers on ``jobs`` threads; the first failure (or Ctrl-C) stops the others within a chunk."""
    return run_all(lambda layer, stop: write_layer(layer, layout, reporter, stop), layers, jobs, "layer")


def model_layers(plans: Sequence[LayerPlan], options: PackOptions) -> list[ModelLayer]:
    cache = DigestCache() if options.use_cache else None
    return [ModelLayer(plan, options.compression, cache) for plan in plans]


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
        raise InvalidArgument(
            "layout", f"{layout_dir} is the model directory {source.root} or holds it: the image would be written into "
            "the model; give a layout directory outside it"
        )
    # A layout inside the model directory is left out of it (a repack must not pack the previous image).
    files = [f for f in source.files(options.filters) if layout_root not in f.local.parents]
    if not files:
        raise InvalidArgument("layout", f"every file to pack is inside {layout_dir}; give a layout directory elsewhere")
    plans = plan_layers(files)
    layout = Layout.create(layout_dir)
    try:
        bases = load_bases(options.base, options.platforms, layout, options.plain_http, options.base_mirrors)
    except BaseException:
        layout.remove_if_unused()  # leave no empty layout where this run made one
        raise
    layers = write_layers(model_layers(plans, options), layout, options.jobs, reporter)
    image = assemble(bases, layers, image_annotations(source.provenance, options.annotations), options.labels)
    for doc in (*image.configs, *image.manifests, image.top):
        layout.put_bytes(doc.descriptor.media_type, doc.data)
    layout.set_tag(options.tag, image.top.descriptor)
    return image.top.descriptor
