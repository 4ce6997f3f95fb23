"""Symbol versions (CONFIG_MODVERSIONS): the CRCs a module was built against.

modpost writes, for every undefined symbol it found in Module.symvers with a
CRC, one entry into the ``__versions`` section of ``<m>.mod.c``
(scripts/mod/modpost.c add_versions())::

    struct modversion_info {                 /* include/linux/module.h */
        unsigned long crc;
        char name[MODULE_NAME_LEN];          /* 64 - sizeof(unsigned long) */
    };

The loader's check_version() (kernel/module/version.c since 5.19, before in
kernel/module.c) compares it with the exporter's CRC when it resolves the
symbol.  On 64-bit targets an entry is 64 bytes: an 8-byte CRC (only its low
32 bits are used) and a NUL-padded 56-byte name.

Linux 6.14 added extended modversions (CONFIG_EXTENDED_MODVERSIONS, "modules:
Support extended MODVERSIONS info"; sid's 7.2 modpost still writes both): two
parallel sections, ``__version_ext_crcs``
(one u32 per symbol) and ``__version_ext_names`` (NUL-terminated names, so
long names fit).  When present the loader uses them instead of
``__versions``.  Both are read here; :func:`read_versions` says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

from klpsym.elf.constants import SHT
from klpsym.errors import ModuleError
from klpsym.kernel.version import MODULE_NAME_LEN

if TYPE_CHECKING:  # the ELF model is the caller's; annotations only
    from klpsym.elf import ElfFile
    from klpsym.elf.file import Section

VERSIONS_SECTION = "__versions"
EXT_CRCS_SECTION = "__version_ext_crcs"
EXT_NAMES_SECTION = "__version_ext_names"
ENTRY_SIZE = 8 + MODULE_NAME_LEN


class VersionsFormat(StrEnum):
    NONE = "none"  # no CONFIG_MODVERSIONS in the kernel it was built for
    BASIC = "basic"  # __versions
    EXTENDED = "extended"  # __version_ext_crcs + __version_ext_names (6.14+)


@dataclass(frozen=True)
class SymbolVersion:
    name: str
    crc: int


@dataclass(frozen=True)
class Versions:
    format: VersionsFormat
    entries: tuple[SymbolVersion, ...]

    def crc(self, name: str) -> int | None:
        for e in self.entries:
            if e.name == name:
                return e.crc
        return None

    def __len__(self) -> int:
        return len(self.entries)


def modversion_dtype(order: str) -> np.dtype[np.void]:
    """``struct modversion_info`` in byte order ``order`` ("<" or ">")."""
    return np.dtype([("crc", order + "u8"), ("name", f"S{MODULE_NAME_LEN}")])


def basic_dtype(elf: ElfFile) -> np.dtype[np.void]:
    """``struct modversion_info`` for this file's byte order."""
    return modversion_dtype("<" if elf.layout.byteorder == "little" else ">")


def encode_basic(elf: ElfFile, entries: list[SymbolVersion]) -> bytes:
    """The ``__versions`` bytes for ``entries`` (as modpost would write them)."""
    arr = np.zeros(len(entries), dtype=basic_dtype(elf))
    for i, e in enumerate(entries):
        raw = e.name.encode()
        if len(raw) >= MODULE_NAME_LEN:
            raise ModuleError(f"symbol name {e.name!r} is too long for __versions "
                              f"(at most {MODULE_NAME_LEN - 1} bytes)")
        arr[i] = (e.crc, raw)
    return arr.tobytes()


def read_versions(elf: ElfFile) -> Versions:
    """The module's symbol versions; ModuleError if the sections are malformed."""
    ext_crcs = elf.section_by_name(EXT_CRCS_SECTION)
    ext_names = elf.section_by_name(EXT_NAMES_SECTION)
    if ext_crcs is not None or ext_names is not None:
        return _read_extended(elf, ext_crcs, ext_names)
    sec = elf.section_by_name(VERSIONS_SECTION)
    if sec is None:
        return Versions(VersionsFormat.NONE, ())
    return _read_basic(elf, sec)


def read_version_tables(elf: ElfFile) -> list[Versions]:
    """Every version table the module has: the extended one (6.14+) and the
    basic ``__versions``, each on its own (modpost writes both when both
    CONFIG_EXTENDED_MODVERSIONS and CONFIG_BASIC_MODVERSIONS are set)."""
    tables = []
    ext_crcs = elf.section_by_name(EXT_CRCS_SECTION)
    ext_names = elf.section_by_name(EXT_NAMES_SECTION)
    if ext_crcs is not None or ext_names is not None:
        tables.append(_read_extended(elf, ext_crcs, ext_names))
    sec = elf.section_by_name(VERSIONS_SECTION)
    if sec is not None:
        tables.append(_read_basic(elf, sec))
    return tables


def _require_progbits(elf: ElfFile, sec: Section) -> None:
    """modpost writes the version tables as plain data (SHT_PROGBITS); one
    of another type is corrupt: SHT_NULL has no contents (the writer keeps
    none), a relocation or symbol table type makes the ELF layer read it as
    24-byte records (fuzz findings: entries appended to such a table made
    convert's output unreadable)."""
    if sec.type != SHT.PROGBITS:
        raise ModuleError(f"{elf.name}: {sec.name} has section type "
                          f"{_type_name(sec.type)}, not SHT_PROGBITS; the module is corrupt")


def _type_name(t: int) -> str:
    try:
        return f"SHT_{SHT(t).name}"
    except ValueError:
        return hex(t)


def _read_basic(elf: ElfFile, sec: Section) -> Versions:
    _require_progbits(elf, sec)
    if sec.size % ENTRY_SIZE:
        raise ModuleError(f"{elf.name}: {VERSIONS_SECTION} is {sec.size} bytes, not a whole "
                          f"number of {ENTRY_SIZE}-byte entries; the module is corrupt")
    arr = np.frombuffer(sec.content(), dtype=basic_dtype(elf))
    entries = tuple(SymbolVersion(bytes(n).decode("utf-8", "replace"), int(c) & 0xFFFFFFFF)
                    for c, n in zip(arr["crc"].tolist(), arr["name"].tolist(), strict=True))
    return Versions(VersionsFormat.BASIC, entries)


def _read_extended(elf: ElfFile, crcs_sec: Section | None,
                   names_sec: Section | None) -> Versions:
    if crcs_sec is None or names_sec is None:
        raise ModuleError(f"{elf.name}: has only one of {EXT_CRCS_SECTION} and "
                          f"{EXT_NAMES_SECTION}; the module is corrupt")
    _require_progbits(elf, crcs_sec)
    _require_progbits(elf, names_sec)
    if crcs_sec.size % 4:
        raise ModuleError(f"{elf.name}: {EXT_CRCS_SECTION} is {crcs_sec.size} bytes, not a "
                          "whole number of 4-byte CRCs; the module is corrupt")
    order = "<" if elf.layout.byteorder == "little" else ">"
    crcs = np.frombuffer(crcs_sec.content(), dtype=order + "u4").tolist()
    raw = bytes(names_sec.content())
    # Each name is NUL-terminated; the section may be padded with more NULs.
    names = raw.split(b"\0")[: len(crcs)]
    if raw.count(b"\0") < len(crcs):
        raise ModuleError(f"{elf.name}: {EXT_NAMES_SECTION} has fewer names than "
                          f"{EXT_CRCS_SECTION} has CRCs; the module is corrupt")
    entries = tuple(SymbolVersion(n.decode("utf-8", "replace"), int(c))
                    for n, c in zip(names, crcs, strict=True))
    return Versions(VersionsFormat.EXTENDED, entries)


def append_version(elf: ElfFile, entry: SymbolVersion) -> list[str]:
    """Add ``entry`` at the end of every version table ``elf`` has (both the
    extended and the basic one where both exist, as modpost would have written
    it had the module referenced the symbol); return the names of the sections
    rewritten.

    The loader reads the tables whole (check_version() walks ``__versions``
    by sh_size; the extended walk pairs the n-th CRC with the n-th name), so
    an entry appended at the end is found like any other.  Existing entries
    keep their offsets.  A symbol that spans a whole table (modpost's local
    ``____versions`` array) is resized with it, so the symbol table stays
    consistent."""
    changed: list[str] = []
    ext_crcs = elf.section_by_name(EXT_CRCS_SECTION)
    ext_names = elf.section_by_name(EXT_NAMES_SECTION)
    if ext_crcs is not None or ext_names is not None:
        current = _read_extended(elf, ext_crcs, ext_names)
        assert ext_crcs is not None and ext_names is not None
        order = "<" if elf.layout.byteorder == "little" else ">"
        raw = bytes(ext_names.content())
        # The names end after the n-th NUL; anything after it is padding
        # (the string literal's own terminator) and must stay after them.
        end = 0
        for _ in range(len(current)):
            end = raw.index(b"\0", end) + 1
        if b"\0" in entry.name.encode():
            raise ModuleError(f"symbol name {entry.name!r} contains a NUL")
        _replace(elf, ext_crcs, bytes(ext_crcs.content())
                 + np.array([entry.crc], dtype=order + "u4").tobytes())
        _replace(elf, ext_names, raw[:end] + entry.name.encode() + b"\0" + raw[end:])
        changed += [EXT_CRCS_SECTION, EXT_NAMES_SECTION]
    basic = elf.section_by_name(VERSIONS_SECTION)
    if basic is not None:
        _read_basic(elf, basic)  # refuses a corrupt table
        _replace(elf, basic, bytes(basic.content()) + encode_basic(elf, [entry]))
        changed.append(VERSIONS_SECTION)
    return changed


def _replace(elf: ElfFile, sec: Section, data: bytes) -> None:
    old = sec.size
    sec.data = data
    sec.table = None
    st = elf.symtab
    spans = ((st.section_ref == sec.uid) & (st.array["st_value"] == 0)
             & (st.array["st_size"] == old))
    st.array["st_size"][spans] = len(data)
