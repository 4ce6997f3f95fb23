"""The symbols a module exports, decoded from ``__ksymtab*`` the way the
loader reads them (kernel/module/main.c find_exported_symbol_in_section()).

A module's ``struct kernel_symbol`` entries (include/linux/export.h, from
v6.5 include/linux/export-internal.h) are relocatable: in the ``.ko`` every
field is zero and a relocation says what it points to.  The kernel has used
these layouts:

* absolute pointers ``{ unsigned long value; const char *name; }``: before
  v4.19, and since then on architectures without
  CONFIG_HAVE_ARCH_PREL32_RELOCATIONS (64-bit relocations, 16 bytes);
* place-relative ``{ int value_offset; int name_offset; }``: v4.19 (commit
  7290d58095712, "module: use relative references for __ksymtab entries"),
  x86_64, arm64, ppc64, ... (32-bit PC-relative relocations, 8 bytes);
* either of the above plus a namespace field (v5.4, commit 8651ec01daed,
  "module: add support for symbol namespaces"): 24 or 12 bytes.  5.4 wrote 0
  (no relocation) for "no namespace"; later kernels point it at an empty
  string, and since v6.5 (commit ddb5cdbafaaa, "kbuild: generate KSYMTAB
  entries by modpost") modpost writes the entries into ``<m>.mod.c`` with
  the namespace string right after the name in ``__ksymtab_strings``.

The field size comes from the relocation type; the number of fields from
what the third field points at (a string in ``__ksymtab_strings``: a
namespace; nothing or a symbol: the next entry).

GPL-only exports were a separate table ``__ksymtab_gpl`` (and, until v5.13,
``__ksymtab_unused``, ``__ksymtab_unused_gpl``, ``__ksymtab_gpl_future``).
The kflagstab series ("module loader: use kflagstab instead of *_gpl
sections", Linux 7.x; Debian sid's 7.2 has it) merged them into one
``__ksymtab`` with a parallel ``__kflagstab`` of one byte per entry
(KSYM_FLAG_GPL_ONLY = 1, include/linux/module_symbol.h).

CRCs (CONFIG_MODVERSIONS) are the parallel ``__kcrctab``/``__kcrctab_gpl``
arrays of u32: literal values since v5.19/v6.5, or relocations against
absolute ``__crc_NAME`` symbols before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from klpsym.elf.constants import EM, SHN, SHT, STT
from klpsym.errors import ModuleError

if TYPE_CHECKING:  # the ELF model is the caller's; annotations only
    from klpsym.elf import ElfFile
    from klpsym.elf.file import Section

#: ksymtab section -> the export macro modpost reports for its entries.
KSYMTAB_SECTIONS = {
    "__ksymtab": "EXPORT_SYMBOL",
    "__ksymtab_gpl": "EXPORT_SYMBOL_GPL",
    # removed in v5.13 (commit 367948220fce, "module: remove EXPORT_UNUSED_SYMBOL*",
    # and f1c3d73e973c, "module: remove EXPORT_SYMBOL_GPL_FUTURE")
    "__ksymtab_unused": "EXPORT_UNUSED_SYMBOL",
    "__ksymtab_unused_gpl": "EXPORT_UNUSED_SYMBOL_GPL",
    "__ksymtab_gpl_future": "EXPORT_SYMBOL_GPL_FUTURE",
}
GPL_ONLY = frozenset({"EXPORT_SYMBOL_GPL", "EXPORT_UNUSED_SYMBOL_GPL"})
STRINGS_SECTION = "__ksymtab_strings"
FLAGS_SECTION = "__kflagstab"
KSYM_FLAG_GPL_ONLY = 1


def crc_section(ksymtab: str) -> str:
    """``__ksymtab_gpl`` -> ``__kcrctab_gpl``."""
    return "__kcrctab" + ksymtab[len("__ksymtab"):]


# machine -> (64-bit absolute types, 32-bit place-relative types)
_FIELD_TYPES: dict[int, tuple[frozenset[int], frozenset[int]]] = {
    EM.X86_64: (frozenset({1}), frozenset({2})),  # R_X86_64_64, R_X86_64_PC32
    EM.AARCH64: (frozenset({257}), frozenset({261})),  # ABS64, PREL32
    EM.PPC64: (frozenset({38}), frozenset({26})),  # ADDR64, REL32
    EM.RISCV: (frozenset({2}), frozenset({57})),  # R_RISCV_64, R_RISCV_32_PCREL
    EM.S390: (frozenset({22}), frozenset({5})),  # R_390_64, R_390_PC32
    EM.LOONGARCH: (frozenset({2}), frozenset({99})),  # R_LARCH_64, R_LARCH_32_PCREL
}


@dataclass(frozen=True, slots=True)
class ModuleExport:
    name: str
    export_type: str  # EXPORT_SYMBOL, EXPORT_SYMBOL_GPL, ...
    namespace: str  # "" for none
    crc: int | None  # None: no CRC table (modversions off)
    table: str  # the ksymtab section it is in
    index: int  # entry index in that table
    symbol: str  # the symbol the value field points at ("" if unnamed)
    section: str  # where that is defined
    offset: int  # and at which offset

    @property
    def gpl_only(self) -> bool:
        return self.export_type in GPL_ONLY


@dataclass(frozen=True)
class ModuleExports:
    layout: str  # "" when the module exports nothing
    entries: tuple[ModuleExport, ...]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[ModuleExport]:
        return iter(self.entries)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]


class _Resolver:
    """What a relocated word in one section points at."""

    def __init__(self, elf: ElfFile, section: Section) -> None:
        self.elf = elf
        self.section = section
        relas = [s for s in elf.rela_sections() if s.info_section is section]
        if relas:
            rela = np.concatenate([elf.rela(s) for s in relas])
        else:
            rela = np.zeros(0, dtype=elf.layout.rela)
        order = np.argsort(rela["r_offset"], kind="stable")
        self.offsets = rela["r_offset"][order].astype(np.int64)
        self.syms = elf.layout.r_sym(rela["r_info"][order])
        self.types = elf.layout.r_type(rela["r_info"][order])
        self.addends = rela["r_addend"][order].astype(np.int64)
        self.by_offset = {int(o): i for i, o in enumerate(self.offsets.tolist())}

    def at(self, offset: int) -> int | None:
        """The index of the relocation at ``offset``, if any."""
        return self.by_offset.get(offset)

    def target(self, i: int) -> tuple[Section | None, int, int]:
        """(section, offset, symbol index) the relocation ``i`` points at;
        section None for an absolute symbol (offset is then the value)."""
        symtab = self.elf.symtab
        s = int(self.syms[i])
        if s >= len(symtab):
            raise ModuleError(f"{self.elf.name}: a relocation of {self.section.name} uses symbol "
                              f"{s}, but there are {len(symtab)}; the module is corrupt")
        value = int(symtab.array["st_value"][s]) + int(self.addends[i])
        ref = int(symtab.section_ref[s])
        if ref == -int(SHN.ABS):
            return None, value, s
        return (self.elf.section_by_uid(ref) if ref > 0 else None), value, s


def _string(sec: Section, offset: int, where: str) -> str:
    data = bytes(sec.content())
    end = data.find(b"\0", offset)
    if offset < 0 or offset >= len(data) or end < 0:
        raise ModuleError(f"{where}: points outside {sec.name}; the module is corrupt")
    return data[offset:end].decode("utf-8", "replace")


def read_exports(elf: ElfFile) -> ModuleExports:
    """Every symbol ``elf`` exports; ModuleError if the tables are malformed."""
    tables = [s for s in elf.sections if s.name in KSYMTAB_SECTIONS and s.type != SHT.NOBITS]
    if not tables or all(s.size == 0 for s in tables):
        return ModuleExports("", ())
    strings = elf.section_by_name(STRINGS_SECTION)
    flags_sec = elf.section_by_name(FLAGS_SECTION)
    entries: list[ModuleExport] = []
    layouts: set[str] = set()
    for table in tables:
        if table.size == 0:
            continue
        got, layout = _read_table(elf, table, strings, flags_sec)
        entries += got
        layouts.add(layout)
    if flags_sec is not None:
        layouts = {f"{lay}, GPL flag in {FLAGS_SECTION}" for lay in layouts}
    return ModuleExports("; ".join(sorted(layouts)), tuple(entries))


def _read_table(elf: ElfFile, table: Section, strings: Section | None,
                flags_sec: Section | None) -> tuple[list[ModuleExport], str]:
    where = f"{elf.name}: {table.name}"
    res = _Resolver(elf, table)
    if not len(res.offsets):
        raise ModuleError(f"{where} has no relocations, so its entries point nowhere; the "
                          "module is corrupt (or was linked, not a .ko)")
    absolute, relative = _FIELD_TYPES.get(elf.machine, (frozenset(), frozenset()))
    types = set(res.types.tolist())
    if types <= relative:
        field, kind = 4, "place-relative (PREL32, 4.19+)"
    elif types <= absolute:
        field, kind = 8, "absolute pointers"
    else:
        # Unknown machine: the narrowest spacing of relocated fields.
        gaps = np.diff(res.offsets)
        field = int(gaps[gaps > 0].min()) if np.any(gaps > 0) else table.size // 2
        if field not in (4, 8):
            raise ModuleError(f"{where}: relocation types {sorted(types)} on machine "
                              f"{elf.machine} are not kernel_symbol fields klpsym knows")
        kind = "place-relative (PREL32, 4.19+)" if field == 4 else "absolute pointers"
    nfields = _fields_per_entry(elf, table, res, field, strings)
    entsize = nfields * field
    if table.size % entsize:
        raise ModuleError(f"{where} is {table.size} bytes, not a whole number of "
                          f"{entsize}-byte entries; the module is corrupt")
    count = table.size // entsize
    export_type = KSYMTAB_SECTIONS[table.name]
    crcs = _crcs(elf, crc_section(table.name), count)
    flags: bytes | None = None
    if flags_sec is not None and table.name == "__ksymtab":
        flags = bytes(flags_sec.content())
        if len(flags) < count:
            raise ModuleError(f"{elf.name}: {FLAGS_SECTION} has {len(flags)} entries for "
                              f"{count} exports; the module is corrupt")
    symtab = elf.symtab
    out: list[ModuleExport] = []
    for i in range(count):
        base = i * entsize
        vi = res.at(base)
        ni = res.at(base + field)
        if vi is None or ni is None:
            raise ModuleError(f"{where}: entry {i} lacks the relocation of its "
                              f"{'value' if vi is None else 'name'}; the module is corrupt")
        name_sec, name_off, _ = res.target(ni)
        if name_sec is None:
            raise ModuleError(f"{where}: entry {i}'s name points at an absolute symbol")
        name = _string(name_sec, name_off, f"{where}: entry {i}'s name")
        namespace = ""
        if nfields == 3:
            si = res.at(base + 2 * field)
            if si is not None:
                ns_sec, ns_off, _ = res.target(si)
                if ns_sec is not None:
                    namespace = _string(ns_sec, ns_off, f"{where}: {name}'s namespace")
        val_sec, val_off, val_sym = res.target(vi)
        symbol = symtab.name(val_sym)
        if int(symtab.types[val_sym]) == STT.SECTION:
            symbol = ""
        etype = export_type
        if flags is not None:
            etype = "EXPORT_SYMBOL_GPL" if flags[i] & KSYM_FLAG_GPL_ONLY else "EXPORT_SYMBOL"
        out.append(ModuleExport(
            name=name, export_type=etype, namespace=namespace,
            crc=None if crcs is None else crcs[i], table=table.name, index=i,
            symbol=symbol, section=val_sec.name if val_sec is not None else "ABS",
            offset=val_off,
        ))
    ns = " with namespace (5.4+)" if nfields == 3 else ""
    return out, f"{kind}{ns}, {entsize}-byte entries"


def _fields_per_entry(elf: ElfFile, table: Section, res: _Resolver, field: int,
                      strings: Section | None) -> int:
    """2 ({value, name}) or 3 ({value, name, namespace})."""
    size = table.size
    if size % (2 * field) and not size % (3 * field):
        return 3
    if size % (3 * field) and not size % (2 * field):
        return 2
    third = res.at(2 * field)
    if third is None:
        return 3  # 5.4's "no namespace" zero; a value field is always relocated
    sec, _, _ = res.target(third)
    return 3 if sec is not None and sec is strings else 2


def _crcs(elf: ElfFile, name: str, count: int) -> list[int] | None:
    sec = elf.section_by_name(name)
    if sec is None or sec.type == SHT.NOBITS:
        return None
    if sec.size != 4 * count:
        raise ModuleError(f"{elf.name}: {name} has {sec.size // 4} CRCs for {count} exports; "
                          "the module is corrupt")
    order = "<" if elf.layout.byteorder == "little" else ">"
    values = np.frombuffer(bytes(sec.content()), dtype=order + "u4").astype(np.int64)
    res = _Resolver(elf, sec)
    for i, off in enumerate(res.offsets.tolist()):
        # Before v5.19 a CRC was a relocation against the absolute __crc_NAME.
        _, value, _ = res.target(i)
        if off % 4 == 0 and off // 4 < count:
            values[off // 4] = value & 0xFFFFFFFF
    return [int(v) for v in values.tolist()]
