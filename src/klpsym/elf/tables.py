"""The parts of an ELF file: sections, the string tables and the symbol
table.

Sections refer to each other by object (``link``, ``info_section``) and
symbols refer to sections by a stable *uid*, never by table position, so
sections can be added or reordered; the writer (:mod:`klpsym.elf.writer`)
assigns indexes when it writes.  Big tables (symbols, relocations) are numpy
structured arrays over the file's bytes.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field

import numpy as np

from klpsym.elf.constants import SHF, SHN, SHT, STB
from klpsym.errors import ElfError

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

    def remove(self, drop: np.ndarray) -> np.ndarray:
        """Remove the symbols where the bool mask ``drop`` is true (never
        entry 0) and return each old index's new one (-1: removed).  The
        caller renumbers what refers to symbols (relocations:
        :meth:`klpsym.elf.image.ElfImage.remove_symbols`).  sh_info, the
        index of the first non-local symbol, follows."""
        if len(drop) != len(self.array) or (len(drop) and bool(drop[0])):
            raise ElfError(f"{self.section.name}: cannot remove the null symbol")
        keep = ~drop
        remap = np.where(keep, np.cumsum(keep) - 1, -1).astype(np.int64)
        first_global = int(self.section.info)
        self.section.info = first_global - int(drop[:first_global].sum())
        self.array = self.array[keep].copy()
        self.section_ref = self.section_ref[keep].copy()
        self._orig_ref = self._orig_ref[keep].copy()
        self._orig_shndx = self._orig_shndx[keep].copy()
        if self._orig_xindex is not None:
            self._orig_xindex = self._orig_xindex[keep].copy()
        if self._names is not None:
            self._names = [n for n, k in zip(self._names, keep.tolist(), strict=True) if k]
        return remap

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


_INFO_IS_INDEX_TYPES = (int(SHT.RELA), int(SHT.REL))
_SHT_NOBITS, _SHT_NULL = int(SHT.NOBITS), int(SHT.NULL)
_SHF_INFO_LINK = int(SHF.INFO_LINK)


def info_is_index(sec: Section) -> bool:
    """Whether ``sec``'s sh_info holds a section index (gABI: relocation
    sections, and any section with SHF_INFO_LINK)."""
    return sec.type in _INFO_IS_INDEX_TYPES or bool(sec.flags & _SHF_INFO_LINK)
