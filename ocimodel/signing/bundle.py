"""The ``model.sig`` file: a Sigstore bundle (v0.3 JSON) holding a DSSE envelope around the statement.

For a bare key the bundle carries no certificate and no transparency-log entry, only a hint naming the public
key (sha256 hex of its PEM SubjectPublicKeyInfo); the verifier must be given the key itself. The field order and
compact separators are those ``model_signing`` writes, so the two tools' files differ only in the signature bytes
(ECDSA signatures are randomised).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from ocimodel.signing.errors import SignatureInvalid
from ocimodel.signing.keys import Signer
from ocimodel.signing.statement import PAYLOAD_TYPE, Statement

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
#: A statement lists one line per file: 64 MiB covers hundreds of thousands of files and bounds what is read.
MAX_BUNDLE_BYTES = 64 << 20


@dataclass(frozen=True)
class Bundle:
    """A parsed bundle whose signature is not yet checked: nothing in it is trusted until ``verify`` says so."""

    key_hint: str | None
    payload_type: str
    payload: bytes
    signature: bytes


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: the bytes actually signed, binding the payload to its type."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign_statement(statement: Statement, key: Signer) -> bytes:
    """The ``model.sig`` bytes for ``statement`` signed with ``key``."""
    payload = statement.payload()
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key.public().hint}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(key.sign(pae(PAYLOAD_TYPE, payload))).decode(), "keyid": ""}],
        },
    }
    return json.dumps(bundle, separators=(",", ":")).encode()


def read_bundle(data: bytes, where: str) -> Bundle:
    """Parses a bare-key bundle; keyless (certificate) bundles need Sigstore's trust roots and are refused."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise SignatureInvalid(f"{where} is larger than {MAX_BUNDLE_BYTES} bytes, more than any model's signature")
    try:
        doc = json.loads(data)
        if doc["mediaType"] != BUNDLE_MEDIA_TYPE:
            raise SignatureInvalid(f"{where} is a {doc['mediaType']!r} bundle; ocimodel reads {BUNDLE_MEDIA_TYPE}")
        material = doc["verificationMaterial"]
        if "publicKey" not in material:
            raise SignatureInvalid(
                f"{where} was not signed with a bare key (certificate or Sigstore keyless); "
                "check it with `model_signing verify`"
            )
        hint = material["publicKey"].get("hint") or None
        envelope = doc["dsseEnvelope"]
        signatures = envelope["signatures"]
        if not isinstance(signatures, list) or len(signatures) != 1:
            raise SignatureInvalid(f"{where} must hold exactly one signature")
        return Bundle(
            key_hint=hint if isinstance(hint, str) else None,
            payload_type=envelope["payloadType"],
            payload=base64.b64decode(envelope["payload"], validate=True),
            signature=base64.b64decode(signatures[0]["sig"], validate=True),
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, binascii.Error) as exc:
        raise SignatureInvalid(f"{where} is not a Sigstore bundle ({type(exc).__name__}: {exc})") from None
