"""``pack``: source files → layer plan → tar layers → image → OCI layout.

Layers are independent, so they are built concurrently: sha256 and file reads release the GIL, and on a machine
without SHA instructions hashing, not the disk, is the bottleneck.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from ocimodel.base import DEFAULT_BASE, load_bases
from ocimodel.errors import InvalidArgument
from ocimodel.layout.descriptor import ANNOTATION_REVISION, ANNOTATION_SOURCE, ANNOTATION_TITLE, Descriptor, Platform
from ocimodel.layout.digestcache import DigestCache
from ocimodel.layout.filehashes import FileHashes
from ocimodel.layout.image import Layer, assemble
from ocimodel.layout.modellayer import ModelLayer
from ocimodel.layout.plan import LayerPlan, plan_layers
from ocimodel.layout.store import Layout
from ocimodel.parallel import run_all
from ocimodel.progress import Reporter, stoppable
from ocimodel.source import Filters, Provenance, Source

if TYPE_CHECKING:  # cryptography is loaded by the commands that sign, not by every pack
    from ocimodel.signing.keys import Signer


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
    #: Sign the model's files (OpenSSF Model Signing) with this key: /models/model.sig, and a referrer.
    signer: Signer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.platforms:
            raise InvalidArgument("platforms", "names no platform; give os/arch, e.g. linux/amd64")


def write_layer(
    layer: ModelLayer, layout: Layout, reporter: Reporter, stop: threading.Event, hashes: FileHashes | None = None
) -> Layer:
    """Stream one layer into the layout, hashing tar and blob (and, when signing, each file into ``hashes``) in the
    same pass, unless it is known and present."""
    known = layer.cached()
    if known is not None and layout.has_blob(known.digest):
        reporter.task(layer.title, 0).finish("unchanged")
        return layer.layer(known)
    task = reporter.task(layer.title, layer.tar_size)
    with layout.writer(hashing=False) as blob:
        digests = layer.encode(blob, stoppable(task, stop), hashes)
        blob.commit(digests.digest)
    task.finish()
    return layer.layer(digests)


def write_layers(
    layers: Sequence[ModelLayer], layout: Layout, jobs: int, reporter: Reporter, signing: bool = False
) -> tuple[list[Layer], dict[str, str]]:
    """Write layers on ``jobs`` threads; the first failure (or Ctrl-C) stops the others within a chunk. With
    ``signing``, also every file's sha256 (path in the model → hex)."""
    work = [(layer, FileHashes() if signing else None) for layer in layers]
    written = run_all(lambda job, stop: write_layer(job[0], layout, reporter, stop, job[1]), work, jobs, "layer")
    files: dict[str, str] = {}
    for layer, hashes in work if signing else ():
        files.update(layer.file_sha256(hashes))
    return written, files


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
    layers, file_sha256 = write_layers(
        model_layers(plans, options), layout, options.jobs, reporter, signing=options.signer is not None
    )
    signature = None
    if options.signer is not None:
        from ocimodel.signing.image import sign_model

        signature = sign_model(file_sha256, options.signer, options.compression)
        layout.put_bytes(signature.layer.descriptor.media_type, signature.blob)
        layers.append(signature.layer)
    image = assemble(bases, layers, image_annotations(source.provenance, options.annotations), options.labels)
    for doc in (*image.configs, *image.manifests, image.top):
        layout.put_bytes(doc.descriptor.media_type, doc.data)
    referrers = []
    if signature is not None:
        from ocimodel.registry import referrers as oci_referrers

        referrers.append(oci_referrers.store(layout, image.top.descriptor, signature.bundle))
    layout.set_tag(options.tag, image.top.descriptor, referrers)
    return image.top.descriptor

