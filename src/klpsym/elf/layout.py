"""ELF64 byte layouts as numpy dtypes, built per file from its byte order.

Each layout is declared once and serves both directions: ``np.frombuffer``
reads it, ``ndarray.tobytes`` writes it.  Nothing here is global state: a
:class:`Layout` is made for one file's class and byte order (and cached, since
it is immutable).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache

import numpy as np

from klpsym.elf.constants import ElfClass, ElfData

_EHDR64 = [
    ("e_ident", "V16"),
    ("e_type", "u2"),
    ("e_machine", "u2"),
    ("e_version", "u4"),
    ("e_entry", "u8"),
    ("e_phoff", "u8"),
    ("e_shoff", "u8"),
    ("e_flags", "u4"),
    ("e_ehsize", "u2"),
    ("e_phentsize", "u2"),
    ("e_phnum", "u2"),
    ("e_shentsize", "u2"),
    ("e_shnum", "u2"),
    ("e_shstrndx", "u2"),
]
_SHDR64 = [
    ("sh_name", "u4"),
    ("sh_type", "u4"),
    ("sh_flags", "u8"),
    ("sh_addr", "u8"),
    ("sh_offset", "u8"),
    ("sh_size", "u8"),
    ("sh_link", "u4"),
    ("sh_info", "u4"),
    ("sh_addralign", "u8"),
    ("sh_entsize", "u8"),
]
_SYM64 = [
    ("st_name", "u4"),
    ("st_info", "u1"),
    ("st_other", "u1"),
    ("st_shndx", "u2"),
    ("st_value", "u8"),
    ("st_size", "u8"),
]
_RELA64 = [("r_offset", "u8"), ("r_info", "u8"), ("r_addend", "i8")]
_REL64 = [("r_offset", "u8"), ("r_info", "u8")]
_PHDR64 = [
    ("p_type", "u4"),
    ("p_flags", "u4"),
    ("p_offset", "u8"),
    ("p_vaddr", "u8"),
    ("p_paddr", "u8"),
    ("p_filesz", "u8"),
    ("p_memsz", "u8"),
    ("p_align", "u8"),
]
# Elf64_Nhdr (the same fields as Elf32_Nhdr), then the name and the
# descriptor, each padded to 4 bytes.
_NHDR64 = [("n_namesz", "u4"), ("n_descsz", "u4"), ("n_type", "u4")]


def _dtype(fields: list[tuple[str, str]], order: str) -> np.dtype[np.void]:
    return np.dtype([(name, order + code if code[0] in "ui" else code) for name, code in fields])


@dataclass(frozen=True)
class Layout:
    """The record layouts of one ELF class and byte order."""

    elf_class: ElfClass
    data: ElfData
    ehdr: np.dtype[np.void]
    shdr: np.dtype[np.void]
    sym: np.dtype[np.void]
    rela: np.dtype[np.void]
    rel: np.dtype[np.void]
    word: np.dtype[np.unsignedinteger]  # Elf64_Word, for SHT_SYMTAB_SHNDX
    phdr: np.dtype[np.void]
    nhdr: np.dtype[np.void]

    @property
    def byteorder(self) -> str:
        return "little" if self.data == ElfData.LSB else "big"

    @staticmethod
    def r_sym(r_info: np.ndarray) -> np.ndarray:
        """ELF64_R_SYM: the symbol index of relocation entries."""
        return (r_info >> np.uint64(32)).astype(np.int64)

    @staticmethod
    def r_type(r_info: np.ndarray) -> np.ndarray:
        """ELF64_R_TYPE."""
        return (r_info & np.uint64(0xFFFFFFFF)).astype(np.int64)

    @staticmethod
    def r_info(sym: np.ndarray, type: np.ndarray) -> np.ndarray:
        """ELF64_R_INFO: symbol index and type packed."""
        return (sym.astype(np.uint64) << np.uint64(32)) | type.astype(np.uint64)


@cache
def layout_for(elf_class: ElfClass, data: ElfData) -> Layout:
    """The layouts for a file of this class and byte order.  Only ELF64 is
    supported: every kernel that has livepatch relocations for plain modules
    (>= 5.8) on a 64-bit architecture loads ELF64 modules."""
    if elf_class != ElfClass.ELF64:
        raise ValueError(f"no layout for {elf_class!r}")
    order = "<" if data == ElfData.LSB else ">"
    return Layout(
        elf_class=elf_class,
        data=data,
        ehdr=_dtype(_EHDR64, order),
        shdr=_dtype(_SHDR64, order),
        sym=_dtype(_SYM64, order),
        rela=_dtype(_RELA64, order),
        rel=_dtype(_REL64, order),
        word=np.dtype(order + "u4"),
        phdr=_dtype(_PHDR64, order),
        nhdr=_dtype(_NHDR64, order),
    )


_STRUCT_CODES = {("u", 1): "B", ("u", 2): "H", ("u", 4): "I", ("u", 8): "Q",
                 ("i", 1): "b", ("i", 2): "h", ("i", 4): "i", ("i", 8): "q"}


@cache
def record_struct(dtype: np.dtype[np.void]) -> struct.Struct:
    """The :mod:`struct` format of one record of a layout above (for a reader
    that unpacks a few records where numpy's per-call cost would dominate):
    the same fields in the same order, integers as ints, byte fields
    (e_ident, fixed-size names) as bytes."""
    assert dtype.names is not None
    order = "="
    codes = []
    offset = 0
    for name in dtype.names:
        ftype, at = dtype.fields[name][:2]  # type: ignore[index]
        if at != offset:
            raise ValueError(f"{name}: not packed")
        offset += ftype.itemsize
        if ftype.kind in "ui":
            codes.append(_STRUCT_CODES[ftype.kind, ftype.itemsize])
            if ftype.byteorder in "<>":
                order = ftype.byteorder
            elif ftype.byteorder == "=" and ftype.itemsize > 1:
                order = "<" if np.little_endian else ">"
        elif ftype.kind in "VS":
            codes.append(f"{ftype.itemsize}s")
        else:
            raise ValueError(f"{name}: no struct code for {ftype}")
    return struct.Struct(order + "".join(codes))
