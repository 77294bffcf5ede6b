"""Keys made by the ``openssl`` command, in the files and formats users will hand to ``--sign-key``.

Generating them with ``cryptography`` would only show that ocimodel reads what ``cryptography`` writes; the
formats users have come from ``openssl`` (traditional ``EC PRIVATE KEY``, PKCS#8, each optionally encrypted).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

#: How ``openssl`` names the curves ocimodel accepts (P-256, P-384, P-521) and one it refuses.
CURVES = {"P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1", "secp256k1": "secp256k1"}


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *args], input=stdin, capture_output=True, timeout=60, check=False)
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


def ec_key(folder: Path, curve: str = "P-256", *, pkcs8: bool = False, password: str | None = None) -> KeyPair:
    """An EC key as ``openssl ecparam -genkey`` (traditional) or ``openssl genpkey`` (PKCS#8) writes it."""
    name = f"{curve}-{'pkcs8' if pkcs8 else 'trad'}{'-enc' if password else ''}"
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    if pkcs8:
        cmd = ["genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{CURVES[curve]}", "-out", str(private)]
        if password:
            cmd += ["-aes-256-cbc", "-pass", f"pass:{password}"]
        openssl(*cmd)
    else:
        openssl("ecparam", "-name", CURVES[curve], "-genkey", "-noout", "-out", str(private))
        if password:
            openssl("ec", "-in", str(private), "-aes256", "-passout", f"pass:{password}", "-out", str(private))
    pass_in = ["-passin", f"pass:{password}"] if password else []
    openssl("pkey", "-in", str(private), *pass_in, "-pubout", "-out", str(public))
    return KeyPair(private, public)


def other_key(folder: Path, algorithm: str) -> KeyPair:
    """A key of a type OMS verifiers refuse: ``RSA``, ``ED25519`` or ``ED448``."""
    private, public = folder / f"{algorithm}.pem", folder / f"{algorithm}.pub"
    extra = ["-pkeyopt", "rsa_keygen_bits:2048"] if algorithm == "RSA" else []
    openssl("genpkey", "-algorithm", algorithm, *extra, "-out", str(private))
    openssl("pkey", "-in", str(private), "-pubout", "-out", str(public))
    return KeyPair(private, public)
