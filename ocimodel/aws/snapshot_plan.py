"""What ``ocimodel aws snapshot`` does, as data: the AMI's parameter, the volume's size, the commands the instance
runs, the snapshot's tags and the Karpenter block, all computed without AWS calls.

The instance pulls with containerd's own ``ctr``, by digest, with the label that makes the kubelet's CRI plugin see
the image as its own (``io.cri-containerd.image=managed``). The ECR credential never leaves the instance and never
appears in a command: each pull asks the node's kubelet image credential provider (the binary the kubelet itself runs
to pull from ECR, with the instance's role) for it, so SSM's command history holds only the provider's call.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
from dataclasses import dataclass
from typing import Any

from ocimodel.aws.plan import ECR_PULL_ACTIONS, MANAGED_TAG, Names, policy_text
from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import is_compressed_layer

BOTTLEROCKET = "bottlerocket"
AL2023_NVIDIA = "al2023-nvidia"
AMI_FAMILIES = (BOTTLEROCKET, AL2023_NVIDIA)
ARCHES = ("amd64", "arm64")
#: The architecture as EC2 and the AMIs' SSM parameters spell it.
EC2_ARCH = {"amd64": "x86_64", "arm64": "arm64"}
DEFAULT_INSTANCE_TYPE = {"amd64": "m6i.large", "arm64": "m7g.large"}
DEFAULT_KUBERNETES_VERSION = "1.32"

ROOT_DEVICE = "/dev/xvda"
DATA_DEVICE = "/dev/xvdb"
#: Root volumes Karpenter gives these families by default (Bottlerocket's OS volume is small; AL2023's holds all).
ROOT_GIB = {BOTTLEROCKET: 4, AL2023_NVIDIA: 20}
#: gp3's baseline, free with every volume: what the nodes get in the printed EC2NodeClass.
NODE_IOPS, NODE_THROUGHPUT = 3000, 125
#: The temporary volume the images are written to: twice the baseline, for the hour it exists (pulls of tens of GB
#: are bound by the volume's write throughput; the snapshot keeps the data, not the performance settings).
BUILD_IOPS, BUILD_THROUGHPUT = 6000, 500
GP3_MAX_GIB = 16384

GIB = 1024**3
GB = 1000**3
#: The guide's sizes by total model size (uncompressed, GB): (below, GiB). Above the last, 500 GiB.
SIZE_FLOOR = ((50, 100), (100, 150), (200, 250))
SIZE_FLOOR_TOP = 500
#: The kubelet garbage-collects unused images once its disk is 85 % full (imageGCHighThresholdPercent): the cached
#: images fill at most 70 % of the volume, leaving the pods' own images, logs and emptyDirs room below that.
MAX_FILL = 0.70
#: The OS's own files on the data volume (Bottlerocket keeps its logs and host containers there).
HEADROOM_BYTES = 5 * GIB
#: A gzip or zstd layer's uncompressed size is not in any manifest; model weights compress little, so twice the
#: compressed size is a safe bound (said so in the plan as "estimated").
COMPRESSED_RATIO = 2

CRI_LABEL = "io.cri-containerd.image=managed"
NAMESPACE = "k8s.io"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
#: The kubelet's ECR image credential provider on each family's AMI.
CREDENTIAL_PROVIDER = {
    BOTTLEROCKET: "/usr/libexec/kubernetes/kubelet/plugins/ecr-credential-provider",
    AL2023_NVIDIA: "/etc/eks/image-credential-provider/ecr-credential-provider",
}
#: Where the AL2023 data volume is mounted while containerd's store is copied onto it.
AL2023_STAGING = "/mnt/ocimodel-data"
#: Bottlerocket runs commands in its admin container only when it is enabled (off by default on aws-k8s variants).
BOTTLEROCKET_USER_DATA = "[settings.host-containers.admin]\nenabled = true\n"

#: EC2's documented tag limits: 50 tags a resource, keys of 128 characters, values of 256.
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE = 50, 128, 256
TAG_KEY = "ocimodel:snapshot-key"
TAG_PREFIX = "ocimodel:prefix"
TAG_FAMILY = "ocimodel:ami-family"
TAG_ARCH = "ocimodel:arch"
TAG_MODELS = "ocimodel:models"
TAG_IMAGE = "ocimodel:image-"
#: Tags that are not one per image: managed-by, Name, key, prefix, family, arch, models.
_FIXED_TAGS = 7
MAX_IMAGES = MAX_TAGS - _FIXED_TAGS

SSM_CORE_POLICY = "AmazonSSMManagedInstanceCore"
SNAPSHOT_POLICY_NAME = "ocimodel-snapshot-pull"


@dataclass(frozen=True)
class Layer:
    media_type: str
    size: int

    @property
    def compressed(self) -> bool:
        return is_compressed_layer(self.media_type)


@dataclass(frozen=True)
class Image:
    """One image to cache, pinned: what the instance pulls, and what it takes on disk."""

    #: The model it holds, or None for an ``--extra-image``.
    model: str | None
    #: ``registry/repository`` without tag or digest.
    name: str
    #: The digest of what the reference names (an index for a multi-platform image).
    digest: str
    #: Whether the instance needs an ECR credential to pull it.
    ecr: bool
    #: The layers of the manifest for the snapshot's platform.
    layers: tuple[Layer, ...]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.digest}"

    @property
    def content_bytes(self) -> int:
        """Bytes containerd keeps in its content store: the layers as fetched."""
        return sum(layer.size for layer in self.layers)

    @property
    def unpacked_bytes(self) -> int:
        """Bytes of the unpacked snapshots: exact for uncompressed layers, bounded for compressed ones."""
        return sum(layer.size * (COMPRESSED_RATIO if layer.compressed else 1) for layer in self.layers)

    @property
    def exact(self) -> bool:
        return not any(layer.compressed for layer in self.layers)


def ami_parameter(family: str, kubernetes_version: str, arch: str) -> str:
    """The SSM public parameter naming the latest AMI of the family for that Kubernetes version.

    Bottlerocket's plain ``aws-k8s`` variant, which boots on any instance type: its data volume (containerd's store)
    is laid out as the ``-nvidia`` variant's, so GPU nodes use the snapshot as it is.
    """
    ec2_arch = EC2_ARCH[arch]
    if family == BOTTLEROCKET:
        return f"/aws/service/bottlerocket/aws-k8s-{kubernetes_version}/{ec2_arch}/latest/image_id"
    return (
        f"/aws/service/eks/optimized-ami/{kubernetes_version}/amazon-linux-2023/{ec2_arch}/nvidia/recommended/"
        "image_id"
    )


def platform(arch: str) -> str:
    return f"linux/{arch}"


def volume_gib(images: tuple[Image, ...]) -> int:
    """The data volume: what containerd stores (the layers as fetched, and unpacked) filling at most ``MAX_FILL`` of
    it, plus the OS's share, and never below the guide's size for the models' total."""
    stored = sum(i.content_bytes + i.unpacked_bytes for i in images)
    needed = math.ceil((stored / MAX_FILL + HEADROOM_BYTES) / GIB)
    total_gb = sum(i.unpacked_bytes for i in images) / GB
    floor = next((gib for below, gib in SIZE_FLOOR if total_gb < below), SIZE_FLOOR_TOP)
    size = max(needed, floor)
    if size > GP3_MAX_GIB:
        raise OcimodelError(
            f"the images need a {size} GiB volume, over gp3's {GP3_MAX_GIB} GiB: snapshot fewer models at once"
        )
    return size


def snapshot_key(images: tuple[Image, ...], family: str, arch: str) -> str:
    """What makes two snapshots the same: the set of pinned images, the AMI family and the architecture."""
    document = {"images": sorted(i.ref for i in images), "family": family, "arch": arch}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def _cut_left(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def snapshot_tags(images: tuple[Image, ...], family: str, arch: str, prefix: str) -> dict[str, str]:
    """The snapshot's tags: what it holds (one tag per image: its repository and digest) and how to find it again."""
    if len(images) > MAX_IMAGES:
        raise OcimodelError(
            f"{len(images)} images do not fit one snapshot's {MAX_TAGS} tags (at most {MAX_IMAGES} images): snapshot "
            "fewer models at once"
        )
    models = ", ".join(i.model for i in images if i.model) or "extra images"
    tags = {
        MANAGED_TAG[0]: MANAGED_TAG[1],
        "Name": _cut_left(f"ocimodel {family} {arch}: {models}", MAX_TAG_VALUE),
        TAG_KEY: snapshot_key(images, family, arch),
        TAG_PREFIX: prefix,
        TAG_FAMILY: family,
        TAG_ARCH: arch,
        TAG_MODELS: _cut_left(models, MAX_TAG_VALUE),
    }
    for index, image in enumerate(sorted(images, key=lambda i: i.ref), 1):
        tags[f"{TAG_IMAGE}{index}"] = _cut_left(image.ref, MAX_TAG_VALUE)
    return tags


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


# --- the commands the instance runs ---------------------------------------------------------------------------------


def ctr(family: str, socket: str | None = None) -> str:
    """``ctr`` as each family reaches containerd: Bottlerocket's from the host, through its socket; AL2023's plainly."""
    if family == BOTTLEROCKET:
        return f"ctr -a {shlex.quote(socket or CONTAINERD_SOCKET)} -n {NAMESPACE}"
    return f"ctr -n {NAMESPACE}" if socket is None else f"ctr -a {shlex.quote(socket)} -n {NAMESPACE}"


def pull_script(
    image: Image,
    arch: str,
    *,
    ctr_command: str,
    provider: str,
    extra_args: tuple[str, ...] = (),
) -> str:
    """A POSIX shell script that pulls one image by digest, labelled for the CRI, and checks it is there.

    For an ECR image the credential comes from the node's kubelet credential provider, with the instance's role: it
    lives in a shell variable for the pull and is on no command line SSM records, and nothing prints it.
    """
    ref = shlex.quote(image.ref)
    lines = ["set -eu"]
    user = ""
    if image.ecr:
        request = json.dumps(
            {
                "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                "kind": "CredentialProviderRequest",
                "image": image.ref,
            },
            separators=(",", ":"),
        )
        lines += [
            f"creds=$(printf '%s' {shlex.quote(request)} | {shlex.quote(provider)})",
            "user=$(printf '%s\\n' \"$creds\" | sed -n 's/.*\"username\":\"\\([^\"]*\\)\".*/\\1/p')",
            "pass=$(printf '%s\\n' \"$creds\" | sed -n 's/.*\"password\":\"\\([^\"]*\\)\".*/\\1/p')",
            '[ -n "$user" ] && [ -n "$pass" ] || { echo "ocimodel: the credential provider gave no ECR credential '
            'for ' + image.name + '" >&2; exit 1; }',
        ]
        user = ' --user "$user:$pass"'
    args = " ".join(shlex.quote(a) for a in extra_args)
    lines += [
        f"{ctr_command} images pull --label {CRI_LABEL} --platform {platform(arch)}"
        f"{' ' + args if args else ''}{user} {ref} >/dev/null",
        f"{ctr_command} images ls -q 'labels.\"io.cri-containerd.image\"==managed' | grep -qxF {ref} || "
        f'{{ echo "ocimodel: {image.ref} is not in containerd after its pull" >&2; exit 1; }}',
        f"echo pulled {ref}",
    ]
    return "\n".join(lines)


def instance_pull_command(image: Image, family: str, arch: str) -> str:
    """The command sent to the instance to pull ``image``: on Bottlerocket, the script run on the host through the
    admin container (``apiclient exec admin sheltie``); on AL2023, the script itself."""
    script = pull_script(image, arch, ctr_command=ctr(family), provider=CREDENTIAL_PROVIDER[family])
    return _on_host(family, script)


def _on_host(family: str, script: str) -> str:
    if family == BOTTLEROCKET:
        return f"apiclient exec admin sheltie bash -c {shlex.quote(script)}"
    return script


def prepare_command(family: str) -> str:
    """Before the pulls. Bottlerocket: the kubelet stopped (it would garbage-collect images), containerd's store is
    already on the data volume. AL2023: the data volume formatted and containerd's root moved onto it."""
    if family == BOTTLEROCKET:
        return _on_host(family, "set -eu\nsystemctl stop kubelet || true\nsystemctl is-active containerd")
    return "\n".join(
        [
            "set -eu",
            "systemctl stop kubelet 2>/dev/null || true",
            "systemctl stop containerd",
            f"mkfs.xfs -f -L ocimodel-data {DATA_DEVICE}",
            f"mkdir -p {AL2023_STAGING} /var/lib/containerd",
            f"mount {DATA_DEVICE} {AL2023_STAGING}",
            f"cp -a /var/lib/containerd/. {AL2023_STAGING}/",
            f"umount {AL2023_STAGING}",
            f"mount {DATA_DEVICE} /var/lib/containerd",
            "systemctl start containerd",
        ]
    )


def finish_command(family: str) -> str:
    """After the pulls: every write on the volume before the instance stops (AL2023: containerd stopped and the
    volume unmounted)."""
    if family == BOTTLEROCKET:
        return _on_host(family, "set -eu\nsync")
    return "set -eu\nsystemctl stop containerd\nsync\numount /var/lib/containerd"


def pull_timeout_seconds(image: Image) -> int:
    """Ten minutes, plus the image at a slow 25 MB/s, within SSM's 172,800 s."""
    return min(172_800, 600 + math.ceil(image.content_bytes / (25 * 1000**2)))


# --- the instance profile -------------------------------------------------------------------------------------------


def instance_trust_policy() -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }


def instance_pull_policy(names: Names, repositories: list[str]) -> dict[str, Any]:
    """ECR pulls of the config's repositories only; the login action names no resource, so IAM takes only ``*``."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {"Sid": "EcrPull", "Effect": "Allow", "Action": list(ECR_PULL_ACTIONS), "Resource": repositories},
        ],
    }


def ssm_core_arn(partition: str) -> str:
    return f"arn:{partition}:iam::aws:policy/{SSM_CORE_POLICY}"


def instance_profile_requests(names: Names, repositories: list[str]) -> dict[str, dict[str, Any]]:
    """The IAM requests that make the instance profile, keyed by operation (checked against botocore's models)."""
    role = names.snapshot_role
    tags = [{"Key": MANAGED_TAG[0], "Value": MANAGED_TAG[1]}]
    return {
        "CreateRole": {
            "RoleName": role,
            "AssumeRolePolicyDocument": policy_text(instance_trust_policy()),
            "Description": "ocimodel: the temporary instance of aws snapshot (SSM, ECR pull)",
            "Tags": tags,
        },
        "AttachRolePolicy": {"RoleName": role, "PolicyArn": ssm_core_arn(names.account.partition)},
        "PutRolePolicy": {
            "RoleName": role,
            "PolicyName": SNAPSHOT_POLICY_NAME,
            "PolicyDocument": policy_text(instance_pull_policy(names, repositories)),
        },
        "CreateInstanceProfile": {"InstanceProfileName": role, "Tags": tags},
        "AddRoleToInstanceProfile": {"InstanceProfileName": role, "RoleName": role},
    }


# --- what is printed ------------------------------------------------------------------------------------------------


def nodeclass_block(family: str, snapshot_id: str, size_gib: int, encrypted: bool, kms_key: str | None) -> str:
    """The ``blockDeviceMappings`` of a Karpenter ``EC2NodeClass``: the data volume from the snapshot, of its size."""
    def ebs(size: int, extra: list[str]) -> list[str]:
        lines = [f"      volumeSize: {size}Gi", "      volumeType: gp3"]
        lines += [f"      iops: {NODE_IOPS}", f"      throughput: {NODE_THROUGHPUT}"]
        lines += [f"      encrypted: {'true' if encrypted else 'false'}"]
        lines += [f"      kmsKeyID: {json.dumps(kms_key)}"] if kms_key else []
        return lines + extra + ["      deleteOnTermination: true"]

    return "\n".join(
        [
            "blockDeviceMappings:",
            f"  - deviceName: {ROOT_DEVICE}",
            "    ebs:",
            *ebs(ROOT_GIB[family], []),
            f"  - deviceName: {DATA_DEVICE}",
            "    ebs:",
            *ebs(size_gib, [f"      snapshotID: {snapshot_id}"]),
        ]
    )
