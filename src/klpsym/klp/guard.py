"""The load-time guard: a converted module refuses to load on a kernel that
would skip its klp relocations.

On a kernel built without CONFIG_LIVEPATCH, apply_relocations()
(kernel/module/main.c) still hands every SHF_RELA_LIVEPATCH section to
klp_apply_section_relocs(), but that is the stub of include/linux/livepatch.h
that returns 0: nothing is written, and simplify_symbols() skips
SHN_LIVEPATCH symbols.  The module loads and runs with zero where the
unexported symbols' addresses should be.

The guard is one undefined GLOBAL symbol, ``klp_enable_patch``, appended to
the symbol table.  kernel/livepatch/core.c exports it (EXPORT_SYMBOL_GPL)
and is only built with CONFIG_LIVEPATCH.  simplify_symbols() resolves every
SHN_UNDEF symbol of the table, whether a relocation uses it or not (v5.8 ..
v7.x: ``case SHN_UNDEF: ksym = resolve_symbol_wait(...)``), so without
livepatch the load fails with ``<mod>: Unknown symbol klp_enable_patch (err
-2)`` and insmod reports "Unknown symbol in module".  A non-weak binding is
what makes it fatal: an unresolved STB_WEAK symbol is accepted.

Under CONFIG_MODVERSIONS resolve_symbol() calls check_version(), which
warns "<mod>: no symbol version for klp_enable_patch" when the module's
version table lacks the name, so the guard also gets a version entry with the
CRC from the target's Module.symvers (in every table the module has; see
:mod:`klpsym.module.versions`).  Since the symbol is GPL-only, a module with a
GPL-incompatible license could never resolve it; such modules are not
converted anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from klpsym.elf import ElfFile
from klpsym.elf.constants import STB, STT
from klpsym.errors import ConvertError, param
from klpsym.kernel.target import TargetKernel
from klpsym.module.ko import Module
from klpsym.module.license import is_gpl_compatible
from klpsym.module.versions import SymbolVersion, append_version, read_version_tables

GUARD_SYMBOL = "klp_enable_patch"


class GuardAction(StrEnum):
    ADD = "add"  # the guard is added to the output
    PRESENT = "present"  # the module references klp_enable_patch already
    NOT_NEEDED = "not needed"  # the output has no livepatch symbols
    OFF = "off"  # --no-guard


@dataclass(frozen=True)
class GuardPlan:
    action: GuardAction
    # The CRC written into the module's version tables, None when it has none
    # (kernel without CONFIG_MODVERSIONS) or the kernel gives no CRC.
    crc: int | None = None
    tables: tuple[str, ...] = ()  # the version table formats extended

    @property
    def adds(self) -> bool:
        return self.action == GuardAction.ADD

    def describe(self) -> str:
        if self.action == GuardAction.ADD:
            crc = f" (CRC {self.crc:#010x} in {', '.join(self.tables)} versions)" \
                if self.crc is not None else ""
            return f"load-time guard: undefined {GUARD_SYMBOL}{crc}"
        if self.action == GuardAction.PRESENT:
            return f"load-time guard: the module already references {GUARD_SYMBOL}"
        if self.action == GuardAction.OFF:
            return "no load-time guard (--no-guard)"
        return "no load-time guard needed (no livepatch symbols)"


def guard_index(elf: ElfFile, name: str = GUARD_SYMBOL) -> int | None:
    """Index of the non-weak undefined symbol ``name``, if any."""
    st = elf.symtab
    binds = st.binds
    for i in st.named(name, st.undefined()).tolist():
        if binds[i] != STB.WEAK:
            return int(i)
    return None


def plan_guard(module: Module, target: TargetKernel, has_livepatch: bool,
               enabled: bool = True) -> GuardPlan:
    """What the conversion of ``module`` does about the guard.

    ``has_livepatch``: the output will have livepatch symbols (some are
    converted now, or were before).  Refuses (ConvertError) when the guard is
    wanted but the target's Module.symvers does not export klp_enable_patch:
    every kernel with CONFIG_LIVEPATCH does, so either the symvers is not this
    kernel's or the kernel cannot apply klp relocations."""
    if not has_livepatch:
        return GuardPlan(GuardAction.NOT_NEEDED)
    elf = module.elf
    if guard_index(elf) is not None:
        return GuardPlan(GuardAction.PRESENT)
    if not enabled:
        return GuardPlan(GuardAction.OFF)
    where = str(module.path)
    if len(elf.symtab.named(GUARD_SYMBOL, elf.symtab.undefined())):  # weak ones, then
        raise ConvertError(
            f"{where}: references {GUARD_SYMBOL} weakly, which the loader lets go unresolved, "
            "so the load-time guard cannot be added; make the reference non-weak, or pass "
            f"{param('guard')}")
    license = module.modinfo.license
    if license is None or not is_gpl_compatible(license):
        raise ConvertError(
            f"{where}: the load-time guard references {GUARD_SYMBOL}, a GPL-only export, which "
            f"a module with license {license or '(none)'!r} cannot resolve; set a "
            "GPL-compatible MODULE_LICENSE()")
    export = target.symvers.get(GUARD_SYMBOL)
    if export is None or not export.from_vmlinux:
        cfg = target.config
        if cfg is not None and cfg.enabled("LIVEPATCH"):
            raise ConvertError(
                f"{target.symvers.source}: does not list vmlinux's export {GUARD_SYMBOL}, "
                f"although {cfg.source} has CONFIG_LIVEPATCH=y (kernel/livepatch/core.c "
                "exports it whenever livepatch is built): is it this kernel's Module.symvers? "
                "The load-time guard needs it; pass the kernel's own build dir with "
                f"{param('kernel_dir')}, or {param('guard')}")
        raise ConvertError(
            f"{where}: kernel {target.release} does not export {GUARD_SYMBOL} "
            f"({target.symvers.source}), as every kernel built with CONFIG_LIVEPATCH does, so "
            f"its loader most likely skips klp relocations; check its .config ({param('config')}), "
            f"or pass {param('guard')} to convert without the load-time guard")
    tables = read_version_tables(elf)
    if not tables or export.crc is None:
        # No table: check_version() is not reached for anything (no
        # CONFIG_MODVERSIONS).  No CRC: check_version() accepts the symbol
        # ("Exporting module didn't supply crcs?  OK").
        return GuardPlan(GuardAction.ADD)
    return GuardPlan(GuardAction.ADD, export.crc, tuple(t.format.value for t in tables))


def apply_guard(elf: ElfFile, guard: GuardPlan) -> int | None:
    """Add the guard to ``elf`` as planned; return the new symbol's index."""
    if not guard.adds:
        return None
    index = elf.symtab.append_undefined(GUARD_SYMBOL, int(STB.GLOBAL), int(STT.NOTYPE))
    if guard.crc is not None:
        append_version(elf, SymbolVersion(GUARD_SYMBOL, guard.crc))
    return index


def _local_after_info(elf: ElfFile) -> bool:
    """A local symbol at or past the symbol table's sh_info (the first
    non-local one).  The loader does not read sh_info, so an input where
    it is off still loads; appending must only not make it so."""
    st = elf.symtab
    return bool(len(st) and np.any(st.binds[int(st.section.info):] == STB.LOCAL))


def guard_problems(before: ElfFile, after: ElfFile, guard: GuardPlan) -> list[str]:
    """The guard as the loader will see it: one GLOBAL undefined symbol
    appended after the input's symbols, and in every version table the input's
    entries followed by the guard's with the planned CRC."""
    if not guard.adds:
        return []
    problems: list[str] = []
    st = after.symtab
    n = len(before.symtab)
    idx = guard_index(after)
    if idx is None:
        problems.append(f"the guard symbol {GUARD_SYMBOL} is missing")
    elif idx < n:
        problems.append(f"the guard symbol {GUARD_SYMBOL} is at index {idx}, not appended")
    elif not (st.binds[idx] == STB.GLOBAL and int(st.array["st_value"][idx]) == 0
              and int(st.array["st_size"][idx]) == 0):
        problems.append(f"the guard symbol {GUARD_SYMBOL} is not a plain GLOBAL undefined symbol")
    if _local_after_info(after) and not _local_after_info(before):
        problems.append("a local symbol follows the first non-local one (symtab sh_info)")
    old = {t.format: t.entries for t in read_version_tables(before)}
    new = {t.format: t.entries for t in read_version_tables(after)}
    if set(old) != set(new):
        problems.append(f"version tables changed from {sorted(old)} to {sorted(new)}")
    for fmt, entries in new.items():
        want = old.get(fmt, ())
        if guard.crc is None:
            if entries != want:
                problems.append(f"{fmt} version table changed")
        elif entries != (*want, SymbolVersion(GUARD_SYMBOL, guard.crc)):
            problems.append(f"{fmt} version table is not the input's plus "
                            f"{GUARD_SYMBOL} {guard.crc:#010x}")
    return problems
