"""Pull one platform of a digest-pinned image into a layout, reusing whatever the layout already holds.

Blobs are written children first (layers, config, manifest, index), so a manifest in the layout always has its
config and layers next to it, and a failed pull leaves nothing half-referenced behind.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from ocimodel.errors import DigestMismatch, OcimodelError
from ocimodel.layout.descriptor import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_INDEX_DEPTH,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    parse_document,
)
from ocimodel.layout.store import Layout
from ocimodel.registry.client import RegistryClient
from ocimodel.registry.reference import Reference

log = logging.getLogger("ocimodel.registry")


@dataclass(frozen=True)
class PulledImage:
    manifest: Descriptor
    manifest_json: dict[str, Any]
    config_json: dict[str, Any]


@dataclass(frozen=True)
class _Document:
    """A manifest or index as fetched: its exact bytes (kept for storing) and their parsed form."""

    descriptor: Descriptor
    data: bytes
    json: dict[str, Any]


def pull_image(
    ref: Reference, platform: Platform, layout: Layout, *, client: RegistryClient | None = None
) -> PulledImage:
    """Store the ``platform`` image of the index or manifest ``ref.digest`` names in ``layout``.

    Only blobs the layout lacks are fetched, so a repeated pull costs no requests at all; a digest is required
    because a base image that can change under a tag would make builds unreproducible.
    """
    if ref.digest is None:
        unpinned = f"{ref.registry}/{ref.repository}:{ref.identifier}"
        raise OcimodelError(
            f"base image {unpinned} is not pinned by digest: use {ref.registry}/{ref.repository}@sha256:<digest> "
            f"(find it with `crane digest {unpinned}` or `skopeo inspect docker://{unpinned}`)"
        )
    with ExitStack() as stack:
        if client is None:
            client = stack.enter_context(RegistryClient(ref.registry))
        return _Puller(ref, layout, client).pull(ref.digest, platform)


def pull_first(refs: Sequence[Reference], platform: Platform, layout: Layout, *, plain_http: bool = False) -> PulledImage:
    """``pull_image`` from the first of ``refs`` that serves it: copies of one digest on several registries.

    A digest names the content, so any registry holding it gives the same image; when none can, the one error line
    names every host tried and why each failed.
    """
    digests = {ref.digest for ref in refs}
    if len(digests) != 1:
        raise OcimodelError(f"mirrors of a base image must name one digest, not {', '.join(map(str, digests))}")
    failures: list[str] = []
    for ref in refs:
        try:
            with RegistryClient(ref.registry, plain_http=plain_http) as client:
                return pull_image(ref, platform, layout, client=client)
        except OcimodelError as exc:
            if len(refs) == 1:
                raise
            log.warning("base image from %s failed (%s); trying the next registry", ref.api_host, exc)
            failures.append(f"{ref.api_host}: {exc}")
    hosts = ", ".join(ref.api_host for ref in refs)
    raise OcimodelError(
        f"cannot fetch base image {refs[0].digest} from any of {hosts} ({'; '.join(failures)}): pass --base (or set "
        "OCIMODEL_BASE_IMAGE) to a copy of the image on a registry you can reach"
    )


class _Puller:
    def __init__(self, ref: Reference, layout: Layout, client: RegistryClient) -> None:
        self._ref = ref
        self._layout = layout
        self._client = client

    def pull(self, digest: str, platform: Platform) -> PulledImage:
        parents: list[_Document] = []
        document = self._document(digest)
        while document.descriptor.media_type in INDEX_TYPES:
            if len(parents) == MAX_INDEX_DEPTH:
                raise OcimodelError(f"{self._ref} nests image indexes more than {MAX_INDEX_DEPTH} deep; refusing it")
            parents.append(document)
            chosen = self._select(document, platform)
            document = self._document(chosen.digest, chosen)
        manifest = document
        if manifest.descriptor.media_type not in MANIFEST_TYPES:
            raise OcimodelError(
                f"{self._ref} is a {manifest.descriptor.media_type}, not an image manifest or index"
            )
        try:
            config_descriptor = Descriptor.from_json(manifest.json["config"])
            layers = [Descriptor.from_json(layer) for layer in manifest.json.get("layers") or []]
        except (KeyError, TypeError, ValueError) as exc:
            raise OcimodelError(f"manifest {manifest.descriptor.digest} of {self._ref} is malformed: {exc}") from None
        for layer in layers:
            self._ensure_blob(layer)
        self._ensure_blob(config_descriptor)
        config = parse_document(
            self._layout.read_blob(config_descriptor.digest), f"config {config_descriptor.digest} of {self._ref}"
        )
        descriptor = manifest.descriptor
        if descriptor.platform is None:
            descriptor = self._check_platform(descriptor, config, platform)
        for document in (manifest, *reversed(parents)):
            if not self._layout.has_blob(document.descriptor.digest):
                self._layout.write_blob([document.data], document.descriptor.digest)
        return PulledImage(descriptor, manifest.json, config)

    def _document(self, digest: str, entry: Descriptor | None = None) -> _Document:
        """A manifest or index from the layout if it is there, else from the registry (verified either way)."""
        if self._layout.has_blob(digest):
            data = self._layout.read_blob(digest)
        else:
            data, _ = self._client.get_manifest(self._ref.repository, digest)
        doc = parse_document(data, f"manifest {digest} of {self._ref}")
        if doc.get("schemaVersion") != 2:
            raise OcimodelError(
                f"manifest {digest} of {self._ref} has schemaVersion {doc.get('schemaVersion')!r}; only 2 is supported"
            )
        media_type = doc.get("mediaType") or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST)
        descriptor = Descriptor(
            media_type, digest, len(data), entry.annotations if entry else {}, entry.platform if entry else None
        )
        return _Document(descriptor, data, doc)

    def _select(self, index: _Document, platform: Platform) -> Descriptor:
        try:
            entries = [Descriptor.from_json(m) for m in index.json.get("manifests") or []]
        except ValueError as exc:
            raise OcimodelError(f"index {index.descriptor.digest} of {self._ref} is malformed: {exc}") from None
        candidates = [e for e in entries if e.platform is not None and platform.matches(e.platform)]
        exact = [e for e in candidates if e.platform == platform]
        if not candidates:
            available = ", ".join(dict.fromkeys(str(e.platform) for e in entries if e.platform)) or "none"
            raise OcimodelError(
                f"{self._ref} has no image for {platform} (available: {available}): choose one of those platforms"
            )
        return (exact or candidates)[0]

    def _check_platform(self, descriptor: Descriptor, config: dict[str, Any], platform: Platform) -> Descriptor:
        """A single-platform manifest names its platform only in its config: refuse a mismatch early."""
        try:
            actual = Platform.from_json(config)
        except (KeyError, TypeError):
            return descriptor
        if not platform.matches(actual):
            raise OcimodelError(
                f"{self._ref} is an image for {actual}, not {platform}: pin the multi-platform index or the "
                f"{platform} manifest instead"
            )
        return Descriptor(descriptor.media_type, descriptor.digest, descriptor.size, descriptor.annotations, actual)

    def _ensure_blob(self, descriptor: Descriptor) -> None:
        if self._layout.has_blob(descriptor.digest):
            return
        with self._layout.writer() as writer:
            for chunk in self._client.stream_blob(self._ref.repository, descriptor.digest):
                writer.write(chunk)
                if writer.size > descriptor.size:
                    raise DigestMismatch(
                        f"blob {descriptor.digest} of {self._ref.repository} from registry {self._ref.registry} is "
                        f"larger than the {descriptor.size} bytes its manifest declares; refusing it"
                    )
            writer.commit(descriptor.digest)

