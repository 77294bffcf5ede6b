"""A layout's image as an ``ImageSource``: the tag ``Layout.select_tag`` picks, blobs read from disk."""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Iterator

from ocimodel.layout.descriptor import Descriptor
from ocimodel.layout.store import Layout


class LayoutSource:
    """One tagged image of a layout. Blobs are files, so layer streams seek: a plain tar's file data is skipped."""

    def __init__(self, layout: Layout, tag: str | None = None) -> None:
        self.layout = layout
        self.tag, self._top = layout.select_tag(tag)

    @property
    def name(self) -> str:
        return f"{self.layout.root}:{self.tag}"

    @property
    def seekable(self) -> bool:
        return True

    def top(self) -> tuple[Descriptor, bytes]:
        return self._top, self.layout.read_blob(self._top.digest)

    def document(self, desc: Descriptor) -> bytes:
        return self.layout.read_blob(desc.digest)

    def config(self, desc: Descriptor) -> bytes:
        return self.layout.read_blob(desc.digest)

    @contextmanager
    def layer(self, desc: Descriptor) -> Iterator[io.BufferedReader]:
        with self.layout.open_blob(desc.digest) as f:
            yield f
