"""Check a converted module against the rules of the kernel's module loader.

The output of a conversion is re-read from its bytes and checked here before
it is written into place.  Each rule names the kernel code it follows.
"""

from __future__ import annotations

import numpy as np

from klpsym.elf import ElfFile
from klpsym.elf.constants import EM, R_X86_64, SHF, SHN, SHT, STB
from klpsym.klp.names import VMLINUX, parse_section_name, parse_symbol_name

# Relocation types arch/x86/kernel/module.c: __write_relocate_add() handles
# (v6.1); anything else fails the load with "Unknown rela relocation".
_X86_64_SIZES = {
    R_X86_64.NONE: 0,
    R_X86_64.R64: 8,
    R_X86_64.R32: 4,
    R_X86_64.R32S: 4,
    R_X86_64.PC32: 4,
    R_X86_64.PLT32: 4,
    R_X86_64.PC64: 8,
}
X86_64_HANDLED = frozenset(int(t) for t in _X86_64_SIZES)


def loader_problems(elf: ElfFile, name_width: int) -> list[str]:
    """Everything the loader would reject or silently skip in ``elf``'s
    livepatch symbols and sections; empty when it would apply them all."""
    problems: list[str] = []
    if not elf.has_symtab:
        return ["no symbol table"]
    symtab = elf.symtab
    nsyms = len(symtab)
    is_klp_sym = symtab.section_ref == -int(SHN.LIVEPATCH)

    for i in np.flatnonzero(is_klp_sym).tolist():
        name = symtab.name(i)
        parsed = parse_symbol_name(name, name_width)
        if parsed is None:
            # klp_resolve_symbols(): "symbol %s has an incorrectly formatted name"
            problems.append(f"symbol {name!r} is SHN_LIVEPATCH but its name is not "
                            f".klp.sym.OBJ.NAME,POS with NAME of at most {name_width} characters")

    for sec in elf.sections:
        klp = bool(sec.flags & SHF.RELA_LIVEPATCH)
        if sec.type != SHT.RELA:
            if klp:
                problems.append(f"{sec.name}: SHF_RELA_LIVEPATCH on a section that is not SHT_RELA")
            continue
        rela = elf.rela(sec)
        syms = elf.layout.r_sym(rela["r_info"])
        if len(syms) and int(syms.max()) >= nsyms:
            problems.append(f"{sec.name}: relocation uses symbol {int(syms.max())} of {nsyms}")
            continue
        target = sec.info_section
        if not klp:
            # An ordinary relocation against a SHN_LIVEPATCH symbol would be
            # applied by apply_relocate_add() with st_value 0.
            if target is not None and target.flags & SHF.ALLOC and np.any(is_klp_sym[syms]):
                bad = int(syms[is_klp_sym[syms]][0])
                problems.append(f"{sec.name}: ordinary relocation uses livepatch symbol "
                                f"{symtab.name(bad)!r}")
            continue
        # klp_apply_section_relocs(): sscanf(".klp.rela.%55[^.]")
        objname = parse_section_name(sec.name)
        if objname is None:
            problems.append(f"{sec.name}: incorrectly formatted klp section name")
            continue
        if objname != VMLINUX:
            # For a module that is not a livepatch, apply_relocations() only
            # ever passes objname NULL (vmlinux); other sections are skipped.
            problems.append(f"{sec.name}: object {objname!r} is never applied for a plain module "
                            "(only vmlinux)")
        want = SHF.RELA_LIVEPATCH | SHF.INFO_LINK | SHF.ALLOC
        if sec.flags & want != want:
            problems.append(f"{sec.name}: flags {sec.flags:#x} lack SHF_ALLOC|SHF_INFO_LINK|"
                            "SHF_RELA_LIVEPATCH")
        if sec.link is not symtab.section:
            problems.append(f"{sec.name}: sh_link is not the symbol table")
        if target is None:
            problems.append(f"{sec.name}: sh_info names no section to relocate")
            continue
        if sec.entsize != elf.layout.rela.itemsize:
            problems.append(f"{sec.name}: sh_entsize {sec.entsize}, expected "
                            f"{elf.layout.rela.itemsize}")
        for s in np.unique(syms).tolist():
            if not is_klp_sym[s]:
                # klp_resolve_symbols(): "symbol %s is not marked as a livepatch symbol"
                problems.append(f"{sec.name}: symbol {symtab.name(s)!r} is not marked as a "
                                "livepatch symbol (SHN_LIVEPATCH)")
                continue
            parsed = parse_symbol_name(symtab.name(s), name_width)
            if parsed is not None and parsed.objname != objname:
                problems.append(f"{sec.name}: symbol {symtab.name(s)!r} belongs to another object")
        if elf.machine == EM.X86_64:
            problems += _x86_64_targets(elf, sec.name, rela, target)
    return problems


def _x86_64_targets(elf: ElfFile, secname: str, rela: np.ndarray, target: object) -> list[str]:
    from klpsym.elf import Section

    assert isinstance(target, Section)
    problems: list[str] = []
    types = elf.layout.r_type(rela["r_info"])
    unknown = sorted(set(types.tolist()) - {int(t) for t in _X86_64_SIZES})
    if unknown:
        problems.append(f"{secname}: relocation types {unknown} are not handled by the x86_64 "
                        "module loader")
    if target.type == SHT.NOBITS or not target.flags & SHF.ALLOC:
        return problems
    data = np.frombuffer(bytes(target.content()), dtype=np.uint8)
    offsets = rela["r_offset"].astype(np.int64)
    for t, size in _X86_64_SIZES.items():
        if not size:
            continue
        sel = offsets[types == int(t)]
        if not len(sel):
            continue
        if int(sel.max()) + size > len(data) or int(sel.min()) < 0:
            problems.append(f"{secname}: relocation offset outside {target.name}")
            continue
        window = data[sel[:, None] + np.arange(size)[None, :]]
        nonzero = np.flatnonzero(window.any(axis=1))
        if len(nonzero):
            # arch/x86/kernel/module.c: "x86/modules: Invalid relocation
            # target, existing value is nonzero for type %d, loc %p, val %Lx"
            problems.append(f"{secname}: target bytes at {target.name}+{int(sel[nonzero[0]]):#x} "
                            "are nonzero; the x86_64 loader refuses to relocate there")
    return problems


def relocation_changes(before: ElfFile, after: ElfFile) -> list[str]:
    """Relocations lost, added or duplicated between ``before`` and ``after``:
    per relocated section, the multiset of (offset, info, addend) over its
    ordinary and klp relocation sections must be the same (symbols keep their
    indexes; only names and sections change)."""
    def collect(elf: ElfFile) -> dict[str, np.ndarray]:
        per: dict[str, list[np.ndarray]] = {}
        for sec in elf.rela_sections():
            target = sec.info_section.name if sec.info_section is not None else f"?{sec.name}"
            per.setdefault(target, []).append(elf.rela(sec))
        out = {}
        for target, parts in per.items():
            arr = np.concatenate(parts) if parts else np.zeros(0, elf.layout.rela)
            order = np.lexsort((arr["r_addend"], arr["r_info"], arr["r_offset"]))
            out[target] = arr[order]
        return out

    a, b = collect(before), collect(after)
    problems = []
    for target in sorted(set(a) | set(b)):
        x = a.get(target)
        y = b.get(target)
        nx = 0 if x is None else len(x)
        ny = 0 if y is None else len(y)
        if nx != ny:
            problems.append(f"{target}: {nx} relocations before, {ny} after")
        elif x is not None and y is not None and not np.array_equal(x, y):
            problems.append(f"{target}: relocations changed")
    return problems


def symbol_changes(before: ElfFile, after: ElfFile, name_width: int,
                   added: tuple[str, ...] = ()) -> list[str]:
    """Only converted symbols may change, and only into their klp form.

    ``added``: the names of undefined symbols the conversion appends after the
    input's (the load-time guard); nothing else may be added.  A symbol that
    spans a whole section whose content grew (modpost's ``____versions``
    array when the guard gets a version entry) may grow with it."""
    sa, sb = before.symtab, after.symtab
    n = len(sa)
    extra = sb.names()[n:] if len(sb) >= n else []
    if len(sb) < n or sorted(extra) != sorted(added):
        return [f"symbol count changed from {n} to {len(sb)}"
                + (f" (added {extra}, expected {list(added)})" if extra or added else "")]
    problems = [f"added symbol {sb.name(i)!r} is not a plain undefined symbol"
                for i in range(n, len(sb))
                if int(sb.section_ref[i]) != 0 or int(sb.array["st_value"][i]) != 0
                or int(sb.array["st_size"][i]) != 0 or sb.binds[i] == STB.LOCAL]
    a, b = sa.array, sb.array[:n]
    names_a, names_b = sa.names(), sb.names()[:n]
    where_a, where_b = _symbol_sections(before), _symbol_sections(after)[:n]
    size_same = (a["st_size"] == b["st_size"]) | _spans_grown_section(before, after, where_b)
    fields_same = (
        (a["st_info"] == b["st_info"])
        & (a["st_other"] == b["st_other"])
        & (a["st_value"] == b["st_value"])
        & size_same
    )
    for i in np.flatnonzero(~fields_same).tolist():
        problems.append(f"symbol {names_a[i]!r} changed its type, binding, value or size")
    for i in np.flatnonzero((np.array(names_a, dtype=object) != np.array(names_b, dtype=object))
                            | (where_a != where_b)).tolist():
        parsed = parse_symbol_name(names_b[i], name_width)
        if not (where_a[i] == "UNDEF" and where_b[i] == "LIVEPATCH" and parsed is not None
                and parsed.name == names_a[i]):
            problems.append(f"symbol {names_a[i]!r} changed to {names_b[i]!r} unexpectedly")
    return problems


def _spans_grown_section(before: ElfFile, after: ElfFile, where: np.ndarray) -> np.ndarray:
    """Per input symbol: it is at offset 0 of a section that grew, spanning
    all of it before and after."""
    out = np.zeros(len(before.symtab), dtype=bool)
    sa, sb = before.symtab.array, after.symtab.array
    for sec in after.sections:
        old = before.section_by_name(sec.name)
        if old is None or old.size >= sec.size:
            continue
        out |= ((where == f"section {sec.name}") & (sa["st_value"] == 0)
                & (sa["st_size"] == old.size) & (sb["st_size"][: len(sa)] == sec.size))
    return out


def _symbol_sections(elf: ElfFile) -> np.ndarray:
    """Each symbol's section as a comparable name across files (section
    indexes move when sections are inserted)."""
    ref = elf.symtab.section_ref
    names = {s.uid: s.name for s in elf.sections}
    special = {-int(v): v.name for v in SHN}
    special[0] = "UNDEF"
    table = {**{k: f"section {v}" for k, v in names.items() if k != 0}, **special}
    return np.array([table.get(int(r), f"#{int(r)}") for r in ref], dtype=object)
