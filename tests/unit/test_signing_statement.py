"""The statement and the bundle as data: order, ignore rules, digests, and what the verifier refuses."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from ocimodel.errors import OcimodelError
from ocimodel.signing.bundle import MAX_BUNDLE_BYTES, pae, sign_statement
from ocimodel.signing.errors import ModelMismatch, SignatureInvalid
from ocimodel.signing.filehash import folder_files, sha256_file
from ocimodel.signing.keys import PrivateKey, load_private_key, load_public_key
from ocimodel.signing.statement import ModelFile, build_statement, parse_statement
from ocimodel.signing.verify import check_files, verify_model, verify_signature
from tests.harness.openssl import ec_key


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


FILES = [ModelFile(p, _digest(p)) for p in ("a.txt", "a/b", "config.json", "sub/.gitattributes", "ü/w.bin")]


@pytest.fixture
def key(tmp_path: Path) -> PrivateKey:
    return load_private_key(ec_key(tmp_path).private)


def test_files_sort_by_path_components_like_pathlib() -> None:
    statement = build_statement("m", reversed(FILES))
    assert [f.path for f in statement.files] == ["a/b", "a.txt", "config.json", "sub/.gitattributes", "ü/w.bin"]


def test_root_digest_is_sha256_over_the_raw_digests_in_order() -> None:
    statement = build_statement("m", FILES)
    expected = hashlib.sha256(b"".join(bytes.fromhex(f.sha256) for f in statement.files)).hexdigest()
    assert statement.root_digest == expected
    assert json.loads(statement.payload())["subject"] == [{"name": "m", "digest": {"sha256": expected}}]


def test_signature_and_root_git_files_are_left_out_as_model_signing_does() -> None:
    extra = [ModelFile(p, _digest(p)) for p in ("model.sig", ".gitattributes", ".git/HEAD", ".github/x", ".gitfoo")]
    statement = build_statement("m", [*FILES, *extra])
    paths = [f.path for f in statement.files]
    assert ".gitfoo" in paths and "sub/.gitattributes" in paths
    assert not {"model.sig", ".gitattributes", ".git/HEAD", ".github/x"} & set(paths)
    assert statement.ignore_paths == (".git", ".gitattributes", ".github", ".gitignore", "model.sig")


def test_payload_is_ascii_json_in_model_signings_layout() -> None:
    payload = build_statement("m", FILES).payload()
    assert payload.isascii() and b'"name": "\\u00fc/w.bin"' in payload
    assert payload.startswith(b'{\n  "_type": "https://in-toto.io/Statement/v1",\n  "subject": [\n')
    assert not payload.endswith(b"\n")


@pytest.mark.parametrize(
    ("path", "message"),
    [("/etc/passwd", "is not a relative path"), ("a//b", "not a canonical"), ("a/../b", "not a canonical"),
     ("./a", "not a canonical"), ("", "is not a relative path")],
)
def test_non_canonical_paths_are_refused(path: str, message: str) -> None:
    with pytest.raises(OcimodelError, match=message):
        build_statement("m", [ModelFile(path, _digest(path))])


def test_duplicates_and_bad_digests_are_refused() -> None:
    with pytest.raises(OcimodelError, match="'a.txt' is listed twice"):
        build_statement("m", [FILES[0], FILES[0]])
    with pytest.raises(OcimodelError, match="'x' has no valid sha256"):
        build_statement("m", [ModelFile("x", "sha256:" + _digest("x"))])


def test_parse_reads_back_what_build_wrote_whatever_the_listed_order() -> None:
    statement = build_statement("m", FILES)
    assert parse_statement(statement.payload(), "s") == statement
    doc = json.loads(statement.payload())
    doc["predicate"]["resources"].reverse()
    # The subject digest follows the listed order: reversed resources with the old digest are inconsistent ...
    with pytest.raises(SignatureInvalid, match="inconsistent"):
        parse_statement(json.dumps(doc).encode(), "s")
    # ... and with the digest of that order they are the same statement.
    listed = b"".join(bytes.fromhex(r["digest"]) for r in doc["predicate"]["resources"])
    doc["subject"][0]["digest"]["sha256"] = hashlib.sha256(listed).hexdigest()
    assert parse_statement(json.dumps(doc).encode(), "s") == statement


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(predicateType="https://model_signing/Digests/v0.1"), "checks https://model_signing/sig"),
        (lambda d: d["predicate"]["serialization"].update(method="shards"), "serialization 'shards'/'sha256'"),
        (lambda d: d["predicate"]["serialization"].update(hash_type="blake2"), "'files'/'blake2'"),
        (lambda d: d["predicate"]["resources"][0].update(name="../x"), "is malformed: signed file '../x'"),
        (lambda d: d.pop("subject"), "is not a model signing statement \\(KeyError"),
    ],
)
def test_parse_refuses_what_it_cannot_check(change: object, message: str) -> None:
    doc = json.loads(build_statement("m", FILES).payload())
    change(doc)  # type: ignore[operator]
    with pytest.raises(SignatureInvalid, match=message):
        parse_statement(json.dumps(doc).encode(), "model.sig of X")


def test_pae_is_dsse_v1() -> None:
    assert pae("t/x", b"\xff{}") == b"DSSEv1 3 t/x 3 \xff{}"


def test_verify_names_the_changed_missing_and_extra_file(key: PrivateKey) -> None:
    data = sign_statement(build_statement("m", FILES), key)
    public = key.public()
    statement = verify_signature(data, public, "image X")
    check_files(statement, [*FILES, ModelFile(".git/HEAD", _digest("g")), ModelFile("model.sig", _digest("s"))], "X")
    changed = [ModelFile(f.path, _digest("other")) if f.path == "config.json" else f for f in FILES]
    with pytest.raises(ModelMismatch, match=r"^config.json in image X does not match its signature \(signed sha256"):
        check_files(statement, changed, "image X")
    with pytest.raises(ModelMismatch, match=r"^a/b is signed but missing from image X$"):
        check_files(statement, [f for f in FILES if f.path != "a/b"], "image X")
    with pytest.raises(ModelMismatch, match=r"^new.bin in image X is not covered by the signature$"):
        verify_model(data, public, [*FILES, ModelFile("new.bin", _digest("n"))], "image X")
    with pytest.raises(ModelMismatch, match=r"^'evil\\nline' in image X is not covered by the signature$"):
        check_files(statement, [*FILES, ModelFile("evil\nline", _digest("e"))], "image X")
    with pytest.raises(ModelMismatch, match=r"^a/b is signed but missing from image X \(and 2 more differences\)$"):
        check_files(statement, [*FILES[2:], ModelFile("z", _digest("z")), ModelFile("a.txt", _digest("?"))], "image X")


def _tampered(data: bytes, edit: object) -> bytes:
    doc = json.loads(data)
    edit(doc)  # type: ignore[operator]
    return json.dumps(doc).encode()


def test_verify_refuses_an_altered_statement_or_signature(key: PrivateKey, tmp_path: Path) -> None:
    data = sign_statement(build_statement("m", FILES), key)
    public = key.public()

    def swap_statement(doc: dict) -> None:
        other = build_statement("m", [*FILES, ModelFile("evil.py", _digest("e"))]).payload()
        doc["dsseEnvelope"]["payload"] = base64.b64encode(other).decode()

    with pytest.raises(SignatureInvalid, match=f"^model.sig of X does not verify with {public.source}: "):
        verify_signature(_tampered(data, swap_statement), public, "model.sig of X")
    other_sig = json.loads(sign_statement(build_statement("n", FILES[:1]), key))["dsseEnvelope"]["signatures"]
    with pytest.raises(SignatureInvalid, match="does not verify with"):
        verify_signature(_tampered(data, lambda d: d["dsseEnvelope"].update(signatures=other_sig)), public, "X")
    (tmp_path / "stranger").mkdir()
    stranger = load_public_key(ec_key(tmp_path / "stranger", "P-384").public)
    with pytest.raises(SignatureInvalid, match=f"^X was signed with another key than {stranger.source}"):
        verify_signature(data, stranger, "X")
    # Without the hint, the signature itself still has to verify.
    no_hint = _tampered(data, lambda d: d["verificationMaterial"]["publicKey"].pop("hint"))
    assert verify_signature(no_hint, public, "X") == build_statement("m", FILES)
    with pytest.raises(SignatureInvalid, match="does not verify with"):
        verify_signature(no_hint, stranger, "X")


def test_verify_refuses_other_bundles_in_one_line(key: PrivateKey) -> None:
    data = sign_statement(build_statement("m", FILES), key)
    public = key.public()
    keyless = _tampered(data, lambda d: d.update(verificationMaterial={"certificate": {"rawBytes": "AA=="}}))
    with pytest.raises(SignatureInvalid, match="was not signed with a bare key .*`model_signing verify`"):
        verify_signature(keyless, public, "X")
    with pytest.raises(SignatureInvalid, match="'application/vnd.dev.sigstore.bundle.v0.2\\+json' bundle"):
        verify_signature(_tampered(data, lambda d: d.update(mediaType=d["mediaType"].replace("3", "2"))), public, "X")
    with pytest.raises(SignatureInvalid, match="is not a Sigstore bundle"):
        verify_signature(b"\x89PNG", public, "X")
    with pytest.raises(SignatureInvalid, match=f"larger than {MAX_BUNDLE_BYTES} bytes"):
        verify_signature(b" " * (MAX_BUNDLE_BYTES + 1), public, "X")


def test_folder_files_streams_every_regular_file_and_refuses_symlinks(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "w.bin").write_bytes(b"w" * 3_000_000)
    (tmp_path / "empty").write_bytes(b"")
    found = sorted(folder_files(tmp_path), key=lambda f: f.path)
    assert found == [
        ModelFile("d/e/w.bin", hashlib.sha256(b"w" * 3_000_000).hexdigest()),
        ModelFile("empty", hashlib.sha256(b"").hexdigest()),
    ]
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
    (tmp_path / "link").symlink_to("empty")
    with pytest.raises(OcimodelError, match="link is a symlink: model signatures cover regular files only"):
        folder_files(tmp_path)
