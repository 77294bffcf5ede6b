"""``build`` to ECR refuses a layer over ECR's size limit from the layer plan, before any download or upload."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from ocimodel.errors import OcimodelError
from ocimodel.registry.auth import Credentials
from ocimodel.registry.push import ECR_MAX_LAYER_BYTES
from tests.harness.build import PASSWORD, Builder
from tests.harness.registry_stub import ECR_HOST, Behaviour, Redirector, RegistryStub


def test_layer_over_ecrs_limit_is_refused_before_anything_is_sent(stub: RegistryStub, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with open(model / "model.safetensors", "wb") as f:
        f.truncate(ECR_MAX_LAYER_BYTES + 1)  # sparse: no disk used
    stub.behaviour = Behaviour(ecr_like=True, auth="basic", users={"AWS": PASSWORD})
    session = requests.Session()
    session.trust_env = False
    session.mount(f"http://{ECR_HOST}/", Redirector(ECR_HOST, stub.host))
    with pytest.raises(OcimodelError) as err:
        Builder(stub, Credentials("AWS", PASSWORD), ECR_HOST, session)(model)
    message = str(err.value)
    assert message.startswith("layer model.safetensors is 50.8 GiB, more than the 50.8 GiB ECR accepts in one layer")
    assert ECR_HOST in message and "\n" not in message
    assert stub.log == []
