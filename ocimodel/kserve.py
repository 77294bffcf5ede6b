"""KServe manifests that serve an image by digest.

A tag in ``storageUri`` makes KServe (and the kubelet) pull with policy Always for ``latest`` and lets the model
change under a running service; a digest pins the exact bytes that were verified, and nodes pull it once. So the
URI is always ``…@sha256:…``: taken from the reference, resolved from its tag, or read from a layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ocimodel.errors import InvalidArgument
from ocimodel.layout.descriptor import sha256_digest
from ocimodel.registry.reference import Reference

if TYPE_CHECKING:
    from ocimodel.registry.client import RegistryClient

#: ``oci://`` lets the cluster's default apply (modelcar, unless ``ociModelMode`` says otherwise) and is what every
#: KServe release with modelcars understands; the other modes need their explicit scheme.
SCHEMES = {"modelcar": "oci://", "native": "oci+native://", "fetch": "oci+fetch://"}
KINDS = ("inferenceservice", "llminferenceservice")
GPU_RESOURCE = "nvidia.com/gpu"
#: Kubernetes object names that KServe accepts for services: RFC 1035 labels.
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Resources:
    cpu: str | None = None
    memory: str | None = None
    gpus: int | None = None

    def to_json(self) -> dict[str, dict[str, str]]:
        """Requests for all; limits for memory and GPUs only (a CPU limit throttles model loading for nothing)."""
        requests = {k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v}
        limits = {"memory": self.memory} if self.memory else {}
        if self.gpus:
            requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(self.gpus)
        out: dict[str, dict[str, str]] = {}
        if requests:
            out["requests"] = requests
        if limits:
            out["limits"] = limits
        return out


@dataclass(frozen=True)
class Service:
    name: str
    #: ``registry/repository@sha256:…``
    image: str
    kind: str = "inferenceservice"
    mode: str = "modelcar"
    namespace: str | None = None
    runtime: str | None = None
    #: InferenceService: ``modelFormat.name`` (KServe's Hugging Face runtime serves ``huggingface``).
    model_format: str = "huggingface"
    #: LLMInferenceService: the model name clients send; defaults to the service name.
    model_name: str | None = None
    resources: Resources = field(default_factory=Resources)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InvalidArgument(
                "name", f"{self.name!r} is not a valid service name: lowercase letters, digits and '-', starting "
                "with a letter, at most 63 characters"
            )
        if "@sha256:" not in self.image:
            raise ValueError(f"{self.image} is not pinned by digest")
        if self.kind not in KINDS or self.mode not in SCHEMES:
            raise ValueError(f"unknown kind {self.kind!r} or mode {self.mode!r}")

    @property
    def uri(self) -> str:
        return SCHEMES[self.mode] + self.image


def pinned(ref: Reference, client: RegistryClient) -> str:
    """``registry/repository@digest`` for ``ref``: its digest, or its tag resolved once by the registry."""
    if ref.digest:
        return f"{ref.registry}/{ref.repository}@{ref.digest}"
    data, _ = client.get_manifest(ref.repository, ref.identifier)
    return f"{ref.registry}/{ref.repository}@{sha256_digest(data)}"


def manifest(service: Service) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": service.name}
    if service.namespace:
        metadata["namespace"] = service.namespace
    resources = service.resources.to_json()
    if service.kind == "llminferenceservice":
        return {
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "LLMInferenceService",
            "metadata": metadata,
            "spec": _llm_spec(service, resources),
        }
    model: dict[str, Any] = {"modelFormat": {"name": service.model_format}}
    if service.runtime:
        model["runtime"] = service.runtime
    model["storageUri"] = service.uri
    if resources:
        model["resources"] = resources
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": {"model": model}},
    }


def _llm_spec(service: Service, resources: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"uri": service.uri, "name": service.model_name or service.name}}
    if service.runtime:
        spec["runtime"] = service.runtime
    if resources:
        spec["template"] = {"containers": [{"name": "main", "resources": dict(resources)}]}
    return spec


def to_yaml(doc: Mapping[str, Any]) -> str:
    """Block-style YAML in the order written, the way Kubernetes examples are laid out."""
    import yaml

    return str(yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False))
