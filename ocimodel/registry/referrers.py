"""Attaching a small artifact (an OMS ``model.sig``) to an image manifest as an OCI 1.1 referrer.

The artifact is an image manifest with ``artifactType``, the empty config, one layer holding the bytes, and
``subject`` naming the image manifest. A registry with the referrers API indexes it by ``subject`` itself; one
without (the API answers 404, as Debian's docker-registry 2.8 does) needs the client to keep the list: an image
index tagged ``<alg>-<hex>`` of the subject's digest, read, extended and pushed again (the distribution spec's
referrers tag schema). Two clients updating that tag at the same moment can lose one entry: the spec allows
conditional requests for it, but docker-registry offers no ETag to condition on, so the last write wins.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import (
    MANIFEST_MAX_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    canonical_json,
    descriptor_list,
    parse_document,
)
from ocimodel.layout.store import Layout
from ocimodel.registry.client import MANIFEST_ACCEPT, RegistryClient
from ocimodel.registry.push import Pusher, Upload

#: What model-transparency (``model_signing``'s OCI support) looks for among an image's referrers.
OMS_ARTIFACT_TYPE = "application/vnd.model-signing.signature.v0.1"
OMS_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
#: The image spec's empty descriptor: the config of an artifact that has none.
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"


@dataclass(frozen=True)
class Attached:
    """Where the artifact went: its manifest, and whether the registry indexed it or the fallback tag lists it."""

    manifest: Descriptor
    listed_by: str

    @property
    def via_tag(self) -> bool:
        return self.listed_by != "referrers API"


def referrers_tag(subject_digest: str) -> str:
    """The fallback tag: ``sha256:<hex>`` → ``sha256-<hex>`` (algorithm cut to 32 characters, hex to 64)."""
    algorithm, _, encoded = subject_digest.partition(":")
    return f"{algorithm[:32]}-{encoded[:64]}"


def artifact_manifest(
    subject: Descriptor, blob: Descriptor, artifact_type: str, annotations: Mapping[str, str] | None = None
) -> tuple[Descriptor, bytes]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": Descriptor.of_bytes(OCI_EMPTY, EMPTY_CONFIG).to_json(),
        "layers": [blob.to_json()],
        "subject": Descriptor(subject.media_type, subject.digest, subject.size).to_json(),
    }
    if annotations:
        doc["annotations"] = dict(annotations)
    data = canonical_json(doc)
    return Descriptor.of_bytes(OCI_MANIFEST, data, annotations), data


def store(layout: Layout, subject: Descriptor, bundle: bytes) -> Descriptor:
    """A signature kept in a layout as a referrer of ``subject`` (its blobs and artifact manifest), for ``push`` to
    attach in the registry; returns the untagged index.json entry that keeps it reachable."""
    layout.put_bytes(OCI_EMPTY, EMPTY_CONFIG)
    blob = layout.put_bytes(OMS_BUNDLE_MEDIA_TYPE, bundle)
    manifest, data = artifact_manifest(subject, blob, OMS_ARTIFACT_TYPE)
    layout.put_bytes(manifest.media_type, data)
    return replace(manifest, artifact_type=OMS_ARTIFACT_TYPE)


def stored(layout: Layout, subject: Descriptor) -> list[tuple[Descriptor, bytes]]:
    """The signatures ``store`` kept in the layout for ``subject``: their artifact manifest and ``model.sig`` bytes."""
    found = []
    for entry in layout.manifests():
        if entry.artifact_type != OMS_ARTIFACT_TYPE:
            continue
        what = f"referrer {entry.digest} in {layout.root}"
        doc = parse_document(layout.read_blob(entry.digest), what)
        if not isinstance(doc.get("subject"), dict) or doc["subject"].get("digest") != subject.digest:
            continue
        layers = descriptor_list(doc, "layers", what)
        if len(layers) == 1 and layers[0].media_type == OMS_BUNDLE_MEDIA_TYPE:
            found.append((entry, layout.read_blob(layers[0].digest)))
    return found


def attach(
    pusher: Pusher,
    subject: Descriptor,
    data: bytes,
    *,
    media_type: str = OMS_BUNDLE_MEDIA_TYPE,
    artifact_type: str = OMS_ARTIFACT_TYPE,
    annotations: Mapping[str, str] | None = None,
) -> Attached:
    """Pushes ``data`` as an artifact whose subject is ``subject`` (a manifest already in the repository)."""
    blob = Descriptor.of_bytes(media_type, data)
    config = Descriptor.of_bytes(OCI_EMPTY, EMPTY_CONFIG)
    for desc, content in ((config, EMPTY_CONFIG), (blob, data)):
        pusher.push_blob(Upload.of_bytes(content, desc.digest, f"{artifact_type} {desc.media_type}"))
    manifest, manifest_data = artifact_manifest(subject, blob, artifact_type, annotations)
    has_api = _referrers_api(pusher.client, pusher.repository, subject.digest) is not None
    pusher.put_manifest(manifest, manifest_data, manifest.digest)
    if has_api:
        return Attached(manifest, "referrers API")
    tag = referrers_tag(subject.digest)
    entries = _tag_index_entries(pusher.client, pusher.repository, tag)
    if not any(entry["digest"] == manifest.digest for entry in entries):
        entries.append({**manifest.to_json(), "artifactType": artifact_type})
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    pusher.put_manifest(Descriptor.of_bytes(OCI_INDEX, index), index, tag)
    return Attached(manifest, f"tag {tag}")


def referrers(client: RegistryClient, repository: str, subject_digest: str) -> list[dict[str, Any]]:
    """The referrers of ``subject_digest`` as index entries (``artifactType`` included), from the API if the
    registry has it, else from the fallback tag."""
    listed = _referrers_api(client, repository, subject_digest)
    if listed is not None:
        return listed
    return _tag_index_entries(client, repository, referrers_tag(subject_digest))


def _referrers_api(client: RegistryClient, repository: str, subject_digest: str) -> list[dict[str, Any]] | None:
    """The API's list, or None when the registry has no referrers API (the spec's signal for that is a 404)."""
    response = client.request(
        "GET", client.url(repository, f"referrers/{subject_digest}"), repository,
        headers={"Accept": OCI_INDEX}, ok=(200, 404),
    )
    what = f"referrers of {subject_digest} in {repository} on registry {client.registry}"
    with response:
        if response.status_code == 404:
            return None
        body = response.content  # a small answer: read already, cut one byte past the cap
    if len(body) > MANIFEST_MAX_BYTES:
        raise OcimodelError(f"{what}: the list is larger than {MANIFEST_MAX_BYTES} bytes; refusing it")
    return _entries(body, what)


def _tag_index_entries(client: RegistryClient, repository: str, tag: str) -> list[dict[str, Any]]:
    """The referrers list kept at ``tag``; empty when the tag does not exist yet."""
    where = f"{repository}:{tag} on registry {client.registry}"
    # Any manifest type is accepted, so that a tag holding something else is seen, and kept, not overwritten.
    head = client.request("HEAD", client.url(repository, f"manifests/{tag}"), repository,
                          headers={"Accept": ", ".join(MANIFEST_ACCEPT)}, ok=(200, 404))
    head.close()
    if head.status_code == 404:
        return []
    data, media_type = client.get_manifest(repository, tag)
    if media_type != OCI_INDEX:
        raise OcimodelError(
            f"{where} holds a {media_type or 'untyped'} document, not the referrers index the OCI referrers tag "
            "schema keeps there; refusing to overwrite it: move that tag"
        )
    return _entries(data, f"referrers index {where}")


def _entries(data: bytes, what: str) -> list[dict[str, Any]]:
    doc = parse_document(data, what)
    descriptor_list(doc, "manifests", what)  # each entry is checked as a descriptor before any is trusted
    return list(doc.get("manifests", []))
