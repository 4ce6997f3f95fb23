"""Measuring one command in a fresh child process, for every benchmark here.

A fresh interpreter runs the command, so the resource usage it reports is
that command's alone (RUSAGE_CHILDREN of a process with one child)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = (
    "import resource,subprocess,sys,time;"
    "t=time.perf_counter();r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL);"
    "w=time.perf_counter()-t;u=resource.getrusage(resource.RUSAGE_CHILDREN);"
    "print(w, u.ru_utime+u.ru_stime, u.ru_maxrss*1024, r.returncode)"
)


def run_child(cmd: list[str], env: dict[str, str] | None = None
              ) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds (user + system), peak RSS (bytes) and exit
    status of one run of ``cmd``, its stdout to /dev/null."""
    out = subprocess.run([sys.executable, "-c", PROBE, *cmd], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    return float(out[0]), float(out[1]), int(out[2]), int(out[3])


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak RSS of one run of ``cmd``, which
    must succeed."""
    wall, cpu, rss, status = run_child(cmd, env)
    if status != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}")
    return wall, cpu, rss


def compile_klpsym() -> None:
    """Byte-compile the klpsym package, as installing it does: this
    environment may set PYTHONDONTWRITEBYTECODE, which would make every
    measured run compile the sources again."""
    import klpsym

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(klpsym.__file__).parent)],
                   check=True)
