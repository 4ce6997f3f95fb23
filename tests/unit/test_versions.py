"""module.versions: __versions (basic) and the 6.14+ extended sections."""

from __future__ import annotations

import struct

import pytest

from elfbuilder import SHF_ALLOC, ElfBuilder
from klpsym.elf import ElfFile
from klpsym.errors import ModuleError
from klpsym.module.versions import (
    SymbolVersion,
    VersionsFormat,
    append_version,
    encode_basic,
    read_version_tables,
    read_versions,
)


def _entry(crc: int, name: str, big: bool = False) -> bytes:
    return struct.pack(">Q" if big else "<Q", crc) + name.encode().ljust(56, b"\0")


@pytest.mark.parametrize("big", [False, True])
def test_basic_read_and_encode_round_trip(big: bool) -> None:
    b = ElfBuilder(big_endian=big)
    b.text()
    raw = _entry(0xBDFB6DBB, "__fentry__", big) + _entry(0x12345678, "printk", big)
    b.section("__versions", data=raw, flags=SHF_ALLOC, align=8)
    elf = ElfFile.from_bytes(b.build())
    v = read_versions(elf)
    assert v.format == VersionsFormat.BASIC
    assert v.entries == (SymbolVersion("__fentry__", 0xBDFB6DBB),
                         SymbolVersion("printk", 0x12345678))
    assert v.crc("printk") == 0x12345678 and v.crc("nope") is None
    assert encode_basic(elf, list(v.entries)) == raw


@pytest.mark.parametrize("big", [False, True])
def test_append_to_both_tables_round_trips(big: bool) -> None:
    b = ElfBuilder(big_endian=big)
    b.text()
    e = ">" if big else "<"
    b.section("__versions", data=_entry(1, "printk", big), flags=SHF_ALLOC, align=32)
    b.section("__version_ext_crcs", data=struct.pack(e + "I", 1), align=4)
    b.section("__version_ext_names", data=b"printk\0\0\0")
    elf = ElfFile.from_bytes(b.build())
    new = SymbolVersion("klp_enable_patch", 0xCAFEF00D)
    assert append_version(elf, new) == ["__version_ext_crcs", "__version_ext_names",
                                        "__versions"]
    again = ElfFile.from_bytes(elf.to_bytes())
    tables = read_version_tables(again)
    assert [t.format for t in tables] == [VersionsFormat.EXTENDED, VersionsFormat.BASIC]
    for t in tables:
        assert t.entries == (SymbolVersion("printk", 1), new)
    names = again.section_by_name("__version_ext_names")
    assert names is not None and bytes(names.content()) == b"printk\0klp_enable_patch\0\0\0"


def test_no_versions() -> None:
    b = ElfBuilder()
    b.text()
    assert read_versions(ElfFile.from_bytes(b.build())).format == VersionsFormat.NONE


def test_extended() -> None:
    b = ElfBuilder()
    b.text()
    long_name = "a_symbol_name_longer_than_fifty_six_bytes_" + "x" * 30
    b.section("__version_ext_crcs", data=struct.pack("<II", 1, 0xFFFFFFFF), align=4)
    b.section("__version_ext_names", data=b"printk\0" + long_name.encode() + b"\0\0\0")
    v = read_versions(ElfFile.from_bytes(b.build()))
    assert v.format == VersionsFormat.EXTENDED
    assert v.entries == (SymbolVersion("printk", 1), SymbolVersion(long_name, 0xFFFFFFFF))


@pytest.mark.parametrize("sections, message", [
    ({"__versions": b"\0" * 65}, "not a whole number of 64-byte entries"),
    ({"__version_ext_crcs": b"\0" * 8}, "has only one of"),
    ({"__version_ext_crcs": b"\0" * 6, "__version_ext_names": b"a\0b\0"}, "4-byte CRCs"),
    ({"__version_ext_crcs": b"\0" * 8, "__version_ext_names": b"a\0"}, "fewer names"),
])
def test_corrupt(sections: dict[str, bytes], message: str) -> None:
    b = ElfBuilder()
    b.text()
    for name, data in sections.items():
        b.section(name, data=data)
    with pytest.raises(ModuleError, match=message):
        read_versions(ElfFile.from_bytes(b.build()))


def test_name_too_long_for_basic() -> None:
    b = ElfBuilder()
    b.text()
    elf = ElfFile.from_bytes(b.build())
    with pytest.raises(ModuleError, match="too long for __versions"):
        encode_basic(elf, [SymbolVersion("x" * 56, 1)])




@pytest.mark.parametrize(("sh_type", "type_name"), [(4, "SHT_RELA"), (0, "SHT_NULL")])
@pytest.mark.parametrize("name", ["__versions", "__version_ext_crcs", "__version_ext_names"])
def test_version_table_of_another_type_is_corrupt(name: str, sh_type: int,
                                                  type_name: str) -> None:
    """modpost writes the tables as SHT_PROGBITS.  Typed as relocations the
    ELF layer reads them as 24-byte records, and an entry appended to one
    made convert's output unreadable; typed SHT_NULL they have no contents
    (the writer keeps none), and the guard's entry appended to one was lost
    (fuzz findings; corpus convert-versions-section-type-*.ko)."""
    b = ElfBuilder()
    b.text()
    b.section("__versions", data=_entry(1, "printk") * 3)  # 192 bytes: 8 x 24 too
    b.section("__version_ext_crcs", data=struct.pack("<6I", *range(6)), align=4)
    b.section("__version_ext_names", data=b"a\0b\0c\0d\0e\0f\0" + b"\0" * 12)
    elf = ElfFile.from_bytes(b.build())
    sec = elf.section_by_name(name)
    assert sec is not None
    sec.type = sh_type
    with pytest.raises(ModuleError, match=f"{name} has section type {type_name}, not SHT_PROGBITS"):
        read_version_tables(elf)
    with pytest.raises(ModuleError, match="not SHT_PROGBITS"):
        append_version(elf, SymbolVersion("klp_enable_patch", 1))
