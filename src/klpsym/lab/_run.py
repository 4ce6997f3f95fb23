"""Running host tools: captured output, a timeout, and LabError on failure."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from klpsym.errors import LabError


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (or ``"no output"``)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def run(
    cmd: Sequence[str | Path],
    *,
    what: str,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    fix: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with output captured; raise LabError naming ``what`` on any failure.

    ``fix`` is appended to the message when the tool is missing or fails.
    """
    argv = [str(c) for c in cmd]
    full_env = None if env is None else {**os.environ, **env}
    hint = f"; {fix}" if fix else ""
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise LabError(f"{what}: program {argv[0]!r} not found{hint}") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{what}: {argv[0]} timed out after {timeout:g} s{hint}") from None
    if proc.returncode != 0:
        detail = last_line(proc.stderr or proc.stdout)
        raise LabError(f"{what}: {argv[0]} exited with {proc.returncode}: {detail}{hint}")
    return proc
