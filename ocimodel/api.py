"""The Python API: what the ``ocimodel`` command line is a thin shell over, as go-containerregistry's ``crane``
package is to ``crane``.

Every function takes the CLI's defaults as keyword-only options, accepts paths as ``str`` or ``os.PathLike`` and
references as ``str`` or ``Reference``, returns a frozen result, raises ``OcimodelError`` subclasses, never prints and
never writes ``os.environ``. ``progress=None`` is silent; pass a callable taking ``ProgressEvent``, or a reporter
(``ocimodel.progress.make_reporter()`` is the CLI's). Setting ``stop`` (a ``threading.Event``) from another thread
cancels a call within a chunk of work, as Ctrl-C does; KeyboardInterrupt works too. What was complete is kept, and
calling again finishes the job.

Heavy modules are imported when a function runs, so ``import ocimodel`` stays cheap for the CLI and for callers
that only need a constant.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence, Union

from ocimodel.base import DEFAULT_BASE
from ocimodel.errors import InvalidArgument
from ocimodel.kserve import KINDS, SCHEMES
from ocimodel.layout.descriptor import Platform
from ocimodel.parallel import check as check_stop
from ocimodel.progress import CallbackReporter, CancellableReporter, ProgressCallback, Reporter, SilentReporter
from ocimodel.registry.reference import Reference, is_tag, parse_reference
from ocimodel.results import BuildResult, PackResult, PushResult

if TYPE_CHECKING:
    from ocimodel.image.source import ImageSource
    from ocimodel.registry.client import RegistryClient
    from ocimodel.signing.keys import Signer
    from ocimodel.retry import RetryPolicy
    from ocimodel.signing.keys import PublicKey
    from ocimodel.source import Source
    from ocimodel.verification import Report

PathLike = Union[str, "os.PathLike[str]"]
Progress = Union[ProgressCallback, Reporter, None]

#: Layer compressions: ``none`` (the default: weights barely compress, and nodes unpack uncompressed layers
#: fastest, docs/benchmarks.md), ``gzip``, ``zstd``.
COMPRESSIONS = ("none", "gzip", "zstd")
#: KServe's ways to get a model out of an image: ``modelcar`` (``oci://``), ``native`` and ``fetch``.
MODES = tuple(SCHEMES)
#: The KServe resources ``kserve_manifest`` writes.
SERVICE_KINDS = KINDS
DEFAULT_PLATFORM = "linux/amd64"
DEFAULT_JOBS = 4
#: Environment variable naming the base image when ``base`` is not given (a team's mirror of busybox, say).
BASE_IMAGE_ENV = "OCIMODEL_BASE_IMAGE"


# --- registries ----------------------------------------------------------------------------------------------------


class Registry:
    """Connections to registries, reused across calls: one per host, with its login, for callers that push many
    images. Use it as a context manager (or call ``close``).

    ``retry`` sets how often and how patiently failed requests and uploads are tried again (``RetryPolicy``).
    ``credentials`` maps a registry host (as written in references: ``ghcr.io``, ``localhost:5000``) to a user name
    and password or token; hosts not in it use what docker does (``REGISTRY_AUTH_FILE``, ``~/.docker/config.json``,
    credential helpers) and, for ECR, the AWS credentials boto3 finds. Loopback registries are spoken to over plain
    HTTP automatically; ``plain_http=True`` does so for every host.
    """

    def __init__(
        self,
        *,
        credentials: Mapping[str, tuple[str, str]] | None = None,
        plain_http: bool = False,
        jobs: int = DEFAULT_JOBS,
        remember_blobs: bool = True,
        retry: RetryPolicy | None = None,
    ) -> None:
        from ocimodel.registry.auth import Credentials, default_keychain
        from ocimodel.retry import RetryPolicy
        from ocimodel.registry.known import KnownBlobs

        self.plain_http = plain_http
        self.jobs = _jobs(jobs)
        #: How requests and uploads are retried: attempts, backoff, and the sleep used between them.
        self.retry = retry or RetryPolicy()
        self._keychain = default_keychain(
            {host: Credentials(user, password) for host, (user, password) in (credentials or {}).items()}
        )
        #: Where blobs were seen before, so a push can mount them instead of uploading (a local record).
        self.known = KnownBlobs() if remember_blobs else None
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def client(self, registry: str) -> RegistryClient:
        """The connection to ``registry`` (a host as in a reference), made on first use."""
        from ocimodel.registry.client import RegistryClient

        with self._lock:
            if registry not in self._clients:
                self._clients[registry] = RegistryClient(
                    registry, plain_http=self.plain_http, keychain=self._keychain, retry=self.retry
                )
            return self._clients[registry]

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry(hosts={sorted(self._clients)}, plain_http={self.plain_http}, jobs={self.jobs})"


class _Session:
    """A call's registry (the caller's, or one made for the call and closed after it) and its progress reporter."""

    def __init__(self, registry: Registry | None, plain_http: bool, progress: Progress, stop: threading.Event | None):
        self.owned = registry is None
        self.registry = registry if registry is not None else Registry(plain_http=plain_http)
        self.reporter = _reporter(progress, stop)
        self.stop = stop

    def check(self) -> None:
        check_stop(self.stop)

    def __enter__(self) -> _Session:
        self.check()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            self.registry.close()


def _reporter(progress: Progress, stop: threading.Event | None) -> Reporter:
    if progress is None:
        reporter: Reporter = SilentReporter()
    elif hasattr(progress, "task"):
        reporter = progress  # type: ignore[assignment]
    elif callable(progress):
        reporter = CallbackReporter(progress)
    else:
        raise InvalidArgument("progress", f"{progress!r} is neither a callable nor a reporter")
    return CancellableReporter(reporter, stop) if stop is not None else reporter


# --- arguments -----------------------------------------------------------------------------------------------------


def _jobs(jobs: int) -> int:
    if not 1 <= jobs <= 64:
        raise InvalidArgument("jobs", f"{jobs} is not between 1 and 64")
    return jobs


def _platforms(platforms: Iterable[str | Platform] | str | None) -> tuple[Platform, ...]:
    if platforms is None:
        platforms = [DEFAULT_PLATFORM]
    elif isinstance(platforms, str):
        platforms = [p for p in platforms.split(",") if p.strip()]
    parsed: list[Platform] = []
    for p in platforms:
        try:
            parsed.append(p if isinstance(p, Platform) else Platform.parse(p))
        except ValueError as exc:
            raise InvalidArgument("platforms", str(exc)) from None
    if not parsed:
        raise InvalidArgument("platforms", "names no platform; give os/arch, e.g. linux/amd64")
    return tuple(dict.fromkeys(parsed))


def _platform(platform: str | Platform) -> Platform:
    return _platforms([platform])[0]


def _tag(tag: str, argument: str = "tag") -> str:
    if not is_tag(tag):
        raise InvalidArgument(
            argument, f"{tag!r} is not a valid tag (letters, digits, _ . -; at most 128; no leading . or -)"
        )
    return tag


def _compression(compression: str) -> str:
    if compression not in COMPRESSIONS:
        raise InvalidArgument("compression", f"{compression!r} is not one of {', '.join(COMPRESSIONS)}")
    return compression


def _reference(ref: str | Reference, argument: str = "ref") -> Reference:
    if isinstance(ref, Reference):
        return ref
    try:
        return parse_reference(ref)
    except ValueError as exc:
        raise InvalidArgument(argument, str(exc)) from None


def _target(ref: str | Reference) -> Reference:
    """Where to push: a tag or a bare repository (tag latest), never a digest (the registry names the result)."""
    target = _reference(ref)
    if target.digest:
        raise InvalidArgument("ref", "push to a tag or a bare repository, not a digest")
    return target


def _signer(sign_key: PathLike | Signer | None, password: str | bytes | None) -> Signer | None:
    """The key to sign with, loaded before any work so that a wrong password costs nothing."""
    if sign_key is None:
        if password is not None:
            raise InvalidArgument("sign_key_password", "is the password of a signing key: give sign_key too")
        return None
    if hasattr(sign_key, "sign"):
        return sign_key  # type: ignore[return-value]
    from ocimodel.signing.keys import load_private_key

    secret = password.encode() if isinstance(password, str) else password
    return load_private_key(Path(sign_key).expanduser(), secret)  # type: ignore[arg-type]


def _base(base: str | None) -> str:
    return base or os.environ.get(BASE_IMAGE_ENV) or DEFAULT_BASE


def _pack_options(
    *,
    base: str | None,
    platforms: Iterable[str | Platform] | str | None,
    tag: str,
    compression: str,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    jobs: int | None,
    plain_http: bool,
    use_cache: bool,
    labels: Mapping[str, str] | None,
    annotations: Mapping[str, str] | None,
    signer: Signer | None = None,
):  # type: ignore[no-untyped-def]
    from ocimodel.layout.pack import PackOptions
    from ocimodel.source import Filters

    return PackOptions(
        base=_base(base),
        platforms=_platforms(platforms),
        tag=_tag(tag),
        compression=_compression(compression),
        filters=Filters(tuple(include or ()), tuple(exclude or ())),
        plain_http=plain_http,
        use_cache=use_cache,
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
        signer=signer,
        **({"jobs": _jobs(jobs)} if jobs else {}),
    )


def _open_source(
    source: PathLike, revision: str | None, cache_dir: PathLike | None, reporter: Reporter
) -> Source:
    from ocimodel.source import open_source

    return open_source(
        os.fspath(source), revision=revision, cache_dir=Path(cache_dir) if cache_dir else None, reporter=reporter
    )


def is_layout_path(image: PathLike | Reference) -> bool:
    """Whether ``image`` names a layout directory rather than a registry image: a path object, a directory that
    exists, or text written as a path (``./x``, ``/x``, ``~/x``)."""
    if isinstance(image, Reference):
        return False
    if not isinstance(image, str):
        return True
    return Path(image).exists() or image.startswith((".", "/", "~"))


# --- the operations ------------------------------------------------------------------------------------------------


def pack(
    source: PathLike,
    layout: PathLike,
    *,
    base: str | None = None,
    tag: str = "latest",
    platforms: Iterable[str | Platform] | str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    compression: str = "none",
    revision: str | None = None,
    cache_dir: PathLike | None = None,
    jobs: int | None = None,
    use_cache: bool = True,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    sign_key: PathLike | Signer | None = None,
    sign_key_password: str | bytes | None = None,
    check: bool = True,
    plain_http: bool = False,
    progress: Progress = None,
    stop: threading.Event | None = None,
) -> PackResult:
    """Pack a model into an OCI image layout and tag it; the layout is created if missing.

    ``source`` is a model directory, or a HuggingFace repo id (``org/name``, ``hf://org/name``; ``revision`` a
    branch, tag or commit, recorded as its commit). ``base`` is an image pinned by digest (``repo@sha256:…``) or
    ``"scratch"``; by default ``$OCIMODEL_BASE_IMAGE``, else busybox. Several ``platforms`` make the tag point at an
    index whose images share the model layers. ``include``/``exclude`` are globs on paths in the model; excluded
    Hub files are not even downloaded. ``use_cache=False`` hashes every layer again even if its files did not
    change. ``jobs`` layers are built at once (default: CPUs, at most 4). ``check`` reads the image back
    (manifests, configs, small layers) for the result's ``warnings``.

    ``sign_key`` signs the model's files (OpenSSF Model Signing, as ``model_signing sign key`` would): a PEM EC
    private key file (P-256, P-384 or P-521, encrypted with ``sign_key_password`` or not) or a signer such as
    ``ocimodel.signing.kms.KmsSigner``. The signature is the image's top layer, ``/models/model.sig``, and is kept in
    the layout as a referrer of the image that ``push`` attaches; see docs/signing.md.
    """
    from ocimodel.layout.pack import pack as write_image
    from ocimodel.verification import layout_warnings

    options = _pack_options(
        base=base, platforms=platforms, tag=tag, compression=compression, include=include, exclude=exclude,
        jobs=jobs, plain_http=plain_http, use_cache=use_cache, labels=labels, annotations=annotations,
        signer=_signer(sign_key, sign_key_password),
    )
    layout_dir = Path(layout)
    with _Session(None, plain_http, progress, stop) as session:
        model = _open_source(source, revision, cache_dir, session.reporter)
        session.check()
        top = write_image(model, layout_dir, options, session.reporter)
    signature = None
    if options.signer is not None:
        from ocimodel.layout.store import Layout
        from ocimodel.registry.referrers import stored

        signature = stored(Layout.open(layout_dir), top)[-1][0].digest
    warnings = tuple(layout_warnings(layout_dir, options.tag)) if check else ()
    return PackResult(top.digest, top.size, top.media_type, layout_dir, options.tag, warnings, signature)


def push(
    layout: PathLike,
    ref: str | Reference,
    *,
    tag: str | None = None,
    jobs: int | None = None,
    chunk_size: int | None = None,
    mount_from: Sequence[str] = (),
    check: bool = True,
    registry: Registry | None = None,
    plain_http: bool = False,
    progress: Progress = None,
    stop: threading.Event | None = None,
) -> PushResult:
    """Push an OCI image layout (ours, skopeo's, olot's...) to ``ref`` (``host[:port]/repo[:tag]``).

    ``tag`` picks the layout's tag (default: its only one, or ``latest``); the tag pushed is the reference's, else
    that one. Blobs the registry has are skipped, blobs seen in ``mount_from`` repositories (or, as recorded by
    ``registry``, elsewhere on the same registry) are mounted, the rest go up ``jobs`` at a time, in chunks of
    ``chunk_size`` bytes that resume after a failure (0: whole blobs; ECR gets whole blobs by default).
    The result's ``reference`` is ``host/repo@sha256:…`` and ``uri`` its ``oci://`` form; with ``check``, its
    ``warnings`` come from reading the layout's image (manifests, configs, small layers).
    """
    from ocimodel.layout.store import Layout
    from ocimodel.registry.push import DEFAULT_CHUNK_SIZE, PushOptions
    from ocimodel.registry.push import push as push_layout
    from ocimodel.verification import layout_warnings

    target = _target(ref)
    if tag is not None:
        _tag(tag)
    with _Session(registry, plain_http, progress, stop) as session:
        options = PushOptions(
            jobs=_jobs(jobs) if jobs else session.registry.jobs,
            chunk_size=DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size,
            mount_from=tuple(mount_from),
            retry=session.registry.retry,
        )
        source = Layout.open(Path(layout))
        result = push_layout(
            source, target, tag=tag, options=options, reporter=session.reporter,
            client=session.registry.client(target.registry), known=session.registry.known,
        )
    return replace(result, warnings=tuple(layout_warnings(Path(layout), tag)) if check else ())


def build(
    source: PathLike,
    ref: str | Reference,
    *,
    base: str | None = None,
    platforms: Iterable[str | Platform] | str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    compression: str = "none",
    revision: str | None = None,
    cache_dir: PathLike | None = None,
    jobs: int | None = None,
    chunk_size: int | None = None,
    mount_from: Sequence[str] = (),
    use_cache: bool = True,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    layout: PathLike | None = None,
    disk_budget: int | None = None,
    two_pass: bool = False,
    sign_key: PathLike | Signer | None = None,
    sign_key_password: str | bytes | None = None,
    check: bool = True,
    registry: Registry | None = None,
    plain_http: bool = False,
    progress: Progress = None,
    stop: threading.Event | None = None,
) -> BuildResult:
    """Build a model's image straight into a registry: each layer is streamed from the files and hashed on the
    way, so no blob is ever written to disk. The image is the one ``pack`` + ``push`` would make (same digest).

    Options are ``pack``'s and ``push``'s. ``layout`` also keeps the image as an OCI layout there (by packing into
    it and pushing from it: the disk of a copy). ``disk_budget`` (bytes, Hub sources) bounds the model bytes on
    disk at once: files are downloaded per layer and deleted once sent. ``two_pass`` hashes each layer before
    uploading it (for benchmarks). ``sign_key`` signs as in ``pack``; the signature is also attached to the pushed
    image as an OCI 1.1 referrer (the referrers API, else its tag schema). ``check`` reads the image back (manifests, configs, small layers) for the
    result's ``warnings``. Hub sources are downloaded with huggingface_hub; for its fastest downloads set
    ``HF_XET_HIGH_PERFORMANCE=1`` (and, under a disk budget, ``HF_XET_CHUNK_CACHE_SIZE_BYTES=0``) in the
    environment before importing it, as the CLI does.
    """
    from ocimodel.registry.build import BuildOptions
    from ocimodel.registry.build import build as stream_image
    from ocimodel.registry.build import build_with_layout
    from ocimodel.registry.push import DEFAULT_CHUNK_SIZE, PushOptions
    from ocimodel.verification import layout_warnings, registry_warnings

    target = _target(ref)
    if layout is not None and (disk_budget is not None or two_pass):
        raise InvalidArgument("layout", "a kept layout is packed then pushed: it takes neither disk_budget nor two_pass")
    signer = _signer(sign_key, sign_key_password)
    with _Session(registry, plain_http, progress, stop) as session:
        jobs = _jobs(jobs) if jobs else session.registry.jobs
        options = BuildOptions(
            pack=_pack_options(
                base=base, platforms=platforms, tag=target.tag or "latest", compression=compression,
                include=include, exclude=exclude, jobs=jobs, plain_http=plain_http or session.registry.plain_http,
                use_cache=use_cache, labels=labels, annotations=annotations, signer=signer,
            ),
            push=PushOptions(
                jobs=jobs, chunk_size=DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size,
                mount_from=tuple(mount_from), retry=session.registry.retry,
            ),
            two_pass=two_pass,
            disk_budget=disk_budget,
        )
        client = session.registry.client(target.registry)
        model = _open_source(source, revision, cache_dir, session.reporter)
        session.check()
        if layout is not None:
            result = build_with_layout(model, target, Path(layout), options, session.reporter, client,
                                       session.registry.known)
            warnings = layout_warnings(Path(layout), options.pack.tag) if check else []
        else:
            result = stream_image(model, target, options, session.reporter, client, session.registry.known)
            warnings = registry_warnings(client, target.with_digest(result.digest)) if check else []
    return replace(result, warnings=tuple(warnings))


def verify(
    image: PathLike | Reference,
    *,
    platform: str | Platform = DEFAULT_PLATFORM,
    modes: Sequence[str] | None = None,
    tag: str | None = None,
    quick: bool = False,
    sign_key_pub: PathLike | None = None,
    registry: Registry | None = None,
    plain_http: bool = False,
    progress: Progress = None,
    stop: threading.Event | None = None,
) -> Report:
    """Check an image against KServe's ``modes`` (default: all of ``MODES``) for nodes of ``platform``.

    ``image`` is a layout directory (``tag`` picks its tag) or a registry reference. Manifests, configs and tar
    headers are read, never file data; ``quick`` skips big layers that would have to be read in full (and the
    checks that need them). With ``sign_key_pub`` (a PEM public key), the ``signature.model`` check also streams
    every layer once to hash the files under ``/models`` and checks them, and ``/models/model.sig``, against that
    key (docs/signing.md). The report's ``ok`` is False if a check failed; a failing check is not an exception.
    """
    from ocimodel.verification import QUICK, ReadPolicy
    from ocimodel.verification import verify as check_image

    node = _platform(platform)
    chosen = list(modes) if modes is not None else list(MODES)
    for mode in chosen:
        if mode not in MODES:
            raise InvalidArgument("modes", f"{mode!r} is not one of {', '.join(MODES)}")
    policy = QUICK if quick else ReadPolicy()
    key = _public_key(sign_key_pub) if sign_key_pub is not None else None
    if is_layout_path(image):
        from ocimodel.layout.source import LayoutSource
        from ocimodel.layout.store import Layout

        source = LayoutSource(Layout.open(Path(image).expanduser()), tag)
        return _with_signature(check_image(source, node, chosen, policy), source, key, _reporter(progress, stop), stop)
    if tag is not None:
        raise InvalidArgument("tag", "picks a tag of a layout; put the tag in the reference instead")
    target = _reference(image, "image")  # type: ignore[arg-type]
    from ocimodel.registry.source import RegistrySource

    with _Session(registry, plain_http, progress, stop) as session:
        remote = RegistrySource(session.registry.client(target.registry), target)
        return _with_signature(check_image(remote, node, chosen, policy), remote, key, session.reporter, stop)


def _public_key(path: PathLike) -> PublicKey:
    from ocimodel.signing.keys import load_public_key

    return load_public_key(Path(path).expanduser())


def _with_signature(
    report: Report, source: ImageSource, key: PublicKey | None, reporter: Reporter, stop: threading.Event | None
) -> Report:
    """The report with the ``signature.model`` check added, when a key was given."""
    if key is None:
        return report
    from ocimodel.verification.signature import check_signature

    layers = [desc for desc, _ in report.layers]
    signed = check_signature(source, layers, key, reporter=reporter, stop=stop)
    return replace(report, checks=(*report.checks, replace(signed, modes=report.modes)))


def pinned_reference(
    image: PathLike | Reference,
    *,
    pushed_to: str | Reference | None = None,
    tag: str | None = None,
    registry: Registry | None = None,
    plain_http: bool = False,
) -> str:
    """``host/repo@sha256:…`` for an image: a reference's digest, its tag resolved once by the registry, or, for a
    layout, its tag's digest in the repository it was ``pushed_to``."""
    if is_layout_path(image):
        from ocimodel.layout.store import Layout

        if pushed_to is None:
            raise InvalidArgument("pushed_to", "a layout does not say where it was pushed: give the host/repo")
        repo = _reference(pushed_to, "pushed_to")
        if repo.digest:
            raise InvalidArgument("pushed_to", "give host/repo; the digest comes from the layout")
        _, top = Layout.open(Path(image).expanduser()).select_tag(tag)
        return f"{repo.registry}/{repo.repository}@{top.digest}"
    if pushed_to is not None or tag is not None:
        raise InvalidArgument("pushed_to", "pushed_to and tag are for layouts; the reference says it all")
    target = _reference(image, "image")  # type: ignore[arg-type]
    if target.digest:
        return f"{target.registry}/{target.repository}@{target.digest}"
    from ocimodel.kserve import pinned

    with _Session(registry, plain_http, None, None) as session:
        return pinned(target, session.registry.client(target.registry))


def kserve_manifest(
    image: PathLike | Reference,
    *,
    name: str,
    kind: str = "inferenceservice",
    mode: str = "modelcar",
    pushed_to: str | Reference | None = None,
    tag: str | None = None,
    namespace: str | None = None,
    runtime: str | None = None,
    model_format: str = "huggingface",
    model_name: str | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    gpus: int | None = None,
    model_validation: str | None = None,
    sign_key_pub: PathLike | None = None,
    sigstore_identity: str | None = None,
    sigstore_issuer: str | None = None,
    registry: Registry | None = None,
    plain_http: bool = False,
) -> str:
    """The KServe manifest (YAML) serving ``image`` pinned by digest (``oci://host/repo@sha256:…`` for modelcar).

    A reference with a tag is resolved to its digest once; a layout needs ``pushed_to``, the repository it was
    pushed to. ``kind`` is one of ``SERVICE_KINDS`` and ``mode`` one of ``MODES``.

    ``model_validation`` names a ``ModelValidation`` for Sigstore's model-validation-operator, which then checks
    ``/models/model.sig`` in the cluster before the server starts, against ``sign_key_pub`` (a PEM public key,
    shipped in a ConfigMap) or a keyless signer (``sigstore_identity`` and ``sigstore_issuer``). The text is then
    several YAML documents. Modes ``native`` and ``fetch`` only (docs/signing.md says why).
    """
    from ocimodel.kserve import Resources, Service, Validation, check_validated, manifests, to_yaml_documents

    if kind not in SERVICE_KINDS:
        raise InvalidArgument("kind", f"{kind!r} is not one of {', '.join(SERVICE_KINDS)}")
    if mode not in MODES:
        raise InvalidArgument("mode", f"{mode!r} is not one of {', '.join(MODES)}")
    validation = None
    if model_validation is not None:
        check_validated(kind, mode)
        pem = _public_key(sign_key_pub).pem.decode() if sign_key_pub is not None else None
        validation = Validation(model_validation, pem, sigstore_identity, sigstore_issuer)
    elif sign_key_pub is not None or sigstore_identity is not None or sigstore_issuer is not None:
        raise InvalidArgument("model_validation", "name the ModelValidation the key or identity is for")
    image_at = pinned_reference(image, pushed_to=pushed_to, tag=tag, registry=registry, plain_http=plain_http)
    service = Service(
        name=name, image=image_at, kind=kind, mode=mode, namespace=namespace, runtime=runtime,
        model_format=model_format, model_name=model_name, resources=Resources(cpu, memory, gpus),
        validation=validation,
    )
    return to_yaml_documents(manifests(service))

