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
from contextlib import contextmanager
from typing import Annotated, Iterable, Iterator, Optional

import typer

from ocimodel import __version__, api
from ocimodel.errors import InvalidArgument, OcimodelError

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


# The choices come from the library, so the CLI offers exactly what it accepts.
Compression = Enum("Compression", {name: name for name in api.COMPRESSIONS}, type=str)  # type: ignore[misc]
KserveMode = Enum("KserveMode", {name: name for name in api.MODES}, type=str)  # type: ignore[misc]
ServiceKind = Enum("ServiceKind", {name: name for name in api.SERVICE_KINDS}, type=str)  # type: ignore[misc]


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
#: Where the CLI finds an encrypted signing key's password when it is not given on stdin.
SIGN_KEY_PASSWORD_ENV = "OCIMODEL_SIGN_KEY_PASSWORD"
SignKeyOpt = Annotated[
    Optional[Path],
    typer.Option(help="Sign the model (OpenSSF Model Signing) with this PEM EC private key: /models/model.sig."),
]
SignKmsKeyOpt = Annotated[
    Optional[str],
    typer.Option(help="Sign with this AWS KMS key instead (alias/…, key id or ARN; ECC, SIGN_VERIFY): see docs/aws.md."),
]
SignKeyPasswordStdinOpt = Annotated[
    bool,
    typer.Option("--sign-key-password-stdin", help="Read the signing key's password from stdin. \\[default: "
                 f"${SIGN_KEY_PASSWORD_ENV}, else none]"),
]


def _signer_arg(sign_key: Path | None, sign_kms_key: str | None) -> Path | object | None:
    """``--sign-key`` as given, or the KMS key ``--sign-kms-key`` names, checked now (before any download)."""
    if sign_kms_key is None:
        return sign_key
    if sign_key is not None:
        raise typer.BadParameter("sign with a key file or a KMS key, not both", param_hint="--sign-kms-key")
    from ocimodel.signing.kms import KmsSigner

    return KmsSigner.from_key_id(sign_kms_key)


def _sign_key_password(sign_key: Path | None, from_stdin: bool, registry_stdin: bool = False) -> str | None:
    """The signing key's password: a line of stdin, or the environment; never an argument (``ps`` shows those)."""
    if from_stdin and sign_key is None:
        raise typer.BadParameter("reads the password of --sign-key: give --sign-key too",
                                 param_hint="--sign-key-password-stdin")
    if from_stdin and registry_stdin:
        raise typer.BadParameter(
            f"--password-stdin reads stdin already: pass the signing key's password in ${SIGN_KEY_PASSWORD_ENV}",
            param_hint="--sign-key-password-stdin",
        )
    if sign_key is None:
        return None
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return os.environ.get(SIGN_KEY_PASSWORD_ENV)


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


#: The flag or argument behind each API keyword whose name differs from it.
_FLAGS = {"platforms": "--platform", "modes": "--mode", "ref": "REF", "image": "IMAGE", "pushed_to": "--ref"}


#: Exit status of a usage error (typer's own are 2 as well); 1 stays for failures.
EXIT_USAGE = 2


@contextmanager
def _usage(**arguments: str) -> Iterator[None]:
    """The API's argument errors as the CLI's: one line naming the flag (or, as given in ``arguments``, the
    positional argument) instead of the keyword, exit 2."""
    try:
        yield
    except InvalidArgument as exc:
        if _State.debug:
            raise
        hint = arguments.get(exc.argument) or _FLAGS.get(exc.argument, "--" + exc.argument.replace("_", "-"))
        print(f"ocimodel: error: {hint}: {exc.reason}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None


def _registry(plain_http: bool, username: str | None, password_stdin: bool, host: str | None) -> api.Registry:
    """A registry with ``--username``/``--password-stdin`` credentials for ``host`` first, then the usual stores."""
    if password_stdin != bool(username):
        raise typer.BadParameter("--username and --password-stdin go together")
    credentials = {}
    if username and host:
        credentials[host] = (username, sys.stdin.readline().rstrip("\r\n"))
    return api.Registry(credentials=credentials, plain_http=plain_http)


def _host(ref: str) -> str | None:
    """The registry host of a reference, for credentials; None if it does not parse (the API then says why)."""
    from ocimodel.registry.reference import parse_reference

    try:
        return parse_reference(ref).registry
    except ValueError:
        return None


def _hub_downloads(disk_budget: bool = False) -> None:
    """hf_xet's settings for ocimodel's downloads, unless the user set them: its high-performance mode, and under a
    disk budget no chunk cache (a second copy of what is on disk). The CLI owns its process; the library does not."""
    os.environ.setdefault("HF_XET_HIGH_PERFORMANCE", "1")
    if disk_budget:
        os.environ.setdefault("HF_XET_CHUNK_CACHE_SIZE_BYTES", "0")


@app.command()
def pack(
    source: SourceArg,
    layout: Annotated[Path, typer.Argument(help="OCI image layout directory to write (created if missing).")],
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    base: BaseOpt = None,
    platform: PlatformOpt = api.DEFAULT_PLATFORM,
    tag: Annotated[str, typer.Option(help="Tag stored in the layout's index.json.")] = "latest",
    compression: CompressionOpt = Compression.none,
    include: IncludeOpt = [],
    exclude: ExcludeOpt = [],
    jobs: Annotated[Optional[int], typer.Option(min=1, max=64, help="Layers built at once. \\[default: CPUs, max 4]")] = None,
    plain_http: Annotated[bool, typer.Option("--plain-http", help="Pull the base over plain HTTP (automatic for localhost).")] = False,
    no_cache: NoCacheOpt = False,
    label: LabelOpt = [],
    annotation: AnnotationOpt = [],
    sign_key: SignKeyOpt = None,
    sign_kms_key: SignKmsKeyOpt = None,
    sign_key_password_stdin: SignKeyPasswordStdinOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of the digest.")] = False,
) -> None:
    """Pack a model (a directory or a HuggingFace repo) into an OCI image layout. Prints the manifest digest."""
    from ocimodel.progress import make_reporter

    password = _sign_key_password(sign_key, sign_key_password_stdin)
    signer = _signer_arg(sign_key, sign_kms_key)
    _hub_downloads()
    reporter = make_reporter()
    try:
        with _usage(layout="LAYOUT", source="SOURCE"):
            result = api.pack(
                source, layout, base=base, tag=tag, platforms=platform, include=include, exclude=exclude,
                compression=compression.value, revision=revision, cache_dir=cache_dir, jobs=jobs,
                use_cache=not no_cache, labels=_pairs(label, "--label"), annotations=_pairs(annotation, "--annotation"),
                sign_key=signer, sign_key_password=password, plain_http=plain_http, progress=reporter,
            )
    finally:
        reporter.close()
    _warn(result.warnings)
    print(json.dumps(result.to_json()) if as_json else result.digest)


@app.command()
def push(
    layout: Annotated[Path, typer.Argument(help="OCI image layout directory (ours, skopeo's, olot's...).")],
    ref: Annotated[str, typer.Argument(help="Destination: host[:port]/repo[:tag].")],
    tag: Annotated[Optional[str], typer.Option(help="Which tag of the layout to push. \\[default: the only one, or latest]")] = None,
    jobs: Annotated[int, typer.Option(min=1, max=32, help="Blobs uploaded at once.")] = api.DEFAULT_JOBS,
    chunk_size: ChunkSizeOpt = "128MiB",
    mount_from: MountFromOpt = [],
    plain_http: PlainHttpOpt = False,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON result (reference, digest, oci:// URI, blobs).")] = False,
) -> None:
    """Push an OCI image layout to a registry. Prints host/repo@sha256:… last."""
    from ocimodel.progress import make_reporter
    from ocimodel.registry.push import describe

    reporter = make_reporter()
    try:
        with _registry(plain_http, username, password_stdin, _host(ref)) as registry, _usage(layout="LAYOUT"):
            result = api.push(
                layout, ref, tag=tag, jobs=jobs, chunk_size=_size(chunk_size), mount_from=mount_from,
                registry=registry, progress=reporter,
            )
    finally:
        reporter.close()
    print(f"pushed {result.reference}: {describe(result)}", file=sys.stderr)
    _warn(result.warnings)
    print(json.dumps(result.to_json()) if as_json else result.reference)


@app.command()
def build(
    source: SourceArg,
    ref: Annotated[str, typer.Argument(help="Destination: host[:port]/repo[:tag] (tag defaults to latest).")],
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    base: BaseOpt = None,
    platform: PlatformOpt = api.DEFAULT_PLATFORM,
    compression: CompressionOpt = Compression.none,
    include: IncludeOpt = [],
    exclude: ExcludeOpt = [],
    jobs: Annotated[int, typer.Option(min=1, max=32, help="Layers hashed and uploaded at once.")] = api.DEFAULT_JOBS,
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
    sign_key: SignKeyOpt = None,
    sign_kms_key: SignKmsKeyOpt = None,
    sign_key_password_stdin: SignKeyPasswordStdinOpt = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary (digest, oci:// URI, bytes sent/skipped, seconds).")
    ] = False,
) -> None:
    """Build a model's image straight into a registry, streaming layers from the files. Prints host/repo@sha256:…."""
    from ocimodel.progress import make_reporter
    from ocimodel.registry.push import describe

    password = _sign_key_password(sign_key, sign_key_password_stdin, registry_stdin=password_stdin)
    signer = _signer_arg(sign_key, sign_kms_key)
    _hub_downloads(disk_budget=disk_budget is not None)
    reporter = make_reporter()
    try:
        with _registry(plain_http, username, password_stdin, _host(ref)) as registry, _usage(source="SOURCE"):
            result = api.build(
                source, ref, base=base, platforms=platform, include=include, exclude=exclude,
                compression=compression.value, revision=revision, cache_dir=cache_dir, jobs=jobs,
                chunk_size=_size(chunk_size), mount_from=mount_from, use_cache=not no_cache,
                labels=_pairs(label, "--label"), annotations=_pairs(annotation, "--annotation"), layout=layout,
                disk_budget=_size(disk_budget) if disk_budget else None, two_pass=two_pass, sign_key=signer,
                sign_key_password=password, registry=registry, progress=reporter,
            )
    finally:
        reporter.close()
    print(f"built {result.reference}: {describe(result.push)}", file=sys.stderr)
    _warn(result.warnings)
    print(json.dumps(result.to_json()) if as_json else result.reference)


#: ``verify``'s exit status when the image fails a check (1 stays for errors, 2 for usage errors).
EXIT_CHECK_FAILED = 3

ImageArg = Annotated[
    str, typer.Argument(help="OCI image layout directory, or image reference host[:port]/repo[:tag|@sha256:…].")
]
LayoutTagOpt = Annotated[
    Optional[str], typer.Option(help="Layouts: which tag to use. \\[default: the only one, or latest]")
]


def _warn(lines: Iterable[str]) -> None:
    for line in lines:
        print(f"ocimodel: warning: {line}", file=sys.stderr)


def _image(text: str) -> tuple[str, str | None]:
    """IMAGE as the API takes it, and the registry host ``--username`` credentials are for (None for a layout)."""
    if api.is_layout_path(text):
        return str(Path(text).expanduser()), None
    return text, _host(text)


@app.command()
def verify(
    image: ImageArg,
    platform: Annotated[
        str, typer.Option(help="Platform of the nodes; picks the manifest of a multi-platform image.")
    ] = api.DEFAULT_PLATFORM,
    mode: Annotated[
        list[KserveMode], typer.Option(help="Only the checks for this KServe mode (repeatable). \\[default: all]")
    ] = [],
    tag: LayoutTagOpt = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Skip big layers that would have to be read in full (and the checks that need them)."),
    ] = False,
    sign_key_pub: Annotated[
        Optional[Path],
        typer.Option(help="Also check /models/model.sig with this PEM public key, hashing every file under /models."),
    ] = None,
    plain_http: PlainHttpOpt = False,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check an image against KServe's modelcar, native and fetch modes. Exits 3 if a check fails.

    Reads manifests, configs and tar headers, never file data (docs/kserve.md says which layers it reads), except
    with --sign-key-pub: the signature check reads every layer once (docs/signing.md).
    """
    from ocimodel.progress import SilentReporter, make_reporter

    image, host = _image(image)
    reporter = make_reporter() if sign_key_pub is not None else SilentReporter()
    try:
        with _registry(plain_http, username, password_stdin, host) as registry, _usage():
            report = api.verify(
                image, platform=platform, modes=[m.value for m in mode] or None, tag=tag, quick=quick,
                sign_key_pub=sign_key_pub, registry=registry, progress=reporter,
            )
    finally:
        reporter.close()
    print(json.dumps(report.to_json()) if as_json else report.table())
    if not report.ok:
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
    model_validation: Annotated[
        Optional[str],
        typer.Option(help="Also write a ModelValidation of this name for Sigstore's model-validation-operator, "
                     "which checks /models/model.sig before the server starts (--mode native or fetch)."),
    ] = None,
    sign_key_pub: Annotated[
        Optional[Path], typer.Option(help="--model-validation: the signer's PEM public key (put in a ConfigMap).")
    ] = None,
    sigstore_identity: Annotated[
        Optional[str], typer.Option(help="--model-validation, keyless: the signer's certificate identity.")
    ] = None,
    sigstore_issuer: Annotated[
        Optional[str], typer.Option(help="--model-validation, keyless: the OIDC issuer of that identity.")
    ] = None,
    plain_http: PlainHttpOpt = False,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Print a KServe manifest (YAML) that serves the image pinned by digest: oci://host/repo@sha256:….

    A reference with a tag is resolved to its digest once; a layout needs --ref, the repository it was pushed to.
    With --model-validation, the model-validation-operator's resources come first (docs/signing.md).
    """
    image, host = _image(image)
    with _registry(plain_http, username, password_stdin, host) as registry, _usage():
        text = api.kserve_manifest(
            image, name=name, kind=kind.value, mode=mode.value, pushed_to=ref, tag=tag, namespace=namespace,
            runtime=runtime, model_format=model_format, model_name=model_name, cpu=cpu, memory=memory, gpus=gpus,
            model_validation=model_validation, sign_key_pub=sign_key_pub, sigstore_identity=sigstore_identity,
            sigstore_issuer=sigstore_issuer, registry=registry,
        )
    print(text, end="")


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
