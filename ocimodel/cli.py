"""The ``ocimodel`` command line: parse, call, print.

Results go to stdout (last line: a digest or reference, or JSON with ``--json``); progress and errors go to stderr.
An ``OcimodelError`` becomes one line and exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ocimodel import __version__
from ocimodel.errors import OcimodelError
from ocimodel.layout.descriptor import Platform

app = typer.Typer(
    name="ocimodel",
    help="Pack ML models into OCI images (KServe modelcars) and push them to registries, without Docker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class _State:
    debug = False


class Compression(str, Enum):
    none = "none"
    gzip = "gzip"
    zstd = "zstd"


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


def _platform(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _tag(text: str) -> str:
    if not _TAG.match(text):
        raise typer.BadParameter(f"{text!r} is not a valid tag (letters, digits, _ . -; at most 128; no leading . or -)")
    return text


@app.command()
def pack(
    source: Annotated[str, typer.Argument(help="Model directory, or HuggingFace repo id (org/name or hf://org/name).")],
    layout: Annotated[Path, typer.Argument(help="OCI image layout directory to write (created if missing).")],
    revision: Annotated[
        Optional[str], typer.Option(help="Hub branch, tag or commit; recorded as its commit. [default: default branch]")
    ] = None,
    cache_dir: Annotated[
        Optional[Path], typer.Option(help="Where Hub downloads are cached. [default: HF_HUB_CACHE, or HF_HOME/hub]")
    ] = None,
    base: Annotated[
        Optional[str], typer.Option(help="Base image pinned by digest (REPO@sha256:…), or 'scratch'. [default: busybox]")
    ] = None,
    platform: Annotated[str, typer.Option(help="os/arch[/variant] of the image.")] = "linux/amd64",
    tag: Annotated[str, typer.Option(help="Tag stored in the layout's index.json.")] = "latest",
    compression: Annotated[Compression, typer.Option(help="Layer compression (weights barely compress).")] = (
        Compression.none
    ),
    include: Annotated[list[str], typer.Option(help="Only files matching this glob (repeatable).")] = [],
    exclude: Annotated[
        list[str], typer.Option(help="Leave out files matching this glob (repeatable); not even downloaded.")
    ] = [],
    jobs: Annotated[Optional[int], typer.Option(min=1, max=64, help="Layers built at once. [default: CPUs, max 4]")] = None,
    plain_http: Annotated[bool, typer.Option(help="Pull the base over plain HTTP (automatic for localhost).")] = False,
    no_cache: Annotated[bool, typer.Option(help="Hash every layer again, even if its files did not change.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of the digest.")] = False,
) -> None:
    """Pack a model (a directory or a HuggingFace repo) into an OCI image layout. Prints the manifest digest."""
    from ocimodel.pack import DEFAULT_BASE, PackOptions
    from ocimodel.pack import pack as run_pack
    from ocimodel.progress import make_reporter
    from ocimodel.source import Filters, open_source

    options = PackOptions(
        base=base or DEFAULT_BASE,
        platform=_platform(platform),
        tag=_tag(tag),
        compression=compression.value,
        filters=Filters(tuple(include), tuple(exclude)),
        plain_http=plain_http,
        use_cache=not no_cache,
        **({"jobs": jobs} if jobs else {}),
    )
    reporter = make_reporter()
    try:
        model = open_source(source, revision=revision, cache_dir=cache_dir, reporter=reporter)
        manifest = run_pack(model, layout, options, reporter)
    finally:
        reporter.close()
    if as_json:
        print(json.dumps({"digest": manifest.digest, "size": manifest.size, "layout": str(layout), "tag": tag}))
    else:
        print(manifest.digest)


def _size(text: str) -> int:
    from ocimodel.units import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def push(
    layout: Annotated[Path, typer.Argument(help="OCI image layout directory (ours, skopeo's, olot's...).")],
    ref: Annotated[str, typer.Argument(help="Destination: host[:port]/repo[:tag].")],
    tag: Annotated[Optional[str], typer.Option(help="Which tag of the layout to push. [default: the only one, or latest]")] = None,
    jobs: Annotated[int, typer.Option(min=1, max=32, help="Blobs uploaded at once.")] = 4,
    chunk_size: Annotated[
        str, typer.Option(help="Chunk size for resumable chunked uploads, e.g. 64MiB; 0 for whole-blob uploads.")
    ] = "128MiB",
    mount_from: Annotated[list[str], typer.Option(help="Repository of the same registry to mount blobs from (repeatable).")] = [],
    plain_http: Annotated[bool, typer.Option(help="Use plain HTTP (automatic for localhost and 127.0.0.0/8).")] = False,
    username: Annotated[Optional[str], typer.Option(help="Registry user name (with --password-stdin).")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the registry password or token from stdin.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON result (reference, digest, oci:// URI, blobs).")] = False,
) -> None:
    """Push an OCI image layout to a registry. Prints host/repo@sha256:… last."""
    from ocimodel.layout.store import Layout
    from ocimodel.progress import make_reporter
    from ocimodel.registry.auth import Credentials, default_keychain
    from ocimodel.registry.client import RegistryClient
    from ocimodel.registry.known import KnownBlobs
    from ocimodel.registry.push import PushOptions, describe
    from ocimodel.registry.push import push as run_push
    from ocimodel.registry.reference import parse_reference

    try:
        target = parse_reference(ref)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="REF") from None
    if target.digest:
        raise typer.BadParameter("push to a tag or a bare repository, not a digest", param_hint="REF")
    if password_stdin != bool(username):
        raise typer.BadParameter("--username and --password-stdin go together")
    explicit = {}
    if username:
        password = sys.stdin.readline().rstrip("\r\n")
        explicit[target.registry] = Credentials(username, password)
    options = PushOptions(jobs=jobs, chunk_size=_size(chunk_size), mount_from=tuple(mount_from))
    source = Layout.open(layout)
    reporter = make_reporter()
    try:
        with RegistryClient(target.registry, plain_http=plain_http, keychain=default_keychain(explicit)) as client:
            result = run_push(
                source, target, tag=tag, options=options, reporter=reporter, client=client, known=KnownBlobs()
            )
    finally:
        reporter.close()
    print(f"pushed {result.reference}: {describe(result)}", file=sys.stderr)
    print(json.dumps(result.to_json()) if as_json else result.reference)


def main() -> None:
    """Typer handles usage errors (exit 2); our own errors become one line (exit 1)."""
    try:
        app()
    except KeyboardInterrupt:
        print("ocimodel: interrupted", file=sys.stderr)
        sys.exit(130)
    except OcimodelError as exc:
        if _State.debug:
            raise
        print(f"ocimodel: error: {exc}", file=sys.stderr)
        sys.exit(1)
