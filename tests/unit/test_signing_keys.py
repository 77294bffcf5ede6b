"""Key handling: every key format ``openssl`` writes loads, every mistake is one line, no secret ever shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocimodel.errors import OcimodelError
from ocimodel.signing.errors import SigningKeyError
from ocimodel.signing.keys import load_private_key, load_public_key
from tests.harness.openssl import ec_key, other_key

PASSWORD = "correct horse 7f3a"


def _secret_lines(path: Path) -> list[str]:
    """The base64 body of a PEM file: what must never leak into a message."""
    return [line for line in path.read_text().splitlines() if line and not line.startswith(("-----", "Proc-", "DEK-"))]


def _assert_one_clean_line(exc: OcimodelError, *secrets: str) -> str:
    text = str(exc)
    assert "\n" not in text
    for secret in secrets:
        assert secret not in text and secret not in repr(exc)
    return text


@pytest.mark.parametrize("curve", ["P-256", "P-384", "P-521"])
@pytest.mark.parametrize("pkcs8", [False, True], ids=["traditional", "pkcs8"])
@pytest.mark.parametrize("password", [None, PASSWORD], ids=["plain", "encrypted"])
def test_openssl_ec_keys_load_and_sign(tmp_path: Path, curve: str, pkcs8: bool, password: str | None) -> None:
    pair = ec_key(tmp_path, curve, pkcs8=pkcs8, password=password)
    key = load_private_key(pair.private, password.encode() if password else None)
    public = load_public_key(pair.public)
    assert public.pem == key.public().pem
    assert public.verifies(key.sign(b"payload"), b"payload")
    assert not public.verifies(key.sign(b"payload"), b"payloaD")


def test_repr_of_a_loaded_key_shows_where_it_came_from_not_the_key(tmp_path: Path) -> None:
    pair = ec_key(tmp_path)
    key = load_private_key(pair.private)
    assert repr(key) == f"PrivateKey(source='{pair.private}')"
    assert repr(key.public()) == f"PublicKey(source='{pair.private}')"


@pytest.mark.parametrize("pkcs8", [False, True], ids=["traditional", "pkcs8"])
def test_wrong_password_is_one_line_without_either_password(tmp_path: Path, pkcs8: bool) -> None:
    pair = ec_key(tmp_path, pkcs8=pkcs8, password=PASSWORD)
    with pytest.raises(SigningKeyError) as caught:
        load_private_key(pair.private, b"not the password 91c2")
    text = _assert_one_clean_line(caught.value, PASSWORD, "not the password 91c2", *_secret_lines(pair.private))
    assert text == f"signing key {pair.private} could not be decrypted: the password is wrong"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_encrypted_key_without_password_says_so(tmp_path: Path) -> None:
    pair = ec_key(tmp_path, pkcs8=True, password=PASSWORD)
    with pytest.raises(SigningKeyError, match="is encrypted and no password was given") as caught:
        load_private_key(pair.private)
    _assert_one_clean_line(caught.value, PASSWORD, *_secret_lines(pair.private))


def test_password_for_an_unencrypted_key_is_not_an_error(tmp_path: Path) -> None:
    pair = ec_key(tmp_path)
    assert load_private_key(pair.private, b"unneeded").public().pem == load_public_key(pair.public).pem


def test_missing_key_names_the_path_and_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError) as caught:
        load_private_key(tmp_path / "nope.pem", b"pw-never-shown")
    text = _assert_one_clean_line(caught.value, "pw-never-shown")
    assert text.startswith(f"signing key {tmp_path / 'nope.pem'} does not exist: create one with `openssl ecparam")


@pytest.mark.parametrize(("algorithm", "described"), [("RSA", "an RSA key"), ("ED25519", "an Ed25519 key")])
def test_key_types_verifiers_refuse_are_refused_before_signing(tmp_path: Path, algorithm: str, described: str) -> None:
    pair = other_key(tmp_path, algorithm)
    for load, path in ((load_private_key, pair.private), (load_public_key, pair.public)):
        with pytest.raises(SigningKeyError) as caught:
            load(path)
        text = _assert_one_clean_line(caught.value, *_secret_lines(pair.private))
        assert f"{path} is {described}; OpenSSF model signing verifiers accept only ECDSA keys" in text


def test_other_curves_are_refused(tmp_path: Path) -> None:
    pair = ec_key(tmp_path, "secp256k1")
    with pytest.raises(SigningKeyError, match="is an EC key on curve secp256k1; OpenSSF model signing verifiers"):
        load_private_key(pair.private)


def test_a_file_that_is_not_a_key(tmp_path: Path) -> None:
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(SigningKeyError, match=f"signing key {junk} is not a PEM private key"):
        load_private_key(junk)
    with pytest.raises(SigningKeyError, match=f"public key {junk} is not a PEM public key"):
        load_public_key(junk)


def test_a_private_key_given_as_the_public_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    pair = ec_key(tmp_path)
    with pytest.raises(SigningKeyError) as caught:
        load_public_key(pair.private)
    _assert_one_clean_line(caught.value, *_secret_lines(pair.private))


def test_a_huge_file_is_not_read_whole(tmp_path: Path) -> None:
    big = tmp_path / "weights.bin"
    with big.open("wb") as f:
        f.truncate(3 << 30)  # sparse: costs nothing on disk
    with pytest.raises(SigningKeyError, match="is larger than 1048576 bytes, so it is not a PEM key"):
        load_private_key(big)
