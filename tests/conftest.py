"""Shared fixtures: session-scoped ones for tests that need a registry or a base image, and a dead loopback port.

Everything is lazy: a registry process starts only when the first test in
the session asks for it, and it is reused by every later test, so the
whole suite pays the start-up cost (well under a second) at most once per
registry flavour.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The harness lives in tests/harness; make it importable as ``tests.harness``
# however pytest was launched (``pytest`` or ``python3 -m pytest``, any import mode).
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from tests.harness.busybox import (  # noqa: E402
    build_busybox_layout,
    layout_top_digest,
    pinned_reference,
    push_layout_with_skopeo,
)
from tests.harness.containerd import Containerd, run_containerd  # noqa: E402
from tests.harness.registry import Registry, run_registry  # noqa: E402

BUSYBOX_REPO = "library/busybox"
BUSYBOX_MULTI_REPO = "library/busybox-multi"
BUSYBOX_PLATFORMS = ("linux/amd64",)
BUSYBOX_MULTI_PLATFORMS = ("linux/amd64", "linux/arm64")

_INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own ocimodel cache (digest cache, known blobs), also seen by CLI subprocesses it starts.

    Without this, one test's remembered digests or mount hints would change what another test exercises.
    """
    cache = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: needs real external tools (docker-registry, skopeo, umoci, busybox-static, containerd, runc)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration, so ``-m 'not integration'`` works without per-file boilerplate."""
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An open (no auth) docker-registry on 127.0.0.1:<free port>."""
    with run_registry(tmp_path_factory.mktemp("registry-open")) as running:
        yield running


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A docker-registry requiring HTTP Basic auth; see ``.username``/``.password``/``.creds``."""
    with run_registry(tmp_path_factory.mktemp("registry-auth"), auth=True) as running:
        yield running


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """A private containerd (Debian's, with runc) on its own socket; pulls go into the ``k8s.io`` namespace."""
    with run_containerd(tmp_path_factory.mktemp("containerd")) as running:
        yield running


@pytest.fixture(scope="session")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OCI layout of the single-platform (linux/amd64) busybox image, tagged ``latest``.

    Treat it as read-only: it is shared by the whole session.
    """
    layout = tmp_path_factory.mktemp("busybox-layout") / "layout"
    build_busybox_layout(layout, BUSYBOX_PLATFORMS)
    return layout


@pytest.fixture(scope="session")
def busybox_multi_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OCI layout whose ``latest`` is an image index over linux/amd64 and linux/arm64."""
    layout = tmp_path_factory.mktemp("busybox-multi-layout") / "layout"
    build_busybox_layout(layout, BUSYBOX_MULTI_PLATFORMS)
    return layout


@pytest.fixture(scope="session")
def busybox_ref(registry: Registry, busybox_layout: Path) -> str:
    """``127.0.0.1:PORT/library/busybox@sha256:...`` of the single-platform manifest in ``registry``."""
    push_layout_with_skopeo(busybox_layout, registry.host, BUSYBOX_REPO, "latest")
    return pinned_reference(registry.host, BUSYBOX_REPO, layout_top_digest(busybox_layout))


@pytest.fixture(scope="session")
def busybox_multi_ref(registry: Registry, busybox_multi_layout: Path) -> str:
    """``127.0.0.1:PORT/library/busybox-multi@sha256:...`` of the two-platform image index."""
    push_layout_with_skopeo(busybox_multi_layout, registry.host, BUSYBOX_MULTI_REPO, "latest")
    return pinned_reference(registry.host, BUSYBOX_MULTI_REPO, layout_top_digest(busybox_multi_layout))


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connections are refused, and nobody else can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
