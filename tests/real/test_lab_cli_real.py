"""``klpsym lab`` (and ``python -m klpsym.lab``, which is the same command line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cli_support import klpsym
from klpsym.lab.provision import Kernel


def test_python_m_klpsym_lab_is_klpsym_lab(bookworm: Kernel) -> None:
    a = klpsym("lab", "provision", "bookworm", "--json")
    b = subprocess.run([sys.executable, "-m", "klpsym.lab", "provision", "bookworm", "--json"],
                       capture_output=True, text=True, timeout=600, check=False)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout) == json.loads(b.stdout)
    assert json.loads(a.stdout)["kernel_dir"] == str(bookworm.kernel_dir)


def test_run_refuses_a_missing_module_in_one_line(bookworm: Kernel, tmp_path: Path) -> None:
    proc = klpsym("lab", "run", "bookworm", tmp_path / "nope.ko")
    assert proc.returncode == 2
    assert proc.stderr == f"klpsym: error: {tmp_path / 'nope.ko'}: no such module file\n"


