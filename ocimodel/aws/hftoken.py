"""``ocimodel aws set-hf-token``: the HuggingFace token, stored in Secrets Manager for builds to read at run time.

The token goes from stdin to Secrets Manager and nowhere else: not into the project, the buildspec, a log or a
message. CodeBuild puts it in the build's environment (the buildspec's ``secrets-manager`` section) and masks it in
the build log.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from ocimodel.aws import plan as p
from ocimodel.aws.session import aws_call, error_code


def store(secrets: Any, name: str, token: str) -> str:
    """Put ``token`` in secret ``name``, creating it (tagged as ocimodel's) if needed; ``created`` or ``updated``."""
    with aws_call(f"store the HF token in secret {name}"):
        try:
            described = secrets.describe_secret(SecretId=name)
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            secrets.create_secret(
                Name=name,
                SecretString=token,
                Description="HuggingFace token read by ocimodel's CodeBuild builds",
                Tags=[{"Key": k, "Value": v} for k, v in p.tags_dict().items()],
            )
            return "created"
        if "DeletedDate" in described:
            secrets.restore_secret(SecretId=name)
        secrets.put_secret_value(SecretId=name, SecretString=token)
        return "updated"
