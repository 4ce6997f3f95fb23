"""Check a converted module against the rules of the kernel's module loader.

The output of a conversion is re-read from its bytes and checked here before
it is written into place.  Each rule names the kernel code it follows.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from klpsym.elf import ElfFile
from klpsym.elf.constants import EM, SHF, SHN, SHT, STB
from klpsym.elf.describe import relocation_type
from klpsym.klp.ibt import ENDBR64, JMP_OFFSET, THUNK_PREFIX, function_label, klp_references
from klpsym.klp.names import VMLINUX, KlpSymbol, parse_section_name, parse_symbol_name
from klpsym.klp.x86 import X86_64_SIZES


def loader_problems(elf: ElfFile, name_width: int, *, livepatch: bool = False) -> list[str]:
    """Everything the loader would reject or silently skip in ``elf``'s
    livepatch symbols and sections; empty when it would apply them all.
    ``livepatch``: ``elf`` is a livepatch module (MODULE_INFO(livepatch,
    "Y")), whose module objects' sections the kernel applies when the
    object is loaded (kernel/livepatch/core.c klp_apply_object_relocs())."""
    problems: list[str] = []
    if not elf.has_symtab:
        return ["no symbol table"]
    symtab = elf.symtab
    nsyms = len(symtab)
    is_klp_sym = symtab.section_ref == -int(SHN.LIVEPATCH)

    klp_names: dict[int, KlpSymbol | None] = {}
    for i in np.flatnonzero(is_klp_sym).tolist():
        name = symtab.name(i)
        parsed = klp_names[i] = parse_symbol_name(name, name_width)
        if parsed is None:
            # klp_resolve_symbols(): "symbol %s has an incorrectly formatted name"
            problems.append(f"symbol {name!r} is SHN_LIVEPATCH but its name is not "
                            f".klp.sym.OBJ.NAME,POS with NAME of at most {name_width} characters")

    any_klp_sym = bool(klp_names)
    for sec in elf.sections:
        klp = bool(sec.flags & SHF.RELA_LIVEPATCH)
        if sec.type != SHT.RELA:
            if klp:
                problems.append(f"{sec.name}: SHF_RELA_LIVEPATCH on a section that is not SHT_RELA")
            continue
        if not klp and not any_klp_sym:
            continue  # an ordinary section, and no livepatch symbol it could use
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
        if objname != VMLINUX and not livepatch:
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
        used = np.zeros(nsyms, dtype=bool)
        used[syms] = True
        for s in np.flatnonzero(used).tolist():
            if not is_klp_sym[s]:
                # klp_resolve_symbols(): "symbol %s is not marked as a livepatch symbol"
                problems.append(f"{sec.name}: symbol {symtab.name(s)!r} is not marked as a "
                                "livepatch symbol (SHN_LIVEPATCH)")
                continue
            parsed = klp_names[s]
            if parsed is not None and parsed.objname != objname:
                # klp_resolve_symbols() (v5.8 on): "invalid access to vmlinux
                # symbol '%s' from module-specific livepatch relocation
                # section"; and a symbol of another module is not resolved in
                # this one.
                problems.append(f"{sec.name}: symbol {symtab.name(s)!r} belongs to another object")
        if elf.machine == EM.X86_64:
            problems += _x86_64_targets(elf, sec.name, rela, target)
    return problems


def moved_relocation_problems(elf: ElfFile, symbols: Sequence[int]) -> list[str]:
    """What :func:`loader_problems` would say of the relocations that use
    ``symbols`` once they are in .klp.rela sections (x86_64: their types,
    offsets, and zero target bytes).  The loader holds them to the same
    rules where they are now, so a module that breaks one would not load
    converted or not."""
    if elf.machine != EM.X86_64 or not len(symbols) or not elf.has_symtab:
        return []
    chosen = np.zeros(len(elf.symtab), dtype=bool)
    chosen[np.asarray(symbols, dtype=np.int64)] = True
    problems: list[str] = []
    for sec in elf.rela_sections():
        if sec.flags & SHF.RELA_LIVEPATCH or sec.info_section is None:
            continue
        rela = elf.rela(sec)
        syms = elf.layout.r_sym(rela["r_info"])
        if len(syms) and int(syms.max()) >= len(chosen):
            continue  # convert refuses it with its own message
        mask = chosen[syms]
        if mask.any():
            problems += _x86_64_targets(elf, sec.name, rela[mask], sec.info_section)
    return problems


def _x86_64_targets(elf: ElfFile, secname: str, rela: np.ndarray, target: object) -> list[str]:
    from klpsym.elf import Section

    assert isinstance(target, Section)
    problems: list[str] = []
    types = elf.layout.r_type(rela["r_info"])
    known = np.isin(types, np.array([int(t) for t in X86_64_SIZES]))
    if not known.all():
        unknown = sorted(set(types[~known].tolist()))
        problems.append(f"{secname}: relocation types {unknown} are not handled by the x86_64 "
                        "module loader")
    if target.type == SHT.NOBITS or not target.flags & SHF.ALLOC:
        return problems
    data = np.frombuffer(target.content(), dtype=np.uint8)
    offsets = rela["r_offset"].astype(np.int64)
    for t, size in X86_64_SIZES.items():
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
    def collect(elf: ElfFile) -> dict[str, list[np.ndarray]]:
        per: dict[str, list[np.ndarray]] = {}
        for sec in elf.rela_sections():
            target = sec.info_section.name if sec.info_section is not None else f"?{sec.name}"
            per.setdefault(target, []).append(elf.rela(sec))
        return per

    a, b = collect(before), collect(after)
    problems = []
    for target in sorted(set(a) | set(b)):
        x, y = a.get(target, []), b.get(target, [])
        if len(x) == len(y) and all(_same_bytes(p, q) for p, q in zip(x, y, strict=True)):
            continue  # the same tables, to the byte
        nx, ny = sum(len(p) for p in x), sum(len(q) for q in y)
        if nx != ny:
            problems.append(f"{target}: {nx} relocations before, {ny} after")
        elif not same_relocations(x, y):
            problems.append(f"{target}: relocations changed")
    return problems


def _same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(
        np.ascontiguousarray(x).view(np.uint8), np.ascontiguousarray(y).view(np.uint8))


def same_relocations(x: np.ndarray | Sequence[np.ndarray],
                     y: np.ndarray | Sequence[np.ndarray]) -> bool:
    """Whether two Elf64_Rela arrays (or lists of arrays, taken together)
    hold the same multiset of (r_offset, r_info, r_addend).  Compared in
    offset order (linkers emit relocations sorted by offset, so the sort is
    nearly free); only entries that share an offset are also ordered by info
    and addend.  One field at a time, so a 100k-entry table costs a few MB."""
    xs = [x] if isinstance(x, np.ndarray) else list(x)
    ys = [y] if isinstance(y, np.ndarray) else list(y)
    if sum(len(p) for p in xs) != sum(len(q) for q in ys):
        return False
    ox, oy = _field(xs, "r_offset", np.uint64), _field(ys, "r_offset", np.uint64)
    if not len(ox):
        return True
    px, py = _offset_order(ox), _offset_order(oy)
    if px is not None:
        ox = ox[px]
    if py is not None:
        oy = oy[py]
    if not np.array_equal(ox, oy):
        return False
    same_as_next = ox[1:] == ox[:-1]
    del oy
    shared: np.ndarray | None = None
    if same_as_next.any():
        shared = np.zeros(len(ox), dtype=bool)
        shared[1:] |= same_as_next
        shared[:-1] |= same_as_next
    fields = []
    for parts, order in ((xs, px), (ys, py)):
        info = _field(parts, "r_info", np.uint64)
        addend = _field(parts, "r_addend", np.int64)
        if order is not None:
            info, addend = info[order], addend[order]
        if shared is not None:  # order each group of equal offsets by (info, addend)
            rows = np.flatnonzero(shared)
            by = np.lexsort((addend[rows], info[rows], ox[rows]))
            info[rows], addend[rows] = info[rows][by], addend[rows][by]
        fields.append((info, addend))
    (ix, ax), (iy, ay) = fields
    return bool(np.array_equal(ix, iy) and np.array_equal(ax, ay))


def _field(parts: list[np.ndarray], name: str, dtype: type[np.generic]) -> np.ndarray:
    if len(parts) == 1:
        return parts[0][name].astype(dtype)
    return np.concatenate([p[name].astype(dtype, copy=False) for p in parts])


def _offset_order(offsets: np.ndarray) -> np.ndarray | None:
    """The stable order that sorts ``offsets``, or None if they are sorted."""
    if len(offsets) < 2 or bool(np.all(offsets[1:] >= offsets[:-1])):
        return None
    return np.argsort(offsets, kind="stable")


def symbol_changes(before: ElfFile, after: ElfFile, name_width: int,
                   added: tuple[str, ...] = ()) -> list[str]:
    """Only converted symbols may change, and only into their klp form.

    ``added``: the names of undefined symbols the conversion appends after the
    input's (the load-time guard); nothing else may be added.  A symbol that
    spans a whole section whose content grew (modpost's ``____versions``
    array when the guard gets a version entry) may grow with it."""
    sa, sb = before.symtab, after.symtab
    n = len(sa)
    extra = [sb.name(i) for i in range(n, len(sb))]
    if len(sb) < n or sorted(extra) != sorted(added):
        return [f"symbol count changed from {n} to {len(sb)}"
                + (f" (added {extra}, expected {list(added)})" if extra or added else "")]
    problems = [f"added symbol {sb.name(i)!r} is not a plain undefined symbol"
                for i in range(n, len(sb))
                if int(sb.section_ref[i]) != 0 or int(sb.array["st_value"][i]) != 0
                or int(sb.array["st_size"][i]) != 0 or sb.binds[i] == STB.LOCAL]
    a, b = sa.array, sb.array[:n]
    names = sorted({s.name for s in before.sections} | {s.name for s in after.sections})
    rank = {name: i for i, name in enumerate(names)}
    where_a, where_b = _symbol_sections(before, rank), _symbol_sections(after, rank)[:n]
    size_same = ((a["st_size"] == b["st_size"])
                 | _spans_grown_section(before, after, where_b, rank))
    fields_same = (
        (a["st_info"] == b["st_info"])
        & (a["st_other"] == b["st_other"])
        & (a["st_value"] == b["st_value"])
        & size_same
    )
    for i in np.flatnonzero(~fields_same).tolist():
        problems.append(f"symbol {sa.name(i)!r} changed its type, binding, value or size")
    # A name is compared as text only where its string table offset or its
    # section changed (a string table is only appended to).
    suspects = (a["st_name"] != b["st_name"]) | (where_a != where_b)
    if not sb.strings.data.startswith(sa.strings.data):
        suspects[:] = True  # the string table was rewritten: compare every name
    for i in np.flatnonzero(suspects).tolist():
        name_a, name_b = sa.name(i), sb.name(i)
        if name_a == name_b and where_a[i] == where_b[i]:
            continue
        parsed = parse_symbol_name(name_b, name_width)
        if not (where_a[i] == _UNDEF and where_b[i] == _LIVEPATCH and parsed is not None
                and parsed.name == name_a):
            problems.append(f"symbol {name_a!r} changed to {name_b!r} unexpectedly")
    return problems


def _spans_grown_section(before: ElfFile, after: ElfFile, where: np.ndarray,
                         rank: dict[str, int]) -> np.ndarray:
    """Per input symbol: it is at offset 0 of a section that grew, spanning
    all of it before and after."""
    out = np.zeros(len(before.symtab), dtype=bool)
    sa, sb = before.symtab.array, after.symtab.array
    for sec in after.sections:
        old = before.section_by_name(sec.name)
        if old is None or old.size >= sec.size:
            continue
        out |= ((where == 1 + rank[sec.name]) & (sa["st_value"] == 0)
                & (sa["st_size"] == old.size) & (sb["st_size"][: len(sa)] == sec.size))
    return out


_UNDEF = 0
_LIVEPATCH = -int(SHN.LIVEPATCH)


def _symbol_sections(elf: ElfFile, rank: dict[str, int]) -> np.ndarray:
    """Each symbol's section as a number comparable across files (section
    indexes move when sections are inserted): 0 for SHN_UNDEF, the negated
    value for the other reserved indexes, else 1 + ``rank`` of the section's
    name."""
    ref = elf.symtab.section_ref
    table = np.zeros(max(s.uid for s in elf.sections) + 1, dtype=np.int64)
    for s in elf.sections:
        table[s.uid] = 1 + rank[s.name]
    real = ref > 0
    out = np.where(real, 0, ref)
    out[real] = table[ref[real]]
    return out


def ibt_problems(elf: ElfFile, functions: Collection[str], name_width: int) -> list[str]:
    """On an IBT target (CONFIG_X86_KERNEL_IBT=y): every klp relocation of an
    allocated section that refers to a livepatch symbol of a function in
    ``functions`` (``NAME`` for vmlinux's, ``OBJ:NAME`` for a target
    module's: both seal, klp.ibt) is the rel32 of a direct branch (an
    indirect call to a sealed function faults: "Missing ENDBR: %pS", IBT
    since v5.18), and every IBT thunk (``__klpsym_ibt_NAME``) starts with
    ENDBR64 and jumps to NAME through a klp relocation (of NAME's object)."""
    if elf.machine != EM.X86_64 or not elf.has_symtab:
        return []
    symtab = elf.symtab
    is_klp_sym = symtab.section_ref == -int(SHN.LIVEPATCH)
    wanted = set(functions)
    function_of: dict[int, str] = {}
    for i in np.flatnonzero(is_klp_sym).tolist():
        parsed = parse_symbol_name(symtab.name(i), name_width)
        if parsed is not None and function_label(parsed.objname, parsed.name) in wanted:
            function_of[i] = function_label(parsed.objname, parsed.name)
    problems: list[str] = []
    # (section, offset of a rel32) -> the function (label) it branches to
    jumps: dict[tuple[str, int], str] = {}
    marked = np.zeros(len(symtab), dtype=bool)
    marked[list(function_of)] = True
    for ref in klp_references(elf, marked):
        name = function_of[ref.symbol]
        if ref.branch:
            jumps[(ref.target.name, ref.offset)] = name
            continue
        type_name = relocation_type(EM.X86_64, ref.type)
        problems.append(f"{ref.target.name}+{ref.offset:#x} ({type_name}) takes the address of "
                        f"{name} directly; on IBT hardware a call through it faults: "
                        f"\"Missing ENDBR: {name.rpartition(':')[2]}\" (thunk it: klpsym "
                        "convert without --no-ibt-thunks)")
    names = symtab.names()
    for i, symname in enumerate(names):
        if not symname.startswith(THUNK_PREFIX) or int(symtab.section_ref[i]) <= 0:
            continue
        function = symname[len(THUNK_PREFIX):]
        home = elf.section_by_uid(int(symtab.section_ref[i]))
        value = int(symtab.array["st_value"][i])
        if home is None or not home.flags & SHF.EXECINSTR or not home.flags & SHF.ALLOC:
            problems.append(f"IBT thunk {symname} is not in an allocated executable section")
            continue
        head = bytes(home.content()[value:value + JMP_OFFSET + 1])
        if head != ENDBR64 + b"\xe9":
            problems.append(f"IBT thunk {symname} at {home.name}+{value:#x} does not start with "
                            f"endbr64; jmp (bytes {head.hex()})")
        elif jumps.get((home.name, value + JMP_OFFSET + 1), "").rpartition(":")[2] != function:
            problems.append(f"IBT thunk {symname}'s jmp has no klp relocation to {function}")
    return problems
