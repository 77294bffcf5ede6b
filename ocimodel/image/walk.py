"""The one walk over an image's indexes and manifests: each digest read once, nesting bounded, no recursion.

``push`` follows every entry of every index, ``pull`` and ``verify`` only the entry for one platform; all of them
meet documents someone else wrote. Indexes may name indexes, so a hostile tag can point at a chain thousands deep
(recursion overflows) or a DAG where each index names the next two twice (2^depth visits without a visited set).
Content addressing rules out cycles; the visited set makes shared children cost one read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from ocimodel.errors import OcimodelError
from ocimodel.image.source import ImageSource
from ocimodel.layout.descriptor import (
    MAX_INDEX_DEPTH,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    descriptor_list,
    is_index,
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
    is_index: bool

    def entries(self) -> list[Descriptor]:
        return descriptor_list(self.doc, "manifests", self.what)

    def platforms(self) -> tuple[Platform, ...]:
        """An index's platforms, without the unknown/unknown manifests of build attestations: nobody runs those."""
        return tuple(
            dict.fromkeys(e.platform for e in self.entries() if e.platform is not None and e.platform.os != "unknown")
        )


def read_node(desc: Descriptor, data: bytes, depth: int, name: str) -> Node:
    doc = parse_document(data, f"manifest {desc.digest} of {name}")
    stated = doc.get("mediaType")
    if stated is not None and not isinstance(stated, str):
        raise OcimodelError(f"manifest {desc.digest} of {name} is malformed: mediaType is not a string")
    index = is_index(stated or desc.media_type, doc)
    media_type = stated or desc.media_type or (OCI_INDEX if index else OCI_MANIFEST)
    node_desc = Descriptor(media_type, desc.digest, len(data), desc.annotations, desc.platform)
    return Node(node_desc, data, doc, depth, f"{'index' if index else 'manifest'} {desc.digest} of {name}", index)


def walk(source: ImageSource, platform: Platform | None = None) -> list[Node]:
    """Every document reachable from the source's top, each digest once, children before the index that names
    them; the top's node is last.

    With ``platform``, each index is followed only to its entry for that platform (``Platform.choose``): the walk is
    then a path, its first node the manifest, or the index that has nothing for ``platform``. More than
    ``MAX_INDEX_DEPTH`` indexes nested is refused in one line naming the source.
    """
    order: list[Node] = []
    seen: set[str] = set()
    open_indexes: list[tuple[Node, Iterator[Descriptor]]] = []

    def follow(index: Node) -> list[Descriptor]:
        if platform is None:
            return index.entries()
        chosen = platform.choose(index.entries())
        return [chosen] if chosen is not None else []

    def enter(desc: Descriptor, data: bytes, depth: int) -> None:
        seen.add(desc.digest)
        node = read_node(desc, data, depth, source.name)
        if not node.is_index:
            order.append(node)
            return
        if depth >= MAX_INDEX_DEPTH:
            raise OcimodelError(f"{source.name} nests image indexes more than {MAX_INDEX_DEPTH} deep; refusing it")
        open_indexes.append((node, iter(follow(node))))

    enter(*source.top(), 0)
    while open_indexes:
        node, children = open_indexes[-1]
        child = next(children, None)
        if child is None:
            open_indexes.pop()
            order.append(node)
        elif child.digest not in seen:
            enter(child, source.document(child), node.depth + 1)
    return order
