"""The KServe warnings ``pack``, ``push`` and ``build`` print about the image they just made: quick, and advisory."""

from __future__ import annotations

import logging
from pathlib import Path

from ocimodel.errors import OcimodelError
from ocimodel.image.source import ImageSource
from ocimodel.layout.source import LayoutSource
from ocimodel.layout.store import Layout
from ocimodel.registry.client import RegistryClient
from ocimodel.registry.reference import Reference
from ocimodel.registry.source import RegistrySource
from ocimodel.verification.checks import verify
from ocimodel.verification.gather import image_platforms
from ocimodel.verification.report import Result
from ocimodel.verification.tarread import QUICK, Budget

#: Platforms of one index the warnings check; real images offer fewer than ten.
QUICK_PLATFORMS = 16

log = logging.getLogger("ocimodel.verify")


def layout_warnings(path: Path, tag: str | None) -> list[str]:
    """What ``pack`` and ``push`` print about the image they just wrote or sent: read from the layout alone."""
    try:
        return _warnings(LayoutSource(Layout.open(path), tag))
    except Exception as exc:  # advisory: nothing here may turn a finished pack or push into a failure
        log.debug("KServe check failed", exc_info=True)
        message = str(exc) if isinstance(exc, OcimodelError) else type(exc).__name__
        return [f"could not check the image for KServe: {message}"]


def registry_warnings(client: RegistryClient, ref: Reference) -> list[str]:
    """What ``build`` prints about the image it pushed: manifests, configs and small layers, read back."""
    try:
        return _warnings(RegistrySource(client, ref))
    except Exception as exc:  # advisory: nothing here may turn a finished build into a failure
        log.debug("KServe check failed", exc_info=True)
        message = str(exc) if isinstance(exc, OcimodelError) else type(exc).__name__
        return [f"could not check the image for KServe: {message}"]


def _warnings(source: ImageSource) -> list[str]:
    """One line per problem over the image's platforms, read with ``QUICK`` so no big layer is read in full and the
    whole run stays within one budget, however many layers and platforms the image has."""
    budget = Budget(QUICK)
    platforms = image_platforms(source)
    reports = [verify(source, p, policy=QUICK, budget=budget) for p in platforms[:QUICK_PLATFORMS]]
    found: dict[str, list[str]] = {}
    for report in reports:
        for c in report.checks:
            if c.result in (Result.FAIL, Result.WARN):
                found.setdefault(f"{c.id}: {c.detail}", []).append(str(report.platform))
    lines = [line if len(where) == len(reports) else f"{', '.join(where)}: {line}" for line, where in found.items()]
    if len(platforms) > QUICK_PLATFORMS:
        lines.append(f"checked the first {QUICK_PLATFORMS} of {len(platforms)} platforms; run `ocimodel verify "
                     "--platform …` for the others")
    return lines
