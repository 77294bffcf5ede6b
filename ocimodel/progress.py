"""Progress: rich bars on a terminal and a few plain lines in CI logs (the CLI's, on stderr), nothing at all, or
events for a library caller's own callback.

stdout stays for results (a digest, a reference, JSON), so scripts can read it while people watch stderr.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, TextIO

if TYPE_CHECKING:  # rich is imported by the reporter that draws with it, not by every ``import ocimodel``
    from rich.console import Console
    from rich.progress import Progress, TaskID

from ocimodel.parallel import Cancelled, check
from ocimodel.units import human_size


class Task(Protocol):
    def advance(self, n: int) -> None: ...
    def finish(self, note: str = "") -> None: ...


def stoppable(task: Task, stop: threading.Event) -> Callable[[int], None]:
    """A progress callback that also ends the work within a chunk once ``stop`` is set (another job failed)."""

    def advance(n: int) -> None:
        check(stop)
        task.advance(n)

    return advance


class Reporter(Protocol):
    def task(self, label: str, total: int) -> Task: ...
    def close(self) -> None: ...


class _RichTask:
    def __init__(self, progress: Progress, task_id: TaskID) -> None:
        self._progress, self._id = progress, task_id

    def advance(self, n: int) -> None:
        self._progress.advance(self._id, n)

    def finish(self, note: str = "") -> None:
        task = self._progress.tasks[self._id]
        label = f"{task.description} {note}".rstrip()
        self._progress.update(self._id, completed=task.total, description=label)


class RichReporter:
    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._progress.start()

    def task(self, label: str, total: int) -> Task:
        return _RichTask(self._progress, self._progress.add_task(label, total=total))

    def close(self) -> None:
        self._progress.stop()


class _PlainTask:
    def __init__(self, reporter: PlainReporter, label: str, total: int) -> None:
        self._reporter, self.label, self.total = reporter, label, total
        self.done = 0
        self.started = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        self._reporter.tick()

    def finish(self, note: str = "") -> None:
        elapsed = time.monotonic() - self.started
        if self.done and elapsed > 0:
            rate = human_size(self.done / elapsed)
            self._reporter.line(f"{self.label}: {note or 'done'} ({human_size(self.done)} in {elapsed:.1f} s, {rate}/s)")
        else:
            self._reporter.line(f"{self.label}: {note or 'done'}")
        self._reporter.forget(self)


class PlainReporter:
    """One line per finished task, and a summary of running ones every ``interval`` seconds for long jobs."""

    def __init__(self, stream: TextIO | None = None, interval: float = 30.0) -> None:
        self._stream = stream or sys.stderr
        self._interval = interval
        self._lock = threading.Lock()
        self._running: list[_PlainTask] = []
        self._last = time.monotonic()

    def task(self, label: str, total: int) -> Task:
        task = _PlainTask(self, label, total)
        with self._lock:
            self._running.append(task)
        return task

    def line(self, text: str) -> None:
        with self._lock:
            print(text, file=self._stream, flush=True)

    def forget(self, task: _PlainTask) -> None:
        with self._lock:
            if task in self._running:
                self._running.remove(task)

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        with self._lock:
            self._last = now
            for t in self._running:
                pct = 100 * t.done / t.total if t.total else 100
                print(f"{t.label}: {pct:.0f}% of {human_size(t.total)}", file=self._stream, flush=True)

    def close(self) -> None:
        pass


def make_reporter() -> Reporter:
    """The CLI's: rich bars on stderr when it is a terminal, plain lines otherwise."""
    from rich.console import Console

    console = Console(stderr=True)
    return RichReporter(console) if console.is_terminal else PlainReporter()


class _SilentTask:
    def advance(self, n: int) -> None:
        pass

    def finish(self, note: str = "") -> None:
        pass


class SilentReporter:
    """No progress at all: the library's default, since a library never prints."""

    def task(self, label: str, total: int) -> Task:
        return _SilentTask()

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class ProgressEvent:
    """Where one piece of work (a layer, a blob, a download) stands; ``total`` 0 means nothing had to be done."""

    label: str
    done: int
    total: int
    finished: bool = False
    #: Set when finished: "unchanged", "skipped", "mounted"... or empty for work done.
    note: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


class _CallbackTask:
    def __init__(self, callback: ProgressCallback, label: str, total: int) -> None:
        self._callback, self._label, self._total = callback, label, total
        self._done = 0
        callback(ProgressEvent(label, 0, total))

    def advance(self, n: int) -> None:
        self._done += n
        self._callback(ProgressEvent(self._label, self._done, self._total))

    def finish(self, note: str = "") -> None:
        self._callback(ProgressEvent(self._label, self._done, self._total, True, note))


class CallbackReporter:
    """Progress as ``ProgressEvent`` calls. Layers and blobs are worked on by several threads at once, so the
    callback is called from those threads: it must be quick and thread-safe (raising from it stops the work)."""

    def __init__(self, callback: ProgressCallback) -> None:
        self._callback = callback

    def task(self, label: str, total: int) -> Task:
        return _CallbackTask(self._callback, label, total)

    def close(self) -> None:
        pass


class _CancellableTask:
    def __init__(self, task: Task, stop: threading.Event) -> None:
        self._task, self._stop = task, stop

    def advance(self, n: int) -> None:
        if self._stop.is_set():
            raise Cancelled("cancelled by the caller")
        self._task.advance(n)

    def finish(self, note: str = "") -> None:
        self._task.finish(note)


class CancellableReporter:
    """Ends the work within a chunk once the caller's ``stop`` is set: every layer, blob and download reports its
    progress per chunk, and a job that raises stops the others as a failure or Ctrl-C does."""

    def __init__(self, reporter: Reporter, stop: threading.Event) -> None:
        self._reporter, self._stop = reporter, stop

    def task(self, label: str, total: int) -> Task:
        if self._stop.is_set():
            raise Cancelled("cancelled by the caller")
        return _CancellableTask(self._reporter.task(label, total), self._stop)

    def close(self) -> None:
        self._reporter.close()
