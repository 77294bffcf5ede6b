"""``ocimodel aws set-hf-token``: the HuggingFace token, stored in Secrets Manager for builds to read at run time.

The token goes from stdin to Secrets Manager and nowhere else: not into the project, the buildspec, a log or a
message. CodeBuild puts it in the build's environment (the buildspec's ``secrets-manager`` section) and masks it in
the build log.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from ocimodel.aws import plan as p
from ocimodel.aws.session import Clock, aws_call, error_code, eventually
from ocimodel.retry import retry

#: A force-deleted secret (teardown's) lingers while Secrets Manager deletes it in the background, and its name
#: cannot be reused until then: usually seconds.
DELETION_WAIT_SECONDS = 120.0
DELETION_DELAY_SECONDS = 2.0


def still_deleting(exc: Exception) -> bool:
    message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")).lower()
    return error_code(exc) == "InvalidRequestException" and "deletion" in message


def store(secrets: Any, name: str, token: str, clock: Clock = Clock()) -> str:
    """Put ``token`` in secret ``name``, creating it (tagged as ocimodel's) if needed; ``created`` or ``updated``."""
    with aws_call(f"store the HF token in secret {name}"):
        try:
            described = secrets.describe_secret(SecretId=name)
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            create = partial(
                secrets.create_secret,
                Name=name,
                SecretString=token,
                Description="HuggingFace token read by ocimodel's CodeBuild builds",
                Tags=[{"Key": k, "Value": v} for k, v in p.tags_dict().items()],
            )
            retry(create, retryable=still_deleting, policy=eventually(DELETION_WAIT_SECONDS, DELETION_DELAY_SECONDS, clock))
            return "created"
        if "DeletedDate" in described:
            secrets.restore_secret(SecretId=name)
        secrets.put_secret_value(SecretId=name, SecretString=token)
        return "updated"
