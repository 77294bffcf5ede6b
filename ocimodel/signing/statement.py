"""The in-toto statement an OMS signature covers, built from digests the caller already has.

``model_signing`` lists every regular file under the model folder (relative POSIX path, sha256), sorted by
path components, minus its ignore paths; the subject digest is sha256 over the raw per-file digests in that
order. Its own rendering is not reproducible (protobuf's Struct map order and a frozenset's order change from
run to run), and its verifier reads the statement back as JSON, so any key order verifies. This module renders
the order ``model_signing`` produces with protobuf's pure-Python backend, with ignore paths sorted: the same
bytes every time, and the same bytes as ``model_signing`` for the same files when those two orders are pinned.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ocimodel.errors import OcimodelError
from ocimodel.signing.errors import SignatureInvalid

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
#: Where the signature sits inside the model folder; it cannot list itself, so it is an ignore path.
SIGNATURE_NAME = "model.sig"
#: What ``model_signing`` leaves out by default, at the model root only, and adds back when it verifies.
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelFile:
    """One regular file of the model: its path relative to the model folder ('/'-separated) and sha256 hex."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Statement:
    """What gets signed: the model's name (informative only), its files in canonical order, the ignore paths."""

    model_name: str
    files: tuple[ModelFile, ...]
    ignore_paths: tuple[str, ...]

    @property
    def root_digest(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            h.update(bytes.fromhex(f.sha256))
        return h.hexdigest()

    def payload(self) -> bytes:
        """The JSON the DSSE envelope carries, rendered as protobuf's ``MessageToJson`` does (indent 2, ASCII)."""
        serialization: dict[str, object] = {"method": "files", "hash_type": "sha256", "allow_symlinks": False}
        if self.ignore_paths:  # model_signing leaves the key out when the list is empty
            serialization["ignore_paths"] = list(self.ignore_paths)
        doc = {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.model_name, "digest": {"sha256": self.root_digest}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "serialization": serialization,
                "resources": [{"name": f.path, "algorithm": "sha256", "digest": f.sha256} for f in self.files],
            },
        }
        return json.dumps(doc, indent=2, ensure_ascii=True).encode()


def build_statement(
    model_name: str,
    files: Iterable[ModelFile],
    *,
    signature_name: str = SIGNATURE_NAME,
    ignore_paths: Iterable[str] = (),
) -> Statement:
    """The statement ``model_signing sign`` makes for a folder holding ``files`` with the signature inside it.

    Files under an ignore path (the signature itself, the root's git files, ``ignore_paths``) are dropped, as
    ``model_signing`` drops them, so the caller may pass every file of the folder.
    """
    ignored = tuple(sorted({check_path(p, "ignore path") for p in (signature_name, *GIT_PATHS, *ignore_paths)}))
    kept: dict[str, ModelFile] = {}
    for f in files:
        path = check_path(f.path, "model file")
        if not _SHA256_HEX.fullmatch(f.sha256):
            raise OcimodelError(f"model file {path!r} has no valid sha256 (64 lowercase hex digits): {f.sha256!r}")
        if is_ignored(path, ignored):
            continue
        if path in kept:
            raise OcimodelError(f"model file {path!r} is listed twice: each path names one file")
        kept[path] = ModelFile(path, f.sha256)
    ordered = tuple(sorted(kept.values(), key=lambda f: path_order(f.path)))
    return Statement(model_name, ordered, ignored)


def parse_statement(payload: bytes, where: str) -> Statement:
    """Reads back a signed statement, checking what ``model_signing``'s verifier checks, in one-line errors.

    Only per-file sha256 statements are accepted: ocimodel compares digests it streams, and the shard or BLAKE
    forms would need the files read again another way.
    """
    try:
        doc = json.loads(payload)
        if doc["_type"] != STATEMENT_TYPE:
            raise SignatureInvalid(f"{where} does not hold an in-toto v1 statement (_type {doc['_type']!r})")
        if doc["predicateType"] != PREDICATE_TYPE:
            raise SignatureInvalid(
                f"{where} has predicate type {doc['predicateType']!r}; ocimodel checks {PREDICATE_TYPE} only"
            )
        subjects = doc["subject"]
        if not isinstance(subjects, list) or len(subjects) != 1:
            raise SignatureInvalid(f"{where} must name exactly one subject")
        name, root = subjects[0]["name"], subjects[0]["digest"]["sha256"]
        serialization = doc["predicate"]["serialization"]
        method, hash_type = serialization["method"], serialization["hash_type"]
        if method != "files" or hash_type != "sha256":
            raise SignatureInvalid(
                f"{where} was made with serialization {method!r}/{hash_type!r}; ocimodel checks 'files'/'sha256' "
                "signatures (model_signing's default)"
            )
        if serialization["allow_symlinks"] is not False:
            raise SignatureInvalid(f"{where} allows symlinks; ocimodel checks signatures of regular files only")
        # A set in meaning (model_signing writes it in a frozenset's order): kept sorted, as build_statement does.
        ignored = tuple(sorted({check_path(p, "ignore path") for p in serialization.get("ignore_paths", [])}))
        listed: list[ModelFile] = []
        for resource in doc["predicate"]["resources"]:
            if resource["algorithm"] != "sha256" or not _SHA256_HEX.fullmatch(resource["digest"]):
                raise SignatureInvalid(f"{where} lists {resource['name']!r} without a sha256 digest")
            listed.append(ModelFile(check_path(resource["name"], "signed file"), resource["digest"]))
    except SignatureInvalid:
        raise
    except OcimodelError as exc:
        raise SignatureInvalid(f"{where} is malformed: {exc}") from None
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SignatureInvalid(f"{where} is not a model signing statement ({type(exc).__name__}: {exc})") from None
    if not isinstance(name, str):
        raise SignatureInvalid(f"{where} has a subject name that is not a string")
    if len({f.path for f in listed}) != len(listed):
        raise SignatureInvalid(f"{where} lists a file twice")
    # The subject digest covers the resources in the order they are listed, whatever that order is.
    if Statement(name, tuple(listed), ignored).root_digest != root:
        raise SignatureInvalid(f"{where} is inconsistent: its subject digest is not the digest of its file list")
    return Statement(name, tuple(sorted(listed, key=lambda f: path_order(f.path))), ignored)


def is_ignored(path: str, ignore_paths: Iterable[str]) -> bool:
    """True when ``path`` is an ignore path or lies under one (as ``model_signing`` matches: whole components)."""
    return any(path == p or path.startswith(p + "/") for p in ignore_paths)


def path_order(path: str) -> tuple[str, ...]:
    """``model_signing`` sorts pathlib paths, which compare component by component ('a/b' before 'a.txt')."""
    return tuple(path.split("/"))


def check_path(path: object, what: str) -> str:
    """A path as ``model_signing`` writes it: relative, '/'-separated, no empty, '.' or '..' component."""
    if not isinstance(path, str) or not path or "\x00" in path or path.startswith("/"):
        raise OcimodelError(f"{what} {path!r} is not a relative path")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise OcimodelError(f"{what} {path!r} is not a canonical relative path (empty, '.' or '..' component)")
    return path
