"""A progress reporter for tests: it draws nothing and keeps every task, so a test can check what the bars would
have shown (each upload's bar ending at its size, resends counted once)."""

from __future__ import annotations

import threading


class RecordedTask:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.done = 0
        self.note: str | None = None

    def advance(self, n: int) -> None:
        self.done += n

    def finish(self, note: str = "") -> None:
        self.note = note


class Recorder:
    """A progress reporter that keeps every task, to check what the bars would have shown."""

    def __init__(self) -> None:
        self.tasks: list[RecordedTask] = []
        self._lock = threading.Lock()

    def task(self, label: str, total: int) -> RecordedTask:
        task = RecordedTask(label, total)
        with self._lock:
            self.tasks.append(task)
        return task

    def close(self) -> None:
        pass
