"""The pull ``ocimodel aws snapshot`` sends to its instance, run for real against a private containerd.

The script is the one the instance runs, with three things adapted to this machine, and only those: containerd's
socket (the harness's, where Bottlerocket's is ``/run/containerd/containerd.sock``), the kubelet credential provider
(a stand-in printing the loopback registry's credentials in the provider's response format, where the node's asks
ECR with the instance's role) and ``--plain-http`` for the loopback registry. Bottlerocket's wrapper (``apiclient exec
admin sheltie bash -c``) only hands the script to the host's bash, so bash runs it here. The registry requires a
password, so the credential really goes from the provider's answer to ctr, and the image must end up in the
``k8s.io`` namespace with the label that makes the kubelet's CRI count it as its own.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocimodel.aws import snapshot_plan as sp
from tests.harness.busybox import layout_top_digest, native_platform, push_layout_with_skopeo
from tests.harness.containerd import Containerd
from tests.harness.registry import Registry

REPOSITORY = "kserve-models/cached"
SCRIPT_TIMEOUT_S = 300


@pytest.fixture
def node(containerd: Containerd) -> Iterator[Containerd]:
    yield containerd
    containerd.make_cold()


@pytest.fixture(scope="module")
def pushed(auth_registry: Registry, busybox_multi_layout: Path) -> sp.Image:
    """A two-platform image in the password-protected registry, as the snapshot plan names it."""
    assert auth_registry.creds is not None
    push_layout_with_skopeo(busybox_multi_layout, auth_registry.host, REPOSITORY, "latest", creds=auth_registry.creds)
    digest = layout_top_digest(busybox_multi_layout)
    return sp.Image("acme/tiny", f"{auth_registry.host}/{REPOSITORY}", digest, True, ())


def provider(tmp_path: Path, username: str, password: str) -> tuple[Path, Path]:
    """A stand-in for the kubelet's ECR credential provider: it keeps the request it was given and answers as the
    real one does (``auth`` by registry host). The script and the file where it keeps the request."""
    request = tmp_path / "request.json"
    response = {
        "kind": "CredentialProviderResponse",
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "cacheKeyType": "Registry",
        "auth": {"registry": {"username": username, "password": password}},
    }
    path = tmp_path / "ecr-credential-provider"
    path.write_text(f"#!/bin/sh\ncat > '{request}'\nprintf '%s' '{json.dumps(response, separators=(',', ':'))}'\n")
    path.chmod(0o755)
    return path, request


def adapted(image: sp.Image, node: Containerd, provider_path: Path) -> str:
    """The instance's script with this machine's socket, provider and --plain-http, and nothing else changed."""
    arch = native_platform().architecture
    script = sp.pull_script(
        image, arch, ctr_command=sp.ctr(sp.BOTTLEROCKET, str(node.address)), provider=str(provider_path),
        extra_args=("--plain-http",),
    )
    instance = sp.pull_script(
        image, arch, ctr_command=sp.ctr(sp.BOTTLEROCKET), provider=sp.CREDENTIAL_PROVIDER[sp.BOTTLEROCKET]
    )
    as_sent = sp.instance_pull_command(image, sp.BOTTLEROCKET, arch)
    assert as_sent == f"apiclient exec admin sheltie bash -c {shlex.quote(instance)}"
    assert script == (
        instance.replace(sp.CONTAINERD_SOCKET, str(node.address))
        .replace(sp.CREDENTIAL_PROVIDER[sp.BOTTLEROCKET], str(provider_path))
        .replace(" --user ", " --plain-http --user ")
    )
    return script


def run(script: str, shell: str = "bash") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shell, "-c", script], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("shell", ["bash", "sh"])  # Bottlerocket's host bash; AL2023's SSM runs the script with sh
def test_the_instances_pull_puts_the_image_in_the_cri_namespace_with_its_label(
    shell: str,
    pushed: sp.Image,
    node: Containerd,
    auth_registry: Registry,
    busybox_multi_layout: Path,
    tmp_path: Path,
) -> None:
    assert auth_registry.username is not None and auth_registry.password is not None
    path, request = provider(tmp_path, auth_registry.username, auth_registry.password)
    result = run(adapted(pushed, node, path), shell)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pulled {pushed.ref}"
    assert auth_registry.password not in result.stdout + result.stderr

    # The provider was asked as the kubelet asks it, for this image.
    assert json.loads(request.read_text()) == {
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": pushed.ref,
    }
    # The image is in k8s.io by digest, labelled for the CRI, and only the node's platform was fetched.
    assert node.images() == [pushed.ref]
    (line,) = [row for row in node.ctr("images", "ls").stdout.splitlines() if row.startswith(pushed.ref)]
    assert line.split()[-1] == sp.CRI_LABEL
    index = json.loads((busybox_multi_layout / "blobs" / "sha256" / pushed.digest.split(":")[1]).read_bytes())
    here = native_platform().architecture
    others = {m["digest"] for m in index["manifests"] if m["platform"]["architecture"] != here}
    assert others and not others & set(node.content())


def test_a_refused_pull_fails_the_script_and_shows_no_credential(
    pushed: sp.Image, node: Containerd, auth_registry: Registry, tmp_path: Path
) -> None:
    assert auth_registry.username is not None
    wrong = "not-the-password-0123456789"
    path, _ = provider(tmp_path, auth_registry.username, wrong)
    result = run(adapted(pushed, node, path))
    assert result.returncode != 0
    assert "pulled" not in result.stdout
    assert wrong not in result.stdout + result.stderr
    assert node.images() == []


def test_a_provider_giving_no_credential_stops_before_ctr(pushed: sp.Image, node: Containerd, tmp_path: Path) -> None:
    path = tmp_path / "ecr-credential-provider"
    path.write_text("#!/bin/sh\ncat >/dev/null\nprintf '%s' '{\"kind\":\"CredentialProviderResponse\",\"auth\":{}}'\n")
    path.chmod(0o755)
    result = run(adapted(pushed, node, path))
    assert result.returncode == 1
    assert result.stderr.strip() == f"ocimodel: the credential provider gave no ECR credential for {pushed.name}"
    assert node.images() == []
