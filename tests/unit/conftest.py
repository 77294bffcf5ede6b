"""Fixtures shared by the unit tests that talk to the in-process registry stub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry_stub import RegistryStub, isolate_credentials


@pytest.fixture(autouse=True)
def no_user_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The user's docker and podman credentials must never reach a test, nor a test's credentials them."""
    isolate_credentials(monkeypatch, tmp_path / "home")


@pytest.fixture
def stub() -> Iterator[RegistryStub]:
    with RegistryStub() as running:
        yield running
