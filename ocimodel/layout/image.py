"""Image assembly in the manner of go-containerregistry's ``mutate``: a base config and manifest plus appended layers.

Pure functions from JSON documents and descriptors to new JSON documents; writing them anywhere is the caller's job.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from ocimodel.layout.descriptor import (
    DOCKER_LAYER_GZIP,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    canonical_json,
)
from ocimodel.layout.plan import MODEL_DIR

#: A fixed creation time keeps configs of scratch-based images reproducible.
EPOCH = "1970-01-01T00:00:00Z"

_OCI_EQUIVALENT = {
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar": OCI_LAYER,
}


_HISTORY_PREFIX = "ocimodel: COPY "
_HISTORY_SUFFIX = f" /{MODEL_DIR}/"
_HISTORY_SEPARATOR = ", "


def history_line(paths: Sequence[str]) -> str:
    """The config history's ``created_by`` of a model layer: what a reader of ``docker history`` understands, and
    (with the layer's ``org.cncf.model.filepath``) how ``verify`` knows the layer is ours without reading it."""
    return f"{_HISTORY_PREFIX}{_HISTORY_SEPARATOR.join(paths)}{_HISTORY_SUFFIX}"


def parse_history_line(line: str) -> tuple[str, ...] | None:
    """The paths a ``history_line`` names, or None for a line some other tool wrote.

    A path holding ", " reads back as two: such a layer is then not recognised as ours, which only costs a read.
    """
    if not (line.startswith(_HISTORY_PREFIX) and line.endswith(_HISTORY_SUFFIX)):
        return None
    return tuple(line[len(_HISTORY_PREFIX) : -len(_HISTORY_SUFFIX)].split(_HISTORY_SEPARATOR))


@dataclass(frozen=True)
class Layer:
    """A layer that exists as a blob: its descriptor, the digest of its uncompressed tar, and its history line."""

    descriptor: Descriptor
    diff_id: str
    created_by: str


@dataclass(frozen=True)
class Base:
    """The image we build on: its manifest (for layer descriptors) and config (for the runtime settings)."""

    manifest: Mapping[str, Any]
    config: Mapping[str, Any]


def scratch(platform: Platform) -> Base:
    config = {
        "created": EPOCH,
        **platform.to_json(),
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }
    return Base({"layers": []}, config)


def base_layers(base: Base) -> list[Descriptor]:
    """The base's layers, with Docker media types renamed to their OCI twins: same bytes, so same digests. All else
    a descriptor holds (``urls`` of a foreign layer, ``data``, fields we do not know) stays as the base has it."""
    out = []
    for raw in base.manifest.get("layers", []):
        d = Descriptor.from_json(raw)
        out.append(replace(d, media_type=_OCI_EQUIVALENT.get(d.media_type, d.media_type)))
    return out


def build_config(
    base: Base, platform: Platform, layers: Sequence[Layer], labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The base's config with our layers appended, our labels added, and no Entrypoint.

    KServe's modelcar starts the image with ``args`` only; an Entrypoint would swallow them. Cmd and Env stay,
    so the image still runs the base's shell on its own.
    """
    config = copy.deepcopy(dict(base.config))
    config.update(platform.to_json())
    if not platform.variant:
        config.pop("variant", None)
    runtime = config.setdefault("config", {}) or {}
    runtime.pop("Entrypoint", None)
    if labels:
        runtime["Labels"] = {**(runtime.get("Labels") or {}), **labels}
    config["config"] = runtime
    rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), *(layer.diff_id for layer in layers)]
    history = config.get("history") or []
    config["history"] = [*history, *({"created": EPOCH, "created_by": layer.created_by} for layer in layers)]
    return config


def build_manifest(
    config: Descriptor, base: Base, layers: Sequence[Layer], annotations: Mapping[str, str]
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [d.to_json() for d in base_layers(base)] + [layer.descriptor.to_json() for layer in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return manifest



def build_index(manifests: Sequence[Descriptor], annotations: Mapping[str, str]) -> dict[str, Any]:
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [m.to_json() for m in manifests],
    }
    if annotations:
        index["annotations"] = dict(annotations)
    return index


@dataclass(frozen=True)
class Document:
    """A JSON document as the exact bytes that get stored and pushed, with its descriptor."""

    descriptor: Descriptor
    data: bytes

    @classmethod
    def of(cls, media_type: str, obj: Any, platform: Platform | None = None) -> Document:
        data = canonical_json(obj)
        d = Descriptor.of_bytes(media_type, data)
        return cls(Descriptor(d.media_type, d.digest, d.size, platform=platform), data)


@dataclass(frozen=True)
class PlatformBase:
    platform: Platform
    base: Base
    #: Annotations naming this platform's base (``org.opencontainers.image.base.*``).
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class Assembly:
    """Everything but the layers: configs, a manifest per platform, and what the tag points at."""

    configs: tuple[Document, ...]
    manifests: tuple[Document, ...]
    #: The manifest itself for one platform; an index of the manifests for several.
    top: Document


def assemble(
    bases: Sequence[PlatformBase],
    layers: Sequence[Layer],
    annotations: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
) -> Assembly:
    """One image per platform on that platform's base, all sharing the same model layers (stored and sent once).

    With one platform the tag names the manifest, as a single-platform image always has; with several, an index.
    """
    configs, manifests = [], []
    for pb in bases:
        config = Document.of(OCI_CONFIG, build_config(pb.base, pb.platform, layers, labels))
        manifest = build_manifest(config.descriptor, pb.base, layers, {**annotations, **pb.annotations})
        configs.append(config)
        manifests.append(Document.of(OCI_MANIFEST, manifest, pb.platform))
    if len(manifests) == 1:
        return Assembly(tuple(configs), tuple(manifests), manifests[0])
    index = Document.of(OCI_INDEX, build_index([m.descriptor for m in manifests], annotations))
    return Assembly(tuple(configs), tuple(manifests), index)
