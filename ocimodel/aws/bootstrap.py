"""``ocimodel aws bootstrap``: make the account hold what the plan says, changing only what differs.

Each resource is read first and compared with the plan; only a missing resource is created and only a differing
setting is written, so a second run makes no change and says so. Settings AWS cannot change in place (a
repository's encryption) are reported before anything is touched.
"""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Any, Callable
from urllib.parse import unquote

from botocore.exceptions import ClientError

from ocimodel.aws import plan as p
from ocimodel.aws import shapes, signingkey
from ocimodel.aws import snapshot_plan as sp
from ocimodel.aws.plan import ModelBuild, Plan
from ocimodel.aws.resources import (
    find_instance_profile,
    find_kms_key,
    find_log_group,
    find_projects,
    find_repository,
    find_role,
    managed,
    secret_exists,
)
from ocimodel.aws.session import Clients, Clock, aws_call, error_code, eventually
from ocimodel.aws.steps import Step
from ocimodel.errors import OcimodelError
from ocimodel.retry import retry
from ocimodel.units import human_size

#: How long CodeBuild may keep refusing a role IAM just created or changed: IAM is eventually consistent, and
#: minutes have been seen where seconds are usual.
ROLE_PROPAGATION_SECONDS = 180.0
ROLE_PROPAGATION_DELAY_SECONDS = 5.0
#: CodeBuild's refusals of a role it cannot (yet) use, in any of their wordings ("not authorized to perform:
#: sts:AssumeRole", "unable to assume role", "service role is not authorized", …).
_ROLE_NOT_READY = re.compile(r"authori[sz]|assume ?role|unable to assume|cannot assume", re.IGNORECASE)


def steps(clients: Clients, plan: Plan, clock: Clock = Clock()) -> list[Step]:
    """Every step bootstrap takes, found by reading AWS only."""
    bucket = _bucket_step(clients.s3, plan)
    kms_key = _resolved_kms_key(clients.kms, plan)
    signing = plan.settings.signing
    signed = (
        signingkey.bootstrap_step(clients.kms, signing, plan.names.account.region, clock) if signing else None
    )
    role, managed = _role_step(clients.iam, plan)
    return [
        bucket,
        _source_step(clients.s3, plan, bucket_exists=bucket.action != "create"),
        *[_repository_step(clients.ecr, plan, build, kms_key) for build in plan.builds],
        *([signed[0]] if signed else []),
        role,
        _role_policy_step(clients.iam, plan, managed, signed[1] if signed else None),
        _instance_profile_step(clients.iam, plan),
        *[_log_group_step(clients.logs, plan, build) for build in plan.builds],
        *_project_steps(clients.codebuild, plan, clock),
        *([_secret_step(clients.secrets, plan)] if plan.settings.hf_token else []),
    ]


def check(plan: Plan, clients: Clients) -> None:
    """Every name and value bootstrap would send, checked against botocore's service models (lengths, patterns,
    enums, ranges) and IAM's policy quotas before the first change: AWS refuses a bad one only when its turn comes,
    after the steps before it changed the account."""
    names, models = plan.names, tuple(b.model for b in plan.builds)
    signing = plan.settings.signing
    # The key may not exist yet: an ARN of its length stands for it (the account and region are known).
    signing_key = p.pending_key_arn(names) if signing else None
    p.check_policy_sizes(names, models, signing_key)
    requests: list[tuple[Any, str, dict[str, Any]]] = [
        (clients.s3, "CreateBucket", {"Bucket": names.bucket}),
        (clients.iam, "CreateRole", p.role_request(names)),
        (
            clients.iam,
            "PutRolePolicy",
            {
                "RoleName": names.role,
                "PolicyName": p.ROLE_POLICY_NAME,
                "PolicyDocument": p.policy_text(p.role_policy(names, models, signing_key)),
            },
        ),
    ]
    if signing and signing.create:
        requests += [
            (clients.kms, "CreateKey", signingkey.key_request(signing)),
            (clients.kms, "CreateAlias", {"AliasName": signing.kms_key, "TargetKeyId": p.PENDING_KEY_ID}),
        ]
    profile = sp.instance_profile_requests(names, snapshot_repositories(plan))
    requests += [(clients.iam, operation, request) for operation, request in profile.items()]
    for build in plan.builds:
        project = p.project_request(plan, build)
        requests += [
            (clients.ecr, "CreateRepository", p.repository_request(plan.settings, build.model)),
            (clients.logs, "CreateLogGroup", {"logGroupName": names.log_group(build.model), "tags": p.tags_dict()}),
            (clients.codebuild, "CreateProject", project),
            (clients.codebuild, "UpdateProject", {k: v for k, v in project.items() if k != "tags"}),
        ]
    found = [
        problem
        for client, operation, request in requests
        for problem in shapes.check_request(client.meta.service_model, operation, request)
    ]
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise OcimodelError(f"AWS would refuse what this config makes: {found[0]}{more}; nothing was changed")


def documents(plan: Plan, kms: Any) -> list[tuple[str, str]]:
    """The documents a dry run shows: policies as JSON and each model's buildspec, exactly as they are sent (a
    signing key yet to be created appears with an id of zeros in the role's policy)."""
    names, models = plan.names, tuple(b.model for b in plan.builds)
    signing_key = None
    if plan.settings.signing:
        with aws_call(f"read KMS key {plan.settings.signing.kms_key}"):
            found = find_kms_key(kms, plan.settings.signing.kms_key)
        signing_key = found["Arn"] if found else p.pending_key_arn(names)
    shown = [
        (f"IAM role {names.role}: trust policy", _json(p.trust_policy(names))),
        (
            f"IAM role {names.role}: inline policy {p.ROLE_POLICY_NAME}",
            _json(p.role_policy(names, models, signing_key)),
        ),
        (
            f"IAM role {names.snapshot_role}: inline policy {sp.SNAPSHOT_POLICY_NAME} (aws snapshot's instance)",
            _json(sp.instance_pull_policy(names, snapshot_repositories(plan))),
        ),
        ("ECR lifecycle policy (every repository)", _json(p.lifecycle_policy(plan.settings))),
    ]
    shown += [(f"CodeBuild project {names.project(b.model)}: buildspec", p.buildspec(plan, b)) for b in plan.builds]
    return shown


def _json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2)


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _missing(exc: Exception, *codes: str) -> bool:
    return error_code(exc) in codes


# --- S3: the bucket and the source zip ------------------------------------------------------------------------------


def _bucket_step(s3: Any, plan: Plan) -> Step:
    name, region = plan.names.bucket, plan.names.account.region
    detail = "private, SSE-S3 (AES256)"
    with aws_call(f"read S3 bucket {name}"):
        try:
            s3.head_bucket(Bucket=name)
        except ClientError as exc:
            if _missing(exc, "404", "NoSuchBucket", "NotFound"):
                return Step("s3 bucket", name, "create", detail, lambda: _create_bucket(s3, plan, region))
            if _missing(exc, "403", "AccessDenied", "Forbidden"):
                raise OcimodelError(
                    f"S3 bucket {name} exists but this identity may not read it: another account owns it (bucket "
                    "names are global: set another prefix in [aws]), or s3:ListBucket is missing"
                ) from None
            raise
        differs = _bucket_differences(s3, plan)
    if not differs:
        return Step("s3 bucket", name, "none", detail)
    return Step("s3 bucket", name, "update", "set " + ", ".join(differs), lambda: _configure_bucket(s3, plan))


def _bucket_differences(s3: Any, plan: Plan) -> list[str]:
    name = plan.names.bucket
    differs = []
    try:
        block = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
    except ClientError as exc:
        if not _missing(exc, "NoSuchPublicAccessBlockConfiguration"):
            raise
        block = None
    if block != p.PUBLIC_ACCESS_BLOCK:
        differs.append("public access block")
    try:
        rules = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
        algorithm = rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]
    except ClientError as exc:
        if not _missing(exc, "ServerSideEncryptionConfigurationNotFoundError"):
            raise
        algorithm = None
    if algorithm != "AES256":
        differs.append("encryption")
    return differs


def _create_bucket(s3: Any, plan: Plan, region: str) -> None:
    name = plan.names.bucket
    location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=name, ObjectOwnership="BucketOwnerEnforced", **location)
    s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": p.tag_list()})
    _configure_bucket(s3, plan)


def _configure_bucket(s3: Any, plan: Plan) -> None:
    name = plan.names.bucket
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=p.PUBLIC_ACCESS_BLOCK)
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]
        },
    )


def _source_step(s3: Any, plan: Plan, bucket_exists: bool) -> Step:
    bundle, bucket = plan.bundle, plan.names.bucket
    where = f"s3://{bucket}/{p.SOURCE_KEY}"
    detail = f"{bundle.wheel_name} sha256:{bundle.wheel_sha256[:12]}"
    current = None
    if bucket_exists:
        with aws_call(f"read {where}"):
            try:
                current = s3.head_object(Bucket=bucket, Key=p.SOURCE_KEY)["Metadata"].get("sha256")
            except ClientError as exc:
                if not _missing(exc, "404", "NoSuchKey", "NotFound"):
                    raise
    if current == bundle.sha256:
        return Step("s3 object", where, "none", detail)

    def upload() -> None:
        s3.put_object(
            Bucket=bucket,
            Key=p.SOURCE_KEY,
            Body=bundle.data,
            ContentType="application/zip",
            ServerSideEncryption="AES256",
            Metadata={"sha256": bundle.sha256, "wheel": bundle.wheel_name},
        )

    return Step("s3 object", where, "upload", detail, upload)


# --- ECR repositories -----------------------------------------------------------------------------------------------


def _resolved_kms_key(kms: Any, plan: Plan) -> str | None:
    """The ARN of the configured KMS key: ECR stores the ARN whatever the config named (alias, id, alias ARN), so
    only the ARN compares with what an existing repository holds."""
    key = plan.settings.kms_key
    if plan.settings.encryption != "KMS" or not key:
        return None
    if key.startswith("arn:") and ":key/" in key:
        return key
    with aws_call(f"resolve KMS key {key} (kms:DescribeKey)"):
        return str(kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"])


def _repository_step(ecr: Any, plan: Plan, build: ModelBuild, kms_key: str | None) -> Step:
    settings, name = plan.settings, build.model.repository
    lifecycle = p.lifecycle_policy(settings)
    encryption = p.repository_encryption(settings)
    detail = (
        f"scan on push, {settings.tag_mutability}, {encryption['encryptionType']}, keep {settings.keep_images} images,"
        f" untagged expire after {settings.untagged_days} d"
    )
    with aws_call(f"read ECR repository {name}"):
        repo = find_repository(ecr, name)
        if repo is None:

            def create() -> None:
                ecr.create_repository(**p.repository_request(settings, build.model))
                ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=json.dumps(lifecycle))

            return Step("ecr repository", name, "create", detail, create)
        _check_encryption(name, repo.get("encryptionConfiguration") or {}, encryption, kms_key)
        try:
            current_lifecycle = json.loads(ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"])
        except ClientError as exc:
            if not _missing(exc, "LifecyclePolicyNotFoundException"):
                raise
            current_lifecycle = None
    fixes: list[tuple[str, Callable[[], None]]] = []
    if not (repo.get("imageScanningConfiguration") or {}).get("scanOnPush"):
        fixes.append(
            (
                "scan on push",
                lambda: ecr.put_image_scanning_configuration(
                    repositoryName=name, imageScanningConfiguration={"scanOnPush": True}
                ),
            )
        )
    if repo.get("imageTagMutability") != settings.tag_mutability:
        fixes.append(
            (
                f"tag mutability {settings.tag_mutability}",
                lambda: ecr.put_image_tag_mutability(repositoryName=name, imageTagMutability=settings.tag_mutability),
            )
        )
    if not _same(current_lifecycle, lifecycle):
        fixes.append(
            (
                "lifecycle policy",
                lambda: ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=json.dumps(lifecycle)),
            )
        )
    if not fixes:
        return Step("ecr repository", name, "none", detail)

    def update() -> None:
        for _, fix in fixes:
            fix()

    return Step("ecr repository", name, "update", "set " + ", ".join(label for label, _ in fixes), update)


def _check_encryption(name: str, current: dict[str, str], wanted: dict[str, str], kms_key: str | None) -> None:
    """ECR fixes a repository's encryption at creation: a different one in the config can only be reported."""
    have = current.get("encryptionType", "AES256")
    key_differs = have == "KMS" and kms_key is not None and current.get("kmsKey") != kms_key
    if have != wanted["encryptionType"] or key_differs:
        have_text = f"{have} ({current['kmsKey']})" if current.get("kmsKey") else have
        raise OcimodelError(
            f"ECR repository {name} is encrypted with {have_text} but the config asks for "
            f"{wanted['encryptionType']}{' (' + wanted['kmsKey'] + ')' if wanted.get('kmsKey') else ''}; ECR cannot "
            "change a repository's encryption: change [aws] encryption/kms_key, or delete the repository first "
            "(ocimodel aws teardown --delete-images)"
        )


# --- IAM ------------------------------------------------------------------------------------------------------------


def _policy_document(value: Any) -> Any:
    """IAM documents come back parsed by boto3, or as URL-encoded JSON from some endpoints."""
    return json.loads(unquote(value)) if isinstance(value, str) else value


def _role_step(iam: Any, plan: Plan) -> tuple[Step, bool]:
    """The role's step, and whether bootstrap may write the role's policies (it made the role, or makes it now).

    A role of the same name that ocimodel did not create is used as it is: its policies may serve others.
    """
    names = plan.names
    trust = p.trust_policy(names)
    detail = f"assumable by codebuild.amazonaws.com for projects {names.settings.prefix}-*"
    with aws_call(f"read IAM role {names.role}"):
        role = find_role(iam, names.role)
    if role is None:

        return Step("iam role", names.role, "create", detail, lambda: iam.create_role(**p.role_request(names))), True
    if not managed(role.get("Tags")):
        return Step("iam role", names.role, "keep", "not created by ocimodel: its policies are left as they are"), False
    if _same(_policy_document(role.get("AssumeRolePolicyDocument")), trust):
        return Step("iam role", names.role, "none", detail), True
    return (
        Step(
            "iam role",
            names.role,
            "update",
            "set trust policy",
            lambda: iam.update_assume_role_policy(RoleName=names.role, PolicyDocument=p.policy_text(trust)),
        ),
        True,
    )


def _role_policy_step(iam: Any, plan: Plan, writable: bool, signing: signingkey.KeyArn | None) -> Step:
    names, models = plan.names, tuple(b.model for b in plan.builds)
    # A key still to be created has no ARN yet: the policy differs from any written one, and is made when run.
    pending = signing is not None and signing.value is None
    document = p.role_policy(names, models, signing.value if signing is not None else None)
    label = f"{names.role}/{p.ROLE_POLICY_NAME}"
    if not writable:
        return Step("iam policy", label, "keep", "on a role ocimodel did not create: not written")
    detail = "logs, ECR login + push on its repositories, source zip" + (", HF token" if plan.settings.hf_token else "")
    detail += ", kms:Sign on the signing key" if signing is not None else ""
    with aws_call(f"read IAM role policy {label}"):
        try:
            current = _policy_document(
                iam.get_role_policy(RoleName=names.role, PolicyName=p.ROLE_POLICY_NAME)["PolicyDocument"]
            )
        except ClientError as exc:
            if not _missing(exc, "NoSuchEntity"):
                raise
            current = None
    if not pending and _same(current, document):
        return Step("iam policy", label, "none", detail)

    def put() -> None:
        # Worked out again when run: a key created by the step before has its ARN only now.
        final = p.role_policy(names, models, signing.value if signing is not None else None)
        iam.put_role_policy(RoleName=names.role, PolicyName=p.ROLE_POLICY_NAME, PolicyDocument=p.policy_text(final))

    return Step("iam policy", label, "create" if current is None else "update", detail, put)


def snapshot_repositories(plan: Plan) -> list[str]:
    """The repositories ``aws snapshot``'s instance may pull: the config's, by namespace when listing them all would
    not fit IAM's policy limit (as for the build role)."""
    names, models = plan.names, tuple(b.model for b in plan.builds)
    listed = sorted({names.repository_arn(m) for m in models})
    if p.policy_size(sp.instance_pull_policy(names, listed)) <= p.INLINE_POLICIES_MAX:
        return listed
    return p.repository_patterns(names, models)


def _instance_profile_step(iam: Any, plan: Plan) -> Step:
    """The instance profile of ``aws snapshot``'s temporary instance, with its role of the same name: SSM's managed
    core policy and ECR pulls of the config's repositories, nothing else."""
    names = plan.names
    name = names.snapshot_role
    requests = sp.instance_profile_requests(names, snapshot_repositories(plan))
    detail = "for aws snapshot: SSM core, ECR pull of the config's repositories"
    with aws_call(f"read IAM role {name}"):
        role = find_role(iam, name)
        if role is not None and not managed(role.get("Tags")):
            return Step("instance profile", name, "keep", "its role was not created by ocimodel: left as it is")
        fixes: list[tuple[str, Callable[[], None]]] = []
        if role is None:
            fixes.append(("role", lambda: iam.create_role(**requests["CreateRole"])))
            attached: list[str] = []
            policy = None
            profile = None
        else:
            if not _same(_policy_document(role.get("AssumeRolePolicyDocument")), sp.instance_trust_policy()):
                fixes.append(
                    (
                        "trust policy",
                        lambda: iam.update_assume_role_policy(
                            RoleName=name, PolicyDocument=requests["CreateRole"]["AssumeRolePolicyDocument"]
                        ),
                    )
                )
            attached = [a["PolicyArn"] for a in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]]
            try:
                policy = _policy_document(
                    iam.get_role_policy(RoleName=name, PolicyName=sp.SNAPSHOT_POLICY_NAME)["PolicyDocument"]
                )
            except ClientError as exc:
                if not _missing(exc, "NoSuchEntity"):
                    raise
                policy = None
            profile = find_instance_profile(iam, name)
    if requests["AttachRolePolicy"]["PolicyArn"] not in attached:
        fixes.append((sp.SSM_CORE_POLICY, lambda: iam.attach_role_policy(**requests["AttachRolePolicy"])))
    if not _same(policy, json.loads(requests["PutRolePolicy"]["PolicyDocument"])):
        fixes.append(("ECR pull policy", lambda: iam.put_role_policy(**requests["PutRolePolicy"])))
    if profile is None:
        fixes.append(("profile", lambda: iam.create_instance_profile(**requests["CreateInstanceProfile"])))
    if profile is None or name not in [r["RoleName"] for r in profile.get("Roles") or []]:
        add = requests["AddRoleToInstanceProfile"]
        fixes.append(("role in profile", lambda: iam.add_role_to_instance_profile(**add)))
    if not fixes:
        return Step("instance profile", name, "none", detail)

    def apply_fixes() -> None:
        for _, fix in fixes:
            fix()

    if role is None:
        return Step("instance profile", name, "create", detail, apply_fixes)
    return Step("instance profile", name, "update", "set " + ", ".join(w for w, _ in fixes), apply_fixes)


# --- CloudWatch Logs ------------------------------------------------------------------------------------------------


def _log_group_step(logs: Any, plan: Plan, build: ModelBuild) -> Step:
    name, days = plan.names.log_group(build.model), plan.settings.log_retention_days
    detail = f"retention {days} d"
    with aws_call(f"read log group {name}"):
        group = find_log_group(logs, name)
    if group is None:

        def create() -> None:
            logs.create_log_group(logGroupName=name, tags=p.tags_dict())
            logs.put_retention_policy(logGroupName=name, retentionInDays=days)

        return Step("log group", name, "create", detail, create)
    if group.get("retentionInDays") == days:
        return Step("log group", name, "none", detail)
    return Step(
        "log group",
        name,
        "update",
        f"set retention {days} d",
        lambda: logs.put_retention_policy(logGroupName=name, retentionInDays=days),
    )


# --- CodeBuild ------------------------------------------------------------------------------------------------------


def _project_steps(codebuild: Any, plan: Plan, clock: Clock) -> list[Step]:
    names = [plan.names.project(b.model) for b in plan.builds]
    with aws_call("read CodeBuild projects"):
        found = find_projects(codebuild, names)
    result = []
    for build, name in zip(plan.builds, names, strict=True):
        request = p.project_request(plan, build)
        size = f", {human_size(build.size)} of files" if build.size is not None else ""
        detail = f"{build.compute_type}, timeout {build.timeout_minutes} min{size}, no privileged mode"
        current = found.get(name)
        if current is None:
            result.append(
                Step(
                    "codebuild project",
                    name,
                    "create",
                    detail,
                    partial(_while_role_propagates, partial(codebuild.create_project, **request), clock),
                )
            )
            continue
        wanted, have = p.project_view(request), p.project_view(current)
        differs = [key for key in wanted if wanted[key] != have[key]]
        if not differs:
            result.append(Step("codebuild project", name, "none", detail))
            continue
        update = {k: v for k, v in request.items() if k != "tags"}
        result.append(
            Step(
                "codebuild project",
                name,
                "update",
                f"set {', '.join(differs)}: {detail}",
                partial(_while_role_propagates, partial(codebuild.update_project, **update), clock),
            )
        )
    return result


def role_not_ready(exc: Exception) -> bool:
    """CodeBuild refusing a role IAM has not finished propagating (InvalidInputException, any wording)."""
    if not isinstance(exc, ClientError) or not _missing(exc, "InvalidInputException"):
        return False
    return bool(_ROLE_NOT_READY.search(str(exc.response.get("Error", {}).get("Message", ""))))


def _while_role_propagates(call: Callable[[], Any], clock: Clock) -> None:
    """Retry while CodeBuild cannot yet use a role IAM just created or changed, for up to three minutes."""
    retry(
        call,
        retryable=role_not_ready,
        policy=eventually(ROLE_PROPAGATION_SECONDS, ROLE_PROPAGATION_DELAY_SECONDS, clock),
    )


# --- Secrets Manager ------------------------------------------------------------------------------------------------


def _secret_step(secrets: Any, plan: Plan) -> Step:
    name = plan.names.secret
    with aws_call(f"read secret {name}"):
        present = secret_exists(secrets, name)
    if present:
        return Step("secret", name, "none", "HF token stored; builds read it at run time")
    return Step("secret", name, "missing", "no HF token yet: run ocimodel aws set-hf-token before building")
