"""Running the ``ocimodel`` CLI as users do (a subprocess of this interpreter) and judging a finished run: its output
explained on failure, and the shape of a clean error.

A run sees the caller's environment without what would make rich draw bars or send loopback through a proxy; an
``Env`` is one CLI "user" of its own (cache, docker config, home), so no test sees another's mounts or credentials.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

ERROR_PREFIX = "ocimodel: error: "
DIGEST_LINE = re.compile(r"^sha256:[0-9a-f]{64}$")


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"{' '.join(map(str, result.args))} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str, code: int = 1) -> str:
    """Exit ``code`` (2: a usage error), nothing on stdout, exactly one ``ocimodel: error:`` line on stderr
    mentioning every fragment."""
    assert result.returncode == code, explain(result)
    assert "Traceback" not in result.stdout + result.stderr, explain(result)
    assert result.stdout == "", explain(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), explain(result)
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), explain(result)
    return lines[0]


def cli_env() -> dict[str, str]:
    """The caller's environment without anything that would make rich draw bars or send loopback via a proxy."""
    dropped = {"FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_PROXY", "no_proxy"}
    dropped |= {f"{scheme}_proxy" for scheme in ("http", "https", "all")}
    dropped |= {name.upper() for name in dropped}
    return {k: v for k, v in os.environ.items() if k not in dropped}


def cli_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ocimodel", *(str(a) for a in args)]


def run_cli(
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 120,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """One CLI run, in ``env`` (default: ``cli_env()``), with ``stdin`` as its input or none at all."""
    return subprocess.run(
        cli_command(*args),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=cli_env() if env is None else dict(env),
        preexec_fn=preexec_fn,
    )


def pack(
    source: str | Path, layout: Path, *options: str, base: str = "scratch", env: Mapping[str, str] | None = None
) -> str:
    """Run ``ocimodel pack`` and return the digest it printed as its last stdout line."""
    result = run_cli("pack", source, layout, "--base", base, *options, env=env)
    assert result.returncode == 0, explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    lines = result.stdout.splitlines()
    assert lines and DIGEST_LINE.match(lines[-1]), explain(result)
    return lines[-1]


@dataclass
class Env:
    """What one CLI "user" has: a private cache (known blobs), docker config directory and home."""

    root: Path

    def __post_init__(self) -> None:
        (self.root / "cache").mkdir(parents=True, exist_ok=True)
        (self.root / "docker").mkdir(parents=True, exist_ok=True)

    @property
    def docker_config(self) -> Path:
        return self.root / "docker"

    def vars(self) -> dict[str, str]:
        env = {k: v for k, v in cli_env().items() if k not in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR")}
        env.update(XDG_CACHE_HOME=str(self.root / "cache"), DOCKER_CONFIG=str(self.docker_config), HOME=str(self.root))
        return env

    def run(self, *args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.vars(), stdin=stdin)
