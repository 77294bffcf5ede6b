"""Without ``-v``, the CLI shows the library's warnings (what a registry keeps us waiting for) as ``ocimodel:`` lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from ocimodel import cli


@pytest.fixture
def notices() -> Iterator[None]:
    yield
    logging.getLogger("ocimodel").removeHandler(cli._NOTICES)


def test_library_warnings_reach_stderr_as_one_line_each(notices: None, capsys: pytest.CaptureFixture[str]) -> None:
    CliRunner().invoke(cli.app, ["verify", "/nonexistent/layout"])
    capsys.readouterr()
    logging.getLogger("ocimodel.registry").info("not shown without -v")
    logging.getLogger("ocimodel.registry").warning("still waiting for registry r.example to answer HEAD (5.0s so far)")
    assert capsys.readouterr().err == "ocimodel: still waiting for registry r.example to answer HEAD (5.0s so far)\n"
