"""What a run of the checks says: each check's result, and each KServe mode's, as a table or JSON."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from ocimodel.layout.descriptor import Descriptor, Platform
from ocimodel.verification.gather import LayerContents

#: KServe's three ways of consuming an image (docs/kserve.md), in the order reports list them.
MODES = ("modelcar", "native", "fetch")


class Result(str, Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


#: How a mode's overall result is derived: the worst of its checks, a skipped check outweighing a warning.
_SEVERITY = {Result.PASS: 0, Result.WARN: 1, Result.SKIP: 2, Result.FAIL: 3}


@dataclass(frozen=True)
class Check:
    id: str
    #: The modes this check gates: a failure means the image will not work in those modes.
    modes: tuple[str, ...]
    result: Result
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "modes": list(self.modes), "result": self.result.value, "detail": self.detail}


@dataclass(frozen=True)
class Report:
    name: str
    digest: str
    platform: Platform
    #: The modes checked, in ``MODES`` order.
    modes: tuple[str, ...]
    checks: tuple[Check, ...]
    layers: tuple[tuple[Descriptor, LayerContents], ...]

    @property
    def ok(self) -> bool:
        """No check failed (warnings and skipped checks leave it True)."""
        return all(c.result is not Result.FAIL for c in self.checks)

    def mode_results(self) -> dict[str, Result]:
        return {
            mode: max((c.result for c in self.checks if mode in c.modes), key=_SEVERITY.__getitem__)
            for mode in self.modes
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.name,
            "digest": self.digest,
            "platform": str(self.platform),
            "ok": self.ok,
            "modes": {m: r.value for m, r in self.mode_results().items()},
            "checks": [c.to_json() for c in self.checks],
            "layers": [
                {"digest": d.digest, "size": d.size, "mediaType": d.media_type, "read": c.how,
                 **({"reason": c.reason} if c.reason else {})}
                for d, c in self.layers
            ],
        }

    def table(self) -> str:
        width = max(len(c.id) for c in self.checks)
        lines = [f"{self.name} ({self.platform})", f"{'CHECK':<{width}}  RESULT  DETAIL"]
        lines += [f"{c.id:<{width}}  {c.result.value.upper():<6}  {c.detail}" for c in self.checks]
        lines.append("modes: " + ", ".join(f"{m} {r.value.upper()}" for m, r in self.mode_results().items()))
        return "\n".join(lines)
