"""Checking a ``model.sig`` the way ``model_signing verify key`` does, against digests the caller streamed.

The signature is checked first and alone (``verify_signature``), so an image with a forged or foreign signature
is refused before any layer is read; the files are then compared (``check_files``) with the same rules as
``model_signing``: the signed ignore paths and the root's git files are skipped, and a file that is changed,
missing or not signed fails. Each failure is one line naming the first file concerned.
"""

from __future__ import annotations

from collections.abc import Iterable

from ocimodel.signing.bundle import pae, read_bundle
from ocimodel.signing.errors import ModelMismatch, SignatureInvalid
from ocimodel.signing.keys import PublicKey
from ocimodel.signing.statement import GIT_PATHS, PAYLOAD_TYPE, ModelFile, Statement, is_ignored, parse_statement


def verify_signature(data: bytes, key: PublicKey, where: str) -> Statement:
    """The statement ``data`` (a ``model.sig``'s bytes) carries, once its signature is shown to be ``key``'s."""
    bundle = read_bundle(data, where)
    if bundle.key_hint is not None and bundle.key_hint != key.hint:
        raise SignatureInvalid(
            f"{where} was signed with another key than {key.source} (its key hint is {bundle.key_hint[:16]}…, "
            f"the key's is {key.hint[:16]}…): use the public key of the signer"
        )
    if bundle.payload_type != PAYLOAD_TYPE:
        raise SignatureInvalid(f"{where} carries a {bundle.payload_type!r} payload, not an in-toto statement")
    if not key.verifies(bundle.signature, pae(bundle.payload_type, bundle.payload)):
        raise SignatureInvalid(f"{where} does not verify with {key.source}: the signature or its statement was altered")
    return parse_statement(bundle.payload, where)


def check_files(statement: Statement, present: Iterable[ModelFile], where: str) -> None:
    """Raises ``ModelMismatch`` naming the first file (in signed order) that differs from the statement.

    A path given twice counts with its last digest, as a later layer's file replaces an earlier one's.
    """
    ignored = (*statement.ignore_paths, *GIT_PATHS)
    found: dict[str, str] = {}
    for f in present:
        if not is_ignored(f.path, ignored):
            found[f.path] = f.sha256
    signed = {f.path: f.sha256 for f in statement.files}
    problems: list[str] = []
    for path, digest in signed.items():
        if path not in found:
            problems.append(f"{_shown(path)} is signed but missing from {where}")
        elif found[path] != digest:
            problems.append(
                f"{_shown(path)} in {where} does not match its signature (signed sha256 {digest[:16]}…, "
                f"found {found[path][:16]}…)"
            )
    problems.extend(
        f"{_shown(path)} in {where} is not covered by the signature" for path in sorted(set(found) - set(signed))
    )
    if len(problems) == 1:
        raise ModelMismatch(problems[0])
    if problems:
        others = len(problems) - 1
        raise ModelMismatch(f"{problems[0]} (and {others} more difference{'s' if others > 1 else ''})")


def verify_model(data: bytes, key: PublicKey, present: Iterable[ModelFile], where: str) -> Statement:
    """Both checks at once, for callers that already have every file's digest."""
    statement = verify_signature(data, key, where)
    check_files(statement, present, where)
    return statement


def _shown(path: str) -> str:
    """A file name as it can appear in a one-line message: quoted when it holds a newline or another control."""
    return path if path.isprintable() else repr(path)
