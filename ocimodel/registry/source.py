"""A registry's image as an ``ImageSource``: manifests by GET, configs and layers streamed (and verified)."""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from typing import Any, Generator, Iterator, cast

from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import DOCUMENT_MAX_BYTES, Descriptor, sha256_digest
from ocimodel.registry.client import RegistryClient
from ocimodel.registry.reference import Reference
from ocimodel.units import human_size


class RegistrySource:
    """The image ``ref`` names, read through ``client``. Nothing seeks over HTTP: layers are read through."""

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
            for _ in chunks:  # what the reader left (a tar's end padding): reading it lets stream_blob check the digest
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
