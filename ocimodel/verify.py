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
    INDEX_TYPES,
    MANIFEST_MAX_BYTES,
    MAX_INDEX_DEPTH,
    Descriptor,
    Platform,
    parse_document,
    sha256_digest,
)
from ocimodel.layout.store import Layout
from ocimodel.registry.client import RegistryClient
from ocimodel.registry.push import select_tag
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
#: ECR's documented maximum layer size.
LAYER_MAX_BYTES = 52_000 << 20
#: Layers this small are read whatever it takes: base images and the small-files layer.
SMALL_LAYER = 64 << 20
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
    OTHER = "other"


@dataclass(frozen=True)
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
    """What a layer holds, and how that is known: ``read`` (tar headers), ``annotations`` or ``skipped``."""

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
    def failed(self) -> bool:
        return any(c.result is Result.FAIL for c in self.checks)

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
            "ok": not self.failed,
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


#: What the warnings after ``pack``, ``push`` and ``build`` may read: never a big layer in full.
QUICK = ReadPolicy(stream_big=False)


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
        try:
            with open(self._layout.blob_path(desc.digest), "rb") as f:
                yield f
        except FileNotFoundError:
            raise OcimodelError(f"layout {self._layout.root} lacks layer {desc.digest}") from None


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
    doc = parse_document(data, f"manifest {desc.digest} of {store.name}")
    if _is_index(desc, doc):
        return list(_offered(_entries(doc, desc, store)))
    config = _config(store, doc, desc)
    try:
        return [Platform.from_json(config)]
    except (KeyError, TypeError):
        return []


def gather(store: Store, platform: Platform, policy: ReadPolicy = ReadPolicy()) -> Image:
    """Fetch what the checks need for ``platform``: documents, config and each layer's file list (see module doc)."""
    top, data = store.top()
    desc, doc = top, parse_document(data, f"manifest {top.digest} of {store.name}")
    documents = [(_what(desc, doc), len(data))]
    available: tuple[Platform, ...] = ()
    while _is_index(desc, doc):
        if len(documents) > MAX_INDEX_DEPTH:
            raise OcimodelError(f"{store.name} nests image indexes more than {MAX_INDEX_DEPTH} deep")
        entries = _entries(doc, desc, store)
        available = _offered(entries)
        candidates = [e for e in entries if e.platform is not None and platform.matches(e.platform)]
        if not candidates:
            return Image(store.name, top.digest, tuple(documents), available)
        desc = next((e for e in candidates if e.platform == platform), candidates[0])
        data = store.document(desc)
        doc = parse_document(data, f"manifest {desc.digest} of {store.name}")
        documents.append((_what(desc, doc), len(data)))
    config = _config(store, doc, desc)
    try:
        layers = tuple(Descriptor.from_json(raw) for raw in doc.get("layers") or [])
    except ValueError as exc:
        raise OcimodelError(f"manifest {desc.digest} of {store.name} is malformed: {exc}") from None
    history = _layer_history(config, len(layers))
    contents = tuple(_contents(store, layer, line, policy) for layer, line in zip(layers, history))
    return Image(store.name, top.digest, tuple(documents), available, config, layers, contents)


def _is_index(desc: Descriptor, doc: Mapping[str, Any]) -> bool:
    return desc.media_type in INDEX_TYPES or doc.get("mediaType") in INDEX_TYPES or "manifests" in doc


def _what(desc: Descriptor, doc: Mapping[str, Any]) -> str:
    kind = "index" if _is_index(desc, doc) else "manifest"
    return f"{kind} {desc.digest}"


def _entries(doc: Mapping[str, Any], desc: Descriptor, store: Store) -> list[Descriptor]:
    try:
        return [Descriptor.from_json(m) for m in doc.get("manifests") or []]
    except ValueError as exc:
        raise OcimodelError(f"index {desc.digest} of {store.name} is malformed: {exc}") from None


def _offered(entries: Sequence[Descriptor]) -> tuple[Platform, ...]:
    """An index's platforms, without the unknown/unknown manifests of build attestations: nobody runs those."""
    return tuple(dict.fromkeys(e.platform for e in entries if e.platform is not None and e.platform.os != "unknown"))


def _config(store: Store, doc: Mapping[str, Any], desc: Descriptor) -> dict[str, Any]:
    try:
        config_desc = Descriptor.from_json(doc["config"])
    except (KeyError, TypeError, ValueError):
        raise OcimodelError(f"{desc.digest} of {store.name} is not an image manifest (no config)") from None
    return parse_document(store.config(config_desc), f"config {config_desc.digest} of {store.name}")


def _layer_history(config: Mapping[str, Any], count: int) -> list[str | None]:
    """Each layer's ``created_by``, when the history accounts for exactly the layers there are."""
    lines = [h.get("created_by", "") for h in config.get("history") or [] if not h.get("empty_layer")]
    return list(lines) if len(lines) == count else [None] * count


def _contents(store: Store, layer: Descriptor, history: str | None, policy: ReadPolicy) -> LayerContents:
    if "tar" not in layer.media_type:
        return LayerContents("skipped", reason=f"not a tar layer ({layer.media_type})")
    plain = layer.media_type.endswith(".tar")
    if layer.size > policy.small and not (store.seekable and plain):
        inferred = annotated_entries(layer, history)
        if inferred is not None:
            return LayerContents("annotations", inferred)
        if not policy.stream_big:
            return LayerContents("skipped", reason=f"{human_size(layer.size)} would have to be read in full")
    with store.layer(layer) as stream:
        return LayerContents("read", read_entries(stream, store.seekable, f"layer {layer.digest} of {store.name}"))


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


def read_entries(stream: io.BufferedReader, seekable: bool, what: str) -> tuple[Entry, ...]:
    """Tar headers of a layer (plain, gzip or zstd, told by its first bytes, whatever the media type claims).

    A seekable plain tar is read header by header, seeking over file data; anything else is streamed through.
    """
    magic = stream.peek(4)[:4]
    source: io.BufferedIOBase | zstandard.ZstdDecompressionReader
    if magic.startswith(_GZIP_MAGIC):
        source, mode = gzip.GzipFile(fileobj=stream, mode="rb"), "r|"
    elif magic == _ZSTD_MAGIC:
        source, mode = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True), "r|"
    elif not magic:
        return ()
    else:
        source, mode = stream, "r:" if seekable else "r|"
    try:
        with tarfile.open(fileobj=source, mode=mode, bufsize=1 << 20) as tar:  # type: ignore[call-overload]
            return tuple(_entry(info) for info in tar)
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
        Kind.OTHER
    )
    return Entry(raw, path, kind, info.mode & 0o7777, info.linkname)


def _normalize(name: str) -> str:
    """Where a runtime puts a member: relative to ``/``, ``.`` and ``..`` resolved, never above the root."""
    return posixpath.normpath("/" + name).lstrip("/")


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


# --- the merged file tree ------------------------------------------------------------------------------------------


def overlay(layers: Sequence[Sequence[Entry]]) -> dict[str, Entry]:
    """Merge layers as overlayfs would: a layer's whiteouts delete from the layers below, then its entries land.

    Hard links take the kind and mode of their target (the same inode); a path's missing parents appear as
    0755 directories, as runtimes create them.
    """
    tree: dict[str, Entry] = {}
    for entries in layers:
        for e in entries:
            if e.kind is Kind.OPAQUE:
                _drop_below(tree, e.path)
            elif e.kind is Kind.WHITEOUT:
                tree.pop(e.path, None)
                _drop_below(tree, e.path)
        for e in entries:
            if e.kind in (Kind.WHITEOUT, Kind.OPAQUE):
                continue
            parts = e.path.split("/") if e.path else []
            for i in range(1, len(parts)):
                tree.setdefault("/".join(parts[:i]), Entry("", "/".join(parts[:i]), Kind.DIR, 0o755))
            old = tree.get(e.path)
            if old is not None and old.kind is Kind.DIR and e.kind is not Kind.DIR:
                _drop_below(tree, e.path)
            if e.kind is Kind.HARDLINK:
                target = tree.get(_normalize(e.link))
                if target is not None and target.kind is Kind.FILE:
                    e = replace(e, kind=Kind.FILE, mode=target.mode)
            tree[e.path] = e
    return tree


def _drop_below(tree: dict[str, Entry], folder: str) -> None:
    prefix = folder + "/" if folder else ""
    for path in [p for p in tree if p.startswith(prefix) and p != folder]:
        del tree[path]


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
    store: Store, platform: Platform, modes: Sequence[str] = MODES, policy: ReadPolicy = ReadPolicy()
) -> Report:
    return judge(gather(store, platform, policy), platform, modes)


def _checks(image: Image, platform: Platform) -> list[Check]:
    if image.config is None:
        offered = ", ".join(map(str, image.available)) or "none"
        missing = Check("image.platform", MODES, Result.FAIL,
                        f"no image for {platform} in the index (it has: {offered}); pack for {platform}")
        return [missing, _limit_manifest(image)]
    unknown = [(d, c) for d, c in zip(image.layers, image.contents) if c.how == "skipped"]
    tree = overlay([c.entries for c in image.contents]) if not unknown else None
    skip = _skipped_because(unknown)
    runtime = image.config.get("config") or {}
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
        _readable(tree, skip),
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
    if biggest.size > LAYER_MAX_BYTES:
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


#: What the first cold pulls on a node measured (issue 11; Debian's containerd 1.6, ``ctr -n k8s.io images pull`` from a
#: loopback registry, 3 layers fetched at once as containerd's CRI plugin does): a 4.3 GB model pulled and unpacked in
#: 46-49 s as ocimodel's per-shard uncompressed layers, 62-69 s as one gzip layer (``COPY model /models`` pushed by
#: docker), 52 s as zstd. Below that size nothing measured says a layout choice costs the node anything.
SLOW_PULL_BYTES = 4 << 30
_PULL_MEASURED = ("measured cold at 4.3 GB on containerd 1.6: per-shard layers 46-49 s, one gzip layer 62-69 s, "
                  "zstd 52 s")
#: containerd's CRI plugin fetches 3 layers at a time; a layer with more than half the bytes keeps the pull at its own
#: single-stream time, at least 1.5x what the same bytes spread over 3 streams take.
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
                    "(save_pretrained(max_shard_size=...))")
    gzipped = sum(d.size for d in layers if "gzip" in d.media_type)
    if gzipped >= SLOW_PULL_BYTES:
        slow.append(f"{human_size(gzipped)} of gzip layers: a node gunzips each layer on one core; weights barely "
                    "compress, use --compression none")
    if not slow:
        return Check(cid, modes, Result.PASS,
                     f"{human_size(total)} in {len(layers)} layers, largest {human_size(biggest.size)}")
    return Check(cid, modes, Result.WARN, f"slow node pull: {'; '.join(slow)} ({_PULL_MEASURED})")


def _readable(tree: Mapping[str, Entry] | None, skip: str) -> Check:
    cid = "files.readable"
    if tree is None:
        return Check(cid, MODES, Result.SKIP, skip)
    hit = _models_dir(tree)
    if hit is None:
        return Check(cid, MODES, Result.SKIP, "no /models")
    folder = hit[0]
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
    """One line per problem over every platform of the image, read with ``QUICK`` so no big layer is read in full."""
    reports = [verify(store, p, policy=QUICK) for p in image_platforms(store)]
    found: dict[str, list[str]] = {}
    for report in reports:
        for c in report.checks:
            if c.result in (Result.FAIL, Result.WARN):
                found.setdefault(f"{c.id}: {c.detail}", []).append(str(report.platform))
    return [line if len(where) == len(reports) else f"{', '.join(where)}: {line}" for line, where in found.items()]
