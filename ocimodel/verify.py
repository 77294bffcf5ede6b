"""Will KServe run this image? Checks against its three OCI modes, from manifests, configs and tar headers.

KServe consumes an image in one of three ways (docs/kserve.md): as a *modelcar* sidecar that runs
``sh -c "ln -sf /proc/$$/root/models /mnt/models && sleep infinity"``, as a Kubernetes image volume mounted with
``subPath: models`` (*native*), or by pulling the layers and extracting the tar members named ``models/…``
(*fetch*). Each mode fails on something different, and always late: on a node, minutes into a pull. These checks
find the same problems from the image's metadata and its tar headers, never its file data.

What is read. Manifests and configs always; then, per layer, the cheapest source of its file list:

* a layer of at most ``ReadPolicy.small`` bytes (base images, the layer of small model files): its tar headers,
  streamed through (registry, or a compressed blob in a layout);
* an uncompressed layer in a layout, whatever its size: its tar headers, seeking over the file data;
* a layer ocimodel made for one file (``org.cncf.model.filepath`` plus the matching history line): the file list
  that annotation implies (``models/<path>``, 0644, parents 0755), without reading it;
* any other big layer: streamed through by ``ocimodel verify`` (over HTTP there is no seeking past file data),
  skipped by the warnings ``pack``, ``push`` and ``build`` print, which must never cost a full read. Checks that
  need a skipped layer's contents report ``skip``.

Layers are merged as a container runtime merges them: later layers replace earlier paths, and whiteouts
(``.wh.<name>``, ``.wh..wh..opq``) delete paths of the layers below them.

What it may cost. Layers are untrusted: a few MB can decompress to a terabyte, or hold millions of tar members. One
run of the checks (all platforms of an image) shares a ``Budget`` of decompressed bytes, members and name bytes;
the layer that overdraws it is reported *too large to check* (check ``image.checkable``), never read further.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import posixpath
import tarfile
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, Generator, Iterator, Mapping, Protocol, Sequence, cast

import zstandard

from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import (
    ANNOTATION_FILEPATH,
    DOCUMENT_MAX_BYTES,
    MANIFEST_MAX_BYTES,
    Descriptor,
    Platform,
    descriptor_list,
    is_compressed_layer,
    parse_document,
    sha256_digest,
)
from ocimodel.layout.store import Layout
from ocimodel.layout.walk import Node, read_node, walk
from ocimodel.registry.client import RegistryClient
from ocimodel.registry.push import ECR_MAX_LAYER_BYTES, select_tag
from ocimodel.registry.reference import Reference
from ocimodel.units import human_size

MODES = ("modelcar", "native", "fetch")
#: What KServe's modelcar sidecar and init container run; ``[`` is a builtin of every shell that provides ``sh``.
TOOLS = ("sh", "ln", "sleep", "ls")
#: The PATH a runtime uses when the image's config sets none (containerd's and docker's default).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MODEL_DIR = "models"

#: Layer count that deserves a warning: every layer costs a registry request and an overlay mount on each node.
LAYERS_WARN = 100
#: ECR refuses images with "Limit on number of layers per image exceeded" somewhere above this (images of 300 to
#: 500 layers were refused; the limit is undocumented), so more layers than this fail.
LAYERS_MAX = 300
#: Layers this small are read whatever it takes: base images and the small-files layer.
SMALL_LAYER = 64 << 20
#: Decompressed tar bytes one run of the checks may read, whatever the layers' sizes: base layers under
#: ``SMALL_LAYER`` expand 2-4 times, to a few hundred MiB together.
EXPANDED_BASE = 1 << 30
#: On top of ``EXPANDED_BASE``, this many times the compressed size of every layer read: code and text expand
#: 3-5 times, weights barely at all; a decompression bomb expands a thousand times and more.
EXPANSION_RATIO = 10
#: Tar members one run keeps in memory (about 300 bytes each) and parses (tarfile: about 20,000 a second): big
#: CUDA or PyTorch images hold one or two hundred thousand files in all.
ENTRIES_MAX = 500_000
#: Bytes of member names (each path counted once per directory level, the parents it implies) one run keeps.
NAMES_MAX = 512 << 20
#: What the warnings after ``pack``, ``push`` and ``build`` may spend: a few seconds, whatever the image.
QUICK_EXPANDED = 1 << 30
QUICK_ENTRIES = 100_000
QUICK_NAMES = 64 << 20
#: Platforms of one index the warnings check; real images offer fewer than ten.
QUICK_PLATFORMS = 16
#: The longest path Linux takes (PATH_MAX): a runtime cannot create a member with a longer name.
NAME_MAX_BYTES = 4096
_MAX_SYMLINKS = 40
_SHOWN = 5

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

log = logging.getLogger("ocimodel.verify")


class Result(str, Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


#: How a mode's overall result is derived: the worst of its checks, a skipped check outweighing a warning.
_SEVERITY = {Result.PASS: 0, Result.WARN: 1, Result.SKIP: 2, Result.FAIL: 3}


class Kind(str, Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    WHITEOUT = "whiteout"
    OPAQUE = "opaque"
    DEVICE = "device"
    FIFO = "fifo"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Entry:
    """One tar member: ``raw`` as written in the tar, ``path`` as a runtime places it (relative to ``/``)."""

    raw: str
    path: str
    kind: Kind
    mode: int = 0o644
    link: str = ""


_ROOT = Entry("", "", Kind.DIR, 0o755)


@dataclass(frozen=True)
class LayerContents:
    """What a layer holds, and how that is known: ``read`` (tar headers), ``annotations``, ``skipped`` (by the
    read policy) or ``too-large`` (it overdrew the run's ``Budget``)."""

    how: str
    entries: tuple[Entry, ...] = ()
    reason: str = ""


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
class Image:
    """One platform's image as the checks see it; gathered by ``gather``, judged by ``judge``."""

    name: str
    #: The digest a pinned reference should name: the index's, for a multi-platform image.
    digest: str
    #: (what, size) of every manifest and index on the way to this platform's manifest.
    documents: tuple[tuple[str, int], ...]
    #: Platforms an index offers; empty for a single manifest.
    available: tuple[Platform, ...] = ()
    config: Mapping[str, Any] | None = None
    layers: tuple[Descriptor, ...] = ()
    contents: tuple[LayerContents, ...] = ()


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


@dataclass(frozen=True)
class ReadPolicy:
    small: int = SMALL_LAYER
    #: Stream through big layers that can be neither seeked over nor judged from annotations.
    stream_big: bool = True
    #: Decompressed bytes a run may read: ``expanded``, plus ``ratio`` times the size of each layer read.
    expanded: int = EXPANDED_BASE
    ratio: int = EXPANSION_RATIO
    #: Tar members, and bytes of their names, a run may keep.
    entries: int = ENTRIES_MAX
    names: int = NAMES_MAX


#: What the warnings after ``pack``, ``push`` and ``build`` may read: never a big layer in full, and a fixed
#: budget whatever the layers claim, so they take seconds.
QUICK = ReadPolicy(stream_big=False, expanded=QUICK_EXPANDED, ratio=0, entries=QUICK_ENTRIES, names=QUICK_NAMES)


class TooLarge(OcimodelError):
    """A layer overdrew the run's budget; the message says which limit, for the line that names the layer."""


class Budget:
    """What one run of the checks may still read and keep, shared by every layer and platform of an image (so
    neither many layers nor many platforms multiply it), and the layers already read, by digest."""

    def __init__(self, policy: ReadPolicy = ReadPolicy()) -> None:
        self.policy = policy
        self.allowed = policy.expanded
        self.expanded = 0
        self.entries = 0
        self.names = 0
        self.contents: dict[str, LayerContents] = {}

    def open_layer(self, size: int) -> None:
        self.allowed += self.policy.ratio * size

    def read(self, n: int) -> None:
        self.expanded += n
        if self.expanded > self.allowed:
            base, ratio = human_size(self.policy.expanded), self.policy.ratio
            scaled = f" ({base} plus {ratio}x the layers read)" if ratio else ""
            raise TooLarge(f"decompresses past {human_size(self.allowed)}, what one check may read{scaled}")

    def keep(self, info: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > self.policy.entries:
            raise TooLarge(f"brings the image past {self.policy.entries:,} tar members, what one check keeps")
        longest = max(len(info.name), len(info.linkname))
        if longest > NAME_MAX_BYTES:
            raise TooLarge(f"has a member name of {longest:,} bytes; no runtime creates paths over {NAME_MAX_BYTES:,}")
        self.names += len(info.linkname) + len(info.name) * (info.name.count("/") + 1)
        if self.names > self.policy.names:
            raise TooLarge(
                f"brings the image past {human_size(self.policy.names)} of member names, what one check keeps"
            )


class _Metered:
    """A tar stream that charges the budget for every byte it hands out and never asks for more than is left.

    It seeks for ``tarfile``'s random-access mode: for real when ``seekable`` (file data is then never read), else
    forward only, by reading (and charging) what it skips. That mode reads each header straight from here;
    ``tarfile``'s stream mode instead copies its whole buffer on every header, which made a layer of many small
    members take minutes.
    """

    def __init__(self, source: Any, budget: Budget, seekable: bool) -> None:
        self._source = source
        self._budget = budget
        self._seekable = seekable
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        left = self._budget.allowed - self._budget.expanded
        data = cast(bytes, self._source.read(left + 1 if size < 0 or size > left else size))
        self._position += len(data)
        self._budget.read(len(data))
        return data

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only absolute seeks")
        if self._seekable:
            self._position = self._source.seek(offset)
        elif offset < self._position:
            raise io.UnsupportedOperation("a stream cannot seek backwards")
        while self._position < offset and self.read(min(offset - self._position, 1 << 20)):
            pass
        return self._position


# --- where images come from ----------------------------------------------------------------------------------------


class Store(Protocol):
    """Read access to one image, in a layout or a registry."""

    @property
    def name(self) -> str: ...

    @property
    def seekable(self) -> bool: ...

    def top(self) -> tuple[Descriptor, bytes]:
        """The descriptor and bytes of what the name points at (a manifest or an index)."""

    def document(self, desc: Descriptor) -> bytes:
        """A manifest or index named by an index."""

    def config(self, desc: Descriptor) -> bytes:
        """A config blob: small, so read whole."""

    def layer(self, desc: Descriptor) -> AbstractContextManager[io.BufferedReader]:
        """The layer blob as a buffered stream (seekable when ``seekable``)."""


class LayoutStore:
    def __init__(self, layout: Layout, tag: str | None = None) -> None:
        self._layout = layout
        self._tag, self._top = select_tag(layout, tag)

    @property
    def name(self) -> str:
        return f"{self._layout.root}:{self._tag}"

    @property
    def seekable(self) -> bool:
        return True

    def top(self) -> tuple[Descriptor, bytes]:
        return self._top, self._layout.read_blob(self._top.digest)

    def document(self, desc: Descriptor) -> bytes:
        return self._layout.read_blob(desc.digest)

    def config(self, desc: Descriptor) -> bytes:
        return self._layout.read_blob(desc.digest)

    @contextmanager
    def layer(self, desc: Descriptor) -> Iterator[io.BufferedReader]:
        with self._layout.open_blob(desc.digest) as f:
            yield f


class RegistryStore:
    """An image in a registry: manifests by GET, configs and layers streamed (and verified) through ``client``."""

    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self._client = client
        self._ref = ref

    @property
    def name(self) -> str:
        return str(self._ref)

    @property
    def seekable(self) -> bool:
        return False

    def top(self) -> tuple[Descriptor, bytes]:
        data, content_type = self._client.get_manifest(self._ref.repository, self._ref.identifier)
        return Descriptor(_media_type(data, content_type), sha256_digest(data), len(data)), data

    def document(self, desc: Descriptor) -> bytes:
        data, _ = self._client.get_manifest(self._ref.repository, desc.digest)
        return data

    def config(self, desc: Descriptor) -> bytes:
        if desc.size > DOCUMENT_MAX_BYTES:
            raise OcimodelError(f"config {desc.digest} of {self._ref} is {human_size(desc.size)}; refusing to read it")
        data = bytearray()
        for chunk in self._client.stream_blob(self._ref.repository, desc.digest):
            data += chunk
            if len(data) > desc.size:
                raise OcimodelError(f"config {desc.digest} of {self._ref} is larger than its manifest says")
        return bytes(data)

    @contextmanager
    def layer(self, desc: Descriptor) -> Iterator[io.BufferedReader]:
        chunks = cast(Generator[bytes, None, None], self._client.stream_blob(self._ref.repository, desc.digest))
        try:
            yield io.BufferedReader(_ChunkReader(chunks), 1 << 20)
            for _ in chunks:  # the tar's end padding: reading it lets stream_blob check the digest
                pass
        finally:
            chunks.close()


class _ChunkReader(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _media_type(data: bytes, content_type: str) -> str:
    try:
        doc = json.loads(data)
    except ValueError:
        return content_type
    if isinstance(doc, dict) and doc.get("mediaType"):
        return str(doc["mediaType"])
    return content_type


# --- gathering: documents, config, layer contents ------------------------------------------------------------------


def image_platforms(store: Store) -> list[Platform]:
    """Every platform the image offers (an index's entries, or a single manifest's config)."""
    desc, data = store.top()
    node = read_node(desc, data, 0, store.name)
    if node.is_index:
        return list(_offered(node.entries()))
    config = _config(store, node)
    try:
        return [Platform.from_json(config)]
    except (KeyError, TypeError):
        return []


def gather(store: Store, platform: Platform, policy: ReadPolicy = ReadPolicy(), budget: Budget | None = None) -> Image:
    """Fetch what the checks need for ``platform``: documents, config and each layer's file list (see module doc).

    ``budget`` (a fresh one from ``policy`` by default) is charged for every layer read and remembers them.
    """
    top, data = store.top()
    available: tuple[Platform, ...] = ()

    def follow(index: Node) -> list[Descriptor]:
        nonlocal available
        entries = index.entries()
        available = _offered(entries)
        candidates = [e for e in entries if e.platform is not None and platform.matches(e.platform)]
        return [next((e for e in candidates if e.platform == platform), candidates[0])] if candidates else []

    path = walk(top, lambda d: data if d is top else store.document(d), follow, store.name)[::-1]
    documents = tuple((f"{'index' if n.is_index else 'manifest'} {n.descriptor.digest}", len(n.data)) for n in path)
    manifest = path[-1]
    if manifest.is_index:
        return Image(store.name, top.digest, documents, available)
    config = _config(store, manifest)
    layers = tuple(descriptor_list(manifest.doc, "layers", manifest.what))
    history = _layer_history(config, len(layers))
    budget = budget or Budget(policy)
    contents = tuple(_contents(store, layer, line, budget) for layer, line in zip(layers, history))
    return Image(store.name, top.digest, documents, available, config, layers, contents)


def _offered(entries: Sequence[Descriptor]) -> tuple[Platform, ...]:
    """An index's platforms, without the unknown/unknown manifests of build attestations: nobody runs those."""
    return tuple(dict.fromkeys(e.platform for e in entries if e.platform is not None and e.platform.os != "unknown"))


def _config(store: Store, manifest: Node) -> dict[str, Any]:
    try:
        config_desc = Descriptor.from_json(manifest.doc["config"])
    except (KeyError, ValueError):
        raise OcimodelError(
            f"{manifest.descriptor.digest} of {store.name} is not an image manifest (no config)"
        ) from None
    return parse_document(store.config(config_desc), f"config {config_desc.digest} of {store.name}")


def _layer_history(config: Mapping[str, Any], count: int) -> list[str | None]:
    """Each layer's ``created_by``, when the history accounts for exactly the layers there are."""
    history = config.get("history")
    steps = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
    lines = [h.get("created_by", "") for h in steps if not h.get("empty_layer")]
    return list(lines) if len(lines) == count else [None] * count


def _contents(store: Store, layer: Descriptor, history: str | None, budget: Budget) -> LayerContents:
    if layer.digest in budget.contents:
        return budget.contents[layer.digest]
    if "tar" not in layer.media_type:
        return LayerContents("skipped", reason=f"not a tar layer ({layer.media_type})")
    policy = budget.policy
    plain = not is_compressed_layer(layer.media_type)
    if layer.size > policy.small and not (store.seekable and plain):
        inferred = annotated_entries(layer, history)
        if inferred is not None:
            return LayerContents("annotations", inferred)
        if not policy.stream_big:
            return LayerContents("skipped", reason=f"{human_size(layer.size)} would have to be read in full")
    budget.open_layer(layer.size)
    try:
        with store.layer(layer) as stream:
            what = f"layer {layer.digest} of {store.name}"
            read = LayerContents("read", read_entries(stream, store.seekable, what, budget))
    except TooLarge as exc:
        read = LayerContents("too-large", reason=str(exc))
    budget.contents[layer.digest] = read
    return read


def annotated_entries(layer: Descriptor, history: str | None) -> tuple[Entry, ...] | None:
    """The members ocimodel wrote for a one-file layer, or None if the layer is not recognisably ours.

    Ours means an ``org.cncf.model.filepath`` annotation and the history line ``pack`` writes with it: another
    tool's annotation says nothing about how its tar members are named.
    """
    filepath = layer.annotations.get(ANNOTATION_FILEPATH)
    if not filepath or history != f"ocimodel: COPY {filepath} /models/":
        return None
    name = f"{MODEL_DIR}/{filepath}"
    if _normalize(name) != name:
        return None
    parts = name.split("/")
    dirs = tuple(Entry(p, p, Kind.DIR, 0o755) for p in ("/".join(parts[:i]) for i in range(1, len(parts))))
    return (*dirs, Entry(name, name, Kind.FILE, 0o644))


def read_entries(
    stream: io.BufferedReader, seekable: bool, what: str, budget: Budget | None = None
) -> tuple[Entry, ...]:
    """Tar headers of a layer (plain, gzip or zstd, told by its first bytes, whatever the media type claims).

    A seekable plain tar is read header by header, seeking over file data; anything else is streamed through.
    Every byte the tar reader takes and every member kept is charged to ``budget``: ``TooLarge`` when it runs out.
    """
    budget = budget or Budget()
    magic = stream.peek(4)[:4]
    source: io.BufferedIOBase | zstandard.ZstdDecompressionReader
    if magic.startswith(_GZIP_MAGIC):
        source, seekable = gzip.GzipFile(fileobj=stream, mode="rb"), False
    elif magic == _ZSTD_MAGIC:
        source, seekable = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True), False
    elif not magic:
        return ()
    else:
        source = stream
    entries = []
    try:
        with tarfile.open(fileobj=_Metered(source, budget, seekable), mode="r:") as tar:  # type: ignore[call-overload]
            while (info := tar.next()) is not None:
                tar.members.clear()  # TarFile keeps every member it has read: only our slimmer Entry is kept
                budget.keep(info)
                entries.append(_entry(info))
        return tuple(entries)
    except (tarfile.TarError, zstandard.ZstdError, OSError, EOFError) as exc:
        raise OcimodelError(f"{what} is not a readable tar ({exc})") from None


def _entry(info: tarfile.TarInfo) -> Entry:
    raw = info.name
    path = _normalize(raw)
    base = posixpath.basename(path)
    if base == _OPAQUE:
        return Entry(raw, posixpath.dirname(path), Kind.OPAQUE)
    if base.startswith(_WHITEOUT):
        return Entry(raw, posixpath.join(posixpath.dirname(path), base[len(_WHITEOUT) :]), Kind.WHITEOUT)
    kind = (
        Kind.DIR if info.isdir() else
        Kind.SYMLINK if info.issym() else
        Kind.HARDLINK if info.islnk() else
        Kind.FILE if info.isreg() else
        Kind.DEVICE if info.ischr() or info.isblk() else
        Kind.FIFO if info.isfifo() else
        Kind.OTHER
    )
    return Entry(raw, raw if path == raw else path, kind, info.mode & 0o7777, info.linkname)


def _normalize(name: str) -> str:
    """Where a runtime puts a member: relative to ``/``, ``.`` and ``..`` resolved, never above the root."""
    return posixpath.normpath("/" + name).lstrip("/")


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


# --- the merged file tree ------------------------------------------------------------------------------------------


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
                target = tree.entries.get(_normalize(e.link))
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
    return resolved, tree.get(resolved, _ROOT) if resolved == "" else tree[resolved]


# --- the checks ----------------------------------------------------------------------------------------------------


def judge(image: Image, platform: Platform, modes: Sequence[str] = MODES) -> Report:
    """Run every check that gates one of ``modes``: pure, from what ``gather`` collected."""
    wanted = tuple(m for m in MODES if m in modes)
    checks = [c for c in _checks(image, platform) if set(wanted) & set(c.modes)]
    return Report(image.name, image.digest, platform, wanted, tuple(checks), tuple(zip(image.layers, image.contents)))


def verify(
    store: Store,
    platform: Platform,
    modes: Sequence[str] = MODES,
    policy: ReadPolicy = ReadPolicy(),
    budget: Budget | None = None,
) -> Report:
    return judge(gather(store, platform, policy, budget), platform, modes)


def _checks(image: Image, platform: Platform) -> list[Check]:
    if image.config is None:
        offered = ", ".join(map(str, image.available)) or "none"
        missing = Check("image.platform", MODES, Result.FAIL,
                        f"no image for {platform} in the index (it has: {offered}); pack for {platform}")
        return [missing, _limit_manifest(image)]
    unknown = [(d, c) for d, c in zip(image.layers, image.contents) if c.how in ("skipped", "too-large")]
    tree = overlay([c.entries for c in image.contents]) if not unknown else None
    skip = _skipped_because(unknown)
    runtime = image.config.get("config") if isinstance(image.config.get("config"), dict) else {}
    return [
        _tools(tree, runtime, skip),
        _models_nonempty(tree, skip),
        _entrypoint(runtime),
        _platform(image.config, image.available, platform),
        _native_models(tree, skip),
        _fetch_names(image, skip),
        _fetch_compression(image.layers),
        _fetch_links(image, skip),
        _limit_layers(image.layers),
        _limit_layer_size(image.layers),
        _limit_manifest(image),
        _limit_zstd(image.layers),
        _node_pull(image.layers),
        _checkable(image),
        _readable(tree, skip),
        _special(tree, skip),
    ]


def _skipped_because(unknown: Sequence[tuple[Descriptor, LayerContents]]) -> str:
    if not unknown:
        return ""
    shown = ", ".join(f"{d.digest[7:19]} ({c.reason})" for d, c in unknown[:_SHOWN])
    return f"not checked: {len(unknown)} layer(s) not read: {shown}"


def _list(items: Sequence[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _tools(tree: Mapping[str, Entry] | None, runtime: Mapping[str, Any], skip: str) -> Check:
    cid, modes = "modelcar.tools", ("modelcar",)
    if tree is None:
        return Check(cid, modes, Result.SKIP, skip)
    path_var = DEFAULT_PATH
    for item in runtime.get("Env") or []:
        if isinstance(item, str) and item.startswith("PATH="):
            path_var = item[len("PATH="):]
    dirs = [d for d in path_var.split(":") if d.startswith("/")]
    missing, private = [], []
    for tool in TOOLS:
        found = [hit for hit in (lookup(tree, f"{d}/{tool}") for d in dirs) if hit and hit[1].kind is Kind.FILE]
        executable = [hit for hit in found if hit[1].mode & 0o111]
        if not executable:
            missing.append(tool)
        elif not executable[0][1].mode & 0o001:
            private.append(f"/{executable[0][0]} ({executable[0][1].mode:04o})")
    if missing:
        return Check(cid, modes, Result.FAIL,
                     f"{', '.join(missing)} not on PATH {path_var}: the modelcar runs `sh -c 'ln -sf … && sleep "
                     "infinity'` and its init container `ls`; use a busybox base (the default)")
    if private:
        return Check(cid, modes, Result.FAIL,
                     f"not executable by every uid: {', '.join(private)}; a pod that runs as non-root cannot start")
    return Check(cid, modes, Result.PASS, f"{', '.join(TOOLS)} on PATH")


def _models_dir(tree: Mapping[str, Entry]) -> tuple[str, Entry] | None:
    hit = lookup(tree, MODEL_DIR)
    return hit if hit and hit[1].kind is Kind.DIR else None


def _children(tree: Mapping[str, Entry], folder: str) -> list[str]:
    prefix = folder + "/"
    return [p for p in tree if p.startswith(prefix)]


def _models_nonempty(tree: Mapping[str, Entry] | None, skip: str) -> Check:
    cid, modes = "modelcar.models", ("modelcar",)
    if tree is None:
        return Check(cid, modes, Result.SKIP, skip)
    hit = _models_dir(tree)
    if hit is None:
        return Check(cid, modes, Result.FAIL, "no /models directory: KServe's init container waits for it")
    files = [p for p in _children(tree, hit[0]) if tree[p].kind is not Kind.DIR]
    if not files:
        return Check(cid, modes, Result.FAIL, "/models holds no files: KServe's init container waits for some")
    return Check(cid, modes, Result.PASS, f"/models holds {len(files)} file(s)")


def _entrypoint(runtime: Mapping[str, Any]) -> Check:
    entrypoint = runtime.get("Entrypoint")
    if entrypoint:
        return Check("modelcar.entrypoint", ("modelcar",), Result.FAIL,
                     f"Entrypoint {json.dumps(entrypoint)} is set: KServe gives the modelcar its command as args, "
                     "which the Entrypoint would receive instead; rebuild without it (ocimodel drops the base's)")
    return Check("modelcar.entrypoint", ("modelcar",), Result.PASS, "no Entrypoint")


def _platform(config: Mapping[str, Any], available: Sequence[Platform], platform: Platform) -> Check:
    cid, modes = "modelcar.platform", ("modelcar",)
    try:
        actual = Platform.from_json(config)
    except (KeyError, TypeError):
        return Check(cid, modes, Result.FAIL, "the config names no os and architecture")
    if not platform.matches(actual):
        return Check(cid, modes, Result.FAIL, f"image is for {actual}, not {platform}: pack with --platform {platform}")
    offered = f" (index has {', '.join(map(str, available))})" if available else ""
    return Check(cid, modes, Result.PASS, f"{actual}{offered}")


def _native_models(tree: Mapping[str, Entry] | None, skip: str) -> Check:
    cid, modes = "native.models", ("native",)
    if tree is None:
        return Check(cid, modes, Result.SKIP, skip)
    hit = _models_dir(tree)
    if hit is None:
        return Check(cid, modes, Result.FAIL, "no /models directory for the image volume's subPath: models")
    if not _children(tree, hit[0]):
        return Check(cid, modes, Result.WARN, "/models is an empty directory")
    return Check(cid, modes, Result.PASS, "/models is a directory")


def _raw_model_entries(image: Image) -> list[Entry]:
    """Members a fetch would consider, layer by layer, before any merging (fetch extracts raw tar members)."""
    return [e for c in image.contents for e in c.entries if _under(e.path, MODEL_DIR) or e.raw.startswith("models/")]


def _fetch_names(image: Image, skip: str) -> Check:
    cid, modes = "fetch.names", ("fetch",)
    entries = _raw_model_entries(image)
    bad = [e.raw for e in entries if not (e.raw == MODEL_DIR or e.raw.startswith(MODEL_DIR + "/"))]
    escaping = [e.raw for e in entries if e.raw.startswith(MODEL_DIR + "/") and not _under(e.path, MODEL_DIR)]
    if bad:
        return Check(cid, modes, Result.FAIL,
                     f"members under /models not named models/…: {_list(bad)}; fetch mode extracts only names "
                     "starting with models/ (no ./ or / prefix)")
    if escaping:
        return Check(cid, modes, Result.FAIL, f"members named models/… that leave models/: {_list(escaping)}")
    if skip:
        return Check(cid, modes, Result.SKIP, skip)
    if not any(e.kind not in (Kind.DIR, Kind.WHITEOUT, Kind.OPAQUE) for e in entries):
        return Check(cid, modes, Result.FAIL, "no tar member named models/…: fetch mode would extract nothing")
    return Check(cid, modes, Result.PASS, "model members are named models/…")


def _is_zstd(layer: Descriptor) -> bool:
    return "zstd" in layer.media_type


def _fetch_compression(layers: Sequence[Descriptor]) -> Check:
    zstd = [layer for layer in layers if _is_zstd(layer)]
    if zstd:
        return Check("fetch.compression", ("fetch",), Result.FAIL,
                     f"{len(zstd)} zstd layer(s): fetch mode takes tar and tar+gzip only; use --compression none "
                     "or gzip")
    return Check("fetch.compression", ("fetch",), Result.PASS, "no zstd layers")


def _fetch_links(image: Image, skip: str) -> Check:
    cid, modes = "fetch.links", ("fetch",)
    bad = []
    for e in _raw_model_entries(image):
        if e.kind is Kind.SYMLINK:
            target = e.link if e.link.startswith("/") else posixpath.join(posixpath.dirname(e.path), e.link)
            if e.link.startswith("/") or not _under(posixpath.normpath(target), MODEL_DIR):
                bad.append(f"{e.raw} -> {e.link}")
        elif e.kind is Kind.HARDLINK and (e.link.startswith("/") or not _under(_normalize(e.link), MODEL_DIR)):
            bad.append(f"{e.raw} => {e.link}")
    if bad:
        return Check(cid, modes, Result.FAIL,
                     f"links that are absolute or leave models/: {_list(bad)}; extracted elsewhere they point at "
                     "nothing, or at the node's files")
    if skip:
        return Check(cid, modes, Result.SKIP, skip)
    return Check(cid, modes, Result.PASS, "no absolute or escaping links under models/")


def _limit_layers(layers: Sequence[Descriptor]) -> Check:
    cid, n = "limits.layers", len(layers)
    if n > LAYERS_MAX:
        return Check(cid, MODES, Result.FAIL,
                     f"{n} layers: ECR refuses images above about {LAYERS_MAX} layers (undocumented limit)")
    if n > LAYERS_WARN:
        return Check(cid, MODES, Result.WARN,
                     f"{n} layers: above {LAYERS_WARN}, every pull pays a request and a mount per layer")
    return Check(cid, MODES, Result.PASS, f"{n} layers")


def _limit_layer_size(layers: Sequence[Descriptor]) -> Check:
    cid = "limits.layer-size"
    if not layers:
        return Check(cid, MODES, Result.PASS, "no layers")
    biggest = max(layers, key=lambda d: d.size)
    if biggest.size > ECR_MAX_LAYER_BYTES:
        return Check(cid, MODES, Result.FAIL,
                     f"layer {biggest.digest[7:19]} is {human_size(biggest.size)}: ECR takes at most 52,000 MiB")
    return Check(cid, MODES, Result.PASS, f"largest layer {human_size(biggest.size)}")


def _limit_manifest(image: Image) -> Check:
    cid = "limits.manifest-size"
    big = [f"{what} ({human_size(size)})" for what, size in image.documents if size > MANIFEST_MAX_BYTES]
    if big:
        return Check(cid, MODES, Result.FAIL, f"{', '.join(big)}: ECR takes manifests up to 4 MiB")
    return Check(cid, MODES, Result.PASS, f"largest manifest {human_size(max(s for _, s in image.documents))}")


def _limit_zstd(layers: Sequence[Descriptor]) -> Check:
    zstd = [layer for layer in layers if _is_zstd(layer)]
    if zstd:
        return Check("limits.zstd", ("modelcar", "native"), Result.WARN,
                     f"{len(zstd)} zstd layer(s): older Docker, the ECS agent and Bottlerocket can't pull them")
    return Check("limits.zstd", ("modelcar", "native"), Result.PASS, "no zstd layers")


#: What cold pulls of a 4 GiB model measured on a node (docs/benchmarks.md, node section: Debian's containerd 1.6,
#: ``ctr -n k8s.io images pull`` from a loopback registry, 3 layers fetched at once as containerd's CRI plugin does).
#: Below that size nothing measured says a layout choice costs the node anything.
SLOW_PULL_BYTES = 4 << 30
#: The fetch through one stream (``--max-concurrent-downloads 1``) against three: what a layer holding most of the
#: bytes leaves a node with, whatever its download slots.
_ONE_STREAM_MEASURED = "measured at 4 GiB on containerd 1.6: fetched in 50.7 s through one stream, 41.6 s through 3"
_GZIP_MEASURED = "measured at 4 GiB on containerd 1.6: gzip layers pulled in 130.7 s, uncompressed in 68.6 s"
NODE_DOWNLOADS = 3
ONE_LAYER_SHARE = 0.5


def _node_pull(layers: Sequence[Descriptor]) -> Check:
    cid, modes = "node.pull", ("modelcar", "native")
    total = sum(d.size for d in layers)
    if not layers or total < SLOW_PULL_BYTES:
        return Check(cid, modes, Result.PASS, f"{human_size(total)} to pull")
    slow = []
    biggest = max(layers, key=lambda d: d.size)
    if biggest.size > ONE_LAYER_SHARE * total:
        slow.append(f"one layer holds {human_size(biggest.size)} of {human_size(total)} ({biggest.size / total:.0%}): "
                    f"a node fetches {NODE_DOWNLOADS} layers at once, this one in a single stream; give each weight "
                    "file its own layer (ocimodel's default) and re-shard a single huge file "
                    f"(save_pretrained(max_shard_size=...)) ({_ONE_STREAM_MEASURED})")
    gzipped = sum(d.size for d in layers if "gzip" in d.media_type)
    if gzipped >= SLOW_PULL_BYTES:
        slow.append(f"{human_size(gzipped)} of gzip layers: a node gunzips each layer on one core; weights barely "
                    f"compress, use --compression none ({_GZIP_MEASURED})")
    if not slow:
        return Check(cid, modes, Result.PASS,
                     f"{human_size(total)} in {len(layers)} layers, largest {human_size(biggest.size)}")
    return Check(cid, modes, Result.WARN, f"slow node pull: {'; '.join(slow)}")


def _checkable(image: Image) -> Check:
    cid = "image.checkable"
    cut = [f"{d.digest[7:19]} {c.reason}" for d, c in zip(image.layers, image.contents) if c.how == "too-large"]
    if cut:
        return Check(cid, MODES, Result.WARN,
                     f"too large to check: layer {_list(cut)}; the checks that need its files were skipped")
    return Check(cid, MODES, Result.PASS, "every layer read was within the limits of a check")


def _models_folder(cid: str, tree: Mapping[str, Entry] | None, skip: str) -> str | Check:
    """Where ``/models`` resolves to, for the checks of its files; their SKIP when there is nothing to look at."""
    if tree is None:
        return Check(cid, MODES, Result.SKIP, skip)
    hit = _models_dir(tree)
    return hit[0] if hit is not None else Check(cid, MODES, Result.SKIP, "no /models")


def _readable(tree: Mapping[str, Entry] | None, skip: str) -> Check:
    cid = "files.readable"
    folder = _models_folder(cid, tree, skip)
    if isinstance(folder, Check):
        return folder
    assert tree is not None
    dirs = [p for p in ("", *_ancestors(folder), folder) if p in tree or p == ""]
    paths = [*dirs, *sorted(_children(tree, folder))]
    bad = []
    for p in paths:
        e = tree.get(p, _ROOT)
        if (e.kind is Kind.DIR and e.mode & 0o005 != 0o005) or (e.kind is Kind.FILE and not e.mode & 0o004):
            bad.append(f"/{p} ({e.mode:04o})")
    if bad:
        return Check(cid, MODES, Result.FAIL,
                     f"not readable by every uid: {_list(bad)}; files need o+r, directories o+rx")
    return Check(cid, MODES, Result.PASS, "files under /models readable by any uid")


def _special(tree: Mapping[str, Entry] | None, skip: str) -> Check:
    cid = "files.special"
    folder = _models_folder(cid, tree, skip)
    if isinstance(folder, Check):
        return folder
    assert tree is not None
    bad = []
    for p in sorted(_children(tree, folder)):
        e = tree[p]
        if e.kind in (Kind.DEVICE, Kind.FIFO, Kind.OTHER):
            bad.append(f"/{p} ({e.kind.value})")
        elif e.kind is Kind.FILE and e.mode & 0o6000:
            bad.append(f"/{p} ({'setuid' if e.mode & 0o4000 else 'setgid'} {e.mode:04o})")
    if bad:
        return Check(cid, MODES, Result.FAIL,
                     f"not plain model files: {_list(bad)}; a FIFO hangs the server that opens it, a device node "
                     "fails the unpack of an unprivileged runtime, a setuid file hands its owner's rights to the pod")
    return Check(cid, MODES, Result.PASS, "only files, directories and links under /models")


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


# --- after pack, push and build ------------------------------------------------------------------------------------


def layout_warnings(path: Path, tag: str | None) -> list[str]:
    """What ``pack`` and ``push`` print about the image they just wrote or sent: read from the layout alone."""
    try:
        return _warnings(LayoutStore(Layout.open(path), tag))
    except Exception as exc:  # advisory: nothing here may turn a finished pack or push into a failure
        log.debug("KServe check failed", exc_info=True)
        message = str(exc) if isinstance(exc, OcimodelError) else type(exc).__name__
        return [f"could not check the image for KServe: {message}"]


def registry_warnings(client: RegistryClient, ref: Reference) -> list[str]:
    """What ``build`` prints about the image it pushed: manifests, configs and small layers, read back."""
    try:
        return _warnings(RegistryStore(client, ref))
    except Exception as exc:  # advisory: nothing here may turn a finished build into a failure
        log.debug("KServe check failed", exc_info=True)
        message = str(exc) if isinstance(exc, OcimodelError) else type(exc).__name__
        return [f"could not check the image for KServe: {message}"]


def _warnings(store: Store) -> list[str]:
    """One line per problem over the image's platforms, read with ``QUICK`` so no big layer is read in full and the
    whole run stays within one budget, however many layers and platforms the image has."""
    budget = Budget(QUICK)
    platforms = image_platforms(store)
    reports = [verify(store, p, policy=QUICK, budget=budget) for p in platforms[:QUICK_PLATFORMS]]
    found: dict[str, list[str]] = {}
    for report in reports:
        for c in report.checks:
            if c.result in (Result.FAIL, Result.WARN):
                found.setdefault(f"{c.id}: {c.detail}", []).append(str(report.platform))
    lines = [line if len(where) == len(reports) else f"{', '.join(where)}: {line}" for line, where in found.items()]
    if len(platforms) > QUICK_PLATFORMS:
        lines.append(f"checked the first {QUICK_PLATFORMS} of {len(platforms)} platforms; run `ocimodel verify "
                     "--platform …` for the others")
    return lines
