"""The load-time guard: an undefined klp_enable_patch (with its CRC in every
version table the module has) appended by the conversion; idempotent; held to
its rules by the validator."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_convert import target, write

from elfbuilder import (
    SHF_ALLOC,
    STB_LOCAL,
    STB_WEAK,
    STT_OBJECT,
    STT_SECTION,
    ElfBuilder,
    simple_module,
)
from klpsym.cli.main import main, message
from klpsym.elf import ElfFile
from klpsym.elf.constants import STB
from klpsym.errors import ConvertError
from klpsym.kernel.symvers import Export, Symvers
from klpsym.kernel.target import TargetKernel
from klpsym.klp.convert import convert_file
from klpsym.klp.guard import GUARD_SYMBOL, GuardAction, GuardPlan, guard_problems
from klpsym.klp.validate import loader_problems, symbol_changes
from klpsym.module.versions import SymbolVersion, read_version_tables, read_versions

CRC = 0x06689996  # bookworm 6.1.0-56's klp_enable_patch
LIVEPATCH_CFG = "CONFIG_LIVEPATCH=y\nCONFIG_KALLSYMS_ALL=y\n"


def crc_target(crc: int | None = CRC, **kw: Any) -> TargetKernel:
    t = target(**kw)
    exports = {e.name: e for e in t.symvers}
    exports[GUARD_SYMBOL] = Export(GUARD_SYMBOL, crc, "vmlinux", "EXPORT_SYMBOL_GPL")
    t.symvers = Symvers(exports, sources=["test Module.symvers"])
    return t


def _basic(name: str, crc: int) -> bytes:
    return struct.pack("<Q", crc) + name.encode().ljust(56, b"\0")


def with_versions(b: ElfBuilder, basic: bool = True, extended: bool = False) -> ElfBuilder:
    """Version tables as modpost writes them, with the ``____versions``-style
    local arrays spanning them."""
    names = [("_printk", 0xE8213E80), ("module_layout", 0x9060323F)]
    if basic:
        sec = b.section("__versions", flags=SHF_ALLOC, align=32,
                        data=b"".join(_basic(n, c) for n, c in names))
        b.symbol("__versions", sec, STB_LOCAL, STT_SECTION)
        b.symbol("____versions", sec, STB_LOCAL, STT_OBJECT, 0, len(sec.data))
    if extended:
        crcs = b.section("__version_ext_crcs", flags=SHF_ALLOC, align=4,
                         data=b"".join(struct.pack("<I", c) for _, c in names))
        # the string literal's own terminator: one more NUL after the last name
        text = b"".join(n.encode() + b"\0" for n, _ in names) + b"\0"
        ext = b.section("__version_ext_names", flags=SHF_ALLOC, data=text)
        b.symbol("____version_ext_crcs", crcs, STB_LOCAL, STT_OBJECT, 0, len(crcs.data))
        b.symbol("____version_ext_names", ext, STB_LOCAL, STT_OBJECT, 0, len(ext.data))
    return b


def _guard(elf: ElfFile) -> int:
    names = elf.symtab.names()
    assert names.count(GUARD_SYMBOL) == 1, names
    return names.index(GUARD_SYMBOL)


def test_guard_is_an_appended_global_undefined_symbol(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module(("kallsyms_lookup_name",), ("_printk",)))
    before = ElfFile.from_bytes(src.read_bytes())
    res = convert_file(src, target(), {}, output=tmp_path / "out.ko")
    assert res.guard.action == GuardAction.ADD and res.guard.crc is None  # no version table
    out = ElfFile.from_bytes((tmp_path / "out.ko").read_bytes())
    st = out.symtab
    i = _guard(out)
    assert i == len(before.symtab) == len(st) - 1  # appended: no index moved
    assert st.binds[i] == STB.GLOBAL and int(st.section_ref[i]) == 0
    assert int(st.array["st_value"][i]) == int(st.array["st_size"][i]) == 0
    # sh_info, the first non-local symbol, is unchanged and still true
    assert st.section.info == before.symtab.section.info
    assert not np.any(st.binds[st.section.info:] == STB.LOCAL)
    assert loader_problems(out, 511) == []
    assert read_version_tables(out) == []


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils readelf not installed")
def test_readelf_sees_the_guard_and_grown_versions(tmp_path: Path) -> None:
    src = write(tmp_path, with_versions(simple_module()))
    convert_file(src, crc_target(), {}, output=tmp_path / "out.ko")
    out = subprocess.run(["readelf", "-sSW", str(tmp_path / "out.ko")], capture_output=True,
                         text=True, check=True)
    assert not out.stderr
    assert any(ln.split()[-4:] == ["GLOBAL", "DEFAULT", "UND", GUARD_SYMBOL]
               for ln in out.stdout.splitlines())
    assert any(ln.split()[2:5] == ["192", "OBJECT", "LOCAL"] and ln.endswith(" ____versions")
               for ln in out.stdout.splitlines())  # 3 entries of 64 bytes


def test_basic_versions_get_the_crc(tmp_path: Path) -> None:
    src = write(tmp_path, with_versions(simple_module()))
    res = convert_file(src, crc_target(), {}, output=tmp_path / "out.ko")
    assert res.guard.crc == CRC and res.guard.tables == ("basic",)
    out = ElfFile.from_bytes((tmp_path / "out.ko").read_bytes())
    v = read_versions(out)
    assert v.entries[-1] == SymbolVersion(GUARD_SYMBOL, CRC)
    assert [e.name for e in v.entries] == ["_printk", "module_layout", GUARD_SYMBOL]
    st = out.symtab
    arr = st.names().index("____versions")
    sec = out.section_by_name("__versions")
    assert sec is not None and int(st.array["st_size"][arr]) == sec.size == 3 * 64


@pytest.mark.skipif(shutil.which("modprobe") is None, reason="kmod not installed")
def test_kmod_reads_the_guard_version(tmp_path: Path) -> None:
    src = write(tmp_path, with_versions(simple_module()))
    convert_file(src, crc_target(), {}, output=tmp_path / "out.ko")
    dump = subprocess.run(["modprobe", "--dump-modversions", str(tmp_path / "out.ko")],
                          capture_output=True, text=True, check=True).stdout
    assert dump.splitlines() == ["0xe8213e80\t_printk", "0x9060323f\tmodule_layout",
                                 f"0x{CRC:08x}\t{GUARD_SYMBOL}"]


def test_extended_and_basic_versions_both_grow(tmp_path: Path) -> None:
    src = write(tmp_path, with_versions(simple_module(), basic=True, extended=True))
    res = convert_file(src, crc_target(), {}, output=tmp_path / "out.ko")
    assert res.guard.tables == ("extended", "basic")
    out = ElfFile.from_bytes((tmp_path / "out.ko").read_bytes())
    tables = {t.format.value: t.entries for t in read_version_tables(out)}
    for fmt in ("extended", "basic"):
        assert tables[fmt][-1] == SymbolVersion(GUARD_SYMBOL, CRC)
        assert len(tables[fmt]) == 3
    names = out.section_by_name("__version_ext_names")
    assert names is not None
    # the new name goes before the literal's trailing NUL, not after it
    assert bytes(names.content()) == b"_printk\0module_layout\0klp_enable_patch\0\0"
    st = out.symtab
    for sym, sec in (("____version_ext_crcs", "__version_ext_crcs"),
                     ("____version_ext_names", "__version_ext_names")):
        s = out.section_by_name(sec)
        assert s is not None
        assert int(st.array["st_size"][st.names().index(sym)]) == s.size


def test_kernel_without_crcs_adds_no_version_entry(tmp_path: Path) -> None:
    src = write(tmp_path, with_versions(simple_module()))
    res = convert_file(src, crc_target(None), {}, output=tmp_path / "out.ko")
    assert res.guard.adds and res.guard.crc is None
    out = ElfFile.from_bytes((tmp_path / "out.ko").read_bytes())
    assert len(read_versions(out)) == 2
    _guard(out)


def test_extended_symbol_table_index_section(tmp_path: Path) -> None:
    b = simple_module()
    b.force_xindex = True
    src = write(tmp_path, b)
    convert_file(src, target(), {}, output=tmp_path / "out.ko")
    out = ElfFile.from_bytes((tmp_path / "out.ko").read_bytes())
    assert out.symtab.shndx_section is not None
    assert out.symtab.shndx_section.size == 4 * len(out.symtab)
    _guard(out)


def test_converting_again_adds_nothing(tmp_path: Path) -> None:
    src = write(tmp_path, with_versions(simple_module()))
    convert_file(src, crc_target(), {}, output=tmp_path / "once.ko")
    res = convert_file(tmp_path / "once.ko", crc_target(), {}, output=tmp_path / "twice.ko")
    assert res.guard.action == GuardAction.PRESENT
    assert (tmp_path / "twice.ko").read_bytes() == (tmp_path / "once.ko").read_bytes()


def test_unguarded_conversion_gets_the_guard_later(tmp_path: Path) -> None:
    src = write(tmp_path, with_versions(simple_module()))
    res = convert_file(src, crc_target(), {}, output=tmp_path / "bare.ko", guard=False)
    assert res.guard.action == GuardAction.OFF
    assert any("--no-guard" in n and "zero addresses" in n for n in res.plan.notes)
    bare = ElfFile.from_bytes((tmp_path / "bare.ko").read_bytes())
    assert GUARD_SYMBOL not in bare.symtab.names()
    assert len(read_versions(bare)) == 2
    res = convert_file(tmp_path / "bare.ko", crc_target(), {}, output=tmp_path / "g.ko")
    assert not res.plan.to_convert and res.guard.adds and res.written
    out = ElfFile.from_bytes((tmp_path / "g.ko").read_bytes())
    _guard(out)
    assert read_versions(out).crc(GUARD_SYMBOL) == CRC


def test_module_that_calls_klp_enable_patch_needs_nothing(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module(("kallsyms_lookup_name",), ("_printk", GUARD_SYMBOL)))
    res = convert_file(src, crc_target(), {}, output=tmp_path / "out.ko")
    assert res.guard.action == GuardAction.PRESENT
    out = ElfFile.from_bytes((tmp_path / "out.ko").read_bytes())
    assert len(out.symtab) == len(ElfFile.from_bytes(src.read_bytes()).symtab)
    _guard(out)


def test_nothing_livepatch_no_guard(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module((), ("_printk",)))
    res = convert_file(src, crc_target(), {}, output=tmp_path / "out.ko")
    assert res.guard.action == GuardAction.NOT_NEEDED
    assert (tmp_path / "out.ko").read_bytes() == src.read_bytes()


def test_weak_reference_is_refused(tmp_path: Path) -> None:
    b = simple_module()
    b.symbol(GUARD_SYMBOL, bind=STB_WEAK)
    src = write(tmp_path, b)
    with pytest.raises(ConvertError) as shown:
        convert_file(src, crc_target(), {}, output=tmp_path / "out.ko")
    assert re.search("weakly.*--no-guard", message(shown.value))
    assert not (tmp_path / "out.ko").exists()


def test_symvers_without_klp_enable_patch(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module())
    t = target(exports={"_printk": "vmlinux"})
    with pytest.raises(ConvertError, match="CONFIG_LIVEPATCH=y.*this kernel's Module.symvers"):
        convert_file(src, t, {}, output=tmp_path / "out.ko")
    t = target(exports={"_printk": "vmlinux"}, config=None)
    with pytest.raises(ConvertError) as shown:
        convert_file(src, t, {}, output=tmp_path / "out.ko")
    assert re.search("does not export klp_enable_patch.*--no-guard", message(shown.value))
    assert not (tmp_path / "out.ko").exists()
    res = convert_file(src, t, {}, output=tmp_path / "out.ko", guard=False)
    assert res.written


def test_validator_holds_the_guard_to_its_rules(tmp_path: Path) -> None:
    src = write(tmp_path, with_versions(simple_module()))
    convert_file(src, crc_target(), {}, output=tmp_path / "out.ko")
    before = ElfFile.from_bytes(src.read_bytes())
    after = ElfFile.from_bytes((tmp_path / "out.ko").read_bytes())
    plan = GuardPlan(GuardAction.ADD, CRC, ("basic",))
    assert symbol_changes(before, after, 511, (GUARD_SYMBOL,)) == []
    assert guard_problems(before, after, plan) == []
    # without the guard being expected, the added symbol is a change
    assert "symbol count changed" in symbol_changes(before, after, 511)[0]
    # a wrong CRC is caught
    wrong = GuardPlan(GuardAction.ADD, CRC ^ 1, ("basic",))
    assert any("not the input's plus" in p for p in guard_problems(before, after, wrong))
    # a grown section may not resize a symbol that does not span it
    st = after.symtab
    st.array["st_size"][st.names().index("____versions")] = 64
    assert any("____versions" in p for p in symbol_changes(before, after, 511, (GUARD_SYMBOL,)))


def test_cli_no_guard_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import klpsym.cli.convert as cli_convert

    src = write(tmp_path, with_versions(simple_module()))
    monkeypatch.setattr(cli_convert, "target_from_args", lambda args: crc_target())
    assert main(["convert", str(src), "-o", str(tmp_path / "a.ko"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["guard"] == {"action": "add", "symbol": GUARD_SYMBOL, "crc": f"0x{CRC:08x}",
                            "version_tables": ["basic"]}
    assert main(["convert", str(src), "-o", str(tmp_path / "b.ko"), "--no-guard"]) == 0
    out = capsys.readouterr().out
    assert "load-time guard: undefined" not in out
    assert "note: no load-time guard (--no-guard)" in out
    assert main(["convert", str(src), "--dry-run"]) == 0
    assert "load-time guard: undefined klp_enable_patch (CRC 0x06689996" in \
        capsys.readouterr().out
