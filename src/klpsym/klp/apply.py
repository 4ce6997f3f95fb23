"""Rewrite a module's ELF object so the loader resolves symbols via kallsyms.

For each symbol to convert (see :mod:`klpsym.klp.plan`):

* the symbol is renamed ``.klp.sym.vmlinux.NAME,POS`` and put in
  SHN_LIVEPATCH, which simplify_symbols() leaves alone
  (kernel/module/main.c: ``case SHN_LIVEPATCH: break;``);
* every relocation that uses it moves out of its ``.rela.X`` into
  ``.klp.rela.vmlinux.X`` (SHT_RELA, SHF_RELA_LIVEPATCH | SHF_INFO_LINK |
  SHF_ALLOC, sh_link = .symtab, sh_info = X).  Since v5.8 (commit
  7c8e2bdd5f0d, "livepatch: Apply vmlinux-specific KLP relocations early")
  apply_relocations() hands such sections to klp_apply_section_relocs(),
  which fills in the symbol from kallsyms and applies them.

A relocation is moved, never copied: x86_64's apply_relocate_add() refuses
to write over nonzero bytes, so applying one twice fails the load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from klpsym.elf import ElfFile, Section
from klpsym.elf.constants import SHF, SHN, SHT
from klpsym.errors import ConvertError
from klpsym.klp.names import VMLINUX, klp_section_name, klp_symbol_name

KLP_RELA_FLAGS = SHF.RELA_LIVEPATCH | SHF.INFO_LINK | SHF.ALLOC


@dataclass(frozen=True)
class Conversion:
    symbol_index: int
    name: str
    pos: int
    objname: str = VMLINUX  # vmlinux, or a livepatch's target module


def relocation_users(elf: ElfFile, symbol_indexes: np.ndarray,
                     skip: Sequence[str] = ()) -> dict[int, dict[str, int]]:
    """For each symbol index: how many ordinary relocations use it, per
    relocated section name (not counting relocations of the sections in
    ``skip``)."""
    wanted = np.zeros(len(elf.symtab), dtype=bool)
    wanted[symbol_indexes] = True
    users: dict[int, dict[str, int]] = {int(i): {} for i in symbol_indexes}
    for sec in elf.rela_sections():
        _check_link(elf, sec)
        if sec.flags & SHF.RELA_LIVEPATCH:
            continue
        syms = elf.layout.r_sym(elf.rela(sec)["r_info"])
        _check_sym_range(elf, sec.name, syms)
        hits = syms[wanted[syms]]
        if not len(hits):
            continue
        target = sec.info_section.name if sec.info_section is not None else sec.name
        if target in skip:
            continue
        idx, counts = np.unique(hits, return_counts=True)
        for i, c in zip(idx.tolist(), counts.tolist(), strict=True):
            users[i][target] = users[i].get(target, 0) + c
    return users


def _check_link(elf: ElfFile, sec: Section) -> None:
    """The module loader applies every SHT_RELA section with the module's one
    symbol table, whatever its sh_link says (kernel/module/main.c
    apply_relocations()); one that names another section is corrupt."""
    if sec.link is not elf.symtab.section:
        raise ConvertError(f"{elf.name}: relocation section {sec.name} does not link to the "
                           "symbol table (sh_link); the module is corrupt")


def _check_sym_range(elf: ElfFile, secname: str, syms: np.ndarray) -> None:
    if len(syms) and int(syms.max()) >= len(elf.symtab):
        raise ConvertError(
            f"{elf.name}: a relocation in {secname} uses symbol {int(syms.max())}, "
            f"but the symbol table has {len(elf.symtab)} entries"
        )


def apply_conversions(elf: ElfFile, conversions: Sequence[Conversion]) -> dict[str, int]:
    """Convert the symbols in place; return the relocations moved per klp
    relocation section name's target part (``X`` for vmlinux's
    ``.klp.rela.vmlinux.X``, ``OBJ.X`` for a module object's).

    Relocations split per object: one ``.klp.rela.OBJ.X`` per object and
    relocated section, since klp_resolve_symbols() refuses a module
    object's section that uses a vmlinux symbol ("invalid access to
    vmlinux symbol ... from module-specific livepatch relocation section",
    v5.8 on).  A module object's relocation of a non-allocated section
    (debug info) stays where it is: the loader never applies those
    (apply_relocations(), kernel/module/main.c), while
    klp_apply_object_relocs() would write through the section's address,
    freed after load."""
    symtab = elf.symtab
    objects = sorted({c.objname for c in conversions})
    code = {objname: i + 1 for i, objname in enumerate(objects)}
    obj_of = np.zeros(len(symtab), dtype=np.int64)  # 0: not converted
    for c in conversions:
        obj_of[c.symbol_index] = code[c.objname]
        symtab.rename(c.symbol_index, klp_symbol_name(c.name, c.pos, c.objname))
        symtab.set_special_section(c.symbol_index, SHN.LIVEPATCH)

    moved: dict[str, int] = {}
    for sec in list(elf.rela_sections()):
        _check_link(elf, sec)
        if sec.flags & SHF.RELA_LIVEPATCH:
            continue
        rela = elf.rela(sec)
        syms = elf.layout.r_sym(rela["r_info"])
        _check_sym_range(elf, sec.name, syms)
        which = obj_of[syms]
        if not which.any():
            continue
        target = sec.info_section
        if target is None:
            raise ConvertError(f"{elf.name}: relocation section {sec.name} does not say which "
                               "section it applies to (sh_info)")
        keep = which == 0
        after = sec
        for objname in objects:
            mask = which == code[objname]
            if not mask.any():
                continue
            if objname != VMLINUX and not target.flags & SHF.ALLOC:
                keep |= mask
                continue
            after = _move(elf, sec, after, target, objname, rela[mask])
            key = target.name if objname == VMLINUX else f"{objname}.{target.name}"
            moved[key] = moved.get(key, 0) + int(mask.sum())
        sec.table = rela[keep].copy()
    return moved


def _move(elf: ElfFile, sec: Section, after: Section, target: Section, objname: str,
          rows: np.ndarray) -> Section:
    """Put ``rows`` into ``.klp.rela.OBJ.<target>`` (made after ``after``
    if new); returns that section."""
    klp_name = klp_section_name(target.name, objname)
    klp = elf.section_by_name(klp_name)
    if klp is None:
        klp = elf.new_section(
            klp_name, SHT.RELA, flags=int(KLP_RELA_FLAGS), addralign=8,
            entsize=elf.layout.rela.itemsize, link=elf.symtab.section, info_section=target,
        )
        klp.table = rows.copy()
        elf.insert_section(klp, after=after)
        return klp
    # A module converted before, now with more symbols: one klp
    # section per object and target, as the loader expects.
    if klp.info_section is not target:
        applies = klp.info_section.name if klp.info_section is not None else "nothing"
        raise ConvertError(f"{elf.name}: {klp_name} applies to {applies} (sh_info), "
                           f"not {target.name}; the module is corrupt")
    # dtype=: concatenate would give native byte order (a
    # big-endian module's table written little-endian)
    klp.table = np.concatenate([elf.rela(klp), rows], dtype=elf.layout.rela)
    return after
