"""Signing and verification keys, limited to what OMS verifiers accept.

``model_signing`` (and the model-validation-operator built on it) verifies bare-key signatures with ECDSA on
P-256, P-384 or P-521 only, hashing with SHA-256/384/512 by curve size. An Ed25519 or RSA signature would be
valid but unverifiable by them, so such keys are refused here, before any work, rather than producing a
``model.sig`` the cluster rejects. Key bytes and passwords stay out of every message and repr.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ocimodel.signing.errors import SigningKeyError

#: The curves ``model_signing`` accepts, with the hash its ECDSA uses for each.
CURVE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}

#: A PEM key is a few hundred bytes; anything far larger is not one, and is not read into memory whole.
MAX_KEY_FILE_BYTES = 1 << 20

CREATE_KEY_HINT = (
    "create one with `openssl ecparam -name prime256v1 -genkey -noout -out model-signing.pem` "
    "and its public half with `openssl ec -in model-signing.pem -pubout -out model-signing.pub`"
)


@dataclass(frozen=True)
class PublicKey:
    """The half a verifier holds; ``hint`` is how a bundle names it (sha256 of its PEM SubjectPublicKeyInfo)."""

    source: str
    key: ec.EllipticCurvePublicKey = field(repr=False)

    @property
    def pem(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def hint(self) -> str:
        return hashlib.sha256(self.pem).hexdigest()

    def verifies(self, signature: bytes, data: bytes) -> bool:
        try:
            self.key.verify(signature, data, ec.ECDSA(_curve_hash(self.key.curve)))
        except InvalidSignature:
            return False
        return True


class Signer(Protocol):
    """What signs a statement: a key file loaded here, or a key that never leaves a service (``signing.kms``)."""

    #: Names the key in messages (a path, an ARN); never secret.
    source: str

    def public(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """A DER-encoded ECDSA signature over ``data``."""
        ...


@dataclass(frozen=True)
class PrivateKey:
    """A loaded signing key; ``source`` names it in messages, the key itself never appears in a repr."""

    source: str
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    def public(self) -> PublicKey:
        return PublicKey(self.source, self.key.public_key())

    def sign(self, data: bytes) -> bytes:
        """A DER-encoded ECDSA signature, the form ``model_signing`` stores and verifies.

        Deterministic (RFC 6979): the same files signed with the same key give the same ``model.sig``, so a signed
        image is as reproducible as an unsigned one (same digest on every rebuild); verifiers cannot tell the
        difference, since a deterministic nonce is one valid choice of the random one.
        """
        return self.key.sign(data, ec.ECDSA(_curve_hash(self.key.curve), deterministic_signing=True))


def load_private_key(path: Path, password: bytes | None = None) -> PrivateKey:
    """Loads a PEM private key as ``openssl`` writes it (PKCS#8 or traditional, encrypted or not)."""
    what = f"signing key {path}"
    data = _read_key_file(path, what)
    try:
        loaded = serialization.load_pem_private_key(data, password)
    except TypeError:
        if password is None:
            raise SigningKeyError(f"{what} is encrypted and no password was given: pass its password") from None
        # A password for a key that has none: the key is still the one the user named.
        loaded = _load_unencrypted(data, what)
    except ValueError:
        if password is not None and b"ENCRYPTED" in data:
            raise SigningKeyError(f"{what} could not be decrypted: the password is wrong") from None
        raise SigningKeyError(f"{what} is not a PEM private key: {CREATE_KEY_HINT}") from None
    except UnsupportedAlgorithm:
        raise SigningKeyError(f"{what} uses an algorithm this system cannot load: {CREATE_KEY_HINT}") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise SigningKeyError(f"{what} is {_describe(loaded)}; {_ACCEPTED}: {CREATE_KEY_HINT}")
    _check_curve(loaded.curve, what)
    return PrivateKey(str(path), loaded)


def load_public_key(path: Path) -> PublicKey:
    """Loads the PEM public key (SubjectPublicKeyInfo, as ``openssl ec -pubout`` writes it) a verifier trusts."""
    what = f"public key {path}"
    data = _read_key_file(path, what)
    try:
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise SigningKeyError(f"{what} is not a PEM public key: {CREATE_KEY_HINT}") from None
    if not isinstance(loaded, ec.EllipticCurvePublicKey):
        raise SigningKeyError(f"{what} is {_describe(loaded)}; {_ACCEPTED}")
    _check_curve(loaded.curve, what)
    return PublicKey(str(path), loaded)


_ACCEPTED = "OpenSSF model signing verifiers accept only ECDSA keys on P-256, P-384 or P-521"


def _load_unencrypted(data: bytes, what: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        raise SigningKeyError(f"{what} is not a PEM private key: {CREATE_KEY_HINT}") from None


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SigningKeyError(f"{what} does not exist: {CREATE_KEY_HINT}") from None
    except OSError as exc:
        raise SigningKeyError(f"cannot read {what}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SigningKeyError(f"{what} is larger than {MAX_KEY_FILE_BYTES} bytes, so it is not a PEM key")
    return data


def _check_curve(curve: ec.EllipticCurve, what: str) -> None:
    if curve.name not in CURVE_HASHES:
        raise SigningKeyError(f"{what} is an EC key on curve {curve.name}; {_ACCEPTED}: {CREATE_KEY_HINT}")


def _curve_hash(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    return CURVE_HASHES[curve.name]()


def _describe(key: object) -> str:
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "an RSA key"
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "an Ed25519 key"
    if isinstance(key, (ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
        return "an Ed448 key"
    return f"a {type(key).__name__.removeprefix('_')}"
