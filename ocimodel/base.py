"""The base image under the model layers: which one by default, and fetching it for each platform.

The default is busybox pinned by digest: KServe's modelcar sidecar runs ``sh``, ``ln`` and ``sleep`` from it, and
pinning makes every image built on it reproducible (docs/kserve.md).
"""

from __future__ import annotations

from typing import Sequence

from ocimodel import localdb
from ocimodel.errors import InvalidArgument
from ocimodel.layout.descriptor import Platform
from ocimodel.layout.image import Base, PlatformBase, scratch
from ocimodel.layout.store import Layout

#: busybox 1.37.0 from ECR Public's mirror of Docker's official images (an index of all platforms).
DEFAULT_BASE = (
    "public.ecr.aws/docker/library/busybox:1.37.0"
    "@sha256:9db7b59979c38555a39def84a31fb98b5296952f9e3afd4f6f11f05b07adfab0"
)
#: The same busybox by the same digest on Docker Hub and on Google's mirror of it, tried in order when ECR Public
#: cannot serve it (the image, and so every digest built on it, is the same whichever answers).
DEFAULT_BASE_MIRRORS = (
    "docker.io/library/busybox:1.37.0@sha256:9db7b59979c38555a39def84a31fb98b5296952f9e3afd4f6f11f05b07adfab0",
    "mirror.gcr.io/library/busybox:1.37.0@sha256:9db7b59979c38555a39def84a31fb98b5296952f9e3afd4f6f11f05b07adfab0",
)
#: ``base`` for no base image at all (a model-only image; KServe's modelcar mode needs a shell, so it fails there).
SCRATCH = "scratch"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"


def load_base(
    ref_text: str, platform: Platform, layout: Layout, plain_http: bool = False, mirrors: Sequence[str] = ()
) -> PlatformBase:
    """The base image for ``platform`` and the annotations naming it; ``scratch`` means none.

    The annotations name ``ref_text`` whichever mirror served it, so the image digest does not depend on that.
    """
    if ref_text == SCRATCH:
        return PlatformBase(platform, scratch(platform), {})
    from ocimodel.registry.pull import pull_first
    from ocimodel.registry.reference import parse_reference

    refs = []
    for text in (ref_text, *mirrors):
        try:
            refs.append(parse_reference(text))
        except ValueError as exc:
            raise InvalidArgument("base", f"{text!r}: {exc}") from None
    pulled = pull_first(refs, platform, layout, plain_http=plain_http)
    return PlatformBase(platform, Base(pulled.manifest_json, pulled.config_json), {
        ANNOTATION_BASE_NAME: ref_text,
        ANNOTATION_BASE_DIGEST: pulled.manifest.digest,
    })


def load_bases(
    ref_text: str,
    platforms: Sequence[Platform],
    layout: Layout,
    plain_http: bool = False,
    mirrors: Sequence[str] | None = None,
) -> list[PlatformBase]:
    """One base per platform; ``mirrors`` None means the default base's mirrors for the default base, else none."""
    if mirrors is None:
        mirrors = DEFAULT_BASE_MIRRORS if ref_text == DEFAULT_BASE else ()
    return [load_base(ref_text, p, layout, plain_http, mirrors) for p in platforms]


def base_store() -> Layout:
    """Where ``build`` keeps base images between builds: a layout in the user's cache, so a base is pulled once."""
    return Layout.create(localdb.default_path().parent / "bases")
