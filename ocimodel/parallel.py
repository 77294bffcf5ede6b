"""Run independent jobs (layers, blobs) on a bounded pool, and stop them all at the first failure.

Waiting on results in order would hide a failure behind a long job (a 10 GB layer still hashing); instead the first
exception, or Ctrl-C, sets ``stop``, which the jobs check between chunks, so everything ends within a chunk.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

from ocimodel.errors import OcimodelError

T = TypeVar("T")
R = TypeVar("R")


class Cancelled(OcimodelError):
    """Raised inside a job that noticed ``stop`` (another job failed, or the user interrupted), and out of an API
    call whose caller set its ``stop`` event."""


def check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Cancelled


def run_all(fn: Callable[[T, threading.Event], R], items: Sequence[T], jobs: int, name: str) -> list[R]:
    """``[fn(item, stop) for item in items]`` on ``jobs`` threads, results in input order."""
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix=name) as pool:
        try:
            # Submitting is inside: a signal that lands while a worker starts must still stop the ones started.
            futures = [pool.submit(fn, item, stop) for item in items]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for failed in (f for f in done if f.exception() is not None):
                failed.result()
            return [f.result() for f in futures]
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
