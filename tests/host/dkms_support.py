"""What the DKMS tests check of a module dkms built through klpsym: that it
is converted and valid for the loader, and that, loaded in a KASLR boot, it
prints the addresses /proc/kallsyms gives in the same boot."""

from __future__ import annotations

import re
from pathlib import Path

from klpsym.elf.constants import SHF, SHN, SHT
from klpsym.kernel.version import KernelVersion, ksym_name_len
from klpsym.klp.validate import loader_problems
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import BootResult, boot
from klpsym.module.ko import read_module

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "dkms"
NAME, VERSION = "klpsym-dkms-example", "1.0"
MODULE = "klpsym_dkms_example"
BOOT_TIMEOUT = 300.0

# Loads the module, then prints its line and the two symbols' /proc/kallsyms
# entries of the same boot.
LOAD_SCRIPT = (
    "echo \"@@uname $(uname -r)\"\n"
    f"insmod /lab/{MODULE}.ko; echo \"@@rc $?\"\n"
    "dmesg | grep 'klptest dkms:' | sed 's/^/@@dmesg /'\n"
    "grep -E ' (kallsyms_lookup_name|kptr_restrict)$' /proc/kallsyms"
    " | sed 's/^/@@kallsyms /'\n"
    "echo \"@@kptr_restrict $(cat /proc/sys/kernel/kptr_restrict)\"\n"
)


def check_converted(path: Path, release: str) -> None:
    """``path`` is the example converted by klpsym: its two unexported
    symbols as klp symbols, one .klp.rela section, nothing the loader refuses."""
    elf = read_module(path).elf
    klp_syms = sorted(elf.symtab.name(i) for i in range(len(elf.symtab))
                      if elf.symtab.section_ref[i] == -int(SHN.LIVEPATCH))
    assert klp_syms == [".klp.sym.vmlinux.kallsyms_lookup_name,0",
                        ".klp.sym.vmlinux.kptr_restrict,0"]
    klp = [s for s in elf.sections if s.flags & SHF.RELA_LIVEPATCH]
    assert [s.name for s in klp] == [".klp.rela.vmlinux..init.text"]
    want = SHF.RELA_LIVEPATCH | SHF.INFO_LINK | SHF.ALLOC  # STRIP[0]="no" keeps INFO_LINK
    assert all(s.type == SHT.RELA and s.flags & want == want for s in klp)
    assert len(elf.rela(klp[0])) == 5
    assert loader_problems(elf, ksym_name_len(KernelVersion.parse(release))) == []


def boot_and_load(kernel: Kernel, module: Path) -> BootResult:
    """A KASLR boot of ``kernel`` that loads ``module`` (LOAD_SCRIPT)."""
    return boot(kernel, {f"{MODULE}.ko": module}, LOAD_SCRIPT, timeout=BOOT_TIMEOUT,
                kaslr=True)


def check_loaded(result: BootResult, release: str) -> None:
    """The module loaded in ``release`` and printed the addresses of this
    boot's /proc/kallsyms."""
    assert result.exit_status == 0
    out = result.output
    assert f"@@uname {release}\n" in out, out[-3000:]
    assert "@@rc 0" in out, result.console[-3000:]
    kallsyms = {f[3]: int(f[1], 16) for f in (ln.split() for ln in out.splitlines())
                if len(f) == 4 and f[0] == "@@kallsyms"}
    m = re.search(r"klptest dkms: (.*)$", out, re.MULTILINE)
    assert m, out
    rec = dict(kv.split("=", 1) for kv in m.group(1).split())
    assert int(rec["fn"], 16) == kallsyms["kallsyms_lookup_name"], (rec, kallsyms)
    assert int(rec["addr"], 16) == kallsyms["kptr_restrict"], (rec, kallsyms)
    assert int(rec["got"], 16) == kallsyms["kptr_restrict"], (rec, kallsyms)
    sysctl = re.search(r"^@@kptr_restrict (\d+)$", out, re.MULTILINE)
    assert sysctl and rec["value"] == sysctl.group(1) and rec["match"] == "1", rec
    for bad in ("BUG:", "Oops", "general protection", "Call Trace", "WARNING:"):
        assert bad not in result.console, result.console[-3000:]
