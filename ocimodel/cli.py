"""The ``ocimodel`` command line: parse, call, print.

Results go to stdout (last line: a digest or reference, or JSON with ``--json``); progress and errors go to stderr.
An ``OcimodelError`` becomes one line and exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ocimodel import __version__
from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import Platform

if TYPE_CHECKING:
    from ocimodel.pack import PackOptions
    from ocimodel.registry.client import RegistryClient
    from ocimodel.registry.reference import Reference

app = typer.Typer(
    name="ocimodel",
    help="Pack ML models into OCI images (KServe modelcars) and push them to registries, without Docker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



class _State:
    debug = False


class _Notices(logging.StreamHandler):  # type: ignore[type-arg]
    """Warnings (a registry keeping us waiting, a fallback taken) as ``ocimodel: …`` lines on stderr, without -v.

    It writes to whatever ``sys.stderr`` is when a line comes, so it survives the stream being swapped.
    """

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


_NOTICES = _Notices()
_NOTICES.setLevel(logging.WARNING)
_NOTICES.setFormatter(logging.Formatter("ocimodel: %(message)s"))


class Compression(str, Enum):
    none = "none"
    gzip = "gzip"
    zstd = "zstd"


class KserveMode(str, Enum):
    modelcar = "modelcar"
    native = "native"
    fetch = "fetch"


class ServiceKind(str, Enum):
    inferenceservice = "inferenceservice"
    llminferenceservice = "llminferenceservice"


def _version(value: bool) -> None:
    if value:
        print(f"ocimodel {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log HTTP requests and decisions to stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Like -v, and show tracebacks on errors.")] = False,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    _State.debug = debug
    if verbose or debug:
        # Only our loggers: they redact URLs and never log headers, while urllib3's debug lines print full URLs,
        # presigned storage signatures included.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger = logging.getLogger("ocimodel")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    elif _NOTICES not in logging.getLogger("ocimodel").handlers:
        logging.getLogger("ocimodel").addHandler(_NOTICES)


def _platform(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _tag(text: str) -> str:
    from ocimodel.registry.reference import is_tag

    if not is_tag(text):
        raise typer.BadParameter(f"{text!r} is not a valid tag (letters, digits, _ . -; at most 128; no leading . or -)")
    return text


# Options shared by several commands, declared once so their names, defaults and help stay the same everywhere.
SourceArg = Annotated[str, typer.Argument(help="Model directory, or HuggingFace repo id (org/name or hf://org/name).")]
RevisionOpt = Annotated[
    Optional[str], typer.Option(help="Hub branch, tag or commit; recorded as its commit. \\[default: main]")
]
CacheDirOpt = Annotated[
    Optional[Path], typer.Option(help="Where Hub downloads are cached. \\[default: HF_HUB_CACHE, or HF_HOME/hub]")
]
BaseOpt = Annotated[
    Optional[str], typer.Option(help="Base image pinned by digest (REPO@sha256:…), or 'scratch'. \\[default: busybox]")
]
PlatformOpt = Annotated[
    str, typer.Option(help="os/arch or os/arch/variant, e.g. linux/arm64; several, comma-separated, make an index.")
]
LabelOpt = Annotated[list[str], typer.Option(help="Config label KEY=VALUE (repeatable).")]
AnnotationOpt = Annotated[list[str], typer.Option(help="Manifest annotation KEY=VALUE (repeatable).")]
CompressionOpt = Annotated[Compression, typer.Option(help="Layer compression (weights barely compress).")]
IncludeOpt = Annotated[list[str], typer.Option(help="Only files matching this glob (repeatable).")]
ExcludeOpt = Annotated[list[str], typer.Option(help="Leave out files matching this glob (repeatable); not even downloaded.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Hash every layer again, even if its files did not change.")]
PlainHttpOpt = Annotated[bool, typer.Option("--plain-http", help="Use plain HTTP (automatic for localhost and 127.0.0.0/8).")]
ChunkSizeOpt = Annotated[
    str, typer.Option(help="Chunk size for resumable chunked uploads, e.g. 64MiB; 0 for whole-blob uploads.")
]
MountFromOpt = Annotated[list[str], typer.Option(help="Repository of the same registry to mount blobs from (repeatable).")]
UsernameOpt = Annotated[Optional[str], typer.Option(help="Registry user name (with --password-stdin).")]
PasswordStdinOpt = Annotated[bool, typer.Option("--password-stdin", help="Read the registry password or token from stdin.")]


def _size(text: str) -> int:
    from ocimodel.units import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _pairs(items: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        pairs[key] = value
    return pairs


def _pack_options(
    base: str | None,
    platform: str,
    tag: str,
    compression: Compression,
    include: list[str],
    exclude: list[str],
    jobs: int | None,
    plain_http: bool,
    no_cache: bool,
    label: list[str],
    annotation: list[str],
) -> PackOptions:
    from ocimodel.pack import DEFAULT_BASE, PackOptions
    from ocimodel.source import Filters

    platforms = tuple(dict.fromkeys(_platform(p) for p in platform.split(",") if p.strip()))
    if not platforms:
        raise typer.BadParameter("names no platform; give os/arch, e.g. linux/amd64", param_hint="--platform")
    return PackOptions(
        base=base or os.environ.get("OCIMODEL_BASE_IMAGE") or DEFAULT_BASE,
        platforms=platforms,
        tag=_tag(tag),
        compression=compression.value,
        filters=Filters(tuple(include), tuple(exclude)),
        plain_http=plain_http,
        use_cache=not no_cache,
        labels=_pairs(label, "--label"),
        annotations=_pairs(annotation, "--annotation"),
        **({"jobs": jobs} if jobs else {}),
    )


def _target(ref: str) -> Reference:
    from ocimodel.registry.reference import parse_reference

    try:
        target = parse_reference(ref)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="REF") from None
    if target.digest:
        raise typer.BadParameter("push to a tag or a bare repository, not a digest", param_hint="REF")
    return target


def _client(target: Reference, plain_http: bool, username: str | None, password_stdin: bool) -> RegistryClient:
    """A client with ``--username``/``--password-stdin`` credentials first, then the usual credential stores."""
    from ocimodel.registry.auth import Credentials, default_keychain
    from ocimodel.registry.client import RegistryClient

    if password_stdin != bool(username):
        raise typer.BadParameter("--username and --password-stdin go together")
    explicit = {}
    if username:
        explicit[target.registry] = Credentials(username, sys.stdin.readline().rstrip("\r\n"))
    return RegistryClient(target.registry, plain_http=plain_http, keychain=default_keychain(explicit))


@app.command()
def pack(
    source: SourceArg,
    layout: Annotated[Path, typer.Argument(help="OCI image layout directory to write (created if missing).")],
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    base: BaseOpt = None,
    platform: PlatformOpt = "linux/amd64",
    tag: Annotated[str, typer.Option(help="Tag stored in the layout's index.json.")] = "latest",
    compression: CompressionOpt = Compression.none,
    include: IncludeOpt = [],
    exclude: ExcludeOpt = [],
    jobs: Annotated[Optional[int], typer.Option(min=1, max=64, help="Layers built at once. \\[default: CPUs, max 4]")] = None,
    plain_http: Annotated[bool, typer.Option("--plain-http", help="Pull the base over plain HTTP (automatic for localhost).")] = False,
    no_cache: NoCacheOpt = False,
    label: LabelOpt = [],
    annotation: AnnotationOpt = [],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of the digest.")] = False,
) -> None:
    """Pack a model (a directory or a HuggingFace repo) into an OCI image layout. Prints the manifest digest."""
    from ocimodel.pack import pack as run_pack
    from ocimodel.progress import make_reporter
    from ocimodel.source import open_source
    from ocimodel.verification import layout_warnings

    options = _pack_options(
        base, platform, tag, compression, include, exclude, jobs, plain_http, no_cache, label, annotation
    )
    reporter = make_reporter()
    try:
        model = open_source(source, revision=revision, cache_dir=cache_dir, reporter=reporter)
        manifest = run_pack(model, layout, options, reporter)
    finally:
        reporter.close()
    _warn(layout_warnings(layout, tag))
    if as_json:
        print(json.dumps({"digest": manifest.digest, "size": manifest.size, "layout": str(layout), "tag": tag}))
    else:
        print(manifest.digest)


@app.command()
def push(
    layout: Annotated[Path, typer.Argument(help="OCI image layout directory (ours, skopeo's, olot's...).")],
    ref: Annotated[str, typer.Argument(help="Destination: host[:port]/repo[:tag].")],
    tag: Annotated[Optional[str], typer.Option(help="Which tag of the layout to push. \\[default: the only one, or latest]")] = None,
    jobs: Annotated[int, typer.Option(min=1, max=32, help="Blobs uploaded at once.")] = 4,
    chunk_size: ChunkSizeOpt = "128MiB",
    mount_from: MountFromOpt = [],
    plain_http: PlainHttpOpt = False,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON result (reference, digest, oci:// URI, blobs).")] = False,
) -> None:
    """Push an OCI image layout to a registry. Prints host/repo@sha256:… last."""
    from ocimodel.layout.store import Layout
    from ocimodel.progress import make_reporter
    from ocimodel.registry.known import KnownBlobs
    from ocimodel.registry.push import PushOptions, describe
    from ocimodel.registry.push import push as run_push
    from ocimodel.verification import layout_warnings

    target = _target(ref)
    options = PushOptions(jobs=jobs, chunk_size=_size(chunk_size), mount_from=tuple(mount_from))
    source = Layout.open(layout)
    reporter = make_reporter()
    try:
        with _client(target, plain_http, username, password_stdin) as client:
            result = run_push(
                source, target, tag=tag, options=options, reporter=reporter, client=client, known=KnownBlobs()
            )
    finally:
        reporter.close()
    print(f"pushed {result.reference}: {describe(result)}", file=sys.stderr)
    _warn(layout_warnings(layout, tag))
    print(json.dumps(result.to_json()) if as_json else result.reference)


@app.command()
def build(
    source: SourceArg,
    ref: Annotated[str, typer.Argument(help="Destination: host[:port]/repo[:tag] (tag defaults to latest).")],
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    base: BaseOpt = None,
    platform: PlatformOpt = "linux/amd64",
    compression: CompressionOpt = Compression.none,
    include: IncludeOpt = [],
    exclude: ExcludeOpt = [],
    jobs: Annotated[int, typer.Option(min=1, max=32, help="Layers hashed and uploaded at once.")] = 4,
    chunk_size: ChunkSizeOpt = "128MiB",
    mount_from: MountFromOpt = [],
    plain_http: PlainHttpOpt = False,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    no_cache: NoCacheOpt = False,
    label: LabelOpt = [],
    annotation: AnnotationOpt = [],
    layout: Annotated[
        Optional[Path], typer.Option(help="Also keep the image as an OCI layout here (costs the disk of a copy).")
    ] = None,
    disk_budget: Annotated[
        Optional[str],
        typer.Option(help="Hub sources: most model bytes on disk at once, e.g. 20GiB; files are deleted once sent."),
    ] = None,
    two_pass: Annotated[
        bool, typer.Option(hidden=True, help="Hash each layer before uploading it (for benchmarks).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary (digest, oci:// URI, bytes sent/skipped, seconds).")
    ] = False,
) -> None:
    """Build a model's image straight into a registry, streaming layers from the files. Prints host/repo@sha256:…."""
    from ocimodel.build import BuildOptions, build_with_layout
    from ocimodel.build import build as run_build
    from ocimodel.progress import make_reporter
    from ocimodel.registry.known import KnownBlobs
    from ocimodel.registry.push import PushOptions, describe
    from ocimodel.source import open_source
    from ocimodel.verification import layout_warnings, registry_warnings

    target = _target(ref)
    if layout is not None and (disk_budget or two_pass):
        raise typer.BadParameter("--layout packs then pushes: it takes neither --disk-budget nor --two-pass")
    options = BuildOptions(
        pack=_pack_options(base, platform, target.tag or "latest", compression, include, exclude, jobs, plain_http,
                           no_cache, label, annotation),
        push=PushOptions(jobs=jobs, chunk_size=_size(chunk_size), mount_from=tuple(mount_from)),
        two_pass=two_pass,
        disk_budget=_size(disk_budget) if disk_budget else None,
    )
    reporter = make_reporter()
    try:
        with _client(target, plain_http, username, password_stdin) as client:
            model = open_source(source, revision=revision, cache_dir=cache_dir, reporter=reporter)
            if layout is not None:
                result = build_with_layout(model, target, layout, options, reporter, client, KnownBlobs())
                warnings = layout_warnings(layout, options.pack.tag)
            else:
                result = run_build(model, target, options, reporter, client, KnownBlobs())
                warnings = registry_warnings(client, target.with_digest(result.push.digest))
    finally:
        reporter.close()
    print(f"built {result.push.reference}: {describe(result.push)}", file=sys.stderr)
    _warn(warnings)
    print(json.dumps(result.to_json()) if as_json else result.push.reference)


#: ``verify``'s exit status when the image fails a check (1 stays for errors, 2 for usage errors).
EXIT_CHECK_FAILED = 3

ImageArg = Annotated[
    str, typer.Argument(help="OCI image layout directory, or image reference host[:port]/repo[:tag|@sha256:…].")
]
LayoutTagOpt = Annotated[
    Optional[str], typer.Option(help="Layouts: which tag to use. \\[default: the only one, or latest]")
]


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"ocimodel: warning: {line}", file=sys.stderr)


def _image_arg(text: str) -> Path | Reference:
    """A directory that exists (or is written as a path) is a layout; anything else is a registry reference."""
    from ocimodel.registry.reference import parse_reference

    if Path(text).exists() or text.startswith((".", "/", "~")):
        return Path(text).expanduser()
    try:
        return parse_reference(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not a layout directory, nor an image reference: {exc}", param_hint="IMAGE") from None


@app.command()
def verify(
    image: ImageArg,
    platform: Annotated[
        str, typer.Option(help="Platform of the nodes; picks the manifest of a multi-platform image.")
    ] = "linux/amd64",
    mode: Annotated[
        list[KserveMode], typer.Option(help="Only the checks for this KServe mode (repeatable). \\[default: all]")
    ] = [],
    tag: LayoutTagOpt = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Skip big layers that would have to be read in full (and the checks that need them)."),
    ] = False,
    plain_http: PlainHttpOpt = False,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check an image against KServe's modelcar, native and fetch modes. Exits 3 if a check fails.

    Reads manifests, configs and tar headers, never file data (docs/kserve.md says which layers it reads).
    """
    from ocimodel.verification import QUICK, ReadPolicy
    from ocimodel.verification import verify as run_verify

    target = _image_arg(image)
    node = _platform(platform)
    modes = [m.value for m in mode] or [m.value for m in KserveMode]
    policy = QUICK if quick else ReadPolicy()
    if isinstance(target, Path):
        from ocimodel.layout.source import LayoutSource
        from ocimodel.layout.store import Layout

        report = run_verify(LayoutSource(Layout.open(target), tag), node, modes, policy)
    else:
        if tag is not None:
            raise typer.BadParameter("--tag picks a tag of a layout; put the tag in the reference", param_hint="--tag")
        from ocimodel.registry.source import RegistrySource

        with _client(target, plain_http, username, password_stdin) as client:
            report = run_verify(RegistrySource(client, target), node, modes, policy)
    print(json.dumps(report.to_json()) if as_json else report.table())
    if report.failed:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command()
def kserve(
    image: ImageArg,
    name: Annotated[str, typer.Option(help="Name of the service (lowercase letters, digits, '-').")],
    kind: Annotated[ServiceKind, typer.Option(help="The KServe resource to write.")] = ServiceKind.inferenceservice,
    mode: Annotated[
        KserveMode, typer.Option(help="modelcar: oci:// (sidecar); native: oci+native:// (image volume); fetch.")
    ] = KserveMode.modelcar,
    ref: Annotated[
        Optional[str], typer.Option(help="Layouts: host[:port]/repo the layout was pushed to (its digest is used).")
    ] = None,
    tag: LayoutTagOpt = None,
    namespace: Annotated[Optional[str], typer.Option(help="metadata.namespace.")] = None,
    runtime: Annotated[Optional[str], typer.Option(help="ServingRuntime or ClusterServingRuntime name.")] = None,
    model_format: Annotated[
        str, typer.Option(help="InferenceService: spec.predictor.model.modelFormat.name.")
    ] = "huggingface",
    model_name: Annotated[
        Optional[str], typer.Option(help="LLMInferenceService: spec.model.name. \\[default: --name]")
    ] = None,
    cpu: Annotated[Optional[str], typer.Option(help="CPU request, e.g. 4.")] = None,
    memory: Annotated[Optional[str], typer.Option(help="Memory request and limit, e.g. 32Gi.")] = None,
    gpus: Annotated[Optional[int], typer.Option(min=1, help="nvidia.com/gpu request and limit.")] = None,
    plain_http: PlainHttpOpt = False,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Print a KServe manifest (YAML) that serves the image pinned by digest: oci://host/repo@sha256:….

    A reference with a tag is resolved to its digest once; a layout needs --ref, the repository it was pushed to.
    """
    from ocimodel.kserve import Resources, Service, manifest, pinned, to_yaml
    from ocimodel.registry.reference import parse_reference

    target = _image_arg(image)
    if isinstance(target, Path):
        from ocimodel.layout.store import Layout

        if ref is None:
            raise typer.BadParameter(
                "a layout does not say where it was pushed: add --ref host/repo, or give the pushed reference",
                param_hint="--ref",
            )
        try:
            pushed = parse_reference(ref)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--ref") from None
        if pushed.digest:
            raise typer.BadParameter("give host/repo; the digest comes from the layout", param_hint="--ref")
        _, top = Layout.open(target).select_tag(tag)
        pinned_image = f"{pushed.registry}/{pushed.repository}@{top.digest}"
    else:
        if ref is not None or tag is not None:
            raise typer.BadParameter("--ref and --tag are for layouts; the reference says it all", param_hint="--ref")
        if target.digest:
            pinned_image = f"{target.registry}/{target.repository}@{target.digest}"
        else:
            with _client(target, plain_http, username, password_stdin) as client:
                pinned_image = pinned(target, client)
    service = Service(
        name=name, image=pinned_image, kind=kind.value, mode=mode.value, namespace=namespace, runtime=runtime,
        model_format=model_format, model_name=model_name, resources=Resources(cpu, memory, gpus),
    )
    print(to_yaml(manifest(service)), end="")


# Importing it costs typer alone: the aws commands load boto3 and the Hub client when they run.
from ocimodel.aws.cli import aws_app  # noqa: E402

app.add_typer(aws_app, name="aws")


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that everything unwinds as on Ctrl-C: jobs stop, temp files go.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way mistakes it for a failure.
    """


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise _Terminated


def main() -> None:
    """Typer handles usage errors (exit 2) and Ctrl-C (exit 130); our own errors become one line (exit 1).

    SIGTERM (CI cancelling a job, ``docker stop``, Kubernetes) cleans up like Ctrl-C and exits 143, as a process
    killed by it would; what a run left when it was killed outright is removed by the next run.
    """
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app()
    except OcimodelError as exc:
        if _State.debug:
            raise
        print(f"ocimodel: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except _Terminated:
        print("ocimodel: error: terminated (SIGTERM); what was complete is kept, run again to finish", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
