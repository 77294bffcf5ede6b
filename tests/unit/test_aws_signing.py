"""``[signing]`` in models.toml: the KMS key CodeBuild builds sign with, from bootstrap to teardown, against moto.

moto checks no request against AWS's rules and makes every KMS change visible at once, so each test checks the
requests against botocore's model (``ShapeCheck``) and injects what AWS does that moto does not: a key unknown to
CreateAlias for a while after CreateKey (KMS's eventual consistency), refusals of unusable keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from ocimodel.aws import plan as p
from ocimodel.aws import hftoken, signingkey, teardown
from ocimodel.aws.config import parse_config
from ocimodel.aws.session import Clients
from ocimodel.aws.steps import apply, summary
from ocimodel.errors import OcimodelError
from ocimodel.signing.bundle import sign_statement
from ocimodel.signing.kms import KmsSigner
from ocimodel.signing.statement import ModelFile, build_statement
from ocimodel.signing.verify import verify_model
from tests.harness.aws import (
    ACCOUNT,
    CONFIG,
    REGION,
    ROLE,
    TOKEN,
    FakeClock,
    ShapeCheck,
    Wrapped,
    checking,
    client_error,
    invoke,
    kms_as_aws,
    make_plan,
    moto_update_project,
    run_bootstrap,
)
from tests.harness.openssl import openssl

SERVICES = ("ecr", "iam", "s3", "logs", "codebuild", "secrets", "sts", "kms")
ALIAS = "alias/ocimodel-model-signing"
CREATE = CONFIG + "\n[signing]\ncreate = true\n"


@pytest.fixture
def checked(aws: Clients) -> Iterator[ShapeCheck]:
    with checking(aws, SERVICES, ShapeCheck()) as check:
        yield check


def _statement(role_policy: dict[str, Any]) -> dict[str, Any] | None:
    return next((s for s in role_policy["Statement"] if s["Sid"] == "ModelSigning"), None)


def _role_policy(aws: Clients) -> dict[str, Any]:
    return aws.iam.get_role_policy(RoleName=ROLE, PolicyName=p.ROLE_POLICY_NAME)["PolicyDocument"]  # type: ignore


def test_bootstrap_creates_the_key_and_alias_and_lets_the_role_sign_with_that_key_only(
    aws: Clients, checked: ShapeCheck, wheel: Path
) -> None:
    plan = make_plan(aws, wheel, CREATE)
    todo = run_bootstrap(aws, plan)
    assert checked.problems == []
    (step,) = [s for s in todo if s.kind == "kms key"]
    assert (step.name, step.action) == (ALIAS, "create")

    key = aws.kms.describe_key(KeyId=ALIAS)["KeyMetadata"]
    assert (key["KeySpec"], key["KeyUsage"], key["KeyState"]) == ("ECC_NIST_P256", "SIGN_VERIFY", "Enabled")
    tags = aws.kms.list_resource_tags(KeyId=key["KeyId"])["Tags"]
    assert tags == [{"TagKey": "managed-by", "TagValue": "ocimodel"}]
    # No key policy of ours: KMS's default lets IAM policies grant use, so the role's policy is what decides.
    assert "Policy" not in checked.sent("CreateKey")[0]

    assert _statement(_role_policy(aws)) == {
        "Sid": "ModelSigning",
        "Effect": "Allow",
        "Action": ["kms:GetPublicKey", "kms:Sign"],
        "Resource": key["Arn"],
    }
    project = aws.codebuild.batch_get_projects(names=["ocimodel-acme-tiny"])["projects"][0]
    (command,) = yaml.safe_load(project["source"]["buildspec"])["phases"]["build"]["commands"]
    assert command.endswith(f"--sign-kms-key {ALIAS} --json")

    # The role's key signs a model.sig that verifies with the public key KMS hands out.
    signer = KmsSigner.from_client(kms_as_aws(aws.kms), ALIAS)
    files = [ModelFile("config.json", "ab" * 32)]
    verify_model(sign_statement(build_statement("models", files), signer), signer.public(), files, "models")

    again = run_bootstrap(aws, make_plan(aws, wheel, CREATE))
    assert summary(again, done=True, verb="bootstrap").endswith("nothing to change, everything is as the config says")
    assert len(aws.kms.list_keys()["Keys"]) == 1


def test_a_new_key_unknown_to_create_alias_for_a_while_is_waited_for(aws: Clients, wheel: Path) -> None:
    refusals = iter(range(3))

    def create_alias(**request: Any) -> Any:
        if next(refusals, None) is not None:
            raise client_error("NotFoundException", f"Key '{request['TargetKeyId']}' does not exist", "CreateAlias")
        return aws.kms.create_alias(**request)

    clock = FakeClock()
    settling = replace(aws, kms=Wrapped(aws.kms, create_alias=create_alias))
    run_bootstrap(settling, make_plan(aws, wheel, CREATE), clock.clock)
    assert clock.waits == [2.0, 4.0, 8.0]
    assert aws.kms.describe_key(KeyId=ALIAS)["KeyMetadata"]["KeyState"] == "Enabled"


def test_a_key_that_never_settles_fails_and_is_given_back(aws: Clients, wheel: Path) -> None:
    def create_alias(**request: Any) -> Any:
        raise client_error("NotFoundException", f"Key '{request['TargetKeyId']}' does not exist", "CreateAlias")

    clock = FakeClock()
    never = replace(aws, kms=Wrapped(aws.kms, create_alias=create_alias))
    with pytest.raises(OcimodelError) as raised:
        run_bootstrap(never, make_plan(aws, wheel, CREATE), clock.clock)
    assert str(raised.value).startswith(f"cannot create kms key {ALIAS}: AWS said NotFoundException")
    assert sum(clock.waits) <= signingkey.SETTLE_SECONDS
    (key,) = aws.kms.list_keys()["Keys"]
    assert aws.kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "PendingDeletion"


def test_a_key_of_the_users_is_used_as_it_is_and_kept_at_teardown(
    aws: Clients, checked: ShapeCheck, wheel: Path, config_file: Path
) -> None:
    theirs = aws.kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    aws.kms.create_alias(AliasName="alias/team-signing", TargetKeyId=theirs["KeyId"])
    text = CONFIG + '\n[signing]\nkms_key = "alias/team-signing"\n'
    todo = run_bootstrap(aws, make_plan(aws, wheel, text))
    (step,) = [s for s in todo if s.kind == "kms key"]
    assert step.action == "none" and theirs["Arn"] in step.detail
    assert _statement(_role_policy(aws))["Resource"] == theirs["Arn"]  # type: ignore[index]

    config_file.write_text(text)
    result = invoke("aws", "teardown", "--config", str(config_file), "--yes")
    assert result.exit_code == 0, result.output
    assert "not created by ocimodel" in result.stdout
    assert aws.kms.describe_key(KeyId="alias/team-signing")["KeyMetadata"]["KeyState"] == "Enabled"
    assert checked.problems == []


@pytest.mark.parametrize(
    ("spec", "usage", "state", "expected"),
    [
        ("RSA_2048", "SIGN_VERIFY", "Enabled", "has key spec RSA_2048 and key usage SIGN_VERIFY; model signatures"),
        ("ECC_NIST_P256", "KEY_AGREEMENT", "Enabled", "has key spec ECC_NIST_P256 and key usage KEY_AGREEMENT"),
        ("ECC_NIST_P256", "SIGN_VERIFY", "Disabled", "is Disabled: enable it (aws kms enable-key)"),
        ("ECC_NIST_P256", "SIGN_VERIFY", "PendingDeletion", "is scheduled for deletion: keep it"),
    ],
)
def test_an_unusable_key_stops_bootstrap_and_build_before_any_change(
    aws: Clients, wheel: Path, config_file: Path, spec: str, usage: str, state: str, expected: str
) -> None:
    key = aws.kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]
    aws.kms.create_alias(AliasName="alias/team-signing", TargetKeyId=key["KeyId"])
    if state == "Disabled":
        aws.kms.disable_key(KeyId=key["KeyId"])
    if state == "PendingDeletion":
        aws.kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    text = CONFIG + '\n[signing]\nkms_key = "alias/team-signing"\n'
    with pytest.raises(OcimodelError) as raised:
        run_bootstrap(aws, make_plan(aws, wheel, text))
    assert f"KMS key alias/team-signing ({key['Arn']}) {expected}" in str(raised.value)
    assert str(raised.value).endswith("nothing was changed") and "\n" not in str(raised.value)
    assert aws.s3.list_buckets()["Buckets"] == []

    config_file.write_text(text)
    hftoken.store(aws.secrets, "ocimodel/hf-token", TOKEN)
    built = invoke("aws", "build", "acme/tiny", "--config", str(config_file), "--no-follow")
    assert isinstance(built.exception, OcimodelError) and expected in str(built.exception), built.output
    assert aws.codebuild.list_builds()["ids"] == []


def test_a_missing_key_not_to_be_created_stops_bootstrap_before_any_change(aws: Clients, wheel: Path) -> None:
    with pytest.raises(OcimodelError, match="KMS key alias/absent does not exist in us-east-1: create one .* or set "
                       "create = true in \\[signing\\] for bootstrap to make it; nothing was changed"):
        run_bootstrap(aws, make_plan(aws, wheel, CONFIG + '\n[signing]\nkms_key = "alias/absent"\n'))
    assert aws.s3.list_buckets()["Buckets"] == [] and aws.kms.list_keys()["Keys"] == []


def test_dry_run_shows_the_key_and_the_policy_and_creates_nothing(
    aws: Clients, wheel: Path, config_file: Path
) -> None:
    config_file.write_text(CREATE)
    result = invoke("aws", "bootstrap", "--config", str(config_file), "--wheel", str(wheel), "--dry-run")
    assert result.exit_code == 0, result.output
    assert aws.kms.list_keys()["Keys"] == []
    row = next(line for line in result.stdout.splitlines() if line.startswith("kms key"))
    assert ALIAS in row and "would create" in row and "ECC_NIST_P256, SIGN_VERIFY" in row
    marker = f"# IAM role {ROLE}: inline policy ocimodel-build\n"
    shown = result.stdout[result.stdout.index(marker) + len(marker) :]
    document, _ = json.JSONDecoder().raw_decode(shown)
    assert _statement(document)["Resource"] == (  # type: ignore[index]
        f"arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000"
    )


def test_teardown_deletes_the_alias_and_schedules_the_key_bootstrap_made(
    aws: Clients, checked: ShapeCheck, wheel: Path, config_file: Path
) -> None:
    run_bootstrap(aws, make_plan(aws, wheel, CREATE))
    key_id = aws.kms.describe_key(KeyId=ALIAS)["KeyMetadata"]["KeyId"]
    config = parse_config(CREATE, "models.toml")
    names = make_plan(aws, wheel, CREATE).names
    todo = teardown.steps(aws, config, names, delete_images=False)
    (step,) = [s for s in todo if s.kind == "kms key"]
    assert step.action == "delete" and "after 30 days" in step.detail
    apply(todo)
    assert checked.problems == []
    assert checked.sent("ScheduleKeyDeletion") == [{"KeyId": key_id, "PendingWindowInDays": 30}]
    assert aws.kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    assert aws.kms.list_aliases(KeyId=key_id)["Aliases"] == []

    config_file.write_text(CREATE)
    again = invoke("aws", "teardown", "--config", str(config_file), "--yes")
    assert again.exit_code == 0, again.output
    row = next(line for line in again.stdout.splitlines() if line.startswith("kms key"))
    assert "absent" in row


def test_the_options_fingerprint_and_buildspec_follow_the_signing_key(aws: Clients, wheel: Path) -> None:
    unsigned, signed = make_plan(aws, wheel), make_plan(aws, wheel, CREATE)
    model = unsigned.builds[0].model
    assert p.options_fingerprint(unsigned.settings, model) != p.options_fingerprint(signed.settings, model)
    assert "--sign-kms-key" not in p.build_command(unsigned.settings, model)
    assert _statement(p.role_policy(unsigned.names, unsigned.config.models)) is None


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("", "[signing]: name the signing key (kms_key = \"alias/…\"), or set create = true"),
        ('kms_key = "alias/aws/ebs"', "kms_key = 'alias/aws/ebs': expected a KMS key"),
        ('kms_key = "signing"', "kms_key = 'signing': expected a KMS key"),
        (
            'create = true\nkms_key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"',
            "with create = true, kms_key must be an alias",
        ),
        ('kms_key = "alias/x"\nkey_spec = "ECC_NIST_P384"', "key_spec applies to a key bootstrap creates"),
        ('create = true\nkey_spec = "RSA_2048"', "key_spec = 'RSA_2048': expected one of ECC_NIST_P256, ECC_NIST_P3"),
        ('kms_key = "alias/x"\nsign = true', "[signing]: unknown key 'sign'"),
    ],
)
def test_a_signing_table_aws_would_refuse_is_one_line(table: str, expected: str) -> None:
    with pytest.raises(OcimodelError) as raised:
        parse_config(CONFIG + f"\n[signing]\n{table}\n", "models.toml")
    assert expected in str(raised.value) and "\n" not in str(raised.value), str(raised.value)
    assert "more problem" not in str(raised.value)


def test_an_alias_arn_or_key_id_is_passed_to_the_build_as_written(aws: Clients, wheel: Path) -> None:
    arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/team-signing"
    plan = make_plan(aws, wheel, CONFIG + f'\n[signing]\nkms_key = "{arn}"\n')
    assert plan.settings.signing is not None and not plan.settings.signing.create
    assert p.build_command(plan.settings, plan.builds[0].model).endswith(f"--sign-kms-key {arn} --json")


def test_the_project_is_updated_when_signing_is_added(aws: Clients, wheel: Path) -> None:
    run_bootstrap(aws, make_plan(aws, wheel))
    patched = replace(aws, codebuild=Wrapped(aws.codebuild, update_project=moto_update_project(aws)))
    todo = run_bootstrap(patched, make_plan(aws, wheel, CREATE))
    actions = {(s.kind, s.name): s.action for s in todo}
    assert actions[("kms key", ALIAS)] == "create"
    assert actions[("iam policy", f"{ROLE}/{p.ROLE_POLICY_NAME}")] == "update"
    assert actions[("codebuild project", "ocimodel-acme-tiny")] == "update"
    assert _statement(_role_policy(aws)) is not None


def test_public_key_prints_the_pem_users_would_make_with_the_aws_cli_and_openssl(
    aws: Clients, wheel: Path, config_file: Path, tmp_path: Path
) -> None:
    run_bootstrap(aws, make_plan(aws, wheel, CREATE))
    config_file.write_text(CREATE)
    result = invoke("aws", "public-key", "--config", str(config_file))
    assert result.exit_code == 0, result.output
    der = tmp_path / "key.der"
    der.write_bytes(aws.kms.get_public_key(KeyId=ALIAS)["PublicKey"])
    assert result.stdout.encode() == openssl("pkey", "-pubin", "-inform", "DER", "-in", str(der))
    assert result.stdout.startswith("-----BEGIN PUBLIC KEY-----\n")

    config_file.write_text(CONFIG)
    unsigned = invoke("aws", "public-key", "--config", str(config_file))
    assert isinstance(unsigned.exception, OcimodelError) and "has no [signing] table" in str(unsigned.exception)
