"""AWS's own things moto lacks unless asked for, seeded one by one: loading all of AWS's managed policies in moto
(its ``load_aws_managed_policies``) makes every reset of the account several times slower."""

from __future__ import annotations

import json
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
