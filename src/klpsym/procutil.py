"""Ending a child process that may still run.

With nothing but ``subprocess``: ``klpsym build`` stops a make it started
before it has imported anything else (:mod:`klpsym.kbuild.early`), and the
lab stops the emulators it runs (:mod:`klpsym.lab.bochs`).
"""

from __future__ import annotations

import subprocess
from typing import Any


def stop(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """End ``proc`` if it still runs: SIGTERM (make passes it on to the
    commands it runs), then SIGKILL if it has not ended within ``grace``
    seconds; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
