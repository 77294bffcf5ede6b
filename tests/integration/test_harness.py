"""Checks that the integration harness itself works.

If these fail, every other integration test would fail in confusing ways,
so they pin down each piece separately: the registry processes, the
busybox image bytes, the skopeo push, umoci's view of the layout and
whether the image actually runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import requests

from tests.harness.busybox import (
    APPLETS,
    BUSYBOX_BINARY,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_MANIFEST,
    build_busybox_layout,
    layout_top_descriptor,
    layout_top_digest,
    manifest_digests_by_platform,
    push_layout_with_skopeo,
    read_blob,
)
from tests.harness.registry import Registry, RegistryError, run_registry
from tests.harness.oci import rootfs_command


def _run(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a tool and fail the test with its output, which pytest would otherwise hide."""
    result = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def _skopeo_inspect(reference: str, *extra: str) -> dict:
    result = _run(["skopeo", "inspect", "--tls-verify=false", *extra, f"docker://{reference}"])
    return json.loads(result.stdout)


def _split_ref(reference: str) -> tuple[str, str, str]:
    """``HOST/REPO@DIGEST`` into its three parts."""
    name, digest = reference.split("@", 1)
    host, repo = name.split("/", 1)
    return host, repo, digest


# --- registries -------------------------------------------------------------


def test_open_registry_answers_v2(registry: Registry) -> None:
    response = requests.get(f"{registry.url}/v2/", timeout=5)
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert registry.host.startswith("127.0.0.1:")
    assert registry.url == f"http://{registry.host}"
    assert registry.storage_dir.is_dir()
    assert registry.log_path.is_file()


def test_auth_registry_requires_credentials(auth_registry: Registry) -> None:
    assert auth_registry.username and auth_registry.password

    anonymous = requests.get(f"{auth_registry.url}/v2/", timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic ")

    wrong = requests.get(f"{auth_registry.url}/v2/", auth=(auth_registry.username, "wrong"), timeout=5)
    assert wrong.status_code == 401

    right = requests.get(
        f"{auth_registry.url}/v2/", auth=(auth_registry.username, auth_registry.password), timeout=5
    )
    assert right.status_code == 200


def test_skopeo_push_to_auth_registry_needs_creds(auth_registry: Registry, busybox_layout: Path) -> None:
    with pytest.raises(RuntimeError, match="skopeo push failed"):
        push_layout_with_skopeo(busybox_layout, auth_registry.host, "auth/busybox", "nocreds")

    push_layout_with_skopeo(busybox_layout, auth_registry.host, "auth/busybox", "v1", creds=auth_registry.creds)
    assert auth_registry.list_tags("auth/busybox") == ["v1"]
    assert auth_registry.fetch_manifest("auth/busybox", "v1").digest == layout_top_digest(busybox_layout)


def test_registry_that_dies_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="died during the tests") as caught:
        with run_registry(tmp_path / "doomed") as doomed:
            doomed.process.kill()
            doomed.process.wait(timeout=10)
    # The log tail is included so the cause is visible in the failure report.
    assert "GET /v2/" in str(caught.value)


def test_registry_that_cannot_start_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="exited with"):
        with run_registry(tmp_path / "broken", binary="/bin/false"):
            pytest.fail("a registry that never started must not be yielded")


# --- the busybox image ------------------------------------------------------


def test_busybox_layout_is_deterministic(tmp_path: Path, busybox_layout: Path) -> None:
    again = tmp_path / "again"
    assert build_busybox_layout(again) == layout_top_digest(busybox_layout)
    assert (again / "index.json").read_bytes() == (busybox_layout / "index.json").read_bytes()


def test_busybox_layer_contents(busybox_layout: Path) -> None:
    top = layout_top_descriptor(busybox_layout)
    assert top["mediaType"] == MEDIA_TYPE_MANIFEST
    manifest = json.loads(read_blob(busybox_layout, top["digest"]))
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == MEDIA_TYPE_LAYER_TAR
    layer_bytes = read_blob(busybox_layout, layer["digest"])

    config = json.loads(read_blob(busybox_layout, manifest["config"]["digest"]))
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert config["rootfs"]["diff_ids"] == [layer["digest"]]
    assert config["config"]["Cmd"] == ["sh"]

    with tarfile.open(fileobj=io.BytesIO(layer_bytes)) as archive:
        members = archive.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        by_name = {m.name: m for m in members}
        assert by_name["bin"].isdir() and by_name["bin"].mode == 0o755
        binary = by_name["bin/busybox"]
        assert binary.isreg() and binary.mode == 0o755
        extracted = archive.extractfile(binary)
        assert extracted is not None
        assert hashlib.sha256(extracted.read()).digest() == hashlib.sha256(BUSYBOX_BINARY.read_bytes()).digest()
        for applet in APPLETS:
            link = by_name[f"bin/{applet}"]
            assert link.issym() and link.linkname == "busybox"
        for member in members:
            assert (member.uid, member.gid, member.uname, member.gname, member.mtime) == (0, 0, "", "", 0)


def test_busybox_multi_layout_is_an_index(busybox_multi_layout: Path) -> None:
    top = layout_top_descriptor(busybox_multi_layout)
    assert top["mediaType"] == MEDIA_TYPE_INDEX
    by_platform = manifest_digests_by_platform(busybox_multi_layout)
    assert set(by_platform) == {"linux/amd64", "linux/arm64"}
    for platform, digest in by_platform.items():
        manifest = json.loads(read_blob(busybox_multi_layout, digest))
        config = json.loads(read_blob(busybox_multi_layout, manifest["config"]["digest"]))
        assert f"{config['os']}/{config['architecture']}" == platform


def test_umoci_unpacks_busybox_layout(tmp_path: Path, busybox_layout: Path) -> None:
    bundle = tmp_path / "bundle"
    _run(["umoci", "unpack", "--rootless", "--image", f"{busybox_layout}:latest", str(bundle)])
    sh = bundle / "rootfs" / "bin" / "sh"
    assert sh.is_symlink()
    assert os.readlink(sh) == "busybox"
    assert (bundle / "rootfs" / "bin" / "busybox").read_bytes() == BUSYBOX_BINARY.read_bytes()




def test_busybox_rootfs_runs_in_chroot(tmp_path: Path, busybox_layout: Path) -> None:
    bundle = tmp_path / "bundle"
    _run(["umoci", "unpack", "--rootless", "--image", f"{busybox_layout}:latest", str(bundle)])
    result = _run(rootfs_command(bundle / "rootfs", "echo ok; ls /bin"))
    lines = result.stdout.split()
    assert lines[0] == "ok"
    assert set(lines[1:]) == {"busybox", *APPLETS}


# --- pushed images ----------------------------------------------------------


def test_busybox_ref_is_pinned_and_pushed(registry: Registry, busybox_ref: str, busybox_layout: Path) -> None:
    host, repo, digest = _split_ref(busybox_ref)
    assert (host, repo) == (registry.host, "library/busybox")
    assert digest == layout_top_digest(busybox_layout)
    assert "latest" in registry.list_tags(repo)

    served = registry.fetch_manifest(repo, digest)
    assert served.digest == digest
    assert served.media_type == MEDIA_TYPE_MANIFEST
    assert "sha256:" + hashlib.sha256(served.body).hexdigest() == digest


def test_skopeo_inspect_busybox_ref(busybox_ref: str) -> None:
    _, _, digest = _split_ref(busybox_ref)
    info = _skopeo_inspect(busybox_ref)
    assert info["Digest"] == digest
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"


def test_busybox_multi_ref_is_an_index(registry: Registry, busybox_multi_ref: str) -> None:
    _, repo, digest = _split_ref(busybox_multi_ref)
    served = registry.fetch_manifest(repo, digest)
    assert served.media_type == MEDIA_TYPE_INDEX
    platforms = sorted(m["platform"]["architecture"] for m in served.json()["manifests"])
    assert platforms == ["amd64", "arm64"]

    for arch in ("amd64", "arm64"):
        info = _skopeo_inspect(busybox_multi_ref, "--override-arch", arch, "--override-os", "linux")
        assert info["Architecture"] == arch
        assert info["Digest"] == digest
