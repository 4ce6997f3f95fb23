"""Serialise an :class:`~klpsym.elf.image.ElfImage` (an ElfFile, read and
edited) back to bytes.

The writer assigns section indexes from the order of ``elf.sections``,
re-encodes symbol section indexes (st_shndx and SHT_SYMTAB_SHNDX, with the
e_shnum/e_shstrndx escape values when there are SHN_LORESERVE sections or
more), and lays out the file:

* a section keeps its input offset when nothing before it grew into that
  place and it is not larger than it was, so a rewrite with no change is
  byte-identical and a small change leaves the rest of the file in place;
* any other section is placed after the previous one at its sh_addralign;
* new sections go after the input's sections, and the section header table
  goes last when it changed size;
* bytes between sections are the input's padding where the input had
  padding, and zero where an input section's old content would show through
  (a moved relocation must not survive as a stale copy).
"""

from __future__ import annotations

import bisect
from typing import Protocol

import numpy as np

from klpsym.elf.constants import ET, SHN, SHT
from klpsym.elf.image import ElfImage
from klpsym.elf.tables import Section, SymbolTable, info_is_index
from klpsym.errors import ElfError, InternalError


def _align(value: int, alignment: int) -> int:
    if alignment <= 1:
        return value
    return (value + alignment - 1) // alignment * alignment


Chunk = tuple[int, "bytes | memoryview"]


class Sink(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...


def write(elf: ElfImage) -> bytes:
    """The file as one bytes object."""
    chunks, total = layout(elf)
    out = bytearray(total)
    for off, c in chunks:
        out[off: off + len(c)] = c
    return bytes(out)


def write_to(elf: ElfImage, sink: Sink) -> int:
    """Stream the file to ``sink`` (a file object, or anything with
    ``write``) without assembling it in memory; the bytes are those of
    :func:`write`.  Returns the size written."""
    chunks, total = layout(elf)
    cursor = 0
    for off, c in sorted(chunks, key=lambda t: t[0]):
        if not len(c):
            continue
        if off < cursor:
            raise InternalError(f"{elf.name}: the writer laid out overlapping output at {off:#x}")
        if off > cursor:
            sink.write(bytes(off - cursor))
        sink.write(c)
        cursor = off + len(c)
    if cursor < total:
        sink.write(bytes(total - cursor))
    return total


def layout(elf: ElfImage) -> tuple[list[Chunk], int]:
    """Where every byte of the output comes from: (offset, bytes) pieces,
    not overlapping, and the file size; bytes no piece covers are zero."""
    if elf.elf_type != ET.REL:
        raise ElfError(f"{elf.name}: only relocatable objects (ET_REL) can be written")
    secs = elf.sections
    if not secs or secs[0].uid != 0 or secs[0].type != SHT.NULL:
        raise ElfError(f"{elf.name}: the first section must be the null section")
    if not any(s is elf.shstrtab for s in secs):
        raise ElfError(f"{elf.name}: the section name table was removed")

    symtab = elf._symtab
    remap, index = _indexes(secs)
    if symtab is not None and symtab.shndx_section is None:
        real, new = _new_indexes(symtab, remap)
        if np.any(real & (new >= SHN.LORESERVE)):
            _add_shndx_section(elf, symtab)
            secs = elf.sections
            remap, index = _indexes(secs)

    if symtab is not None:
        _encode_symtab(elf, symtab, remap)
    name_offsets = _section_names(elf)

    return _layout(elf, secs, index, name_offsets)


# -- symbols -----------------------------------------------------------------


def _indexes(secs: list[Section]) -> tuple[np.ndarray, dict[int, int]]:
    """Section uid -> index in the output, as an array and a dict."""
    remap = np.full(max(s.uid for s in secs) + 1, -1, dtype=np.int64)
    for i, s in enumerate(secs):
        remap[s.uid] = i
    return remap, {s.uid: i for i, s in enumerate(secs)}


def _new_indexes(symtab: SymbolTable, remap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each symbol: whether it is in a real section, and that section's
    output index (0 for the reserved values)."""
    ref = symtab.section_ref
    real = ref >= 0
    safe = np.where(real, ref, 0)
    new = np.where(safe < len(remap), remap[np.minimum(safe, len(remap) - 1)], -1)
    lost = np.flatnonzero(real & (new < 0))
    if len(lost):
        name = symtab.name(int(lost[0]))
        raise ElfError(f"symbol {name!r} is defined in a section that was removed")
    return real, np.where(real, new, 0)


def _add_shndx_section(elf: ElfImage, symtab: SymbolTable) -> None:
    sec = elf.new_section(
        ".symtab_shndx", SHT.SYMTAB_SHNDX, addralign=4, entsize=4, link=symtab.section
    )
    sec.table = np.zeros(len(symtab), dtype=elf.layout.word)
    elf.insert_section(sec, after=symtab.section)
    symtab.shndx_section = sec


def _encode_symtab(elf: ElfImage, symtab: SymbolTable, remap: np.ndarray) -> None:
    ref = symtab.section_ref
    real, new = _new_indexes(symtab, remap)
    need_x = real & (new >= SHN.LORESERVE)
    st = np.where(real, np.where(need_x, int(SHN.XINDEX), new), -ref)
    xval = np.where(need_x, new, 0)
    # Keep the input's own encoding wherever the symbol's section did not
    # change, so an untouched table is written back byte for byte.
    keep = (ref == symtab._orig_ref) & np.where(real, new == ref, True)
    st = np.where(keep, symtab._orig_shndx, st)
    if symtab._orig_xindex is not None:
        xval = np.where(keep, symtab._orig_xindex, xval)
    if np.any(need_x) and symtab.shndx_section is None:
        raise ElfError(f"{elf.name}: symbols need SHT_SYMTAB_SHNDX but there is none")
    symtab.array["st_shndx"] = st.astype(np.uint16)
    symtab.section.table = symtab.array
    if symtab.shndx_section is not None:
        symtab.shndx_section.table = xval.astype(elf.layout.word)
    strtab = symtab.section.link
    if strtab is not None and len(symtab.strings) != len(strtab.data):
        strtab.data = symtab.strings.data
        strtab.table = None


# -- section names -----------------------------------------------------------


def _section_names(elf: ElfImage) -> list[int]:
    names = elf.shstrings
    orig = elf._shstr_orig
    offsets: list[int] = []
    for i, s in enumerate(elf.sections):
        if i == 0:
            offsets.append(int(elf.shdr0["sh_name"]))
            continue
        off = s.orig_name_offset
        if off is not None and off < len(orig):
            end = orig.find(b"\0", off)
            if end >= 0 and orig[off:end].decode("utf-8", "surrogateescape") == s.name:
                offsets.append(off)
                continue
        offsets.append(names.find_or_append(s.name))
    if len(names) != len(orig):
        elf.shstrtab.data = names.data
        elf.shstrtab.table = None
    return offsets


# -- layout ------------------------------------------------------------------


class _Covered:
    """The byte ranges the input's headers and sections occupied."""

    def __init__(self, elf: ElfImage) -> None:
        spans = [(0, elf.layout.ehdr.itemsize)]
        orig_shnum = int(elf.header["e_shnum"]) or int(elf.shdr0["sh_size"])
        shoff = int(elf.header["e_shoff"])
        spans.append((shoff, shoff + orig_shnum * elf.layout.shdr.itemsize))
        for s in elf.sections:
            if s.orig_offset is not None and s.orig_size:
                spans.append((s.orig_offset, s.orig_offset + s.orig_size))
        spans.sort()
        self.starts = [a for a, _ in spans]
        self.spans = spans

    def padding(self, raw: memoryview, a: int, b: int) -> bytes:
        """The input's bytes in [a, b), zeroed where an input section was."""
        if a >= b:
            return b""
        if b > len(raw):
            return bytes(b - a)
        chunk = bytearray(raw[a:b])
        hi = bisect.bisect_left(self.starts, b)
        for s, e in self.spans[:hi]:
            if e > a:
                lo_, hi_ = max(s, a), min(e, b)
                if lo_ < hi_:
                    chunk[lo_ - a: hi_ - a] = bytes(hi_ - lo_)
        return bytes(chunk)


def _still_dangling(raw: int, orig_count: int, count: int) -> int:
    """A raw section index that named no section of the input (past its
    count: the loader skips such relocations, apply_relocations()) must not
    come to name one because sections were added: it moves past the end by
    as many (fuzz finding: a relocation section came to apply to .shstrtab)."""
    if orig_count <= raw < count:
        return raw + (count - orig_count)
    return raw


_SHDR = object()  # marker for the section header table in the layout sequence
# Alignment padding larger than this is refused: a module's sections are
# aligned to a page at most; a corrupt sh_addralign must not make a 4 GB file.
_MAX_PAD = 1 << 24


def _layout(elf: ElfImage, secs: list[Section], index: dict[int, int],
            name_offsets: list[int]) -> tuple[list[Chunk], int]:
    layout = elf.layout
    raw = memoryview(elf.raw)
    n = len(secs)
    shdr_size = n * layout.shdr.itemsize
    orig_shoff = int(elf.header["e_shoff"])
    orig_shnum = int(elf.header["e_shnum"]) or int(elf.shdr0["sh_size"])
    shdr_in_place = shdr_size <= orig_shnum * layout.shdr.itemsize

    contents: dict[int, bytes | memoryview] = {}
    originals: list[tuple[int, int, object]] = []
    new_items: list[object] = []
    for s in secs[1:]:
        if s.type != SHT.NOBITS:
            contents[s.uid] = s.content()
        if s.orig_offset is not None:
            originals.append((s.orig_offset, s.orig_index or 0, s))
        else:
            new_items.append(s)
    if shdr_in_place:
        originals.append((orig_shoff, n + 1, _SHDR))
    originals.sort(key=lambda t: (t[0], t[1]))
    sequence = [item for _, _, item in originals] + new_items
    if not shdr_in_place:
        sequence.append(_SHDR)

    covered = _Covered(elf)
    offsets: dict[int, int] = {}
    chunks: list[tuple[int, bytes | memoryview]] = []
    cursor = layout.ehdr.itemsize
    preserving = True
    shoff = 0
    for item in sequence:
        if item is _SHDR:
            size, align = shdr_size, 8
            orig_off, orig_size = orig_shoff, orig_shnum * layout.shdr.itemsize
        else:
            assert isinstance(item, Section)
            size = 0 if item.type == SHT.NOBITS else len(contents[item.uid])
            align = max(item.addralign, 1)
            orig_off = item.orig_offset if item.orig_offset is not None else -1
            orig_size = item.orig_size or 0
        if orig_off >= cursor and size <= orig_size:
            place = orig_off
        else:
            place = _align(cursor, align)
            if place - cursor > _MAX_PAD:
                what = "the section header table" if item is _SHDR else \
                    f"section {getattr(item, 'name', '?')}"
                raise ElfError(f"{elf.name}: {what} has to move and its alignment {align} "
                               f"would pad the file with {place - cursor} bytes; the file is "
                               "corrupt")
            if place != orig_off:
                preserving = False
        if place > cursor and size:
            pad = covered.padding(raw, cursor, place) if preserving else bytes(place - cursor)
            chunks.append((cursor, pad))
        if item is _SHDR:
            shoff = place
        else:
            assert isinstance(item, Section)
            offsets[item.uid] = place
            if size:
                chunks.append((place, contents[item.uid]))
        if size:
            cursor = place + size
    if preserving and len(raw) > cursor:
        chunks.append((cursor, covered.padding(raw, cursor, len(raw))))
    # A section without bytes, placed where its alignment or its old offset
    # said, may lie past the end of what is written: it only has to lie in
    # the file (kernel/module/main.c elf_validity_check() refuses sh_offset
    # > len for any section but SHT_NOBITS), so it goes to the end.
    end = max(cursor, len(raw)) if preserving else cursor
    for s in secs[1:]:
        if s.type != SHT.NOBITS and offsets[s.uid] > end:
            offsets[s.uid] = end

    # headers
    hdr = elf.header.copy()
    hdr["e_shoff"] = shoff
    shstrndx = index[elf.shstrtab.uid]
    hdr["e_shnum"] = n if n < SHN.LORESERVE else 0
    hdr["e_shstrndx"] = shstrndx if shstrndx < SHN.LORESERVE else SHN.XINDEX
    table = np.zeros(n, dtype=layout.shdr)
    table[0] = elf.shdr0
    table[0]["sh_size"] = n if n >= SHN.LORESERVE else 0
    table[0]["sh_link"] = shstrndx if shstrndx >= SHN.LORESERVE else 0
    for i, s in enumerate(secs[1:], start=1):
        rec = table[i]
        rec["sh_name"] = name_offsets[i]
        rec["sh_type"] = s.type
        rec["sh_flags"] = s.flags
        rec["sh_addr"] = s.addr
        rec["sh_offset"] = offsets[s.uid]
        rec["sh_size"] = s.size
        rec["sh_link"] = index[s.link.uid] if s.link is not None else \
            _still_dangling(s.link_raw, orig_shnum, n)
        rec["sh_info"] = index[s.info_section.uid] if s.info_section is not None else \
            _still_dangling(s.info, orig_shnum, n) if info_is_index(s) else s.info
        rec["sh_addralign"] = s.addralign
        rec["sh_entsize"] = s.entsize
        if s.link is not None and s.link.uid not in index:
            raise ElfError(f"{elf.name}: section {s.name} links to a removed section")
        if s.info_section is not None and s.info_section.uid not in index:
            raise ElfError(f"{elf.name}: section {s.name} applies to a removed section")
    chunks.append((0, hdr.tobytes()))
    chunks.append((shoff, table.tobytes()))

    total = max(off + len(c) for off, c in chunks)
    return chunks, total
