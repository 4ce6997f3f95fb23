"""The processes still running that a test started, found by their command
lines (a make, its shell, a modpost waiting at the gate, an orphan)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def naming(text: object) -> dict[int, str]:
    """pid -> command line (arguments joined by spaces) of every process
    whose command line contains ``str(text)``."""
    needle = str(text).encode()
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:  # ended meanwhile
            continue
        if needle in cmdline:
            found[int(pid)] = cmdline.rstrip(b"\0").replace(b"\0", b" ").decode(
                errors="replace")
    return found


def until(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether ``condition`` became true within ``seconds`` (polled)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
