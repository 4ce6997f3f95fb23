"""``klpsym lab`` (and ``python -m klpsym.lab``, which is the same command line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from klpsym.lab.build import build_modules
from klpsym.lab.insmod import parse, script
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms

CALL_FUNC = Path(__file__).resolve().parents[1] / "modules" / "call_func"
KLPSYM = [sys.executable, "-m", "klpsym.cli.main"]


def klpsym(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KLPSYM, *map(str, args)], capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.mark.parametrize("sub", [[], ["provision"], ["kallsyms"], ["build"], ["make"], ["run"],
                                 ["boot"]])
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


@pytest.mark.real
def test_python_m_klpsym_lab_is_klpsym_lab(bookworm: Kernel) -> None:
    a = klpsym("lab", "provision", "bookworm", "--json")
    b = subprocess.run([sys.executable, "-m", "klpsym.lab", "provision", "bookworm", "--json"],
                       capture_output=True, text=True, timeout=600, check=False)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout) == json.loads(b.stdout)
    assert json.loads(a.stdout)["kernel_dir"] == str(bookworm.kernel_dir)


@pytest.mark.real
def test_run_refuses_a_missing_module_in_one_line(bookworm: Kernel, tmp_path: Path) -> None:
    proc = klpsym("lab", "run", "bookworm", tmp_path / "nope.ko")
    assert proc.returncode == 2
    assert proc.stderr == f"klpsym: error: {tmp_path / 'nope.ko'}: no such module file\n"


@pytest.mark.e2e
def test_run_reports_each_load(bookworm: Kernel, tmp_path: Path) -> None:
    """One boot: call_func.ko as built is refused (exit 1, the kernel's reason shown),
    the converted one loads and its kernel log lines are printed under it."""
    ko = build_modules(bookworm, CALL_FUNC, tmp_path / "b")[0]
    klp = tmp_path / "call_func.klp.ko"
    conv = klpsym("convert", ko, "-o", klp, "--kernel-dir", bookworm.kernel_dir,
                  "--kallsyms", capture_kallsyms(bookworm))
    assert conv.returncode == 0, conv.stderr
    proc = klpsym("lab", "run", "bookworm", ko, klp, "--kaslr")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith(f"bookworm: {bookworm.release} (KASLR), boot ")
    first, second = out.split(f"insmod {klp}: ")
    assert f"insmod {ko}: FAILED (insmod exit " in first
    assert "Unknown symbol kallsyms_lookup_name" in first
    assert second.startswith("loaded\n") and "klptest call_func: result=OK" in second


def test_cli_boot_timeout_matches_the_lab() -> None:
    """cli/lab.py spells the default boot timeout out, so that building the
    parser imports no lab code; it must be the lab's."""
    from klpsym.cli import lab as cli_lab
    from klpsym.lab.qemu import BOOT_TIMEOUT

    assert cli_lab.BOOT_TIMEOUT == BOOT_TIMEOUT


def test_building_the_parser_imports_no_numpy() -> None:
    """`klpsym --help` and every command's startup stay light: the commands
    import their libraries when they run."""
    import subprocess
    import sys

    code = ("import sys; from klpsym.cli.main import build_parser; build_parser(); "
            "heavy = sorted(m for m in sys.modules if m == 'numpy' or m.startswith("
            "('klpsym.lab.', 'klpsym.load', 'klpsym.klp', 'klpsym.elf', 'klpsym.kbuild'))); "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out
