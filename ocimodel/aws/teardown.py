"""``ocimodel aws teardown``: remove what bootstrap made for a config, in the reverse order of its making.

Repositories hold the images KServe pulls, so they go only with ``--delete-images``. A role, bucket, secret,
signing key or repository goes only if ocimodel created it (it carries our tag): a config may name things the user
keeps for other uses.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from ocimodel.aws import plan as p
from ocimodel.aws import signingkey
from ocimodel.aws.config import Config, ModelSpec
from ocimodel.aws.plan import Names
from ocimodel.aws.resources import (
    find_instance_profile,
    find_log_group,
    find_projects,
    find_repository,
    find_role,
    find_secret,
    managed,
)
from ocimodel.aws.session import Clients, aws_call, error_code
from ocimodel.aws.steps import Step


def steps(
    clients: Clients, config: Config, names: Names, delete_images: bool, delete_snapshots: bool = False
) -> list[Step]:
    models = config.models
    return [
        *_project_steps(clients.codebuild, names, models),
        *[_log_group_step(clients.logs, names.log_group(m)) for m in models],
        _role_step(clients.iam, names),
        _instance_profile_step(clients.iam, names),
        *_snapshot_steps(clients.ec2, names, delete_snapshots),
        _bucket_step(clients.s3, names),
        *([_secret_step(clients.secrets, names)] if config.aws.hf_token else []),
        *([signingkey.teardown_step(clients.kms, config.aws.signing)] if config.aws.signing else []),
        *[_repository_step(clients.ecr, m.repository, delete_images) for m in models],
    ]


def _project_steps(codebuild: Any, names: Names, models: tuple[ModelSpec, ...]) -> list[Step]:
    wanted = [names.project(m) for m in models]
    with aws_call("read CodeBuild projects"):
        found = set(find_projects(codebuild, wanted))
    return [
        Step("codebuild project", name, "delete", "", partial(codebuild.delete_project, name=name))
        if name in found
        else Step("codebuild project", name, "absent")
        for name in wanted
    ]


def _log_group_step(logs: Any, name: str) -> Step:
    with aws_call(f"read log group {name}"):
        group = find_log_group(logs, name)
    if group is None:
        return Step("log group", name, "absent")
    return Step("log group", name, "delete", "build logs", lambda: logs.delete_log_group(logGroupName=name))


def _role_step(iam: Any, names: Names) -> Step:
    with aws_call(f"read IAM role {names.role}"):
        role = find_role(iam, names.role)
        if role is None:
            return Step("iam role", names.role, "absent")
        if not managed(role.get("Tags")):
            return Step("iam role", names.role, "keep", "not created by ocimodel")
        policies = iam.list_role_policies(RoleName=names.role)["PolicyNames"]

    def delete() -> None:
        if p.ROLE_POLICY_NAME in policies:
            iam.delete_role_policy(RoleName=names.role, PolicyName=p.ROLE_POLICY_NAME)
        iam.delete_role(RoleName=names.role)

    return Step("iam role", names.role, "delete", f"with its policy {p.ROLE_POLICY_NAME}", delete)


def _instance_profile_step(iam: Any, names: Names) -> Step:
    """``aws snapshot``'s instance profile and its role, if bootstrap made them."""
    name = names.snapshot_role
    with aws_call(f"read IAM role {name}"):
        role = find_role(iam, name)
        profile = find_instance_profile(iam, name)
        if role is None and profile is None:
            return Step("instance profile", name, "absent")
        if role is not None and not managed(role.get("Tags")):
            return Step("instance profile", name, "keep", "its role was not created by ocimodel")
        attached = [a["PolicyArn"] for a in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]]
        inline = iam.list_role_policies(RoleName=name)["PolicyNames"] if role is not None else []

    def delete() -> None:
        if profile is not None:
            for member in profile.get("Roles") or []:
                iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=member["RoleName"])
            iam.delete_instance_profile(InstanceProfileName=name)
        if role is not None:
            for arn in attached:
                iam.detach_role_policy(RoleName=name, PolicyArn=arn)
            for policy in inline:
                iam.delete_role_policy(RoleName=name, PolicyName=policy)
            iam.delete_role(RoleName=name)

    return Step("instance profile", name, "delete", "with its role and policies (aws snapshot's)", delete)


def _snapshot_steps(ec2: Any, names: Names, delete_snapshots: bool) -> list[Step]:
    """The EBS snapshots ``aws snapshot`` made for this prefix (by their tags): deleted only when asked, since nodes
    may be launched from them."""
    from ocimodel.aws.snapshot import made_snapshots

    found = made_snapshots(ec2, names.settings.prefix)
    if not delete_snapshots:
        return [
            Step("ebs snapshot", s["SnapshotId"], "keep", f"{s['VolumeSize']} GiB; --delete-snapshots deletes it")
            for s in found
        ]
    return [
        Step(
            "ebs snapshot",
            s["SnapshotId"],
            "delete",
            f"{s['VolumeSize']} GiB",
            partial(ec2.delete_snapshot, SnapshotId=s["SnapshotId"]),
        )
        for s in found
    ]


def _bucket_step(s3: Any, names: Names) -> Step:
    bucket = names.bucket
    with aws_call(f"read S3 bucket {bucket}"):
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            return Step("s3 bucket", bucket, "absent")
        try:
            tags = s3.get_bucket_tagging(Bucket=bucket).get("TagSet")
        except ClientError as exc:
            if error_code(exc) != "NoSuchTagSet":
                raise
            tags = None
    if not managed(tags):
        return Step("s3 bucket", bucket, "keep", "not created by ocimodel")

    def delete() -> None:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=bucket)

    return Step("s3 bucket", bucket, "delete", "with the ocimodel wheel", delete)


def _secret_step(secrets: Any, names: Names) -> Step:
    name = names.secret
    with aws_call(f"read secret {name}"):
        described = find_secret(secrets, name)
    if described is None:
        return Step("secret", name, "absent")
    if "DeletedDate" in described:
        return Step("secret", name, "absent", "already scheduled for deletion")
    if not managed(described.get("Tags")):
        return Step("secret", name, "keep", "not created by ocimodel")
    return Step(
        "secret",
        name,
        "delete",
        "HF token, without a recovery window",
        lambda: secrets.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True),
    )


def _repository_step(ecr: Any, name: str, delete_images: bool) -> Step:
    with aws_call(f"read ECR repository {name}"):
        repository = find_repository(ecr, name)
        if repository is None:
            return Step("ecr repository", name, "absent")
        images = sum(len(page["imageIds"]) for page in ecr.get_paginator("list_images").paginate(repositoryName=name))
        tags = ecr.list_tags_for_resource(resourceArn=repository["repositoryArn"]).get("tags")
    if not managed(tags):
        return Step("ecr repository", name, "keep", f"{images} image(s); not created by ocimodel")
    if not delete_images:
        return Step("ecr repository", name, "keep", f"{images} image(s); --delete-images deletes it with them")
    return Step(
        "ecr repository",
        name,
        "delete",
        f"with its {images} image(s)",
        lambda: ecr.delete_repository(repositoryName=name, force=True),
    )
