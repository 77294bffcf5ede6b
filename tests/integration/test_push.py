"""``ocimodel push`` end to end: the real CLI in a subprocess against the real docker-registry, read back by skopeo.

A small model is packed once on the harness's busybox base; every test pushes it (or a layout made by skopeo, or the
multi-platform busybox layout) to its own repository and checks what the registry holds with tools that know
nothing about ocimodel: skopeo copies the image back out, and the registry's HTTP API is read directly. Each CLI run
gets its own cache directory (the record of which repositories hold which blobs) and an empty docker config, so no
test sees another's mounts or the developer's credentials.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.busybox import layout_top_digest
from tests.harness.cli import ERROR_PREFIX, Env, assert_clean_error, explain
from tests.harness.models import write_model
from tests.harness.oci import blob, reachable
from tests.harness.registry import Registry, access_log, assert_registry_holds, free_port, registry_has_nothing

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SHARD_BYTES = 3 * 1024 * 1024 + 12_345  # a few MiB: chunked at 1 MiB, whole by default


# --- running things ----------------------------------------------------------------------------------------------


def push(env: Env, layout: Path, target: str, *options: str, stdin: str | None = None) -> str:
    """Run ``ocimodel push`` and return its last stdout line."""
    result = env.run("push", layout, target, *options, stdin=stdin)
    assert result.returncode == 0, explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    return result.stdout.splitlines()[-1]


def push_json(env: Env, layout: Path, target: str, *options: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(push(env, layout, target, "--json", *options))
    return result




def skopeo(*args: str) -> None:
    result = subprocess.run(
        ["skopeo", "--insecure-policy", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, explain(result)


def unique(name: str) -> str:
    return f"push-tests/{name}-{uuid.uuid4().hex[:8]}"


# --- reading layouts without ocimodel --------------------------------------------------------------------------


def top_entry(layout: Path) -> dict[str, Any]:
    manifests: list[dict[str, Any]] = json.loads((layout / "index.json").read_bytes())["manifests"]
    assert len(manifests) == 1
    return manifests[0]


# --- the packed model --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packed:
    layout: Path
    digest: str


def make_model(root: Path) -> None:
    rng = random.Random(7)
    root.mkdir(parents=True)
    write_model(root, {
        "model.safetensors": rng.randbytes(SHARD_BYTES),
        "config.json": json.dumps({"hidden_size": 64}),
        "tokenizer.json": json.dumps({"vocab": [rng.randbytes(6).hex() for _ in range(50)]}),
    })


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, busybox_ref: str) -> Packed:
    work = tmp_path_factory.mktemp("push-packed")
    make_model(work / "model")
    result = Env(work / "env").run("pack", work / "model", work / "layout", "--base", busybox_ref)
    assert result.returncode == 0, explain(result)
    return Packed(work / "layout", result.stdout.splitlines()[-1])


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path / "env")


# --- pushing to an open registry -----------------------------------------------------------------------------


def test_push_prints_the_digest_and_skopeo_reads_it_back(
    registry: Registry, packed: Packed, env: Env, tmp_path: Path
) -> None:
    repo = unique("model")
    assert push(env, packed.layout, f"{registry.host}/{repo}:v1") == f"{registry.host}/{repo}@{packed.digest}"
    assert registry.list_tags(repo) == ["v1"]
    assert_registry_holds(registry, repo, "v1", packed.layout, packed.digest)
    out = tmp_path / "copied"
    # Without --preserve-digests skopeo would gzip the uncompressed layers on their way into an OCI layout.
    skopeo(
        "copy", "--preserve-digests", "--src-tls-verify=false",
        f"docker://{registry.host}/{repo}@{packed.digest}", f"oci:{out}:latest",
    )
    assert top_entry(out)["digest"] == packed.digest
    copied = {p.name: p.read_bytes() for p in (out / "blobs" / "sha256").iterdir()}
    expected = reachable(packed.layout, packed.digest)
    assert {f"sha256:{name}" for name in copied} == set(expected)
    for name, data in copied.items():
        assert data == expected[f"sha256:{name}"]


def test_json_result_and_a_second_push_that_sends_nothing(registry: Registry, packed: Packed, env: Env) -> None:
    repo = unique("json")
    target = f"{registry.host}/{repo}"
    first = push_json(env, packed.layout, target)
    manifest = json.loads(blob(packed.layout, packed.digest))
    parts = {d["digest"]: d["size"] for d in [manifest["config"], *manifest["layers"]]}
    assert first["reference"] == f"{target}@{packed.digest}"
    assert first["digest"] == packed.digest and first["mediaType"] == OCI_MANIFEST
    assert first["uri"] == f"oci://{target}@{packed.digest}"
    assert {b["digest"]: b["size"] for b in first["blobs"]} == parts
    assert {b["outcome"] for b in first["blobs"]} == {"uploaded"}
    assert first["uploadedBytes"] == sum(parts.values())
    assert registry.list_tags(repo) == ["latest"]  # the layout's tag, as none was given

    posts = len(access_log(registry, "POST", repo))
    second = push_json(env, packed.layout, target)
    assert len(access_log(registry, "POST", repo)) == posts  # no upload session was even opened
    assert second["digest"] == packed.digest
    assert {b["outcome"] for b in second["blobs"]} == {"skipped"} and second["uploadedBytes"] == 0
    assert len(access_log(registry, "PATCH", repo)) == 0  # the default chunk size is far above a 3 MiB shard


def test_mounts_from_a_named_repository_and_from_the_last_push(
    registry: Registry, packed: Packed, env: Env, busybox_ref: str
) -> None:
    base_repo = busybox_ref.split("/", 1)[1].split("@")[0]
    base_layers = {d["digest"] for d in json.loads(blob(packed.layout, packed.digest))["layers"]}
    first = unique("mount-a")
    result = push_json(env, packed.layout, f"{registry.host}/{first}", "--mount-from", base_repo)
    mounted = {b["digest"]: b.get("from") for b in result["blobs"] if b["outcome"] == "mounted"}
    assert mounted and set(mounted.values()) == {base_repo}
    assert set(mounted) < base_layers  # the busybox layer came from busybox; the model's own layers were sent
    # The same user pushes again elsewhere: everything is mounted from the first repository, nothing is sent.
    second = unique("mount-b")
    again = push_json(env, packed.layout, f"{registry.host}/{second}")
    assert {(b["outcome"], b.get("from")) for b in again["blobs"]} == {("mounted", first)}
    assert again["uploadedBytes"] == 0
    # The registry saw one mount POST per blob, each answered 201, and no upload at all.
    posts = access_log(registry, "POST", second)
    assert len(posts) == len(again["blobs"]) and all(f'&from={first.replace("/", "%2F")}' in p for p in posts)
    assert all('HTTP/1.1" 201 ' in line for line in posts)
    assert access_log(registry, "PATCH", second) == []
    assert all("/manifests/" in line for line in access_log(registry, "PUT", second))
    assert_registry_holds(registry, second, "latest", packed.layout, packed.digest)


def test_chunked_and_whole_uploads_store_the_same_image(
    registry: Registry, packed: Packed, tmp_path: Path
) -> None:
    chunked, whole = unique("chunked"), unique("whole")
    # Separate users, so the second push cannot simply mount what the first sent.
    push(Env(tmp_path / "a"), packed.layout, f"{registry.host}/{chunked}", "--chunk-size", "1MiB")
    push(Env(tmp_path / "b"), packed.layout, f"{registry.host}/{whole}", "--chunk-size", "0")
    for repo in (chunked, whole):
        assert_registry_holds(registry, repo, "latest", packed.layout, packed.digest)
    # The registry's own access log shows how each was sent: a PATCH per MiB of each blob over 1 MiB, or none.
    sizes = [len(data) for data in reachable(packed.layout, packed.digest).values()]
    assert max(sizes) > SHARD_BYTES  # the shard's layer: a tar around it
    assert len(access_log(registry, "PATCH", chunked)) == sum(-(-n // (1 << 20)) for n in sizes if n > 1 << 20)
    assert access_log(registry, "PATCH", whole) == []


def test_push_of_a_layout_made_by_skopeo(registry: Registry, busybox_ref: str, env: Env, tmp_path: Path) -> None:
    layout = tmp_path / "skopeo-layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{busybox_ref}", f"oci:{layout}:latest")
    digest = top_entry(layout)["digest"]
    repo = unique("skopeo")
    assert push(env, layout, f"{registry.host}/{repo}:copy") == f"{registry.host}/{repo}@{digest}"
    assert_registry_holds(registry, repo, "copy", layout, digest)


def test_push_of_a_multi_platform_layout_keeps_the_index(
    registry: Registry, busybox_multi_layout: Path, env: Env
) -> None:
    digest = layout_top_digest(busybox_multi_layout)
    repo = unique("multi")
    result = push_json(env, busybox_multi_layout, f"{registry.host}/{repo}:all")
    assert result["digest"] == digest and result["mediaType"] == OCI_INDEX
    top = registry.fetch_manifest(repo, "all")
    assert top.media_type == OCI_INDEX and top.digest == digest
    assert len(json.loads(top.body)["manifests"]) == 2
    assert_registry_holds(registry, repo, "all", busybox_multi_layout, digest)


# --- credentials ---------------------------------------------------------------------------------------------


def test_password_on_stdin(auth_registry: Registry, packed: Packed, env: Env) -> None:
    assert auth_registry.username and auth_registry.password
    repo = unique("stdin")
    line = push(
        env, packed.layout, f"{auth_registry.host}/{repo}", "--username", auth_registry.username, "--password-stdin",
        stdin=auth_registry.password + "\n",
    )
    assert line == f"{auth_registry.host}/{repo}@{packed.digest}"
    assert_registry_holds(auth_registry, repo, "latest", packed.layout, packed.digest)


def test_credentials_from_docker_config(auth_registry: Registry, packed: Packed, env: Env) -> None:
    creds = f"{auth_registry.username}:{auth_registry.password}"
    auths = {auth_registry.host: {"auth": base64.b64encode(creds.encode()).decode()}}
    (env.docker_config / "config.json").write_text(json.dumps({"auths": auths}))
    repo = unique("config")
    assert push(env, packed.layout, f"{auth_registry.host}/{repo}:cfg") == f"{auth_registry.host}/{repo}@{packed.digest}"
    assert_registry_holds(auth_registry, repo, "cfg", packed.layout, packed.digest)


@pytest.mark.parametrize("verbose", [(), ("-v",)], ids=["quiet", "verbose"])
def test_wrong_password_is_one_clean_line_without_it(
    auth_registry: Registry, packed: Packed, env: Env, verbose: Sequence[str]
) -> None:
    wrong = "Wr0ng-pa55word-" + uuid.uuid4().hex
    repo = unique("denied")
    result = env.run(
        *verbose, "push", packed.layout, f"{auth_registry.host}/{repo}", "--username", "ocimodel",
        "--password-stdin", stdin=wrong + "\n",
    )
    if verbose:
        assert result.returncode == 1 and "Traceback" not in result.stderr, explain(result)
        assert result.stderr.splitlines()[-1].startswith(ERROR_PREFIX) and result.stdout == "", explain(result)
        assert "ocimodel.registry:" in result.stderr  # the log was on
    else:
        assert_clean_error(result, f"registry {auth_registry.host}", "refused the credentials", "docker login")
    assert auth_registry.password
    for secret in (wrong, base64.b64encode(f"ocimodel:{wrong}".encode()).decode(), auth_registry.password):
        assert secret not in result.stdout + result.stderr
    assert registry_has_nothing(auth_registry, repo)


# --- failing cleanly -------------------------------------------------------------------------------------------


def test_missing_blob_pushes_nothing(registry: Registry, packed: Packed, env: Env, tmp_path: Path) -> None:
    layout = tmp_path / "damaged"
    shutil.copytree(packed.layout, layout)
    layer = json.loads(blob(layout, packed.digest))["layers"][-1]["digest"]
    (layout / "blobs" / "sha256" / layer.split(":", 1)[1]).unlink()
    repo = unique("missing")
    result = env.run("push", layout, f"{registry.host}/{repo}")
    assert_clean_error(result, f"lacks blob {layer}", "pack it again", "nothing was pushed")
    assert registry_has_nothing(registry, repo)
    assert access_log(registry, "POST", repo) == [] and access_log(registry, "HEAD", repo) == []


def test_unreachable_registry_is_one_clean_line(packed: Packed, env: Env) -> None:
    host = f"127.0.0.1:{free_port()}"
    result = env.run("push", packed.layout, f"{host}/{unique('nowhere')}")
    message = assert_clean_error(result, f"cannot reach registry {host}", "connection refused")
    assert re.search(r"check the registry address", message)
