"""``klpsym lab`` (and ``python -m klpsym.lab``, which is the same command line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import klpsym
from klpsym.lab.insmod import parse, script


@pytest.mark.parametrize("sub", [[], ["provision"], ["prune"], ["kallsyms"], ["build"], ["make"],
                                 ["run"], ["boot"]])
def test_help_teaches_with_examples(sub: list[str]) -> None:
    proc = klpsym("lab", *sub, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "examples:" in proc.stdout and "klpsym lab " in proc.stdout


def test_guest_script_round_trip() -> None:
    """The records the guest script writes are what parse() reads back."""
    text = script([("a.klp.ko", "a"), ("b.ko", "b")])
    assert "insmod /lab/mod0/a.klp.ko" in text and "grep -c '^a ' /proc/modules" in text
    out = ("@@begin 0\n@@rc 0 0\n@@log 0 [ 1.0] klptest a: ok\n@@loaded 0 1\n@@begin 1\n"
           "@@out 1 insmod: can't insert 'b.ko': invalid module format\n@@rc 1 8\n"
           "@@log 1 [ 1.1] b: Unknown symbol x (err -2)\n@@loaded 1 0\n")
    a, b = parse(out, [Path("a.klp.ko"), Path("b.ko")])
    assert a.ok and a.log == ["[ 1.0] klptest a: ok"] and a.output == []
    assert not b.ok and b.status == 8 and b.output[0].startswith("insmod: can't insert")
    assert b.log == ["[ 1.1] b: Unknown symbol x (err -2)"]








def test_cli_boot_timeout_matches_the_lab() -> None:
    """cli/lab.py spells the default boot timeout out, so that building the
    parser imports no lab code; it must be the lab's."""
    from klpsym.cli import lab as cli_lab
    from klpsym.lab.qemu import BOOT_TIMEOUT

    assert cli_lab.BOOT_TIMEOUT == BOOT_TIMEOUT


def test_building_the_parser_imports_no_numpy() -> None:
    """`klpsym --help` and every command's startup stay light: the commands
    import their libraries when they run."""

    code = ("import sys; from klpsym.cli.main import build_parser; build_parser(); "
            "heavy = sorted(m for m in sys.modules if m == 'numpy' or m.startswith("
            "('klpsym.lab.', 'klpsym.load', 'klpsym.klp', 'klpsym.elf', 'klpsym.kbuild'))); "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out
