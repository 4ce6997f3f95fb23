"""An ELF file held as its sections: queries, the symbol and relocation
tables parsed on first use, and edits (sections added, removed, moved).
Reading the header and section headers is :mod:`klpsym.elf.file`'s, writing
:mod:`klpsym.elf.writer`'s; both work on an :class:`ElfImage`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from klpsym.elf.constants import SHN, SHT
from klpsym.elf.layout import Layout
from klpsym.elf.tables import Buffer, Section, StringTable, SymbolTable
from klpsym.errors import ElfError


class ElfImage:
    """An ELF64 file as sections in memory, to query and edit; what the
    writer writes.  :class:`klpsym.elf.file.ElfFile` adds reading and
    writing."""

    def __init__(self, name: str, layout: Layout, header: np.void, sections: list[Section],
                 shstrtab: Section, raw: Buffer, shdr0: np.void) -> None:
        self.name = name
        self.shdr0 = shdr0  # the input's section header 0 (escape values live here)
        self.layout = layout
        self.header = header
        self.sections = sections
        self.shstrtab = shstrtab
        self.raw = raw
        self._next_uid = max((s.uid for s in sections), default=-1) + 1
        self._symtab: SymbolTable | None = None
        self.shstrings = StringTable(bytes(shstrtab.content()), f"{name}: section names")
        self._shstr_orig = bytes(shstrtab.content())

    # -- queries -----------------------------------------------------------

    @property
    def machine(self) -> int:
        return int(self.header["e_machine"])

    @property
    def elf_type(self) -> int:
        return int(self.header["e_type"])

    def __iter__(self) -> Iterator[Section]:
        return iter(self.sections)

    def index_of(self, section: Section) -> int:
        for i, s in enumerate(self.sections):
            if s is section:
                return i
        raise ValueError(f"{section!r} is not in {self.name}")

    def section_by_name(self, name: str) -> Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def section_by_uid(self, uid: int) -> Section | None:
        for s in self.sections:
            if s.uid == uid:
                return s
        return None

    def rela_sections(self) -> list[Section]:
        return [s for s in self.sections if s.type == SHT.RELA]

    @property
    def symtab(self) -> SymbolTable:
        if self._symtab is None:
            self._symtab = _read_symtab(self)
        return self._symtab

    @property
    def has_symtab(self) -> bool:
        return any(s.type == SHT.SYMTAB for s in self.sections)

    def rela(self, section: Section) -> np.ndarray:
        """The Elf64_Rela records of an SHT_RELA section, as a structured
        array (parsed once; edits to it are written back)."""
        if section.type != SHT.RELA:
            raise ElfError(f"{self.name}: section {section.name} is not SHT_RELA")
        if section.table is None:
            dt = self.layout.rela
            if section.entsize not in (0, dt.itemsize):
                raise ElfError(
                    f"{self.name}: section {section.name} has entry size {section.entsize}, "
                    f"expected {dt.itemsize} for Elf64_Rela"
                )
            if len(section.data) % dt.itemsize:
                raise ElfError(
                    f"{self.name}: section {section.name} size {len(section.data)} is not a "
                    f"multiple of {dt.itemsize}"
                )
            # A read-only view of the file's bytes, not a copy: change a
            # table by assigning a new array to section.table.
            table = np.frombuffer(section.data, dtype=dt)
            table.flags.writeable = False
            section.table = table
        return section.table

    def parse_tables(self) -> None:
        """Parse the symbol table and every SHT_RELA table now (they are
        otherwise parsed on first use); parsed tables are re-encoded when
        written instead of copied."""
        if self.has_symtab:
            _ = self.symtab
        for sec in self.rela_sections():
            self.rela(sec)

    # -- editing -----------------------------------------------------------

    def new_section(self, name: str, type: int, **fields: object) -> Section:
        """Make a section owned by this file (not yet in ``sections``)."""
        sec = Section(name=name, type=type, **fields)  # type: ignore[arg-type]
        sec.uid = self._next_uid
        self._next_uid += 1
        return sec

    def insert_section(self, section: Section, after: Section | None = None) -> None:
        if section.uid < 0:
            section.uid = self._next_uid
            self._next_uid += 1
        if after is None:
            self.sections.append(section)
        else:
            self.sections.insert(self.index_of(after) + 1, section)

    def remove_section(self, section: Section) -> None:
        """Remove a section nothing refers to any more."""
        for s in self.sections:
            if s.link is section or s.info_section is section:
                raise ElfError(f"{self.name}: cannot remove {section.name}: {s.name} refers to it")
        if self._symtab is not None and np.any(self._symtab.section_ref == section.uid):
            raise ElfError(f"{self.name}: cannot remove {section.name}: symbols are defined in it")
        self.sections.remove(section)


    def remove_symbols(self, drop: np.ndarray) -> None:
        """Remove the symbols where the bool mask ``drop`` is true, and
        renumber every relocation's symbol; a symbol a remaining relocation
        uses cannot be removed."""
        symtab = self.symtab
        tables = [(sec, self.rela(sec)) for sec in self.rela_sections()]
        for sec, rela in tables:
            syms = self.layout.r_sym(rela["r_info"])
            if len(syms) and bool(np.any(drop[syms])):
                raise ElfError(f"{self.name}: cannot remove a symbol {sec.name} uses")
        remap = symtab.remove(drop)
        for sec, rela in tables:
            if not len(rela):
                continue
            new = rela.copy()
            syms = self.layout.r_sym(rela["r_info"])
            new["r_info"] = self.layout.r_info(remap[syms], self.layout.r_type(rela["r_info"]))
            sec.table = new


def _fail(name: str, what: str) -> ElfError:
    return ElfError(f"{name}: {what}")


def _read_symtab(elf: ElfImage) -> SymbolTable:
    name = elf.name
    tabs = [s for s in elf.sections if s.type == SHT.SYMTAB]
    if not tabs:
        raise _fail(name, "has no symbol table (.symtab); was it stripped? "
                    "Kernel modules must keep their symbols")
    if len(tabs) > 1:
        raise _fail(name, f"has {len(tabs)} symbol tables; a relocatable object has one")
    sec = tabs[0]
    dt = elf.layout.sym
    if sec.entsize not in (0, dt.itemsize) or len(sec.data) % dt.itemsize:
        raise _fail(name, f"symbol table {sec.name} has entry size {sec.entsize} and size "
                    f"{len(sec.data)}; expected {dt.itemsize}-byte Elf64_Sym entries")
    if sec.link is None or sec.link.type != SHT.STRTAB:
        raise _fail(name, f"symbol table {sec.name} does not link to a string table")
    strings = StringTable(bytes(sec.link.data), f"{name}: {sec.link.name}")
    array = np.frombuffer(sec.data, dtype=dt).copy()
    n = len(array)
    if n and np.any(array["st_name"] >= max(len(strings), 1)):
        bad = int(np.flatnonzero(array["st_name"] >= max(len(strings), 1))[0])
        raise _fail(name, f"symbol {bad} has a name offset past the end of {sec.link.name}")
    shndx = array["st_shndx"].astype(np.int64)
    xsecs = [s for s in elf.sections if s.type == SHT.SYMTAB_SHNDX and s.link is sec]
    xindex: np.ndarray | None = None
    if xsecs:
        x = xsecs[0]
        if len(x.data) != 4 * n:
            raise _fail(name, f"{x.name} has {len(x.data) // 4} entries for {n} symbols")
        xindex = np.frombuffer(x.data, dtype=elf.layout.word).astype(np.int64)
    ref = np.where(shndx >= SHN.LORESERVE, -shndx, shndx)
    is_x = shndx == SHN.XINDEX
    if np.any(is_x):
        if xindex is None:
            raise _fail(name, "symbols use SHN_XINDEX but there is no SHT_SYMTAB_SHNDX section")
        ref = np.where(is_x, xindex, ref)
    nsec = len(elf.sections)
    bad_ref = np.flatnonzero(ref >= nsec)
    if len(bad_ref):
        i = int(bad_ref[0])
        raise _fail(name, f"symbol {i} refers to section {int(ref[i])}, but there are {nsec}")
    return SymbolTable(
        section=sec, strings=strings, array=array, section_ref=ref,
        shndx_section=xsecs[0] if xsecs else None,
        _orig_ref=ref.copy(), _orig_shndx=array["st_shndx"].copy(),
        _orig_xindex=None if xindex is None else xindex.copy(),
    )
