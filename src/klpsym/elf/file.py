"""The ELF object model and reader.

An :class:`ElfFile` is a list of :class:`Section` objects.  Sections refer to
each other by object (``link``, ``info_section``) and symbols refer to
sections by a stable *uid*, never by table position, so sections can be added
or reordered; the writer (:mod:`klpsym.elf.writer`) assigns indexes when it
writes.  Big tables (symbols, relocations) are numpy structured arrays over
the file's bytes.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from klpsym.elf.constants import (
    EI,
    ELF_MAGIC,
    ET,
    SHF,
    SHN,
    SHT,
    STB,
    ElfClass,
    ElfData,
)
from klpsym.elf.layout import Layout, layout_for
from klpsym.errors import ElfError

if TYPE_CHECKING:
    from klpsym.elf.writer import Sink

Buffer = bytes | bytearray | memoryview | mmap.mmap


class StringTable:
    """A NUL-separated string table (SHT_STRTAB).  New strings are appended;
    existing offsets never move, so unchanged references stay valid."""

    def __init__(self, data: bytes, owner: str) -> None:
        self._data = bytearray(data)
        self._owner = owner
        self._added: dict[str, int] = {}

    @property
    def data(self) -> bytes:
        return bytes(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, offset: int) -> str:
        if offset >= len(self._data):
            raise ElfError(
                f"{self._owner}: string offset {offset} is past the end of the table "
                f"({len(self._data)} bytes)"
            )
        end = self._data.find(b"\0", offset)
        if end < 0:
            raise ElfError(f"{self._owner}: string at offset {offset} is not NUL-terminated")
        return self._data[offset:end].decode("utf-8", errors="surrogateescape")

    def find(self, text: str) -> int | None:
        """Offset of an existing occurrence of ``text`` (also as the tail of a
        longer string, as linkers share them), or None."""
        needle = text.encode("utf-8", errors="surrogateescape") + b"\0"
        if not text:
            return 0 if self._data[:1] == b"\0" else None
        pos = self._data.find(needle)
        return None if pos < 0 else pos

    def offsets_of(self, text: str) -> list[int]:
        """Every offset at which the string ``text`` is read (its own entry,
        or the tail of a longer one)."""
        needle = text.encode("utf-8", errors="surrogateescape") + b"\0"
        data = self._data
        found = []
        pos = data.find(needle)
        while pos >= 0:
            found.append(pos)
            pos = data.find(needle, pos + 1)
        return found

    def append(self, text: str) -> int:
        """Append ``text`` (once per table; no search in the old strings)."""
        if text in self._added:
            return self._added[text]
        if not self._data:
            self._data.append(0)
        offset = len(self._data)
        self._data += text.encode("utf-8", errors="surrogateescape") + b"\0"
        self._added[text] = offset
        return offset

    def find_or_append(self, text: str) -> int:
        found = self.find(text)
        return found if found is not None else self.append(text)


@dataclass(eq=False)
class Section:
    """One section.  ``link``/``info_section`` are section references where
    the ELF field holds a section index; ``info`` holds sh_info otherwise."""

    name: str
    type: int
    flags: int = 0
    addr: int = 0
    addralign: int = 1
    entsize: int = 0
    link: Section | None = None
    link_raw: int = 0  # sh_link when it is not a section reference
    info: int = 0  # sh_info when it is not a section reference
    info_section: Section | None = None
    data: Buffer = b""  # file content (not for NOBITS)
    nobits_size: int = 0  # sh_size of an SHT_NOBITS section
    table: np.ndarray | None = None  # parsed table; written instead of ``data``
    uid: int = -1  # stable identity; symbols refer to sections by it
    # Where the section was in the input, so an unchanged file is rewritten
    # byte for byte (see writer.py).
    orig_index: int | None = None
    orig_offset: int | None = None
    orig_size: int | None = None
    orig_name_offset: int | None = None

    @property
    def size(self) -> int:
        if self.type == SHT.NOBITS:
            return self.nobits_size
        if self.table is not None:
            return int(self.table.nbytes)
        return len(self.data)

    def content(self) -> bytes | memoryview:
        """The section's bytes (a view of a parsed table, not a copy)."""
        if self.table is not None:
            return np.ascontiguousarray(self.table).view(np.uint8).data
        return self.data if isinstance(self.data, (bytes, memoryview)) else memoryview(self.data)

    @property
    def is_rela(self) -> bool:
        return self.type == SHT.RELA

    def __repr__(self) -> str:
        return f"<Section {self.name!r} type={self.type:#x} size={self.size}>"


@dataclass(eq=False)
class SymbolTable:
    """The .symtab of a relocatable object.

    ``array`` is the Elf64_Sym records (a writable copy).  ``section_ref`` is
    each symbol's section decoded from st_shndx and SHT_SYMTAB_SHNDX: a
    section uid (>= 0; 0 is SHN_UNDEF) or, for the reserved values
    (SHN_ABS, SHN_COMMON, SHN_LIVEPATCH, ...), the value negated.
    """

    section: Section
    strings: StringTable
    array: np.ndarray
    section_ref: np.ndarray  # int64
    shndx_section: Section | None
    _orig_ref: np.ndarray = field(repr=False)
    _orig_shndx: np.ndarray = field(repr=False)
    _orig_xindex: np.ndarray | None = field(repr=False)
    _names: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.array)

    def name(self, index: int) -> str:
        if self._names is not None:
            return self._names[index]
        return self.strings.get(int(self.array["st_name"][index]))

    def names(self) -> list[str]:
        if self._names is None:
            self._names = [self.strings.get(int(o)) for o in self.array["st_name"]]
        return list(self._names)

    def named(self, name: str, among: np.ndarray | None = None) -> np.ndarray:
        """Indexes of the symbols called ``name`` (of ``among``, if given),
        found by their string table offsets rather than by decoding names."""
        idx = np.arange(len(self.array)) if among is None else among
        offsets = np.array(self.strings.offsets_of(name), dtype=np.int64)
        found: np.ndarray = idx[np.isin(self.array["st_name"][idx], offsets)]
        return found

    def rename(self, index: int, new_name: str) -> None:
        self.array["st_name"][index] = self.strings.append(new_name)
        if self._names is not None:
            self._names[index] = new_name

    def set_special_section(self, index: int, shn: SHN) -> None:
        """Put symbol ``index`` in a reserved section index (e.g. SHN_LIVEPATCH)."""
        self.section_ref[index] = -int(shn)

    def append_undefined(self, name: str, bind: int, type: int = 0) -> int:
        """Append an undefined (SHN_UNDEF) symbol and return its index.

        Only a non-local symbol may be appended: the locals come first in a
        symbol table and its sh_info is the index of the first non-local one,
        so a symbol added after the last one keeps that true, and no existing
        index (which relocations use) moves."""
        if bind == STB.LOCAL:
            raise ElfError(f"{self.section.name}: a local symbol cannot be appended after "
                           "the globals")
        rec = np.zeros(1, dtype=self.array.dtype)
        rec["st_name"] = self.strings.append(name)
        rec["st_info"] = (bind << 4) | (type & 0xF)
        # dtype=: concatenate would give native byte order (a big-endian
        # table written little-endian)
        self.array = np.concatenate([self.array, rec], dtype=self.array.dtype)
        self.section_ref = np.append(self.section_ref, 0)
        self._orig_ref = np.append(self._orig_ref, 0)
        self._orig_shndx = np.append(self._orig_shndx, np.zeros(1, self._orig_shndx.dtype))
        if self._orig_xindex is not None:
            self._orig_xindex = np.append(self._orig_xindex, 0)
        if self._names is not None:
            self._names.append(name)
        return len(self.array) - 1

    @property
    def binds(self) -> np.ndarray:
        return (self.array["st_info"] >> 4).astype(np.int64)

    @property
    def types(self) -> np.ndarray:
        return (self.array["st_info"] & 0xF).astype(np.int64)

    def undefined(self) -> np.ndarray:
        """Indexes of the undefined symbols (SHN_UNDEF, excluding entry 0)."""
        idx = np.flatnonzero(self.section_ref == 0)
        undefined: np.ndarray = idx[idx != 0]
        return undefined

    def special(self, shn: SHN) -> np.ndarray:
        return np.flatnonzero(self.section_ref == -int(shn))


class ElfFile:
    """A parsed ELF64 file.  Use :meth:`from_bytes` or :meth:`from_path`."""

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

    # -- reading -----------------------------------------------------------

    @classmethod
    def from_path(cls, path: Path | str, *, relocatable_only: bool = True) -> ElfFile:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                size = f.seek(0, 2)
                if size == 0:
                    raise ElfError(f"{path}: empty file, not an ELF object")
                buf: Buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ElfError(f"{path}: cannot read: {e.strerror}") from None
        return cls.from_bytes(buf, str(path), relocatable_only=relocatable_only)

    @classmethod
    def from_bytes(cls, data: Buffer, name: str = "<bytes>", *,
                   relocatable_only: bool = True) -> ElfFile:
        return _read(data, name, relocatable_only)

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

    def to_bytes(self) -> bytes:
        from klpsym.elf.writer import write

        return write(self)

    def write_to(self, sink: Sink) -> int:
        """Stream the file to ``sink`` (see :func:`klpsym.elf.writer.write_to`)."""
        from klpsym.elf.writer import write_to

        return write_to(self, sink)


# ---------------------------------------------------------------------------


_INFO_IS_INDEX_TYPES = (int(SHT.RELA), int(SHT.REL))
_SHT_NOBITS, _SHT_NULL = int(SHT.NOBITS), int(SHT.NULL)
_SHF_INFO_LINK = int(SHF.INFO_LINK)


def info_is_index(sec: Section) -> bool:
    """Whether ``sec``'s sh_info holds a section index (gABI: relocation
    sections, and any section with SHF_INFO_LINK)."""
    return sec.type in _INFO_IS_INDEX_TYPES or bool(sec.flags & _SHF_INFO_LINK)


def _fail(name: str, what: str) -> ElfError:
    return ElfError(f"{name}: {what}")


def _read(data: Buffer, name: str, relocatable_only: bool) -> ElfFile:
    view = memoryview(data)
    size = len(view)
    if size < 16 or bytes(view[:4]) != ELF_MAGIC:
        raise _fail(name, "not an ELF file (bad magic); expected a kernel module (.ko)")
    cls_byte, data_byte = view[EI.CLASS], view[EI.DATA]
    if cls_byte == ElfClass.ELF32:
        raise _fail(name, "is a 32-bit ELF (ELFCLASS32); klpsym handles 64-bit kernel modules only")
    if cls_byte != ElfClass.ELF64:
        raise _fail(name, f"unknown ELF class {cls_byte}; not a valid ELF file")
    if data_byte not in (ElfData.LSB, ElfData.MSB):
        raise _fail(name, f"unknown ELF byte order {data_byte}; not a valid ELF file")
    layout = layout_for(ElfClass(cls_byte), ElfData(data_byte))
    if size < layout.ehdr.itemsize:
        raise _fail(name, "truncated ELF header")
    hdr = np.frombuffer(view[: layout.ehdr.itemsize], dtype=layout.ehdr)[0].copy()
    etype = int(hdr["e_type"])
    if relocatable_only and etype != ET.REL:
        kind: dict[int, str] = {ET.EXEC: "an executable", ET.DYN: "a shared object",
                                ET.CORE: "a core dump"}
        raise _fail(
            name,
            f"is {kind.get(etype, f'of ELF type {etype}')} (ET_REL expected); "
            "kernel modules are relocatable objects (.ko)",
        )
    if relocatable_only and int(hdr["e_phnum"]) != 0:
        raise _fail(name, "relocatable object with program headers; not a kernel module")
    shoff = int(hdr["e_shoff"])
    shentsize = int(hdr["e_shentsize"])
    if shoff == 0:
        raise _fail(name, "has no section header table")
    if shentsize != layout.shdr.itemsize:
        raise _fail(name, f"section header size {shentsize}, expected {layout.shdr.itemsize}")
    if shoff + shentsize > size:
        raise _fail(name, f"section header table at {shoff:#x} is past the end of the file "
                    f"({size} bytes); the file is truncated or corrupt")
    first = np.frombuffer(view[shoff: shoff + shentsize], dtype=layout.shdr)[0]
    shnum = int(hdr["e_shnum"])
    if shnum == 0:  # more than SHN_LORESERVE sections: count in sh_size of entry 0
        shnum = int(first["sh_size"])
    if shnum == 0:
        raise _fail(name, "has an empty section header table")
    if shoff + shnum * shentsize > size:
        raise _fail(name, f"section header table ({shnum} entries at {shoff:#x}) runs past "
                    f"the end of the file ({size} bytes); the file is truncated or corrupt")
    shdrs = np.frombuffer(view[shoff: shoff + shnum * shentsize], dtype=layout.shdr)
    shstrndx = int(hdr["e_shstrndx"])
    if shstrndx == SHN.XINDEX:
        shstrndx = int(first["sh_link"])
    if not 0 < shstrndx < shnum:
        raise _fail(name, f"section name table index {shstrndx} is out of range (0..{shnum - 1})")

    sections: list[Section] = []
    # Plain tuples: indexing numpy records field by field is ten times slower.
    rows = shdrs.tolist()
    for i in range(shnum):
        sh_name, stype, flags, addr, off, sz, link, info, align, entsize = rows[i]
        if i == 0:
            sec = Section(name="", type=stype, uid=0, orig_index=0)
            sections.append(sec)
            continue
        if align & (align - 1):  # 0 and 1: no constraint; else a power of two (gABI)
            raise _fail(name, f"section {i} has alignment {align}, not a power of two; "
                        "the file is corrupt")
        if stype != _SHT_NOBITS and stype != _SHT_NULL:
            if off > size or sz > size - off:
                raise _fail(name, f"section {i} ({off:#x}+{sz:#x}) lies outside the file "
                            f"({size} bytes); the file is truncated or corrupt")
            content: Buffer = view[off: off + sz]
        else:
            content = b""
        sections.append(Section(
            name="", type=stype, flags=flags, addr=addr, addralign=align, entsize=entsize,
            data=content, nobits_size=sz if stype == _SHT_NOBITS else 0, uid=i,
            orig_index=i, orig_offset=off, orig_size=0 if stype == _SHT_NOBITS else sz,
            orig_name_offset=sh_name,
        ))
    names = StringTable(bytes(sections[shstrndx].data), f"{name}: section names")
    for i in range(1, shnum):
        sh_name, _, _, _, _, _, link, info, _, _ = rows[i]
        sec = sections[i]
        try:
            sec.name = names.get(sh_name)
        except ElfError:
            raise _fail(name, f"section {i} has a bad name offset {sh_name}") from None
        if 0 < link < shnum:
            sec.link = sections[link]
        else:
            sec.link_raw = link
        if info_is_index(sec) and 0 < info < shnum:
            sec.info_section = sections[info]
        else:
            sec.info = info
    return ElfFile(name, layout, hdr, sections, sections[shstrndx], data, shdrs[0].copy())


def _read_symtab(elf: ElfFile) -> SymbolTable:
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
