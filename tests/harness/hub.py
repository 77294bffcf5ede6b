"""A HuggingFace Hub look-alike served in-process on 127.0.0.1, reached by setting ``HF_ENDPOINT`` to its URL.

It answers the calls huggingface_hub 2.x makes to resolve, list and download a model repo, with the fields and
headers it reads (see ``hf_api.py``: ``model_info``, ``list_repo_tree``; ``file_download.py``:
``get_hf_file_metadata``, ``http_get``; ``utils/_http.py``: ``hf_raise_for_status``):

- ``GET /api/models/{repo}[/revision/{rev}]``: ``id``, ``sha``, ``gated``, ``cardData`` (the README's front matter),
  ``siblings`` (sizes, blob ids and LFS info with ``?blobs=true``); ``expand`` keeps only the listed properties,
  as the Hub does, so a client that forgets to ask for something does not get it.
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=``: files (``oid``, ``size``, ``lfs``) and directories,
  a few per page with a ``Link: rel="next"`` header, so pagination is exercised.
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` (the git blob id, or the sha256 for
  LFS files, which also get ``X-Linked-Etag``/``X-Linked-Size``), ``Content-Length``. No Xet headers, so hf_xet
  never engages and every byte comes from here.

Errors carry the ``X-Error-Code`` huggingface_hub maps to exceptions: ``RepoNotFound`` (404), ``RevisionNotFound``
(404), ``EntryNotFound`` (404), ``GatedRepo`` (401 without a token, 403 with a token not granted access). A token the
server does not know gets 401 "Invalid credentials in Authorization header" on any call, like the Hub. As on the
Hub, a gated repo's metadata and file list are public; only its files need a granted token.

Every request is logged (``HubServer.requests``) so tests can assert what was, and was not, fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import yaml

#: What the tests' repos store in LFS, as a Hub repo's .gitattributes would say.
LFS_SUFFIXES = frozenset({".safetensors", ".pth", ".bin"})
GITATTRIBUTES = b"".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n".encode() for s in sorted(LFS_SUFFIXES))
#: Entries per tree page: small, so that listing a test repo takes several pages.
TREE_PAGE_SIZE = 3

GRANTED_TOKEN = "hf_testGrantedTokenDoNotLeak0123456789"
UNGRANTED_TOKEN = "hf_testUngrantedToken9876543210abcdef"


def safetensors(tensors: dict[str, tuple[int, ...]], seed: int) -> bytes:
    """A well-formed safetensors file of float32 tensors with deterministic, seed-dependent contents."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in sorted(tensors.items()):
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + 4 * count]}
        offset += 4 * count
    data = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(offset // 32 + 1))[:offset]
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return PurePosixPath(path).suffix in LFS_SUFFIXES


@dataclass(frozen=True)
class Commit:
    sha: str
    files: dict[str, bytes]

    @classmethod
    def of(cls, files: dict[str, bytes], parent: str = "") -> Commit:
        digest = hashlib.sha1(parent.encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_id(files[path])}\0".encode())
        return cls(digest.hexdigest(), dict(files))

    def card_data(self) -> dict[str, Any] | None:
        readme = self.files.get("README.md", b"").decode()
        if not readme.startswith("---\n"):
            return None
        return yaml.safe_load(readme[4 : readme.index("\n---", 4)])

    def directories(self) -> set[str]:
        return {str(parent) for path in self.files for parent in PurePosixPath(path).parents if str(parent) != "."}


@dataclass
class HubRepo:
    repo_id: str
    commits: list[Commit]
    refs: dict[str, str]
    gated: bool = False

    def resolve(self, revision: str) -> Commit | None:
        sha = self.refs.get(revision, revision)
        return next((c for c in self.commits if c.sha == sha), None)

    def at(self, revision: str) -> Commit:
        """The commit a branch, tag or sha names, for tests that know it exists."""
        commit = self.resolve(revision)
        if commit is None:
            raise KeyError(revision)
        return commit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None


@dataclass
class HubServer:
    repos: dict[str, HubRepo]
    #: token → repo ids it may read when they are gated.
    tokens: dict[str, set[str]]
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def mark(self) -> int:
        """Where the request log ends now: ``requests_since(mark)`` is what one command did."""
        with self._lock:
            return len(self.requests)

    def requests_since(self, mark: int) -> list[Request]:
        with self._lock:
            return self.requests[mark:]

    def file_requests_since(self, mark: int) -> list[str]:
        """Paths of repo files requested (HEAD or GET ``/resolve/``) since ``mark``."""
        resolved = [r.path.split("/resolve/", 1)[1] for r in self.requests_since(mark) if "/resolve/" in r.path]
        return [rest.split("/", 1)[1] for rest in resolved]


def tiny_repo() -> HubRepo:
    """``acme/tiny``: tag ``v1`` is the older commit, ``main`` the newer one; they differ in every file but one."""
    v1 = Commit.of(
        {
            ".gitattributes": GITATTRIBUTES,
            "README.md": b"---\nlicense: apache-2.0\ntags: [tiny]\n---\n# tiny v1\n",
            "config.json": b'{"model_type": "tiny", "hidden_size": 8}\n',
            "model.safetensors": safetensors({"embed.weight": (64, 8), "lm_head.weight": (64, 8)}, seed=1),
            "original/consolidated.pth": hashlib.sha256(b"pth v1").digest() * 512,
        }
    )
    main = Commit.of(
        {
            ".gitattributes": GITATTRIBUTES,
            "README.md": b"---\nlicense: mit\ntags: [tiny]\n---\n# tiny v2\n",
            "config.json": b'{"model_type": "tiny", "hidden_size": 16}\n',
            "generation_config.json": b'{"max_new_tokens": 4}\n',
            "model-00001-of-00002.safetensors": safetensors({"embed.weight": (128, 16)}, seed=2),
            "model-00002-of-00002.safetensors": safetensors({"lm_head.weight": (128, 16)}, seed=3),
            "model.safetensors.index.json": b'{"weight_map": {"embed.weight": "model-00001-of-00002.safetensors",'
            b' "lm_head.weight": "model-00002-of-00002.safetensors"}}\n',
            "tokenizer/tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
            "original/consolidated.pth": hashlib.sha256(b"pth v2").digest() * 1024,
            "original/params.json": b'{"dim": 16}\n',
        },
        parent=v1.sha,
    )
    return HubRepo("acme/tiny", [v1, main], {"main": main.sha, "v1": v1.sha})


def gated_repo() -> HubRepo:
    """``acme/gated``: one commit whose files need a token granted access."""
    commit = Commit.of(
        {
            ".gitattributes": GITATTRIBUTES,
            "README.md": b"---\nlicense: llama3.1\nextra_gated_prompt: Accept the license\n---\n# gated\n",
            "config.json": b'{"model_type": "gated"}\n',
            "model.safetensors": safetensors({"w": (32, 32)}, seed=4),
        }
    )
    return HubRepo("acme/gated", [commit], {"main": commit.sha}, gated=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._handle(body=False)

    def do_GET(self) -> None:
        self._handle(body=True)

    def _handle(self, body: bool) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        query = parse_qs(split.query, keep_blank_values=True)
        authorization = self.headers.get("Authorization")
        hub.log(Request(self.command, unquote(split.path), query, authorization))
        self._body = body
        token = authorization.removeprefix("Bearer ") if authorization else None
        if token is not None and token not in hub.tokens:
            return self._error(401, None, "Invalid credentials in Authorization header")
        if segments[:2] == ["api", "models"] and len(segments) >= 4:
            repo = self._repo("/".join(segments[2:4]))
            if repo is None:
                return None
            rest = segments[4:]
            if not rest or (rest[0] == "revision" and len(rest) == 2):
                return self._info(repo, rest[1] if rest else "main", query)
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo, rest[1], "/".join(rest[2:]), query)
        elif len(segments) >= 5 and segments[2] == "resolve":
            repo = self._repo("/".join(segments[:2]))
            if repo is None:
                return None
            return self._resolve(repo, segments[3], "/".join(segments[4:]), token)
        return self._error(404, None, "Not Found")

    def _repo(self, repo_id: str) -> HubRepo | None:
        repo = self.server.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _commit(self, repo: HubRepo, revision: str) -> Commit | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _info(self, repo: HubRepo, revision: str, query: dict[str, list[str]]) -> None:
        commit = self._commit(repo, revision)
        if commit is None:
            return
        blobs = query.get("blobs") == ["True"] or query.get("blobs") == ["true"]
        siblings = []
        for path in sorted(commit.files):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                data = commit.files[path]
                sibling.update(size=len(data), blobId=git_blob_id(data))
                if is_lfs(path):
                    sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        }
        card = commit.card_data()
        if card is not None:
            info["cardData"] = card
        expand = query.get("expand", []) + query.get("expand[]", [])
        if expand:
            info = {k: v for k, v in info.items() if k in {"_id", "id", *expand}}
        self._json(200, info)

    def _tree(self, repo: HubRepo, revision: str, folder: str, query: dict[str, list[str]]) -> None:
        commit = self._commit(repo, revision)
        if commit is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{folder}/" if folder else ""
        entries: list[dict[str, Any]] = []
        for directory in sorted(commit.directories()):
            if directory.startswith(prefix) and (recursive or "/" not in directory[len(prefix) :]):
                oid = git_blob_id(directory.encode())
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": directory})
        for path in sorted(commit.files):
            if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :]):
                data = commit.files[path]
                entry: dict[str, Any] = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
                if is_lfs(path):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
        start = int(query.get("cursor", ["0"])[0])
        headers = {}
        if start + TREE_PAGE_SIZE < len(entries):
            params = {k: v[0] for k, v in query.items() if k != "cursor"} | {"cursor": str(start + TREE_PAGE_SIZE)}
            headers["Link"] = f'<{self.server.hub.url}{urlsplit(self.path).path}?{urlencode(params)}>; rel="next"'
        self._json(200, entries[start : start + TREE_PAGE_SIZE], headers)

    def _resolve(self, repo: HubRepo, revision: str, path: str, token: str | None) -> None:
        if repo.gated and repo.repo_id not in self.server.hub.tokens.get(token or "", set()):
            if token is None:
                message = (
                    f"Access to model {repo.repo_id} is restricted. You must have access to it and be authenticated"
                    " to access it. Please log in."
                )
                return self._error(401, "GatedRepo", message)
            message = (
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized list."
                f" Visit {self.server.hub.url}/{repo.repo_id} to ask for access."
            )
            return self._error(403, "GatedRepo", message)
        commit = self._commit(repo, revision)
        if commit is None:
            return
        data = commit.files.get(path)
        if data is None:
            message = f"{path} does not exist on {revision}"
            return self._error(404, "EntryNotFound", message, {"X-Repo-Commit": commit.sha})
        headers = {"X-Repo-Commit": commit.sha, "Content-Type": "application/octet-stream"}
        if is_lfs(path):
            sha256 = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{git_blob_id(data)}"'
        self._send(200, data, headers)

    def _error(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
        error_headers = {"X-Error-Message": message, **(headers or {})}
        if code is not None:
            error_headers["X-Error-Code"] = code
        self._json(status, {"error": message}, error_headers)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self._body:
            self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


@contextmanager
def run_hub(repos: list[HubRepo], tokens: dict[str, set[str]]) -> Iterator[HubServer]:
    """Serve ``repos`` on 127.0.0.1:<free port> until the block ends."""
    server = _Server(("127.0.0.1", 0), _Handler)
    hub = HubServer({r.repo_id: r for r in repos}, tokens, f"http://127.0.0.1:{server.server_address[1]}")
    server.hub = hub
    thread = threading.Thread(target=server.serve_forever, name="hub-server", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def hub_env(hub: HubServer, home: Path) -> dict[str, str]:
    """The machine's environment without any HF setting of its own, pointed at ``hub``, with fresh caches in ``home``:
    a CLI run in it does exactly what it would against the real Hub."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_"))}
    return clean | {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(home / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "XDG_CACHE_HOME": str(home / "cache"),
    }
