"""The KMS key CodeBuild builds sign ``model.sig`` with (``[signing]``): found, checked, created, removed.

A KMS asymmetric key, not a PEM in Secrets Manager: the private key never leaves KMS, so no build, log or role can
leak it; the role may only ask KMS to sign (``kms:Sign``) and read the public half (``kms:GetPublicKey``) of that
one key. bootstrap creates it (ECC, ``SIGN_VERIFY``, tagged ``managed-by=ocimodel``) and its alias only when the
config says ``create = true``; a key the user made is checked and used as it is. Teardown schedules the deletion of
a key bootstrap made, never of another.
"""

from __future__ import annotations

from typing import Any

from ocimodel.aws import plan as p
from ocimodel.aws.config import SigningSettings
from ocimodel.aws.resources import find_kms_key, managed
from ocimodel.aws.session import Clock, aws_call, error_code, eventually
from ocimodel.aws.steps import Step
from ocimodel.errors import OcimodelError
from ocimodel.retry import retry

#: Curves OpenSSF model signing verifiers accept, as KMS names them.
VERIFIABLE_SPECS = ("ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521")
#: KMS's longest waiting period before it deletes a key: the most time to notice a teardown was a mistake, at no
#: cost (KMS charges nothing for a key pending deletion).
DELETION_WINDOW_DAYS = 30
#: How long KMS may keep answering NotFoundException for a key it just created (its documented eventual
#: consistency: usually seconds, sometimes minutes).
SETTLE_SECONDS = 120.0
SETTLE_DELAY_SECONDS = 2.0
CREATE_HINT = (
    "create one (aws kms create-key --key-spec ECC_NIST_P256 --key-usage SIGN_VERIFY, then aws kms create-alias), "
    "or set create = true in [signing] for bootstrap to make it"
)


class KeyArn:
    """The signing key's ARN as the role's policy needs it: known when the key exists, else set by the step that
    creates it. Not frozen: it is the one value a step hands to a later step when they run."""

    def __init__(self, value: str | None) -> None:
        self.value = value


def key_request(signing: SigningSettings) -> dict[str, Any]:
    """CreateKey's arguments. No key policy: KMS's default lets the account's IAM policies grant use, so the role's
    inline policy alone decides who signs."""
    return {
        "KeySpec": signing.key_spec,
        "KeyUsage": "SIGN_VERIFY",
        "Description": f"ocimodel: signs the model.sig of CodeBuild model builds ({signing.kms_key})",
        "Tags": [{"TagKey": k, "TagValue": v} for k, v in p.tags_dict().items()],
    }


def problem(metadata: dict[str, Any]) -> str | None:
    """Why the key cannot sign verifiable signatures now, in the words of what to do; None when it can."""
    spec, usage, state = metadata.get("KeySpec"), metadata.get("KeyUsage"), metadata.get("KeyState")
    if usage != "SIGN_VERIFY" or spec not in VERIFIABLE_SPECS:
        return (
            f"has key spec {spec} and key usage {usage}; model signatures need an ECC_NIST_P256, P384 or P521 key "
            "for SIGN_VERIFY (what OpenSSF model signing verifiers check): name another key"
        )
    if state == "PendingDeletion":
        return (
            "is scheduled for deletion: keep it (aws kms cancel-key-deletion, then aws kms enable-key) or name "
            "another key"
        )
    if state != "Enabled":
        return f"is {state}: enable it (aws kms enable-key) or name another key"
    return None


def bootstrap_step(kms: Any, signing: SigningSettings, region: str, clock: Clock) -> tuple[Step, KeyArn]:
    """The key's step and its ARN; a key that is missing (and not to be created) or unusable stops bootstrap before
    any change."""
    name = signing.kms_key
    with aws_call(f"read KMS key {name}"):
        found = find_kms_key(kms, name)
    if found is None:
        if not signing.create:
            raise OcimodelError(f"KMS key {name} does not exist in {region}: {CREATE_HINT}; nothing was changed")
        arn = KeyArn(None)
        detail = f"{signing.key_spec}, SIGN_VERIFY, with alias {name}: signs the builds' model.sig"
        return Step("kms key", name, "create", detail, lambda: _create(kms, signing, arn, clock)), arn
    wrong = problem(found)
    if wrong:
        raise OcimodelError(f"KMS key {name} ({found['Arn']}) {wrong}; nothing was changed")
    return Step("kms key", name, "none", f"{found['KeySpec']}, SIGN_VERIFY, {found['Arn']}"), KeyArn(found["Arn"])


def _create(kms: Any, signing: SigningSettings, arn: KeyArn, clock: Clock) -> None:
    made = kms.create_key(**key_request(signing))["KeyMetadata"]
    try:
        # KMS is eventually consistent: the key it just made may be unknown to CreateAlias for a while.
        retry(
            lambda: kms.create_alias(AliasName=signing.kms_key, TargetKeyId=made["KeyId"]),
            retryable=lambda exc: error_code(exc) == "NotFoundException",
            policy=eventually(SETTLE_SECONDS, SETTLE_DELAY_SECONDS, clock),
        )
    except Exception:
        # A key without its alias would never be found again: give it back rather than leave it billing.
        kms.schedule_key_deletion(KeyId=made["KeyId"], PendingWindowInDays=7)
        raise
    arn.value = made["Arn"]


def teardown_step(kms: Any, signing: SigningSettings) -> Step:
    name = signing.kms_key
    with aws_call(f"read KMS key {name}"):
        found = find_kms_key(kms, name)
        if found is None:
            return Step("kms key", name, "absent")
        if found.get("KeyState") == "PendingDeletion":
            return Step("kms key", name, "absent", "already scheduled for deletion")
        tags = kms.list_resource_tags(KeyId=found["KeyId"]).get("Tags")
    if not managed([{"Key": t.get("TagKey"), "Value": t.get("TagValue")} for t in tags or []]):
        return Step("kms key", name, "keep", "not created by ocimodel")
    key_id = found["KeyId"]

    def delete() -> None:
        if name.startswith("alias/"):
            kms.delete_alias(AliasName=name)
        kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=DELETION_WINDOW_DAYS)

    return Step(
        "kms key",
        name,
        "delete",
        f"alias now, the key after {DELETION_WINDOW_DAYS} days (aws kms cancel-key-deletion keeps it); signed images "
        "still verify with its exported public key",
        delete,
    )


def check_usable(kms: Any, signing: SigningSettings, region: str) -> None:
    """Before a build starts: a key that cannot sign would fail it only after the whole download."""
    with aws_call(f"read KMS key {signing.kms_key}"):
        found = find_kms_key(kms, signing.kms_key)
    if found is None:
        raise OcimodelError(
            f"KMS key {signing.kms_key} does not exist in {region}: run ocimodel aws bootstrap with this config first"
        )
    wrong = problem(found)
    if wrong:
        raise OcimodelError(f"KMS key {signing.kms_key} ({found['Arn']}) {wrong}")

