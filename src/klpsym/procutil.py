"""Ending a child process that may still run.

With nothing but ``subprocess`` and ``time`` (not even ``typing``, ~1.7 ms):
``klpsym build`` stops a make it started before it has imported anything
else (:mod:`klpsym.kbuild.early`), and the lab stops the emulators it runs
(:mod:`klpsym.lab.bochs`).
"""

from __future__ import annotations

import subprocess
import time

TYPE_CHECKING = False  # typing's, without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: How often ``nudge`` runs while :func:`stop` waits.
NUDGE_INTERVAL = 0.05


def stop(proc: subprocess.Popen[Any], grace: float = 10.0,
         nudge: Callable[[], None] | None = None) -> None:
    """End ``proc`` if it still runs: SIGTERM (make passes it on to the
    commands it runs), then SIGKILL if it has not ended within ``grace``
    seconds; reaped either way.  ``nudge``, if given, runs every
    :data:`NUDGE_INTERVAL` seconds while ``proc`` is waited for, and once
    after a SIGKILL: what lets the process's own children end."""
    if proc.poll() is not None:
        return
    proc.terminate()
    step = grace if nudge is None else NUDGE_INTERVAL
    deadline = time.monotonic() + grace
    while True:
        if nudge is not None:
            nudge()
        try:
            proc.wait(max(0.0, min(deadline - time.monotonic(), step)))
            return
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                break
    proc.kill()
    proc.wait()
    if nudge is not None:
        nudge()
