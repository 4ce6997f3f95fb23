"""klp-convert's annotations: which object and POS a livepatch's symbol
resolves in, written in the module's source.

The "livepatch: klp-convert tool" series (v7, 2023; never merged) documents
them in Documentation/livepatch/module-elf-format.rst, and klpsym.h offers
the same two macros::

    KLP_MODULE_RELOC(lp_target) lp_target_relocs[] = {
            KLP_SYMPOS(homonym, 2),
    };

Each entry is a ``struct klp_module_reloc { union { void *sym; u64 sym64; };
u32 sympos; } __packed`` (12 bytes) in a section ``.klp.module_relocs.<obj>``:
the pointer is an R_X86_64_64 relocation to the symbol (the name), the u32
the POS in object ``<obj>``.  They are read here, validated by the plan
against that object, and removed from the output with their relocation
sections and the symbols defined in them (the array's and the section's),
so the loader never sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from klpsym.elf import ElfFile, Section
from klpsym.elf.constants import EM, R_X86_64, SHF
from klpsym.errors import ConvertError

SECTION_PREFIX = ".klp.module_relocs."
ENTRY_SIZE = 12  # sizeof(struct klp_module_reloc), __packed


@dataclass(frozen=True)
class Annotation:
    objname: str
    name: str
    pos: int
    symbol_index: int
    section: str  # the .klp.module_relocs.<obj> it came from


def annotation_sections(elf: ElfFile) -> list[Section]:
    return [s for s in elf.sections if s.name.startswith(SECTION_PREFIX)]


def read_annotations(elf: ElfFile) -> list[Annotation]:
    """Every KLP_SYMPOS entry of ``elf``, checked for the layout above."""
    out: list[Annotation] = []
    for sec in annotation_sections(elf):
        objname = sec.name[len(SECTION_PREFIX):]
        if not objname or "." in objname:
            raise ConvertError(f"{elf.name}: annotation section {sec.name}: expected "
                               f"{SECTION_PREFIX}OBJ with a module name OBJ (KLP_MODULE_RELOC)")
        size = sec.size
        if size % ENTRY_SIZE:
            raise ConvertError(f"{elf.name}: {sec.name} is {size} bytes, not a whole number of "
                               f"{ENTRY_SIZE}-byte struct klp_module_reloc entries; declare it "
                               "with klpsym.h's KLP_MODULE_RELOC and KLP_SYMPOS")
        relas = [r for r in elf.rela_sections() if r.info_section is sec]
        rela = (np.concatenate([elf.rela(r) for r in relas]) if relas
                else np.zeros(0, dtype=elf.layout.rela))
        entries = size // ENTRY_SIZE
        offsets = rela["r_offset"].astype(np.int64)
        types = elf.layout.r_type(rela["r_info"])
        syms = elf.layout.r_sym(rela["r_info"])
        r64 = int(R_X86_64.R64) if elf.machine == EM.X86_64 else -1
        if (len(rela) != entries or (len(rela) and (
                np.any(offsets % ENTRY_SIZE) or len(np.unique(offsets)) != len(offsets)
                or np.any(types != r64) or np.any(rela["r_addend"] != 0)))):
            raise ConvertError(
                f"{elf.name}: {sec.name}: each {ENTRY_SIZE}-byte entry must hold one "
                "R_X86_64_64 relocation to its symbol with addend 0 (KLP_SYMPOS(sym, pos)); "
                f"found {len(rela)} relocations for {entries} entries")
        if np.any(syms >= len(elf.symtab)):
            raise ConvertError(f"{elf.name}: {sec.name}: a relocation uses a symbol past the "
                               "end of the symbol table; the module is corrupt")
        data = bytes(sec.content())
        order = np.argsort(offsets, kind="stable")
        for off, sym in zip(offsets[order].tolist(), syms[order].tolist(), strict=True):
            name = elf.symtab.name(sym)
            if int(elf.symtab.section_ref[sym]) != 0:
                raise ConvertError(
                    f"{elf.name}: {sec.name}: KLP_SYMPOS({name or '?'}, ...) names a symbol "
                    "the module defines itself; annotate only symbols of the target object")
            pos = int.from_bytes(data[off + 8: off + 12], elf.layout.byteorder)  # type: ignore[arg-type]
            out.append(Annotation(objname, name, pos, sym, sec.name))
    return out


def remove_annotations(elf: ElfFile) -> list[str]:
    """Remove the annotation sections, their relocation sections and the
    symbols defined in them; a relocation of a non-allocated section (debug
    info) that used those symbols goes too (the loader never applies those:
    kernel/module/main.c apply_relocations()).  Returns the sections removed."""
    secs = annotation_sections(elf)
    if not secs:
        return []
    symtab = elf.symtab
    uids = np.array([s.uid for s in secs], dtype=np.int64)
    drop = np.isin(symtab.section_ref, uids)
    drop[0] = False
    removed: list[str] = []
    for sec in secs:
        for r in [r for r in elf.rela_sections() if r.info_section is sec]:
            elf.remove_section(r)
            removed.append(r.name)
    for r in elf.rela_sections():
        rela = elf.rela(r)
        uses = drop[elf.layout.r_sym(rela["r_info"])]
        if not uses.any():
            continue
        target = r.info_section
        if target is not None and target.flags & SHF.ALLOC:
            first = int(elf.layout.r_sym(rela["r_info"])[uses][0])
            raise ConvertError(
                f"{elf.name}: {target.name} refers to {symtab.name(first) or 'a symbol'} in an "
                "annotation section (.klp.module_relocs.*), which klpsym removes; only the "
                "KLP_MODULE_RELOC array may live there, unreferenced")
        r.table = rela[~uses].copy()
    elf.remove_symbols(drop)
    for sec in secs:
        elf.remove_section(sec)
        removed.append(sec.name)
    return removed
