"""Image assembly in the manner of go-containerregistry's ``mutate``: a base config and manifest plus appended layers.

Pure functions from JSON documents and descriptors to new JSON documents; writing them anywhere is the caller's job.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ocimodel.layout.descriptor import (
    DOCKER_LAYER_GZIP,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Platform,
)

#: A fixed creation time keeps configs of scratch-based images reproducible.
EPOCH = "1970-01-01T00:00:00Z"

_OCI_EQUIVALENT = {
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar": OCI_LAYER,
}


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
    """The base's layers, with Docker media types renamed to their OCI twins: same bytes, so same digests."""
    out = []
    for raw in base.manifest.get("layers", []):
        d = Descriptor.from_json(raw)
        out.append(Descriptor(_OCI_EQUIVALENT.get(d.media_type, d.media_type), d.digest, d.size, d.annotations))
    return out


def build_config(base: Base, platform: Platform, layers: Sequence[Layer]) -> dict[str, Any]:
    """The base's config with our layers appended and no Entrypoint.

    KServe's modelcar starts the image with ``args`` only; an Entrypoint would swallow them. Cmd and Env stay,
    so the image still runs the base's shell on its own.
    """
    config = copy.deepcopy(dict(base.config))
    config.update(platform.to_json())
    if not platform.variant:
        config.pop("variant", None)
    runtime = config.setdefault("config", {}) or {}
    runtime.pop("Entrypoint", None)
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

