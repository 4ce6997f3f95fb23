"""What the x86_64 module loader does with relocations (kept apart from
klp.validate, which reads whole ELF files, so that `klpsym check` can know
it without importing the ELF model)."""

from __future__ import annotations

from klpsym.elf.constants import R_X86_64

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
