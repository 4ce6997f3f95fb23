"""Running klpsym's command line in a subprocess, as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

KLPSYM = [sys.executable, "-m", "klpsym.cli.main"]
MODULES = Path(__file__).resolve().parent / "modules"


def klpsym(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KLPSYM, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False)
