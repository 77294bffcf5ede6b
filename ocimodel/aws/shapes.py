"""Requests checked against botocore's own service models, before AWS (or a mock that checks nothing) sees them.

botocore's parameter validation checks types, required members and minimums, but not maximum lengths, patterns or
enums: AWS refuses those server-side, after earlier steps already changed the account. This walker checks them all,
so a plan can be refused whole before its first call. The models' patterns are Java regular expressions; the two
constructs Python's ``re`` lacks (``\\p{L}\\p{Z}\\p{N}`` classes and a ``\\w-_`` range) are rewritten to equivalents.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

#: Letters, separators and digits of a Java ``\p{…}`` class: Python's ``[^\W_]`` is letters and digits.
_UNICODE_CLASS = re.compile(r"\[\\p\{L\}\\p\{Z\}\\p\{N\}([^\]]*)\]")


@lru_cache(maxsize=None)
def _pattern(java: str) -> re.Pattern[str]:
    python = _UNICODE_CLASS.sub(lambda m: rf"(?:[^\W_]|[\s{m.group(1)}])", java).replace(r"[\w-_]", r"[\w\-_]")
    return re.compile(python)


def problems(shape: Any, value: Any, where: str) -> list[str]:
    """Every way ``value`` breaks ``shape`` (a botocore Shape): missing members, enums, lengths, patterns, ranges."""
    found: list[str] = []
    _walk(shape, value, where, found)
    return found


def check_request(service_model: Any, operation: str, request: dict[str, Any]) -> list[str]:
    return problems(service_model.operation_model(operation).input_shape, request, operation)


def _walk(shape: Any, value: Any, where: str, found: list[str]) -> None:
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            found.append(f"{where}: expected a structure")
            return
        for name in meta.get("required", []):
            if name not in value:
                found.append(f"{where}.{name}: required")
        for name, member in value.items():
            if name not in shape.members:
                found.append(f"{where}.{name}: not a member of {shape.name}")
            else:
                _walk(shape.members[name], member, f"{where}.{name}", found)
        return
    if kind == "list":
        if not isinstance(value, (list, tuple)):
            found.append(f"{where}: expected a list")
            return
        _length(meta, len(value), where, "items", found)
        for index, item in enumerate(value):
            _walk(shape.member, item, f"{where}[{index}]", found)
        return
    if kind == "map":
        if not isinstance(value, dict):
            found.append(f"{where}: expected a map")
            return
        _length(meta, len(value), where, "entries", found)
        for key, item in value.items():
            _walk(shape.key, key, f"{where} key {key!r}", found)
            _walk(shape.value, item, f"{where}[{key!r}]", found)
        return
    if kind == "string":
        if not isinstance(value, str):
            found.append(f"{where}: expected a string")
            return
        _length(meta, len(value), where, "characters", found)
        enum = getattr(shape, "enum", None)
        if enum and value not in enum:
            found.append(f"{where}: {value!r} is not one of {', '.join(enum)}")
        if "pattern" in meta and not _pattern(meta["pattern"]).fullmatch(value):
            found.append(f"{where}: {_short(value)} does not match {meta['pattern']}")
        return
    if kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            found.append(f"{where}: expected an integer")
            return
        if "min" in meta and value < meta["min"] or "max" in meta and value > meta["max"]:
            found.append(f"{where}: {value} is outside {meta.get('min', '-∞')}..{meta.get('max', '∞')}")
        return
    if kind == "boolean" and not isinstance(value, bool):
        found.append(f"{where}: expected true or false")
    if kind == "blob":
        size = len(value) if isinstance(value, (bytes, str)) else None
        if size is not None:
            _length(meta, size, where, "bytes", found)


def _length(meta: dict[str, Any], size: int, where: str, unit: str, found: list[str]) -> None:
    if "min" in meta and size < meta["min"]:
        found.append(f"{where}: {size} {unit}, fewer than {meta['min']}")
    if "max" in meta and size > meta["max"]:
        found.append(f"{where}: {size} {unit}, more than {meta['max']}")


def _short(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")
