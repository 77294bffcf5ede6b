"""``ocimodel verify`` and ``kserve`` end to end: the real CLI in a subprocess against the real docker-registry.

A small model is packed twice on the harness's busybox base (uncompressed, and with zstd layers), each pushed with
``ocimodel push``; the tests verify them back from the registry and from their layouts, and check the warnings
``pack``, ``push`` and ``build`` print about what they just made.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.registry import Registry
from tests.harness.cli import explain

EXIT_CHECK_FAILED = 3
WARNING = "ocimodel: warning: "


@dataclass(frozen=True)
class Env:
    """A CLI user with a private cache and an empty docker config, so no test sees another's state."""

    root: Path

    def vars(self) -> dict[str, str]:
        dropped = {"FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"}
        dropped |= {f"{scheme}_proxy" for scheme in ("http", "https", "all", "no")}
        dropped |= {name.upper() for name in dropped}
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        (self.root / "docker").mkdir(parents=True, exist_ok=True)
        env.update(XDG_CACHE_HOME=str(self.root / "cache"), DOCKER_CONFIG=str(self.root / "docker"), HOME=str(self.root))
        return env


def run(env: Env, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocimodel", *(str(a) for a in args)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False, env=env.vars(),
    )




def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    return result


def warnings(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line[len(WARNING):] for line in result.stderr.splitlines() if line.startswith(WARNING)]


def verify_json(env: Env, *args: str | Path) -> tuple[int, dict[str, Any]]:
    result = run(env, "verify", *args, "--json")
    assert result.returncode in (0, EXIT_CHECK_FAILED), explain(result)
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["ok"] is (result.returncode == 0), explain(result)
    return result.returncode, report


def by_id(report: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["result"] for c in report["checks"]}


@dataclass(frozen=True)
class Pushed:
    layout: Path
    pack: subprocess.CompletedProcess[str]
    push: subprocess.CompletedProcess[str]
    result: dict[str, Any]


@dataclass(frozen=True)
class Images:
    env: Env
    model: Path
    repo: str
    good: Pushed
    zstd: Pushed


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, registry: Registry, busybox_ref: str) -> Images:
    work = tmp_path_factory.mktemp("verify")
    env = Env(work / "env")
    model = work / "model"
    (model / "tokenizer").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(random.Random(3).randbytes(200_000))
    (model / "config.json").write_text('{"hidden_size": 64}')
    (model / "tokenizer" / "vocab.json").write_text('{"a": 1}')
    repo = f"verify-tests/model-{uuid.uuid4().hex[:8]}"

    def pack_and_push(name: str, *options: str) -> Pushed:
        layout = work / name
        packed = ok(run(env, "pack", model, layout, "--base", busybox_ref, *options))
        pushed = ok(run(env, "push", layout, f"{registry.host}/{repo}:{name}", "--json"))
        return Pushed(layout, packed, pushed, json.loads(pushed.stdout.splitlines()[-1]))

    return Images(env, model, repo, pack_and_push("good"), pack_and_push("zstd", "--compression", "zstd"))


def test_a_pushed_image_passes_every_mode(images: Images) -> None:
    ref = images.good.result["reference"]
    result = ok(run(images.env, "verify", ref))
    lines = result.stdout.splitlines()
    assert lines[0] == f"{ref} (linux/amd64)"
    assert lines[-1] == "modes: modelcar PASS, native PASS, fetch PASS"
    assert all(" PASS " in line for line in lines[2:-1]), result.stdout

    code, report = verify_json(images.env, ref)
    assert code == 0 and report["digest"] == images.good.result["digest"]
    assert set(by_id(report).values()) == {"pass"}
    assert {layer["read"] for layer in report["layers"]} == {"read"}  # all small: every tar header was read
    # The layout says the same as the registry.
    code, from_layout = verify_json(images.env, images.good.layout)
    assert code == 0 and from_layout["digest"] == report["digest"] and by_id(from_layout) == by_id(report)


def test_pack_and_push_are_quiet_about_a_good_image(images: Images) -> None:
    assert warnings(images.good.pack) == [] and warnings(images.good.push) == []


def test_pack_and_push_warn_about_zstd_but_succeed(images: Images) -> None:
    for step in (images.zstd.pack, images.zstd.push):
        found = warnings(step)
        assert [w.split(":")[0] for w in found] == ["fetch.compression", "limits.zstd"], explain(step)
        assert "fetch mode" in found[0] and "Bottlerocket" in found[1]
    assert images.zstd.result["digest"] in images.zstd.push.stdout


def test_a_zstd_image_fails_fetch_with_its_own_exit_status(images: Images) -> None:
    tagged = f"{images.zstd.result['reference'].split('@')[0]}:zstd"
    code, report = verify_json(images.env, tagged)
    assert code == EXIT_CHECK_FAILED
    assert report["digest"] == images.zstd.result["digest"]  # the tag was resolved to what was pushed
    assert report["modes"] == {"modelcar": "warn", "native": "warn", "fetch": "fail"}
    assert by_id(report)["fetch.compression"] == "fail" and by_id(report)["fetch.names"] == "pass"
    table = run(images.env, "verify", tagged)
    assert table.returncode == EXIT_CHECK_FAILED and "fetch.compression     FAIL" in table.stdout, explain(table)
    # Someone who serves it as a modelcar or an image volume only is fine.
    code, report = verify_json(images.env, tagged, "--mode", "modelcar", "--mode", "native")
    assert code == 0 and set(report["modes"]) == {"modelcar", "native"}
    assert "fetch.compression" not in by_id(report)


def test_an_index_is_checked_for_the_requested_platform(images: Images, busybox_multi_ref: str) -> None:
    code, report = verify_json(images.env, busybox_multi_ref, "--platform", "linux/arm64")
    assert code == EXIT_CHECK_FAILED  # busybox alone has a shell but no /models
    checks = by_id(report)
    assert checks["modelcar.tools"] == "pass" and checks["modelcar.models"] == "fail"
    assert report["platform"] == "linux/arm64" and report["digest"] == busybox_multi_ref.split("@")[1]
    code, report = verify_json(images.env, busybox_multi_ref, "--platform", "linux/s390x")
    assert code == EXIT_CHECK_FAILED and by_id(report)["image.platform"] == "fail"


def test_an_image_that_is_not_there_is_an_error(images: Images, registry: Registry) -> None:
    result = run(images.env, "verify", f"{registry.host}/{images.repo}:missing")
    assert result.returncode == 1 and result.stdout == "", explain(result)
    (line,) = result.stderr.splitlines()
    assert line.startswith("ocimodel: error: ") and "missing" in line


def test_kserve_pins_a_tag_to_the_digest_push_printed(images: Images, registry: Registry) -> None:
    result = ok(run(images.env, "kserve", f"{registry.host}/{images.repo}:good", "--name", "tiny", "--cpu", "1"))
    model = yaml.safe_load(result.stdout)["spec"]["predictor"]["model"]
    assert model["storageUri"] == images.good.result["uri"]
    from_layout = ok(run(images.env, "kserve", images.good.layout, "--ref", f"{registry.host}/{images.repo}",
                         "--name", "tiny", "--cpu", "1"))
    assert from_layout.stdout == result.stdout


def test_build_warns_about_what_it_pushed(images: Images, registry: Registry, busybox_ref: str) -> None:
    target = f"{registry.host}/{images.repo}:built"
    result = ok(run(images.env, "build", images.model, target, "--base", busybox_ref, "--compression", "zstd"))
    assert [w.split(":")[0] for w in warnings(result)] == ["fetch.compression", "limits.zstd"], explain(result)
    # Same files, same settings: the very image pack + push made.
    assert result.stdout.splitlines()[-1] == images.zstd.result["reference"]
