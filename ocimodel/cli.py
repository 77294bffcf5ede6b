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
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s", stream=sys.stderr)
        logging.getLogger("urllib3").setLevel(logging.INFO)


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
    source: Annotated[str, typer.Argument(help="Model directory.")],
    layout: Annotated[Path, typer.Argument(help="OCI image layout directory to write (created if missing).")],
    base: Annotated[
        Optional[str], typer.Option(help="Base image pinned by digest (REPO@sha256:…), or 'scratch'. [default: busybox]")
    ] = None,
    platform: Annotated[str, typer.Option(help="os/arch[/variant] of the image.")] = "linux/amd64",
    tag: Annotated[str, typer.Option(help="Tag stored in the layout's index.json.")] = "latest",
    compression: Annotated[Compression, typer.Option(help="Layer compression (weights barely compress).")] = (
        Compression.none
    ),
    include: Annotated[list[str], typer.Option(help="Only files matching this glob (repeatable).")] = [],
    exclude: Annotated[list[str], typer.Option(help="Leave out files matching this glob (repeatable).")] = [],
    jobs: Annotated[Optional[int], typer.Option(min=1, max=64, help="Layers built at once. [default: CPUs, max 4]")] = None,
    plain_http: Annotated[bool, typer.Option(help="Pull the base over plain HTTP (automatic for localhost).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of the digest.")] = False,
) -> None:
    """Pack a model into an OCI image layout. Prints the manifest digest."""
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
        **({"jobs": jobs} if jobs else {}),
    )
    reporter = make_reporter()
    try:
        manifest = run_pack(open_source(source), layout, options, reporter)
    finally:
        reporter.close()
    if as_json:
        print(json.dumps({"digest": manifest.digest, "size": manifest.size, "layout": str(layout), "tag": tag}))
    else:
        print(manifest.digest)


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
