"""Signing with a key kept in AWS KMS, judged by ``model_signing verify key`` with the public key KMS hands out.

moto plays KMS; ``kms_as_aws`` (tests/harness/aws.py) plays the parts moto gets wrong (``MessageType=DIGEST``, key
states, key usage) as AWS documents them, and every request is checked against botocore's service model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ocimodel.aws.session import Clients
from ocimodel.signing.bundle import pae, sign_statement
from ocimodel.signing.errors import SigningKeyError
from ocimodel.signing.filehash import folder_files
from ocimodel.signing.kms import KmsSigner
from ocimodel.signing.statement import PAYLOAD_TYPE, build_statement
from ocimodel.signing.verify import verify_model
from tests.harness.aws import REGION, ShapeCheck, Wrapped, checking, client_error, kms_as_aws
from tests.harness.openssl import openssl


def _signing_key(aws: Clients, spec: str = "ECC_NIST_P256", usage: str = "SIGN_VERIFY", alias: str = "") -> str:
    key = aws.kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]
    if alias:
        aws.kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    return str(key["Arn"])


def _model(root: Path, files: int) -> Path:
    """A model folder with enough files that its statement is over KMS's 4,096-byte limit for raw messages."""
    folder = root / "kms-model"
    (folder / "shards").mkdir(parents=True)
    (folder / "config.json").write_bytes(b'{"model_type": "llama"}\n')
    for i in range(files):
        (folder / "shards" / f"model-{i:05d}-of-{files:05d}.safetensors").write_bytes(os.urandom(100 + i))
    return folder


def _public_pem_as_users_export_it(aws: Clients, key_id: str, folder: Path) -> Path:
    """``aws kms get-public-key`` gives DER SubjectPublicKeyInfo; ``openssl pkey`` makes the PEM the cluster gets."""
    der = folder / "kms.der"
    der.write_bytes(aws.kms.get_public_key(KeyId=key_id)["PublicKey"])
    pem = folder / "kms.pub"
    openssl("pkey", "-pubin", "-inform", "DER", "-in", str(der), "-out", str(pem))
    return pem


@pytest.mark.parametrize("spec", ["ECC_NIST_P256", "ECC_NIST_P384"])
def test_model_signing_accepts_a_signature_made_in_kms(aws: Clients, tmp_path: Path, spec: str) -> None:
    arn = _signing_key(aws, spec, alias="alias/model-signing")
    folder = _model(tmp_path, 40)
    statement = build_statement(folder.name, folder_files(folder))
    assert len(pae(PAYLOAD_TYPE, statement.payload())) > 4096  # too big for MessageType=RAW

    with checking(aws, ["kms"], ShapeCheck()) as check:
        signer = KmsSigner.from_client(kms_as_aws(aws.kms), "alias/model-signing")
        data = sign_statement(statement, signer)
    assert check.problems == []
    assert check.operations == ["GetPublicKey", "Sign"]
    (sign,) = check.sent("Sign")
    # The key the alias named when the public key was read, whatever the alias names later.
    assert sign["KeyId"] == signer.key_arn == arn and sign["MessageType"] == "DIGEST"
    assert len(sign["Message"]) == (32 if spec == "ECC_NIST_P256" else 48)
    assert "alias/model-signing" in repr(signer) and "client" not in repr(signer)

    (folder / "model.sig").write_bytes(data)
    public = _public_pem_as_users_export_it(aws, "alias/model-signing", tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", str(folder), "--signature",
         str(folder / "model.sig"), "--public_key", str(public)],
        capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0 and "Verification succeeded" in result.stdout, result.stdout + result.stderr
    # ocimodel's own verifier agrees, with the key as KmsSigner read it.
    verify_model(data, signer.public(), folder_files(folder), folder.name)


def test_motos_own_digest_signatures_do_not_verify_and_are_refused(aws: Clients, tmp_path: Path) -> None:
    """Without the wrapper moto hashes the digest again: the signer's own check catches such a signature."""
    _signing_key(aws, alias="alias/model-signing")
    signer = KmsSigner.from_client(aws.kms, "alias/model-signing")
    with pytest.raises(SigningKeyError, match="returned a signature its public key does not verify"):
        signer.sign(b"DSSEv1 28 application/vnd.in-toto+json 2 {}")


def test_the_key_id_may_be_an_arn_in_another_region_than_the_default(aws: Clients) -> None:
    arn = _signing_key(aws)
    signer = KmsSigner.from_key_id(arn, region="eu-west-1")  # the ARN's region wins: the key is in us-east-1
    assert signer.key_arn.endswith(arn.split("/")[-1]) and signer.algorithm == "ECDSA_SHA_256"
    assert signer.client.meta.region_name == REGION


@pytest.mark.parametrize(
    ("spec", "usage", "expected"),
    [
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "it is not an asymmetric signing key (UnsupportedOperationException)"),
        ("RSA_2048", "ENCRYPT_DECRYPT", "has key usage ENCRYPT_DECRYPT, not SIGN_VERIFY"),
        ("RSA_2048", "SIGN_VERIFY", "is RSA_2048; OpenSSF model signing verifiers accept only ECDSA keys"),
        ("ECC_SECG_P256K1", "SIGN_VERIFY", "is ECC_SECG_P256K1; OpenSSF model signing verifiers accept only"),
    ],
)
def test_keys_verifiers_cannot_check_are_refused_in_one_line(
    aws: Clients, spec: str, usage: str, expected: str
) -> None:
    arn = _signing_key(aws, spec, usage)
    with pytest.raises(SigningKeyError) as raised:
        KmsSigner.from_client(kms_as_aws(aws.kms), arn)
    _one_line_naming(raised.value, arn, expected)
    assert "aws kms create-key --key-spec ECC_NIST_P256 --key-usage SIGN_VERIFY" in str(raised.value)


def _one_line_naming(error: Exception, key: str, expected: str) -> None:
    text = str(error)
    assert "\n" not in text and f"KMS key {key}" in text and expected in text, text


def test_a_disabled_key_or_one_pending_deletion_is_explained(aws: Clients) -> None:
    arn = _signing_key(aws)
    kms = kms_as_aws(aws.kms)
    signer = KmsSigner.from_client(kms, arn)
    key_id = arn.split("/")[-1]  # moto disables and enables keys by id only
    aws.kms.disable_key(KeyId=key_id)
    with pytest.raises(SigningKeyError) as raised:
        signer.sign(b"payload")
    _one_line_naming(raised.value, arn, "the key is disabled; enable it (aws kms enable-key)")
    aws.kms.enable_key(KeyId=key_id)
    aws.kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    with pytest.raises(SigningKeyError) as raised:
        KmsSigner.from_client(kms, arn)
    _one_line_naming(raised.value, arn, "aws kms cancel-key-deletion")


def test_access_denied_names_the_permissions_and_propagation(aws: Clients) -> None:
    arn = _signing_key(aws)

    def denied(**request: Any) -> Any:
        raise client_error(
            "AccessDeniedException",
            f"User: arn:aws:sts::123456789012:assumed-role/ocimodel-codebuild-us-east-1/AWSCodeBuild is not "
            f"authorized to perform: kms:Sign on resource: {arn} because no identity-based policy allows it",
            "Sign",
        )

    signer = KmsSigner.from_client(Wrapped(kms_as_aws(aws.kms), sign=denied), arn)
    with pytest.raises(SigningKeyError) as raised:
        signer.sign(b"payload")
    _one_line_naming(raised.value, arn, "access denied")
    assert "needs kms:GetPublicKey and kms:Sign on the key" in str(raised.value)
    assert "IAM may still be propagating" in str(raised.value)


def test_a_missing_alias_and_missing_credentials_are_one_line(aws: Clients, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SigningKeyError) as raised:
        KmsSigner.from_key_id("alias/absent")
    _one_line_naming(raised.value, "alias/absent", "no such key or alias in this account and region")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    with pytest.raises(SigningKeyError) as raised:
        KmsSigner.from_key_id("alias/model-signing")
    _one_line_naming(raised.value, "alias/model-signing", "no AWS credentials")


def test_sign_kms_key_signs_the_image_with_the_kms_key(
    aws: Clients, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flag the CodeBuild buildspec passes (to build; pack takes it too): the image carries a model.sig that
    the KMS key's public half checks."""
    import json

    from typer.testing import CliRunner

    from ocimodel.cli import app
    from ocimodel.layout.store import Layout
    from ocimodel.registry.referrers import stored
    from ocimodel.signing.statement import ModelFile

    key_id = _signing_key(aws, alias="alias/model-signing")
    monkeypatch.setattr(KmsSigner, "from_key_id", classmethod(
        lambda cls, key, region=None: cls.from_client(kms_as_aws(aws.kms), key)
    ))
    model = _model(tmp_path, 3)
    layout = tmp_path / "layout"
    result = CliRunner().invoke(app, ["pack", str(model), str(layout), "--base", "scratch",
                                      "--sign-kms-key", "alias/model-signing", "--json"])
    assert result.exit_code == 0, result.output
    top = Layout.open(layout).select_tag("latest")[1]
    [(artifact, bundle)] = stored(Layout.open(layout), top)
    assert json.loads(result.stdout.splitlines()[-1])["signature"] == artifact.digest
    public = KmsSigner.from_client(kms_as_aws(aws.kms), key_id).public()
    verify_model(bundle, public, [ModelFile(f.path, f.sha256) for f in folder_files(model)], "model.sig")
