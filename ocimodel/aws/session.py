"""boto3 clients for one region, and AWS failures as one-line errors that say what was being done.

Credentials, profiles and endpoints are boto3's standard chain (``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, SSO…); ocimodel
reads no credential itself. AWS error messages name resources and actions, never secret values, so they are passed
on as they are.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ocimodel.aws.plan import Account
from ocimodel.errors import OcimodelError
from ocimodel.retry import RetryPolicy


@dataclass(frozen=True)
class Clients:
    region: str
    ecr: Any
    iam: Any
    s3: Any
    logs: Any
    codebuild: Any
    secrets: Any
    sts: Any
    kms: Any
    #: The AWS configuration asks for FIPS endpoints (``AWS_USE_FIPS_ENDPOINT``, ``use_fips_endpoint``).
    fips: bool = False
    #: ``aws snapshot``'s (and teardown's, for its snapshots).
    ec2: Any = None
    ssm: Any = None


def connect(region: str | None) -> Clients:
    """Clients for ``region`` (the config's), else the region of the standard AWS chain."""
    import boto3
    import botocore.session
    from botocore.config import Config as BotoConfig

    with aws_call("read the AWS configuration"):
        core = botocore.session.get_session()
        session = boto3.session.Session(region_name=region, botocore_session=core)
        fips = bool(core.get_config_variable("use_fips_endpoint"))
    if not session.region_name:
        raise OcimodelError("no AWS region: set region in the [aws] table of the config, or AWS_REGION")
    config = BotoConfig(retries={"mode": "standard", "max_attempts": 6})

    def client(service: str) -> Any:
        return session.client(service, config=config)

    return Clients(
        region=session.region_name,
        ecr=client("ecr"),
        iam=client("iam"),
        s3=client("s3"),
        logs=client("logs"),
        codebuild=client("codebuild"),
        secrets=client("secretsmanager"),
        sts=client("sts"),
        kms=client("kms"),
        fips=fips,
        ec2=client("ec2"),
        ssm=client("ssm"),
    )


def whoami(clients: Clients) -> Account:
    with aws_call("identify the AWS account (sts get-caller-identity)"):
        identity = clients.sts.get_caller_identity()
    partition = identity["Arn"].split(":")[1]
    return Account(identity["Account"], clients.region, partition, clients.fips)


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str(((response or {}).get("Error") or {}).get("Code", "")) if isinstance(response, dict) else ""


@contextmanager
def aws_call(doing: str) -> Iterator[None]:
    """botocore's exceptions as an ``OcimodelError`` naming what failed and, for the usual causes, what to do."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        yield
    except NoCredentialsError:
        raise OcimodelError(
            f"cannot {doing}: no AWS credentials; set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from None
    except NoRegionError:
        raise OcimodelError(
            f"cannot {doing}: no AWS region; set region in [aws] of the config, or AWS_REGION"
        ) from None
    except ClientError as exc:
        code = error_code(exc)
        message = " ".join(str(exc.response.get("Error", {}).get("Message", "")).split())
        hint = "; the AWS identity lacks a permission" if code in ("AccessDenied", "AccessDeniedException") else ""
        raise OcimodelError(f"cannot {doing}: AWS said {code}: {message}{hint}") from None
    except BotoCoreError as exc:
        raise OcimodelError(f"cannot {doing}: {' '.join(str(exc).split())}") from None


@dataclass(frozen=True)
class Clock:
    """Time as the retries see it; tests pass one that advances without sleeping."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def eventually(seconds: float, delay: float, clock: Clock) -> RetryPolicy:
    """How to retry while AWS settles (IAM roles and profiles reaching CodeBuild and EC2, deleted secrets, released
    security groups): after ``delay`` seconds, doubling up to 30, for at most ``seconds``; then the last failure."""
    return RetryPolicy(
        attempts=None, seconds=seconds, base_delay=delay, max_delay=30.0, jitter=False, sleep=clock.sleep, clock=clock.now
    )
