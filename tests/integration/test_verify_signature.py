"""``ocimodel verify --sign-key-pub``: the ``signature.model`` check, on layouts and on a real registry.

The images are what a signed image looks like before ``pack --sign-key`` exists: a model folder holding a
``model.sig`` made by ``ocimodel.signing`` (so it lands at ``/models/model.sig``), packed by ``ocimodel.pack``; then
tampered with as an attacker with push rights would, by a layer on top that changes a byte, deletes a file
(whiteout), adds one, or swaps the signature. ``model_signing verify key`` (the OMS reference verifier) run on
the image as umoci unpacks it is the judge of what the verdict should be.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import ocimodel
from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST
from ocimodel.layout.source import LayoutSource
from ocimodel.layout.store import Layout
from ocimodel.signing.bundle import sign_statement
from ocimodel.signing.filehash import folder_files
from ocimodel.signing.keys import load_private_key, load_public_key
from ocimodel.signing.statement import ModelFile, build_statement
from ocimodel.verification import ReadPolicy, Result
from ocimodel.verification.signature import SignatureLimits, check_signature
from tests.harness.cli import run_cli
from tests.harness.openssl import KeyPair, ec_key
from tests.harness.registry import Registry

WEIGHTS = "model-00001-of-00002.safetensors"
FILES = {
    "config.json": b'{"model_type": "bert"}\n',
    WEIGHTS: os.urandom(300_000),
    "model-00002-of-00002.safetensors": os.urandom(5_000),
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\n",
    "empty.txt": b"",
}


@dataclass(frozen=True)
class Signed:
    key: KeyPair
    other: KeyPair
    folder: Path
    #: The signed folder packed into a layout, uncompressed and gzip.
    plain: Path
    gzip: Path


def sign_folder(folder: Path, key: KeyPair) -> bytes:
    """What ``pack --sign-key`` will do, by hand: sign every file of the folder with the signature inside it."""
    statement = build_statement("models", folder_files(folder))
    return sign_statement(statement, load_private_key(key.private))


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Signed:
    root = tmp_path_factory.mktemp("signed")
    key, other = ec_key(root, "P-256"), ec_key(root, "P-384")
    folder = root / "my-model"
    for rel, data in FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / "model.sig").write_bytes(sign_folder(folder, key))
    plain = ocimodel.pack(folder, root / "plain.oci", base="scratch").layout
    gzipped = ocimodel.pack(folder, root / "gzip.oci", base="scratch", compression="gzip").layout
    return Signed(key, other, folder, plain, gzipped)


# --- tampering: one more layer on top, as anyone who can push to the repository can add ------------------------------


def tar_layer(members: list[tuple[str, bytes | None]]) -> bytes:
    """A tar of files (``bytes``) and whiteouts (``None``: an empty ``.wh.`` member), parents included."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mode, info.size = 0o644, len(data or b"")
            archive.addfile(info, io.BytesIO(data or b""))
    return out.getvalue()


def whiteout(path: str) -> str:
    folder, _, base = path.rpartition("/")
    return f"{folder}/.wh.{base}"


def add_layer(source: Path, target: Path, layer: bytes) -> Path:
    """A copy of the ``source`` layout whose ``latest`` image has ``layer`` on top (config and history kept
    consistent, so umoci and the checks accept it)."""
    subprocess.run(["cp", "-r", str(source), str(target)], check=True)
    layout = Layout.open(target)
    top = layout.tags()["latest"]
    manifest = json.loads(layout.read_blob(top.digest))
    config = json.loads(layout.read_blob(manifest["config"]["digest"]))
    desc = layout.put_bytes(OCI_LAYER, layer)
    config["rootfs"]["diff_ids"].append(desc.digest)
    config["history"].append({"created_by": "tampered"})
    manifest["config"] = layout.put_json(OCI_CONFIG, config).to_json()
    manifest["layers"].append(desc.to_json())
    layout.set_tag("latest", layout.put_json(OCI_MANIFEST, manifest))
    return target


def flipped(data: bytes) -> bytes:
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0x01
    return bytes(changed)


#: Each tampering, what the top layer holds, and what the one-line failure must name.
TAMPERINGS = {
    "one-byte": ([(f"models/{WEIGHTS}", flipped(FILES[WEIGHTS]))], f"{WEIGHTS} in", "does not match its signature"),
    "deleted": ([(whiteout(f"models/{WEIGHTS}"), None)], WEIGHTS, "is signed but missing"),
    "added": ([("models/extra.bin", b"unsigned")], "extra.bin", "is not covered by the signature"),
}


def verdict(layout: Path, public: Path) -> tuple[Result, str]:
    report = ocimodel.verify(layout, modes=["native"], sign_key_pub=public)
    (check,) = [c for c in report.checks if c.id == "signature.model"]
    assert report.ok is (check.result is Result.PASS)
    return check.result, check.detail


def model_signing_accepts(layout: Path, work: Path, public: Path) -> bool:
    """The reference verifier's verdict on the image as a runtime would lay it out (umoci applies whiteouts)."""
    bundle = work / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:latest", str(bundle)],
                   check=True, capture_output=True, timeout=120)
    models = bundle / "rootfs" / "models"
    result = subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", str(models), "--signature",
         str(models / "model.sig"), "--public_key", str(public)],
        capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
    )
    return result.returncode == 0


# --- layouts -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["plain", "gzip"])
def test_a_signed_layout_passes(signed: Signed, layout: str) -> None:
    result, detail = verdict(getattr(signed, layout), signed.key.public)
    assert result is Result.PASS, detail
    assert f"the {len(FILES)} signed files under /models match it" in detail


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_a_layer_that_tampers_with_the_model_fails_naming_the_file(
    signed: Signed, tmp_path: Path, tampering: str
) -> None:
    members, name, problem = TAMPERINGS[tampering]
    layout = add_layer(signed.plain, tmp_path / "tampered.oci", tar_layer(members))
    result, detail = verdict(layout, signed.key.public)
    assert result is Result.FAIL
    assert name in detail and problem in detail and "\n" not in detail, detail
    assert not model_signing_accepts(layout, tmp_path, signed.key.public)


def test_the_files_put_back_by_a_later_layer_pass_as_model_signing_says(signed: Signed, tmp_path: Path) -> None:
    """Deleted and then restored with the same bytes: the merged tree is what was signed."""
    once = add_layer(signed.plain, tmp_path / "once.oci", tar_layer([(whiteout(f"models/{WEIGHTS}"), None)]))
    restored = add_layer(once, tmp_path / "restored.oci", tar_layer([(f"models/{WEIGHTS}", FILES[WEIGHTS])]))
    result, detail = verdict(restored, signed.key.public)
    assert result is Result.PASS, detail
    assert model_signing_accepts(restored, tmp_path, signed.key.public)


def test_an_opaque_directory_and_hard_links_are_merged_as_a_runtime_does(signed: Signed, tmp_path: Path) -> None:
    """A top layer that replaces all of /models (opaque whiteout) with two names for one file: what is signed is
    the new folder, and the hard link has the content of its target."""
    data = b"weights shared by two names"
    digest = hashlib.sha256(data).hexdigest()
    statement = build_statement("models", [ModelFile("a.bin", digest), ModelFile("b.bin", digest)])
    signature = sign_statement(statement, load_private_key(signed.key.private))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in (("models/.wh..wh..opq", b""), ("models/a.bin", data), ("models/model.sig", signature)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        link = tarfile.TarInfo("models/b.bin")
        link.type, link.linkname = tarfile.LNKTYPE, "models/a.bin"
        archive.addfile(link)
    layout = add_layer(signed.plain, tmp_path / "replaced.oci", out.getvalue())
    result, detail = verdict(layout, signed.key.public)
    assert result is Result.PASS, detail
    assert "the 2 signed files" in detail
    assert model_signing_accepts(layout, tmp_path, signed.key.public)


def test_a_swapped_signature_fails(signed: Signed, tmp_path: Path) -> None:
    """Another signer's model.sig over the very same files: the key is not the one the cluster trusts."""
    forged = sign_folder(signed.folder, signed.other)
    layout = add_layer(signed.plain, tmp_path / "swapped.oci", tar_layer([("models/model.sig", forged)]))
    result, detail = verdict(layout, signed.key.public)
    assert result is Result.FAIL
    assert "signed with another key" in detail, detail
    assert not model_signing_accepts(layout, tmp_path, signed.key.public)
    assert verdict(layout, signed.other.public)[0] is Result.PASS


def test_a_forged_signature_is_refused_before_the_weights_are_read(signed: Signed, tmp_path: Path) -> None:
    """ocimodel's signed images carry model.sig in their top layer: it is read first, and a bad one ends the
    check before any model layer is streamed."""
    forged = sign_folder(signed.folder, signed.other)
    layout = add_layer(signed.plain, tmp_path / "swapped.oci", tar_layer([("models/model.sig", forged)]))
    source = LayoutSource(Layout.open(layout))
    layers = ocimodel.verify(layout, modes=["native"]).layers
    read: list[int] = []

    class Counting:
        def task(self, label: str, total: int) -> "Counting":
            return self

        def advance(self, n: int) -> None:
            read.append(n)

        def finish(self, note: str = "") -> None:
            pass

        def close(self) -> None:
            pass

    check = check_signature(source, [d for d, _ in layers], load_public_key(signed.key.public), reporter=Counting())
    assert check.result is Result.FAIL
    assert sum(read) <= layers[-1][0].size, "more than the top layer was read"


def test_an_unsigned_image_fails(signed: Signed, tmp_path: Path) -> None:
    layout = add_layer(signed.plain, tmp_path / "unsigned.oci", tar_layer([("models/.wh.model.sig", None)]))
    result, detail = verdict(layout, signed.key.public)
    assert result is Result.FAIL
    assert "has no /models/model.sig: the image is not signed" in detail


def test_the_check_stops_at_its_own_limits_in_one_line(signed: Signed) -> None:
    source = LayoutSource(Layout.open(signed.plain))
    layers = [d for d, _ in ocimodel.verify(signed.plain, modes=["native"]).layers]
    key = load_public_key(signed.key.public)
    tight = SignatureLimits(policy=ReadPolicy(expanded=100_000, ratio=0))
    check = check_signature(source, layers, key, tight)
    assert check.result is Result.FAIL and "decompresses past" in check.detail and "\n" not in check.detail
    few = SignatureLimits(policy=ReadPolicy(entries=2))
    assert "tar members" in check_signature(source, layers, key, few).detail
    ticks = iter(range(0, 10_000, 1000))
    with pytest.raises(OcimodelError, match=r"^layer sha256:\w+ of .* stalled: less than 1.0 MiB came in 1 s") as stalled:
        check_signature(source, layers, key, SignatureLimits(stall_seconds=1.0), clock=lambda: next(ticks))
    assert "\n" not in str(stalled.value)


def test_the_other_checks_keep_their_own_budget(signed: Signed) -> None:
    """The signature reads every byte; the KServe checks of the same run still read tar headers only."""
    report = ocimodel.verify(signed.plain, sign_key_pub=signed.key.public)
    assert {how for _, c in report.layers for how in [c.how]} <= {"read", "annotations"}
    assert report.checks[-1].id == "signature.model"


def test_a_missing_public_key_is_one_line(signed: Signed, tmp_path: Path) -> None:
    result = run_cli("verify", signed.plain, "--sign-key-pub", tmp_path / "nope.pub")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ocimodel: error: public key ")
    assert "Traceback" not in result.stderr


# --- a real registry -----------------------------------------------------------------------------------------------


def test_a_registry_image_is_verified_by_streaming_its_layers(
    signed: Signed, tmp_path: Path, registry: Registry
) -> None:
    repo = f"{registry.host}/sigverify/model"
    good = ocimodel.push(signed.gzip, f"{repo}:good")
    members, name, _ = TAMPERINGS["one-byte"]
    bad_layout = add_layer(signed.plain, tmp_path / "bad.oci", tar_layer(members))
    bad = ocimodel.push(bad_layout, f"{repo}:bad")

    ok = run_cli("verify", f"{repo}@{good.digest}", "--mode", "native", "--sign-key-pub", signed.key.public, "--json")
    assert ok.returncode == 0, ok.stderr
    check = json.loads(ok.stdout)["checks"][-1]
    assert (check["id"], check["result"]) == ("signature.model", "pass")

    failed = run_cli("verify", f"{repo}:bad", "--mode", "native", "--sign-key-pub", signed.key.public)
    assert failed.returncode == 3, failed.stderr
    (line,) = [ln for ln in failed.stdout.splitlines() if ln.startswith("signature.model")]
    assert "FAIL" in line and name in line
    assert bad.digest != good.digest
    assert hashlib.sha256(FILES[WEIGHTS]).hexdigest()[:16] in line
