"""``ocimodel kserve``: the manifests it prints, parsed back as YAML and read the way KServe reads them."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ocimodel.cli import app
from ocimodel.errors import OcimodelError
from ocimodel.kserve import Resources, Service, manifest, pinned, to_yaml
from ocimodel.layout.descriptor import sha256_digest
from ocimodel.layout.store import Layout
from ocimodel.layout.pack import PackOptions, pack
from ocimodel.progress import PlainReporter
from ocimodel.registry.reference import parse_reference
from ocimodel.source.local import LocalSource

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/models/qwen@{DIGEST}"


def parsed(service: Service) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(to_yaml(manifest(service)))
    return doc


def test_inference_service_fields_kserve_reads() -> None:
    doc = parsed(Service(
        "qwen", IMAGE, namespace="serving", runtime="kserve-huggingfaceserver",
        resources=Resources(cpu="4", memory="32Gi", gpus=1),
    ))
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    assert doc["metadata"] == {"name": "qwen", "namespace": "serving"}
    model = doc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert model["runtime"] == "kserve-huggingfaceserver"
    assert model["storageUri"] == f"oci://{IMAGE}"
    # Quantities stay strings (a bare 1 would be an int, which the API server rejects for nvidia.com/gpu maps).
    assert model["resources"] == {
        "requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
    }


def test_minimal_inference_service_has_no_empty_sections() -> None:
    doc = parsed(Service("tiny", IMAGE, model_format="sklearn"))
    assert doc["metadata"] == {"name": "tiny"}
    assert doc["spec"]["predictor"]["model"] == {"modelFormat": {"name": "sklearn"}, "storageUri": f"oci://{IMAGE}"}


def test_llm_inference_service_fields_kserve_reads() -> None:
    doc = parsed(Service("llama", IMAGE, kind="llminferenceservice", model_name="meta-llama/Llama-3.1-8B",
                         resources=Resources(gpus=2)))
    assert doc["apiVersion"] == "serving.kserve.io/v1alpha1" and doc["kind"] == "LLMInferenceService"
    assert doc["spec"]["model"] == {"uri": f"oci://{IMAGE}", "name": "meta-llama/Llama-3.1-8B"}
    (container,) = doc["spec"]["template"]["containers"]
    assert container == {
        "name": "main",
        "resources": {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}},
    }
    plain = parsed(Service("llama", IMAGE, kind="llminferenceservice"))
    assert plain["spec"] == {"model": {"uri": f"oci://{IMAGE}", "name": "llama"}}


@pytest.mark.parametrize(("mode", "scheme"), [("modelcar", "oci://"), ("native", "oci+native://"), ("fetch", "oci+fetch://")])
def test_mode_picks_the_uri_scheme(mode: str, scheme: str) -> None:
    assert parsed(Service("m", IMAGE, mode=mode))["spec"]["predictor"]["model"]["storageUri"] == scheme + IMAGE
    assert parsed(Service("m", IMAGE, kind="llminferenceservice", mode=mode))["spec"]["model"]["uri"] == scheme + IMAGE


@pytest.mark.parametrize("name", ["Qwen", "1model", "model_a", "a" * 64, "trailing-"])
def test_names_kubernetes_would_refuse(name: str) -> None:
    with pytest.raises(OcimodelError, match="not a valid service name"):
        Service(name, IMAGE)


def test_an_unpinned_image_is_a_bug() -> None:
    with pytest.raises(ValueError):
        Service("m", "registry.example/models/qwen:latest")


class FakeClient:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.asked: list[tuple[str, str]] = []

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        self.asked.append((repository, reference))
        return self.body, "application/vnd.oci.image.manifest.v1+json"


def test_pinned_resolves_a_tag_once_and_keeps_a_digest() -> None:
    client = FakeClient(b'{"schemaVersion":2}')
    tagged = parse_reference("registry.example:5000/models/qwen:v1")
    assert pinned(tagged, client) == f"registry.example:5000/models/qwen@{sha256_digest(client.body)}"  # type: ignore[arg-type]
    assert client.asked == [("models/qwen", "v1")]
    assert pinned(parse_reference(IMAGE), client) == IMAGE  # type: ignore[arg-type]
    assert len(client.asked) == 1


# --- the command -------------------------------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "layout"
    pack(LocalSource.from_path(model), out, PackOptions(base="scratch", tag="v1"), PlainReporter(io.StringIO()))
    return out


def test_command_pins_a_layout_by_its_digest_at_the_given_repository(layout: Path) -> None:
    result = CliRunner().invoke(app, [
        "kserve", str(layout), "--ref", "registry.example/models/tiny:v1", "--name", "tiny", "--kind",
        "llminferenceservice", "--mode", "native",
    ])
    assert result.exit_code == 0, result.output
    digest = Layout.open(layout).tags()["v1"].digest
    assert yaml.safe_load(result.stdout)["spec"]["model"]["uri"] == f"oci+native://registry.example/models/tiny@{digest}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--ref"),
        (["--ref", f"registry.example/models/tiny@{DIGEST}"], "digest comes from the layout"),
        (["--ref", "registry.example/models/tiny", "--tag", "nope"], "has no tag 'nope'"),
    ],
)
def test_command_refuses_a_layout_it_cannot_pin(layout: Path, extra: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["kserve", str(layout), "--name", "tiny", *extra])
    assert result.exit_code != 0
    assert message in result.output + str(result.exception)


def test_command_takes_a_pinned_reference_without_asking_any_registry() -> None:
    result = CliRunner().invoke(app, ["kserve", IMAGE, "--name", "qwen", "--runtime", "vllm", "--gpus", "1"])
    assert result.exit_code == 0, result.output
    model = yaml.safe_load(result.stdout)["spec"]["predictor"]["model"]
    assert model["storageUri"] == f"oci://{IMAGE}" and model["runtime"] == "vllm"
    refused = CliRunner().invoke(app, ["kserve", IMAGE, "--name", "qwen", "--ref", "registry.example/x"])
    assert refused.exit_code == 2 and "for layouts" in refused.output


# --- Sigstore's model-validation-operator ------------------------------------------------------------------------
# Field names and behaviour from sigstore/model-validation-operator (api/v1alpha1/modelvalidation_types.go,
# internal/webhooks/pod_webhook.go): a namespaced ModelValidation (ml.sigstore.dev/v1alpha1) with spec.model.path and
# spec.model.signaturePath (both matching ^(/|s3://|gs://|https?://)) and exactly one of spec.config.sigstoreConfig
# {certificateIdentity, certificateOidcIssuer}, pkiConfig, publicKeyConfig {keyPath}; a pod labelled
# validation.ml.sigstore.dev/ml=<name> gets an init container with the volume mounts of the pod's containers,
# running `model_signing verify key --signature=<signaturePath> --public_key <keyPath> <path>`.

CRD_PATH = re.compile(r"^(/|s3://|gs://|https?://)")
METHODS = {"sigstoreConfig", "pkiConfig", "publicKeyConfig"}


def documents(text: str) -> dict[str, dict[str, Any]]:
    """The YAML stream's resources by kind, as ``kubectl apply -f`` reads them (in order)."""
    docs = list(yaml.safe_load_all(text))
    kinds = [d["kind"] for d in docs]
    assert len(set(kinds)) == len(kinds)
    return {d["kind"]: d for d in docs}


def init_container_paths(isvc: dict[str, Any], path: str) -> tuple[dict[str, Any], str] | None:
    """Which of the server container's volume mounts (the init container gets the same ones) holds ``path``, and
    the file's name inside that volume."""
    for mount in isvc["spec"]["predictor"]["model"].get("volumeMounts", []):
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return mount, path[len(mount["mountPath"].rstrip("/")) + 1:]
    return None


@pytest.fixture
def public_key(tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "signer.pub"
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.mark.parametrize("mode", ["native", "fetch"])
def test_model_validation_with_a_public_key_wires_the_operator(public_key: Path, mode: str) -> None:
    from ocimodel import api

    text = api.kserve_manifest(IMAGE, name="qwen", mode=mode, namespace="serving", model_validation="qwen-signed",
                               sign_key_pub=public_key)
    docs = documents(text)
    assert list(docs) == ["ConfigMap", "ModelValidation", "InferenceService"]  # the CR exists before the pod
    mv, isvc, cm = docs["ModelValidation"], docs["InferenceService"], docs["ConfigMap"]
    assert mv["apiVersion"] == "ml.sigstore.dev/v1alpha1"
    assert mv["metadata"] == {"name": "qwen-signed", "namespace": "serving"} == {**cm["metadata"], "name": "qwen-signed"}
    model = mv["spec"]["model"]
    assert CRD_PATH.match(model["path"]) and CRD_PATH.match(model["signaturePath"])
    assert (model["path"], model["signaturePath"]) == ("/mnt/models", "/mnt/models/model.sig")
    assert set(mv["spec"]["config"]) & METHODS == {"publicKeyConfig"}
    # The webhook finds the CR by the pod label's value, in the pod's namespace.
    assert isvc["spec"]["predictor"]["labels"] == {"validation.ml.sigstore.dev/ml": "qwen-signed"}
    assert isvc["metadata"]["namespace"] == "serving"
    assert isvc["spec"]["predictor"]["model"]["storageUri"].startswith({"native": "oci+native://", "fetch": "oci+fetch://"}[mode])
    # keyPath is a file the init container can open: in a mount of the server container, of a volume that is the
    # ConfigMap, under a key the ConfigMap has, holding the very key given.
    found = init_container_paths(isvc, mv["spec"]["config"]["publicKeyConfig"]["keyPath"])
    assert found is not None
    mount, key_name = found
    (volume,) = [v for v in isvc["spec"]["predictor"]["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    assert cm["data"][key_name] == public_key.read_text()
    assert mount["readOnly"] is True


def test_model_validation_keyless_names_the_identity_and_ships_no_key() -> None:
    from ocimodel import api

    docs = documents(api.kserve_manifest(
        IMAGE, name="qwen", mode="native", model_validation="qwen-signed",
        sigstore_identity="https://github.com/org/repo/.github/workflows/build.yml@refs/heads/main",
        sigstore_issuer="https://token.actions.githubusercontent.com",
    ))
    assert list(docs) == ["ModelValidation", "InferenceService"]
    assert docs["ModelValidation"]["spec"]["config"] == {"sigstoreConfig": {
        "certificateIdentity": "https://github.com/org/repo/.github/workflows/build.yml@refs/heads/main",
        "certificateOidcIssuer": "https://token.actions.githubusercontent.com",
    }}
    predictor = docs["InferenceService"]["spec"]["predictor"]
    assert "volumes" not in predictor and "volumeMounts" not in predictor["model"]


def test_without_model_validation_the_manifest_is_one_document(public_key: Path) -> None:
    from ocimodel import api

    text = api.kserve_manifest(IMAGE, name="qwen", mode="native")
    assert "---" not in text and "validation.ml.sigstore.dev" not in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "native", "--model-validation", "v"], "--model-validation: give the signer's public key, or its Sigstore identity"),
        (["--mode", "modelcar", "--model-validation", "v", "--sigstore-identity", "a", "--sigstore-issuer", "b"],
         "--model-validation: the operator cannot check a model served in modelcar mode"),
        (["--mode", "native", "--kind", "llminferenceservice", "--model-validation", "v", "--sigstore-identity", "a",
          "--sigstore-issuer", "b"], "--model-validation: is written for kind inferenceservice only"),
        (["--mode", "native", "--model-validation", "v", "--sigstore-identity", "a"],
         "--sigstore-identity: keyless validation needs both"),
        (["--mode", "native", "--sigstore-identity", "a", "--sigstore-issuer", "b"], "--model-validation: name the"),
        (["--mode", "native", "--model-validation", "Bad_Name", "--sigstore-identity", "a", "--sigstore-issuer", "b"],
         "not a valid resource name"),
    ],
)
def test_model_validation_mistakes_are_one_line_before_any_registry_is_asked(
    args: list[str], message: str, dead_port: int
) -> None:
    result = CliRunner().invoke(app, ["kserve", f"127.0.0.1:{dead_port}/models/qwen:v1", "--name", "qwen", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1


def test_model_validation_with_both_a_key_and_an_identity_is_refused(public_key: Path) -> None:
    result = CliRunner().invoke(app, [
        "kserve", IMAGE, "--name", "qwen", "--mode", "native", "--model-validation", "v", "--sign-key-pub",
        str(public_key), "--sigstore-identity", "a", "--sigstore-issuer", "b",
    ])
    assert result.exit_code == 2 and "one of them" in result.output
