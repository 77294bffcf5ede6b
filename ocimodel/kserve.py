"""KServe manifests that serve an image by digest.

A tag in ``storageUri`` makes KServe (and the kubelet) pull with policy Always for ``latest`` and lets the model
change under a running service; a digest pins the exact bytes that were verified, and nodes pull it once. So the
URI is always ``…@sha256:…``: taken from the reference, resolved from its tag, or read from a layout.

With a ``Validation``, the manifest also carries what Sigstore's model-validation-operator needs to check the
image's ``/models/model.sig`` before the server starts (docs/signing.md, "Verifying in the cluster"): its
``ModelValidation`` resource, the pod label its webhook looks for, and, for a public key, a ConfigMap holding the
key mounted into the server container (the webhook gives its init container that container's volume mounts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

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

#: Sigstore's model-validation-operator: its resource, and the pod label (value: the resource's name) that makes
#: its webhook add an init container running ``model_signing verify`` on ``model.path``.
VALIDATION_API = "ml.sigstore.dev/v1alpha1"
VALIDATION_LABEL = "validation.ml.sigstore.dev/ml"
#: Where KServe puts the model for the server container, in native (image volume, ``subPath: models``) and fetch
#: (storage initializer) modes; the operator's init container gets the same mounts.
MODEL_MOUNT = "/mnt/models"
#: Where the public key's ConfigMap is mounted in the server container, and so in the operator's init container.
KEY_DIR = "/etc/ocimodel/model-signing"
KEY_FILE = "model-signing.pub"
KEY_VOLUME = "model-signing-key"
#: The modes in which the model is in a volume before any container starts. In modelcar mode it lives in a
#: sidecar's root filesystem, which the operator's init container (it runs before every sidecar) cannot reach.
VALIDATED_MODES = ("native", "fetch")


@dataclass(frozen=True)
class Validation:
    """A ``ModelValidation`` named ``name``: by a public key (PEM text), or keyless by Sigstore identity and issuer
    (the init container then needs the public Sigstore services)."""

    name: str
    public_key: str | None = field(default=None, repr=False)
    identity: str | None = None
    issuer: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InvalidArgument(
                "model_validation", f"{self.name!r} is not a valid resource name: lowercase letters, digits and "
                "'-', starting with a letter, at most 63 characters"
            )
        keyless = self.identity is not None or self.issuer is not None
        if keyless and not (self.identity and self.issuer):
            raise InvalidArgument("sigstore_identity", "keyless validation needs both the identity and its issuer")
        if keyless == (self.public_key is not None):
            raise InvalidArgument(
                "model_validation", "give the signer's public key, or its Sigstore identity and issuer (one of them)"
            )

    @property
    def config_map(self) -> str:
        return f"{self.name}-public-key"

    def resources(self, namespace: str | None) -> list[dict[str, Any]]:
        """The ConfigMap (for a key) and the ModelValidation, to be applied before the service."""
        metadata: dict[str, Any] = {"name": self.name, **({"namespace": namespace} if namespace else {})}
        docs: list[dict[str, Any]] = []
        if self.public_key is not None:
            docs.append({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {**metadata, "name": self.config_map},
                "data": {KEY_FILE: self.public_key},
            })
            config: dict[str, Any] = {"publicKeyConfig": {"keyPath": f"{KEY_DIR}/{KEY_FILE}"}}
        else:
            config = {"sigstoreConfig": {"certificateIdentity": self.identity, "certificateOidcIssuer": self.issuer}}
        docs.append({
            "apiVersion": VALIDATION_API,
            "kind": "ModelValidation",
            "metadata": metadata,
            "spec": {"model": {"path": MODEL_MOUNT, "signaturePath": f"{MODEL_MOUNT}/model.sig"}, "config": config},
        })
        return docs


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
    validation: Validation | None = None

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
        if self.validation is not None:
            check_validated(self.kind, self.mode)

    @property
    def uri(self) -> str:
        return SCHEMES[self.mode] + self.image


def check_validated(kind: str, mode: str) -> None:
    """Refuses what the operator cannot check: a modelcar, and services whose pods ocimodel cannot label."""
    if mode not in VALIDATED_MODES:
        raise InvalidArgument(
            "model_validation", f"the operator cannot check a model served in {mode} mode: its init container runs "
            "before KServe's modelcar sidecar, the only place the files are; use mode native (oci+native://) or fetch"
        )
    if kind != "inferenceservice":
        raise InvalidArgument(
            "model_validation", "is written for kind inferenceservice only (its predictor sets the pod's labels and "
            "volumes)"
        )


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
    predictor: dict[str, Any] = {"model": model}
    if service.validation is not None:
        predictor = {"labels": {VALIDATION_LABEL: service.validation.name}, **predictor}
        if service.validation.public_key is not None:
            predictor["volumes"] = [{"name": KEY_VOLUME, "configMap": {"name": service.validation.config_map}}]
            model["volumeMounts"] = [{"name": KEY_VOLUME, "mountPath": KEY_DIR, "readOnly": True}]
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": predictor},
    }


def manifests(service: Service) -> list[dict[str, Any]]:
    """Everything to apply, in order: the validation's resources first (the webhook looks the ModelValidation up
    when the pod is created), then the service."""
    before = service.validation.resources(service.namespace) if service.validation is not None else []
    return [*before, manifest(service)]


def _llm_spec(service: Service, resources: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"uri": service.uri, "name": service.model_name or service.name}}
    if service.runtime:
        spec["runtime"] = service.runtime
    if resources:
        spec["template"] = {"containers": [{"name": "main", "resources": dict(resources)}]}
    return spec


def to_yaml(doc: Mapping[str, Any]) -> str:
    """Block-style YAML in the order written, the way Kubernetes examples are laid out; multi-line text (a PEM key)
    as a literal block, as people write it."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return str(yaml.dump(dict(doc), Dumper=Dumper, sort_keys=False, default_flow_style=False))


def to_yaml_documents(docs: Sequence[Mapping[str, Any]]) -> str:
    """Several resources as one multi-document YAML stream (``---`` between them), as ``kubectl apply -f`` takes."""
    return "---\n".join(to_yaml(doc) for doc in docs)
