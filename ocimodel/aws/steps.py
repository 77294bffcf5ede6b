"""A step of a bootstrap or teardown: what is done to one resource, and the call that does it.

Every step is worked out (by reading AWS) before any is run, so a conflict found late stops the command before it
changed anything, and a dry run is the same list left unrun.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ocimodel.aws.session import aws_call

#: action → (as planned, as done)
_WORDS = {
    "create": ("would create", "created"),
    "update": ("would update", "updated"),
    "upload": ("would upload", "uploaded"),
    "delete": ("would delete", "deleted"),
    "none": ("unchanged", "unchanged"),
    "keep": ("would keep", "kept"),
    "absent": ("absent", "absent"),
    "missing": ("missing", "missing"),
}
CHANGES = frozenset({"create", "update", "upload", "delete"})


@dataclass(frozen=True)
class Step:
    kind: str
    name: str
    action: str
    detail: str = ""
    run: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def word(self, done: bool) -> str:
        return _WORDS[self.action][1 if done else 0]


def apply(steps: Iterable[Step]) -> None:
    for step in steps:
        if step.run is not None:
            with aws_call(f"{step.action} {step.kind} {step.name}"):
                step.run()


def render(steps: Sequence[Step], done: bool) -> str:
    return table(("RESOURCE", "NAME", "ACTION", "DETAIL"), [(s.kind, s.name, s.word(done), s.detail) for s in steps])


def summary(steps: Sequence[Step], done: bool, verb: str) -> str:
    changes = [s for s in steps if s.action in CHANGES]
    if not changes:
        return f"{verb}: nothing to change, everything is as the config says"
    counts: dict[str, int] = {}
    for step in changes:
        counts[step.word(done)] = counts.get(step.word(done), 0) + 1
    return f"{verb}: " + ", ".join(f"{n} {word}" for word, n in counts.items())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns; the last one is not padded, so lines carry no trailing blanks."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers) - 1)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
