"""What ``bootstrap`` wants to exist, as data: names, settings, policies and buildspecs, computed without AWS calls.

Everything is derived from the config and the account, so every command (bootstrap, build, status, teardown) finds
the same resources again without any state of its own, and a dry run can show the exact documents a real run sends.

One CodeBuild project per model: each project holds its model's whole build (buildspec, machine, timeout), so a
build can be started from the console or ``aws codebuild start-build`` with no overrides, the project's history is
that model's history, and changing one model's settings never touches another's. One service role serves them all,
allowed exactly their repositories and log groups.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from ocimodel.aws.config import AwsSettings, Config, ModelSpec
from ocimodel.aws.sizing import GB, compute_type_for, fits, timeout_for
from ocimodel.aws.wheel import Bundle
from ocimodel.errors import OcimodelError
from ocimodel.registry.reference import parse_ecr

#: Tag put on everything bootstrap creates; teardown deletes a secret only if it carries it.
MANAGED_TAG = ("managed-by", "ocimodel")
ROLE_POLICY_NAME = "ocimodel-build"
SOURCE_KEY = "codebuild/ocimodel-source.zip"
ECR_PUSH_ACTIONS = (
    "ecr:BatchCheckLayerAvailability",
    "ecr:BatchGetImage",
    "ecr:CompleteLayerUpload",
    "ecr:GetDownloadUrlForLayer",
    "ecr:InitiateLayerUpload",
    "ecr:PutImage",
    "ecr:UploadLayerPart",
)
ECR_PULL_ACTIONS = ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")


@dataclass(frozen=True)
class Account:
    id: str
    region: str
    partition: str = "aws"

    @property
    def registry(self) -> str:
        suffix = "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com"
        return f"{self.id}.dkr.ecr.{self.region}.{suffix}"

    def arn(self, service: str, resource: str, *, region: str | None = None, account: str | None = None) -> str:
        region = self.region if region is None else region
        account = self.id if account is None else account
        return f"arn:{self.partition}:{service}:{region}:{account}:{resource}"


@dataclass(frozen=True)
class Names:
    """What bootstrap calls things."""

    settings: AwsSettings
    account: Account

    @property
    def bucket(self) -> str:
        return f"{self.settings.prefix}-{self.account.id}-{self.account.region}"

    @property
    def role(self) -> str:
        # IAM is global: the region keeps two regions' bootstraps from sharing, and rewriting, one role.
        return f"{self.settings.prefix}-codebuild-{self.account.region}"

    @property
    def role_arn(self) -> str:
        return self.account.arn("iam", f"role/{self.role}", region="")

    @property
    def secret(self) -> str:
        return self.settings.hf_token_secret

    @property
    def secret_arn_pattern(self) -> str:
        # Secrets Manager appends 6 random characters to every secret's ARN.
        return self.account.arn("secretsmanager", f"secret:{self.secret}-??????")

    def project(self, model: ModelSpec) -> str:
        return f"{self.settings.prefix}-{model.name}"

    def project_arn(self, model: ModelSpec) -> str:
        return self.account.arn("codebuild", f"project/{self.project(model)}")

    def log_group(self, model: ModelSpec) -> str:
        return f"/aws/codebuild/{self.project(model)}"

    def log_group_arn(self, model: ModelSpec) -> str:
        return self.account.arn("logs", f"log-group:{self.log_group(model)}:*")

    def repository_arn(self, model: ModelSpec) -> str:
        return self.account.arn("ecr", f"repository/{model.repository}")

    def image(self, model: ModelSpec) -> str:
        return f"{self.account.registry}/{model.repository}:{model.tag}"


@dataclass(frozen=True)
class ModelBuild:
    model: ModelSpec
    compute_type: str
    timeout_minutes: int
    #: Bytes the build downloads; None when the config fixed both the compute type and the timeout.
    size: int | None


@dataclass(frozen=True)
class Plan:
    config: Config
    names: Names
    builds: tuple[ModelBuild, ...]
    bundle: Bundle

    @property
    def settings(self) -> AwsSettings:
        return self.config.aws


def needs_size(model: ModelSpec) -> bool:
    return model.compute_type is None or model.timeout_minutes is None


def model_build(model: ModelSpec, size: int | None) -> ModelBuild:
    """The machine and timeout for ``model``: the config's when given, else chosen from ``size``."""
    if size is None:
        if model.compute_type is None or model.timeout_minutes is None:
            raise ValueError(f"{model.id} needs its size")
        return ModelBuild(model, model.compute_type, model.timeout_minutes, None)
    if model.compute_type and not fits(model.compute_type, size):
        raise OcimodelError(
            f"model {model.id}: compute_type {model.compute_type} has too little disk for {size / GB:.1f} GB of files "
            f"plus headroom; drop compute_type to let ocimodel choose, or pick a larger one"
        )
    try:
        compute = model.compute_type or compute_type_for(size)
    except OcimodelError as exc:
        raise OcimodelError(f"model {model.id}: {exc}") from None
    return ModelBuild(model, compute, model.timeout_minutes or timeout_for(size), size)


def tags_dict() -> dict[str, str]:
    return {MANAGED_TAG[0]: MANAGED_TAG[1]}


def lifecycle_policy(settings: AwsSettings) -> dict[str, Any]:
    """Untagged images (a tag's earlier pushes) expire first; then only the newest ``keep_images`` stay.

    ECR wants the ``any`` rule last (highest priority number).
    """
    return {
        "rules": [
            {
                "rulePriority": 1,
                "description": f"expire untagged images after {settings.untagged_days} day(s)",
                "selection": {
                    "tagStatus": "untagged",
                    "countType": "sinceImagePushed",
                    "countUnit": "days",
                    "countNumber": settings.untagged_days,
                },
                "action": {"type": "expire"},
            },
            {
                "rulePriority": 2,
                "description": f"keep the last {settings.keep_images} images",
                "selection": {
                    "tagStatus": "any",
                    "countType": "imageCountMoreThan",
                    "countNumber": settings.keep_images,
                },
                "action": {"type": "expire"},
            },
        ]
    }


def repository_encryption(settings: AwsSettings) -> dict[str, str]:
    if settings.encryption == "KMS":
        return {"encryptionType": "KMS", **({"kmsKey": settings.kms_key} if settings.kms_key else {})}
    return {"encryptionType": "AES256"}


def trust_policy(names: Names, models: tuple[ModelSpec, ...]) -> dict[str, Any]:
    """CodeBuild may assume the role, for these projects of this account only (the confused-deputy guard)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "codebuild.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "StringEquals": {"aws:SourceAccount": names.account.id},
                    "ArnLike": {"aws:SourceArn": sorted(names.project_arn(m) for m in models)},
                },
            }
        ],
    }


def role_policy(names: Names, models: tuple[ModelSpec, ...]) -> dict[str, Any]:
    """What a build does and nothing more: log, log in to ECR, push its repository, read the token and the wheel.

    Only ``ecr:GetAuthorizationToken`` has ``Resource: "*"``: it names no resource, so IAM accepts nothing else.
    Log groups are created by bootstrap (with their retention), so the role cannot create any.
    """
    statements: list[dict[str, Any]] = [
        {
            "Sid": "BuildLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": sorted(names.log_group_arn(m) for m in models),
        },
        {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
        {
            "Sid": "EcrPush",
            "Effect": "Allow",
            "Action": list(ECR_PUSH_ACTIONS),
            "Resource": sorted(names.repository_arn(m) for m in models),
        },
        {
            "Sid": "BuildSource",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": f"arn:{names.account.partition}:s3:::{names.bucket}/{SOURCE_KEY}",
        },
    ]
    base = _ecr_base_repository(names)
    if base is not None:
        statements.append({"Sid": "BaseImage", "Effect": "Allow", "Action": list(ECR_PULL_ACTIONS), "Resource": base})
    if names.settings.hf_token:
        statements.append(
            {
                "Sid": "HfToken",
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": names.secret_arn_pattern,
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def _ecr_base_repository(names: Names) -> str | None:
    """The repository ARN of a base image kept in a private ECR registry, which the builds must be let pull."""
    base = names.settings.base
    if not base or base == "scratch":
        return None
    host, _, rest = base.partition("/")
    ecr = parse_ecr(host)
    if ecr is None:
        return None
    repository = rest.split("@", 1)[0].split(":", 1)[0]
    return names.account.arn("ecr", f"repository/{repository}", region=ecr.region, account=ecr.account)


PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


def build_command(settings: AwsSettings, model: ModelSpec) -> str:
    """``ocimodel build`` from the Hub to ECR; the per-model values come from the buildspec's variables."""
    words = [
        '"$OCIMODEL_MODEL"',
        '"$OCIMODEL_REGISTRY/$OCIMODEL_REPOSITORY:$OCIMODEL_TAG"',
        "--revision",
        '"$OCIMODEL_REVISION"',
    ]
    if settings.base:
        words += ["--base", shlex.quote(settings.base)]
    words += [part for glob in model.include for part in ("--include", shlex.quote(glob))]
    words += [part for glob in model.exclude for part in ("--exclude", shlex.quote(glob))]
    return " ".join(["python3 -m ocimodel build", *words, "--json"])


def buildspec_document(plan: Plan, build: ModelBuild) -> dict[str, Any]:
    """The buildspec, parameterised by environment variables a build (or a test) can override.

    The wheel is checked against its sha256 before pip installs it, so a build runs exactly the ocimodel that
    bootstrap uploaded, or fails. The HF token exists only in the build's environment, fetched by CodeBuild.
    """
    model, names, settings = build.model, plan.names, plan.settings
    env: dict[str, Any] = {
        "shell": "bash",
        "variables": {
            "OCIMODEL_MODEL": model.id,
            "OCIMODEL_REVISION": model.revision,
            "OCIMODEL_REGISTRY": names.account.registry,
            "OCIMODEL_REPOSITORY": model.repository,
            "OCIMODEL_TAG": model.tag,
            "OCIMODEL_WHEEL": plan.bundle.wheel_name,
            "OCIMODEL_WHEEL_SHA256": plan.bundle.wheel_sha256,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            # The HF cache holds the files already; hf_xet's chunk cache would only double the disk.
            "HF_XET_CHUNK_CACHE_SIZE_BYTES": "0",
            "PYTHONUNBUFFERED": "1",
        },
    }
    if settings.hf_token:
        env["secrets-manager"] = {"HF_TOKEN": names.secret}
    return {
        "version": 0.2,
        "env": env,
        "phases": {
            "install": {
                "runtime-versions": {"python": settings.python},
                "commands": [
                    'echo "$OCIMODEL_WHEEL_SHA256  $OCIMODEL_WHEEL" | sha256sum --check --strict',
                    'python3 -m pip install --disable-pip-version-check --no-cache-dir "./$OCIMODEL_WHEEL"',
                ],
            },
            "build": {"commands": [build_command(settings, model)]},
        },
    }


def buildspec(plan: Plan, build: ModelBuild) -> str:
    return str(yaml.safe_dump(buildspec_document(plan, build), sort_keys=False, width=1_000_000))


def project_request(plan: Plan, build: ModelBuild) -> dict[str, Any]:
    """The arguments of CodeBuild's create_project (and, without ``tags``, of update_project)."""
    model, names = build.model, plan.names
    return {
        "name": names.project(model),
        "description": f"ocimodel build of {model.id}@{model.revision} into {model.repository}:{model.tag}",
        "source": {"type": "S3", "location": f"{names.bucket}/{SOURCE_KEY}", "buildspec": buildspec(plan, build)},
        "artifacts": {"type": "NO_ARTIFACTS"},
        "environment": {
            "type": "LINUX_CONTAINER",
            "image": plan.settings.image,
            "computeType": build.compute_type,
            # ocimodel needs no Docker daemon, so the build gets no privileges.
            "privilegedMode": False,
            "imagePullCredentialsType": "CODEBUILD",
        },
        "serviceRole": names.role_arn,
        "timeoutInMinutes": build.timeout_minutes,
        "logsConfig": {
            "cloudWatchLogs": {"status": "ENABLED", "groupName": names.log_group(model)},
            "s3Logs": {"status": "DISABLED"},
        },
        "tags": [{"key": MANAGED_TAG[0], "value": MANAGED_TAG[1]}],
    }


def project_view(project: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a project that bootstrap owns, in a form that compares equal when nothing needs updating."""
    source = project.get("source") or {}
    environment = project.get("environment") or {}
    logs = (project.get("logsConfig") or {}).get("cloudWatchLogs") or {}
    return {
        "description": project.get("description"),
        "source": (source.get("type"), source.get("location"), source.get("buildspec")),
        "artifacts": (project.get("artifacts") or {}).get("type"),
        "image": environment.get("image"),
        "computeType": environment.get("computeType"),
        "privilegedMode": bool(environment.get("privilegedMode")),
        "environmentVariables": environment.get("environmentVariables") or [],
        "serviceRole": project.get("serviceRole"),
        "timeoutInMinutes": project.get("timeoutInMinutes"),
        "logs": (logs.get("status"), logs.get("groupName")),
    }
