"""Pull one platform of a digest-pinned image into a layout, reusing whatever the layout already holds.

Blobs are written children first (layers, config, manifest, index), so a manifest in the layout always has its
config and layers next to it, and a failed pull leaves nothing half-referenced behind.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any

from ocimodel.errors import DigestMismatch, OcimodelError
from ocimodel.image.walk import Node, walk
from ocimodel.layout.descriptor import MANIFEST_TYPES, Descriptor, Platform, parse_document
from ocimodel.layout.store import Layout
from ocimodel.registry.client import RegistryClient
from ocimodel.registry.reference import Reference
from ocimodel.registry.source import RegistrySource

log = logging.getLogger("ocimodel.registry")


@dataclass(frozen=True)
class PulledImage:
    manifest: Descriptor
    manifest_json: dict[str, Any]
    config_json: dict[str, Any]


def _schema_2(node: Node) -> Node:
    if node.doc.get("schemaVersion") != 2:
        raise OcimodelError(f"{node.what} has schemaVersion {node.doc.get('schemaVersion')!r}; only 2 is supported")
    return node


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
        return _Puller(ref, layout, client).pull(platform)


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
        f"cannot fetch base image {refs[0].digest} from any of {hosts} ({'; '.join(failures)}): give another base "
        "image (or set OCIMODEL_BASE_IMAGE): a copy of it on a registry you can reach"
    )


class _Reused:
    """The registry's image, with the documents an earlier pull left in the layout read from there (verified all the
    same): pulling again sends no request at all."""

    def __init__(self, remote: RegistrySource, layout: Layout, digest: str) -> None:
        self._remote = remote
        self._layout = layout
        self._digest = digest

    @property
    def name(self) -> str:
        return self._remote.name

    @property
    def seekable(self) -> bool:
        return False

    def top(self) -> tuple[Descriptor, bytes]:
        desc = Descriptor("", self._digest, 0)  # what it is comes from the document itself
        return desc, self.document(desc)

    def document(self, desc: Descriptor) -> bytes:
        if self._layout.has_blob(desc.digest):
            return self._layout.read_blob(desc.digest)
        return self._remote.document(desc)

    def config(self, desc: Descriptor) -> bytes:
        if self._layout.has_blob(desc.digest):
            return self._layout.read_blob(desc.digest)
        return self._remote.config(desc)

    def layer(self, desc: Descriptor) -> AbstractContextManager[io.BufferedReader]:
        return self._remote.layer(desc)


class _Puller:
    def __init__(self, ref: Reference, layout: Layout, client: RegistryClient) -> None:
        self._ref = ref
        self._layout = layout
        self._source = _Reused(RegistrySource(client, ref), layout, ref.identifier)

    def pull(self, platform: Platform) -> PulledImage:
        nodes = [_schema_2(node) for node in walk(self._source, platform)]
        manifest = nodes[0]  # one entry followed per index: the walk is a path, the manifest its end
        if manifest.is_index:
            available = ", ".join(map(str, manifest.platforms())) or "none"
            raise OcimodelError(
                f"{self._ref} has no image for {platform} (available: {available}): choose one of those platforms"
            )
        if manifest.descriptor.media_type not in MANIFEST_TYPES:
            raise OcimodelError(
                f"{self._ref} is a {manifest.descriptor.media_type}, not an image manifest or index"
            )
        try:
            config_descriptor = Descriptor.from_json(manifest.doc["config"])
            layers = [Descriptor.from_json(layer) for layer in manifest.doc.get("layers") or []]
        except (KeyError, TypeError, ValueError) as exc:
            raise OcimodelError(f"manifest {manifest.descriptor.digest} of {self._ref} is malformed: {exc}") from None
        for layer in layers:
            self._ensure_blob(layer)
        config_data = self._source.config(config_descriptor)
        config = parse_document(config_data, f"config {config_descriptor.digest} of {self._ref}")
        descriptor = manifest.descriptor
        if descriptor.platform is None:
            descriptor = self._check_platform(descriptor, config, platform)
        for data, digest in [(config_data, config_descriptor.digest), *((n.data, n.descriptor.digest) for n in nodes)]:
            if not self._layout.has_blob(digest):  # the config, the manifest, then each index up to the top
                self._layout.write_blob([data], digest)
        return PulledImage(descriptor, manifest.doc, config)

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
        with self._layout.writer() as writer, self._source.layer(descriptor) as stream:
            while chunk := stream.read(1 << 20):
                writer.write(chunk)
                if writer.size > descriptor.size:
                    raise DigestMismatch(
                        f"blob {descriptor.digest} of {self._ref.repository} from registry {self._ref.registry} is "
                        f"larger than the {descriptor.size} bytes its manifest declares; refusing it"
                    )
            writer.commit(descriptor.digest)

