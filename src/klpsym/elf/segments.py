"""Program headers and notes: what a program loader (or a boot loader) reads
of an ELF executable, as opposed to the sections of a relocatable object that
the rest of :mod:`klpsym.elf` models.

Read from an open file, a few hundred bytes at a time: the executables
looked at (a static busybox, an uncompressed vmlinux of tens of megabytes)
need only their headers and note segments.  Layouts are
:mod:`klpsym.elf.layout`'s (``Layout.phdr``, ``Layout.nhdr``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

import numpy as np

from klpsym.elf.constants import EI, ELF_MAGIC, PT, ElfClass, ElfData
from klpsym.elf.layout import Layout, layout_for


class ProgramHeaders(NamedTuple):
    layout: Layout  # the file's byte order
    headers: np.ndarray  # of layout.phdr


class Note(NamedTuple):
    name: bytes  # without its NUL padding ("Xen", "GNU", "Linux")
    type: int
    desc: bytes


def read_program_headers(f: BinaryIO) -> ProgramHeaders | None:
    """The program headers of the ELF64 file open as ``f`` (either byte
    order), or None when it is not an ELF64 file.  Entries the file is too
    short for are left out."""
    f.seek(0)
    ident = f.read(64)
    if len(ident) < 64 or ident[:4] != ELF_MAGIC or ident[EI.CLASS] != ElfClass.ELF64 \
            or ident[EI.DATA] not in (ElfData.LSB, ElfData.MSB):
        return None
    layout = layout_for(ElfClass.ELF64, ElfData(ident[EI.DATA]))
    ehdr = np.frombuffer(ident, dtype=layout.ehdr, count=1)[0]
    phoff, phentsize, phnum = int(ehdr["e_phoff"]), int(ehdr["e_phentsize"]), int(ehdr["e_phnum"])
    if phnum == 0 or phentsize < layout.phdr.itemsize:
        return ProgramHeaders(layout, np.zeros(0, dtype=layout.phdr))
    f.seek(phoff)
    raw = f.read(phentsize * phnum)
    count = (len(raw) - layout.phdr.itemsize) // phentsize + 1 \
        if len(raw) >= layout.phdr.itemsize else 0
    headers = np.ndarray((count,), dtype=layout.phdr, buffer=raw, strides=(phentsize,))
    return ProgramHeaders(layout, headers.copy())


def has_interpreter(found: ProgramHeaders) -> bool:
    """Whether the executable names a program interpreter (PT_INTERP): a
    dynamically linked one."""
    return bool((found.headers["p_type"] == PT.INTERP).any())


def parse_notes(data: bytes, layout: Layout) -> Iterator[Note]:
    """The notes in the bytes of a note segment or section: each an
    Elf64_Nhdr, then its name and descriptor, each padded to 4 bytes."""
    nhdr = layout.nhdr
    pos = 0
    while pos + nhdr.itemsize <= len(data):
        head = np.frombuffer(data, dtype=nhdr, count=1, offset=pos)[0]
        namesz, descsz, ntype = int(head["n_namesz"]), int(head["n_descsz"]), int(head["n_type"])
        pos += nhdr.itemsize
        name = data[pos:pos + namesz].rstrip(b"\0")
        pos += (namesz + 3) & ~3
        desc = data[pos:pos + descsz]
        pos += (descsz + 3) & ~3
        yield Note(name, ntype, desc)


def segment_notes(f: BinaryIO, found: ProgramHeaders) -> Iterator[Note]:
    """The notes of every PT_NOTE segment of the file open as ``f``."""
    for ph in found.headers[found.headers["p_type"] == PT.NOTE]:
        f.seek(int(ph["p_offset"]))
        yield from parse_notes(f.read(int(ph["p_filesz"])), found.layout)
