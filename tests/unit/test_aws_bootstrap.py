"""``ocimodel aws`` against moto's in-process AWS: bootstrap, set-hf-token, build, status, teardown.

moto stands in for the account (``mock_aws``), the Hub look-alike of ``tests/harness/hub`` answers the size lookups,
and the wheel is a stand-in file (what is in it matters only to the buildspec test, which uses a real one). Where moto
lacks something AWS does, a thin wrapper around the boto3 client plays AWS's part, and says so: CodeBuild's
update_project (moto has none), builds that take time and log as they go (moto's builds succeed at once and never
log), IAM's propagation delay.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import constants

from ocimodel.aws import bootstrap, builds, hftoken, teardown
from ocimodel.aws import plan as p
from ocimodel.aws import session as aws_session
from ocimodel.aws.config import parse_config
from ocimodel.aws.modelsizes import hub_size
from ocimodel.aws.plan import Names
from ocimodel.aws.session import Clients, connect, whoami
from ocimodel.aws.steps import Step, apply, summary
from ocimodel.errors import OcimodelError
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
    Wrapped,
    client_error,
    invoke,
    make_plan,
    moto_update_project,
    run_bootstrap,
)

BUCKET = f"ocimodel-{ACCOUNT}-{REGION}"
PROJECTS = ["ocimodel-acme-tiny", "ocimodel-acme-fixed"]
REPOSITORIES = ["kserve-models/acme-tiny", "kserve-models/acme-fixed"]


def actions(todo: list[Step]) -> dict[tuple[str, str], str]:
    return {(s.kind, s.name): s.action for s in todo}


# --- bootstrap ----------------------------------------------------------------------------------------------------


def test_bootstrap_creates_every_resource_with_its_settings(aws: Clients, wheel: Path) -> None:
    plan = make_plan(aws, wheel)
    todo = run_bootstrap(aws, plan)
    assert [(s.kind, s.action) for s in todo] == [
        ("s3 bucket", "create"),
        ("s3 object", "upload"),
        ("ecr repository", "create"),
        ("ecr repository", "create"),
        ("iam role", "create"),
        ("iam policy", "create"),
        ("instance profile", "create"),
        ("log group", "create"),
        ("log group", "create"),
        ("codebuild project", "create"),
        ("codebuild project", "create"),
        ("secret", "missing"),
    ]

    s3 = aws.s3
    assert s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"] == p.PUBLIC_ACCESS_BLOCK
    rule = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.get_bucket_ownership_controls(Bucket=BUCKET)["OwnershipControls"]["Rules"] == [
        {"ObjectOwnership": "BucketOwnerEnforced"}
    ]
    assert s3.get_bucket_tagging(Bucket=BUCKET)["TagSet"] == [{"Key": "managed-by", "Value": "ocimodel"}]
    source = s3.get_object(Bucket=BUCKET, Key=p.SOURCE_KEY)
    assert source["ServerSideEncryption"] == "AES256"
    data = source["Body"].read()
    assert source["Metadata"]["sha256"] == plan.bundle.sha256 == hashlib.sha256(data).hexdigest()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == [wheel.name]
        assert archive.read(wheel.name) == wheel.read_bytes()

    for name in REPOSITORIES:
        (repo,) = aws.ecr.describe_repositories(repositoryNames=[name])["repositories"]
        assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
        assert repo["imageTagMutability"] == "MUTABLE"
        assert repo["encryptionConfiguration"]["encryptionType"] == "AES256"
        lifecycle = json.loads(aws.ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"])
        assert lifecycle == p.lifecycle_policy(plan.settings)
        assert lifecycle["rules"][1]["selection"]["countNumber"] == 10
        assert aws.ecr.list_tags_for_resource(resourceArn=repo["repositoryArn"])["tags"] == [
            {"Key": "managed-by", "Value": "ocimodel"}
        ]

    role = aws.iam.get_role(RoleName=ROLE)["Role"]
    assert role["AssumeRolePolicyDocument"] == p.trust_policy(plan.names)
    policy = aws.iam.get_role_policy(RoleName=ROLE, PolicyName="ocimodel-build")["PolicyDocument"]
    assert policy == p.role_policy(plan.names, plan.config.models)
    assert aws.iam.list_role_policies(RoleName=ROLE)["PolicyNames"] == ["ocimodel-build"]
    assert aws.iam.list_attached_role_policies(RoleName=ROLE)["AttachedPolicies"] == []

    for project in PROJECTS:
        (group,) = aws.logs.describe_log_groups(logGroupNamePrefix=f"/aws/codebuild/{project}")["logGroups"]
        assert group["retentionInDays"] == 30

    found = {x["name"]: x for x in aws.codebuild.batch_get_projects(names=PROJECTS)["projects"]}
    tiny, fixed = found["ocimodel-acme-tiny"], found["ocimodel-acme-fixed"]
    assert tiny["environment"]["privilegedMode"] is False
    assert tiny["environment"]["computeType"] == "BUILD_GENERAL1_SMALL"  # a few kB on the Hub
    assert tiny["timeoutInMinutes"] == 16
    assert (fixed["environment"]["computeType"], fixed["timeoutInMinutes"]) == ("BUILD_GENERAL1_MEDIUM", 30)
    assert tiny["serviceRole"] == f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"
    assert tiny["source"]["location"] == f"{BUCKET}/{p.SOURCE_KEY}"
    assert tiny["source"]["buildspec"] == p.buildspec(plan, plan.builds[0])
    assert tiny["logsConfig"]["cloudWatchLogs"] == {
        "status": "ENABLED",
        "groupName": "/aws/codebuild/ocimodel-acme-tiny",
    }
    assert tiny["tags"] == [{"key": "managed-by", "value": "ocimodel"}]


def test_hub_size_counts_only_the_files_the_model_keeps(aws: Clients) -> None:
    model = parse_config(CONFIG, "models.toml").models[0]
    files = TINY.at("main").files
    assert hub_size(model) == sum(len(data) for path, data in files.items() if not path.startswith("original/"))
    assert hub_size(replace(model, exclude=())) == sum(len(data) for data in files.values())
    with pytest.raises(OcimodelError, match="no file at main matches"):
        hub_size(replace(model, include=("*.gguf",)))
    with pytest.raises(OcimodelError, match="acme/missing not found"):
        hub_size(replace(model, id="acme/missing"))


def test_hub_size_offline_says_what_to_set_instead(aws: Clients, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OcimodelError, match="HF_HUB_OFFLINE is set.*unset it.*compute_type and timeout_minutes"):
        hub_size(parse_config(CONFIG, "models.toml").models[0])


def test_a_second_bootstrap_changes_nothing_and_says_so(aws: Clients, wheel: Path, config_file: Path) -> None:
    first = invoke("aws", "bootstrap", "--config", str(config_file), "--wheel", str(wheel))
    assert first.exit_code == 0, first.output
    assert first.stdout.strip().splitlines()[-1] == "bootstrap: 10 created, 1 uploaded"
    second = invoke("aws", "bootstrap", "--config", str(config_file), "--wheel", str(wheel))
    assert second.exit_code == 0, second.output
    assert second.stdout.strip().splitlines()[-1] == "bootstrap: nothing to change, everything is as the config says"
    header, *rows, _ = second.stdout.splitlines()
    column = header.index("ACTION")
    assert {row[column:].split()[0] for row in rows} == {"unchanged", "missing"}  # the HF token is not set yet


def test_dry_run_shows_the_plan_and_makes_no_mutating_call(
    aws: Clients, wheel: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    operations: list[str] = []

    def recording_connect(region: str | None) -> Clients:
        clients = connect(region)
        for client in (
            clients.ecr,
            clients.iam,
            clients.s3,
            clients.logs,
            clients.codebuild,
            clients.secrets,
            clients.sts,
        ):
            client.meta.events.register("before-call", lambda model, **kw: operations.append(model.name))
        return clients

    monkeypatch.setattr(aws_session, "connect", recording_connect)
    result = invoke("aws", "bootstrap", "--config", str(config_file), "--wheel", str(wheel), "--dry-run")
    assert result.exit_code == 0, result.output
    assert operations and all(op.startswith(("Get", "Describe", "List", "Head", "BatchGet")) for op in operations)
    assert aws.s3.list_buckets()["Buckets"] == []
    assert aws.ecr.describe_repositories()["repositories"] == []
    assert aws.iam.list_roles()["Roles"] == []
    assert aws.codebuild.list_projects()["projects"] == []
    assert aws.logs.describe_log_groups()["logGroups"] == []
    out = result.stdout
    assert "would create" in out and "BUILD_GENERAL1_SMALL, timeout 16 min" in out
    assert out.strip().endswith("dry run: 10 would create, 1 would upload (nothing was changed)")
    # The policy as JSON, exactly the document a real run puts.
    marker = f"# IAM role {ROLE}: inline policy ocimodel-build\n"
    shown = out[out.index(marker) + len(marker) :]
    document, _ = json.JSONDecoder().raw_decode(shown)
    assert document == p.role_policy(make_plan(aws, wheel).names, parse_config(CONFIG, "x").models)
    assert "# CodeBuild project ocimodel-acme-tiny: buildspec\nversion: 0.2" in out


def test_changed_settings_are_updated_in_place_and_then_settle(aws: Clients, wheel: Path) -> None:
    run_bootstrap(aws, make_plan(aws, wheel))
    changed = (
        CONFIG.replace(
            '[aws]\nregion = "us-east-1"\n',
            '[aws]\nregion = "us-east-1"\nkeep_images = 3\ntag_mutability = "IMMUTABLE"\nlog_retention_days = 60\n',
        ).replace("timeout_minutes = 30", "timeout_minutes = 45")
        + '\n[[models]]\nid = "acme/tiny"\nname = "tiny-v1"\nrevision = "v1"\nrepository = "kserve-models/tiny-v1"\n'
    )
    aws = replace(aws, codebuild=Wrapped(aws.codebuild, update_project=moto_update_project(aws)))
    plan = make_plan(aws, wheel, changed)
    todo = run_bootstrap(aws, plan)
    assert actions(todo) == {
        ("s3 bucket", BUCKET): "none",
        ("s3 object", f"s3://{BUCKET}/{p.SOURCE_KEY}"): "none",
        ("ecr repository", "kserve-models/acme-tiny"): "update",
        ("ecr repository", "kserve-models/acme-fixed"): "update",
        ("ecr repository", "kserve-models/tiny-v1"): "create",
        ("iam role", ROLE): "none",  # the trust names the prefix's projects: a new one is in it already
        ("iam policy", f"{ROLE}/ocimodel-build"): "update",  # its repository is allowed
        ("instance profile", f"ocimodel-snapshot-{REGION}"): "update",  # and pulled by aws snapshot
        ("log group", "/aws/codebuild/ocimodel-acme-tiny"): "update",
        ("log group", "/aws/codebuild/ocimodel-acme-fixed"): "update",
        ("log group", "/aws/codebuild/ocimodel-tiny-v1"): "create",
        ("codebuild project", "ocimodel-acme-tiny"): "none",
        ("codebuild project", "ocimodel-acme-fixed"): "update",
        ("codebuild project", "ocimodel-tiny-v1"): "create",
        ("secret", "ocimodel/hf-token"): "missing",
    }
    detail = {s.name: s.detail for s in todo}
    assert detail["kserve-models/acme-tiny"] == "set tag mutability IMMUTABLE, lifecycle policy"
    assert detail["ocimodel-acme-fixed"].startswith("set timeoutInMinutes:")
    (repo,) = aws.ecr.describe_repositories(repositoryNames=["kserve-models/acme-tiny"])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    lifecycle = json.loads(
        aws.ecr.get_lifecycle_policy(repositoryName="kserve-models/acme-tiny")["lifecyclePolicyText"]
    )
    assert lifecycle["rules"][1]["selection"]["countNumber"] == 3
    (group,) = aws.logs.describe_log_groups(logGroupNamePrefix="/aws/codebuild/ocimodel-acme-fixed")["logGroups"]
    assert group["retentionInDays"] == 60
    (fixed,) = aws.codebuild.batch_get_projects(names=["ocimodel-acme-fixed"])["projects"]
    assert fixed["timeoutInMinutes"] == 45
    policy = aws.iam.get_role_policy(RoleName=ROLE, PolicyName="ocimodel-build")["PolicyDocument"]
    (push,) = [s for s in policy["Statement"] if s["Sid"] == "EcrPush"]
    assert f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/kserve-models/tiny-v1" in push["Resource"]
    again = bootstrap.steps(aws, plan, FakeClock().clock)
    assert {s.action for s in again} == {"none", "missing"}


def test_a_new_wheel_is_uploaded_and_every_buildspec_follows_it(aws: Clients, wheel: Path, tmp_path: Path) -> None:
    run_bootstrap(aws, make_plan(aws, wheel))
    newer = tmp_path / "newer" / "ocimodel-0.2.0-py3-none-any.whl"
    newer.parent.mkdir()
    newer.write_bytes(b"another stand-in")
    aws = replace(aws, codebuild=Wrapped(aws.codebuild, update_project=moto_update_project(aws)))
    todo = run_bootstrap(aws, make_plan(aws, newer))
    changed = {(s.kind, s.name) for s in todo if s.action != "none" and s.action != "missing"}
    assert changed == {("s3 object", f"s3://{BUCKET}/{p.SOURCE_KEY}")} | {("codebuild project", x) for x in PROJECTS}
    (project,) = aws.codebuild.batch_get_projects(names=["ocimodel-acme-tiny"])["projects"]
    assert "OCIMODEL_WHEEL: ocimodel-0.2.0-py3-none-any.whl" in project["source"]["buildspec"]


def test_a_repository_encrypted_otherwise_stops_bootstrap_before_any_change(aws: Clients, wheel: Path) -> None:
    run_bootstrap(aws, make_plan(aws, wheel))
    kms = (
        CONFIG.replace("[aws]\n", '[aws]\nencryption = "KMS"\n')
        + '\n[[models]]\nid = "acme/other"\ntimeout_minutes = 20\ncompute_type = "BUILD_GENERAL1_SMALL"\n'
    )
    with pytest.raises(OcimodelError) as caught:
        bootstrap.steps(aws, make_plan(aws, wheel, kms))
    assert "ECR repository kserve-models/acme-tiny is encrypted with AES256 but the config asks for KMS" in str(
        caught.value
    )
    assert "kserve-models/acme-other" not in [
        r["repositoryName"] for r in aws.ecr.describe_repositories()["repositories"]
    ]


def test_kms_encrypted_repositories(aws: Clients, wheel: Path) -> None:
    key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    run_bootstrap(
        aws, make_plan(aws, wheel, CONFIG.replace("[aws]\n", f'[aws]\nencryption = "KMS"\nkms_key = "{key}"\n'))
    )
    (repo,) = aws.ecr.describe_repositories(repositoryNames=[REPOSITORIES[0]])["repositories"]
    assert repo["encryptionConfiguration"] == {"encryptionType": "KMS", "kmsKey": key}


#: How CodeBuild has worded a role it cannot use yet; retrying must not hang on one wording.
ROLE_REFUSALS = (
    "CodeBuild is not authorized to perform: sts:AssumeRole on {role}",
    "CodeBuild is unable to assume role {role}",
    "Not authorised to perform sts:AssumeRole",
    "The service role {role} is not authorized for this project",
)


def refusing_create_project(aws: Clients, clock: FakeClock, until: float) -> Callable[..., Any]:
    """CodeBuild's create_project refusing the role, in its various wordings, until ``until`` seconds have passed."""
    real = aws.codebuild.create_project
    calls = iter(range(1_000))

    def create_project(**request: Any) -> Any:
        if clock.now() < until:
            wording = ROLE_REFUSALS[next(calls) % len(ROLE_REFUSALS)]
            raise client_error("InvalidInputException", wording.format(role=request["serviceRole"]), "CreateProject")
        return real(**request)

    return create_project


def test_projects_wait_for_a_new_role_to_become_assumable(aws: Clients, wheel: Path) -> None:
    """IAM is eventually consistent: CodeBuild refuses a role it cannot use yet, in several wordings, for minutes
    at worst, and bootstrap retries for up to three."""
    fake = FakeClock()
    clients = replace(aws, codebuild=Wrapped(aws.codebuild, create_project=refusing_create_project(aws, fake, 150)))
    run_bootstrap(clients, make_plan(aws, wheel), fake.clock)
    assert sorted(aws.codebuild.list_projects()["projects"]) == sorted(PROJECTS)
    assert 150 <= fake.time <= bootstrap.ROLE_PROPAGATION_SECONDS
    assert fake.waits[0] == bootstrap.ROLE_PROPAGATION_DELAY_SECONDS and max(fake.waits) <= 30


def test_a_role_never_usable_fails_after_three_minutes_and_other_refusals_at_once(aws: Clients, wheel: Path) -> None:
    fake = FakeClock()
    clients = replace(aws, codebuild=Wrapped(aws.codebuild, create_project=refusing_create_project(aws, fake, 1e9)))
    with pytest.raises(OcimodelError, match="^cannot create codebuild project ocimodel-acme-tiny: AWS said Invalid"):
        run_bootstrap(clients, make_plan(aws, wheel), fake.clock)
    assert bootstrap.ROLE_PROPAGATION_SECONDS - 30 <= fake.time <= bootstrap.ROLE_PROPAGATION_SECONDS

    def bad_input(**request: Any) -> Any:
        raise client_error("InvalidInputException", "Invalid compute type", "CreateProject")

    fake = FakeClock()
    clients = replace(aws, codebuild=Wrapped(aws.codebuild, create_project=bad_input))
    with pytest.raises(OcimodelError, match="Invalid compute type"):
        run_bootstrap(clients, make_plan(aws, wheel), fake.clock)
    assert fake.waits == []


def test_a_bucket_name_taken_by_another_account_is_explained(aws: Clients, wheel: Path) -> None:
    def head_bucket(**kw: Any) -> Any:
        raise client_error("403", "Forbidden", "HeadBucket")

    clients = replace(aws, s3=Wrapped(aws.s3, head_bucket=head_bucket))
    with pytest.raises(
        OcimodelError,
        match=f"S3 bucket {BUCKET} exists but this identity may not read it: another account owns it.*prefix",
    ):
        bootstrap.steps(clients, make_plan(aws, wheel))


def test_aws_failures_are_one_line_naming_the_step(aws: Clients, wheel: Path) -> None:
    def put_lifecycle_policy(**kw: Any) -> Any:
        raise client_error(
            "AccessDeniedException", "User: x is not authorized to perform: ecr:PutLifecyclePolicy", "Put"
        )

    clients = replace(aws, ecr=Wrapped(aws.ecr, put_lifecycle_policy=put_lifecycle_policy))
    with pytest.raises(OcimodelError) as caught:
        run_bootstrap(clients, make_plan(aws, wheel))
    assert str(caught.value) == (
        "cannot create ecr repository kserve-models/acme-tiny: AWS said AccessDeniedException: User: x is not "
        "authorized to perform: ecr:PutLifecyclePolicy; the AWS identity lacks a permission"
    )


def test_no_credentials_is_explained(
    aws: Clients, monkeypatch: pytest.MonkeyPatch, config_file: Path, wheel: Path
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = invoke("aws", "status", "--config", str(config_file))
    assert isinstance(result.exception, OcimodelError)
    assert "no AWS credentials" in str(result.exception) and "AWS_PROFILE" in str(result.exception)


# --- the HF token ---------------------------------------------------------------------------------------------------


def test_set_hf_token_stores_stdin_and_never_prints_it(aws: Clients, config_file: Path) -> None:
    first = invoke("aws", "set-hf-token", "--config", str(config_file), input=TOKEN + "\n")
    assert first.exit_code == 0, first.output
    assert first.stdout == f"created secret ocimodel/hf-token in {REGION}\n"
    assert aws.secrets.get_secret_value(SecretId="ocimodel/hf-token")["SecretString"] == TOKEN
    tags = aws.secrets.describe_secret(SecretId="ocimodel/hf-token")["Tags"]
    assert {"Key": "managed-by", "Value": "ocimodel"} in tags
    second = invoke("aws", "set-hf-token", "--config", str(config_file), input="hf_newer\n")
    assert second.stdout == f"updated secret ocimodel/hf-token in {REGION}\n"
    assert aws.secrets.get_secret_value(SecretId="ocimodel/hf-token")["SecretString"] == "hf_newer"
    assert TOKEN not in first.output + second.output and "hf_newer" not in second.output


def test_set_hf_token_refuses_empty_input_and_a_config_without_token(aws: Clients, config_file: Path) -> None:
    empty = invoke("aws", "set-hf-token", "--config", str(config_file), input="\n")
    assert isinstance(empty.exception, OcimodelError) and "no token on stdin" in str(empty.exception)
    config_file.write_text(CONFIG.replace("[aws]\n", "[aws]\nhf_token = false\n"))
    off = invoke("aws", "set-hf-token", "--config", str(config_file), input=TOKEN)
    assert isinstance(off.exception, OcimodelError) and "hf_token = false" in str(off.exception)


def test_a_secret_scheduled_for_deletion_is_restored(aws: Clients) -> None:
    hftoken.store(aws.secrets, "team/hf", "hf_one")
    aws.secrets.delete_secret(SecretId="team/hf", RecoveryWindowInDays=7)
    assert not bootstrap.secret_exists(aws.secrets, "team/hf")
    assert hftoken.store(aws.secrets, "team/hf", "hf_two") == "updated"
    assert aws.secrets.get_secret_value(SecretId="team/hf")["SecretString"] == "hf_two"


# --- build and status ---------------------------------------------------------------------------------------------


def result_line(digest: str) -> str:
    uri = f"oci://{REGISTRY}/kserve-models/acme-tiny@{digest}"
    return json.dumps({"reference": uri.removeprefix("oci://"), "digest": digest, "uri": uri, "blobs": []})


DIGEST = "sha256:" + "c" * 64


def test_follow_echoes_the_log_live_until_the_build_ends(aws: Clients, wheel: Path) -> None:
    plan = make_plan(aws, wheel)
    run_bootstrap(aws, plan)
    model = plan.config.models[0]
    fake = FakeBuild(
        aws,
        batches=[
            ["[Container] Entering phase INSTALL"],
            ["Successfully installed ocimodel-0.1.0", "hashing"],
            [result_line(DIGEST), "done"],
        ],
        statuses=[builds.IN_PROGRESS, builds.IN_PROGRESS, builds.IN_PROGRESS, builds.SUCCEEDED],
    )
    clients = fake.wrap()
    build_id = builds.start(clients, plan.names, model)
    assert build_id.startswith("ocimodel-acme-tiny:")
    seen: list[str] = []
    finished = builds.follow(clients, build_id, plan.names.log_group(model), seen.append, fake.sleep, 0)
    assert seen == [
        "[Container] Entering phase INSTALL",
        "Successfully installed ocimodel-0.1.0",
        "hashing",
        result_line(DIGEST),
        "done",
    ]
    assert fake.waits == [0, 0, 0]
    assert finished == builds.Finished(
        build_id, "SUCCEEDED", f"oci://{REGISTRY}/kserve-models/acme-tiny@{DIGEST}", None
    )


def test_the_cli_follows_a_failed_build_and_exits_with_its_reason(
    aws: Clients, wheel: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_bootstrap(aws, make_plan(aws, wheel))
    hftoken.store(aws.secrets, "ocimodel/hf-token", TOKEN)
    fake = FakeBuild(
        aws,
        batches=[["ocimodel: error: acme/tiny is gated"]],
        statuses=[builds.IN_PROGRESS, "FAILED"],
        phases=[
            {
                "phaseType": "BUILD",
                "phaseStatus": "FAILED",
                "contexts": [
                    {
                        "statusCode": "COMMAND_EXECUTION_ERROR",
                        "message": "Error while executing command: python3 -m ocimodel build. Reason: exit status 1",
                    }
                ],
            }
        ],
    )
    monkeypatch.setattr(aws_session, "connect", lambda region: fake.wrap())
    result = invoke("aws", "build", "acme/tiny", "--config", str(config_file), "--poll-interval", "0")
    assert isinstance(result.exception, OcimodelError)
    assert str(result.exception) == (
        f"build {fake.build_id} ended FAILED (phase BUILD FAILED: Error while executing command: python3 -m ocimodel "
        "build. Reason: exit status 1); its log is above"
    )
    assert "ocimodel: error: acme/tiny is gated" in result.stderr
    assert result.stdout == ""


def test_the_cli_prints_the_uri_from_ecr_when_the_log_has_none(
    aws: Clients, wheel: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_bootstrap(aws, make_plan(aws, wheel))
    hftoken.store(aws.secrets, "ocimodel/hf-token", TOKEN)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []})
    digest = aws.ecr.put_image(repositoryName="kserve-models/acme-tiny", imageManifest=manifest, imageTag="latest")[
        "image"
    ]["imageId"]["imageDigest"]
    fake = FakeBuild(aws, batches=[[]], statuses=[builds.SUCCEEDED])
    monkeypatch.setattr(aws_session, "connect", lambda region: fake.wrap())
    result = invoke("aws", "build", "acme-tiny", "--config", str(config_file), "--poll-interval", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"oci://{REGISTRY}/kserve-models/acme-tiny@{digest}\n"


def test_build_no_follow_prints_the_build_id(aws: Clients, wheel: Path, config_file: Path) -> None:
    run_bootstrap(aws, make_plan(aws, wheel))
    hftoken.store(aws.secrets, "ocimodel/hf-token", TOKEN)
    result = invoke("aws", "build", "kserve-models/acme-tiny", "--config", str(config_file), "--no-follow")
    assert result.exit_code == 0, result.output
    (build_id,) = aws.codebuild.list_builds_for_project(projectName="ocimodel-acme-tiny")["ids"]
    assert result.stdout == f"{build_id}\n"


def test_build_refuses_what_cannot_work(aws: Clients, wheel: Path, config_file: Path) -> None:
    unknown = invoke("aws", "build", "acme/nope", "--config", str(config_file))
    assert isinstance(unknown.exception, OcimodelError) and "acme-tiny, acme-fixed" in str(unknown.exception)
    no_token = invoke("aws", "build", "acme/tiny", "--config", str(config_file))
    assert isinstance(no_token.exception, OcimodelError) and "ocimodel aws set-hf-token" in str(no_token.exception)
    hftoken.store(aws.secrets, "ocimodel/hf-token", TOKEN)
    no_project = invoke("aws", "build", "acme/tiny", "--config", str(config_file))
    assert isinstance(no_project.exception, OcimodelError)
    assert "CodeBuild project ocimodel-acme-tiny does not exist: run ocimodel aws bootstrap" in str(
        no_project.exception
    )


def test_status_lists_each_models_last_build_and_image(aws: Clients, wheel: Path, config_file: Path) -> None:
    run_bootstrap(aws, make_plan(aws, wheel))
    build_id = aws.codebuild.start_build(projectName="ocimodel-acme-tiny")["build"]["id"]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []})
    digest = aws.ecr.put_image(repositoryName="kserve-models/acme-tiny", imageManifest=manifest, imageTag="latest")[
        "image"
    ]["imageId"]["imageDigest"]
    result = invoke("aws", "status", "--config", str(config_file))
    assert result.exit_code == 0, result.output
    header, tiny, fixed = result.stdout.splitlines()
    assert header.split() == ["MODEL", "PROJECT", "LAST", "BUILD", "STATUS", "STARTED", "IMAGE"]
    words = tiny.split()
    assert words[:4] == ["acme/tiny", "ocimodel-acme-tiny", build_id, "SUCCEEDED"]
    assert words[-1] == f"oci://{REGISTRY}/kserve-models/acme-tiny@{digest}"
    assert fixed.split()[:3] == ["acme/fixed", "ocimodel-acme-fixed", "-"] and "never built" in fixed


# --- teardown -----------------------------------------------------------------------------------------------------


def test_teardown_needs_yes(aws: Clients, config_file: Path) -> None:
    result = invoke("aws", "teardown", "--config", str(config_file))
    assert isinstance(result.exception, OcimodelError) and "--yes" in str(result.exception)


def test_teardown_removes_what_bootstrap_made_and_keeps_images(aws: Clients, wheel: Path, config_file: Path) -> None:
    run_bootstrap(aws, make_plan(aws, wheel))
    hftoken.store(aws.secrets, "ocimodel/hf-token", TOKEN)
    result = invoke("aws", "teardown", "--config", str(config_file), "--yes")
    assert result.exit_code == 0, result.output
    assert aws.codebuild.list_projects()["projects"] == []
    assert aws.logs.describe_log_groups()["logGroups"] == []
    assert aws.iam.list_roles()["Roles"] == []
    assert aws.s3.list_buckets()["Buckets"] == []
    assert aws.secrets.list_secrets()["SecretList"] == []
    assert sorted(r["repositoryName"] for r in aws.ecr.describe_repositories()["repositories"]) == sorted(REPOSITORIES)
    assert "kept" in result.stdout and "--delete-images deletes it" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "teardown: 8 deleted"

    images = invoke("aws", "teardown", "--config", str(config_file), "--yes", "--delete-images")
    assert images.exit_code == 0, images.output
    assert aws.ecr.describe_repositories()["repositories"] == []
    assert images.stdout.strip().splitlines()[-1] == "teardown: 2 deleted"
    again = invoke("aws", "teardown", "--config", str(config_file), "--yes", "--delete-images")
    assert again.stdout.strip().splitlines()[-1] == "teardown: nothing to change, everything is as the config says"


def test_teardown_keeps_a_secret_ocimodel_did_not_create(aws: Clients, wheel: Path) -> None:
    aws.secrets.create_secret(Name="ocimodel/hf-token", SecretString="hf_theirs")
    config = parse_config(CONFIG, "models.toml")
    todo = teardown.steps(aws, config, Names(config.aws, whoami(aws)), delete_images=False)
    (secret,) = [s for s in todo if s.kind == "secret"]
    assert (secret.action, secret.detail) == ("keep", "not created by ocimodel")
    apply(todo)
    assert aws.secrets.get_secret_value(SecretId="ocimodel/hf-token")["SecretString"] == "hf_theirs"
    assert summary(todo, True, "teardown") == "teardown: nothing to change, everything is as the config says"


def test_teardown_keeps_a_role_and_bucket_ocimodel_did_not_create(aws: Clients) -> None:
    config = parse_config(CONFIG, "models.toml")
    names = Names(config.aws, whoami(aws))
    aws.iam.create_role(RoleName=names.role, AssumeRolePolicyDocument="{}")
    aws.s3.create_bucket(Bucket=names.bucket)
    todo = teardown.steps(aws, config, names, delete_images=False)
    kept = {s.kind: (s.action, s.detail) for s in todo if s.kind in ("iam role", "s3 bucket")}
    assert kept == {"iam role": ("keep", "not created by ocimodel"), "s3 bucket": ("keep", "not created by ocimodel")}
    apply(todo)
    assert [r["RoleName"] for r in aws.iam.list_roles()["Roles"]] == [names.role]
    assert [b["Name"] for b in aws.s3.list_buckets()["Buckets"]] == [names.bucket]


def test_the_account_comes_from_sts(aws: Clients) -> None:
    account = whoami(aws)
    assert (account.id, account.region, account.partition, account.registry) == (ACCOUNT, REGION, "aws", REGISTRY)
