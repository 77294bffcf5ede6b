"""A HuggingFace Hub model repo as a source: resolve the revision once, download into the HF cache, pack that.

Everything goes through huggingface_hub, so the standard environment (``HF_TOKEN`` or the saved login,
``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``) and the cache are shared with every other HF tool
on the machine. The revision is turned into a commit before anything is fetched and every file is fetched at that
commit, so a branch that moves mid-download cannot mix two versions into one image.

Files land in the cache as links into ``blobs/``; the snapshot folder is then walked like a local directory, which
packs what the links point to. Nothing here reads the token: huggingface_hub attaches it to its own requests, so it
cannot reach a message, an annotation or a log line of ours.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx2
import yaml
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.repocard import metadata_load

from ocimodel import __version__
from ocimodel.errors import SourceError
from ocimodel.parallel import check, run_all
from ocimodel.progress import Reporter, SilentReporter, Task
from ocimodel.source import Filters, Provenance, SourceFile, check_model_path, confinement, pin
from ocimodel.source.local import LocalSource

ANNOTATION_LICENSES = "org.opencontainers.image.licenses"
#: Files fetched at once, as huggingface_hub's snapshot_download does; hf_xet parallelises inside each file.
DOWNLOAD_WORKERS = 8
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HubFile:
    """A file of the repo at the resolved commit, as the Hub lists it."""

    path: str
    size: int
    lfs_sha256: str | None


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    #: What the user asked for: a branch, a tag or a commit.
    revision: str
    commit: str
    cache_dir: Path
    provenance: Provenance
    reporter: Reporter
    #: The repo's files at ``commit``; None offline, where only the cache can say what there is.
    listing: tuple[HubFile, ...] | None
    #: Paths this run downloaded (not found in the cache): the only ones ``release`` may delete.
    downloaded: set[str] = field(default_factory=set, compare=False, repr=False)

    @classmethod
    def open(
        cls,
        repo_id: str,
        *,
        revision: str | None = None,
        cache_dir: Path | None = None,
        reporter: Reporter | None = None,
    ) -> HubSource:
        """Resolve ``revision`` (default ``main``) to a commit and read the repo's file list and model card metadata.

        Only metadata moves here; a missing repo or revision, or no network, fails before any download.
        """
        # "main", as every HF tool defaults to: the cache's refs/main then means the same to all of them.
        revision = revision or constants.DEFAULT_REVISION
        cache = Path(cache_dir or constants.HF_HUB_CACHE).expanduser().resolve()
        reporter = reporter or SilentReporter()
        if constants.is_offline_mode():
            return cls._open_cached(repo_id, revision, cache, reporter)
        api = HfApi(library_name="ocimodel", library_version=__version__)
        with _explained(repo_id, revision):
            info = api.model_info(repo_id, revision=revision, expand=["sha", "cardData"])
            if info.sha is None or not _COMMIT.fullmatch(info.sha):
                raise SourceError(f"{_public(constants.ENDPOINT)} did not say which commit {repo_id}@{revision} is")
            listing = tuple(
                HubFile(entry.path, entry.size, entry.lfs.sha256 if entry.lfs else None)
                for entry in api.list_repo_tree(repo_id, revision=info.sha, recursive=True)
                if isinstance(entry, RepoFile)
            )
        card = info.card_data
        provenance = _provenance(repo_id, info.sha, card.get("license") if card else None)
        return cls(repo_id, revision, info.sha, cache, provenance, reporter, listing)

    @classmethod
    def _open_cached(cls, repo_id: str, revision: str, cache: Path, reporter: Reporter) -> HubSource:
        """HF_HUB_OFFLINE: a commit, or a branch/tag that the cache recorded under ``refs/`` when it downloaded."""
        storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
        ref = storage / "refs" / revision
        if _COMMIT.fullmatch(revision):
            commit = revision
        elif ref.is_file():
            commit = ref.read_text().strip()
        else:
            commit = ""
        snapshot = storage / "snapshots" / commit
        if not commit or not snapshot.is_dir():
            raise SourceError(
                f"HF_HUB_OFFLINE is set and {repo_id}@{revision} is not in the HF cache {cache}; "
                "unset HF_HUB_OFFLINE to download it, or point the Hub cache (HF_HUB_CACHE) at one that has it"
            )
        provenance = _provenance(repo_id, commit, _cached_license(snapshot / "README.md"))
        return cls(repo_id, revision, commit, cache, provenance, reporter, None)

    @property
    def storage(self) -> Path:
        """The repo's folder in the HF cache (its layout is huggingface_hub's documented cache format)."""
        return self.cache_dir / repo_folder_name(repo_id=self.repo_id, repo_type="model")

    @property
    def snapshot(self) -> Path:
        return self.storage / "snapshots" / self.commit

    @property
    def root(self) -> Path:
        return self.snapshot

    def files(self, filters: Filters) -> list[SourceFile]:
        """Download what ``filters`` let through (nothing else is requested); offline, walk the cached snapshot."""
        if self.listing is None:
            self._check_cached(filters)
            return [replace(f, lfs_sha256=_cached_lfs_sha256(f.local)) for f in
                    LocalSource.from_path(self.snapshot).files(filters)]
        planned = self.planned(filters)
        self.fetch(planned)
        return [pin(f, confinement(self.root)) for f in planned]

    def planned(self, filters: Filters) -> list[SourceFile]:
        """The files ``filters`` select, from the Hub's listing alone: nothing is downloaded yet.

        Each file's ``local`` is where the snapshot will have it once ``fetch`` ran, so a build can plan every layer,
        look digests up in its cache, and download a layer's files only when it has to send them.
        """
        if self.listing is None:
            return self.files(filters)  # offline: the cache is all there is, and it is on disk already
        wanted = [f for f in self.listing if filters.allows(f.path)]
        if not wanted:
            raise SourceError(
                f"no file of {self.repo_id}@{self.commit} matches the include/exclude patterns "
                f"(it has {len(self.listing)}: check the globs)"
            )
        for f in wanted:
            check_model_path(f.path)
        self._record_ref()
        return sorted(
            (SourceFile(f.path, self.snapshot / f.path, f.size, f.lfs_sha256) for f in wanted), key=lambda f: f.sort_key
        )

    def fetch(self, files: Sequence[SourceFile], stop: threading.Event | None = None) -> None:
        """Download ``files`` (from ``planned``) into the snapshot; those already cached cost nothing.

        ``stop`` is the caller's: when its other work fails or the user interrupts, downloads end within a chunk
        instead of running to the end of multi-GB files.
        """
        if self.listing is not None:
            self._download([HubFile(f.path, f.size, f.lfs_sha256) for f in files], stop)

    def release(self, files: Sequence[SourceFile]) -> None:
        """Delete ``files`` from the HF cache (link and blob), for builds that must stay under a disk budget.

        Only files this run downloaded: what was in the cache before may be shared with other snapshots (the cache
        stores identical content once) and belongs to the user.
        """
        for f in files:
            if f.path not in self.downloaded:
                continue
            link = self.snapshot / f.path
            try:
                blob = link.resolve()
                link.unlink(missing_ok=True)
                if blob != link and self.storage in blob.parents:
                    blob.unlink(missing_ok=True)
            except OSError:
                pass  # what cannot be deleted only costs disk

    def _check_cached(self, filters: Filters) -> None:
        """Offline, let huggingface_hub compare the snapshot with the file list it cached, when it has one.

        It has one when the cache was filled by ``hf download``/snapshot_download; an interrupted one then fails here
        instead of packing half a model.
        """
        with _explained(self.repo_id, self.commit):
            snapshot_download(
                self.repo_id,
                revision=self.commit,
                cache_dir=self.cache_dir,
                local_files_only=True,
                allow_patterns=list(filters.include) or None,
                ignore_patterns=list(filters.exclude) or None,
            )

    def _record_ref(self) -> None:
        """Note in the cache which commit the branch or tag named, as huggingface_hub does when it resolves one.

        Every file was fetched by commit, so huggingface_hub did not note it; without it, a later HF_HUB_OFFLINE
        pack of the same branch or tag (by us or any HF tool) would not find this snapshot. A cache we may read but
        not write still packs: the note only helps later offline runs.
        """
        if self.revision == self.commit:
            return
        ref = self.storage / "refs" / self.revision
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            partial = ref.with_name(f".{ref.name}.{os.getpid()}.{threading.get_ident()}")
            partial.write_text(self.commit)
            partial.replace(ref)
        except OSError:
            pass

    def _download(self, wanted: Sequence[HubFile], outer: threading.Event | None = None) -> None:
        """Fetch files concurrently; the first failure (or Ctrl-C, or ``outer``) stops the others between chunks."""
        with _explained(self.repo_id, self.commit):
            run_all(lambda file, stop: self._fetch(file, (stop, outer)), wanted, DOWNLOAD_WORKERS, "hub")

    def _fetch(self, file: HubFile, stops: tuple[threading.Event | None, ...]) -> None:
        task = self.reporter.task(f"download {file.path}", file.size)
        bar = _progress_bar(task, stops)
        # At a commit, a file already in the cache costs no request at all; it is reported as such, not as 0 bytes.
        hf_hub_download(
            self.repo_id,
            file.path,
            revision=self.commit,
            cache_dir=self.cache_dir,
            library_name="ocimodel",
            library_version=__version__,
            tqdm_class=bar,  # type: ignore[arg-type]
        )
        if bar.received == 0 and file.size:
            task.finish("cached")
        else:
            self.downloaded.add(file.path)
            task.finish()


def _cached_lfs_sha256(local: Path) -> str | None:
    """The Hub's LFS sha256 of a cached file: huggingface_hub names LFS blobs by it (other blobs by a git sha1).

    Offline there is no listing to say it, and without it the image's file metadata would differ from an online
    pack's.
    """
    name = local.resolve().name
    return name if _SHA256.fullmatch(name) else None


def _cached_license(readme: Path) -> object:
    """The license in a cached model card's front matter: what the Hub parses into ``cardData`` for the API.

    Reading it offline keeps offline packs identical to online ones (when the README was downloaded before). A
    front matter the Hub could not parse has no cardData either, hence no license rather than an error.
    """
    if not readme.is_file():
        return None
    try:
        card = metadata_load(readme)
    except (yaml.YAMLError, ValueError):
        return None
    return (card or {}).get("license")


def _provenance(repo_id: str, commit: str, license: object) -> Provenance:
    extra = {ANNOTATION_LICENSES: license} if isinstance(license, str) and license else {}
    return Provenance(title=repo_id, source=f"{_public(constants.ENDPOINT)}/{repo_id}", revision=commit, extra=extra)


def _public(url: str) -> str:
    """The endpoint without any ``user:password@`` in it: it goes into the image and into messages."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class _ProgressBar:
    """Routes huggingface_hub's per-file progress into one of our tasks instead of a tqdm bar.

    ``hf_hub_download`` accepts any ``tqdm_class`` that mimics tqdm; this implements the part it drives, the same
    part as snapshot_download's own aggregating bar. tqdm bars would fight rich's live display on a terminal;
    our reporter draws bars there and prints one line per file in CI logs. File bytes count, not network bytes
    (``update_transfer``): with hf_xet they differ, and the task's total is the file size.
    """

    task: ClassVar[Task]
    stops: ClassVar[tuple[threading.Event | None, ...]]
    #: Bytes written; still 0 after the download means huggingface_hub found the file in the cache.
    received: ClassVar[int] = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.total: int | None = kwargs.get("total")

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: float | None = 1) -> None:
        for stop in self.stops:
            check(stop)
        type(self).received += int(n or 0)
        self.task.advance(int(n or 0))

    def update_transfer(self, n: float | None = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def set_transfer_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(task: Task, stops: tuple[threading.Event | None, ...]) -> type[_ProgressBar]:
    """A bar class bound to one file's task: huggingface_hub instantiates the class itself."""
    return type("_FileProgressBar", (_ProgressBar,), {"task": task, "stops": stops})


@contextmanager
def _explained(repo_id: str, revision: str) -> Iterator[None]:
    """huggingface_hub's exceptions as one line naming the repo and saying what to do."""
    endpoint = _public(constants.ENDPOINT)
    try:
        yield
    except GatedRepoError as exc:
        raise SourceError(
            f"{repo_id} is gated: log in at {endpoint}/{repo_id} and accept its license, "
            "then set HF_TOKEN to an access token of that account"
        ) from exc
    except RevisionNotFoundError as exc:
        raise SourceError(f"{repo_id} has no branch, tag or commit {revision!r}; check the revision") from exc
    except RepositoryNotFoundError as exc:
        raise SourceError(
            f"{repo_id} not found on {endpoint}: check the repo id; if it is private, set HF_TOKEN to a token that can "
            "read it"
        ) from exc
    except HfHubHTTPError as exc:
        if exc.response.status_code == 401:
            raise SourceError(
                f"{endpoint} rejected the token (HF_TOKEN or the saved login) while fetching {repo_id}; "
                "set HF_TOKEN to a valid access token"
            ) from exc
        detail = " ".join((exc.server_message or "").split()) or exc.response.reason_phrase
        raise SourceError(f"{endpoint} answered HTTP {exc.response.status_code} for {repo_id}: {detail}") from exc
    except IncompleteSnapshotError as exc:
        raise SourceError(
            f"HF_HUB_OFFLINE is set and the cached {repo_id}@{revision} lacks files this pack needs; "
            "unset HF_HUB_OFFLINE to download them"
        ) from exc
    except (LocalEntryNotFoundError, httpx2.TransportError) as exc:
        # hf_hub_download reports a failed metadata request as "not in the local cache", the network error as cause.
        cause = exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ else exc
        raise SourceError(
            f"cannot reach {endpoint} to fetch {repo_id} ({' '.join(str(cause).split()) or type(cause).__name__}); "
            "check the network, proxy and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to pack from the HF cache"
        ) from exc
    except OSError as exc:  # after the network ones: a full or read-only HF cache
        raise SourceError(
            f"cannot write {repo_id} into the HF cache: {exc.strerror or exc}; free space, or point the Hub cache "
            "(HF_HUB_CACHE) elsewhere"
        ) from exc
