"""klpsym addr --vmlinux on Debian's debug vmlinux: the candidates of a
duplicated name with their compilation units and source files."""

from __future__ import annotations

import json
import shutil

import pytest

from klpsym.cli.main import main
from klpsym.lab.debug import debug_files
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms


def test_addr_vmlinux_gives_pos_unit_and_source(bookworm: Kernel,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    dbg = debug_files(bookworm)
    assert main(["addr", "c_start", "dmesg_restrict", "--json", "--vmlinux", str(dbg.vmlinux),
                 "--kernel-dir", str(bookworm.kernel_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runtime_addresses"] is False
    got = [(s["name"], s["pos"], s["unit"]) for s in out["symbols"]]
    # three static c_start in 6.1: arch/x86/kernel/cpu/proc.c, fs/proc/consoles.c, crypto/proc.c
    assert got == [("c_start", 1, "proc.c"), ("c_start", 2, "consoles.c"),
                   ("c_start", 3, "proc.c"), ("dmesg_restrict", 0, None)]
    if shutil.which("addr2line"):
        sources = [s["source"] for s in out["symbols"][:3]]
        assert [src.split(":")[0].split("/build_amd64_none_amd64/")[-1] for src in sources] == [
            "arch/x86/kernel/cpu/proc.c", "fs/proc/consoles.c", "crypto/proc.c"]
    # the PVH boot runs at link-time addresses: the same as the booted kernel's kallsyms
    assert main(["addr", "c_start", "dmesg_restrict", "--json",
                 "--kallsyms", str(capture_kallsyms(bookworm))]) == 0
    booted = json.loads(capsys.readouterr().out)
    assert [s["address"] for s in booted["symbols"]] == [s["address"] for s in out["symbols"]]
