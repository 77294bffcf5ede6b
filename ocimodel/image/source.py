"""What reading an image needs, wherever it is: one small read-only interface, a layout and a registry behind it.

``verify`` reads an image's documents and layer headers through it, ``push`` walks a layout's image through it,
``pull`` copies a registry's image through it. Implementations: ``ocimodel.layout.source.LayoutSource`` and
``ocimodel.registry.source.RegistrySource``.
"""

from __future__ import annotations

import io
from contextlib import AbstractContextManager
from typing import Protocol

from ocimodel.layout.descriptor import Descriptor


class ImageSource(Protocol):
    """Read access to one image: what its name points at, then documents and blobs by descriptor."""

    @property
    def name(self) -> str:
        """How error lines name the image (``layout:tag``, ``host/repo:tag``)."""

    @property
    def seekable(self) -> bool:
        """Whether ``layer`` streams can seek: a reader may then skip file data instead of reading through it."""

    def top(self) -> tuple[Descriptor, bytes]:
        """The descriptor and bytes of what the name points at (a manifest or an index)."""

    def document(self, desc: Descriptor) -> bytes:
        """A manifest or index named by an index, checked against its digest."""

    def config(self, desc: Descriptor) -> bytes:
        """A config blob: small (bounded), so read whole."""

    def layer(self, desc: Descriptor) -> AbstractContextManager[io.BufferedReader]:
        """A blob as a buffered stream (a reader may peek at its magic bytes), never held whole; a registry's is
        checked against its digest once read to its end."""
