"""klpsym.procutil.stop: a child that still runs is ended and reaped."""

from __future__ import annotations

import subprocess
import sys
import time

from klpsym.procutil import stop


def test_a_running_child_is_terminated_and_reaped() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop(proc)
    assert proc.returncode is not None and proc.returncode < 0  # ended by a signal


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    start = time.monotonic()
    stop(proc, grace=0.2)
    proc.stdout.close()
    assert proc.returncode == -9
    assert time.monotonic() - start < 30


def test_a_child_that_has_ended_is_left_as_it_is() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    stop(proc)
    assert proc.returncode == 3
