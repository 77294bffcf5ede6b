"""docs/api.md's examples, run as written: against the real docker-registry in place of ``localhost:5000``, with
the tests' busybox as the base, in a folder holding a small model directory ``my-model``.

The examples share one namespace, in order, as a reader pasting them into one session would.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from tests.harness.registry import Registry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def examples() -> list[str]:
    return _BLOCK.findall(DOCS.read_text())


def test_the_documented_api_examples_run(
    registry: Registry, busybox_ref: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = examples()
    assert len(blocks) >= 5, "docs/api.md lost its examples"
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "tiny"}))
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 512)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OCIMODEL_BASE_IMAGE", busybox_ref)
    monkeypatch.delenv("REGISTRY_TOKEN", raising=False)

    namespace: dict[str, object] = {"__name__": "__docs__"}
    out = io.StringIO()
    for number, block in enumerate(blocks, 1):
        code = compile(block.replace("localhost:5000", registry.host), f"docs/api.md example {number}", "exec")
        with contextlib.redirect_stdout(out):
            exec(code, namespace)  # noqa: S102 - the examples are ours, and running them is the test

    printed = out.getvalue()
    pushed = namespace["pushed"]
    assert f"oci://{registry.host}/models/my-model@sha256:" in printed
    for tag in ("v1", "v2", "v3", "stable"):
        assert registry.fetch_manifest("models/my-model", tag).digest == pushed.digest  # type: ignore[attr-defined]
    assert "v3 0 blobs uploaded" in printed and "stable 0 blobs uploaded" in printed
    assert "ref - ref: push to a tag or a bare repository, not a digest" in printed
