"""The ELF layer on synthetic objects, cross-checked with binutils' readelf."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from elfbuilder import (
    EM_X86_64,
    SHF_ALLOC,
    SHN_LORESERVE,
    SHT_NOBITS,
    SHT_PROGBITS,
    STB_LOCAL,
    STB_WEAK,
    STT_FUNC,
    STT_OBJECT,
    STT_SECTION,
    ElfBuilder,
    simple_module,
)
from klpsym.elf import ElfFile
from klpsym.elf.constants import SHF, SHN, SHT
from klpsym.errors import ElfError

readelf = shutil.which("readelf")
needs_readelf = pytest.mark.skipif(readelf is None, reason="binutils readelf not installed")


def _readelf(args: list[str], data: bytes, tmp_path: Path) -> str:
    p = tmp_path / "obj.o"
    p.write_bytes(data)
    out = subprocess.run(["readelf", "-W", *args, str(p)], capture_output=True, text=True,
                         check=True)
    assert "Warning" not in out.stderr and "Error" not in out.stderr, out.stderr
    return out.stdout


@pytest.mark.parametrize("big_endian", [False, True])
def test_noop_rewrite_is_byte_identical(big_endian: bool) -> None:
    data = simple_module(big_endian=big_endian).build()
    elf = ElfFile.from_bytes(data)
    elf.parse_tables()  # re-encoded, not copied
    assert elf.to_bytes() == data


@pytest.mark.parametrize("big_endian", [False, True])
def test_reads_symbols_and_relocations(big_endian: bool) -> None:
    elf = ElfFile.from_bytes(simple_module(("a", "b"), ("c",), big_endian=big_endian).build())
    st = elf.symtab
    names = st.names()
    assert [names[i] for i in st.undefined()] == ["a", "b", "c"]
    text_rela = elf.section_by_name(".rela.text")
    assert text_rela is not None and text_rela.info_section is elf.section_by_name(".text")
    rela = elf.rela(text_rela)
    assert rela["r_offset"].tolist() == [1, 17, 33]
    assert rela["r_addend"].tolist() == [-4, -4, -4]
    assert [names[i] for i in elf.layout.r_sym(rela["r_info"])] == ["a", "b", "c"]


def test_refuses_elf32(tmp_path: Path) -> None:
    data = bytearray(simple_module().build())
    data[4] = 1
    with pytest.raises(ElfError, match="32-bit"):
        ElfFile.from_bytes(bytes(data), "m.ko")


def test_refuses_non_relocatable() -> None:
    b = simple_module()
    b.e_type = 2
    with pytest.raises(ElfError, match=r"executable \(ET_REL expected\)"):
        ElfFile.from_bytes(b.build(), "vmlinux")
    assert ElfFile.from_bytes(b.build(), relocatable_only=False).elf_type == 2


@pytest.mark.parametrize("cut", [0, 10, 63, 200, -1])
def test_truncated_files_are_clear_errors(cut: int) -> None:
    data = simple_module().build()
    with pytest.raises(ElfError):
        ElfFile.from_bytes(data[:cut] if cut >= 0 else data[:-1], "m.ko").parse_tables()


def test_not_elf() -> None:
    with pytest.raises(ElfError, match="not an ELF file"):
        ElfFile.from_bytes(b"hello world, this is text" * 4, "notes.txt")


def test_section_outside_file() -> None:
    data = bytearray(simple_module().build())
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    struct.pack_into("<Q", data, shoff + 64 + 0x18, 1 << 40)  # section 1's sh_offset
    with pytest.raises(ElfError, match="outside the file"):
        ElfFile.from_bytes(bytes(data), "m.ko")


@needs_readelf
def test_insert_section_renumbers_references(tmp_path: Path) -> None:
    """Sections and symbols refer to each other by object; the writer assigns
    the indexes.  readelf (an independent reader) must agree."""
    b = ElfBuilder()
    text = b.text(32)
    data = b.section(".data", SHT_PROGBITS, SHF_ALLOC | 1, bytes(16), 8)
    b.symbol(".data", data, STB_LOCAL, STT_SECTION)
    b.symbol("counter", data, STB_LOCAL, STT_OBJECT, 8, 8)
    f = b.symbol("fn", text, type=STT_FUNC, value=0, size=32)
    b.rela(data, 0, f, 1, 0)
    elf = ElfFile.from_bytes(b.build())
    elf.parse_tables()
    new = elf.new_section(".new", SHT.PROGBITS, flags=int(SHF.ALLOC), addralign=4, data=b"ABCD")
    elf.insert_section(new, after=elf.sections[0])  # everything shifts by one
    out = elf.to_bytes()
    sections = _readelf(["-S"], out, tmp_path)
    symbols = _readelf(["-s"], out, tmp_path)
    relocs = _readelf(["-r"], out, tmp_path)
    assert "[ 1] .new" in sections and "[ 2] .text" in sections and "[ 3] .data" in sections
    assert " 3 counter" in symbols and " 2 fn" in symbols
    assert "Relocation section '.rela.data'" in relocs and " fn + 0" in relocs
    again = ElfFile.from_bytes(out)
    rela_data = again.section_by_name(".rela.data")
    assert rela_data is not None and rela_data.info_section is again.section_by_name(".data")
    assert bytes(again.section_by_name(".new").content()) == b"ABCD"  # type: ignore[union-attr]


def test_grown_section_moves_and_shrunk_leaves_no_stale_bytes() -> None:
    elf = ElfFile.from_bytes(simple_module(("a", "b", "c")).build())
    rela = elf.section_by_name(".rela.text")
    assert rela is not None
    old = bytes(rela.content())
    rela.table = elf.rela(rela)[:1].copy()  # shrink
    elf.symtab.rename(1, "x" * 1000)  # grow .strtab
    out = elf.to_bytes()
    assert old[24:] not in out  # the dropped entries are gone, not left as padding
    again = ElfFile.from_bytes(out)
    assert len(again.rela(again.section_by_name(".rela.text"))) == 1  # type: ignore[arg-type]
    assert again.symtab.name(1) == "x" * 1000


def test_nobits_section_survives() -> None:
    b = simple_module()
    b.section(".bss", SHT_NOBITS, SHF_ALLOC | 1, b"", 32, nobits_size=4096)
    data = b.build()
    elf = ElfFile.from_bytes(data)
    bss = elf.section_by_name(".bss")
    assert bss is not None and bss.size == 4096
    assert elf.to_bytes() == data


def test_many_sections_use_the_escape_values(tmp_path: Path) -> None:
    """More than SHN_LORESERVE sections: e_shnum = 0 with the count in section
    0's sh_size, e_shstrndx = SHN_XINDEX, and symbols in high sections go
    through SHT_SYMTAB_SHNDX."""
    b = ElfBuilder()
    first = b.text(16)
    for i in range(SHN_LORESERVE + 10):
        last = b.section(f".s{i}", SHT_PROGBITS, SHF_ALLOC, b"", 1)
    b.symbol("high", last, type=STT_OBJECT)
    b.symbol("low", first, type=STT_FUNC)
    und = b.symbol("ext")
    b.rela(first, 1, und)
    data = b.build()
    assert struct.unpack_from("<H", data, 0x3C)[0] == 0  # e_shnum escaped
    elf = ElfFile.from_bytes(data)
    st = elf.symtab
    names = st.names()
    high = names.index("high")
    assert int(st.array["st_shndx"][high]) == SHN.XINDEX
    assert elf.sections[int(st.section_ref[high])].name == last.name
    assert elf.to_bytes() == data
    # Insert a section before everything: indexes shift, encodings follow.
    elf.insert_section(elf.new_section(".front", SHT.PROGBITS, data=b"F"), after=elf.sections[0])
    again = ElfFile.from_bytes(elf.to_bytes())
    assert len(again.sections) == len(elf.sections)
    assert again.sections[int(again.symtab.section_ref[high])].name == last.name
    low = names.index("low")
    assert again.sections[int(again.symtab.section_ref[low])].name == ".text"
    assert again.shstrtab.name == ".shstrtab"


def test_symtab_shndx_created_when_needed() -> None:
    """A symbol pushed past SHN_LORESERVE by inserted sections needs an
    SHT_SYMTAB_SHNDX table the input did not have."""
    b = ElfBuilder()
    for i in range(SHN_LORESERVE - 12):
        b.section(f".s{i}", SHT_PROGBITS, SHF_ALLOC, b"", 1)
    tail = b.text(16, ".tail")
    b.symbol("t", tail, type=STT_FUNC)
    elf = ElfFile.from_bytes(b.build())
    assert not any(s.type == SHT.SYMTAB_SHNDX for s in elf.sections)
    names = elf.symtab.names()
    for i in range(20):
        elf.insert_section(elf.new_section(f".pad{i}", SHT.PROGBITS), after=elf.sections[0])
    again = ElfFile.from_bytes(elf.to_bytes())
    assert any(s.type == SHT.SYMTAB_SHNDX for s in again.sections)
    t = names.index("t")
    assert again.symtab.section_ref[t] >= SHN_LORESERVE
    assert again.sections[int(again.symtab.section_ref[t])].name == ".tail"


def test_machine_and_byteorder_are_per_file() -> None:
    le = ElfFile.from_bytes(simple_module(big_endian=False).build())
    be = ElfFile.from_bytes(simple_module(big_endian=True).build())
    assert le.layout.sym.fields["st_value"][0].byteorder in "<="
    assert be.layout.sym.fields["st_value"][0].byteorder == ">"
    assert le.machine == be.machine == EM_X86_64
    assert np.array_equal(le.symtab.array["st_value"], be.symtab.array["st_value"])


def test_symbols_found_by_name_through_string_offsets() -> None:
    """SymbolTable.named() finds a name where it is its own string and where
    it is the tail of a longer one (as linkers share strings), and agrees
    with decoding every name."""
    b = ElfBuilder()
    text = b.text()
    b.symbol("xklp_enable_patch")
    b.symbol("klp_enable_patch", bind=STB_WEAK)
    b.symbol("shared_tail")
    b.symbol("defined", text, value=8)
    elf = ElfFile.from_bytes(b.build())
    st = elf.symtab
    names = [st.strings.get(int(o)) for o in st.array["st_name"]]  # (names() caches)
    tail = names.index("shared_tail")
    st.array["st_name"][tail] = st.array["st_name"][names.index("xklp_enable_patch")] + 1
    assert st.name(tail) == "klp_enable_patch"
    for name in ("klp_enable_patch", "xklp_enable_patch", "defined", "", "nope", "patch"):
        want = [i for i in range(len(st)) if st.name(i) == name]
        assert st.named(name).tolist() == want, name
        undefined = st.undefined()
        assert st.named(name, undefined).tolist() == [i for i in want if i in undefined]
    st.rename(tail, "renamed")
    assert st.named("renamed").tolist() == [tail]
    assert st.named("klp_enable_patch").tolist() == [names.index("klp_enable_patch")]


@pytest.mark.parametrize("big_endian", [False, True])
def test_appended_symbol_keeps_the_byte_order(big_endian: bool) -> None:
    """A symbol appended to a big-endian table is written big-endian, and
    the symbols before it stay as they were (fuzz finding: np.concatenate
    made the table native, the written file unreadable)."""
    from klpsym.elf.constants import STB

    elf = ElfFile.from_bytes(simple_module(big_endian=big_endian).build())
    before = elf.symtab.names()
    i = elf.symtab.append_undefined("klp_enable_patch", int(STB.GLOBAL))
    again = ElfFile.from_bytes(elf.to_bytes())
    assert again.symtab.names() == [*before, "klp_enable_patch"]
    assert again.symtab.undefined().tolist()[-1] == i


def test_section_without_bytes_stays_in_the_file() -> None:
    """A zero-size section whose alignment (64 KiB) would place it past the
    end once the sections before it grew is written at the end of the file,
    not past it (fuzz finding: convert's output failed its own re-read; the
    kernel refuses sh_offset > len for any section but NOBITS)."""
    b = ElfBuilder()
    text = b.text()
    b.section(".note.GNU-stack", flags=0)
    b.symbol("f", text, value=0)
    elf = ElfFile.from_bytes(b.build())
    text_sec, stack = elf.section_by_name(".text"), elf.section_by_name(".note.GNU-stack")
    assert text_sec is not None and stack is not None
    stack.addralign = 1 << 16  # as a corrupt input may say
    text_sec.data = bytes(4096)  # grows: everything after it has to move
    out = elf.to_bytes()
    again = ElfFile.from_bytes(out)
    stack = again.section_by_name(".note.GNU-stack")
    assert stack is not None and stack.size == 0
    assert stack.orig_offset is not None and stack.orig_offset <= len(out)


def test_dangling_section_index_stays_dangling() -> None:
    """A relocation section whose sh_info names no section (past the count:
    the loader skips it) still names none once sections are added (fuzz
    finding: it came to apply to .shstrtab)."""
    b = ElfBuilder()
    text = b.text()
    f = b.symbol("f", text, value=0)
    b.rela(text, 0, f)
    elf = ElfFile.from_bytes(b.build())
    n = len(elf.sections)
    rela = next(s for s in elf.sections if s.type == 4)  # SHT_RELA
    rela.info_section, rela.info = None, n  # one past the last section
    assert ElfFile.from_bytes(elf.to_bytes()).sections[elf.index_of(rela)].info == n
    for k in range(3):
        elf.insert_section(elf.new_section(f".added{k}", 1))
    again = ElfFile.from_bytes(elf.to_bytes())
    moved = again.sections[elf.index_of(rela)]
    assert moved.info_section is None and moved.info >= len(again.sections) == n + 3
