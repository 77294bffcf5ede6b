"""Layers merged as a container runtime merges them, and paths looked up in the result as the kernel would.

Later layers replace earlier paths, and whiteouts (``.wh.<name>``, ``.wh..wh..opq``) delete paths of the layers
below them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

from ocimodel.verification.tarread import Entry, Kind, normalize

_MAX_SYMLINKS = 40

#: What ``/`` is when no layer names it: a directory every uid may enter.
ROOT = Entry("", "", Kind.DIR, 0o755)


def overlay(layers: Sequence[Sequence[Entry]]) -> dict[str, Entry]:
    """Merge layers as overlayfs would: a layer's whiteouts delete from the layers below, then its entries land.

    Hard links take the kind and mode of their target (the same inode); a path's missing parents appear as
    0755 directories, as runtimes create them. Linear in the entries: a deletion touches only what it deletes.
    """
    tree = _Tree()
    for entries in layers:
        for e in entries:
            if e.kind is Kind.OPAQUE:
                tree.drop_below(e.path)
            elif e.kind is Kind.WHITEOUT:
                tree.drop(e.path)
        for e in entries:
            if e.kind in (Kind.WHITEOUT, Kind.OPAQUE):
                continue
            old = tree.entries.get(e.path)
            if old is not None and old.kind is Kind.DIR and e.kind is not Kind.DIR:
                tree.drop_below(e.path)
            if e.kind is Kind.HARDLINK:
                target = tree.entries.get(normalize(e.link))
                if target is not None and target.kind is Kind.FILE:
                    e = replace(e, kind=Kind.FILE, mode=target.mode)
            tree.put(e)
    return tree.entries


class _Tree:
    """Paths to entries, with each directory's children indexed so that whiteouts cost what they delete."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self._children: dict[str, set[str]] = {}

    def put(self, entry: Entry) -> None:
        missing, parent = [], _parent(entry.path)
        while parent and parent not in self.entries:  # parents exist whenever a child does: stop at the first
            missing.append(parent)
            parent = _parent(parent)
        for folder in reversed(missing):
            self._add(Entry("", folder, Kind.DIR, 0o755))
        self._add(entry)

    def _add(self, entry: Entry) -> None:
        if entry.path not in self.entries and entry.path:
            self._children.setdefault(_parent(entry.path), set()).add(entry.path)
        self.entries[entry.path] = entry

    def drop(self, path: str) -> None:
        """``path`` and everything below it."""
        if path in self.entries:
            del self.entries[path]
            if path:
                self._children[_parent(path)].discard(path)
        self.drop_below(path)

    def drop_below(self, folder: str) -> None:
        pending = list(self._children.pop(folder, ()))
        while pending:
            path = pending.pop()
            del self.entries[path]
            pending += self._children.pop(path, ())


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def lookup(tree: Mapping[str, Entry], path: str) -> tuple[str, Entry] | None:
    """Resolve ``path`` inside the image as the kernel would inside the container: symlinks followed, absolute
    ones from the image's root, ``..`` stopping at the root. None if it does not exist."""
    pending = [p for p in reversed(path.split("/")) if p]
    current: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if current:
                current.pop()
            continue
        entry = tree.get("/".join([*current, part]))
        if entry is None:
            return None
        if entry.kind is Kind.SYMLINK:
            hops += 1
            if hops > _MAX_SYMLINKS:
                return None
            if entry.link.startswith("/"):
                current = []
            pending += [p for p in reversed(entry.link.split("/")) if p]
            continue
        if pending and entry.kind is not Kind.DIR:
            return None
        current.append(part)
    resolved = "/".join(current)
    return resolved, tree.get(resolved, ROOT) if resolved == "" else tree[resolved]
