"""Image references (``registry/repository:tag@digest``) parsed the way docker and crane parse them.

Users type the short names they know from ``docker pull``; normalising them the same way means ``busybox`` here and
there name the same repository, and a reference copied from any docker tool works unchanged.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from ocimodel.layout.descriptor import is_digest

DOCKER_HUB = "docker.io"
# docker.io is the name users see; the distribution API itself lives elsewhere.
DOCKER_HUB_API = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = frozenset({"index.docker.io"})
_MAX_NAME_LENGTH = 255

# The grammar of github.com/distribution/reference.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REPOSITORY = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_DOMAIN = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$")
_TAG = re.compile(r"^\w[\w.-]{0,127}$", re.ASCII)
_HEX64 = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: ``registry`` as written (``docker.io`` for Docker Hub), full ``repository``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        return api_host(self.registry)

    @property
    def identifier(self) -> str:
        """What to ask the registry for: the digest wins over the tag, as in docker; no tag at all means latest."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        if not is_digest(digest):
            raise ValueError(f"digest {digest!r} is not sha256:<64 lowercase hex digits>")
        return replace(self, digest=digest)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse ``[registry/]repository[:tag][@digest]``.

    A first component counts as a registry only if it contains ``.`` or ``:``, is ``localhost``, or has uppercase
    letters (repositories never do), exactly as docker decides; otherwise the image is on Docker Hub, where a
    single-component name lives under ``library/``.
    """
    original = text
    text = text.strip()
    if not text:
        raise ValueError("empty image reference; expected e.g. docker.io/library/busybox@sha256:<digest>")
    if _HEX64.match(text):
        raise ValueError(f"{original!r} looks like an image ID, not a reference; use repository@sha256:<digest>")

    name, at, digest = text.partition("@")
    if at and not is_digest(digest):
        if "/" in digest or ":" in name:
            # ``user:password@host/repo``: refuse it without repeating it, since the password is in it.
            raise ValueError(
                "an image reference cannot carry credentials (user:password@host/...), and what follows '@' is not a "
                "digest: log in with docker login, or give the credentials separately"
            )
        raise ValueError(f"invalid digest in {original!r}: expected sha256: followed by 64 lowercase hex digits")
    tag: str | None = None
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.match(tag):
            raise ValueError(
                f"invalid tag {tag!r} in {original!r}: up to 128 letters, digits, '_', '.' or '-', not starting "
                "with '.' or '-'"
            )

    registry, repository = _split_registry(name)
    if not _DOMAIN.match(registry):
        raise ValueError(f"invalid registry {registry!r} in {original!r}")
    if not _REPOSITORY.match(repository):
        if _REPOSITORY.match(repository.lower()):
            raise ValueError(f"invalid reference {original!r}: repository name must be lowercase")
        raise ValueError(
            f"invalid repository {repository!r} in {original!r}: use lowercase letters, digits and '.', '_', '-' "
            "separators between '/'-separated components"
        )
    if len(registry) + 1 + len(repository) > _MAX_NAME_LENGTH:
        raise ValueError(f"invalid reference {original!r}: name longer than {_MAX_NAME_LENGTH} characters")
    return Reference(registry, repository, tag, digest or None)


def _split_registry(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if slash and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    return registry, repository


def api_host(registry: str) -> str:
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def is_loopback(host: str) -> bool:
    """True for registries on this machine, which conventionally speak plain HTTP (as crane assumes)."""
    hostname = _hostname(host).lower()
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def registry_url(registry: str, *, plain_http: bool = False) -> str:
    """Base URL of a registry's API: https unless asked for plain HTTP or the registry is on this machine."""
    scheme = "http" if plain_http or is_loopback(registry) else "https"
    return f"{scheme}://{api_host(registry)}"


def _hostname(host: str) -> str:
    """``host[:port]`` or ``[v6]:port`` or a bare IPv6 address, without the port."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


@dataclass(frozen=True)
class EcrHost:
    account: str
    region: str


#: Private ECR in every endpoint form AWS documents: ``<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`` and the
#: dual-stack ``<account>.dkr-ecr[-fips].<region>.on.aws``, optionally with a port.
_ECR = re.compile(
    r"^(?P<account>[0-9]{12})\.(?:dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?"
    r"|dkr-ecr(?:-fips)?\.(?P<dual_region>[a-z0-9-]+)\.on\.aws)(?::[0-9]+)?$"
)


def is_tag(text: str) -> bool:
    """Docker's tag grammar: ASCII letters, digits, ``_``, ``.`` and ``-``, no leading ``.`` or ``-``, 128 at most."""
    return bool(_TAG.match(text))


def parse_ecr(registry: str) -> EcrHost | None:
    """Account and region of a private ECR registry host; None for any other registry."""
    match = _ECR.match(registry.lower())
    return EcrHost(match["account"], match["region"] or match["dual_region"]) if match else None

