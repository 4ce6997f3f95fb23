"""``klpsym lab`` (and ``python -m klpsym.lab``, which is the same command line)."""

from __future__ import annotations

from pathlib import Path

from cli_support import MODULES, klpsym
from klpsym.lab.build import build_modules
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms


def test_run_reports_each_load(bookworm: Kernel, tmp_path: Path) -> None:
    """One boot: call_func.ko as built is refused (exit 1, the kernel's reason shown),
    the converted one loads and its kernel log lines are printed under it."""
    ko = build_modules(bookworm, MODULES / "call_func", tmp_path / "b")[0]
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


