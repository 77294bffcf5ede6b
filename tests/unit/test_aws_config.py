"""``models.toml`` validation, the compute-type and timeout rules, and the documents the plan produces (pure code)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
import zipfile
from pathlib import Path

import pytest
import yaml

from ocimodel.aws import plan as p
from ocimodel.aws.config import Config, load_config, parse_config, slug
from ocimodel.aws.plan import Account, Names, Plan, model_build
from ocimodel.aws.sizing import GB, compute_type_for, timeout_for
from ocimodel.aws.wheel import Bundle, bundle
from ocimodel.errors import OcimodelError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "models.toml"
ACCOUNT = Account("123456789012", "us-east-1")


def config(text: str) -> Config:
    return parse_config(text, "models.toml")


def error(text: str) -> str:
    with pytest.raises(OcimodelError) as caught:
        config(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- config -------------------------------------------------------------------------------------------------------


def test_the_example_reproduces_the_seed_models_with_their_defaults() -> None:
    example = load_config(EXAMPLE)
    assert [m.id for m in example.models] == [
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "Qwen/Qwen3-8B",
        "Qwen/Qwen2.5-7B-Instruct",
        "openai/gpt-oss-20b",
    ]
    assert [m.repository for m in example.models] == [
        "kserve-models/meta-llama-meta-llama-3-8b-instruct",
        "kserve-models/qwen-qwen3-8b",
        "kserve-models/qwen-qwen2-5-7b-instruct",
        "kserve-models/openai-gpt-oss-20b",
    ]
    assert example.aws.region == "us-east-1"
    assert example.models[0].exclude == ("original/*",)
    assert all(m.tag == "latest" and m.revision == "main" for m in example.models)


def test_slug_lowercases_and_replaces_slashes_and_dots() -> None:
    assert slug("Qwen/Qwen2.5-7B-Instruct") == "qwen-qwen2-5-7b-instruct"


def test_minimal_config_gets_every_default() -> None:
    parsed = config('[[models]]\nid = "acme/tiny"\n')
    (model,) = parsed.models
    assert (model.name, model.repository, model.revision, model.tag) == (
        "acme-tiny",
        "kserve-models/acme-tiny",
        "main",
        "latest",
    )
    assert (model.compute_type, model.timeout_minutes, model.include, model.exclude) == (None, None, (), ())
    aws = parsed.aws
    assert (aws.region, aws.prefix, aws.tag_mutability, aws.encryption, aws.keep_images) == (
        None,
        "ocimodel",
        "MUTABLE",
        "AES256",
        10,
    )
    assert aws.hf_token and aws.hf_token_secret == "ocimodel/hf-token"


def test_every_setting_is_read() -> None:
    parsed = config(
        """
[aws]
region = "eu-west-1"
prefix = "models"
tag_mutability = "IMMUTABLE"
encryption = "KMS"
kms_key = "arn:aws:kms:eu-west-1:123456789012:key/abc"
keep_images = 3
untagged_days = 7
log_retention_days = 90
hf_token = false
hf_token_secret = "team/hf"
image = "aws/codebuild/amazonlinux-x86_64-standard:5.0"
python = "3.11"
base = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mirror/busybox@sha256:"""
        + "a" * 64
        + """"

[[models]]
id = "Org/Model.V2"
name = "m2"
revision = "v2.0"
repository = "team/m2"
tag = "v2"
compute_type = "BUILD_GENERAL1_LARGE"
timeout_minutes = 90
include = ["*.safetensors", "*.json"]
exclude = ["original/*"]
"""
    )
    aws = parsed.aws
    assert (aws.region, aws.prefix, aws.tag_mutability, aws.encryption) == ("eu-west-1", "models", "IMMUTABLE", "KMS")
    assert (aws.keep_images, aws.untagged_days, aws.log_retention_days, aws.hf_token, aws.hf_token_secret) == (
        3,
        7,
        90,
        False,
        "team/hf",
    )
    assert aws.python == "3.11" and aws.image.endswith("standard:5.0") and aws.base and aws.base.endswith("a" * 64)
    (model,) = parsed.models
    assert (model.name, model.revision, model.repository, model.tag) == ("m2", "v2.0", "team/m2", "v2")
    assert (model.compute_type, model.timeout_minutes) == ("BUILD_GENERAL1_LARGE", 90)
    assert (model.include, model.exclude) == (("*.safetensors", "*.json"), ("original/*",))


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('[[models]]\nid = "a/b"\ncompute = "x"\n', ["model 1 (a/b)", "unknown key 'compute'"]),
        ('[[models]]\nid = "a/b"\n[[models]]\nrevision = "v1"\n', ["model 2", "missing required key 'id'"]),
        (
            '[[models]]\nid = "a/b"\ncompute_type = "BUILD_GENERAL1_HUGE"\n',
            ["model 1 (a/b)", "compute_type", "BUILD_GENERAL1_SMALL"],
        ),
        ('[[models]]\nid = "a/b"\ntimeout_minutes = 4\n', ["model 1 (a/b)", "timeout_minutes", "5 to 2160"]),
        ('[[models]]\nid = "a/b"\ntag = "-bad"\n', ["model 1 (a/b)", "tag"]),
        ('[[models]]\nid = "a/b"\nrepository = "Upper/Case"\n', ["model 1 (a/b)", "repository", "ECR"]),
        ('[[models]]\nid = "not-a-repo-id"\n', ["model 1 (not-a-repo-id)", "id", "org/name"]),
        ('[[models]]\nid = "a/b"\nexclude = "original/*"\n', ["model 1 (a/b)", "exclude", "list"]),
        ('[[models]]\nid = "a/b"\n[[models]]\nid = "A/B"\n', ["model 2 (A/B)", "name 'a-b' is already model 1's"]),
        (
            '[[models]]\nid = "a/b"\n[[models]]\nid = "c/d"\nrepository = "kserve-models/a-b"\n',
            ["model 2 (c/d)", "repository"],
        ),
        ('[aws]\nregions = "us-east-1"\n[[models]]\nid = "a/b"\n', ["[aws]", "unknown key 'regions'"]),
        ('[aws]\nencryption = "DSSE"\n[[models]]\nid = "a/b"\n', ["[aws]", "encryption", "AES256, KMS"]),
        ('[aws]\nkms_key = "alias/x"\n[[models]]\nid = "a/b"\n', ["[aws]", "kms_key", "encryption"]),
        ('[aws]\nkeep_images = 0\n[[models]]\nid = "a/b"\n', ["[aws]", "keep_images"]),
        ('[aws]\nkeep_images = true\n[[models]]\nid = "a/b"\n', ["[aws]", "keep_images"]),
        ('[aws]\nlog_retention_days = 31\n[[models]]\nid = "a/b"\n', ["[aws]", "log_retention_days", "30, 60"]),
        ('[aws]\ntag_mutability = "SOMETIMES"\n[[models]]\nid = "a/b"\n', ["[aws]", "tag_mutability"]),
        ('[aws]\nprefix = "Has_Upper"\n[[models]]\nid = "a/b"\n', ["[aws]", "prefix"]),
        ('[aws]\nbase = "busybox:latest"\n[[models]]\nid = "a/b"\n', ["[aws]", "base", "digest"]),
        ('[[models]]\nid = "a/b"\nbase = "busybox:latest"\n', ["model 1 (a/b)", "base", "digest"]),
        ('[aws]\npython = "3.9"\n[[models]]\nid = "a/b"\n', ["[aws]", "python = '3.9'", "3.11 or newer"]),
        (
            '[aws]\nimage = "public.ecr.aws/acme/builder:1"\npython = "3.12"\n[[models]]\nid = "a/b"\n',
            ["[aws]", "python applies to CodeBuild's curated images", "drop it"],
        ),
        ('[[models]]\nid = "a/b"\nname = "' + "n" * 142 + '"\n', ["model 1 (a/b)", "142 characters", "141"]),
        ('[aws]\nregion = "us-east-1"\n', ["no [[models]]"]),
        ('[[models]]\nid = "a/b"\n[extra]\nx = 1\n', ["top level", "unknown key 'extra'"]),
        ("[[models]\n", ["not valid TOML"]),
    ],
)
def test_a_bad_config_is_one_line_naming_the_model_and_key(text: str, needles: list[str]) -> None:
    message = error(text)
    assert message.startswith("models.toml")
    for needle in needles:
        assert needle in message, message


def test_every_problem_is_counted() -> None:
    message = error('[[models]]\nid = "a/b"\nfoo = 1\nbar = 2\ncompute_type = "X"\n')
    assert "unknown key 'foo'" in message and "(and 2 more problems)" in message


def test_a_missing_config_file_says_how_to_name_one(tmp_path: Path) -> None:
    with pytest.raises(OcimodelError, match="--config"):
        load_config(tmp_path / "models.toml")


def test_find_matches_id_name_and_repository() -> None:
    parsed = config('[[models]]\nid = "Org/A"\n[[models]]\nid = "org/b"\nname = "bee"\nrepository = "x/b"\n')
    assert parsed.find("org/a").id == "Org/A"
    assert parsed.find("bee").id == parsed.find("x/b").id == "org/b"
    with pytest.raises(OcimodelError, match="org-a, bee"):
        parsed.find("nope")


# --- sizing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size_gb", "expected"),
    [
        (0.001, "BUILD_GENERAL1_SMALL"),
        (16, "BUILD_GENERAL1_SMALL"),  # an 8B model in bf16
        (25, "BUILD_GENERAL1_MEDIUM"),  # 4 vCPUs from 20 GB on
        (44, "BUILD_GENERAL1_MEDIUM"),
        (50, "BUILD_GENERAL1_LARGE"),  # 8 vCPUs from 50 GB on
        (102, "BUILD_GENERAL1_LARGE"),  # 127.2 GB of disk needed still fits 128
        (103, "BUILD_GENERAL1_XLARGE"),  # 128.3 GB of disk needed
        (219, "BUILD_GENERAL1_XLARGE"),
        (220, "BUILD_GENERAL1_2XLARGE"),
        (735, "BUILD_GENERAL1_2XLARGE"),
    ],
)
def test_compute_type_is_the_smallest_with_the_disk_and_cpus(size_gb: float, expected: str) -> None:
    assert compute_type_for(int(size_gb * GB)) == expected


def test_a_model_too_large_for_any_machine_is_refused() -> None:
    with pytest.raises(OcimodelError, match="exclude"):
        compute_type_for(750 * GB)


def test_timeout_grows_with_size_within_codebuilds_limits() -> None:
    assert timeout_for(0) == 15
    assert timeout_for(16 * GB) == 15 + 27  # 32 GB moved at 20 MB/s
    assert timeout_for(5000 * GB) == 2160


def test_the_config_wins_but_a_too_small_machine_is_refused() -> None:
    fixed = config('[[models]]\nid = "a/b"\ncompute_type = "BUILD_GENERAL1_2XLARGE"\ntimeout_minutes = 60\n').models[0]
    assert model_build(fixed, None) == p.ModelBuild(fixed, "BUILD_GENERAL1_2XLARGE", 60, None)
    small = config('[[models]]\nid = "a/b"\ncompute_type = "BUILD_GENERAL1_SMALL"\n').models[0]
    assert model_build(small, 10 * GB).timeout_minutes == timeout_for(10 * GB)
    with pytest.raises(OcimodelError, match=r"model a/b: compute_type BUILD_GENERAL1_SMALL has too little disk"):
        model_build(small, 60 * GB)


# --- plan documents -----------------------------------------------------------------------------------------------


def make_plan(text: str, sizes: dict[str, int] | None = None) -> Plan:
    parsed = config(text)
    builds = tuple(model_build(m, (sizes or {}).get(m.id, GB)) for m in parsed.models)
    bundle = Bundle("ocimodel-0.1.0-py3-none-any.whl", "ab" * 32, b"zip")
    return Plan(parsed, Names(parsed.aws, ACCOUNT), builds, bundle)


TWO_MODELS = '[[models]]\nid = "acme/one"\nexclude = ["original/*", "it\'s odd/*"]\n[[models]]\nid = "acme/two"\n'


def test_role_policy_is_least_privilege() -> None:
    plan = make_plan(TWO_MODELS)
    models = tuple(b.model for b in plan.builds)
    policy = json.loads(json.dumps(p.role_policy(plan.names, models)))
    statements = {s["Sid"]: s for s in policy["Statement"]}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert not any("*" in action for action in actions)
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if statement["Sid"] == "EcrLogin":
            assert actions == ["ecr:GetAuthorizationToken"] and resources == ["*"]
        else:
            assert "*" not in resources
    assert statements["EcrPush"]["Resource"] == [
        "arn:aws:ecr:us-east-1:123456789012:repository/kserve-models/acme-one",
        "arn:aws:ecr:us-east-1:123456789012:repository/kserve-models/acme-two",
    ]
    assert set(statements["EcrPush"]["Action"]) == {
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:CompleteLayerUpload",
        "ecr:GetDownloadUrlForLayer",
        "ecr:InitiateLayerUpload",
        "ecr:PutImage",
        "ecr:UploadLayerPart",
    }
    assert statements["BuildLogs"] == {
        "Sid": "BuildLogs",
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": "arn:aws:logs:us-east-1:123456789012:log-group:/aws/codebuild/ocimodel-*:*",
    }
    assert statements["HfToken"]["Action"] == "secretsmanager:GetSecretValue"
    assert (
        statements["HfToken"]["Resource"]
        == "arn:aws:secretsmanager:us-east-1:123456789012:secret:ocimodel/hf-token-??????"
    )
    assert statements["BuildSource"]["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]
    assert (
        statements["BuildSource"]["Resource"]
        == "arn:aws:s3:::ocimodel-123456789012-us-east-1/codebuild/ocimodel-source.zip"
    )
    # What AWS's minimal CodeBuild policy lists for an S3 source: who owns the bucket and where it is.
    assert statements["BuildSourceBucket"]["Action"] == ["s3:GetBucketAcl", "s3:GetBucketLocation"]
    assert statements["BuildSourceBucket"]["Resource"] == "arn:aws:s3:::ocimodel-123456789012-us-east-1"
    assert set(statements) == {"BuildLogs", "EcrLogin", "EcrPush", "BuildSource", "BuildSourceBucket", "HfToken"}


def test_no_token_no_secret_access_and_an_ecr_base_may_be_pulled() -> None:
    base = "210987654321.dkr.ecr.eu-west-1.amazonaws.com/mirror/busybox@sha256:" + "b" * 64
    plan = make_plan(f'[aws]\nhf_token = false\nbase = "{base}"\n' + TWO_MODELS)
    statements = {s["Sid"]: s for s in p.role_policy(plan.names, tuple(b.model for b in plan.builds))["Statement"]}
    assert "HfToken" not in statements
    assert statements["BaseImage"] == {
        "Sid": "BaseImage",
        "Effect": "Allow",
        "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
        "Resource": "arn:aws:ecr:eu-west-1:210987654321:repository/mirror/busybox",
    }
    assert "secrets-manager" not in p.buildspec_document(plan, plan.builds[0])["env"]


def test_trust_policy_admits_codebuild_for_these_projects_only() -> None:
    plan = make_plan(TWO_MODELS)
    (statement,) = p.trust_policy(plan.names)["Statement"]
    assert statement["Principal"] == {"Service": "codebuild.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"] == {
        "StringEquals": {"aws:SourceAccount": "123456789012"},
        "ArnLike": {"aws:SourceArn": "arn:aws:codebuild:us-east-1:123456789012:project/ocimodel-*"},
    }


def test_lifecycle_expires_untagged_first_and_keeps_the_last_n() -> None:
    plan = make_plan('[aws]\nkeep_images = 4\nuntagged_days = 2\n[[models]]\nid = "a/b"\n')
    rules = p.lifecycle_policy(plan.settings)["rules"]
    assert [r["selection"] for r in rules] == [
        {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 2},
        {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 4},
    ]
    assert [r["rulePriority"] for r in rules] == [1, 2] and all(r["action"] == {"type": "expire"} for r in rules)


def test_buildspec_installs_the_checked_wheel_and_builds_from_the_hub_to_ecr() -> None:
    plan = make_plan(TWO_MODELS)
    spec = yaml.safe_load(p.buildspec(plan, plan.builds[0]))
    assert spec["version"] == 0.2
    assert spec["env"]["shell"] == "bash"
    assert spec["env"]["variables"] == {
        "OCIMODEL_MODEL": "acme/one",
        "OCIMODEL_REVISION": "main",
        "OCIMODEL_REGISTRY": "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "OCIMODEL_REPOSITORY": "kserve-models/acme-one",
        "OCIMODEL_TAG": "latest",
        "OCIMODEL_WHEEL": "ocimodel-0.1.0-py3-none-any.whl",
        "OCIMODEL_WHEEL_SHA256": "ab" * 32,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_XET_CHUNK_CACHE_SIZE_BYTES": "0",
        "PYTHONUNBUFFERED": "1",
    }
    assert spec["env"]["secrets-manager"] == {"HF_TOKEN": "ocimodel/hf-token"}
    install = spec["phases"]["install"]
    assert install["runtime-versions"] == {"python": "3.12"}
    assert "sha256sum --check" in install["commands"][0]
    (command,) = spec["phases"]["build"]["commands"]
    words = shlex.split(command)
    assert words[:4] == ["python3", "-m", "ocimodel", "build"]
    assert words[-1] == "--json"
    assert words[words.index("--exclude") + 1] == "original/*"
    assert "it's odd/*" in words
    assert "docker" not in p.buildspec(plan, plan.builds[0])


def test_project_is_unprivileged_and_sized() -> None:
    plan = make_plan(TWO_MODELS, {"acme/one": 30 * GB})
    request = p.project_request(plan, plan.builds[0])
    assert request["name"] == "ocimodel-acme-one"
    assert request["environment"]["privilegedMode"] is False
    assert request["environment"]["computeType"] == "BUILD_GENERAL1_MEDIUM"
    assert request["timeoutInMinutes"] == timeout_for(30 * GB)
    assert request["source"]["type"] == "S3"
    assert request["source"]["location"] == "ocimodel-123456789012-us-east-1/codebuild/ocimodel-source.zip"
    assert request["serviceRole"] == "arn:aws:iam::123456789012:role/ocimodel-codebuild-us-east-1"
    assert request["logsConfig"]["cloudWatchLogs"] == {
        "status": "ENABLED",
        "groupName": "/aws/codebuild/ocimodel-acme-one",
    }
    assert p.project_view(request) == p.project_view(json.loads(json.dumps(request)))


def test_the_source_zip_holds_the_wheel_alone_and_the_same_bytes_each_time(tmp_path: Path) -> None:
    wheel = tmp_path / "ocimodel-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel bytes")
    first = bundle(wheel)
    assert first == bundle(wheel)
    assert first.wheel_sha256 == hashlib.sha256(b"wheel bytes").hexdigest()
    with zipfile.ZipFile(io.BytesIO(first.data)) as archive:
        (info,) = archive.infolist()
        assert (info.filename, info.date_time) == (wheel.name, (1980, 1, 1, 0, 0, 0))
        assert archive.read(info) == b"wheel bytes"
    other = tmp_path / "torch-2.0-py3-none-any.whl"
    other.write_bytes(b"")
    with pytest.raises(OcimodelError, match="not an ocimodel wheel"):
        bundle(other)


def test_long_hub_ids_get_valid_distinct_names_within_codebuilds_limit() -> None:
    """Hub ids run to 193 characters; ``<prefix>-<name>`` may have 150 (CodeBuild's ProjectName)."""
    org = "o" * 96
    ids = [f"{org}/{'m' * 90}-one", f"{org}/{'m' * 90}-two", "Org/a__b", "Org/_lead-.trail_"]
    parsed = config("".join(f'[[models]]\nid = "{i}"\n' for i in ids))
    names = [m.name for m in parsed.models]
    plan = make_plan("".join(f'[[models]]\nid = "{i}"\n' for i in ids))
    projects = [plan.names.project(m) for m in parsed.models]
    assert all(len(x) <= 150 and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9\-_]{1,149}", x) for x in projects)
    assert len(set(names)) == 4 and len(projects[0]) == 150
    assert names[2:] == ["org-a__b", "org-lead--trail"]  # what ECR accepts is kept
    assert names[0] == config(f'[[models]]\nid = "{ids[0]}"\n').models[0].name  # stable across runs
    assert all(re.fullmatch(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*",
                            m.repository) for m in parsed.models)
    long_revision = make_plan(f'[[models]]\nid = "{ids[0]}"\nrevision = "{"r" * 200}"\n')
    assert len(p.project_request(long_revision, long_revision.builds[0])["description"]) == 255


def test_a_custom_build_image_is_pulled_with_the_role_and_has_no_runtime_versions() -> None:
    image = "210987654321.dkr.ecr.us-east-1.amazonaws.com/builders/python:3.12"
    plan = make_plan(f'[aws]\nimage = "{image}"\n' + TWO_MODELS)
    request = p.project_request(plan, plan.builds[0])
    assert request["environment"]["image"] == image
    assert request["environment"]["imagePullCredentialsType"] == "SERVICE_ROLE"
    assert "runtime-versions" not in yaml.safe_load(p.buildspec(plan, plan.builds[0]))["phases"]["install"]
    statements = {s["Sid"]: s for s in p.role_policy(plan.names, tuple(b.model for b in plan.builds))["Statement"]}
    assert statements["BaseImage"]["Resource"] == "arn:aws:ecr:us-east-1:210987654321:repository/builders/python"
    curated = make_plan(TWO_MODELS)
    assert p.project_request(curated, curated.builds[0])["environment"]["imagePullCredentialsType"] == "CODEBUILD"


def test_a_models_base_wins_over_the_configs_and_its_repository_may_be_pulled() -> None:
    team = "111122223333.dkr.ecr.us-east-1.amazonaws.com/mirror/busybox@sha256:" + "a" * 64
    own = "111122223333.dkr.ecr.us-east-1.amazonaws.com/mirror/alpine@sha256:" + "b" * 64
    plan = make_plan(f'[aws]\nbase = "{team}"\n[[models]]\nid = "a/one"\nbase = "{own}"\n[[models]]\nid = "a/two"\n')
    one, two = (shlex.split(yaml.safe_load(p.buildspec(plan, b))["phases"]["build"]["commands"][0])
                for b in plan.builds)
    assert one[one.index("--base") + 1] == own and two[two.index("--base") + 1] == team
    assert p.options_fingerprint(plan.settings, plan.builds[0].model) != p.options_fingerprint(
        plan.settings, plan.builds[1].model
    )
    statements = {s["Sid"]: s for s in p.role_policy(plan.names, tuple(b.model for b in plan.builds))["Statement"]}
    assert statements["BaseImage"]["Resource"] == [
        "arn:aws:ecr:us-east-1:111122223333:repository/mirror/alpine",
        "arn:aws:ecr:us-east-1:111122223333:repository/mirror/busybox",
    ]


def test_the_registry_host_follows_fips() -> None:
    fips = Account("123456789012", "us-east-1", fips=True)
    assert fips.registry == "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com"
    china = Account("123456789012", "cn-north-1", "aws-cn")
    assert china.registry == "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"


def test_policies_list_repositories_until_iam_would_refuse_then_their_namespaces() -> None:
    few = make_plan("".join(f'[[models]]\nid = "acme/model-{i}"\n' for i in range(30)))
    few_models = tuple(b.model for b in few.builds)
    (push,) = [s for s in p.role_policy(few.names, few_models)["Statement"] if s["Sid"] == "EcrPush"]
    assert len(push["Resource"]) == 30
    many = make_plan(
        "".join(f'[[models]]\nid = "acme/model-{i}-with-a-long-name-instruct"\n' for i in range(200))
        + '[[models]]\nid = "acme/own"\nrepository = "standalone"\n'
    )
    models = tuple(b.model for b in many.builds)
    (push,) = [s for s in p.role_policy(many.names, models)["Statement"] if s["Sid"] == "EcrPush"]
    assert push["Resource"] == [
        "arn:aws:ecr:us-east-1:123456789012:repository/kserve-models/*",
        "arn:aws:ecr:us-east-1:123456789012:repository/standalone",
    ]
    p.check_policy_sizes(many.names, models)
    scattered = make_plan(
        "".join(f'[[models]]\nid = "acme/m{i}"\nrepository = "standalone-repository-{i}"\n' for i in range(200))
    )
    with pytest.raises(OcimodelError, match="policy would be .* characters, over IAM's 10240: put the models"):
        p.check_policy_sizes(scattered.names, tuple(b.model for b in scattered.builds))
