"""AWS's own things moto lacks unless asked for, seeded one by one: loading all of AWS's managed policies in moto
(its ``load_aws_managed_policies``) makes every reset of the account several times slower."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from moto.iam.aws_managed_policies import aws_managed_policies_data
from moto.iam.models import AWSManagedPolicy, iam_backends

#: The managed policy bootstrap attaches to ``aws snapshot``'s instance role.
SSM_CORE = "AmazonSSMManagedInstanceCore"


def seed_managed_policy(account: str, name: str = SSM_CORE) -> None:
    data: dict[str, Any] = json.loads(aws_managed_policies_data)[name]
    backend = iam_backends[account]["aws"]
    policy = AWSManagedPolicy.from_data(name, account, "us-east-1", data)
    backend.managed_policies[policy.arn] = policy


def seed_public_parameter(account: str, region: str, name: str, value: str) -> None:
    """An AWS public parameter (``/aws/service/…``): moto, like AWS, refuses ``put_parameter`` under ``/aws``."""
    from moto.ssm.models import Parameter, ssm_backends

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
