"""ocimodel: model directories and HuggingFace repos to OCI images (KServe modelcars), without a Docker daemon.

The functions here are what the ``ocimodel`` command line runs, with its defaults (docs/api.md)::

    import ocimodel

    packed = ocimodel.pack("./my-model", "./layout")
    pushed = ocimodel.push("./layout", "registry.example.com/models/my-model:v1")
    print(pushed.uri)  # oci://registry.example.com/models/my-model@sha256:…

Every error raised is an ``OcimodelError``; the library never prints and never changes ``os.environ``.
"""

__version__ = "0.1.0"

from ocimodel.api import (
    BASE_IMAGE_ENV,
    COMPRESSIONS,
    DEFAULT_JOBS,
    DEFAULT_PLATFORM,
    MODES,
    SERVICE_KINDS,
    BuildResult,
    PackResult,
    PushResult,
    Registry,
    build,
    is_layout_path,
    kserve_manifest,
    pack,
    pinned_reference,
    push,
    verify,
)
from ocimodel.errors import (
    DigestMismatch,
    InvalidArgument,
    LayoutError,
    OcimodelError,
    RegistryError,
    SourceError,
    VerificationError,
)
from ocimodel.layout.descriptor import Platform
from ocimodel.parallel import Cancelled
from ocimodel.progress import ProgressEvent
from ocimodel.results import BlobOutcome
from ocimodel.registry.reference import Reference
from ocimodel.retry import RetryPolicy

__all__ = [
    "BASE_IMAGE_ENV",
    "COMPRESSIONS",
    "DEFAULT_JOBS",
    "DEFAULT_PLATFORM",
    "MODES",
    "SERVICE_KINDS",
    "BlobOutcome",
    "BuildResult",
    "Cancelled",
    "DigestMismatch",
    "InvalidArgument",
    "LayoutError",
    "OcimodelError",
    "PackResult",
    "Platform",
    "ProgressEvent",
    "PushResult",
    "Reference",
    "Registry",
    "RegistryError",
    "RetryPolicy",
    "SourceError",
    "VerificationError",
    "__version__",
    "build",
    "is_layout_path",
    "kserve_manifest",
    "pack",
    "pinned_reference",
    "push",
    "verify",
]
