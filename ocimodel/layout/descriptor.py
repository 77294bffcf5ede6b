"""Immutable descriptors, digests and platforms: the vocabulary every other module speaks."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ocimodel.errors import OcimodelError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_SOURCE = "org.opencontainers.image.source"
ANNOTATION_REVISION = "org.opencontainers.image.revision"
ANNOTATION_FILEPATH = "org.cncf.model.filepath"
ANNOTATION_FILE_METADATA = "org.cncf.model.file.metadata+json"

#: The distribution spec asks registries to accept manifests up to 4 MiB (ECR's documented maximum too); nothing
#: bigger is a manifest we made or want, and it must not be read into memory unbounded.
MANIFEST_MAX_BYTES = 4 << 20
#: Any JSON document we read whole (manifest, index, config): configs with long histories stay well under this.
DOCUMENT_MAX_BYTES = 16 << 20
#: An index may point at another index; real images nest at most once, this only stops a malicious loop.
MAX_INDEX_DEPTH = 4

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
#: The descriptor fields ``Descriptor`` has attributes for; any other is kept as read.
_MODELLED = frozenset({"mediaType", "digest", "size", "annotations", "platform", "urls", "data", "artifactType"})


def _check_data(data: Any, digest: str, size: int) -> None:
    """Embedded content must be base64 (RFC 4648) of exactly the bytes the digest names; the size is checked before
    anything is decoded or hashed."""
    if not isinstance(data, str) or len(data) % 4 or len(data) // 4 * 3 - data[-2:].count("=") != size:
        raise ValueError(f"descriptor of {digest} has data that is not base64 of {size} bytes")
    try:
        content = base64.b64decode(data, validate=True)
    except binascii.Error:
        raise ValueError(f"descriptor of {digest} has data that is not base64 of {size} bytes") from None
    if sha256_digest(content) != digest:
        raise ValueError(f"descriptor of {digest} has embedded data that hashes to {sha256_digest(content)} instead")


def is_index(media_type: str, doc: Mapping[str, Any]) -> bool:
    """Whether a document is an image index: by its media type, or (OCI makes ``mediaType`` optional) by the
    ``manifests`` list only an index has."""
    return media_type in INDEX_TYPES or "manifests" in doc


def is_compressed_layer(media_type: str) -> bool:
    """Whether a tar layer's media type names a compression (``+gzip``/``+zstd``, docker's ``.tar.gzip``): an
    uncompressed layer's type ends in ``.tar`` in both the OCI and the docker schemes."""
    return not media_type.endswith(".tar")


def is_digest(value: str) -> bool:
    """Only sha256 is accepted: it is what every registry and runtime we target agrees on."""
    return bool(_DIGEST.match(value))


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Compact, key-order-preserving JSON: the same document always gives the same bytes and digest."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def parse_document(data: bytes, what: str) -> dict[str, Any]:
    """A manifest, index or config as a JSON object, or one line saying ``what`` is not one."""
    try:
        doc = json.loads(data)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        doc = None
    if not isinstance(doc, dict):
        raise OcimodelError(f"{what} is not a JSON object")
    return doc


def _excerpt(value: Any, limit: int = 80) -> str:
    """A value quoted in an error line, cut short: a hostile document can make it megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def descriptor_list(doc: Mapping[str, Any], key: str, what: str) -> list[Descriptor]:
    """``doc[key]`` (``manifests``, ``layers``) as descriptors, none if absent, or one line saying ``what`` is
    malformed: ``null``, an object or a string where the list belongs is refused, not iterated."""
    raw = doc.get(key, [])
    if not isinstance(raw, list):
        raise OcimodelError(f"{what} is malformed: {key} is {_excerpt(raw)}, not a list")
    try:
        return [Descriptor.from_json(item) for item in raw]
    except ValueError as exc:
        raise OcimodelError(f"{what} is malformed: {exc}") from None


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` as docker's ``--platform`` does."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform {text!r} is not os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Platform:
        """KeyError for a missing field, TypeError for one that is not a string (or ``obj`` not an object)."""
        fields = (obj["os"], obj["architecture"], obj.get("variant") or None)
        if not all(isinstance(f, str) for f in fields[:2]) or not isinstance(fields[2], (str, type(None))):
            raise TypeError(f"platform {obj!r} has fields that are not strings")
        return cls(*fields)

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def matches(self, other: Platform) -> bool:
        """A missing variant on our side matches any variant, as containerd's default matcher does for arm64."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return self.variant is None or self.variant == other.variant or (
            self.architecture == "arm64" and {self.variant, other.variant} <= {"v8", None}
        )

    def choose(self, entries: Sequence[Descriptor]) -> Descriptor | None:
        """The index entry a node of this platform runs: the exact match, else the first compatible one (as
        containerd picks); None when the index has nothing for it."""
        candidates = [e for e in entries if e.platform is not None and self.matches(e.platform)]
        return next((e for e in candidates if e.platform == self), candidates[0] if candidates else None)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: what it is, its digest and size, and optional annotations and platform.

    What a descriptor read from elsewhere holds beyond that (``urls`` of a foreign layer, embedded ``data``, an
    ``artifactType``, fields of later spec versions or other tools) is kept and written back as it came, keys in
    their order, so re-emitting a base's layers or another tool's index entries changes nothing of theirs.
    """

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    data: str | None = None
    artifact_type: str | None = None
    #: Fields this model does not know, as read (any JSON value).
    unknown: Mapping[str, Any] = field(default_factory=dict)
    #: The keys in the order they were read: the written object has the read one's bytes. Empty for our own.
    key_order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls or "urls" in self.key_order:
            out["urls"] = list(self.urls)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations or "annotations" in self.key_order:
            out["annotations"] = dict(self.annotations)
        if self.data is not None:
            out["data"] = self.data
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        out.update(self.unknown)
        if not self.key_order:
            return out
        return {**{k: out[k] for k in self.key_order if k in out}, **out}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Descriptor:
        """ValueError, in one line, for anything a hand-edited or hostile document may hold instead of a descriptor:
        every later use (tags as dict keys, media types searched for ``tar``) trusts these types.

        Embedded ``data`` must be what the digest names (image-spec descriptor.md: the decoded data MUST be identical
        to the referenced content): a base whose descriptor lies there is refused rather than copied into our image,
        where a runtime reading ``data`` would run other bytes than the digest says.
        """
        try:
            digest = obj["digest"]
            size = obj["size"]
            media_type = obj.get("mediaType", "")
            annotations = obj.get("annotations") or {}
            platform = Platform.from_json(obj["platform"]) if obj.get("platform") else None
            urls = obj.get("urls") or []
            data = obj.get("data")
            artifact_type = obj.get("artifactType")
            unknown = {k: v for k, v in obj.items() if k not in _MODELLED}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed descriptor {_excerpt(obj)}") from exc
        if not isinstance(digest, str) or not is_digest(digest):
            raise ValueError(f"unsupported digest {_excerpt(digest)} (only sha256 is supported)")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"descriptor of {digest} has size {_excerpt(size)}, not a byte count")
        if not isinstance(media_type, str):
            raise ValueError(f"descriptor of {digest} has mediaType {_excerpt(media_type)}, not a string")
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise ValueError(f"descriptor of {digest} has annotations {_excerpt(annotations)}, not strings by name")
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ValueError(f"descriptor of {digest} has urls {_excerpt(urls)}, not a list of strings")
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise ValueError(f"descriptor of {digest} has artifactType {_excerpt(artifact_type)}, not a string")
        if data is not None:
            _check_data(data, digest, size)
        return cls(
            media_type, digest, size, dict(annotations), platform, tuple(urls), data, artifact_type, unknown, tuple(obj)
        )

    @classmethod
    def of_bytes(cls, media_type: str, data: bytes, annotations: Mapping[str, str] | None = None) -> Descriptor:
        return cls(media_type, sha256_digest(data), len(data), dict(annotations or {}))

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]
