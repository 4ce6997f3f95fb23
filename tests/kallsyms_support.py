"""What the kallsyms tests of several tiers share: the configs, a table's
rows, a System.map made from a synthetic vmlinux, and whether this machine's
/proc/kallsyms shows addresses."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from klpsym.elf import ElfFile
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.kernel.vmlinux import nm_symbols
from vmlinux_builder import mksysmap, sample_image

ALL = KernelConfig.from_text("CONFIG_KALLSYMS_ALL=y\nCONFIG_KALLSYMS_ABSOLUTE_PERCPU=y\n")
TEXT_ONLY = KernelConfig.from_text("# CONFIG_KALLSYMS_ALL is not set\n"
                                   "CONFIG_KALLSYMS_ABSOLUTE_PERCPU=y\n")


def rows(t: KallsymsTable) -> list[tuple[str, str]]:
    return [(str(a), str(b)) for a, b in zip(t.types, t.names, strict=True)]


def host_kallsyms_readable() -> bool:
    try:
        with open("/proc/kallsyms") as f:
            first = f.readline()
    except OSError:
        return False
    return bool(first) and not first.startswith("0" * 16)


def sample_system_map(tmp_path: Path) -> Path:
    vml = tmp_path / "vmlinux"
    vml.write_bytes(sample_image().to_bytes())
    a, t, n = nm_symbols(ElfFile.from_path(vml, relocatable_only=False))
    sysmap = tmp_path / "System.map"
    sysmap.write_text(mksysmap(list(zip(a.tolist(), t.tolist(), n.tolist(), strict=True))))
    return sysmap


NM = shutil.which("nm")


def nm_lines(path: Path) -> list[str]:
    """binutils ``nm -n`` in the C locale, undefined symbols with a 0 address."""
    assert NM is not None
    out = subprocess.run([NM, "-n", str(path)], capture_output=True, text=True, check=True,
                         env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")}).stdout
    return [("0" * 16 + ln[16:]) if ln.startswith(" ") else ln for ln in out.splitlines()]


def mine(path: Path) -> list[str]:
    a, t, n = nm_symbols(ElfFile.from_path(path, relocatable_only=False))
    return [f"{x:016x} {y} {z}" for x, y, z in zip(a.tolist(), t.tolist(), n.tolist(),
                                                    strict=True)]
