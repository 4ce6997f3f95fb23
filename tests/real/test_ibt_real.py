"""The seal list of Debian's IBT kernels (klp.ibt.sealed_addresses), read from
the vmlinux the lab extracts from each bzImage, against the kallsyms the lab
captured from a boot of it (PVH: link-time addresses); and a livepatch's IBT
thunk for a target module's function, built with trixie's kbuild."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from klpsym.elf import ElfFile
from klpsym.elf.constants import R_X86_64
from klpsym.errors import ConvertError
from klpsym.klp.ibt import (
    ENDBR64,
    JMP_OFFSET,
    THUNK_PREFIX,
    THUNK_SECTION,
    is_sealed,
    sealed_addresses,
)
from klpsym.klp.validate import ibt_problems, loader_problems
from klpsym.lab.build import build_modules
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms
from klpsym.methods.header import include_dir
from klpsym.module.kallsyms import module_kallsyms
from klpsym.module.ko import read_module

REPO = Path(__file__).resolve().parents[2]


def addresses(kernel: Kernel, names: set[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in capture_kallsyms(kernel).read_text().splitlines():
        f = line.split()
        if len(f) == 3 and f[2] in names:
            assert f[2] not in out, f"{f[2]} is not unique in {kernel.release}"
            out[f[2]] = int(f[0], 16)
    assert set(out) == names, out
    return out


@pytest.mark.parametrize("suite", ["trixie", "sid"])
def test_ibt_kernels_seal_kallsyms_lookup_name(suite: str,
                                                kernel_of: Callable[[str], Kernel]) -> None:
    """kallsyms_lookup_name (unexported, its address never taken in vmlinux)
    is sealed; the BPF helpers (address-taken in bpf_func_proto) and ipi_mb
    (handed to smp_call_function_many by membarrier) are not."""
    kernel = kernel_of(suite)
    config = kernel.config.read_text().splitlines()
    assert "CONFIG_X86_KERNEL_IBT=y" in config
    sealed = sealed_addresses(kernel.vmlinux)
    assert len(sealed) > 1000
    addr = addresses(kernel, {"kallsyms_lookup_name", "bpf_get_current_pid_tgid", "ipi_mb"})
    assert is_sealed(sealed, addr["kallsyms_lookup_name"])
    assert not is_sealed(sealed, addr["bpf_get_current_pid_tgid"])
    assert not is_sealed(sealed, addr["ipi_mb"])
    assert not is_sealed(sealed, addr["kallsyms_lookup_name"] + 4)


def test_bookworm_has_no_seal_list(bookworm: Kernel) -> None:
    assert "CONFIG_X86_KERNEL_IBT=y" not in bookworm.config.read_text().splitlines()
    with pytest.raises(ConvertError, match="without CONFIG_X86_KERNEL_IBT"):
        sealed_addresses(bookworm.vmlinux)


def build_lpc_ibt(kernel: Kernel, tmp: Path) -> tuple[Path, Path]:
    """tests/modules/lpc_target and lpc_ibt built with the kernel's kbuild
    (in its chroot where it has one), unconverted: (lpc_target.ko,
    lpc_ibt.ko).  klpsym.h goes beside lpc_ibt.c, with the flags `klpsym
    cflags --method klp` gives (klpsym does not run in the chroot)."""
    for name in ("lpc_target", "lpc_ibt"):
        shutil.copytree(REPO / "tests/modules" / name, tmp / name)
    shutil.copy(include_dir() / "klpsym.h", tmp / "lpc_ibt")
    kbuild = tmp / "lpc_ibt" / "Kbuild"
    kbuild.write_text(kbuild.read_text().replace(
        "$(shell $(KLPSYM) cflags --method klp)", "-I$(src) -DKLPSYM_METHOD=KLPSYM_METHOD_KLP"))
    (target,) = build_modules(kernel, tmp / "lpc_target")
    (patch,) = build_modules(kernel, tmp / "lpc_ibt")
    return target, patch


def klpsym(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "klpsym.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=600, check=False)


def test_livepatch_thunks_a_target_module_static(trixie: Kernel, tmp_path: Path) -> None:
    """trixie (IBT): a livepatch that takes the address of lpc_target's
    static homonym (POS 2) gets a thunk whose jmp is a klp relocation of
    object lpc_target; the real lpc_target.ko seals its functions whose
    address it never takes (.ibt_endbr_seal); inspect and check agree, and
    check warns about the --no-ibt-thunks conversion."""
    kernel = trixie
    assert "CONFIG_X86_KERNEL_IBT=y" in kernel.config.read_text().splitlines()
    target, patch = build_lpc_ibt(kernel, tmp_path)
    kallsyms = capture_kallsyms(kernel)
    source = ("--kernel-dir", kernel.kernel_dir, "--kallsyms", kallsyms,
              "--target-module", target)

    # The kernel fact, from the module the kernel's kbuild made: objtool
    # listed the ENDBR64 of lpc_target_value (global, only called directly).
    module = read_module(target)
    table = module_kallsyms(module)
    assert table.sealed is not None, "lpc_target.ko has no .ibt_endbr_seal"
    names = table.names.tolist()
    assert table.sealed[names.index("lpc_target_value")]
    # homonym (lpc_b.c's, POS 2): sealed exactly when gcc gave it an ENDBR64
    # (its address is never taken in lpc_target)
    (_, cand) = table.candidates("homonym")
    symtab = module.elf.symtab
    row = [i for i, n in enumerate(symtab.names()) if n == "homonym"][1]
    text = module.elf.section_by_uid(int(symtab.section_ref[row]))
    assert text is not None
    start = int(symtab.array["st_value"][row])
    has_endbr = bytes(text.content()[start:start + 4]) == ENDBR64
    assert bool(table.sealed[cand.index]) == has_endbr

    thunk, nothunk = tmp_path / "thunk.ko", tmp_path / "nothunk.ko"
    proc = klpsym("convert", patch, "-o", thunk, *source, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (entry,) = json.loads(proc.stdout)["ibt"]["thunks"]
    assert (entry["function"], entry["object"], entry["symbol"]) == (
        "homonym", "lpc_target", THUNK_PREFIX + "homonym")
    assert entry["sealed"] is has_endbr
    assert {r["section"] for r in entry["relocations"]} == {".data"}, entry

    out = ElfFile.from_path(thunk)
    klp_sym = ".klp.sym.lpc_target.homonym,2"
    assert relocations(out, f".klp.rela.lpc_target.{THUNK_SECTION}") == [
        (JMP_OFFSET + 1, int(R_X86_64.PLT32), klp_sym, -4)]
    # the direct call stays a klp relocation; &homonym in .data is the thunk
    calls = relocations(out, ".klp.rela.lpc_target..text")
    assert calls and all(s == klp_sym for _, _, s, _ in calls), calls
    assert any(s == THUNK_PREFIX + "homonym" for _, _, s, _ in relocations(out, ".rela.data"))
    assert not any(s == klp_sym for _, _, s, _ in relocations(out, ".rela.data"))
    assert ibt_problems(out, ["lpc_target:homonym"], 511) == []
    assert loader_problems(out, 511, livepatch=True) == []

    proc = klpsym("inspect", thunk, "--klp")
    assert proc.returncode == 0, proc.stderr
    assert "a livepatch module" in proc.stdout and "all follow the loader's rules" in proc.stdout
    assert f".klp.rela.lpc_target.{THUNK_SECTION}" in proc.stdout, proc.stdout
    proc = klpsym("check", thunk, *source)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "needs target module lpc_target" in proc.stdout
    assert "takes the address of" not in proc.stdout, proc.stdout

    proc = klpsym("convert", patch, "-o", nothunk, *source, "--no-ibt-thunks")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the module takes the address of lpc_target:homonym" in proc.stdout, proc.stdout
    proc = klpsym("check", nothunk, *source)
    assert "takes the address of lpc_target:homonym directly" in proc.stdout, proc.stdout
    assert ibt_problems(ElfFile.from_path(nothunk), ["lpc_target:homonym"], 511)


def relocations(elf: ElfFile, secname: str) -> list[tuple[int, int, str, int]]:
    sec = elf.section_by_name(secname)
    assert sec is not None, secname
    rela = elf.rela(sec)
    syms = elf.layout.r_sym(rela["r_info"]).tolist()
    types = elf.layout.r_type(rela["r_info"]).tolist()
    return sorted((int(o), int(t), elf.symtab.name(int(s)), int(a)) for o, t, s, a in
                  zip(rela["r_offset"].tolist(), types, syms, rela["r_addend"].tolist(),
                      strict=True))
