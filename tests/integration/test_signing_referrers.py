"""A model.sig attached as an OCI 1.1 referrer on Debian's docker-registry, which has no referrers API.

The registry itself is the judge of what it stores: it refuses a manifest whose blobs it lacks, serves the
fallback index as it was pushed, and answers the referrers API with 404 (the spec's "not supported").
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest

from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import OCI_INDEX, OCI_MANIFEST, Descriptor
from ocimodel.progress import PlainReporter
from ocimodel.registry.client import RegistryClient
from ocimodel.registry.push import Pusher, PushOptions
from ocimodel.registry.referrers import (
    OCI_EMPTY,
    OMS_ARTIFACT_TYPE,
    OMS_BUNDLE_MEDIA_TYPE,
    attach,
    referrers,
    referrers_tag,
)
from tests.harness.busybox import layout_top_digest, push_layout_with_skopeo
from tests.harness.registry import Registry

SIGNATURE = b'{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","dsseEnvelope":{}}'


def _subject(registry: Registry, busybox_layout: Path) -> tuple[str, Descriptor]:
    repo = f"signing/{uuid.uuid4().hex[:12]}"
    push_layout_with_skopeo(busybox_layout, registry.host, repo, "latest")
    digest = layout_top_digest(busybox_layout)
    served = registry.fetch_manifest(repo, digest)
    return repo, Descriptor(served.media_type, digest, len(served.body))


def _pusher(registry: Registry, repo: str) -> Pusher:
    client = RegistryClient(registry.host, plain_http=True)
    return Pusher(client, repo, PushOptions(), PlainReporter(io.StringIO()))


def test_attach_falls_back_to_the_referrers_tag_schema(registry: Registry, busybox_layout: Path) -> None:
    repo, subject = _subject(registry, busybox_layout)
    assert registry.get(f"/v2/{repo}/referrers/{subject.digest}").status_code == 404
    pusher = _pusher(registry, repo)

    attached = attach(pusher, subject, SIGNATURE)
    tag = referrers_tag(subject.digest)
    assert tag == "sha256-" + subject.digest.removeprefix("sha256:")
    assert attached.listed_by == f"tag {tag}" and attached.via_tag

    artifact = registry.fetch_manifest(repo, attached.manifest.digest)
    doc = artifact.json()
    assert artifact.media_type == OCI_MANIFEST and doc["artifactType"] == OMS_ARTIFACT_TYPE
    assert doc["subject"] == {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size}
    assert doc["config"]["mediaType"] == OCI_EMPTY and registry.fetch_blob(repo, doc["config"]["digest"]) == b"{}"
    assert [layer["mediaType"] for layer in doc["layers"]] == [OMS_BUNDLE_MEDIA_TYPE]
    assert registry.fetch_blob(repo, doc["layers"][0]["digest"]) == SIGNATURE

    index = registry.fetch_manifest(repo, tag)
    assert index.media_type == OCI_INDEX
    entry = {"mediaType": OCI_MANIFEST, "digest": attached.manifest.digest, "size": attached.manifest.size,
             "artifactType": OMS_ARTIFACT_TYPE}
    assert index.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}

    # A second artifact joins the list; attaching the first again does not list it twice.
    other = attach(pusher, subject, b"another signature", annotations={"org.example.kind": "second"})
    attach(pusher, subject, SIGNATURE)
    listed = registry.fetch_manifest(repo, tag).json()["manifests"]
    assert [e["digest"] for e in listed] == [attached.manifest.digest, other.manifest.digest]
    assert listed[1]["annotations"] == {"org.example.kind": "second"}
    assert referrers(pusher.client, repo, subject.digest) == listed
    assert registry.list_tags(repo) == sorted(["latest", tag])


def test_a_foreign_document_at_the_fallback_tag_is_not_overwritten(registry: Registry, busybox_layout: Path) -> None:
    repo, subject = _subject(registry, busybox_layout)
    tag = referrers_tag(subject.digest)
    push_layout_with_skopeo(busybox_layout, registry.host, repo, tag)  # something else squats the tag
    before = registry.fetch_manifest(repo, tag)
    with pytest.raises(OcimodelError, match=f"{repo}:{tag} on registry .* holds a .*, not the referrers index"):
        attach(_pusher(registry, repo), subject, SIGNATURE)
    assert registry.fetch_manifest(repo, tag).body == before.body
