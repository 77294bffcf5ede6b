"""Signing with an AWS KMS asymmetric key: the private key never leaves KMS, only a digest goes in.

KMS signs at most 4,096 bytes as a raw message, and a statement listing many files is larger, so the DSSE
pre-authentication encoding is hashed here and sent with ``MessageType=DIGEST``: KMS then skips its own hashing
step, and the result is the same DER ECDSA signature a local key makes over the whole message, which
``model_signing verify key`` checks with the key's public half. Only keys OMS verifiers accept are used: ECC on
NIST P-256, P-384 or P-521 with ``KeyUsage`` ``SIGN_VERIFY``; the curve is read from the public key KMS returns, so
what is checked is the key itself, not a label. Every KMS refusal is one line naming the key and what to do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ocimodel.signing.errors import SigningKeyError
from ocimodel.signing.keys import CURVE_HASHES, PublicKey

#: KMS's signing algorithm for each curve, hashing as ``model_signing`` verifies (keys.CURVE_HASHES).
ALGORITHMS = {"secp256r1": "ECDSA_SHA_256", "secp384r1": "ECDSA_SHA_384", "secp521r1": "ECDSA_SHA_512"}
CREATE_KMS_KEY_HINT = (
    "create one with `aws kms create-key --key-spec ECC_NIST_P256 --key-usage SIGN_VERIFY` (or let ocimodel aws "
    "bootstrap create it: [signing] create = true)"
)
#: What the signer needs on the key: named in every access-denied line.
ACTIONS = ("kms:GetPublicKey", "kms:Sign")
PROPAGATION_HINT = (
    "if ocimodel aws bootstrap granted it moments ago, IAM may still be propagating the role's policy: wait a "
    "minute and build again"
)


@dataclass(frozen=True)
class KmsSigner:
    """A ``PrivateKey`` look-alike (``source``, ``public()``, ``sign()``) whose key stays in KMS.

    ``key_arn`` is the key KMS resolved ``source`` (an alias, id or ARN) to when the public key was read: signing
    names that ARN, so an alias moved to another key in between cannot produce a signature the public key does not
    check.
    """

    source: str
    key_arn: str
    algorithm: str
    public_key: PublicKey
    client: Any = field(repr=False, compare=False)

    @classmethod
    def from_key_id(cls, key_id: str, *, region: str | None = None) -> KmsSigner:
        """The signer for ``key_id`` (``alias/…``, a key id, a key or alias ARN), with boto3's standard credentials.

        The region is the ARN's when ``key_id`` is one, else ``region``, else boto3's (``AWS_REGION`` in CodeBuild).
        """
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        where = key_id.split(":")[3] if key_id.startswith("arn:") and key_id.count(":") >= 5 else region
        try:
            client = boto3.session.Session(region_name=where).client(
                "kms", config=Config(retries={"mode": "standard", "max_attempts": 6})
            )
        except BotoCoreError as exc:
            raise SigningKeyError(f"KMS key {key_id}: {' '.join(str(exc).split())}") from None
        return cls.from_client(client, key_id)

    @classmethod
    def from_client(cls, client: Any, key_id: str) -> KmsSigner:
        """Reads the key's public half (``GetPublicKey``) and refuses, before any work, a key OMS cannot verify."""
        answer = _call(key_id, "read the public key of", lambda: client.get_public_key(KeyId=key_id))
        spec = answer.get("KeySpec") or answer.get("CustomerMasterKeySpec") or "of an unknown spec"
        usage = answer.get("KeyUsage")
        if usage != "SIGN_VERIFY":
            raise SigningKeyError(
                f"KMS key {key_id} has key usage {usage}, not SIGN_VERIFY: it cannot sign; {CREATE_KMS_KEY_HINT}"
            )
        try:
            loaded = serialization.load_der_public_key(answer["PublicKey"])
        except (ValueError, UnsupportedAlgorithm):
            raise SigningKeyError(f"KMS key {key_id} returned a public key this system cannot read") from None
        curve = loaded.curve.name if isinstance(loaded, ec.EllipticCurvePublicKey) else None
        if not isinstance(loaded, ec.EllipticCurvePublicKey) or curve not in CURVE_HASHES:
            raise SigningKeyError(
                f"KMS key {key_id} is {spec}; OpenSSF model signing verifiers accept only ECDSA keys on P-256, P-384 "
                f"or P-521 (ECC_NIST_P256/P384/P521): {CREATE_KMS_KEY_HINT}"
            )
        algorithm = ALGORITHMS[curve]
        if algorithm not in answer.get("SigningAlgorithms", [algorithm]):
            raise SigningKeyError(f"KMS key {key_id} does not offer {algorithm}, which {spec} keys sign with")
        return cls(key_id, str(answer.get("KeyId") or key_id), algorithm, PublicKey(key_id, loaded), client)

    def public(self) -> PublicKey:
        return self.public_key

    def sign(self, data: bytes) -> bytes:
        """A DER ECDSA signature over ``data``, made by KMS from its digest (``MessageType=DIGEST``)."""
        digest = hashlib.new(CURVE_HASHES[self.public_key.key.curve.name].name, data).digest()
        answer = _call(
            self.source,
            "sign with",
            lambda: self.client.sign(
                KeyId=self.key_arn, Message=digest, MessageType="DIGEST", SigningAlgorithm=self.algorithm
            ),
        )
        signature = bytes(answer["Signature"])
        # Cheap, and it turns a misbehaving endpoint or a key swapped under the ARN into a clear line, not a
        # model.sig every verifier refuses later.
        if not self.public_key.verifies(signature, data):
            raise SigningKeyError(
                f"KMS key {self.source} returned a signature its public key does not verify; nothing was signed"
            )
        return signature


def _call(key_id: str, doing: str, call: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        return call()
    except NoCredentialsError:
        raise SigningKeyError(
            f"cannot {doing} KMS key {key_id}: no AWS credentials; set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        ) from None
    except NoRegionError:
        raise SigningKeyError(
            f"cannot {doing} KMS key {key_id}: no AWS region; set AWS_REGION, or name the key by its ARN"
        ) from None
    except ClientError as exc:
        _refused(key_id, doing, exc)
    except BotoCoreError as exc:
        raise SigningKeyError(f"cannot {doing} KMS key {key_id}: {' '.join(str(exc).split())}") from None


def _refused(key_id: str, doing: str, exc: Any) -> NoReturn:
    """KMS's refusals in the words of what to do about them; AWS messages name keys and actions, never secrets."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    said = " ".join(str(error.get("Message", "")).split())
    what = f"cannot {doing} KMS key {key_id}"
    if code in ("AccessDeniedException", "AccessDenied"):
        line = f"{what}: access denied ({said}); the AWS identity needs {' and '.join(ACTIONS)} on the key; "
        raise SigningKeyError(line + PROPAGATION_HINT)
    if code == "DisabledException":
        raise SigningKeyError(f"{what}: the key is disabled; enable it (aws kms enable-key) or name another key")
    if code == "KMSInvalidStateException":
        raise SigningKeyError(
            f"{what}: the key is not usable now ({said}); a key pending deletion can be kept with "
            "aws kms cancel-key-deletion and aws kms enable-key"
        )
    if code == "NotFoundException":
        raise SigningKeyError(
            f"{what}: no such key or alias in this account and region ({said}); {CREATE_KMS_KEY_HINT}"
        )
    if code in ("InvalidKeyUsageException", "UnsupportedOperationException"):
        raise SigningKeyError(f"{what}: it is not an asymmetric signing key ({code}); {CREATE_KMS_KEY_HINT}")
    raise SigningKeyError(f"{what}: AWS said {code}: {said}")
