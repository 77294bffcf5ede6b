"""What the operations return: frozen records of what was written or pushed, for the CLI to print and callers to
read (``digest``, ``reference``, ``uri``, per-blob outcomes, seconds per phase, warnings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class PackResult:
    """What ``pack`` wrote: the tag in ``layout`` now points at ``digest`` (a manifest, or an index of platforms)."""

    digest: str
    size: int
    media_type: str
    layout: Path
    tag: str
    #: Things that will not stop the image from working but will cost its users (too many layers, slow pulls...).
    warnings: tuple[str, ...] = ()
    #: The digest of the signature's referrer manifest kept in the layout (``push`` attaches it), if signed.
    signature: str | None = None

    def to_json(self) -> dict[str, object]:
        signature = {"signature": self.signature} if self.signature else {}
        return {"digest": self.digest, "size": self.size, "layout": str(self.layout), "tag": self.tag, **signature}


@dataclass(frozen=True)
class BlobOutcome:
    """What became of one blob: ``uploaded``, ``skipped`` (the registry had it) or ``mounted`` (from ``source``)."""

    digest: str
    size: int
    outcome: str
    source: str | None = None
    #: Wall seconds the blob took, retries included.
    seconds: float = 0.0


@dataclass(frozen=True)
class PushResult:
    """What a push left in the registry: ``reference`` is ``host/repo@sha256:…`` (what the CLI prints last)."""

    reference: str
    digest: str
    media_type: str
    blobs: tuple[BlobOutcome, ...]
    #: Things that will not stop the image from working but will cost its users (too many layers, slow pulls...).
    warnings: tuple[str, ...] = ()
    #: The digest of the signature (``model.sig``) attached to the image as a referrer, if it is signed.
    signature: str | None = None

    @property
    def uri(self) -> str:
        return f"oci://{self.reference}"

    def to_json(self) -> dict[str, object]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "mediaType": self.media_type,
            "uri": self.uri,
            "blobs": [
                {"digest": b.digest, "size": b.size, "outcome": b.outcome, "seconds": round(b.seconds, 3),
                 **({"from": b.source} if b.source else {})}
                for b in self.blobs
            ],
            "uploadedBytes": sum(b.size for b in self.blobs if b.outcome == "uploaded"),
            **({"signature": self.signature} if self.signature else {}),
        }


@dataclass(frozen=True)
class BuildResult:
    """What ``build`` pushed, with wall seconds per phase (``source``, ``layers``, ``manifest``; or ``pack`` and
    ``push`` when a layout was kept)."""

    push: PushResult
    phases: Mapping[str, float] = field(default_factory=dict)
    #: Things that will not stop the image from working but will cost its users (too many layers, slow pulls...).
    warnings: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        return self.push.digest

    @property
    def reference(self) -> str:
        """``host/repo@sha256:…``: what the CLI prints last."""
        return self.push.reference

    @property
    def uri(self) -> str:
        """``oci://host/repo@sha256:…``: KServe's ``storageUri``."""
        return self.push.uri

    @property
    def signature(self) -> str | None:
        return self.push.signature

    def to_json(self) -> dict[str, object]:
        skipped = sum(b.size for b in self.push.blobs if b.outcome in ("skipped", "mounted"))
        seconds = {k: round(v, 3) for k, v in self.phases.items()}
        return {**self.push.to_json(), "skippedBytes": skipped, "seconds": seconds}
