"""From an image to what the checks look at: its documents, one platform's config, and each layer's file list.

What is read. Manifests and configs always; then, per layer, the cheapest source of its file list:

* a layer of at most ``ReadPolicy.small`` bytes (base images, the layer of small model files): its tar headers,
  streamed through (registry, or a compressed blob in a layout);
* an uncompressed layer in a layout, whatever its size: its tar headers, seeking over the file data;
* a layer ocimodel made for one file (``org.cncf.model.filepath`` plus the matching history line): the file list
  that annotation implies (``models/<path>``, 0644, parents 0755), without reading it;
* any other big layer: streamed through by ``ocimodel verify`` (over HTTP there is no seeking past file data),
  skipped by the warnings ``pack``, ``push`` and ``build`` print, which must never cost a full read. Checks that
  need a skipped layer's contents report ``skip``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ocimodel.errors import OcimodelError
from ocimodel.image.source import ImageSource
from ocimodel.image.walk import Node, read_node, walk
from ocimodel.layout.descriptor import (
    ANNOTATION_FILEPATH,
    Descriptor,
    Platform,
    descriptor_list,
    is_compressed_layer,
    parse_document,
)
from ocimodel.layout.image import parse_history_line
from ocimodel.layout.plan import MODEL_DIR
from ocimodel.units import human_size
from ocimodel.verification.tarread import Budget, Entry, Kind, ReadPolicy, TooLarge, normalize, read_entries


@dataclass(frozen=True)
class LayerContents:
    """What a layer holds, and how that is known: ``read`` (tar headers), ``annotations``, ``skipped`` (by the
    read policy) or ``too-large`` (it overdrew the run's ``Budget``)."""

    how: str
    entries: tuple[Entry, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class Image:
    """One platform's image as the checks see it; gathered by ``gather``, judged by ``judge``."""

    name: str
    #: The digest a pinned reference should name: the index's, for a multi-platform image.
    digest: str
    #: (what, size) of every manifest and index on the way to this platform's manifest.
    documents: tuple[tuple[str, int], ...]
    #: Platforms an index offers; empty for a single manifest.
    available: tuple[Platform, ...] = ()
    config: Mapping[str, Any] | None = None
    layers: tuple[Descriptor, ...] = ()
    contents: tuple[LayerContents, ...] = ()


def image_platforms(source: ImageSource) -> list[Platform]:
    """Every platform the image offers (an index's entries, or a single manifest's config)."""
    desc, data = source.top()
    node = read_node(desc, data, 0, source.name)
    if node.is_index:
        return list(node.platforms())
    config = _config(source, node)
    try:
        return [Platform.from_json(config)]
    except (KeyError, TypeError):
        return []


def gather(
    source: ImageSource, platform: Platform, policy: ReadPolicy = ReadPolicy(), budget: Budget | None = None
) -> Image:
    """Fetch what the checks need for ``platform``: documents, config and each layer's file list (see module doc).

    ``budget`` (a fresh one from ``policy`` by default) is charged for every layer read and remembers them.
    """
    path = walk(source, platform)[::-1]
    top = path[0].descriptor
    documents = tuple((f"{'index' if n.is_index else 'manifest'} {n.descriptor.digest}", len(n.data)) for n in path)
    indexes = [n for n in path if n.is_index]
    available = indexes[-1].platforms() if indexes else ()
    manifest = path[-1]
    if manifest.is_index:
        return Image(source.name, top.digest, documents, available)
    config = _config(source, manifest)
    layers = tuple(descriptor_list(manifest.doc, "layers", manifest.what))
    history = _layer_history(config, len(layers))
    budget = budget or Budget(policy)
    contents = tuple(_contents(source, layer, line, budget) for layer, line in zip(layers, history))
    return Image(source.name, top.digest, documents, available, config, layers, contents)


def _config(source: ImageSource, manifest: Node) -> dict[str, Any]:
    try:
        config_desc = Descriptor.from_json(manifest.doc["config"])
    except (KeyError, ValueError):
        raise OcimodelError(
            f"{manifest.descriptor.digest} of {source.name} is not an image manifest (no config)"
        ) from None
    return parse_document(source.config(config_desc), f"config {config_desc.digest} of {source.name}")


def _layer_history(config: Mapping[str, Any], count: int) -> list[str | None]:
    """Each layer's ``created_by``, when the history accounts for exactly the layers there are."""
    history = config.get("history")
    steps = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
    lines = [h.get("created_by", "") for h in steps if not h.get("empty_layer")]
    return list(lines) if len(lines) == count else [None] * count


def _contents(source: ImageSource, layer: Descriptor, history: str | None, budget: Budget) -> LayerContents:
    if layer.digest in budget.contents:
        return budget.contents[layer.digest]
    if "tar" not in layer.media_type:
        return LayerContents("skipped", reason=f"not a tar layer ({layer.media_type})")
    policy = budget.policy
    plain = not is_compressed_layer(layer.media_type)
    if layer.size > policy.small and not (source.seekable and plain):
        inferred = annotated_entries(layer, history)
        if inferred is not None:
            return LayerContents("annotations", inferred)
        if not policy.stream_big:
            return LayerContents("skipped", reason=f"{human_size(layer.size)} would have to be read in full")
    budget.open_layer(layer.size)
    try:
        with source.layer(layer) as stream:
            what = f"layer {layer.digest} of {source.name}"
            read = LayerContents("read", read_entries(stream, source.seekable, what, budget))
    except TooLarge as exc:
        read = LayerContents("too-large", reason=str(exc))
    budget.contents[layer.digest] = read
    return read


def annotated_entries(layer: Descriptor, history: str | None) -> tuple[Entry, ...] | None:
    """The members ocimodel wrote for a one-file layer, or None if the layer is not recognisably ours.

    Ours means an ``org.cncf.model.filepath`` annotation and the history line ``pack`` writes with it: another
    tool's annotation says nothing about how its tar members are named.
    """
    filepath = layer.annotations.get(ANNOTATION_FILEPATH)
    if not filepath or history is None or parse_history_line(history) != (filepath,):
        return None
    name = f"{MODEL_DIR}/{filepath}"
    if normalize(name) != name:
        return None
    parts = name.split("/")
    dirs = tuple(Entry(p, p, Kind.DIR, 0o755) for p in ("/".join(parts[:i]) for i in range(1, len(parts))))
    return (*dirs, Entry(name, name, Kind.FILE, 0o644))

