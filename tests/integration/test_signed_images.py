"""Signed images (``--sign-key``) judged by the ``model-signing`` package's own verifier on the unpacked image.

Each image is packed or built by the real CLI, unpacked by umoci (after skopeo copied it out of Debian's
docker-registry, for builds), and ``model_signing verify key`` checks /models against /models/model.sig with the
public half of the key: it must accept the image as made, and reject it after one byte of one weight changes or
after the signature is swapped for another model's.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.harness.cli import assert_clean_error, explain, run_cli
from tests.harness.hub import HubServer, hub_env, run_hub, tiny_repo
from tests.harness.openssl import KeyPair, ec_key, other_key
from tests.harness.registry import Registry

PASSWORD = "s1gn-Pa55word-never-shown"
OMS_ARTIFACT_TYPE = "application/vnd.model-signing.signature.v0.1"
WEIGHT = "model-00001-of-00002.safetensors"


def make_model(root: Path, seed: int = 1) -> Path:
    """Weights (a layer each), configs sharing a layer, a nested folder, an empty file and a non-ASCII name."""
    files = {
        WEIGHT: bytes((i * seed) % 251 for i in range(300_000)),
        "model-00002-of-00002.safetensors": bytes((i * 7 + seed) % 253 for i in range(200_000)),
        "config.json": json.dumps({"model_type": "tiny", "seed": seed}).encode(),
        "tokenizer/vocab.txt": b"a\nb\nc\n",
        "tokenizer/empty.txt": b"",
        "notes/résumé.md": "über\n".encode(),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def run_tool(*command: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(map(str, command)), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, explain(result)
    return result


def unpack(layout: Path, tag: str, bundle: Path) -> Path:
    run_tool("umoci", "unpack", "--rootless", "--image", f"{layout}:{tag}", bundle)
    return bundle / "rootfs" / "models"


def model_signing_verify(models: Path, public: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", str(models), "--signature", str(models / "model.sig"),
         "--public_key", str(public)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, check=False,
    )


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def assert_judged(models: Path, key: KeyPair, other_signature: Path) -> None:
    """model_signing accepts the unpacked image, then rejects it once a byte changes or the signature is swapped."""
    accepted = model_signing_verify(models, key.public)
    assert accepted.returncode == 0 and "Verification succeeded" in accepted.stdout, explain(accepted)
    original = (models / "model.sig").read_bytes()
    (models / "model.sig").write_bytes(other_signature.read_bytes())
    swapped = model_signing_verify(models, key.public)
    assert swapped.returncode != 0, explain(swapped)
    (models / "model.sig").write_bytes(original)
    flip_one_byte(models / WEIGHT)
    changed = model_signing_verify(models, key.public)
    assert changed.returncode != 0 and WEIGHT in changed.stdout + changed.stderr, explain(changed)


@pytest.fixture
def key(tmp_path: Path) -> KeyPair:
    (tmp_path / "keys").mkdir()
    return ec_key(tmp_path / "keys", "P-256")


def signed_elsewhere(tmp_path: Path, key: KeyPair) -> Path:
    """A valid signature by the same key, of another model: swapped in, it must not pass."""
    other = tmp_path / "other-layout"
    result = run_cli("pack", make_model(tmp_path / "other", seed=2), other, "--base", "scratch", "--sign-key",
                     key.private)
    assert result.returncode == 0, explain(result)
    return unpack(other, "latest", tmp_path / "other-bundle") / "model.sig"


def test_a_signed_local_model_is_accepted_by_model_signing_and_a_change_is_not(tmp_path: Path, key: KeyPair) -> None:
    layout = tmp_path / "layout"
    result = run_cli("pack", make_model(tmp_path / "model"), layout, "--base", "scratch", "--sign-key", key.private,
                     "--json")
    assert result.returncode == 0, explain(result)
    summary = json.loads(result.stdout)
    index = json.loads((layout / "index.json").read_text())
    [referrer] = [m for m in index["manifests"] if m.get("artifactType") == OMS_ARTIFACT_TYPE]
    assert summary["signature"] == referrer["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / summary["digest"].split(":")[1]).read_bytes())
    assert manifest["layers"][-1]["annotations"]["org.opencontainers.image.title"] == "model.sig"
    models = unpack(layout, "latest", tmp_path / "bundle")
    assert_judged(models, key, signed_elsewhere(tmp_path, key))


def test_the_statement_is_the_one_model_signing_computes_for_the_unpacked_folder(tmp_path: Path, key: KeyPair) -> None:
    layout = tmp_path / "layout"
    result = run_cli("pack", make_model(tmp_path / "model"), layout, "--base", "scratch", "--sign-key", key.private)
    assert result.returncode == 0, explain(result)
    models = unpack(layout, "latest", tmp_path / "bundle")
    ours = payload(models / "model.sig")
    (models / "model.sig").unlink()
    run_tool(sys.executable, "-m", "model_signing", "sign", "key", models, "--private_key", key.private,
             "--signature", models / "model.sig")
    theirs = payload(models / "model.sig")
    theirs["predicate"]["serialization"]["ignore_paths"].sort()  # its order changes from run to run
    assert ours == theirs


def payload(signature: Path) -> dict[str, Any]:
    envelope = json.loads(signature.read_text())["dsseEnvelope"]
    statement: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return statement


def test_signing_adds_a_layer_and_changes_no_other(tmp_path: Path, key: KeyPair) -> None:
    model = make_model(tmp_path / "model")
    digests = []
    for name, extra in (("plain", ()), ("signed", ("--sign-key", str(key.private)))):
        result = run_cli("pack", model, tmp_path / name, "--base", "scratch", "--json", *extra)
        assert result.returncode == 0, explain(result)
        digest = json.loads(result.stdout)["digest"].split(":")[1]
        digests.append(json.loads((tmp_path / name / "blobs" / "sha256" / digest).read_bytes())["layers"])
    plain, signed = digests
    assert signed[:-1] == plain and len(signed) == len(plain) + 1


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    with run_hub([tiny_repo()], {}) as running:
        yield running


def test_a_signed_hub_model_is_accepted_by_model_signing(tmp_path: Path, key: KeyPair, hub: HubServer) -> None:
    """Hub weights are signed with the sha256 the Hub gave (LFS), the other files hashed as their layer went by."""
    layout = tmp_path / "layout"
    result = run_cli("pack", "acme/tiny", layout, "--base", "scratch", "--sign-key", key.private,
                     env=hub_env(hub, tmp_path))
    assert result.returncode == 0, explain(result)
    models = unpack(layout, "latest", tmp_path / "bundle")
    accepted = model_signing_verify(models, key.public)
    assert accepted.returncode == 0, explain(accepted)
    weight = next(models.rglob("*.safetensors"))
    flip_one_byte(weight)
    assert model_signing_verify(models, key.public).returncode != 0


def test_build_signs_and_attaches_the_signature_as_a_referrer(
    tmp_path: Path, key: KeyPair, registry: Registry, busybox_ref: str
) -> None:
    repo = "signed/built"
    result = run_cli("build", make_model(tmp_path / "model"), f"{registry.host}/{repo}:v1", "--base", busybox_ref,
                     "--sign-key", key.private, "--json")
    assert result.returncode == 0, explain(result)
    summary = json.loads(result.stdout)
    referrers = registry.fetch_manifest(repo, summary["digest"].replace(":", "-")).json()  # the tag schema's index
    assert [(m["digest"], m["artifactType"]) for m in referrers["manifests"]] == [
        (summary["signature"], OMS_ARTIFACT_TYPE)
    ]
    artifact = registry.fetch_manifest(repo, summary["signature"]).json()
    assert artifact["subject"]["digest"] == summary["digest"]
    layout = tmp_path / "copy"
    run_tool("skopeo", "copy", "--src-tls-verify=false", f"docker://{registry.host}/{repo}@{summary['digest']}",
             f"oci:{layout}:v1")
    models = unpack(layout, "v1", tmp_path / "bundle")
    assert model_signing_verify(models, key.public).returncode == 0
    assert registry.fetch_blob(repo, artifact["layers"][0]["digest"]) == (models / "model.sig").read_bytes()


def test_push_attaches_the_signature_pack_kept(tmp_path: Path, key: KeyPair, registry: Registry) -> None:
    layout = tmp_path / "layout"
    packed = run_cli("pack", make_model(tmp_path / "model"), layout, "--base", "scratch", "--sign-key", key.private,
                     "--json")
    assert packed.returncode == 0, explain(packed)
    summary = json.loads(packed.stdout)
    pushed = run_cli("push", layout, f"{registry.host}/signed/pushed:v1", "--json")
    assert pushed.returncode == 0, explain(pushed)
    assert json.loads(pushed.stdout)["signature"] == summary["signature"]
    index = registry.fetch_manifest("signed/pushed", summary["digest"].replace(":", "-")).json()
    assert [m["digest"] for m in index["manifests"]] == [summary["signature"]]


def test_an_encrypted_key_takes_its_password_from_stdin_or_the_environment_and_never_shows_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "keys").mkdir()
    key = ec_key(tmp_path / "keys", "P-384", pkcs8=True, password=PASSWORD)
    model = make_model(tmp_path / "model")
    secrets = [PASSWORD, *key.private.read_text().splitlines()[1:-1]]
    by_stdin = run_cli("pack", model, tmp_path / "a", "--base", "scratch", "--sign-key", key.private,
                       "--sign-key-password-stdin", stdin=PASSWORD + "\n")
    env = {**os.environ, "OCIMODEL_SIGN_KEY_PASSWORD": PASSWORD}
    by_env = run_cli("--debug", "pack", model, tmp_path / "b", "--base", "scratch", "--sign-key", key.private, env=env)
    wrong = run_cli("pack", model, tmp_path / "c", "--base", "scratch", "--sign-key", key.private,
                    "--sign-key-password-stdin", stdin="not-it\n")
    for result in (by_stdin, by_env):
        assert result.returncode == 0, explain(result)
    assert_clean_error(wrong, "password", str(key.private))
    assert not (tmp_path / "c").exists(), "a wrong password is found before anything is written"
    written = b"".join(p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file())
    for secret in secrets:
        for result in (by_stdin, by_env, wrong):
            assert secret not in result.stdout + result.stderr
        assert secret.encode() not in written


@pytest.mark.parametrize("problem", ["missing", "rsa", "not-a-key"])
def test_an_unusable_key_is_one_clear_line(tmp_path: Path, problem: str) -> None:
    (tmp_path / "keys").mkdir()
    path = {
        "missing": tmp_path / "keys" / "nope.pem",
        "rsa": other_key(tmp_path / "keys", "RSA").private if problem == "rsa" else None,
        "not-a-key": tmp_path / "keys" / "text.pem",
    }[problem]
    assert path is not None
    if problem == "not-a-key":
        path.write_text("hello\n")
    result = run_cli("pack", make_model(tmp_path / "model"), tmp_path / "layout", "--base", "scratch",
                     "--sign-key", path)
    assert_clean_error(result, str(path))
    assert not (tmp_path / "layout").exists()


def test_ocimodel_verifies_what_it_signed_and_names_what_changed(tmp_path: Path, key: KeyPair) -> None:
    layout = tmp_path / "layout"
    model = make_model(tmp_path / "model")
    packed = run_cli("pack", model, layout, "--base", "scratch", "--sign-key", key.private)
    assert packed.returncode == 0, explain(packed)
    verified = run_cli("verify", layout, "--mode", "native", "--sign-key-pub", key.public, "--json")
    assert verified.returncode == 0, explain(verified)
    [check] = [c for c in json.loads(verified.stdout)["checks"] if c["id"] == "signature.model"]
    assert check["result"] == "pass"
    other = tmp_path / "other-keys"
    other.mkdir()
    refused = run_cli("verify", layout, "--mode", "native", "--sign-key-pub", ec_key(other).public)
    assert refused.returncode == 3, explain(refused)
