"""What the account holds now, read one resource at a time: ``None`` (or ``False``) where AWS says it does not exist.

bootstrap compares these with the plan, teardown decides from them what it may delete, and ``aws build`` checks
the HF token's secret before starting; each reads the same resource the same way. A refusal other than "not found"
(a missing permission, throttling) is raised as botocore raised it, for the caller's ``aws_call`` to word.
"""

from __future__ import annotations

from typing import Any, Callable

from botocore.exceptions import ClientError

from ocimodel.aws import plan as p
from ocimodel.aws.session import error_code

#: CodeBuild's BatchGetProjects and BatchGetBuilds take at most this many names or ids.
BATCH_MAX = 100


def managed(tags: list[dict[str, str]] | None) -> bool:
    """Whether AWS tags (``Key``/``Value`` pairs) mark a resource as made by bootstrap."""
    found = {t.get("Key"): t.get("Value") for t in tags or []}
    return found.get(p.MANAGED_TAG[0]) == p.MANAGED_TAG[1]


def _absent_on(call: Callable[[], dict[str, Any]], *codes: str) -> dict[str, Any] | None:
    """The call's answer, or ``None`` when AWS answers with one of ``codes`` (its ways of saying "no such thing")."""
    try:
        return call()
    except ClientError as exc:
        if error_code(exc) in codes:
            return None
        raise


def find_repository(ecr: Any, name: str) -> dict[str, Any] | None:
    found = _absent_on(lambda: ecr.describe_repositories(repositoryNames=[name]), "RepositoryNotFoundException")
    return None if found is None else found["repositories"][0]


def find_role(iam: Any, name: str) -> dict[str, Any] | None:
    found = _absent_on(lambda: iam.get_role(RoleName=name), "NoSuchEntity")
    return None if found is None else found["Role"]


def find_instance_profile(iam: Any, name: str) -> dict[str, Any] | None:
    found = _absent_on(lambda: iam.get_instance_profile(InstanceProfileName=name), "NoSuchEntity")
    return None if found is None else found["InstanceProfile"]


def find_log_group(logs: Any, name: str) -> dict[str, Any] | None:
    groups = logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
    return next((g for g in groups if g["logGroupName"] == name), None)


def find_projects(codebuild: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """The projects among ``names`` that exist, by name, read a hundred at a time."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(names), BATCH_MAX):
        for project in codebuild.batch_get_projects(names=names[start : start + BATCH_MAX])["projects"]:
            found[project["name"]] = project
    return found


def find_secret(secrets: Any, name: str) -> dict[str, Any] | None:
    """The secret's description, also while it is scheduled for deletion (``DeletedDate`` set)."""
    return _absent_on(lambda: secrets.describe_secret(SecretId=name), "ResourceNotFoundException")


def secret_exists(secrets: Any, name: str) -> bool:
    """Whether the secret exists and is not scheduled for deletion: a deleted one holds no value a build can read."""
    described = find_secret(secrets, name)
    return described is not None and "DeletedDate" not in described


def find_kms_key(kms: Any, key_id: str) -> dict[str, Any] | None:
    """A KMS key's metadata by alias, id or ARN, also while disabled or pending deletion; None when KMS knows none."""
    found = _absent_on(lambda: kms.describe_key(KeyId=key_id), "NotFoundException")
    return None if found is None else found["KeyMetadata"]
