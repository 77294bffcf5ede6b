"""``ocimodel aws`` end to end: the real CLI in subprocesses against a moto server, and the buildspec run for real.

The CLI finds the moto server through ``AWS_ENDPOINT_URL`` as boto3 finds any endpoint, and the Hub look-alike
through ``HF_ENDPOINT``; everything listens on 127.0.0.1. The buildspec test runs the commands CodeBuild would run,
in the folder CodeBuild would unzip the source into, with the wheel bootstrap builds from this repository, against
the real docker-registry standing in for ECR: the only differences are the registry address (``OCIMODEL_REGISTRY``,
as a start-build override would set it) and the HF token, handed over as CodeBuild hands over the secret.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import yaml
from moto.server import ThreadedMotoServer

from ocimodel.aws import plan as p
from ocimodel.aws.config import parse_config
from ocimodel.aws.plan import Account, Names, Plan, model_build
from ocimodel.aws.wheel import bundle, installed_wheel
from tests.harness.aws import ACCOUNT, REGION, REGISTRY, seed_managed_policy
from tests.harness.cli import run_cli
from tests.harness.hub import GRANTED_TOKEN, HubServer, gated_repo, run_hub, tiny_repo
from tests.harness.registry import Registry
GATED = gated_repo()
CONFIG = """
[aws]
region = "us-east-1"
keep_images = 5

[[models]]
id = "acme/tiny"
exclude = ["original/*"]

[[models]]
id = "acme/gated"
"""


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    with run_hub([tiny_repo(), gated_repo()], {GRANTED_TOKEN: {"acme/gated"}}) as running:
        yield running


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    access_log = logging.getLogger("werkzeug")  # one line per request: noise in a failing test's output
    level = access_log.level
    access_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        access_log.setLevel(level)


REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This ocimodel's wheel, made the way bootstrap makes it (here, from the editable install the tests run in)."""
    name, data = installed_wheel()
    path = tmp_path_factory.mktemp("wheel") / name
    path.write_bytes(data)
    return path


def fresh_venv(path: Path) -> Path:
    """A venv whose python sees ocimodel's dependencies (from the tests' venv, named in a ``.pth``) but not ocimodel:
    the tests' ocimodel is an editable install, whose finder a ``.pth`` path does not load. Its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def pip_install(python: Path, wheel: Path) -> None:
    """``pip install`` (not editable) into the venv of ``python``, from the wheel alone: no index."""
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ocimodel as the README installs it, ``pip install .`` (a regular, non-editable install) into a fresh venv,
    its source tree out of sight: the venv's python."""
    work = tmp_path_factory.mktemp("installed")
    source = work / "source"  # a copy, so the build leaves no build/ or egg-info in the repository
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPOSITORY / name, source / name)
    shutil.copytree(REPOSITORY / "ocimodel", source / "ocimodel", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation", "-w",
         str(work / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(source)
    python = fresh_venv(work / "venv")
    (built,) = (work / "dist").glob("ocimodel-*.whl")
    pip_install(python, built)
    return python


def clean_environ() -> dict[str, str]:
    """The machine's environment without its AWS or HF settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_", "HUGGING"))}


@pytest.fixture
def env(tmp_path: Path, moto_server: str, hub: HubServer) -> dict[str, str]:
    requests.post(f"{moto_server}/moto-api/reset", timeout=10).raise_for_status()
    seed_managed_policy(ACCOUNT)  # bootstrap attaches AmazonSSMManagedInstanceCore to aws snapshot's role
    return clean_environ() | {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
    }


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def client(env: dict[str, str], service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_the_cli_bootstraps_builds_reports_and_tears_down(env: dict[str, str], tmp_path: Path, wheel: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text(CONFIG)
    common = ("--config", str(config))
    ecr, codebuild, s3 = client(env, "ecr"), client(env, "codebuild"), client(env, "s3")

    broken = tmp_path / "broken.toml"
    broken.write_text(CONFIG + 'compute_type = "BUILD_GENERAL1_HUGE"\n')
    failed = run_cli("aws", "bootstrap", "--config", str(broken), "--wheel", str(wheel), env=env)
    assert failed.returncode == 1 and failed.stdout == ""
    assert (
        failed.stderr.strip()
        .splitlines()[-1]
        .startswith(f"ocimodel: error: {broken}: model 2 (acme/gated): compute_type")
    )

    dry = ok(run_cli("aws", "bootstrap", *common, "--wheel", str(wheel), "--dry-run", env=env))
    assert last_line(dry) == "dry run: 10 would create, 1 would upload (nothing was changed)"
    assert s3.list_buckets()["Buckets"] == [] and ecr.describe_repositories()["repositories"] == []

    first = ok(run_cli("aws", "bootstrap", *common, "--wheel", str(wheel), env=env))
    assert last_line(first) == "bootstrap: 10 created, 1 uploaded"
    assert "ocimodel/hf-token" in first and "missing" in first
    again = ok(run_cli("aws", "bootstrap", *common, "--wheel", str(wheel), env=env))
    assert last_line(again) == "bootstrap: nothing to change, everything is as the config says"
    assert sorted(codebuild.list_projects()["projects"]) == ["ocimodel-acme-gated", "ocimodel-acme-tiny"]

    stored = run_cli("aws", "set-hf-token", *common, stdin=GRANTED_TOKEN + "\n", env=env)
    assert ok(stored) == f"created secret ocimodel/hf-token in {REGION}\n"
    assert GRANTED_TOKEN not in stored.stdout + stored.stderr
    secret = client(env, "secretsmanager").get_secret_value(SecretId="ocimodel/hf-token")["SecretString"]
    assert secret == GRANTED_TOKEN

    started = ok(run_cli("aws", "build", "acme/gated", *common, "--no-follow", env=env)).strip()
    assert started in codebuild.list_builds_for_project(projectName="ocimodel-acme-gated")["ids"]

    # moto's builds succeed at once and log nothing: the image must then be found in ECR by its tag.
    missing = run_cli("aws", "build", "acme/tiny", *common, "--poll-interval", "0", env=env)
    assert missing.returncode == 1
    assert "succeeded, but ECR has no " + f"{REGISTRY}/kserve-models/acme-tiny:latest" in missing.stderr
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []})
    digest = ecr.put_image(repositoryName="kserve-models/acme-tiny", imageManifest=manifest, imageTag="latest")[
        "image"
    ]["imageId"]["imageDigest"]
    uri = f"oci://{REGISTRY}/kserve-models/acme-tiny@{digest}"
    built = run_cli("aws", "build", "tiny", *common, "--poll-interval", "0", env=env)
    assert built.returncode == 1 and "no model 'tiny'" in built.stderr  # names are slugs: acme-tiny
    assert ok(run_cli("aws", "build", "acme-tiny", *common, "--poll-interval", "0", env=env)) == uri + "\n"

    header, tiny, gated = ok(run_cli("aws", "status", *common, env=env)).splitlines()
    assert header.split()[:2] == ["MODEL", "PROJECT"]
    assert tiny.split()[0] == "acme/tiny" and "SUCCEEDED" in tiny and tiny.endswith(uri)
    assert gated.split()[:3] == ["acme/gated", "ocimodel-acme-gated", started] and gated.endswith(" -")

    refused = run_cli("aws", "teardown", *common, env=env)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    gone = ok(run_cli("aws", "teardown", *common, "--yes", "--delete-images", env=env))
    assert last_line(gone) == "teardown: 10 deleted"
    assert codebuild.list_projects()["projects"] == [] and s3.list_buckets()["Buckets"] == []
    assert ecr.describe_repositories()["repositories"] == []
    assert client(env, "iam").list_roles()["Roles"] == []
    assert client(env, "secretsmanager").list_secrets()["SecretList"] == []


def test_the_buildspec_commands_push_the_model_to_the_registry(
    registry: Registry, busybox_ref: str, hub: HubServer, wheel: Path, tmp_path: Path
) -> None:
    config = parse_config(CONFIG.replace("[aws]\n", f'[aws]\nbase = "{busybox_ref}"\n'), "models.toml")
    gated = config.find("acme/gated")
    built = bundle(wheel)
    plan = Plan(config, Names(config.aws, Account(ACCOUNT, REGION)), (model_build(gated, 1000),), built)
    spec = yaml.safe_load(p.buildspec(plan, plan.builds[0]))

    source = tmp_path / "codebuild-src"  # what CodeBuild unzips the S3 source into
    with zipfile.ZipFile(io.BytesIO(built.data)) as archive:
        archive.extractall(source)
    assert [f.name for f in source.iterdir()] == [wheel.name]

    # The build image's python3, without ocimodel: a venv that sees the tests' dependencies (so pip needs no index)
    # but gets ocimodel only from the wheel the buildspec installs.
    venv = tmp_path / "venv"
    fresh_venv(venv)
    secret_name = spec["env"]["secrets-manager"]["HF_TOKEN"]
    assert secret_name == "ocimodel/hf-token"
    env = (
        clean_environ()
        | spec["env"]["variables"]
        | {
            "OCIMODEL_REGISTRY": registry.host,  # the start-build override pointing the build at the stand-in for ECR
            "HF_TOKEN": GRANTED_TOKEN,  # what CodeBuild fetches from the secret named above
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf"),
            "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
            "PIP_NO_INDEX": "1",
        }
    )
    phases = spec["phases"]
    commands = [
        c
        for phase in ("install", "pre_build", "build", "post_build")
        for c in phases.get(phase, {}).get("commands", [])
    ]
    script = "\n".join(["set -eo pipefail", *commands])
    assert spec["env"]["shell"] == "bash"
    result = subprocess.run(["bash", "-c", script], cwd=source, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"

    out = json.loads(last_line(result.stdout))
    assert out["uri"] == f"oci://{registry.host}/kserve-models/acme-gated@{out['digest']}"
    pushed = registry.fetch_manifest("kserve-models/acme-gated", "latest")
    assert pushed.digest == out["digest"]
    annotations = pushed.json()["annotations"]
    assert annotations["org.opencontainers.image.revision"] == GATED.at("main").sha
    assert annotations["org.opencontainers.image.title"] == "acme/gated"
    # What aws build reads to tell an immutable tag's image is this very build.
    assert annotations[p.OPTIONS_ANNOTATION] == p.options_fingerprint(config.aws, gated)
    assert (
        pushed.json()["layers"][0]["digest"]
        == registry.fetch_manifest("library/busybox", busybox_ref.rsplit("@", 1)[1]).json()["layers"][0]["digest"]
    )
    assert GRANTED_TOKEN not in result.stdout + result.stderr

    where = subprocess.run(
        ["python3", "-c", "import ocimodel; print(ocimodel.__file__)"],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(venv)), "the build ran the wheel's ocimodel, not the source tree's"

    # A wheel that is not the one the buildspec names is refused before pip runs.
    (source / wheel.name).write_bytes(b"tampered")
    tampered = subprocess.run(["bash", "-c", script], cwd=source, env=env, capture_output=True, text=True, timeout=60)
    assert tampered.returncode != 0 and "FAILED" in tampered.stdout + tampered.stderr


def test_the_wheel_is_reproducible_and_its_record_true(wheel: Path) -> None:
    """Every entry dated 1980-01-01, mode 0644, in sorted order: the same installed code makes the same bytes, so a
    second bootstrap finds the uploaded source unchanged. Its RECORD states every file's true hash and size."""
    assert installed_wheel()[1] == installed_wheel()[1] == wheel.read_bytes()
    with zipfile.ZipFile(wheel) as archive:
        infos = archive.infolist()
        assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
        assert {info.external_attr >> 16 for info in infos} == {0o644}
        names = [info.filename for info in infos]
        record = archive.read("ocimodel-0.1.0.dist-info/RECORD").decode().splitlines()
        for line in record[:-1]:
            name, digest, size = line.rsplit(",", 2)
            data = archive.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == (f"sha256={expected}", len(data)), name
    assert names[-1] == "ocimodel-0.1.0.dist-info/RECORD" and record[-1] == "ocimodel-0.1.0.dist-info/RECORD,,"
    assert sorted(n.split(",")[0] for n in record) == sorted(names)
    assert "ocimodel/aws/cli.py" in names and "ocimodel/cli.py" in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


def test_bootstrap_works_from_a_regular_install_and_uploads_its_wheel_once(
    installed: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """The README's ``pip install .`` has no source tree to build a wheel from: bootstrap makes the builds' wheel
    from the installed distribution, the same bytes each run, and that wheel installs and runs."""
    where = subprocess.run(
        [str(installed), "-c", "import ocimodel, importlib.metadata as m; print(ocimodel.__file__);"
         "print(m.distribution('ocimodel').read_text('direct_url.json') or '')"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout
    assert where.startswith(str(installed.parent.parent)), where  # the venv's copy, not the repository's
    assert "dir_info" not in where  # pip's record of an editable (or in-place) install

    config = tmp_path / "models.toml"
    config.write_text(CONFIG)
    command = [str(installed.parent / "ocimodel"), "aws", "bootstrap", "--config", str(config)]

    def run(*extra: str) -> str:
        result = subprocess.run(
            [*command, *extra], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        return ok(result)

    s3 = client(env, "s3")
    dry = run("--dry-run")
    assert last_line(dry) == "dry run: 10 would create, 1 would upload (nothing was changed)"
    assert s3.list_buckets()["Buckets"] == []
    assert last_line(run()) == "bootstrap: 10 created, 1 uploaded"
    again = run()
    assert last_line(again) == "bootstrap: nothing to change, everything is as the config says"
    assert "uploaded" not in again

    source = s3.get_object(Bucket=f"ocimodel-{ACCOUNT}-{REGION}", Key=p.SOURCE_KEY)["Body"].read()
    with zipfile.ZipFile(io.BytesIO(source)) as archive:
        (name,) = archive.namelist()
        (tmp_path / name).write_bytes(archive.read(name))
    with zipfile.ZipFile(tmp_path / name) as made:
        names = made.namelist()
        metadata = made.read("ocimodel-0.1.0.dist-info/METADATA").decode()
    assert name == "ocimodel-0.1.0-py3-none-any.whl"
    assert "ocimodel/aws/cli.py" in names and "ocimodel-0.1.0.dist-info/entry_points.txt" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "direct_url" in n]
    assert "Requires-Dist: boto3" in metadata

    # What a build does with it: pip installs it, and its ocimodel runs.
    build_python = fresh_venv(tmp_path / "build-venv")
    pip_install(build_python, tmp_path / name)
    version = subprocess.run(
        [str(build_python), "-c", "import ocimodel.aws.cli, ocimodel; print(ocimodel.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )
    assert version.stdout.startswith(str(tmp_path / "build-venv"))
