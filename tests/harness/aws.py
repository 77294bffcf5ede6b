"""moto as the AWS account of the ``aws`` unit tests: its fixtures, the AWS behaviour moto lacks (played by thin
wrappers around boto3 clients, which say so), a fake clock, and AWS's own things seeded one by one.

Seeding (not moto's ``load_aws_managed_policies``) because loading all of AWS's managed policies in moto makes every
reset of the account several times slower. The fixtures are registered for the unit tests by tests/unit/conftest.py.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from huggingface_hub import constants
from moto import mock_aws
from moto.codebuild.models import codebuild_backends
from moto.iam.aws_managed_policies import aws_managed_policies_data
from moto.iam.models import AWSManagedPolicy, iam_backends
from moto.kms.models import kms_backends
from moto.ssm.models import Parameter, ssm_backends
from typer.testing import CliRunner, Result

from ocimodel.aws import bootstrap, builds, shapes
from ocimodel.aws import plan as p
from ocimodel.aws.config import parse_config
from ocimodel.aws.modelsizes import hub_size
from ocimodel.aws.plan import Names, Plan, model_build
from ocimodel.aws.session import Clients, Clock, connect, whoami
from ocimodel.aws.steps import Step, apply
from ocimodel.aws.wheel import bundle
from ocimodel.cli import app
from tests.harness.hub import HubServer, run_hub, tiny_repo

ACCOUNT = "123456789012"
REGION = "us-east-1"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
ROLE = f"ocimodel-codebuild-{REGION}"
TINY = tiny_repo()
CONFIG = """
[aws]
region = "us-east-1"

[[models]]
id = "acme/tiny"
exclude = ["original/*"]

[[models]]
id = "acme/fixed"   # not on the Hub: the config fixes its machine and timeout, so it is never sized
compute_type = "BUILD_GENERAL1_MEDIUM"
timeout_minutes = 30
"""
TOKEN = "hf_bootstrapTestTokenNeverPrinted0123"


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    with run_hub([tiny_repo()], {}) as running:
        yield running


@pytest.fixture(scope="module")
def moto_account(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Clients]]:
    """One moto for the module, with its clients: creating them costs more than most tests."""
    with pytest.MonkeyPatch.context() as patch:
        fake_aws_environment(patch, tmp_path_factory.mktemp("aws"))
        with mock_aws() as mocked:
            yield mocked, connect(REGION)


def fake_aws_environment(patch: pytest.MonkeyPatch, home: Path) -> None:
    """Fake credentials, and none of the machine's AWS settings."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        patch.delenv(name)
    patch.setenv("AWS_ACCESS_KEY_ID", "testing")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    patch.setenv("AWS_DEFAULT_REGION", REGION)
    patch.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
    patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))


@pytest.fixture
def aws(moto_account: tuple[Any, Clients], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hub: HubServer) -> Clients:
    """An empty account, and the Hub look-alike for sizes."""
    mocked, clients = moto_account
    mocked.reset()
    seed_managed_policy(ACCOUNT)  # bootstrap attaches AmazonSSMManagedInstanceCore to aws snapshot's role
    fake_aws_environment(monkeypatch, tmp_path)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return clients


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    path = tmp_path / "ocimodel-0.1.0-py3-none-any.whl"
    path.write_bytes(b"a stand-in for the wheel")
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(CONFIG)
    return path


def make_plan(clients: Clients, wheel: Path, text: str = CONFIG) -> Plan:
    config = parse_config(text, "models.toml")
    sizes = [hub_size(m) if p.needs_size(m) else None for m in config.models]
    built = tuple(model_build(m, s) for m, s in zip(config.models, sizes, strict=True))
    return Plan(config, Names(config.aws, whoami(clients)), built, bundle(wheel))


class FakeClock:
    """Time that passes only when slept: retries run through their whole schedule at once."""

    def __init__(self) -> None:
        self.time = 0.0
        self.waits: list[float] = []

    def now(self) -> float:
        return self.time

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.time += seconds

    @property
    def clock(self) -> Clock:
        return Clock(now=self.now, sleep=self.sleep)


def run_bootstrap(clients: Clients, plan: Plan, clock: Clock | None = None) -> list[Step]:
    todo = bootstrap.steps(clients, plan, clock or FakeClock().clock)
    apply(todo)
    return todo


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input)


class Wrapped:
    """A boto3 client with some operations replaced: AWS behaviour moto does not have."""

    def __init__(self, client: Any, **overrides: Callable[..., Any]) -> None:
        self._client = client
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        return self._overrides.get(name) or getattr(self._client, name)


def client_error(code: str, message: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


def moto_update_project(clients: Clients) -> Callable[..., dict[str, Any]]:
    """CodeBuild's update_project, which moto lacks: the same fields replaced in moto's stored project."""

    def update_project(**request: Any) -> dict[str, Any]:
        project = codebuild_backends[ACCOUNT][REGION].codebuild_projects[request["name"]].project_metadata
        for key in ("description", "source", "artifacts", "environment", "serviceRole", "logsConfig"):
            project[key] = request[key]
        project["timeoutInMinutes"] = request["timeoutInMinutes"]
        return {"project": project}

    return update_project


class FakeBuild:
    """What moto's CodeBuild cannot do: a build that runs for a few polls, logging as it goes, then ends.

    Each ``sleep`` of the follower is a moment of the build: the next log lines are put into the build's real
    (moto) CloudWatch stream and the next status is what ``batch_get_builds`` says.
    """

    def __init__(
        self,
        clients: Clients,
        batches: list[list[str]],
        statuses: list[str],
        phases: list[dict[str, Any]] | None = None,
    ):
        self.clients = clients
        self.batches = list(batches)
        self.statuses = list(statuses)
        self.phases = phases or []
        self.waits: list[float] = []
        self.build_id = ""

    def wrap(self) -> Clients:
        return replace(
            self.clients,
            codebuild=Wrapped(
                self.clients.codebuild, start_build=self.start_build, batch_get_builds=self.batch_get_builds
            ),
        )

    def start_build(self, **request: Any) -> Any:
        started = self.clients.codebuild.start_build(**request)
        self.build_id = started["build"]["id"]
        group = f"/aws/codebuild/{request['projectName']}"
        self.clients.logs.create_log_stream(logGroupName=group, logStreamName=self.stream)
        self.put(self.batches.pop(0))
        return started

    @property
    def stream(self) -> str:
        return self.build_id.split(":", 1)[1]

    def put(self, lines: list[str]) -> None:
        group = f"/aws/codebuild/{self.build_id.split(':')[0]}"
        now = int(time.time() * 1000)  # CloudWatch drops events older than 14 days
        events = [{"timestamp": now, "message": line + "\n"} for line in lines]
        if events:
            self.clients.logs.put_log_events(logGroupName=group, logStreamName=self.stream, logEvents=events)

    def batch_get_builds(self, ids: list[str]) -> Any:
        (build,) = self.clients.codebuild.batch_get_builds(ids=ids)["builds"]
        status = self.statuses[0] if len(self.statuses) == 1 else self.statuses.pop(0)
        build["buildStatus"] = status
        build["logs"] = {"groupName": None} if status == builds.IN_PROGRESS else build["logs"]
        if status != builds.IN_PROGRESS:
            build["phases"] = self.phases
        return {"builds": [build], "buildsNotFound": []}

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.batches:
            self.put(self.batches.pop(0))


class ShapeCheck:
    """Every request the clients build, checked against its operation's input shape as botocore's model states it,
    and kept: what a resource was made with."""

    def __init__(self) -> None:
        self.operations: list[str] = []
        self.problems: list[str] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.operations.append(model.name)
        self.requests.append((model.name, params))
        self.problems += shapes.problems(model.input_shape, params, model.name)

    def sent(self, operation: str) -> list[dict[str, Any]]:
        return [params for name, params in self.requests if name == operation]

    def check(self, client: Any, operation: str, request: dict[str, Any]) -> None:
        """For an operation a test plays itself (moto lacks it): the same check."""
        self.operations.append(operation)
        self.problems += shapes.check_request(client.meta.service_model, operation, request)


@contextmanager
def checking(clients: Clients, services: Sequence[str], check: ShapeCheck) -> Iterator[ShapeCheck]:
    """``check`` sees every request the services' clients build while the block runs."""
    for service in services:
        getattr(clients, service).meta.events.register("before-parameter-build", check, unique_id="shape-check")
    try:
        yield check
    finally:
        for service in services:
            getattr(clients, service).meta.events.unregister("before-parameter-build", unique_id="shape-check")


# --- AWS's own things, seeded ------------------------------------------------------------------------------------


#: The managed policy bootstrap attaches to ``aws snapshot``'s instance role.
SSM_CORE = "AmazonSSMManagedInstanceCore"


def seed_managed_policy(account: str, name: str = SSM_CORE) -> None:
    data: dict[str, Any] = json.loads(aws_managed_policies_data)[name]
    backend = iam_backends[account]["aws"]
    policy = AWSManagedPolicy.from_data(name, account, "us-east-1", data)
    backend.managed_policies[policy.arn] = policy


def seed_public_parameter(account: str, region: str, name: str, value: str) -> None:
    """An AWS public parameter (``/aws/service/…``): moto, like AWS, refuses ``put_parameter`` under ``/aws``."""
    parameter = Parameter(
        account_id=account,
        name=name,
        value=value,
        parameter_type="String",
        description=None,
        allowed_pattern=None,
        keyid=None,
        last_modified_date=datetime.now(timezone.utc),
        version=1,
        data_type="aws:ec2:image",
    )
    ssm_backends[account][region]._parameters[name].append(parameter)


# --- KMS as AWS answers ------------------------------------------------------------------------------------------


_KMS_HASHES = {"ECDSA_SHA_256": hashes.SHA256(), "ECDSA_SHA_384": hashes.SHA384(), "ECDSA_SHA_512": hashes.SHA512()}


def kms_as_aws(kms: Any) -> Wrapped:
    """moto's KMS with the parts it gets wrong played as AWS documents them, and nothing else changed.

    moto 5.2 ignores ``MessageType``: for ``DIGEST`` it hashes the digest again, so its signatures never verify
    over the message (``cryptography`` refuses them; AWS skips the hashing step). It also signs with, and hands out
    public keys of, disabled keys, keys pending deletion and symmetric keys (which have no public half), answers a
    key of another usage with a ValidationException, and names the key by its id where AWS gives its ARN. The
    wrapper refuses those as AWS does (DisabledException, KMSInvalidStateException, UnsupportedOperationException,
    InvalidKeyUsageException), lets moto check the rest (the request goes through the real client, so the shape
    hook sees it), and re-signs a digest with the private key moto holds for that key.
    """

    def usable(key_id: str, operation: str) -> Any:
        key = kms_backends[ACCOUNT][REGION].describe_key(key_id)
        if key.key_state == "Disabled":
            raise client_error("DisabledException", f"{key.arn} is disabled.", operation)
        if key.key_state == "PendingDeletion":
            raise client_error("KMSInvalidStateException", f"{key.arn} is pending deletion.", operation)
        return key

    def get_public_key(**request: Any) -> Any:
        key = usable(request["KeyId"], "GetPublicKey")
        if key.key_spec == "SYMMETRIC_DEFAULT" or key.key_spec.startswith("HMAC_"):
            message = f"{key.arn} key type is not supported."
            raise client_error("UnsupportedOperationException", message, "GetPublicKey")
        answer = kms.get_public_key(**request)
        answer["KeyId"] = key.arn  # AWS names the key by its ARN here; moto by its bare id
        return answer

    def sign(**request: Any) -> Any:
        key = usable(request["KeyId"], "Sign")
        if key.key_usage != "SIGN_VERIFY":
            raise client_error("InvalidKeyUsageException", f"{key.arn} key usage is {key.key_usage}.", "Sign")
        answer = kms.sign(**request)
        if request.get("MessageType") == "DIGEST":
            algorithm = _KMS_HASHES[request["SigningAlgorithm"]]
            if len(request["Message"]) != algorithm.digest_size:
                raise client_error("ValidationException", "Digest is invalid length for algorithm.", "Sign")
            private = key.private_key.private_key
            answer["Signature"] = private.sign(request["Message"], ec.ECDSA(Prehashed(algorithm)))
        return answer

    return Wrapped(kms, get_public_key=get_public_key, sign=sign)
