"""A model layer: the files of one layer plan, encoded with one compression, and what the digest cache knows of it.

``pack`` writes model layers into a layout and ``build`` streams them to a registry. Both first ask the layer for
the digests the cache holds, and both produce its bytes from the files (all of them in one pass, or any range for
a resumed upload), so "use the cached digests, else encode" and "what a layer's descriptor says" exist once, here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Callable

from ocimodel.layout.descriptor import ANNOTATION_FILE_METADATA, ANNOTATION_FILEPATH, ANNOTATION_TITLE, Descriptor
from ocimodel.layout.digestcache import DigestCache, layer_key
from ocimodel.layout.image import EPOCH, Layer, history_line
from ocimodel.layout.plan import LayerPlan
from ocimodel.layout.tarlayer import EncodedLayer, LayerDigests, Sink, encode_layer, tar_chunks, tar_size
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

    def encode(self, sink: Sink, progress: Callable[[int], None] | None = None) -> LayerDigests:
        """The whole blob into ``sink`` in one pass over the files, hashed both ways; the cache remembers it."""
        digests = encode_layer(tar_chunks(self.plan.members()), self.compression, sink, progress)
        self.remember(digests)
        return digests

    def reader(self) -> EncodedLayer:
        """Any byte range of the blob, produced from the files: one reader per upload keeps one compression stream."""
        return EncodedLayer(self.plan.members(), self.compression)

    def layer(self, digests: LayerDigests) -> Layer:
        """The layer's descriptor (annotated with what it holds) and history line."""
        files = self.plan.files
        annotations = {ANNOTATION_TITLE: self.plan.title}
        metadata = [file_metadata(f) for f in files]
        if len(files) == 1:
            annotations[ANNOTATION_FILEPATH] = files[0].path
        annotations[ANNOTATION_FILE_METADATA] = json.dumps(
            metadata[0] if len(metadata) == 1 else metadata, separators=(",", ":")
        )
        descriptor = Descriptor(digests.media_type, digests.digest, digests.size, annotations)
        return Layer(descriptor, digests.diff_id, history_line([f.path for f in files]))

    def _key(self) -> str:
        return layer_key(self.plan, self.compression)


def file_metadata(f: SourceFile) -> dict[str, object]:
    """ModelPack's per-file metadata, with the constant owner, mode and mtime of our tar headers (so reproducible)
    and the sha256 the Hub gave for the file, when there was one."""
    meta: dict[str, object] = {"name": f.path, "mode": 0o644, "uid": 0, "gid": 0, "size": f.size,
                               "mtime": EPOCH, "typeflag": 0}
    if f.lfs_sha256:
        meta["sha256"] = f.lfs_sha256
    return meta
