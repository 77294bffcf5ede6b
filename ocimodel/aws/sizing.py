"""How big a CodeBuild machine and how long a timeout a model needs, from its size in bytes (``modelsizes`` asks the
Hub for it).

``ocimodel build`` streams layers from the downloaded files, so a build needs the model's disk once (no layout copy,
no Docker image) and little memory: disk and CPU decide the compute type, memory does not.

- Disk: the model, plus 10 % and 15 GB for the build image, pip and the HF cache's metadata, must fit the machine.
- CPU: each layer in flight is hashed on a core while hf_xet decodes downloads on the others; 2 vCPUs keep up with
  a model under 20 GB, 4 one under 50 GB, and larger ones get 8.
- Timeout: 15 minutes to provision and install, plus the model moved twice (down from the Hub, up to ECR) at a
  conservative 20 MB/s, within CodeBuild's 5 to 2160 minutes.

The smallest machine meeting both needs wins: CodeBuild bills by the minute and machine size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ocimodel.errors import OcimodelError

GB = 1000**3


@dataclass(frozen=True)
class ComputeType:
    name: str
    vcpus: int
    disk_bytes: int


#: Linux x86 CodeBuild machines, smallest first.
COMPUTE_TYPES = (
    ComputeType("BUILD_GENERAL1_SMALL", 2, 64 * GB),
    ComputeType("BUILD_GENERAL1_MEDIUM", 4, 128 * GB),
    ComputeType("BUILD_GENERAL1_LARGE", 8, 128 * GB),
    ComputeType("BUILD_GENERAL1_XLARGE", 36, 256 * GB),
    ComputeType("BUILD_GENERAL1_2XLARGE", 72, 824 * GB),
)
DISK_HEADROOM_BYTES = 15 * GB
DISK_HEADROOM_RATIO = 1.10
SETUP_MINUTES = 15
THROUGHPUT_BYTES_PER_SECOND = 20 * 1000**2


def disk_needed(size: int) -> int:
    return math.ceil(size * DISK_HEADROOM_RATIO) + DISK_HEADROOM_BYTES


def vcpus_needed(size: int) -> int:
    if size < 20 * GB:
        return 2
    return 4 if size < 50 * GB else 8


def compute_type_for(size: int) -> str:
    """The smallest machine whose disk holds the model with headroom and whose vCPUs keep up with it."""
    for compute in COMPUTE_TYPES:
        if compute.disk_bytes >= disk_needed(size) and compute.vcpus >= vcpus_needed(size):
            return compute.name
    largest = COMPUTE_TYPES[-1]
    raise OcimodelError(
        f"{size / GB:.0f} GB plus headroom does not fit CodeBuild's largest disk ({largest.disk_bytes // GB} GB): "
        "leave files out with exclude"
    )


def fits(compute_type: str, size: int) -> bool:
    return next(c for c in COMPUTE_TYPES if c.name == compute_type).disk_bytes >= disk_needed(size)


def timeout_for(size: int) -> int:
    minutes = SETUP_MINUTES + math.ceil(2 * size / THROUGHPUT_BYTES_PER_SECOND / 60)
    return max(5, min(2160, minutes))
