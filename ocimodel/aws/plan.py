"""What ``bootstrap`` wants to exist, as data: names, settings, policies and buildspecs, computed without AWS calls.

Everything is derived from the config and the account, so every command (bootstrap, build, status, teardown) finds
the same resources again without any state of its own, and a dry run can show the exact documents a real run sends.

One CodeBuild project per model: each project holds its model's whole build (buildspec, machine, timeout), so a
build can be started from the console or ``aws codebuild start-build`` with no overrides, the project's history is
that model's history, and changing one model's settings never touches another's. One service role serves them all,
allowed exactly their repositories and log groups.
"""

from __future__ import annotations

import hashlib
import json
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
ECR_PULL_ACTIONS = ("ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")
#: IAM's quotas, in characters not counting whitespace: a role's trust policy, and all its inline policies together.
TRUST_POLICY_MAX = 2048
INLINE_POLICIES_MAX = 10240
#: CodeBuild's limit on a project's description.
DESCRIPTION_MAX = 255
#: What a build does with the signing key, and nothing else (no Verify, no DescribeKey: the public key says it all).
KMS_SIGN_ACTIONS = ("kms:GetPublicKey", "kms:Sign")
#: A key ARN's shape where the key does not exist yet (the policy of a dry run, and its size check).
PENDING_KEY_ID = "00000000-0000-0000-0000-000000000000"
#: The manifest annotation in which a build records the options that shaped its image (``options_fingerprint``).
OPTIONS_ANNOTATION = "io.ocimodel.build.options"


@dataclass(frozen=True)
class Account:
    id: str
    region: str
    partition: str = "aws"
    #: ``AWS_USE_FIPS_ENDPOINT`` (or ``use_fips_endpoint`` in the AWS config): builds push to ECR's FIPS endpoint.
    fips: bool = False

    @property
    def registry(self) -> str:
        suffix = "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com"
        return f"{self.id}.dkr.{'ecr-fips' if self.fips else 'ecr'}.{self.region}.{suffix}"

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
    def snapshot_role(self) -> str:
        """The role, and instance profile of the same name, of ``aws snapshot``'s temporary instance."""
        return f"{self.settings.prefix}-snapshot-{self.account.region}"

    @property
    def secret(self) -> str:
        return self.settings.hf_token_secret

    @property
    def secret_arn_pattern(self) -> str:
        # Secrets Manager appends 6 random characters to every secret's ARN.
        return self.account.arn("secretsmanager", f"secret:{self.secret}-??????")

    def project(self, model: ModelSpec) -> str:
        return f"{self.settings.prefix}-{model.name}"

    @property
    def projects_arn(self) -> str:
        """Every project bootstrap names (``<prefix>-*``): one pattern, so the policies do not grow with models."""
        return self.account.arn("codebuild", f"project/{self.settings.prefix}-*")

    def log_group(self, model: ModelSpec) -> str:
        return f"/aws/codebuild/{self.project(model)}"

    @property
    def log_groups_arn(self) -> str:
        return self.account.arn("logs", f"log-group:/aws/codebuild/{self.settings.prefix}-*:*")

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


def tag_list(key: str = "Key", value: str = "Value") -> list[dict[str, str]]:
    """The managed tag as the AWS APIs spell a tag list (ECR, IAM: ``Key``/``Value``; CodeBuild: ``key``/``value``)."""
    return [{key: k, value: v} for k, v in tags_dict().items()]


def repository_request(settings: AwsSettings, model: ModelSpec) -> dict[str, Any]:
    return {
        "repositoryName": model.repository,
        "imageTagMutability": settings.tag_mutability,
        "imageScanningConfiguration": {"scanOnPush": True},
        "encryptionConfiguration": repository_encryption(settings),
        "tags": tag_list(),
    }


def role_request(names: Names) -> dict[str, Any]:
    return {
        "RoleName": names.role,
        "AssumeRolePolicyDocument": policy_text(trust_policy(names)),
        "Description": "ocimodel: CodeBuild builds of models into ECR",
        "Tags": tag_list(),
    }


def repository_encryption(settings: AwsSettings) -> dict[str, str]:
    if settings.encryption == "KMS":
        return {"encryptionType": "KMS", **({"kmsKey": settings.kms_key} if settings.kms_key else {})}
    return {"encryptionType": "AES256"}


def trust_policy(names: Names) -> dict[str, Any]:
    """CodeBuild may assume the role for this prefix's projects of this account only (the confused-deputy guard).

    One ``<prefix>-*`` pattern rather than one ARN per model: a list passed IAM's 2,048-character trust-policy
    limit at about 21 models.
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "codebuild.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "StringEquals": {"aws:SourceAccount": names.account.id},
                    "ArnLike": {"aws:SourceArn": names.projects_arn},
                },
            }
        ],
    }


def role_policy(names: Names, models: tuple[ModelSpec, ...], signing_key: str | None = None) -> dict[str, Any]:
    """What a build does and nothing more: log, log in to ECR, push its repository, read the token and the wheel,
    and sign with the KMS key whose ARN is ``signing_key`` (that key only) when the config signs.

    Only ``ecr:GetAuthorizationToken`` has ``Resource: "*"``: it names no resource, so IAM accepts nothing else.
    Log groups are created by bootstrap (with their retention), so the role cannot create any. The repositories
    are listed one by one while the policy stays within IAM's limit, else by namespace (``repository_patterns``).
    """
    statements = _role_statements(names, models, sorted({names.repository_arn(m) for m in models}), signing_key)
    if policy_size({"Version": "2012-10-17", "Statement": statements}) > INLINE_POLICIES_MAX:
        statements = _role_statements(names, models, repository_patterns(names, models), signing_key)
    return {"Version": "2012-10-17", "Statement": statements}


def repository_patterns(names: Names, models: tuple[ModelSpec, ...]) -> list[str]:
    """The repositories as few ARNs as a large config needs: ``<namespace>/*`` per namespace, those without one
    listed. Used only when listing every repository would pass IAM's 10,240-character limit (from about 76 models
    with 120-character repository ARNs; later with shorter ones)."""
    arns = set()
    for model in models:
        namespace, _, _ = model.repository.rpartition("/")
        arns.add(names.account.arn("ecr", f"repository/{namespace}/*") if namespace else names.repository_arn(model))
    return sorted(arns)


def _role_statements(
    names: Names, models: tuple[ModelSpec, ...], repositories: list[str], signing_key: str | None
) -> list[dict[str, Any]]:
    bucket = f"arn:{names.account.partition}:s3:::{names.bucket}"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "BuildLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": names.log_groups_arn,
        },
        {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
        {"Sid": "EcrPush", "Effect": "Allow", "Action": list(ECR_PUSH_ACTIONS), "Resource": repositories},
        {
            "Sid": "BuildSource",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": f"{bucket}/{SOURCE_KEY}",
        },
        # CodeBuild checks who owns a source bucket and where it is before it reads the object (AWS's minimal
        # CodeBuild service-role policy lists both).
        {
            "Sid": "BuildSourceBucket",
            "Effect": "Allow",
            "Action": ["s3:GetBucketAcl", "s3:GetBucketLocation"],
            "Resource": bucket,
        },
    ]
    pulls = sorted({arn for arn in (_ecr_repository(names, ref) for ref in _pulled_images(names, models)) if arn})
    if pulls:
        statements.append(
            {"Sid": "BaseImage", "Effect": "Allow", "Action": list(ECR_PULL_ACTIONS), "Resource": _one_or_list(pulls)}
        )
    if names.settings.hf_token:
        statements.append(
            {
                "Sid": "HfToken",
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": names.secret_arn_pattern,
            }
        )
    if signing_key is not None:
        # By ARN: IAM matches a key's ARN whatever the build names it by, and an alias moved elsewhere grants nothing.
        statements.append(
            {"Sid": "ModelSigning", "Effect": "Allow", "Action": list(KMS_SIGN_ACTIONS), "Resource": signing_key}
        )
    return statements


def pending_key_arn(names: Names) -> str:
    """The ARN a key bootstrap has yet to create will have, but for its id: what a dry run shows and sizes."""
    return names.account.arn("kms", f"key/{PENDING_KEY_ID}")


def _one_or_list(values: list[str]) -> str | list[str]:
    return values[0] if len(values) == 1 else values


def policy_size(document: dict[str, Any]) -> int:
    """Characters IAM counts against its quotas: the document without whitespace."""
    return len(policy_text(document))


def policy_text(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"))


def check_policy_sizes(names: Names, models: tuple[ModelSpec, ...], signing_key: str | None = None) -> None:
    """Refuse, before any AWS call, policies IAM would refuse after the steps before them had run."""
    trust, inline = policy_size(trust_policy(names)), policy_size(role_policy(names, models, signing_key))
    if trust > TRUST_POLICY_MAX:
        raise OcimodelError(f"the role's trust policy would be {trust} characters, over IAM's {TRUST_POLICY_MAX}")
    if inline > INLINE_POLICIES_MAX:
        raise OcimodelError(
            f"the role's policy would be {inline} characters, over IAM's {INLINE_POLICIES_MAX}: put the models' "
            "repositories under a few namespaces (e.g. kserve-models/…), or split the models over two configs "
            "with different prefixes"
        )


def model_base(settings: AwsSettings, model: ModelSpec) -> str | None:
    """The model's own base, else the config's; None keeps ocimodel's default."""
    return model.base or settings.base


def _pulled_images(names: Names, models: tuple[ModelSpec, ...]) -> list[str]:
    """The images the builds pull through the role: bases, and a custom build image (``SERVICE_ROLE``)."""
    bases = [model_base(names.settings, m) for m in models]
    images = [b for b in bases if b and b != "scratch"]
    if not names.settings.curated_image:
        images.append(names.settings.image)
    return images


def _ecr_repository(names: Names, image: str) -> str | None:
    """The repository ARN of an image kept in a private ECR registry, which the builds must be let pull."""
    host, _, rest = image.partition("/")
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


def options_fingerprint(settings: AwsSettings, model: ModelSpec) -> str:
    """What, besides the Hub commit, decides a build's image: recorded in it, so ``aws build`` can tell, by reading
    one manifest, whether an immutable tag already holds this build."""
    options: dict[str, object] = {
        "id": model.id, "base": model_base(settings, model), "include": model.include, "exclude": model.exclude
    }
    if settings.signing is not None:  # only then: unsigned builds keep the fingerprints they had
        options["sign_kms_key"] = settings.signing.kms_key
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:32]


def build_command(settings: AwsSettings, model: ModelSpec) -> str:
    """``ocimodel build`` from the Hub to ECR; the per-model values come from the buildspec's variables."""
    words = [
        '"$OCIMODEL_MODEL"',
        '"$OCIMODEL_REGISTRY/$OCIMODEL_REPOSITORY:$OCIMODEL_TAG"',
        "--revision",
        '"$OCIMODEL_REVISION"',
        "--annotation",
        f"{OPTIONS_ANNOTATION}={options_fingerprint(settings, model)}",
    ]
    base = model_base(settings, model)
    if base:
        words += ["--base", shlex.quote(base)]
    words += [part for glob in model.include for part in ("--include", shlex.quote(glob))]
    words += [part for glob in model.exclude for part in ("--exclude", shlex.quote(glob))]
    if settings.signing is not None:
        # As configured (alias, id or ARN): KMS resolves it in the build's region, which is the config's.
        words += ["--sign-kms-key", shlex.quote(settings.signing.kms_key)]
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
    # runtime-versions exists only in CodeBuild's curated images; a custom image brings its own python3.
    runtime = {"runtime-versions": {"python": settings.python}} if settings.curated_image else {}
    return {
        "version": 0.2,
        "env": env,
        "phases": {
            "install": {
                **runtime,
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
        "description": _cut(
            f"ocimodel build of {model.id}@{model.revision} into {model.repository}:{model.tag}", DESCRIPTION_MAX
        ),
        "source": {"type": "S3", "location": f"{names.bucket}/{SOURCE_KEY}", "buildspec": buildspec(plan, build)},
        "artifacts": {"type": "NO_ARTIFACTS"},
        "environment": {
            "type": "LINUX_CONTAINER",
            "image": plan.settings.image,
            "computeType": build.compute_type,
            # ocimodel needs no Docker daemon, so the build gets no privileges.
            "privilegedMode": False,
            # CodeBuild pulls its curated images itself; any other image only with the role (ECR, or a registry).
            "imagePullCredentialsType": "CODEBUILD" if plan.settings.curated_image else "SERVICE_ROLE",
        },
        "serviceRole": names.role_arn,
        "timeoutInMinutes": build.timeout_minutes,
        "logsConfig": {
            "cloudWatchLogs": {"status": "ENABLED", "groupName": names.log_group(model)},
            "s3Logs": {"status": "DISABLED"},
        },
        "tags": tag_list("key", "value"),
    }


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        "imagePullCredentialsType": environment.get("imagePullCredentialsType", "CODEBUILD"),
        "environmentVariables": environment.get("environmentVariables") or [],
        "serviceRole": project.get("serviceRole"),
        "timeoutInMinutes": project.get("timeoutInMinutes"),
        "logs": (logs.get("status"), logs.get("groupName")),
    }
