"""``run_all``: the first failure or interrupt stops every job, including one that lands while jobs are submitted."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest

from ocimodel.parallel import run_all


def test_an_interrupt_while_submitting_stops_the_jobs_already_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM or Ctrl-C can land while jobs are still being handed out: the first job must hear of it."""
    started = threading.Event()
    saw_stop: list[bool] = []

    def job(item: int, stop: threading.Event) -> None:
        if item == 0:
            started.set()
            saw_stop.append(stop.wait(timeout=10))

    real_submit = ThreadPoolExecutor.submit

    def submit(self: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
        if args[0] == 1:
            assert started.wait(timeout=10)
            raise KeyboardInterrupt  # what the signal handler raises in the main thread
        return real_submit(self, fn, *args)

    monkeypatch.setattr(ThreadPoolExecutor, "submit", submit)
    with pytest.raises(KeyboardInterrupt):
        run_all(job, [0, 1, 2], 2, "test")
    assert saw_stop == [True]
