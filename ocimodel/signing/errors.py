"""The ways signing and verifying fail that a user can act on, each explained in one line without a secret."""

from ocimodel.errors import OcimodelError, VerificationError


class SigningKeyError(OcimodelError):
    """A key file that cannot be used: missing, unreadable, wrongly encrypted, or of a type verifiers refuse."""


class SignatureInvalid(VerificationError):
    """A signature file that is malformed, of a kind ocimodel does not check, or not made by the given key."""


class ModelMismatch(VerificationError):
    """Files that differ from what a valid signature lists: changed, missing or added after signing."""
