"""``ocimodel pack ORG/NAME``: HuggingFace Hub repos as sources, against the local Hub look-alike in tests/harness/hub.

The CLI runs as a subprocess with ``HF_ENDPOINT`` at the test server and ``HF_HOME`` in a temporary folder, so
huggingface_hub does exactly what it would do against the real Hub, and the server's request log shows what was
fetched. ``--base scratch`` keeps registries out of it.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.cli import assert_clean_error, pack, run_cli
from tests.harness.hub import GRANTED_TOKEN, UNGRANTED_TOKEN, HubServer, gated_repo, hub_env, run_hub, tiny_repo

TINY = tiny_repo()
GATED = gated_repo()
TINY_MAIN = TINY.at("main")
TINY_V1 = TINY.at("v1")


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    with run_hub([tiny_repo(), gated_repo()], {GRANTED_TOKEN: {"acme/gated"}, UNGRANTED_TOKEN: set()}) as running:
        yield running


@pytest.fixture
def env(tmp_path: Path, hub: HubServer) -> dict[str, str]:
    return hub_env(hub, tmp_path)


@dataclass(frozen=True)
class Image:
    annotations: dict[str, str]
    files: dict[str, bytes]
    member_types: dict[str, bytes]


def read_image(layout: Path, digest: str) -> Image:
    """The manifest's annotations and what its layers put under /models."""

    def blob(d: str) -> Path:
        return layout / "blobs" / "sha256" / d.removeprefix("sha256:")

    index = json.loads((layout / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digest]
    manifest = json.loads(blob(digest).read_bytes())
    files: dict[str, bytes] = {}
    types: dict[str, bytes] = {}
    for layer in manifest["layers"]:
        with tarfile.open(blob(layer["digest"])) as tar:
            for member in tar.getmembers():
                types[member.name] = member.type
                if member.isreg():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    files[member.name.removeprefix("models/")] = extracted.read()
    return Image(manifest.get("annotations", {}), files, types)


def layout_state(layout: Path) -> dict[str, bytes] | None:
    """Every file of a layout and its bytes, or None if there is no layout."""
    if not layout.exists():
        return None
    return {str(p.relative_to(layout)): p.read_bytes() for p in sorted(layout.rglob("*")) if p.is_file()}


def without(files: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    return {p: d for p, d in files.items() if not p.startswith(prefix)}


# --- resolving and packing ------------------------------------------------------------------------------------------


def test_pack_default_branch_records_commit_source_and_license(
    env: dict[str, str], hub: HubServer, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    digest = pack("acme/tiny", layout, env=env)

    image = read_image(layout, digest)
    assert image.files == TINY_MAIN.files
    assert image.annotations == {
        "org.opencontainers.image.title": "acme/tiny",
        "org.opencontainers.image.source": f"{hub.url}/acme/tiny",
        "org.opencontainers.image.revision": TINY_MAIN.sha,
        "org.opencontainers.image.licenses": "mit",
    }


def test_cache_links_are_packed_as_the_files_they_point_to(env: dict[str, str], tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    digest = pack("acme/tiny", layout, env=env)

    snapshot = tmp_path / "hf" / "hub" / "models--acme--tiny" / "snapshots" / TINY_MAIN.sha
    linked = [p for p in snapshot.rglob("*") if p.is_symlink()]
    assert len(linked) == len(TINY_MAIN.files), "the HF cache should hold links into blobs/, or this test tests nothing"
    image = read_image(layout, digest)
    file_members = {name: kind for name, kind in image.member_types.items() if kind != tarfile.DIRTYPE}
    assert file_members == {f"models/{p}": tarfile.REGTYPE for p in TINY_MAIN.files}


def test_older_revision_by_tag_or_commit(env: dict[str, str], tmp_path: Path) -> None:
    by_tag = pack("acme/tiny", tmp_path / "by-tag", "--revision", "v1", env=env)
    by_commit = pack("acme/tiny", tmp_path / "by-commit", "--revision", TINY_V1.sha, env=env)

    assert by_tag == by_commit
    image = read_image(tmp_path / "by-tag", by_tag)
    assert image.files == TINY_V1.files
    assert image.annotations["org.opencontainers.image.revision"] == TINY_V1.sha
    assert image.annotations["org.opencontainers.image.licenses"] == "apache-2.0"


def test_same_commit_gives_same_digest_from_warm_cold_and_other_caches(
    env: dict[str, str], hub: HubServer, tmp_path: Path
) -> None:
    first = pack("acme/tiny", tmp_path / "first", env=env)

    mark = hub.mark()
    again = pack("hf://acme/tiny", tmp_path / "again", env=env)
    assert hub.file_requests_since(mark) == [], "a warm cache should serve every file"

    other_cache = tmp_path / "other-cache"
    mark = hub.mark()
    elsewhere = pack("acme/tiny", tmp_path / "elsewhere", "--cache-dir", str(other_cache), env=env)
    assert sorted(set(hub.file_requests_since(mark))) == sorted(TINY_MAIN.files)
    assert (other_cache / "models--acme--tiny" / "snapshots" / TINY_MAIN.sha).is_dir()

    assert first == again == elsewhere


def test_excluded_files_are_never_requested(env: dict[str, str], hub: HubServer, tmp_path: Path) -> None:
    mark = hub.mark()
    digest = pack("acme/tiny", tmp_path / "layout", "--exclude", "original/*", env=env)

    fetched = set(hub.file_requests_since(mark))
    assert fetched == set(without(TINY_MAIN.files, "original/"))
    assert read_image(tmp_path / "layout", digest).files == without(TINY_MAIN.files, "original/")


def test_include_and_directory_exclude_use_the_local_filter_rules(
    env: dict[str, str], hub: HubServer, tmp_path: Path
) -> None:
    mark = hub.mark()
    digest = pack("acme/tiny", tmp_path / "layout", "--include", "*.json", "--exclude", "original/", env=env)

    expected = {p: d for p, d in TINY_MAIN.files.items() if p.endswith(".json") and not p.startswith("original/")}
    assert "tokenizer/tokenizer.json" in expected, "'*' crosses '/', as in huggingface_hub's allow_patterns"
    assert set(hub.file_requests_since(mark)) == set(expected)
    assert read_image(tmp_path / "layout", digest).files == expected


def test_filters_that_match_nothing_fail_before_downloading(
    env: dict[str, str], hub: HubServer, tmp_path: Path
) -> None:
    mark = hub.mark()
    result = run_cli("pack", "acme/tiny", str(tmp_path / "layout"), "--base", "scratch", "--include", "*.gguf", env=env)

    assert_clean_error(result, "acme/tiny", "include/exclude")
    assert hub.file_requests_since(mark) == []
    assert not (tmp_path / "layout").exists()


def test_hub_metadata_reaches_source_files(env: dict[str, str]) -> None:
    """LFS sha256s end up on SourceFile, and the library leaves the environment alone."""
    script = textwrap.dedent(
        """
        import json, os
        from ocimodel.source import Filters, open_source
        before = dict(os.environ)
        source = open_source("acme/tiny")
        files = source.files(Filters(exclude=("original/",)))
        print(json.dumps({"same": dict(os.environ) == before, "lfs": {f.path: f.lfs_sha256 for f in files}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["same"]
    assert seen["lfs"] == {
        path: hashlib.sha256(data).hexdigest() if path.endswith(".safetensors") else None
        for path, data in without(TINY_MAIN.files, "original/").items()
    }


def test_the_cli_turns_on_hf_xet_high_performance_unless_the_user_chose(env: dict[str, str], tmp_path: Path) -> None:
    """hf_xet reads its settings when its first download starts; the CLI sets them before, the library never."""
    script = textwrap.dedent(
        """
        import json, os, sys
        from ocimodel import cli
        sys.argv = ["ocimodel", *sys.argv[1:]]
        try:
            cli.main()
        except SystemExit as exit:
            assert not exit.code, exit.code
        print(json.dumps([os.environ.get(k) for k in ("HF_XET_HIGH_PERFORMANCE", "HF_XET_CHUNK_CACHE_SIZE_BYTES")]))
        """
    )
    for preset, expected in ((None, "1"), ("0", "0")):
        run_env = env | ({"HF_XET_HIGH_PERFORMANCE": preset} if preset else {})
        layout = tmp_path / f"layout-{preset}"
        result = subprocess.run(
            [sys.executable, "-c", script, "pack", "acme/tiny", str(layout), "--base", "scratch"],
            env=run_env, capture_output=True, text=True, timeout=120, check=False,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1]) == [expected, None], "no chunk-cache change for pack"


def test_download_progress_is_one_plain_line_per_file_off_a_terminal(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli("pack", "acme/tiny", str(tmp_path / "layout"), "--base", "scratch", env=env)

    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "it/s" not in result.stderr, "no tqdm bars in logs"
    for path in TINY_MAIN.files:
        assert sum(line.startswith(f"download {path}: done") for line in result.stderr.splitlines()) == 1, result.stderr


# --- tokens and gated repos -----------------------------------------------------------------------------------------


def test_gated_repo_without_token_fails_cleanly_and_leaves_the_layout_alone(
    env: dict[str, str], tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh"
    result = run_cli("pack", "acme/gated", str(fresh), "--base", "scratch", env=env)
    assert_clean_error(result, "acme/gated", "HF_TOKEN", "accept its license")
    assert not fresh.exists()

    existing = tmp_path / "existing"
    pack("acme/tiny", existing, env=env)
    before = layout_state(existing)
    for token_env in ({}, {"HF_TOKEN": UNGRANTED_TOKEN}):
        result = run_cli("pack", "acme/gated", str(existing), "--base", "scratch", env=env | token_env)
        assert_clean_error(result, "acme/gated", "HF_TOKEN", "accept its license")
        assert UNGRANTED_TOKEN not in result.stderr
        assert layout_state(existing) == before


def test_token_is_used_for_the_download_and_appears_nowhere_else(
    env: dict[str, str], hub: HubServer, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    mark = hub.mark()
    result = run_cli("-v", "pack", "acme/gated", str(layout), "--base", "scratch", env=env | {"HF_TOKEN": GRANTED_TOKEN})

    assert result.returncode == 0, result.stderr
    image = read_image(layout, result.stdout.strip())
    assert image.files == GATED.at("main").files
    assert image.annotations["org.opencontainers.image.licenses"] == "llama3.1"
    downloads = [r for r in hub.requests_since(mark) if "/resolve/" in r.path]
    assert downloads and all(r.authorization == f"Bearer {GRANTED_TOKEN}" for r in downloads)
    assert GRANTED_TOKEN not in result.stdout + result.stderr
    for blob in layout.rglob("*"):
        if blob.is_file():
            assert GRANTED_TOKEN.encode() not in blob.read_bytes(), f"token leaked into {blob}"


def test_invalid_token_is_named_as_the_problem(env: dict[str, str], tmp_path: Path) -> None:
    bad_token = env | {"HF_TOKEN": "hf_notAValidToken"}
    result = run_cli("pack", "acme/tiny", str(tmp_path / "layout"), "--base", "scratch", env=bad_token)

    line = assert_clean_error(result, "acme/tiny", "rejected the token", "HF_TOKEN")
    assert "hf_notAValidToken" not in line


# --- what cannot be packed ------------------------------------------------------------------------------------------


def test_unknown_repo(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli("pack", "acme/nope", str(tmp_path / "layout"), "--base", "scratch", env=env)

    assert_clean_error(result, "acme/nope", "not found", "HF_TOKEN")
    assert not (tmp_path / "layout").exists()


def test_unknown_revision(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli("pack", "acme/tiny", str(tmp_path / "layout"), "--base", "scratch", "--revision", "v9", env=env)

    assert_clean_error(result, "acme/tiny", "'v9'", "check the revision")
    assert not (tmp_path / "layout").exists()


def test_unreachable_hub(env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = run_cli("pack", "acme/tiny", str(tmp_path / "layout"), "--base", "scratch", env=env | {"HF_ENDPOINT": closed})

    assert_clean_error(result, "acme/tiny", "cannot reach", closed, "HF_HUB_OFFLINE=1")
    assert not (tmp_path / "layout").exists()


def test_offline_with_empty_cache(env: dict[str, str], hub: HubServer, tmp_path: Path) -> None:
    mark = hub.mark()
    result = run_cli("pack", "acme/tiny", str(tmp_path / "layout"), "--base", "scratch", env=env | {"HF_HUB_OFFLINE": "1"})

    assert_clean_error(result, "HF_HUB_OFFLINE", "acme/tiny@main", "not in the HF cache")
    assert hub.requests_since(mark) == []
    assert not (tmp_path / "layout").exists()


def test_offline_packs_the_cached_snapshot_identically(env: dict[str, str], hub: HubServer, tmp_path: Path) -> None:
    online = pack("acme/tiny", tmp_path / "online", env=env)

    offline_env = env | {"HF_HUB_OFFLINE": "1"}
    mark = hub.mark()
    assert pack("acme/tiny", tmp_path / "offline", env=offline_env) == online
    assert pack("acme/tiny", tmp_path / "by-commit", "--revision", TINY_MAIN.sha, env=offline_env) == online
    assert hub.requests_since(mark) == []
    result = run_cli("pack", "acme/tiny", str(tmp_path / "v1"), "--base", "scratch", "--revision", "v1", env=offline_env)
    assert_clean_error(result, "HF_HUB_OFFLINE", "acme/tiny@v1")


def test_offline_refuses_a_snapshot_the_hf_cache_knows_is_incomplete(env: dict[str, str], tmp_path: Path) -> None:
    """A cache filled by huggingface_hub's own snapshot download (``hf download``) records the file list."""
    fill = "from huggingface_hub import snapshot_download; snapshot_download('acme/tiny', allow_patterns=['*.json'])"
    subprocess.run([sys.executable, "-c", fill], env=env, capture_output=True, timeout=120, check=True)
    offline_env = env | {"HF_HUB_OFFLINE": "1"}

    result = run_cli("pack", "acme/tiny", str(tmp_path / "all"), "--base", "scratch", env=offline_env)
    assert_clean_error(result, "HF_HUB_OFFLINE", "acme/tiny", "lacks files")
    digest = pack("acme/tiny", tmp_path / "json", "--include", "*.json", env=offline_env)
    assert set(read_image(tmp_path / "json", digest).files) == {p for p in TINY_MAIN.files if p.endswith(".json")}


def test_revision_does_not_apply_to_a_directory(env: dict[str, str], tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")

    result = run_cli("pack", str(model), str(tmp_path / "layout"), "--base", "scratch", "--revision", "main", env=env)
    assert_clean_error(result, str(model), "--revision", code=2)


def test_source_that_is_neither_directory_nor_repo_id(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli("pack", str(tmp_path / "missing"), str(tmp_path / "layout"), "--base", "scratch", env=env)

    assert_clean_error(result, str(tmp_path / "missing"), "neither an existing directory nor a HuggingFace repo id")
