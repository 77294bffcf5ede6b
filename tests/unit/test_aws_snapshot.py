"""``ocimodel aws snapshot`` against moto: EC2 (instances, volumes, snapshots, security groups, AMIs), SSM (public
parameters, Run Command), IAM and ECR.

moto runs nothing on an instance and lacks ``describe_instance_information``; a thin wrapper around the SSM client
plays the agent's part (and the failures of a pull), and says so. Every request, including those the wrapper answers,
is checked against botocore's service models. Time is a fake clock: nothing sleeps.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from ocimodel.aws import session as aws_session
from ocimodel.aws import shapes
from ocimodel.aws import snapshot as snap
from ocimodel.aws import snapshot_plan as sp
from ocimodel.aws.config import parse_config
from ocimodel.aws.plan import Names
from ocimodel.aws.session import Clients, whoami
from ocimodel.errors import OcimodelError
from tests.harness.registry_stub import RegistryStub
from tests.harness.aws import (
    ACCOUNT,
    CONFIG,
    REGION,
    REGISTRY,
    FakeClock,
    ShapeCheck,
    Wrapped,
    checking,
    client_error,
    invoke,
    make_plan,
    run_bootstrap,
    seed_public_parameter,
)

SERVICES = ("ecr", "iam", "sts", "ec2", "ssm")
PROFILE = f"ocimodel-snapshot-{REGION}"
GB = 1000**3
TAR = "application/vnd.oci.image.layer.v1.tar"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture
def checked(aws: Clients) -> Iterator[ShapeCheck]:
    with checking(aws, SERVICES, ShapeCheck()) as check:
        yield check


def manifest(layers: list[tuple[str, int]]) -> str:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "c" * 64, "size": 2
            },
            "layers": [
                {"mediaType": t, "digest": f"sha256:{i:064x}", "size": size} for i, (t, size) in enumerate(layers, 1)
            ],
        }
    )


def push(
    aws: Clients, repository: str, layers: list[tuple[str, int]], arm_layers: list[tuple[str, int]] | None = None
) -> str:
    """An image at ``latest`` in moto's ECR: one manifest, or an index over amd64 and arm64. Its digest."""
    body = manifest(layers)
    if arm_layers is None:
        put = aws.ecr.put_image(repositoryName=repository, imageManifest=body, imageTag="latest")
        return str(put["image"]["imageId"]["imageDigest"])
    entries = []
    for arch, text in (("amd64", body), ("arm64", manifest(arm_layers))):
        child = aws.ecr.put_image(repositoryName=repository, imageManifest=text, imageManifestMediaType=OCI_MANIFEST)
        digest = child["image"]["imageId"]["imageDigest"]
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(text),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    put = aws.ecr.put_image(
        repositoryName=repository, imageManifest=index, imageTag="latest", imageManifestMediaType=OCI_INDEX
    )
    return str(put["image"]["imageId"]["imageDigest"])


def amazon_ami(aws: Clients, arch: str) -> str:
    images = aws.ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "architecture", "Values": [arch]}])["Images"]
    return str(sorted(i["ImageId"] for i in images)[0])


class Account:
    """The account as a snapshot finds it after bootstrap and two builds: images in ECR, the AMIs' parameters."""

    def __init__(self, aws: Clients, wheel: Path) -> None:
        self.aws = aws
        run_bootstrap(aws, make_plan(aws, wheel))
        # acme/tiny: both platforms, uncompressed layers (ocimodel's default); acme/fixed: one platform, gzip.
        self.tiny = push(aws, "kserve-models/acme-tiny", [(TAR, 3 * GB), (TAR, 1000)], [(TAR, 2 * GB)])
        self.fixed = push(aws, "kserve-models/acme-fixed", [(GZIP, 40 * GB)])
        self.amd64_ami = amazon_ami(aws, "x86_64")
        self.arm64_ami = amazon_ami(aws, "arm64")
        for family in sp.AMI_FAMILIES:
            seed_public_parameter(ACCOUNT, REGION, sp.ami_parameter(family, "1.32", "amd64"), self.amd64_ami)
            seed_public_parameter(ACCOUNT, REGION, sp.ami_parameter(family, "1.32", "arm64"), self.arm64_ami)

    def refs(self) -> list[str]:
        return [
            f"{REGISTRY}/kserve-models/acme-tiny@{self.tiny}",
            f"{REGISTRY}/kserve-models/acme-fixed@{self.fixed}",
        ]


@pytest.fixture
def account(aws: Clients, wheel: Path) -> Account:
    return Account(aws, wheel)


class Agent:
    """The SSM agent moto does not have: online at once (or never), and each command's result as a test wants it.

    Commands are still sent to moto's SSM, which records them: the tests read them back from there.
    """

    def __init__(self, aws: Clients, checked: ShapeCheck, online: bool = True) -> None:
        self.aws = aws
        self.checked = checked
        self.online = online
        #: script → what happens when its result is read: a ``Status`` or an exception to raise.
        self.outcomes: dict[str, Any] = {}

    def describe_instance_information(self, **request: Any) -> dict[str, Any]:
        self.checked.check(self.aws.ssm, "DescribeInstanceInformation", request)
        (instance,) = request["Filters"][0]["Values"]
        return {"InstanceInformationList": [{"InstanceId": instance, "PingStatus": "Online"}] if self.online else []}

    def get_command_invocation(self, **request: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.aws.ssm.get_command_invocation(**request)
        (command,) = self.aws.ssm.list_commands(CommandId=request["CommandId"])["Commands"]
        outcome = self.outcomes.get(command["Parameters"]["commands"][0])
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is not None:
            result |= {"Status": outcome, "ResponseCode": 1, "StandardErrorContent": "ctr: failed to resolve reference"}
        return result

    def clients(self) -> Clients:
        ssm = Wrapped(
            self.aws.ssm,
            describe_instance_information=self.describe_instance_information,
            get_command_invocation=self.get_command_invocation,
        )
        return replace(self.aws, ssm=ssm)


def sent_commands(aws: Clients) -> list[str]:
    """The scripts SSM was asked to run, in order, as SSM keeps them (its command history)."""
    commands = sorted(aws.ssm.list_commands()["Commands"], key=lambda c: c["RequestedDateTime"])
    for command in commands:
        assert command["DocumentName"] == "AWS-RunShellScript"
    return [c["Parameters"]["commands"][0] for c in commands]


def left_over(aws: Clients) -> dict[str, list[str]]:
    """Whatever a snapshot run could have left: instances not terminated, volumes, security groups, snapshots."""
    reservations = aws.ec2.describe_instances()["Reservations"]
    return {
        "instances": [
            i["InstanceId"] for r in reservations for i in r["Instances"] if i["State"]["Name"] != "terminated"
        ],
        "volumes": [v["VolumeId"] for v in aws.ec2.describe_volumes()["Volumes"]],
        "security groups": [g["GroupName"] for g in aws.ec2.describe_security_groups()["SecurityGroups"]
                            if g["GroupName"] != "default"],
        # moto's own AMIs come with snapshots in the account: every snapshot this command makes carries its tag.
        "snapshots": [s["SnapshotId"] for s in aws.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] if any(
            t["Key"] == "managed-by" for t in s.get("Tags") or [])],
    }


def snapshot_ids(aws: Clients) -> set[str]:
    return {s["SnapshotId"] for s in aws.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}


NOTHING = {"instances": [], "volumes": [], "security groups": [], "snapshots": []}


def cli(
    monkeypatch: pytest.MonkeyPatch, clients: Clients, config_file: Path, *args: str, clock: FakeClock | None = None
) -> Any:
    fake = clock or FakeClock()
    monkeypatch.setattr(aws_session, "connect", lambda region: clients)
    monkeypatch.setattr(aws_session, "Clock", lambda: fake.clock)
    return invoke("aws", "snapshot", "--config", str(config_file), *args)


# --- the plan, pure -------------------------------------------------------------------------------------------------


def test_the_amis_public_parameters_are_named_as_aws_publishes_them(aws: Clients) -> None:
    assert sp.ami_parameter("bottlerocket", "1.32", "amd64") == (
        "/aws/service/bottlerocket/aws-k8s-1.32/x86_64/latest/image_id"
    )
    assert sp.ami_parameter("bottlerocket", "1.31", "arm64") == (
        "/aws/service/bottlerocket/aws-k8s-1.31/arm64/latest/image_id"
    )
    assert sp.ami_parameter("al2023-nvidia", "1.32", "amd64") == (
        "/aws/service/eks/optimized-ami/1.32/amazon-linux-2023/x86_64/nvidia/recommended/image_id"
    )
    for family in sp.AMI_FAMILIES:
        for arch in sp.ARCHES:
            name = sp.ami_parameter(family, "1.32", arch)
            assert shapes.check_request(aws.ssm.meta.service_model, "GetParameter", {"Name": name}) == []


def image(model: str | None, layers: list[tuple[str, int]], name: str = f"{REGISTRY}/kserve-models/m") -> sp.Image:
    return sp.Image(model, name, "sha256:" + "d" * 64, True, tuple(sp.Layer(t, s) for t, s in layers))


def test_the_volume_holds_the_layers_fetched_and_unpacked_below_the_kubelets_gc_and_never_below_the_guide() -> None:
    # 4.3 GB of uncompressed layers: 8.6 GB stored, but the guide's floor for under 50 GB is 100 GiB.
    assert sp.volume_gib((image("a", [(TAR, 4_300_000_000)]),)) == 100
    # 60 GB: containerd keeps 120 GB (content and unpacked), 70 % full: 171.4 GB = 159.6 GiB, + 5 GiB: 165 GiB,
    # over the guide's 150 GiB.
    assert sp.volume_gib((image("a", [(TAR, 60 * GB)]),)) == 165
    # 140 GB: 280 GB stored, 70 % full, + 5 GiB: 378 GiB, where the guide's table says 250.
    assert sp.volume_gib((image("a", [(TAR, 100 * GB)]), image("b", [(TAR, 40 * GB)]))) == 378
    # gzip layers: unpacked size estimated at twice the fetched one (the plan says "estimated").
    gz = image("a", [(GZIP, 40 * GB)])
    assert gz.unpacked_bytes == 80 * GB and not gz.exact
    assert sp.volume_gib((gz,)) == 165
    assert sp.volume_gib((image("a", [(TAR, 210 * GB)]),)) == 564
    # The guide's top row is a floor too: 201 GB of gzip layers estimated at 402 GB unpacked need more than 500.
    assert sp.volume_gib((image("a", [(GZIP, 1 * GB)]), image("b", [(TAR, 201 * GB)]))) > 500
    with pytest.raises(OcimodelError, match="over gp3's 16384 GiB"):
        sp.volume_gib((image("a", [(TAR, 8000 * GB)]),))


BR_PULL = (
    "apiclient exec admin sheltie bash -c 'set -eu\n"
    "creds=$(printf '\"'\"'%s'\"'\"' '\"'\"'{\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"kind\":"
    "\"CredentialProviderRequest\",\"image\":\"123456789012.dkr.ecr.us-east-1.amazonaws.com/kserve-models/m@sha256:"
    + "d" * 64
    + "\"}'\"'\"' | /usr/libexec/kubernetes/kubelet/plugins/ecr-credential-provider)\n"
)


def test_the_bottlerocket_pull_runs_ctr_on_the_host_with_the_cri_label_and_no_password() -> None:
    pulled = image("a", [(TAR, 1)])
    command = sp.instance_pull_command(pulled, "bottlerocket", "amd64")
    assert command.startswith(BR_PULL)
    script = sp.pull_script(
        pulled, "amd64", ctr_command="ctr -a /run/containerd/containerd.sock -n k8s.io",
        provider="/usr/libexec/kubernetes/kubelet/plugins/ecr-credential-provider",
    )
    assert command == "apiclient exec admin sheltie bash -c " + shlex.quote(script)
    assert script.splitlines()[-3:] == [
        "ctr -a /run/containerd/containerd.sock -n k8s.io images pull --label io.cri-containerd.image=managed "
        f'--platform linux/amd64 --user "$user:$pass" {pulled.ref} >/dev/null',
        "ctr -a /run/containerd/containerd.sock -n k8s.io images ls -q "
        f"'labels.\"io.cri-containerd.image\"==managed' | grep -qxF {pulled.ref} || "
        f'{{ echo "ocimodel: {pulled.ref} is not in containerd after its pull" >&2; exit 1; }}',
        f"echo pulled {pulled.ref}",
    ]
    assert sp.prepare_command("bottlerocket") == (
        "apiclient exec admin sheltie bash -c 'set -eu\nsystemctl stop kubelet || true\nsystemctl is-active containerd'"
    )
    assert sp.finish_command("bottlerocket") == "apiclient exec admin sheltie bash -c 'set -eu\nsync'"


def test_the_al2023_pull_runs_plain_ctr_on_the_volume_containerd_was_moved_to() -> None:
    pulled = image("a", [(TAR, 1)])
    command = sp.instance_pull_command(pulled, "al2023-nvidia", "arm64")
    assert command.splitlines()[1] == (
        "creds=$(printf '%s' '{\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"kind\":"
        f'\"CredentialProviderRequest\",\"image\":\"{pulled.ref}\"}}\' | '
        "/etc/eks/image-credential-provider/ecr-credential-provider)"
    )
    assert command.splitlines()[-3] == (
        "ctr -n k8s.io images pull --label io.cri-containerd.image=managed --platform linux/arm64 "
        f'--user "$user:$pass" {pulled.ref} >/dev/null'
    )
    assert sp.prepare_command("al2023-nvidia").splitlines() == [
        "set -eu",
        "systemctl stop kubelet 2>/dev/null || true",
        "systemctl stop containerd",
        "mkfs.xfs -f -L ocimodel-data /dev/xvdb",
        "mkdir -p /mnt/ocimodel-data /var/lib/containerd",
        "mount /dev/xvdb /mnt/ocimodel-data",
        "cp -a /var/lib/containerd/. /mnt/ocimodel-data/",
        "umount /mnt/ocimodel-data",
        "mount /dev/xvdb /var/lib/containerd",
        "systemctl start containerd",
    ]
    assert sp.finish_command("al2023-nvidia") == "set -eu\nsystemctl stop containerd\nsync\numount /var/lib/containerd"
    public = sp.Image(None, "docker.io/kserve/huggingfaceserver", "sha256:" + "e" * 64, False, ())
    assert "--user" not in sp.instance_pull_command(public, "al2023-nvidia", "amd64")
    assert "creds" not in sp.instance_pull_command(public, "al2023-nvidia", "amd64")


def test_a_snapshot_holds_at_most_as_many_images_as_ec2_tags_allow() -> None:
    many = tuple(image(f"m{i}", [(TAR, 1)], f"{REGISTRY}/r{i}") for i in range(sp.MAX_IMAGES + 1))
    with pytest.raises(OcimodelError, match="do not fit one snapshot's 50 tags"):
        sp.snapshot_tags(many, "bottlerocket", "amd64", "ocimodel")
    tags = sp.snapshot_tags(many[:-1], "bottlerocket", "amd64", "x" * 20)
    assert len(tags) <= sp.MAX_TAGS
    assert all(len(k) <= sp.MAX_TAG_KEY and len(v) <= sp.MAX_TAG_VALUE for k, v in tags.items())
    long_name = image("m", [(TAR, 1)], f"{REGISTRY}/{'n' * 250}")
    value = sp.snapshot_tags((long_name,), "bottlerocket", "amd64", "p")[f"{sp.TAG_IMAGE}1"]
    assert len(value) == sp.MAX_TAG_VALUE and value.endswith(long_name.digest)


# --- against moto ---------------------------------------------------------------------------------------------------


def test_a_snapshot_is_made_tagged_and_everything_temporary_is_gone(
    account: Account, checked: ShapeCheck, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws = account.aws
    agent = Agent(aws, checked)
    result = cli(monkeypatch, agent.clients(), config_file, "--nodeclass")
    assert result.exit_code == 0, result.output
    snapshot_id = result.stdout.splitlines()[-1]
    assert snapshot_id.startswith("snap-")

    # The commands SSM ran, exactly, in order: prepare, one pull per image by digest, flush.
    tiny, fixed = account.refs()
    config = parse_config(CONFIG, "models.toml")
    plan = snap.make_plan(aws, Names(config.aws, whoami(aws)), config, config.models, snap.Options())
    assert [i.ref for i in plan.images] == [tiny, fixed]
    assert sent_commands(aws) == [
        sp.prepare_command("bottlerocket"),
        sp.instance_pull_command(plan.images[0], "bottlerocket", "amd64"),
        sp.instance_pull_command(plan.images[1], "bottlerocket", "amd64"),
        sp.finish_command("bottlerocket"),
    ]
    assert f"--platform linux/amd64 --user \"$user:$pass\" {tiny} >/dev/null" in sent_commands(aws)[1]

    # The instance: the AMI of the SSM parameter, the profile, IMDSv2 only, a data volume of the computed size.
    (launch,) = checked.sent("RunInstances")
    assert launch["ImageId"] == account.amd64_ami
    assert launch["IamInstanceProfile"] == {"Name": PROFILE}
    assert launch["MetadataOptions"]["HttpTokens"] == "required"
    (data,) = launch["BlockDeviceMappings"]
    # 3 GB fetched and unpacked, 40 GB of gzip estimated at 80 GB unpacked: 126 GB stored, 70 % full, + 5 GiB
    assert data == {
        "DeviceName": "/dev/xvdb",
        "Ebs": {"VolumeSize": 173, "VolumeType": "gp3", "Iops": 6000, "Throughput": 500, "DeleteOnTermination": True},
    }
    # The security group: no inbound rule was ever added, and all traffic out was replaced by HTTPS out.
    assert checked.sent("AuthorizeSecurityGroupIngress") == []
    assert checked.sent("AuthorizeSecurityGroupEgress")[0]["IpPermissions"] == snap.HTTPS_OUT
    assert checked.sent("StopInstances") and checked.sent("TerminateInstances")

    # The snapshot, tagged with what it holds; nothing else is left.
    (made,) = aws.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    tags = {t["Key"]: t["Value"] for t in made["Tags"]}
    assert tags["managed-by"] == "ocimodel" and tags["ocimodel:ami-family"] == "bottlerocket"
    assert tags["ocimodel:arch"] == "amd64" and tags["ocimodel:prefix"] == "ocimodel"
    assert sorted(v for k, v in tags.items() if k.startswith("ocimodel:image-")) == sorted([tiny, fixed])
    assert tags["ocimodel:models"] == "acme/tiny, acme/fixed"
    assert left_over(aws) == {**NOTHING, "snapshots": [snapshot_id]}

    # The Karpenter block, and the steps with their elapsed time.
    block = yaml.safe_load("\n".join(result.stdout.splitlines()[:-1]))
    root, volume = block["blockDeviceMappings"]
    assert root["deviceName"] == "/dev/xvda" and "snapshotID" not in root["ebs"]
    assert volume == {
        "deviceName": "/dev/xvdb",
        "ebs": {
            "volumeSize": "173Gi", "volumeType": "gp3", "iops": 3000, "throughput": 125, "encrypted": False,
            "snapshotID": snapshot_id, "deleteOnTermination": True,
        },
    }
    assert "[    0.0s] security group in vpc-" in result.stderr
    assert f"pulling {tiny}" in result.stderr
    # No ECR password was asked for here: the instance gets its own from its role.
    assert "GetAuthorizationToken" not in checked.operations
    assert checked.problems == []


def test_the_same_images_again_find_the_snapshot_and_force_makes_another(
    account: Account, checked: ShapeCheck, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Agent(account.aws, checked)
    first = cli(monkeypatch, agent.clients(), config_file)
    assert first.exit_code == 0, first.output
    snapshot_id = first.stdout.splitlines()[-1]
    launches = len(checked.sent("RunInstances"))

    again = cli(monkeypatch, agent.clients(), config_file, "--json")
    assert again.exit_code == 0, again.output
    assert len(checked.sent("RunInstances")) == launches
    assert "holds these images already" in again.stderr
    document = json.loads(again.stdout)
    assert document["snapshot_id"] == snapshot_id and document["reused"] is True
    assert document["region"] == REGION and document["size_gib"] == 173
    assert sorted(f"{k}@{v}" for k, v in document["images"].items()) == sorted(account.refs())

    # Another architecture is another snapshot (acme/fixed has no arm64 image: only acme/tiny is asked for).
    arm = cli(monkeypatch, agent.clients(), config_file, "acme/tiny", "--arch", "arm64")
    assert arm.exit_code == 0, arm.output
    assert arm.stdout.splitlines()[-1] != snapshot_id
    assert checked.sent("RunInstances")[-1]["ImageId"] == account.arm64_ami

    forced = cli(monkeypatch, agent.clients(), config_file, "--force")
    assert forced.exit_code == 0, forced.output
    assert forced.stdout.splitlines()[-1] not in (snapshot_id, arm.stdout.splitlines()[-1])
    assert checked.problems == []


def test_a_failed_pull_leaves_nothing_behind_and_says_which_image(
    account: Account, checked: ShapeCheck, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws = account.aws
    agent = Agent(aws, checked)
    config = parse_config(CONFIG, "models.toml")
    plan = snap.make_plan(aws, Names(config.aws, whoami(aws)), config, config.models, snap.Options())
    agent.outcomes[sp.instance_pull_command(plan.images[1], "bottlerocket", "amd64")] = "Failed"
    result = cli(monkeypatch, agent.clients(), config_file)
    assert isinstance(result.exception, OcimodelError)
    message = str(result.exception)
    assert message.startswith(f"could not pull {plan.images[1].ref} on i-")
    assert "SSM says Failed (exit 1): ctr: failed to resolve reference" in message
    assert message.endswith("; removed everything it had created")
    assert left_over(aws) == NOTHING
    assert checked.problems == []


def test_ctrl_c_mid_pull_removes_the_instance_and_the_security_group(account: Account, checked: ShapeCheck) -> None:
    aws = account.aws
    agent = Agent(aws, checked)
    config = parse_config(CONFIG, "models.toml")
    plan = snap.make_plan(aws, Names(config.aws, whoami(aws)), config, config.models, snap.Options())
    agent.outcomes[sp.instance_pull_command(plan.images[0], "bottlerocket", "amd64")] = KeyboardInterrupt()
    notes: list[str] = []
    clock = FakeClock()
    builder = snap.Builder(agent.clients(), snap.SsmRunner(agent.clients().ssm, clock.clock), clock.clock, notes.append)
    with pytest.raises(KeyboardInterrupt):
        builder.build(plan)
    assert left_over(aws) == NOTHING
    assert notes[-1].endswith("interrupted; removed everything it had created")


def test_ctrl_c_while_the_snapshot_is_made_deletes_the_unfinished_snapshot(
    account: Account, checked: ShapeCheck
) -> None:
    aws = account.aws
    agent = Agent(aws, checked)
    config = parse_config(CONFIG, "models.toml")
    plan = snap.make_plan(aws, Names(config.aws, whoami(aws)), config, config.models, snap.Options())

    def describe_snapshots(**request: Any) -> Any:
        """moto completes a snapshot at once; AWS takes minutes."""
        found = aws.ec2.describe_snapshots(**request)
        for snapshot in found["Snapshots"]:
            snapshot["State"] = "pending"
        return found

    class Interrupted(FakeClock):
        def sleep(self, seconds: float) -> None:
            raise KeyboardInterrupt

    clock = Interrupted()
    clients = replace(agent.clients(), ec2=Wrapped(aws.ec2, describe_snapshots=describe_snapshots))
    notes: list[str] = []
    builder = snap.Builder(clients, snap.SsmRunner(clients.ssm, clock.clock), clock.clock, notes.append)
    with pytest.raises(KeyboardInterrupt):
        builder.build(plan)
    assert checked.sent("CreateSnapshot") and checked.sent("DeleteSnapshot")
    assert left_over(aws) == NOTHING


def test_an_instance_ssm_never_sees_is_given_up_after_a_bound_and_removed(
    account: Account, checked: ShapeCheck, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Agent(account.aws, checked, online=False)
    clock = FakeClock()
    result = cli(monkeypatch, agent.clients(), config_file, clock=clock)
    assert isinstance(result.exception, OcimodelError)
    assert "did not register with SSM within 900 s" in str(result.exception)
    assert snap.SSM_ONLINE_SECONDS - snap.POLL_SECONDS <= clock.time <= snap.SSM_ONLINE_SECONDS
    assert left_over(account.aws) == NOTHING


def test_a_profile_iam_has_not_propagated_to_ec2_yet_is_waited_for(account: Account, checked: ShapeCheck) -> None:
    aws = account.aws
    clock = FakeClock()

    def run_instances(**request: Any) -> Any:
        if clock.now() < 12:
            raise client_error(
                "InvalidParameterValue",
                f"Value ({PROFILE}) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile "
                "name",
                "RunInstances",
            )
        return aws.ec2.run_instances(**request)

    agent = Agent(aws, checked)
    clients = replace(agent.clients(), ec2=Wrapped(aws.ec2, run_instances=run_instances))
    config = parse_config(CONFIG, "models.toml")
    plan = snap.make_plan(aws, Names(config.aws, whoami(aws)), config, config.models, snap.Options())
    made = snap.Builder(clients, snap.SsmRunner(clients.ssm, clock.clock), clock.clock, lambda _: None).build(plan)
    assert made.id.startswith("snap-") and clock.time >= 12
    assert left_over(aws) == {**NOTHING, "snapshots": [made.id]}


def test_a_model_without_an_image_is_refused_before_anything_is_made(
    aws: Clients, wheel: Path, checked: ShapeCheck, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_bootstrap(aws, make_plan(aws, wheel))
    push(aws, "kserve-models/acme-tiny", [(TAR, 1)])
    result = cli(monkeypatch, Agent(aws, checked).clients(), config_file)
    assert isinstance(result.exception, OcimodelError)
    assert str(result.exception) == (
        f"model acme/fixed has no image at {REGISTRY}/kserve-models/acme-fixed:latest: build it first "
        "(ocimodel aws build acme-fixed), or pass --tag"
    )
    assert left_over(aws) == NOTHING and checked.sent("CreateSecurityGroup") == []


def test_the_dry_run_shows_the_plan_and_changes_nothing(
    account: Account, checked: ShapeCheck, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = cli(
        monkeypatch, Agent(account.aws, checked).clients(), config_file, "--dry-run", "--ami-family", "al2023-nvidia"
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    for ref in account.refs():
        assert ref in out
    assert f"AMI:            {account.amd64_ami} al2023-nvidia x86_64 (/aws/service/eks/optimized-ami/1.32/" in out
    assert "instance:       m6i.large in subnet-" in out
    assert "data volume:    /dev/xvdb 173 GiB gp3" in out
    (fixed_row,) = [line for line in out.splitlines() if line.startswith("acme/fixed ")]
    assert fixed_row.endswith("(estimated)")
    assert "mkfs.xfs -f -L ocimodel-data /dev/xvdb" in out
    assert out.strip().endswith("dry run: nothing was changed")
    operations = {name for name, _ in checked.requests}
    assert operations and all(op.startswith(("Get", "Describe", "List", "BatchGet")) for op in operations), operations
    assert left_over(account.aws) == NOTHING


def test_an_ami_of_another_architecture_is_refused(
    account: Account, checked: ShapeCheck, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = cli(monkeypatch, Agent(account.aws, checked).clients(), config_file, "--ami", account.arm64_ami)
    assert isinstance(result.exception, OcimodelError)
    assert str(result.exception) == (
        f"AMI {account.arm64_ami} is for arm64, not x86_64: pass --arch or another --ami"
    )


def test_the_instance_profile_pulls_the_configs_repositories_only(account: Account) -> None:
    iam = account.aws.iam
    role = iam.get_role(RoleName=PROFILE)["Role"]
    assert {t["Key"]: t["Value"] for t in role["Tags"]} == {"managed-by": "ocimodel"}
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    attached = iam.list_attached_role_policies(RoleName=PROFILE)["AttachedPolicies"]
    assert [a["PolicyArn"] for a in attached] == ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"]
    policy = iam.get_role_policy(RoleName=PROFILE, PolicyName=sp.SNAPSHOT_POLICY_NAME)["PolicyDocument"]
    login, pull = policy["Statement"]
    assert login == {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"}
    assert pull["Action"] == ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    assert pull["Resource"] == [
        f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/kserve-models/acme-fixed",
        f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/kserve-models/acme-tiny",
    ]
    (profile,) = [p for p in iam.list_instance_profiles()["InstanceProfiles"] if p["InstanceProfileName"] == PROFILE]
    assert [r["RoleName"] for r in profile["Roles"]] == [PROFILE]


def test_teardown_deletes_the_snapshots_only_when_asked_and_the_profile(
    account: Account, checked: ShapeCheck, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws = account.aws
    made = cli(monkeypatch, Agent(aws, checked).clients(), config_file)
    snapshot_id = made.stdout.splitlines()[-1]
    theirs = aws.ec2.create_snapshot(VolumeId=aws.ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=1)["VolumeId"])
    kept = invoke("aws", "teardown", "--config", str(config_file), "--yes")
    assert kept.exit_code == 0, kept.output
    assert f"{snapshot_id}" in kept.stdout and "--delete-snapshots deletes it" in kept.stdout
    assert {snapshot_id, theirs["SnapshotId"]} <= snapshot_ids(aws)
    assert PROFILE not in [p["InstanceProfileName"] for p in aws.iam.list_instance_profiles()["InstanceProfiles"]]
    assert PROFILE not in [r["RoleName"] for r in aws.iam.list_roles()["Roles"]]
    deleted = invoke("aws", "teardown", "--config", str(config_file), "--yes", "--delete-snapshots")
    assert deleted.exit_code == 0, deleted.output
    assert theirs["SnapshotId"] in snapshot_ids(aws) and snapshot_id not in snapshot_ids(aws)
    assert checked.problems == []


def test_extra_images_are_pinned_and_only_the_configs_ecr_repositories_allowed(
    account: Account, stub: RegistryStub
) -> None:
    aws = account.aws
    config = parse_config(CONFIG, "models.toml")
    names = Names(config.aws, whoami(aws))
    fixed = [config.find("acme/fixed")]
    layer = b"runtime layer"
    amd = stub.add_image("kserve/runtime", [layer], {"architecture": "amd64"}, layer_media_type=TAR)
    arm = stub.add_image("kserve/runtime", [layer * 2], {"architecture": "arm64"}, layer_media_type=TAR)
    platforms = [{**amd, "platform": {"os": "linux", "architecture": "amd64"}},
                 {**arm, "platform": {"os": "linux", "architecture": "arm64"}}]
    index = stub.add_index("kserve/runtime", platforms, tag="v1")["digest"]
    extra = (f"{REGISTRY}/kserve-models/acme-tiny:latest", f"{stub.host}/kserve/runtime:v1")
    images = snap.resolve_images(aws, names, config, fixed, snap.Options(arch="arm64", extra_images=extra))
    assert [(i.model, i.ref, i.ecr) for i in images] == [
        ("acme/fixed", f"{REGISTRY}/kserve-models/acme-fixed@{account.fixed}", True),
        (None, f"{REGISTRY}/kserve-models/acme-tiny@{account.tiny}", True),
        (None, f"{stub.host}/kserve/runtime@{index}", False),
    ]
    assert images[1].content_bytes == 2 * GB  # the arm64 manifest of the index
    assert images[2].content_bytes == len(layer) * 2
    elsewhere = f"999999999999.dkr.ecr.{REGION}.amazonaws.com/kserve-models/acme-tiny:latest"
    for outside in (f"{REGISTRY}/mirror/vllm:latest", elsewhere):
        with pytest.raises(OcimodelError, match="may pull only this config's ECR repositories"):
            snap.resolve_images(aws, names, config, fixed, snap.Options(extra_images=(outside,)))


def test_what_could_not_be_deleted_is_named(account: Account, checked: ShapeCheck) -> None:
    aws = account.aws
    agent = Agent(aws, checked)
    config = parse_config(CONFIG, "models.toml")
    plan = snap.make_plan(aws, Names(config.aws, whoami(aws)), config, config.models, snap.Options())
    agent.outcomes[sp.instance_pull_command(plan.images[0], "bottlerocket", "amd64")] = "Failed"

    def terminate_instances(**request: Any) -> Any:
        raise client_error("UnauthorizedOperation", "You are not authorized to perform this operation.", "Terminate")

    clients = replace(agent.clients(), ec2=Wrapped(aws.ec2, terminate_instances=terminate_instances))
    clock = FakeClock()
    with pytest.raises(OcimodelError) as caught:
        snap.Builder(clients, snap.SsmRunner(clients.ssm, clock.clock), clock.clock, lambda _: None).build(plan)
    (instance,) = left_over(aws)["instances"]
    message = str(caught.value)
    assert message.startswith(f"could not pull {plan.images[0].ref} on {instance}: SSM says Failed")
    assert message.endswith(
        f"; left behind: instance {instance} (and its volumes) (AWS said UnauthorizedOperation: You are not "
        "authorized to perform this operation.)"
    )


def test_a_kms_key_encrypts_the_volume_and_the_nodeclass_names_it() -> None:
    key = "arn:aws:kms:us-east-1:123456789012:key/0f0f0f0f-1111-2222-3333-444444444444"
    plan = snap.SnapshotPlan(
        images=(image("a", [(TAR, 1)]),),
        ami=snap.Ami("ami-12345678", None),
        instance_type="m6i.large",
        subnet=snap.Subnet("subnet-1", "vpc-1"),
        volume_gib=100,
        family="al2023-nvidia",
        arch="amd64",
        encrypt=True,
        kms_key=key,
        profile=PROFILE,
        tags=sp.snapshot_tags((image("a", [(TAR, 1)]),), "al2023-nvidia", "amd64", "ocimodel"),
    )
    request = snap.run_instances_request(plan, "sg-1", "run")
    assert request["BlockDeviceMappings"][0]["Ebs"] == {
        "VolumeSize": 100, "VolumeType": "gp3", "Iops": 6000, "Throughput": 500, "DeleteOnTermination": True,
        "Encrypted": True, "KmsKeyId": key,
    }
    assert "UserData" not in request  # only Bottlerocket needs its admin container enabled
    block = yaml.safe_load(sp.nodeclass_block("al2023-nvidia", "snap-1", 100, True, key))
    root, data = block["blockDeviceMappings"]
    assert root["ebs"]["volumeSize"] == "20Gi" and root["ebs"]["kmsKeyID"] == key
    assert data["ebs"] == {
        "volumeSize": "100Gi", "volumeType": "gp3", "iops": 3000, "throughput": 125, "encrypted": True,
        "kmsKeyID": key, "snapshotID": "snap-1", "deleteOnTermination": True,
    }


def test_an_al2023_snapshot_moves_containerds_root_onto_the_data_volume_first(
    account: Account, checked: ShapeCheck, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws = account.aws
    result = cli(monkeypatch, Agent(aws, checked).clients(), config_file, "acme/tiny", "--ami-family", "al2023-nvidia")
    assert result.exit_code == 0, result.output
    (tiny, _) = account.refs()
    prepare, pull, finish = sent_commands(aws)
    assert prepare == sp.prepare_command("al2023-nvidia") and "mount /dev/xvdb /var/lib/containerd" in prepare
    assert pull.splitlines()[-3] == (
        "ctr -n k8s.io images pull --label io.cri-containerd.image=managed --platform linux/amd64 "
        f'--user "$user:$pass" {tiny} >/dev/null'
    )
    assert "/etc/eks/image-credential-provider/ecr-credential-provider" in pull and "apiclient" not in pull
    assert finish == "set -eu\nsystemctl stop containerd\nsync\numount /var/lib/containerd"
    (launch,) = checked.sent("RunInstances")
    assert "UserData" not in launch
    tags = {t["Key"]: t["Value"] for t in aws.ec2.describe_snapshots(SnapshotIds=[result.stdout.split()[-1]])[
        "Snapshots"][0]["Tags"]}
    assert tags["ocimodel:ami-family"] == "al2023-nvidia" and tags["ocimodel:models"] == "acme/tiny"
    assert left_over(aws) == {**NOTHING, "snapshots": [result.stdout.split()[-1]]}
    assert checked.problems == []


def test_bootstraps_dry_run_shows_the_instance_profiles_policy(aws: Clients, wheel: Path, config_file: Path) -> None:
    result = invoke("aws", "bootstrap", "--config", str(config_file), "--wheel", str(wheel), "--dry-run")
    assert result.exit_code == 0, result.output
    (row,) = [line.split() for line in result.stdout.splitlines() if line.startswith("instance profile ")]
    assert row[2:5] == [PROFILE, "would", "create"]
    marker = f"# IAM role {PROFILE}: inline policy ocimodel-snapshot-pull (aws snapshot's instance)\n"
    shown = result.stdout[result.stdout.index(marker) + len(marker) :]
    document, _ = json.JSONDecoder().raw_decode(shown)
    assert document["Statement"][1]["Resource"] == [
        f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/kserve-models/acme-fixed",
        f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/kserve-models/acme-tiny",
    ]
    assert aws.iam.list_instance_profiles()["InstanceProfiles"] == []
