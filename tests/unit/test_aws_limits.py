"""What AWS refuses and moto accepts, and what moto never does: every request checked against botocore's own
service models, IAM's policy quotas at 200 models, and faults injected where AWS is eventually consistent or
enforces a quota (a secret still being deleted, a build queue of 0, an immutable tag, a layer over ECR's maximum).

moto checks no length, pattern or enum, so a botocore event hook (``before-parameter-build``) walks each request's
input shape from ``client.meta.service_model`` (``ocimodel.aws.shapes``) and the tests assert it found nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import moto.codebuild.responses as moto_codebuild
import pytest

from ocimodel.aws import bootstrap, hftoken, modelsizes, shapes
from ocimodel.aws import plan as p
from ocimodel.aws import session as aws_session
from ocimodel.aws.config import ModelSpec, parse_config
from ocimodel.aws.plan import Names, Plan, model_build
from ocimodel.aws.session import Clients, connect, whoami
from ocimodel.aws.wheel import bundle
from ocimodel.errors import OcimodelError
from ocimodel.source.hub import HubFile
from tests.harness.aws import (
    ACCOUNT,
    CONFIG,
    REGION,
    REGISTRY,
    ROLE,
    TINY,
    TOKEN,
    FakeBuild,
    FakeClock,
    ShapeCheck,
    Wrapped,
    checking,
    client_error,
    invoke,
    make_plan,
    moto_update_project,
    run_bootstrap,
)

SERVICES = ("ecr", "iam", "s3", "logs", "codebuild", "secrets", "sts", "kms")


@pytest.fixture
def checked(aws: Clients) -> Iterator[ShapeCheck]:
    with checking(aws, SERVICES, ShapeCheck()) as check:
        yield check


def long_id(suffix: str) -> str:
    """A valid Hub id as long as they come (96 + 1 + 96 characters)."""
    return f"{'o' * 96}/{'m' * (95 - len(suffix))}-{suffix}"


LONG = f"""
[[models]]
id = "{long_id('one')}"
revision = "release/{'r' * 200}"
compute_type = "BUILD_GENERAL1_SMALL"
timeout_minutes = 20

[[models]]
id = "{long_id('two')}"
compute_type = "BUILD_GENERAL1_SMALL"
timeout_minutes = 20
"""


def test_every_request_of_every_command_fits_botocores_model(
    aws: Clients, checked: ShapeCheck, wheel: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file.write_text(CONFIG + LONG)
    # moto refuses the 150-character project names AWS accepts (its check is ``len(name) >= 150``).
    moto_check = moto_codebuild._validate_required_params_project_name
    monkeypatch.setattr(
        moto_codebuild, "_validate_required_params_project_name", lambda name: moto_check(name[:149])
    )

    def update_project(**request: Any) -> Any:
        checked.check(aws.codebuild, "UpdateProject", request)
        return moto_update_project(aws)(**request)

    wrapped = replace(aws, codebuild=Wrapped(aws.codebuild, update_project=update_project))
    monkeypatch.setattr(aws_session, "connect", lambda region: wrapped)
    common = ("--config", str(config_file))

    def ok(*args: str, input: str | None = None) -> str:
        result = invoke(*args, input=input)
        assert result.exit_code == 0, result.output
        return result.stdout

    ok("aws", "bootstrap", *common, "--wheel", str(wheel), "--dry-run")
    ok("aws", "bootstrap", *common, "--wheel", str(wheel))
    config_file.write_text(CONFIG.replace("timeout_minutes = 30", "timeout_minutes = 45") + LONG)
    assert "updated" in ok("aws", "bootstrap", *common, "--wheel", str(wheel))
    ok("aws", "set-hf-token", *common, input=TOKEN + "\n")
    ok("aws", "build", "acme/tiny", *common, "--no-follow")
    ok("aws", "status", *common)
    ok("aws", "teardown", *common, "--yes", "--delete-images")
    ok("aws", "set-hf-token", *common, input=TOKEN + "\n")

    assert checked.problems == []
    for operation in (
        "CreateBucket", "PutObject", "CreateRepository", "PutLifecyclePolicy", "CreateRole", "PutRolePolicy",
        "CreateLogGroup", "PutRetentionPolicy", "CreateProject", "UpdateProject", "CreateSecret", "StartBuild",
        "ListBuildsForProject", "BatchGetBuilds", "DeleteProject", "DeleteLogGroup", "DeleteRole", "DeleteBucket",
        "DeleteSecret", "DeleteRepository",
    ):
        assert operation in checked.operations
    projects = aws.codebuild.list_projects()["projects"]
    assert projects == []  # torn down; while they existed the hook saw their names, all within 150 characters


def test_the_walker_finds_what_aws_refuses(aws: Clients) -> None:
    """The check itself must fail where AWS does: a check that passes everything would pass the test above."""
    model = aws.codebuild.meta.service_model
    request = {
        "name": "n" * 151,
        "description": "d" * 256,
        "source": {"type": "S3"},
        "environment": {"type": "LINUX_CONTAINER", "image": "x", "computeType": "BUILD_GENERAL1_HUGE"},
        "serviceRole": "arn",
        "timeoutInMinutes": 2161,
        "tags": [{"key": "bad\u0000key", "value": "ok"}],
        "colour": "blue",
    }
    found = shapes.check_request(model, "CreateProject", request)
    for needle in (
        "CreateProject.name: 151 characters, more than 150",
        "CreateProject.description: 256 characters, more than 255",
        "CreateProject.artifacts: required",
        "CreateProject.environment.computeType: 'BUILD_GENERAL1_HUGE' is not one of",
        "CreateProject.timeoutInMinutes: 2161 is outside 5..2160",
        "CreateProject.tags[0].key: 'bad\\x00key' does not match",
        "CreateProject.colour: not a member",
    ):
        assert any(problem.startswith(needle) for problem in found), (needle, found)
    assert shapes.check_request(model, "BatchGetProjects", {"names": ["p"] * 101}) == [
        "BatchGetProjects.names: 101 items, more than 100"
    ]
    leading = shapes.check_request(model, "CreateProject", {**request, "name": "-leading"})
    assert any(problem.startswith("CreateProject.name: '-leading' does not match") for problem in leading)


def test_a_plan_aws_would_refuse_is_refused_before_any_call(aws: Clients, checked: ShapeCheck, wheel: Path) -> None:
    """The config refuses such a name itself; this is the net under it, for whatever a later change generates."""
    config = parse_config(CONFIG, "models.toml")
    too_long = ModelSpec(
        id="acme/tiny",
        name="n" * 160,
        repository="kserve-models/acme-tiny",
        compute_type="BUILD_GENERAL1_SMALL",
        timeout_minutes=20,
    )
    plan = Plan(config, Names(config.aws, whoami(aws)), (model_build(too_long, None),), bundle(wheel))
    checked.operations.clear()
    with pytest.raises(OcimodelError) as caught:
        bootstrap.check(plan, aws)
    assert str(caught.value).startswith(
        "AWS would refuse what this config makes: CreateProject.name: 169 characters, more than 150 (and "
    )
    assert str(caught.value).endswith("; nothing was changed")
    assert checked.operations == []


def iam_size(text: Any) -> int:
    """A policy's size as IAM counts it: without whitespace."""
    document = text if isinstance(text, str) else json.dumps(text)
    return len(re.sub(r"\s", "", document))


def test_two_hundred_models_keep_every_policy_within_iams_limits(
    aws: Clients, checked: ShapeCheck, wheel: Path
) -> None:
    models = "".join(
        f'[[models]]\nid = "organisation-{i:03d}/a-fairly-long-model-name-{i:03d}-instruct-bf16"\n'
        f'compute_type = "BUILD_GENERAL1_SMALL"\ntimeout_minutes = 60\n'
        for i in range(200)
    )
    plan = make_plan(aws, wheel, '[aws]\nregion = "us-east-1"\n' + models)
    bootstrap.check(plan, aws)
    run_bootstrap(aws, plan)
    trust = aws.iam.get_role(RoleName=ROLE)["Role"]["AssumeRolePolicyDocument"]
    inline = [
        aws.iam.get_role_policy(RoleName=ROLE, PolicyName=name)["PolicyDocument"]
        for name in aws.iam.list_role_policies(RoleName=ROLE)["PolicyNames"]
    ]
    assert iam_size(trust) <= p.TRUST_POLICY_MAX
    assert sum(iam_size(document) for document in inline) <= p.INLINE_POLICIES_MAX
    assert len(aws.codebuild.list_projects()["projects"]) == 200
    assert checked.problems == []  # BatchGetProjects, among others, takes at most 100 names


def test_a_secret_still_being_deleted_is_stored_once_aws_lets_it(aws: Clients) -> None:
    """Secrets Manager deletes a force-deleted secret in the background; until then its name cannot be reused."""
    fake = FakeClock()
    real = aws.secrets.create_secret
    refused: list[float] = []

    def create_secret(**request: Any) -> Any:
        if fake.now() < 9:
            refused.append(fake.now())
            raise client_error(
                "InvalidRequestException",
                "You can't create this secret because a secret with this name is already scheduled for deletion.",
                "CreateSecret",
            )
        return real(**request)

    secrets = Wrapped(aws.secrets, create_secret=create_secret)
    assert hftoken.store(secrets, "ocimodel/hf-token", TOKEN, fake.clock) == "created"
    assert len(refused) >= 2 and aws.secrets.get_secret_value(SecretId="ocimodel/hf-token")["SecretString"] == TOKEN

    def never(**request: Any) -> Any:
        raise client_error("InvalidRequestException", "already scheduled for deletion", "CreateSecret")

    fake = FakeClock()
    with pytest.raises(OcimodelError, match="store the HF token in secret team/hf: AWS said InvalidRequestException"):
        hftoken.store(Wrapped(aws.secrets, create_secret=never), "team/hf", TOKEN, fake.clock)
    assert hftoken.DELETION_WAIT_SECONDS - 30 <= fake.time <= hftoken.DELETION_WAIT_SECONDS


def test_a_kms_key_named_by_alias_is_compared_as_the_arn_ecr_stores(aws: Clients, wheel: Path) -> None:
    key = aws.kms.create_key()["KeyMetadata"]
    aws.kms.create_alias(AliasName="alias/models", TargetKeyId=key["KeyId"])
    # ECR stores the key's ARN whatever the request named (moto keeps the name as given, so it is created so here).
    for name in ("kserve-models/acme-tiny", "kserve-models/acme-fixed"):
        aws.ecr.create_repository(
            repositoryName=name, encryptionConfiguration={"encryptionType": "KMS", "kmsKey": key["Arn"]}
        )
    for named in ("alias/models", key["KeyId"], key["Arn"]):
        text = CONFIG.replace("[aws]\n", f'[aws]\nencryption = "KMS"\nkms_key = "{named}"\n')
        todo = bootstrap.steps(aws, make_plan(aws, wheel, text), FakeClock().clock)
        assert {s.action for s in todo if s.kind == "ecr repository"} == {"update"}  # lifecycle etc., not refused
    other = aws.kms.create_key()["KeyMetadata"]
    text = CONFIG.replace("[aws]\n", f'[aws]\nencryption = "KMS"\nkms_key = "{other["KeyId"]}"\n')
    with pytest.raises(OcimodelError, match="is encrypted with KMS"):
        bootstrap.steps(aws, make_plan(aws, wheel, text), FakeClock().clock)


def test_bootstrap_leaves_the_policies_of_a_role_it_did_not_create(aws: Clients, wheel: Path) -> None:
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "codebuild.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    aws.iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))
    theirs = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]}
    aws.iam.put_role_policy(RoleName=ROLE, PolicyName="ocimodel-build", PolicyDocument=json.dumps(theirs))
    todo = run_bootstrap(aws, make_plan(aws, wheel))
    kept = {s.kind: s.action for s in todo if s.kind.startswith("iam")}
    assert kept == {"iam role": "keep", "iam policy": "keep"}
    assert aws.iam.get_role(RoleName=ROLE)["Role"]["AssumeRolePolicyDocument"] == trust
    assert aws.iam.get_role_policy(RoleName=ROLE, PolicyName="ocimodel-build")["PolicyDocument"] == theirs


def test_teardown_deletes_only_repositories_bootstrap_created(aws: Clients, wheel: Path, config_file: Path) -> None:
    aws.ecr.create_repository(repositoryName="kserve-models/acme-fixed")  # the team's, made before ocimodel
    run_bootstrap(aws, make_plan(aws, wheel))
    result = invoke("aws", "teardown", "--config", str(config_file), "--yes", "--delete-images")
    assert result.exit_code == 0, result.output
    assert [r["repositoryName"] for r in aws.ecr.describe_repositories()["repositories"]] == [
        "kserve-models/acme-fixed"
    ]
    assert "not created by ocimodel" in result.stdout


# --- aws build: what is refused or done before a build starts ------------------------------------------------------


def started_builds(aws: Clients) -> list[str]:
    return aws.codebuild.list_builds()["ids"]


def immutable_with(aws: Clients, wheel: Path, annotations: dict[str, str]) -> str:
    run_bootstrap(aws, make_plan(aws, wheel, CONFIG.replace("[aws]\n", '[aws]\ntag_mutability = "IMMUTABLE"\n')))
    hftoken.store(aws.secrets, "ocimodel/hf-token", TOKEN)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "0" * 64, "size": 2},
        "layers": [],
        "annotations": annotations,
    }
    pushed = aws.ecr.put_image(
        repositoryName="kserve-models/acme-tiny", imageManifest=json.dumps(manifest), imageTag="latest"
    )
    return str(pushed["image"]["imageId"]["imageDigest"])


def test_an_immutable_tag_holding_this_build_is_done_without_a_build(
    aws: Clients, wheel: Path, config_file: Path
) -> None:
    model = parse_config(CONFIG, "x").models[0]
    fingerprint = p.options_fingerprint(parse_config(CONFIG, "x").aws, model)
    digest = immutable_with(
        aws, wheel, {"org.opencontainers.image.revision": TINY.at("main").sha, p.OPTIONS_ANNOTATION: fingerprint}
    )
    config_file.write_text(CONFIG.replace("[aws]\n", '[aws]\ntag_mutability = "IMMUTABLE"\n'))
    result = invoke("aws", "build", "acme/tiny", "--config", str(config_file))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"oci://{REGISTRY}/kserve-models/acme-tiny@{digest}\n"
    assert "holds this build already" in result.stderr
    assert started_builds(aws) == []


def test_an_immutable_tag_holding_another_build_stops_at_once(aws: Clients, wheel: Path, config_file: Path) -> None:
    digest = immutable_with(aws, wheel, {"org.opencontainers.image.revision": "f" * 40})
    config_file.write_text(CONFIG)
    result = invoke("aws", "build", "acme/tiny", "--config", str(config_file))
    assert isinstance(result.exception, OcimodelError)
    message = str(result.exception)
    assert message.startswith(
        f"ECR repository kserve-models/acme-tiny keeps tag latest immutable, and it already holds {digest} "
        "(built from commit ffffffffffff"
    )
    assert "give the model another tag" in message
    assert started_builds(aws) == []


def test_a_file_making_a_layer_over_ecrs_maximum_is_refused_before_the_build(
    aws: Clients, wheel: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_bootstrap(aws, make_plan(aws, wheel))
    hftoken.store(aws.secrets, "ocimodel/hf-token", TOKEN)
    real_open = modelsizes._open

    def listed_with_a_huge_file(model: ModelSpec) -> Any:
        """The Hub listing as it would be with a 53,000 MiB shard (a test cannot serve one)."""
        source = real_open(model)
        huge = HubFile("model-00001-of-00002.safetensors", 53_000 << 20, "a" * 64)
        return replace(source, listing=(*(source.listing or ()), huge))

    monkeypatch.setattr(modelsizes, "_open", listed_with_a_huge_file)
    result = invoke("aws", "build", "acme/tiny", "--config", str(config_file))
    assert isinstance(result.exception, OcimodelError)
    assert str(result.exception).startswith(
        "model acme/tiny: model-00001-of-00002.safetensors makes a layer of 51.8 GiB, over ECR's maximum of 50.8 GiB"
    )
    assert started_builds(aws) == []


def test_a_build_queue_quota_of_zero_is_explained(
    aws: Clients, wheel: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_bootstrap(aws, make_plan(aws, wheel))
    hftoken.store(aws.secrets, "ocimodel/hf-token", TOKEN)

    def start_build(**request: Any) -> Any:
        raise client_error(
            "AccountLimitExceededException", "Cannot have more than 0 builds in queue for the account", "StartBuild"
        )

    monkeypatch.setattr(
        aws_session, "connect", lambda region: replace(aws, codebuild=Wrapped(aws.codebuild, start_build=start_build))
    )
    result = invoke("aws", "build", "acme/tiny", "--config", str(config_file))
    assert isinstance(result.exception, OcimodelError)
    message = str(result.exception)
    assert "Cannot have more than 0 builds in queue" in message
    assert "quota of concurrent builds on BUILD_GENERAL1_SMALL" in message and "compute_type" in message


def test_a_build_refused_by_a_policy_still_propagating_says_so(
    aws: Clients, wheel: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_bootstrap(aws, make_plan(aws, wheel))
    hftoken.store(aws.secrets, "ocimodel/hf-token", TOKEN)
    fake = FakeBuild(
        aws,
        batches=[[]],
        statuses=["FAILED"],
        phases=[
            {
                "phaseType": "DOWNLOAD_SOURCE",
                "phaseStatus": "CLIENT_ERROR",
                "contexts": [{"message": "AccessDenied: Access Denied for object codebuild/ocimodel-source.zip"}],
            }
        ],
    )
    monkeypatch.setattr(aws_session, "connect", lambda region: fake.wrap())
    result = invoke("aws", "build", "acme/tiny", "--config", str(config_file), "--poll-interval", "0")
    assert isinstance(result.exception, OcimodelError)
    assert "IAM may not have propagated it yet" in str(result.exception)
    assert "run ocimodel aws build again" in str(result.exception)


def test_fips_endpoints_give_the_fips_registry(aws: Clients, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    clients = connect(REGION)
    assert clients.fips
    account = p.Account(ACCOUNT, REGION, fips=clients.fips)
    assert account.registry == f"{ACCOUNT}.dkr.ecr-fips.{REGION}.amazonaws.com"
    monkeypatch.delenv("AWS_USE_FIPS_ENDPOINT")
    assert not connect(REGION).fips
