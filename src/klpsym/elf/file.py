"""The ELF object model and reader: :class:`ElfFile` reads an ELF64 file
(its header and section headers, :func:`_read`) into an
:class:`~klpsym.elf.image.ElfImage` and writes it back
(:mod:`klpsym.elf.writer`).  The parts (sections, string and symbol tables)
are in :mod:`klpsym.elf.tables`, importable from here too.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from klpsym.elf.constants import EI, ELF_MAGIC, ET, SHN, ElfClass, ElfData
from klpsym.elf.image import ElfImage, _fail
from klpsym.elf.layout import layout_for
from klpsym.elf.tables import (
    _SHT_NOBITS,
    _SHT_NULL,
    Buffer,
    Section,
    StringTable,
    SymbolTable,
    info_is_index,
)
from klpsym.elf.writer import Sink, write, write_to
from klpsym.errors import ElfError

__all__ = ["Buffer", "ElfFile", "Section", "StringTable", "SymbolTable", "info_is_index"]


class ElfFile(ElfImage):
    """A parsed ELF64 file.  Use :meth:`from_bytes` or :meth:`from_path`."""

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

    # -- writing -----------------------------------------------------------

    def to_bytes(self) -> bytes:
        return write(self)

    def write_to(self, sink: Sink) -> int:
        """Stream the file to ``sink`` (see :func:`klpsym.elf.writer.write_to`)."""
        return write_to(self, sink)


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
