"""HubSource.fetch under a caller's stop flag: a build that failed elsewhere must not wait for multi-GB downloads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from ocimodel.parallel import Cancelled
from ocimodel.progress import PlainReporter
from ocimodel.source import Provenance, SourceFile
from ocimodel.source import hub


def test_the_callers_stop_ends_a_download_between_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks: list[int] = []

    def fake_download(*args: Any, tqdm_class: Any, **kwargs: Any) -> str:
        bar = tqdm_class(total=3)
        for _ in range(3):
            bar.update(1)  # huggingface_hub reports each chunk it wrote
            chunks.append(1)
        return str(tmp_path / "a")

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    source = hub.HubSource("acme/x", "main", "0" * 40, tmp_path, Provenance("acme/x"), PlainReporter(),
                           (hub.HubFile("a", 3, None),))
    files = [SourceFile("a", tmp_path / "a", 3)]
    source.fetch(files)
    assert chunks == [1, 1, 1] and source.downloaded == {"a"}

    chunks.clear()
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        source.fetch(files, stop)
    assert chunks == []
