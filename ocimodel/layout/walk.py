"""The one walk over an image's indexes and manifests: each digest read once, nesting bounded, no recursion.

``push`` follows every entry of every index, ``pull`` and ``verify`` only the entry for one platform; all of them
meet documents someone else wrote. Indexes may name indexes, so a hostile tag can point at a chain thousands deep
(recursion overflows) or a DAG where each index names the next two twice (2^depth visits without a visited set).
Content addressing rules out cycles; the visited set makes shared children cost one read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import (
    INDEX_TYPES,
    MAX_INDEX_DEPTH,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    descriptor_list,
    parse_document,
)


@dataclass(frozen=True)
class Node:
    """A manifest or index as read: its exact bytes, their parsed form, and how deep below the top it sits.

    ``descriptor`` keeps the annotations and platform of the entry that named it, with the media type the
    document itself states (a registry checks the payload's ``mediaType`` against the one a manifest is sent as).
    """

    descriptor: Descriptor
    data: bytes
    doc: dict[str, Any]
    depth: int
    what: str

    @property
    def is_index(self) -> bool:
        return self.descriptor.media_type in INDEX_TYPES or "manifests" in self.doc

    def entries(self) -> list[Descriptor]:
        return descriptor_list(self.doc, "manifests", self.what)


def read_node(desc: Descriptor, data: bytes, depth: int, name: str) -> Node:
    doc = parse_document(data, f"manifest {desc.digest} of {name}")
    stated = doc.get("mediaType")
    if stated is not None and not isinstance(stated, str):
        raise OcimodelError(f"manifest {desc.digest} of {name} is malformed: mediaType is not a string")
    media_type = stated or desc.media_type or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST)
    kind = "index" if media_type in INDEX_TYPES or "manifests" in doc else "manifest"
    node_desc = Descriptor(media_type, desc.digest, len(data), desc.annotations, desc.platform)
    return Node(node_desc, data, doc, depth, f"{kind} {desc.digest} of {name}")


def walk(
    top: Descriptor,
    read: Callable[[Descriptor], bytes],
    follow: Callable[[Node], Sequence[Descriptor]],
    name: str,
) -> list[Node]:
    """Every document reachable from ``top`` through ``follow`` (the entries of an index worth visiting), each
    digest once, children before the index that names them; ``top``'s node is last.

    More than ``MAX_INDEX_DEPTH`` indexes nested is refused in one line naming ``name``.
    """
    order: list[Node] = []
    seen: set[str] = set()
    open_indexes: list[tuple[Node, Iterator[Descriptor]]] = []

    def enter(desc: Descriptor, depth: int) -> None:
        seen.add(desc.digest)
        node = read_node(desc, read(desc), depth, name)
        if not node.is_index:
            order.append(node)
            return
        if depth >= MAX_INDEX_DEPTH:
            raise OcimodelError(f"{name} nests image indexes more than {MAX_INDEX_DEPTH} deep; refusing it")
        open_indexes.append((node, iter(follow(node))))

    enter(top, 0)
    while open_indexes:
        node, children = open_indexes[-1]
        child = next(children, None)
        if child is None:
            open_indexes.pop()
            order.append(node)
        elif child.digest not in seen:
            enter(child, node.depth + 1)
    return order
