"""How tests judge a finished ``ocimodel`` run: its output explained on failure, and the shape of a clean error."""

from __future__ import annotations

import subprocess

ERROR_PREFIX = "ocimodel: error: "


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
