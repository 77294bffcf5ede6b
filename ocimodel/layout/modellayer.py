"""A model layer: the files of one layer plan, encoded with one compression, and what the digest cache knows of it.

``pack`` writes model layers into a layout and ``build`` streams them to a registry. Both first ask the layer for
the digests the cache holds, and both produce its bytes from the files (all of them in one pass, or any range for
a resumed upload), so "use the cached digests, else encode" and "what a layer's descriptor says" exist once, here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from ocimodel.layout.descriptor import ANNOTATION_FILE_METADATA, ANNOTATION_FILEPATH, ANNOTATION_TITLE, Descriptor
from ocimodel.layout.digestcache import DigestCache, file_key, layer_key
from ocimodel.layout.filehashes import FileHashes
from ocimodel.layout.image import EPOCH, Layer, history_line
from ocimodel.layout.plan import LayerPlan
from ocimodel.layout.tarlayer import EncodedLayer, LayerDigests, Sink, encode_layer, read_range, tar_chunks, tar_size
from ocimodel.source import SourceFile


@dataclass(frozen=True)
class ModelLayer:
    plan: LayerPlan
    compression: str = "none"
    #: Where digests of layers built before are remembered; None hashes every layer (``use_cache=False``).
    cache: DigestCache | None = None

    @property
    def title(self) -> str:
        return self.plan.title

    @property
    def tar_size(self) -> int:
        """The uncompressed tar's exact length, known without reading a file (a compressed blob's is not)."""
        return tar_size(self.plan.members())

    def with_plan(self, plan: LayerPlan) -> ModelLayer:
        """The same layer over other ``SourceFile`` records of the same files (pinned once fetched, say)."""
        return replace(self, plan=plan)

    def cached(self) -> LayerDigests | None:
        """The digests the cache holds for these files, if they can still be identified (Hub LFS ids, or on disk)."""
        if self.cache is None or not all(f.lfs_sha256 or f.local.exists() for f in self.plan.files):
            return None
        return self.cache.get(self._key())

    def remember(self, digests: LayerDigests) -> None:
        if self.cache is not None:
            self.cache.put(self._key(), digests)

    def forget(self) -> None:
        """Drop cached digests the bytes turned out not to match (a file rewritten with its size and mtime kept)."""
        if self.cache is not None:
            self.cache.forget(self._key())

    def encode(
        self, sink: Sink, progress: Callable[[int], None] | None = None, hashes: FileHashes | None = None
    ) -> LayerDigests:
        """The whole blob into ``sink`` in one pass over the files, hashed both ways (and each file into ``hashes``,
        when signing); the cache remembers the digests."""
        digests = encode_layer(tar_chunks(self.plan.members(), observe=hashes), self.compression, sink, progress)
        self.remember(digests)
        return digests

    def reader(self, hashes: FileHashes | None = None) -> EncodedLayer:
        """Any byte range of the blob, produced from the files: one reader per upload keeps one compression stream."""
        return EncodedLayer(self.plan.members(), self.compression, hashes)

    def file_sha256(self, hashes: FileHashes | None = None) -> dict[str, str]:
        """Each file's sha256, by path in the model: the Hub's (LFS), the one taken as the layer went by, the one a
        signed build before remembered, else read now (a layer found unchanged that was never hashed per file)."""
        found: dict[str, str] = {}
        for f in self.plan.files:
            if f.lfs_sha256:
                found[f.path] = f.lfs_sha256
                continue
            key = file_key(f) if self.cache is not None else None
            streamed = hashes.get(f.path, f.size) if hashes is not None else None
            remembered = self.cache.get_file(key) if self.cache is not None and key and not streamed else None
            sha = streamed or remembered or _read_sha256(f)
            if self.cache is not None and key and not remembered:
                self.cache.put_file(key, sha)
            found[f.path] = sha
        return found

    def layer(self, digests: LayerDigests) -> Layer:
        """The layer's descriptor (annotated with what it holds) and history line."""
        return describe_layer(digests, self.plan.title, [(f.path, f.size, f.lfs_sha256) for f in self.plan.files])

    def _key(self) -> str:
        return layer_key(self.plan, self.compression)


def _read_sha256(f: SourceFile) -> str:
    """One more read of a file, checked to be the file listed: what signing costs when nothing else vouches."""
    digest = hashlib.sha256()
    for piece in read_range(f.local, 0, f.size, f.size, identity=f.identity):
        digest.update(piece)
    return digest.hexdigest()


def describe_layer(digests: LayerDigests, title: str, files: Sequence[tuple[str, int, str | None]]) -> Layer:
    """A layer of files under /models: its descriptor, annotated with what it holds (ModelPack's file metadata,
    a file path when it holds one file), and its history line."""
    annotations = {ANNOTATION_TITLE: title}
    metadata = [file_metadata(path, size, sha256) for path, size, sha256 in files]
    if len(files) == 1:
        annotations[ANNOTATION_FILEPATH] = files[0][0]
    annotations[ANNOTATION_FILE_METADATA] = json.dumps(
        metadata[0] if len(metadata) == 1 else metadata, separators=(",", ":")
    )
    descriptor = Descriptor(digests.media_type, digests.digest, digests.size, annotations)
    return Layer(descriptor, digests.diff_id, history_line([path for path, _, _ in files]))


def file_metadata(path: str, size: int, sha256: str | None = None) -> dict[str, object]:
    """ModelPack's per-file metadata, with the constant owner, mode and mtime of our tar headers (so reproducible)
    and the file's sha256 when it was known before packing (the Hub's)."""
    meta: dict[str, object] = {"name": path, "mode": 0o644, "uid": 0, "gid": 0, "size": size,
                               "mtime": EPOCH, "typeflag": 0}
    if sha256:
        meta["sha256"] = sha256
    return meta
