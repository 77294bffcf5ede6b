"""``ocimodel kserve``: the manifests it prints, parsed back as YAML and read the way KServe reads them."""

from __future__ import annotations

import io
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
