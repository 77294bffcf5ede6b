"""A tiny, real busybox base image, built in Python as an OCI image layout.

The integration tests need a base image that is small, runnable and
byte-for-byte reproducible, without reaching any registry outside
127.0.0.1.  Debian's ``busybox-static`` gives a single self-contained
binary, so one uncompressed tar layer with that binary and a few applet
symlinks is enough to run ``sh`` in a chroot.

Every byte is deterministic (fixed ownership, mtimes, member order and
JSON encoding), so the digests stay stable between runs and machines with
the same busybox binary.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform as _platform
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

BUSYBOX_BINARY = Path("/bin/busybox")

MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

#: The tag written into ``index.json``; skopeo and umoci address it as ``LAYOUT:latest``.
LAYOUT_TAG = "latest"

#: Applets the tests rely on; each is a relative symlink to ``busybox``.
APPLETS: tuple[str, ...] = ("sh", "ln", "sleep", "ls", "[", "cat", "test", "echo")

DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

_MACHINE_TO_OCI_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


@dataclass(frozen=True)
class Platform:
    """An OCI platform triple; ``variant`` is empty when not applicable."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> "Platform":
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform must look like os/arch[/variant], got {text!r}")
        return cls(*parts)

    def as_descriptor_field(self) -> dict[str, str]:
        field = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            field["variant"] = self.variant
        return field

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


def native_platform() -> Platform:
    """The platform the local busybox binary actually runs on."""
    machine = _platform.machine()
    try:
        return Platform("linux", _MACHINE_TO_OCI_ARCH[machine])
    except KeyError:
        raise RuntimeError(f"unknown machine type {machine!r}") from None


def canonical_json(value: Any) -> bytes:
    """Sorted, compact JSON so that equal content always yields an equal digest."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar_member(name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def build_layer_tar(busybox_binary: Path = BUSYBOX_BINARY) -> bytes:
    """One uncompressed layer holding ``bin/busybox`` and its applet symlinks.

    Members are emitted in sorted name order with zeroed metadata so the
    layer digest only depends on the busybox binary.
    """
    payload = busybox_binary.read_bytes()
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_tar_member("bin", tarfile.DIRTYPE, 0o755), None),
        (_tar_member("bin/busybox", tarfile.REGTYPE, 0o755, size=len(payload)), payload),
    ]
    members += [
        (_tar_member(f"bin/{applet}", tarfile.SYMTYPE, 0o777, linkname="busybox"), None)
        for applet in APPLETS
    ]
    members.sort(key=lambda member: member[0].name)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


class _BlobStore:
    """Writes content-addressed blobs into ``blobs/sha256`` and returns descriptors."""

    def __init__(self, layout: Path) -> None:
        self.directory = layout / "blobs" / "sha256"
        self.directory.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = sha256_digest(data)
        path = self.directory / digest.split(":", 1)[1]
        if not path.exists():
            path.write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}


def _image_config(target: Platform, diff_id: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architecture": target.architecture,
        "os": target.os,
        "config": {"Env": list(DEFAULT_ENV), "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "test busybox"}],
    }
    if target.variant:
        config["variant"] = target.variant
    return config


def build_busybox_layout(
    dest: Path,
    platforms: Sequence[str] | str = ("linux/amd64",),
    busybox_binary: Path = BUSYBOX_BINARY,
) -> str:
    """Write the busybox image as an OCI layout at ``dest`` and return its top-level digest.

    With one platform ``index.json`` names the image manifest directly, so
    tools that only understand single images (umoci) can unpack it.  With
    several, ``index.json`` names an image index blob, which is what a
    multi-arch image in a registry looks like.  Non-native platforms reuse
    the native binary: they exist to exercise the distribution protocol,
    not to be run.
    """
    if isinstance(platforms, str):
        platforms = [p for p in platforms.split(",") if p]
    targets = [Platform.parse(p) for p in platforms]
    if not targets:
        raise ValueError("at least one platform is required")
    if len(set(targets)) != len(targets):
        raise ValueError(f"duplicate platforms in {platforms!r}")

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    blobs = _BlobStore(dest)

    layer_bytes = build_layer_tar(busybox_binary)
    # The layer is uncompressed, so its diff_id is simply its digest.
    layer = blobs.put(layer_bytes, MEDIA_TYPE_LAYER_TAR)

    manifests: list[dict[str, Any]] = []
    for target in targets:
        config = blobs.put(canonical_json(_image_config(target, layer["digest"])), MEDIA_TYPE_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config,
            "layers": [layer],
        }
        manifests.append(
            blobs.put(canonical_json(manifest), MEDIA_TYPE_MANIFEST, platform=target.as_descriptor_field())
        )

    if len(manifests) == 1:
        top = dict(manifests[0])
        # A single manifest is named directly; its platform lives in its config.
        top.pop("platform")
    else:
        index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": manifests}
        top = blobs.put(canonical_json(index), MEDIA_TYPE_INDEX)
    top["annotations"] = {ANNOTATION_REF_NAME: LAYOUT_TAG}

    layout_index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [top]}
    (dest / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (dest / "index.json").write_bytes(canonical_json(layout_index))
    return str(top["digest"])


def layout_top_descriptor(layout: Path, tag: str = LAYOUT_TAG) -> dict[str, Any]:
    """The ``index.json`` descriptor carrying ``tag`` as its ref name."""
    index = json.loads((Path(layout) / "index.json").read_bytes())
    for descriptor in index.get("manifests", []):
        if descriptor.get("annotations", {}).get(ANNOTATION_REF_NAME) == tag:
            return descriptor
    raise LookupError(f"no descriptor tagged {tag!r} in {layout}/index.json")


def layout_top_digest(layout: Path, tag: str = LAYOUT_TAG) -> str:
    """Digest that a ``--preserve-digests`` push of ``layout`` leaves in the registry.

    skopeo copies manifest and index bytes verbatim with that flag, so the
    registry digest equals the digest of the blob that ``index.json`` names.
    """
    return str(layout_top_descriptor(layout, tag)["digest"])


def read_blob(layout: Path, digest: str) -> bytes:
    """Read a blob and check it against its digest, so corrupt layouts fail early."""
    algorithm, hex_digest = digest.split(":", 1)
    data = (Path(layout) / "blobs" / algorithm / hex_digest).read_bytes()
    if sha256_digest(data) != digest:
        raise ValueError(f"blob {digest} in {layout} does not match its digest")
    return data


def _skopeo() -> str:
    path = shutil.which("skopeo")
    if path is None:
        raise RuntimeError("skopeo is not installed (apt-get install skopeo)")
    return path


def push_layout_with_skopeo(
    layout: Path,
    registry_host: str,
    repo: str,
    tag: str,
    creds: tuple[str, str] | None = None,
    extra_args: Iterable[str] = (),
) -> None:
    """Push every platform of ``layout`` to ``registry_host`` over plain HTTP.

    ``--preserve-digests`` makes skopeo refuse any push that would rewrite
    a manifest, so the pushed digest is the one ``layout_top_digest`` reports.
    ``--insecure-policy`` keeps the push independent of the host's
    ``/etc/containers/policy.json``.
    """
    command = [
        _skopeo(),
        "--insecure-policy",
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]
    if creds is not None:
        command.append(f"--dest-creds={creds[0]}:{creds[1]}")
    command += list(extra_args)
    command += [f"oci:{Path(layout)}:{LAYOUT_TAG}", f"docker://{registry_host}/{repo}:{tag}"]
    result = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"skopeo push failed ({result.returncode}): {' '.join(command)}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )


def pinned_reference(registry_host: str, repo: str, digest: str) -> str:
    """``HOST/REPO@sha256:...``, the form tests use to address an exact image."""
    return f"{registry_host}/{repo}@{digest}"


def manifest_digests_by_platform(layout: Path) -> Mapping[str, str]:
    """Map ``os/arch[/variant]`` to the image-manifest digest inside ``layout``."""
    top = layout_top_descriptor(layout)
    if top["mediaType"] == MEDIA_TYPE_MANIFEST:
        manifest = json.loads(read_blob(layout, top["digest"]))
        config = json.loads(read_blob(layout, manifest["config"]["digest"]))
        key = str(Platform(config["os"], config["architecture"], config.get("variant", "")))
        return {key: top["digest"]}
    index = json.loads(read_blob(layout, top["digest"]))
    result: dict[str, str] = {}
    for descriptor in index["manifests"]:
        field = descriptor["platform"]
        key = str(Platform(field["os"], field["architecture"], field.get("variant", "")))
        result[key] = descriptor["digest"]
    return result
