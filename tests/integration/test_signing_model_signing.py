"""``model-signing`` (the OMS reference implementation) judges ocimodel's signatures, and the reverse.

Its CLI is run as users and the model-validation-operator run it: ``python -m model_signing verify key``. The
model folder has what Hub models have: nested folders, a zero-byte file, a non-ASCII name, a ``.gitattributes``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocimodel.signing.bundle import sign_statement
from ocimodel.signing.errors import ModelMismatch, SignatureInvalid
from ocimodel.signing.filehash import folder_files
from ocimodel.signing.keys import load_private_key, load_public_key
from ocimodel.signing.statement import ModelFile, build_statement
from ocimodel.signing.verify import verify_model
from tests.harness.openssl import KeyPair, ec_key, other_key

MODEL_FILES = {
    "config.json": b'{"model_type": "bert"}\n',
    "model-00001-of-00002.safetensors": os.urandom(70_000),
    "model-00002-of-00002.safetensors": os.urandom(1234),
    "empty.txt": b"",
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\n",
    "tokenizer/spécial ñ/合并.json": "ünïcödé".encode(),
    "onnx/deep/er/model.onnx": b"\x08\x07" * 999,
    "onnx.json": b"sorts after onnx/ by path components, before it as a string",
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
}
WEIGHT = "onnx/deep/er/model.onnx"


def _model(root: Path) -> Path:
    folder = root / "my-model"
    for rel, data in MODEL_FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def _known_digests() -> list[ModelFile]:
    """What pack knows without reading files again: the caller's digests, not the folder's."""
    return [ModelFile(rel, hashlib.sha256(data).hexdigest()) for rel, data in MODEL_FILES.items()]


def _sign_with_ocimodel(folder: Path, pair: KeyPair, password: str | None = None) -> Path:
    key = load_private_key(pair.private, password.encode() if password else None)
    signature = folder / "model.sig"
    signature.write_bytes(sign_statement(build_statement(folder.name, _known_digests()), key))
    return signature


def model_signing(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_signing", *map(str, args)],
        capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
    )


def _verify_with_model_signing(folder: Path, signature: Path, public: Path) -> subprocess.CompletedProcess[str]:
    return model_signing("verify", "key", folder, "--signature", signature, "--public_key", public)


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("curve", "pkcs8", "password"),
    [("P-256", False, None), ("P-384", True, "pässword"), ("P-521", False, "pw")],
)
def test_model_signing_accepts_ocimodels_signature(
    tmp_path: Path, curve: str, pkcs8: bool, password: str | None
) -> None:
    folder = _model(tmp_path)
    pair = ec_key(tmp_path, curve, pkcs8=pkcs8, password=password)
    signature = _sign_with_ocimodel(folder, pair, password)
    result = _verify_with_model_signing(folder, signature, pair.public)
    assert result.returncode == 0 and "Verification succeeded" in result.stdout, result.stdout + result.stderr


def test_model_signing_rejects_a_changed_byte_and_ocimodel_names_the_file(tmp_path: Path) -> None:
    folder = _model(tmp_path)
    pair = ec_key(tmp_path)
    signature = _sign_with_ocimodel(folder, pair)
    _flip_one_byte(folder / WEIGHT)
    result = _verify_with_model_signing(folder, signature, pair.public)
    assert result.returncode == 1 and f"Hash mismatch for '{WEIGHT}'" in result.stderr, result.stderr
    with pytest.raises(ModelMismatch, match=f"^{WEIGHT} in my-model does not match its signature"):
        verify_model(signature.read_bytes(), load_public_key(pair.public), folder_files(folder), "my-model")


def test_model_signing_rejects_a_swapped_signature(tmp_path: Path) -> None:
    folder = _model(tmp_path)
    pair, stranger = ec_key(tmp_path), ec_key(tmp_path, "P-384")
    signature = _sign_with_ocimodel(folder, pair)
    good = signature.read_bytes()

    # Another signer's model.sig in its place: refused for the key the cluster trusts.
    _sign_with_ocimodel(folder, stranger)
    result = _verify_with_model_signing(folder, signature, pair.public)
    assert result.returncode == 1 and "Key mismatch" in result.stderr, result.stderr

    # The right key's signature over another statement spliced into the bundle: refused too.
    other = json.loads(sign_statement(build_statement("x", _known_digests()[:1]), load_private_key(pair.private)))
    doc = json.loads(good)
    doc["dsseEnvelope"]["signatures"] = other["dsseEnvelope"]["signatures"]
    signature.write_text(json.dumps(doc))
    result = _verify_with_model_signing(folder, signature, pair.public)
    assert result.returncode == 1 and "Verification failed" in result.stderr, result.stderr
    with pytest.raises(SignatureInvalid, match="does not verify with"):
        verify_model(signature.read_bytes(), load_public_key(pair.public), folder_files(folder), "my-model")


def test_ocimodel_accepts_model_signings_signature(tmp_path: Path) -> None:
    folder = _model(tmp_path)
    # Unencrypted: model_signing 1.1.1's `--password` hands cryptography a str and fails for every key.
    pair = ec_key(tmp_path, "P-384", pkcs8=True)
    signature = folder / "model.sig"
    result = model_signing("sign", "key", folder, "--private_key", pair.private, "--signature", signature)
    assert result.returncode == 0, result.stderr
    public = load_public_key(pair.public)
    statement = verify_model(signature.read_bytes(), public, folder_files(folder), "my-model")
    assert statement == build_statement("my-model", _known_digests())
    _flip_one_byte(folder / "tokenizer/spécial ñ/合并.json")
    with pytest.raises(ModelMismatch, match="^tokenizer/spécial ñ/合并.json in my-model does not match"):
        verify_model(signature.read_bytes(), public, folder_files(folder), "my-model")


_PINNED_PAYLOAD = """
import pathlib, sys
from google.protobuf import json_format
from model_signing import hashing, manifest
from model_signing._signing import signing
folder = pathlib.Path(sys.argv[1])
hashed = hashing.Config().set_ignored_paths(paths=["model.sig"]).hash(folder)
# The one order model_signing leaves to chance (a frozenset's), pinned to ocimodel's sorted one.
ignored = sorted(hashed.serialization_type["ignore_paths"])
hashed._serialization_type = manifest._FileSerialization("sha256", False, ignored)
sys.stdout.buffer.write(json_format.MessageToJson(signing.Payload(hashed).statement.pb).encode())
"""


def test_statement_is_byte_for_byte_the_one_model_signing_computes(tmp_path: Path) -> None:
    folder = _model(tmp_path)
    ours = build_statement(folder.name, _known_digests()).payload()
    # protobuf's pure-Python backend keeps Struct keys in insertion order (its C backend shuffles them per run).
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    theirs = subprocess.run(
        [sys.executable, "-c", _PINNED_PAYLOAD, str(folder)], capture_output=True, env=env, timeout=300, check=True
    ).stdout
    assert ours == theirs

    # And as JSON, the statement its CLI signs (default backend, unpinned orders) is the same document.
    pair = ec_key(tmp_path)
    signed = model_signing("sign", "key", folder, "--private_key", pair.private, "--signature", folder / "model.sig")
    assert signed.returncode == 0, signed.stderr
    cli = json.loads(base64.b64decode(json.loads((folder / "model.sig").read_text())["dsseEnvelope"]["payload"]))
    cli["predicate"]["serialization"]["ignore_paths"].sort()
    assert cli == json.loads(ours)


def test_model_signing_cannot_use_ed25519_keys_which_is_why_ocimodel_refuses_them(tmp_path: Path) -> None:
    folder = _model(tmp_path)
    ed = other_key(tmp_path, "ED25519")
    result = model_signing("sign", "key", folder, "--private_key", ed.private, "--signature", tmp_path / "ed.sig")
    assert result.returncode == 1 and "Signing failed" in result.stderr, result.stderr
    signature = _sign_with_ocimodel(folder, ec_key(tmp_path))
    result = _verify_with_model_signing(folder, signature, ed.public)
    assert result.returncode == 1 and "Verification failed" in result.stderr, result.stderr
