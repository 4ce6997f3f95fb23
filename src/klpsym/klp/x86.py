"""What the x86_64 module loader does with relocations (kept apart from
klp.validate, which reads whole ELF files, so that `klpsym check` can know
it without importing the ELF model)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from klpsym.elf.constants import EM, R_X86_64, SHF, SHT

if TYPE_CHECKING:
    from klpsym.elf import ElfFile

# Relocation types arch/x86/kernel/module.c: __write_relocate_add() handles
# (v6.1), with the bytes each writes; anything else fails the load with
# "Unknown rela relocation".
X86_64_SIZES = {
    R_X86_64.NONE: 0,
    R_X86_64.R64: 8,
    R_X86_64.R32: 4,
    R_X86_64.R32S: 4,
    R_X86_64.PC32: 4,
    R_X86_64.PLT32: 4,
    R_X86_64.PC64: 8,
}
X86_64_HANDLED = frozenset(int(t) for t in X86_64_SIZES)


def unhandled_relocation_types(elf: ElfFile) -> list[tuple[str, list[int]]]:
    """x86_64: each relocation section of an allocated section that has types
    apply_relocate_add() does not handle, with those types (sorted).  The
    loader fails the whole load on one ("Unknown rela relocation: %llu");
    relocations of sections that are not SHF_ALLOC are never applied
    (apply_relocations(), kernel/module/main.c, v5.8 .. v7.x).  The tables
    are read as they are, whatever their sh_entsize says.  Other machines:
    nothing."""
    if elf.machine != EM.X86_64:
        return []
    known = np.zeros(max(X86_64_HANDLED) + 2, dtype=bool)
    known[sorted(X86_64_HANDLED)] = True
    out = []
    for sec in elf.sections:
        if sec.type != SHT.RELA or sec.info_section is None:
            continue
        if not sec.info_section.flags & SHF.ALLOC:
            continue
        if sec.table is not None:
            info = sec.table["r_info"]
        else:  # a view, no copy: only read here
            usable = len(sec.data) - len(sec.data) % elf.layout.rela.itemsize
            info = np.frombuffer(sec.data, dtype=elf.layout.rela, count=usable //
                                 elf.layout.rela.itemsize)["r_info"]
        types = np.minimum(elf.layout.r_type(info), len(known) - 1)
        if not known[types].all():
            raw = elf.layout.r_type(info)
            out.append((sec.name, np.unique(raw[~known[types]]).tolist()))
    return out
