"""Fixtures shared by the unit tests: the in-process registry stub, and moto's account for the ``aws`` tests
(defined in tests/harness/aws.py, registered here by importing them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.aws import aws, config_file, hub, moto_account, wheel  # noqa: F401 (fixtures, registered by import)
from tests.harness.registry_stub import RegistryStub, isolate_credentials


@pytest.fixture(autouse=True)
def no_user_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The user's docker and podman credentials must never reach a test, nor a test's credentials them."""
    isolate_credentials(monkeypatch, tmp_path / "home")


@pytest.fixture
def stub() -> Iterator[RegistryStub]:
    with RegistryStub() as running:
        yield running
