"""``ocimodel aws snapshot``: an EBS snapshot of a node's data volume with the models' images already in containerd.

One temporary instance (the family's AMI, the instance profile bootstrap made, a security group with no inbound rule,
IMDSv2 only) pulls every image by digest through SSM, stops, and its data volume is snapshotted; then the instance and
the security group are deleted. Whatever this run created is recorded as it is created, so a failure or Ctrl-C at any
point deletes exactly that and says what, if anything, could not be deleted. Every wait is bounded and timed by an
injectable clock; the commands reach the instance through a runner (SSM), which tests replace.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, TypeVar

from botocore.exceptions import ClientError

from ocimodel.aws import snapshot_plan as sp
from ocimodel.aws.config import Config, ModelSpec
from ocimodel.aws.plan import MANAGED_TAG, Names
from ocimodel.aws.session import Clients, Clock, aws_call, error_code, eventually
from ocimodel.aws.snapshot_plan import Image, Layer
from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Platform,
    descriptor_list,
    is_index,
)
from ocimodel.registry.reference import Reference, parse_ecr, parse_reference
from ocimodel.retry import retry

_MANIFEST_TYPES = [OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST]
#: Bounds of the waits, in seconds.
RUNNING_SECONDS = 600.0
SSM_ONLINE_SECONDS = 900.0
STOPPED_SECONDS = 900.0
TERMINATED_SECONDS = 900.0
#: A snapshot of a few hundred GB takes tens of minutes; the first of a volume takes longest.
SNAPSHOT_SECONDS_BASE = 3600.0
SNAPSHOT_SECONDS_PER_GIB = 30.0
PROFILE_PROPAGATION_SECONDS = 120.0
SECURITY_GROUP_RELEASE_SECONDS = 300.0
POLL_SECONDS = 5.0
SSM_DELIVERY_SECONDS = 600
_SSM_PENDING = frozenset({"Pending", "InProgress", "Delayed", "Cancelling"})


@dataclass(frozen=True)
class Options:
    family: str = sp.BOTTLEROCKET
    kubernetes_version: str = sp.DEFAULT_KUBERNETES_VERSION
    ami: str | None = None
    arch: str = "amd64"
    instance_type: str | None = None
    subnet: str | None = None
    encrypt: bool = False
    kms_key: str | None = None
    volume_size: int | None = None
    extra_images: tuple[str, ...] = ()
    tag: str | None = None
    force: bool = False


@dataclass(frozen=True)
class Ami:
    id: str
    #: The SSM public parameter it came from, or None for ``--ami``.
    parameter: str | None


@dataclass(frozen=True)
class Subnet:
    id: str
    vpc: str


@dataclass(frozen=True)
class SnapshotPlan:
    images: tuple[Image, ...]
    ami: Ami
    instance_type: str
    subnet: Subnet
    volume_gib: int
    family: str
    arch: str
    encrypt: bool
    kms_key: str | None
    profile: str
    tags: dict[str, str]

    @property
    def key(self) -> str:
        return self.tags[sp.TAG_KEY]


@dataclass(frozen=True)
class Snapshot:
    id: str
    size_gib: int
    encrypted: bool
    kms_key: str | None
    #: Found already made, rather than made now.
    reused: bool


class Runner(Protocol):
    """How commands reach the instance: SSM for real, a fake in tests (moto runs nothing)."""

    def wait_online(self, instance_id: str) -> None: ...

    def run(self, instance_id: str, script: str, timeout_seconds: int, what: str) -> str: ...


# --- resolving the images -------------------------------------------------------------------------------------------


def resolve_images(
    clients: Clients, names: Names, config: Config, models: Sequence[ModelSpec], options: Options
) -> tuple[Image, ...]:
    """Each model's image at its tag (or ``--tag``) in ECR, and each extra image, pinned to its digest, with the
    layers of the snapshot's platform."""
    images = []
    for model in models:
        tag = options.tag or model.tag
        found = _ecr_image(clients.ecr, model.repository, tag, options.arch)
        if found is None:
            raise OcimodelError(
                f"model {model.id} has no image at {names.account.registry}/{model.repository}:{tag}: build it first "
                f"(ocimodel aws build {model.name}), or pass --tag"
            )
        digest, layers = found
        images.append(Image(model.id, f"{names.account.registry}/{model.repository}", digest, True, layers))
    repositories = {m.repository for m in config.models}
    for text in options.extra_images:
        images.append(_extra_image(clients, names, repositories, text, options.arch))
    return tuple(images)


def _ecr_image(ecr: Any, repository: str, tag: str, arch: str) -> tuple[str, tuple[Layer, ...]] | None:
    """The digest ``tag`` (or a digest) names in ``repository``, and the layers of its ``linux/<arch>`` image."""
    image_id = {"imageDigest": tag} if tag.startswith("sha256:") else {"imageTag": tag}
    with aws_call(f"read ECR repository {repository}"):
        try:
            found = ecr.batch_get_image(
                repositoryName=repository, imageIds=[image_id], acceptedMediaTypes=_MANIFEST_TYPES
            )["images"]
        except ClientError as exc:
            if error_code(exc) == "RepositoryNotFoundException":
                return None
            raise
        if not found:
            return None
        digest = found[0]["imageId"]["imageDigest"]

        def by_digest(wanted: str) -> dict[str, Any]:
            images = ecr.batch_get_image(
                repositoryName=repository, imageIds=[{"imageDigest": wanted}], acceptedMediaTypes=_MANIFEST_TYPES
            )["images"]
            if not images:
                raise OcimodelError(f"ECR repository {repository} lists {wanted} in an index but has no such manifest")
            return json.loads(images[0]["imageManifest"])  # type: ignore[no-any-return]

        layers = _layers(json.loads(found[0]["imageManifest"]), arch, by_digest, f"{repository}:{tag}")
    return digest, layers


def _layers(
    manifest: dict[str, Any], arch: str, fetch: Callable[[str], dict[str, Any]], where: str
) -> tuple[Layer, ...]:
    """The layers the node's platform gets: the manifest's, or those of the index's entry for ``linux/<arch>``."""
    if is_index(str(manifest.get("mediaType") or ""), manifest):
        chosen = Platform("linux", arch).choose(descriptor_list(manifest, "manifests", where))
        if chosen is None:
            raise OcimodelError(f"{where} has no linux/{arch} image: pass --arch with a platform it has")
        manifest = fetch(chosen.digest)
    return tuple(Layer(str(layer.get("mediaType", "")), int(layer["size"])) for layer in manifest.get("layers") or [])


def _extra_image(clients: Clients, names: Names, repositories: set[str], text: str, arch: str) -> Image:
    """An ``--extra-image``: in this account's ECR, one of the config's repositories (the only ones the instance may
    pull); elsewhere, a public image the instance pulls without credentials."""
    ref = parse_reference(text)
    ecr = parse_ecr(ref.registry)
    if ecr is None:
        return _public_image(ref, arch)
    if (ecr.account, ecr.region) != (names.account.id, names.account.region) or ref.repository not in repositories:
        raise OcimodelError(
            f"--extra-image {text}: the snapshot instance may pull only this config's ECR repositories in "
            f"{names.account.region}; copy the image into one, or use a public image"
        )
    found = _ecr_image(clients.ecr, ref.repository, ref.identifier, arch)
    if found is None:
        raise OcimodelError(f"--extra-image {text}: no such image in ECR")
    return Image(None, f"{ref.registry}/{ref.repository}", found[0], True, found[1])


def _public_image(ref: Reference, arch: str) -> Image:
    from ocimodel.layout.descriptor import sha256_digest
    from ocimodel.registry.client import RegistryClient
    from ocimodel.registry.reference import is_loopback

    with RegistryClient(ref.registry, plain_http=is_loopback(ref.registry)) as client:
        data, _ = client.get_manifest(ref.repository, ref.identifier)

        def by_digest(wanted: str) -> dict[str, Any]:
            return json.loads(client.get_manifest(ref.repository, wanted)[0])  # type: ignore[no-any-return]

        digest = ref.digest or sha256_digest(data)
        layers = _layers(json.loads(data), arch, by_digest, str(ref))
    return Image(None, f"{ref.registry}/{ref.repository}", digest, False, layers)


# --- what to launch -------------------------------------------------------------------------------------------------


def find_ami(clients: Clients, options: Options) -> Ami:
    """The AMI: ``--ami``, else the family's SSM public parameter; checked to exist for the architecture."""
    parameter = None
    ami = options.ami
    if ami is None:
        parameter = sp.ami_parameter(options.family, options.kubernetes_version, options.arch)
        with aws_call(f"read the SSM public parameter {parameter}"):
            try:
                ami = str(clients.ssm.get_parameter(Name=parameter)["Parameter"]["Value"])
            except ClientError as exc:
                if error_code(exc) != "ParameterNotFound":
                    raise
                raise OcimodelError(
                    f"no {options.family} AMI for Kubernetes {options.kubernetes_version} on {options.arch} in "
                    f"{clients.region} (SSM parameter {parameter}): check --kubernetes-version, or pass --ami"
                ) from None
    with aws_call(f"describe AMI {ami}"):
        images = clients.ec2.describe_images(ImageIds=[ami])["Images"]
    if not images:
        raise OcimodelError(f"AMI {ami} does not exist in {clients.region}")
    have = images[0].get("Architecture")
    if have != sp.EC2_ARCH[options.arch]:
        raise OcimodelError(f"AMI {ami} is for {have}, not {sp.EC2_ARCH[options.arch]}: pass --arch or another --ami")
    return Ami(ami, parameter)


def find_subnet(ec2: Any, subnet: str | None) -> Subnet:
    with aws_call("describe subnets"):
        if subnet:
            found = ec2.describe_subnets(SubnetIds=[subnet])["Subnets"]
        else:
            found = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    if not found:
        raise OcimodelError("no default VPC subnet in this region: pass --subnet (one that reaches SSM and ECR)")
    chosen = sorted(found, key=lambda s: s["AvailabilityZone"])[0]
    return Subnet(chosen["SubnetId"], chosen["VpcId"])


def find_snapshot(ec2: Any, key: str) -> Snapshot | None:
    """A completed snapshot of the same images, family and architecture."""
    with aws_call("describe snapshots"):
        found = ec2.describe_snapshots(
            OwnerIds=["self"],
            Filters=[{"Name": f"tag:{sp.TAG_KEY}", "Values": [key]}, {"Name": "status", "Values": ["completed"]}],
        )["Snapshots"]
    if not found:
        return None
    latest = max(found, key=lambda s: s["StartTime"])
    return Snapshot(
        latest["SnapshotId"], latest["VolumeSize"], bool(latest.get("Encrypted")), latest.get("KmsKeyId"), True
    )


def profile_exists(iam: Any, name: str) -> bool:
    with aws_call(f"read IAM instance profile {name}"):
        try:
            iam.get_instance_profile(InstanceProfileName=name)
        except ClientError as exc:
            if error_code(exc) == "NoSuchEntity":
                return False
            raise
    return True


def make_plan(
    clients: Clients, names: Names, config: Config, models: Sequence[ModelSpec], options: Options
) -> SnapshotPlan:
    images = resolve_images(clients, names, config, models, options)
    size = sp.volume_gib(images)
    if options.volume_size is not None:
        if options.volume_size < size:
            raise OcimodelError(
                f"--volume-size {options.volume_size} is smaller than the {size} GiB these images need (their layers "
                "as fetched and unpacked, with headroom): drop it or give more"
            )
        size = options.volume_size
    return SnapshotPlan(
        images=images,
        ami=find_ami(clients, options),
        instance_type=options.instance_type or sp.DEFAULT_INSTANCE_TYPE[options.arch],
        subnet=find_subnet(clients.ec2, options.subnet),
        volume_gib=size,
        family=options.family,
        arch=options.arch,
        encrypt=options.encrypt or options.kms_key is not None,
        kms_key=options.kms_key,
        profile=names.snapshot_role,
        tags=sp.snapshot_tags(images, options.family, options.arch, names.settings.prefix),
    )


def run_instances_request(plan: SnapshotPlan, security_group: str, run_id: str) -> dict[str, Any]:
    ebs: dict[str, Any] = {
        "VolumeSize": plan.volume_gib,
        "VolumeType": "gp3",
        "Iops": sp.BUILD_IOPS,
        "Throughput": sp.BUILD_THROUGHPUT,
        "DeleteOnTermination": True,
    }
    if plan.encrypt:
        ebs["Encrypted"] = True
        if plan.kms_key:
            ebs["KmsKeyId"] = plan.kms_key
    tags = run_tags(run_id)
    request: dict[str, Any] = {
        "ImageId": plan.ami.id,
        "InstanceType": plan.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "SubnetId": plan.subnet.id,
        "SecurityGroupIds": [security_group],
        "IamInstanceProfile": {"Name": plan.profile},
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "BlockDeviceMappings": [{"DeviceName": sp.DATA_DEVICE, "Ebs": ebs}],
        # A shutdown from inside the instance ends it: nothing is left running if this command dies with it.
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": sp.tag_list(tags)},
            {"ResourceType": "volume", "Tags": sp.tag_list(tags)},
        ],
    }
    if plan.family == sp.BOTTLEROCKET:
        request["UserData"] = sp.BOTTLEROCKET_USER_DATA
    return request


def run_tags(run_id: str) -> dict[str, str]:
    return {MANAGED_TAG[0]: MANAGED_TAG[1], "Name": f"ocimodel-snapshot-{run_id}", "ocimodel:snapshot-run": run_id}


def security_group_request(plan: SnapshotPlan, run_id: str) -> dict[str, Any]:
    return {
        "GroupName": f"ocimodel-snapshot-{run_id}",
        "Description": "ocimodel aws snapshot: temporary, no inbound rule, HTTPS out (SSM, ECR)",
        "VpcId": plan.subnet.vpc,
        "TagSpecifications": [{"ResourceType": "security-group", "Tags": sp.tag_list(run_tags(run_id))}],
    }


HTTPS_OUT = [{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
ALL_OUT = [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]


def render_plan(plan: SnapshotPlan, existing: Snapshot | None, profile_ok: bool) -> str:
    from ocimodel.aws.steps import table
    from ocimodel.units import human_size

    rows = [
        (
            image.model or "(extra)",
            image.ref,
            human_size(image.content_bytes),
            human_size(image.unpacked_bytes) + ("" if image.exact else " (estimated)"),
        )
        for image in plan.images
    ]
    lines = [table(("MODEL", "IMAGE", "FETCHED", "UNPACKED"), rows), ""]
    source = f" ({plan.ami.parameter})" if plan.ami.parameter else ""
    encryption = f"encrypted{' with ' + plan.kms_key if plan.kms_key else ''}" if plan.encrypt else "account default"
    lines += [
        f"AMI:            {plan.ami.id} {plan.family} {sp.EC2_ARCH[plan.arch]}{source}",
        f"instance:       {plan.instance_type} in {plan.subnet.id} ({plan.subnet.vpc}), IMDSv2 required, "
        "a security group with no inbound rule",
        f"profile:        {plan.profile}" + ("" if profile_ok else " (missing: run ocimodel aws bootstrap first)"),
        f"data volume:    {sp.DATA_DEVICE} {plan.volume_gib} GiB gp3, {encryption}",
        f"snapshot key:   {plan.key}",
    ]
    if existing is not None:
        lines.append(f"existing:       {existing.id} holds these images already (--force builds another)")
    lines += ["", "# commands sent to the instance (SSM AWS-RunShellScript), in order", sp.prepare_command(plan.family)]
    lines += [sp.instance_pull_command(i, plan.family, plan.arch) for i in plan.images]
    lines.append(sp.finish_command(plan.family))
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------------------------------


T = TypeVar("T")


@dataclass
class Made:
    """What this run created so far, in order: all of it is deleted on failure, the snapshot excepted once done."""

    security_group: str | None = None
    instance: str | None = None
    snapshot: str | None = None
    snapshot_done: bool = False
    left: list[str] = field(default_factory=list)


@dataclass
class Builder:
    clients: Clients
    runner: Runner
    clock: Clock
    note: Callable[[str], None]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        self.started = self.clock.now()

    def step(self, text: str) -> None:
        self.note(f"[{self.clock.now() - self.started:7.1f}s] {text}")

    def build(self, plan: SnapshotPlan) -> Snapshot:
        made = Made()
        try:
            snapshot = self._build(plan, made)
        except BaseException as exc:
            self._clean(made)
            report = f"left behind: {'; '.join(made.left)}" if made.left else "removed everything it had created"
            if isinstance(exc, OcimodelError):
                raise OcimodelError(f"{exc}; {report}") from None
            self.step(f"{'interrupted' if isinstance(exc, KeyboardInterrupt) else 'failed'}; {report}")
            raise
        self._clean(made)
        if made.left:
            self.step(f"the snapshot is made, but cleaning up left behind: {'; '.join(made.left)}")
        return snapshot

    def _build(self, plan: SnapshotPlan, made: Made) -> Snapshot:
        ec2 = self.clients.ec2
        self.step(f"security group in {plan.subnet.vpc}: no inbound rule, HTTPS out")
        with aws_call("create the security group"):
            made.security_group = ec2.create_security_group(**security_group_request(plan, self.run_id))["GroupId"]
            ec2.revoke_security_group_egress(GroupId=made.security_group, IpPermissions=ALL_OUT)
            ec2.authorize_security_group_egress(GroupId=made.security_group, IpPermissions=HTTPS_OUT)
        self.step(f"launching {plan.instance_type} from {plan.ami.id} with a {plan.volume_gib} GiB data volume")
        request = run_instances_request(plan, made.security_group, self.run_id)
        with aws_call("launch the instance"):
            reservation = retry(
                lambda: ec2.run_instances(**request),
                retryable=_profile_not_ready,
                policy=eventually(PROFILE_PROPAGATION_SECONDS, POLL_SECONDS, self.clock),
            )
        made.instance = reservation["Instances"][0]["InstanceId"]
        self._wait_state(made.instance, "running", RUNNING_SECONDS)
        self.step(f"{made.instance} running; waiting for its SSM agent")
        self.runner.wait_online(made.instance)
        self.step("preparing containerd's store on the data volume")
        self.runner.run(made.instance, sp.prepare_command(plan.family), 900, "prepare the data volume")
        for image in plan.images:
            self.step(f"pulling {image.ref}")
            self.runner.run(
                made.instance,
                sp.instance_pull_command(image, plan.family, plan.arch),
                sp.pull_timeout_seconds(image),
                f"pull {image.ref}",
            )
        self.runner.run(made.instance, sp.finish_command(plan.family), 600, "flush the data volume")
        self.step(f"stopping {made.instance}")
        with aws_call(f"stop instance {made.instance}"):
            ec2.stop_instances(InstanceIds=[made.instance])
        self._wait_state(made.instance, "stopped", STOPPED_SECONDS)
        volume = self._data_volume(made.instance)
        self.step(f"snapshotting {volume}")
        with aws_call(f"snapshot volume {volume}"):
            made.snapshot = ec2.create_snapshot(
                VolumeId=volume,
                Description=f"ocimodel: {plan.family} {plan.arch} containerd store with {len(plan.images)} image(s)",
                TagSpecifications=[{"ResourceType": "snapshot", "Tags": sp.tag_list(plan.tags)}],
            )["SnapshotId"]
        done = self._wait_snapshot(made.snapshot, SNAPSHOT_SECONDS_BASE + SNAPSHOT_SECONDS_PER_GIB * plan.volume_gib)
        made.snapshot_done = True
        self.step(f"{made.snapshot} completed; removing the instance and the security group")
        return Snapshot(made.snapshot, done["VolumeSize"], bool(done.get("Encrypted")), done.get("KmsKeyId"), False)

    def _data_volume(self, instance: str) -> str:
        with aws_call(f"describe instance {instance}"):
            described = self.clients.ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
        for mapping in described.get("BlockDeviceMappings") or []:
            if mapping["DeviceName"] == sp.DATA_DEVICE:
                return str(mapping["Ebs"]["VolumeId"])
        raise OcimodelError(f"instance {instance} has no {sp.DATA_DEVICE}")

    def _poll(self, read: Callable[[], T | None], seconds: float, what: str) -> T:
        deadline = self.clock.now() + seconds
        while True:
            found = read()
            if found is not None:
                return found
            if self.clock.now() + POLL_SECONDS > deadline:
                raise OcimodelError(f"gave up waiting for {what} after {seconds:.0f} s")
            self.clock.sleep(POLL_SECONDS)

    def _wait_state(self, instance: str, wanted: str, seconds: float) -> None:
        def read() -> bool | None:
            with aws_call(f"describe instance {instance}"):
                try:
                    reservations = self.clients.ec2.describe_instances(InstanceIds=[instance])["Reservations"]
                except ClientError as exc:  # EC2 may not list an instance it has just launched
                    if error_code(exc) == "InvalidInstanceID.NotFound":
                        return None
                    raise
            state = reservations[0]["Instances"][0]["State"]["Name"] if reservations else "pending"
            if state == wanted:
                return True
            if state in ("terminated", "shutting-down") and wanted != "terminated":
                raise OcimodelError(f"instance {instance} is {state}, not {wanted}")
            return None

        self._poll(read, seconds, f"instance {instance} to be {wanted}")

    def _wait_snapshot(self, snapshot: str, seconds: float) -> dict[str, Any]:
        def read() -> dict[str, Any] | None:
            with aws_call(f"describe snapshot {snapshot}"):
                found = self.clients.ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]
            if found["State"] == "error":
                raise OcimodelError(f"snapshot {snapshot} failed: {found.get('StateMessage', 'no reason given')}")
            return found if found["State"] == "completed" else None  # type: ignore[no-any-return]

        return self._poll(read, seconds, f"snapshot {snapshot} to complete")

    def _clean(self, made: Made) -> None:
        """Delete what this run made, each part on its own: one that fails is reported, the others still go."""
        ec2 = self.clients.ec2
        if made.snapshot and not made.snapshot_done:
            self._try(made, f"snapshot {made.snapshot}", lambda: ec2.delete_snapshot(SnapshotId=made.snapshot))
        if made.instance:

            def terminate() -> None:
                ec2.terminate_instances(InstanceIds=[made.instance])
                self._wait_state(str(made.instance), "terminated", TERMINATED_SECONDS)

            self._try(made, f"instance {made.instance} (and its volumes)", terminate)
        if made.security_group:
            group = made.security_group

            def delete_group() -> None:
                retry(
                    lambda: ec2.delete_security_group(GroupId=group),
                    retryable=lambda exc: error_code(exc) == "DependencyViolation",
                    policy=eventually(SECURITY_GROUP_RELEASE_SECONDS, POLL_SECONDS, self.clock),
                )

            self._try(made, f"security group {group}", delete_group)

    def _try(self, made: Made, what: str, call: Callable[[], None]) -> None:
        try:
            with aws_call(f"delete {what}"):
                call()
        except OcimodelError as exc:
            made.left.append(f"{what} ({str(exc).removeprefix(f'cannot delete {what}: ')})")
        except KeyboardInterrupt:
            made.left.append(f"{what} (interrupted while deleting it)")


def _profile_not_ready(exc: Exception) -> bool:
    """EC2 refusing an instance profile IAM has just created: it is not visible to EC2 for a few seconds."""
    if not isinstance(exc, ClientError) or error_code(exc) != "InvalidParameterValue":
        return False
    return "instance profile" in str(exc.response.get("Error", {}).get("Message", "")).lower()


# --- SSM ------------------------------------------------------------------------------------------------------------


@dataclass
class SsmRunner:
    """Commands through SSM Run Command (``AWS-RunShellScript``), followed by polling on the injected clock (boto3's
    waiter would sleep for real)."""

    ssm: Any
    clock: Clock

    def wait_online(self, instance_id: str) -> None:
        deadline = self.clock.now() + SSM_ONLINE_SECONDS
        while True:
            with aws_call("describe SSM managed instances"):
                found = self.ssm.describe_instance_information(
                    Filters=[{"Key": "InstanceIds", "Values": [instance_id]}]
                )["InstanceInformationList"]
            if any(i.get("PingStatus") == "Online" for i in found):
                return
            if self.clock.now() + POLL_SECONDS > deadline:
                raise OcimodelError(
                    f"instance {instance_id} did not register with SSM within {SSM_ONLINE_SECONDS:.0f} s: its subnet "
                    "must reach SSM and ECR (a default VPC subnet, a NAT, or VPC endpoints)"
                )
            self.clock.sleep(POLL_SECONDS)

    def run(self, instance_id: str, script: str, timeout_seconds: int, what: str) -> str:
        with aws_call(f"send the command to {what}"):
            command = self.ssm.send_command(
                InstanceIds=[instance_id],
                DocumentName="AWS-RunShellScript",
                Comment=f"ocimodel: {what}"[:100],
                TimeoutSeconds=SSM_DELIVERY_SECONDS,
                Parameters={"commands": [script], "executionTimeout": [str(timeout_seconds)]},
            )["Command"]["CommandId"]
        deadline = self.clock.now() + timeout_seconds + SSM_DELIVERY_SECONDS
        while True:
            with aws_call(f"follow the command to {what}"):
                try:
                    result = self.ssm.get_command_invocation(CommandId=command, InstanceId=instance_id)
                except ClientError as exc:  # SSM lists an invocation a moment after it is sent
                    if error_code(exc) != "InvocationDoesNotExist":
                        raise
                    result = {"Status": "Pending"}
            status = result["Status"]
            if status == "Success":
                return str(result.get("StandardOutputContent", ""))
            if status not in _SSM_PENDING:
                errors = str(result.get("StandardErrorContent", "")).strip().splitlines()
                reason = f": {errors[-1]}" if errors else ""
                raise OcimodelError(
                    f"could not {what} on {instance_id}: SSM says {status} (exit {result.get('ResponseCode')}){reason}"
                )
            if self.clock.now() + POLL_SECONDS > deadline:
                raise OcimodelError(f"could not {what} on {instance_id}: no result within {timeout_seconds} s")
            self.clock.sleep(POLL_SECONDS)


# --- teardown -------------------------------------------------------------------------------------------------------


def made_snapshots(ec2: Any, prefix: str) -> list[dict[str, Any]]:
    """The snapshots ``aws snapshot`` made for this prefix, found by their tags."""
    with aws_call("describe snapshots"):
        pages = ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"],
            Filters=[
                {"Name": f"tag:{MANAGED_TAG[0]}", "Values": [MANAGED_TAG[1]]},
                {"Name": f"tag:{sp.TAG_PREFIX}", "Values": [prefix]},
            ],
        )
        return [s for page in pages for s in page["Snapshots"]]
