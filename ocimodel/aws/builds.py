"""``ocimodel aws build`` and ``status``: start a model's build, follow its log live, report the image it pushed.

boto3 has no waiter for CodeBuild builds, so following is polling: the build's status with ``batch_get_builds``,
and its CloudWatch stream with ``get_log_events`` from the head, paging with ``nextForwardToken`` until the token
comes back unchanged (the end, for now). The log is read once more after the build ends, so its last lines, the
``ocimodel build --json`` result among them, are never lost.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Sequence

from botocore.exceptions import ClientError

from ocimodel.aws.config import ModelSpec
from ocimodel.aws.plan import OPTIONS_ANNOTATION, Names
from ocimodel.aws.resources import BATCH_MAX
from ocimodel.aws.session import Clients, aws_call, error_code
from ocimodel.errors import OcimodelError

IN_PROGRESS = "IN_PROGRESS"
SUCCEEDED = "SUCCEEDED"
_PHASE_FAILURES = frozenset({"FAILED", "FAULT", "TIMED_OUT", "STOPPED", "CLIENT_ERROR"})
#: How AWS words a refusal that a policy still propagating through IAM also produces.
_DENIED = re.compile(r"access ?denied|not authori[sz]ed|unable to assume|assume ?role|forbidden", re.IGNORECASE)
PROPAGATION_HINT = (
    "if bootstrap created or changed the role moments ago, IAM may not have propagated it yet (it can take a few "
    "minutes): wait, then run ocimodel aws build again; if it persists, compare the role's policy with docs/aws.md"
)
ANNOTATION_REVISION = "org.opencontainers.image.revision"
_MANIFEST_TYPES = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
]


@dataclass(frozen=True)
class Finished:
    build_id: str
    status: str
    #: ``oci://…@sha256:…`` as the build printed it (``ocimodel build --json``), when it did.
    uri: str | None
    #: The failed phase and CodeBuild's explanation, for a build that did not succeed.
    reason: str | None


@dataclass(frozen=True)
class ModelStatus:
    model: ModelSpec
    project: str
    build_id: str | None
    build_status: str | None
    started: datetime | None
    uri: str | None


@dataclass(frozen=True)
class TaggedImage:
    """The image an immutable tag already names, and what it says it was built from."""

    digest: str
    revision: str | None
    options: str | None


def start(clients: Clients, names: Names, model: ModelSpec) -> str:
    project = names.project(model)
    with aws_call(f"start a build of CodeBuild project {project}"):
        try:
            return str(clients.codebuild.start_build(projectName=project)["build"]["id"])
        except ClientError as exc:
            code = error_code(exc)
            message = " ".join(str(exc.response.get("Error", {}).get("Message", "")).split())
            if code == "ResourceNotFoundException":
                raise OcimodelError(
                    f"CodeBuild project {project} does not exist: run ocimodel aws bootstrap with this config first"
                ) from None
            if code == "AccountLimitExceededException":
                machine = _compute_type(clients, project)
                raise OcimodelError(
                    f"cannot start a build of CodeBuild project {project}: AWS said {code}: {message}; the "
                    f"account's CodeBuild quota of concurrent builds on {machine} is used up or 0 (common on new "
                    "accounts for large machines): ask for more in Service Quotas (AWS CodeBuild), or set a smaller "
                    "compute_type"
                ) from None
            if code == "InvalidInputException" and _DENIED.search(message):
                raise OcimodelError(
                    f"cannot start a build of CodeBuild project {project}: AWS said {code}: {message}; "
                    + PROPAGATION_HINT
                ) from None
            raise


def _compute_type(clients: Clients, project: str) -> str:
    """The project's machine, to name in a quota message; the project exists, as start_build found it."""
    projects = clients.codebuild.batch_get_projects(names=[project])["projects"]
    return str(projects[0]["environment"]["computeType"]) if projects else "its compute type"


def tagged_image(clients: Clients, model: ModelSpec) -> TaggedImage | None:
    """The image at the model's tag when ECR will not let a push move that tag (IMMUTABLE, or
    IMMUTABLE_WITH_EXCLUSION without a matching exclusion); None when the tag is free or mutable."""
    with aws_call(f"read ECR repository {model.repository}"):
        try:
            (repository,) = clients.ecr.describe_repositories(repositoryNames=[model.repository])["repositories"]
        except ClientError as exc:
            if error_code(exc) == "RepositoryNotFoundException":
                return None
            raise
        if not _immutable(repository, model.tag):
            return None
        found = clients.ecr.batch_get_image(
            repositoryName=model.repository,
            imageIds=[{"imageTag": model.tag}],
            acceptedMediaTypes=_MANIFEST_TYPES,
        )["images"]
    if not found:
        return None
    try:
        manifest = json.loads(found[0]["imageManifest"])
    except ValueError:
        manifest = {}
    annotations = manifest.get("annotations") if isinstance(manifest, dict) else None
    annotations = annotations if isinstance(annotations, dict) else {}
    return TaggedImage(
        found[0]["imageId"]["imageDigest"], annotations.get(ANNOTATION_REVISION), annotations.get(OPTIONS_ANNOTATION)
    )


def _immutable(repository: dict[str, Any], tag: str) -> bool:
    mutability = repository.get("imageTagMutability", "MUTABLE")
    filters = repository.get("imageTagMutabilityExclusionFilters") or []
    excluded = any(fnmatch.fnmatchcase(tag, f.get("filter", "")) for f in filters)
    if mutability == "IMMUTABLE_WITH_EXCLUSION":
        return not excluded
    if mutability == "MUTABLE_WITH_EXCLUSION":
        return excluded
    return mutability == "IMMUTABLE"


def follow(
    clients: Clients,
    build_id: str,
    log_group: str,
    echo: Callable[[str], None],
    sleep: Callable[[float], None],
    interval: float,
) -> Finished:
    """Echo the build's log lines as they arrive until the build ends; its outcome and pushed image."""
    token: str | None = None
    uri: str | None = None
    while True:
        build = get_build(clients, build_id)
        logs = build.get("logs") or {}
        # Until the build has started logging, CodeBuild does not say where; the stream is named after the build.
        group = logs.get("groupName") or log_group
        stream = logs.get("streamName") or build_id.split(":", 1)[-1]
        messages, token = read_new(clients.logs, group, stream, token)
        for message in messages:
            echo(message)
            uri = uri_in(message) or uri
        if build["buildStatus"] != IN_PROGRESS:
            return Finished(build_id, build["buildStatus"], uri, _failure(build))
        sleep(interval)


def get_build(clients: Clients, build_id: str) -> dict[str, Any]:
    with aws_call(f"read CodeBuild build {build_id}"):
        builds = clients.codebuild.batch_get_builds(ids=[build_id])["builds"]
    if not builds:
        raise OcimodelError(f"CodeBuild has no build {build_id}")
    return builds[0]  # type: ignore[no-any-return]


def read_new(logs: Any, group: str, stream: str, token: str | None) -> tuple[list[str], str | None]:
    """The log lines after ``token``, and the token to continue from."""
    messages: list[str] = []
    with aws_call(f"read log stream {group}/{stream}"):
        while True:
            try:
                page = logs.get_log_events(
                    logGroupName=group,
                    logStreamName=stream,
                    startFromHead=True,
                    **({"nextToken": token} if token else {}),
                )
            except ClientError as exc:
                if error_code(exc) == "ResourceNotFoundException":  # the stream is created when the build starts
                    return messages, token
                raise
            messages += [event["message"].rstrip("\n") for event in page["events"]]
            following = page.get("nextForwardToken")
            if not following or following == token:
                return messages, token
            token = following


def uri_in(message: str) -> str | None:
    """The image URI of an ``ocimodel build --json`` result line, if ``message`` is one."""
    text = message.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    uri = document.get("uri") if isinstance(document, dict) else None
    return uri if isinstance(uri, str) and uri.startswith("oci://") and "@sha256:" in uri else None


def _failure(build: dict[str, Any]) -> str | None:
    if build["buildStatus"] == SUCCEEDED:
        return None
    for phase in build.get("phases") or []:
        if phase.get("phaseStatus") in _PHASE_FAILURES:
            contexts = [c.get("message") for c in phase.get("contexts") or [] if c.get("message")]
            reason = f"phase {phase['phaseType']} {phase['phaseStatus']}" + (f": {contexts[0]}" if contexts else "")
            return reason + (f"; {PROPAGATION_HINT}" if contexts and _DENIED.search(contexts[0]) else "")
    return None


def image_uri(clients: Clients, names: Names, model: ModelSpec) -> str | None:
    """``oci://<registry>/<repository>@<digest>`` of the model's tag in ECR, or None if the tag is not there."""
    with aws_call(f"read ECR repository {model.repository}"):
        try:
            images = clients.ecr.describe_images(repositoryName=model.repository, imageIds=[{"imageTag": model.tag}])[
                "imageDetails"
            ]
        except ClientError as exc:
            if error_code(exc) in ("ImageNotFoundException", "RepositoryNotFoundException"):
                return None
            raise
    if not images:
        return None
    return f"oci://{names.account.registry}/{model.repository}@{images[0]['imageDigest']}"


def status(clients: Clients, names: Names, models: Sequence[ModelSpec]) -> list[ModelStatus]:
    """Each model's last build and the image its tag names now."""
    last: dict[str, str] = {}
    for model in models:
        project = names.project(model)
        with aws_call(f"list the builds of CodeBuild project {project}"):
            try:
                ids = clients.codebuild.list_builds_for_project(projectName=project, sortOrder="DESCENDING")["ids"]
            except ClientError as exc:
                if error_code(exc) != "ResourceNotFoundException":
                    raise
                ids = []
        if ids:
            last[model.name] = ids[0]
    builds: dict[str, dict[str, Any]] = {}
    ids = list(last.values())
    with aws_call("read CodeBuild builds"):
        for start in range(0, len(ids), BATCH_MAX):
            found = clients.codebuild.batch_get_builds(ids=ids[start : start + BATCH_MAX])["builds"]
            builds |= {b["id"]: b for b in found}
    result = []
    for model in models:
        build = builds.get(last.get(model.name, ""), {})
        result.append(
            ModelStatus(
                model=model,
                project=names.project(model),
                build_id=build.get("id"),
                build_status=build.get("buildStatus"),
                started=build.get("startTime"),
                uri=image_uri(clients, names, model),
            )
        )
    return result
