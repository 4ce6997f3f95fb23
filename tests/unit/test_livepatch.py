"""Livepatch modules (MODULE_INFO(livepatch, "Y")) that reference unexported
symbols of vmlinux and of target modules: klp-convert's rules on synthetic
modules (object choice, POS in the target's symbol table, annotations,
--sympos OBJ:NAME=N, sections, refusals)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from test_convert import target

from elfbuilder import (
    R_X86_64_64,
    R_X86_64_PLT32,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHT_PROGBITS,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FUNC,
    STT_OBJECT,
    STT_SECTION,
    SYNTH_RELEASE,
    ElfBuilder,
)
from klpsym.cli.main import main, message
from klpsym.elf import ElfFile
from klpsym.elf.constants import SHN
from klpsym.errors import ConvertError, KlpsymError, ModuleError
from klpsym.klp.classify import Fate
from klpsym.klp.convert import convert_file
from klpsym.klp.plan import classify_symbols, make_plan, parse_sympos
from klpsym.klp.validate import loader_problems
from klpsym.load.check import Stage, check_modules
from klpsym.load.facts import module_facts
from klpsym.module.kallsyms import TargetModules, module_kallsyms
from klpsym.module.ko import read_module
from klpsym.view import inspect as views

STT_FILE = 4


def target_module(tmp_path: Path, *, init_homonym_first: bool = False,
                  init_homonym_last: bool = False, name: str = "lp_target",
                  release: str = SYNTH_RELEASE) -> Path:
    """lp_target.ko: two static ``homonym`` (a.c, b.c), ``lp_only``,
    ``lp_data`` (.data), ``kallsyms_lookup_name`` (also vmlinux's),
    ``renamed.12345`` (a GCC-renamed static)."""
    b = ElfBuilder()
    text = b.text(256)
    init = b.section(".init.text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, bytes(32), 16)
    data = b.section(".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, bytes(64), 8)
    b.module(release=release, name=name)
    b.symbol(".text", text, STB_LOCAL, STT_SECTION)
    if init_homonym_first:
        b.symbol("homonym", init, STB_LOCAL, STT_FUNC, 0, 16)
    b.symbol("a.c", SHN.ABS, STB_LOCAL, STT_FILE)
    b.symbol("homonym", text, STB_LOCAL, STT_FUNC, 0, 16)
    b.symbol("renamed.12345", text, STB_LOCAL, STT_FUNC, 16, 16)
    b.symbol("b.c", SHN.ABS, STB_LOCAL, STT_FILE)
    b.symbol("homonym", text, STB_LOCAL, STT_FUNC, 32, 16)
    b.symbol("lp_data", data, STB_LOCAL, STT_OBJECT, 0, 8)
    if init_homonym_last:
        b.symbol("homonym", init, STB_LOCAL, STT_FUNC, 0, 16)
    b.symbol("lp_only", text, STB_GLOBAL, STT_FUNC, 48, 16)
    b.symbol("kallsyms_lookup_name", text, STB_GLOBAL, STT_FUNC, 64, 16)
    b.symbol("init_module", init, STB_GLOBAL, STT_FUNC, 16, 16)
    p = tmp_path / f"{name}.ko"
    p.write_bytes(b.build())
    return p


def livepatch(names: tuple[str, ...], *, is_livepatch: bool = True,
              annotations: dict[str, list[tuple[str, int]]] | None = None,
              extra_sections: tuple[str, ...] = (), debug: bool = False) -> ElfBuilder:
    """A livepatch-shaped module: .text calls and .data points at each name;
    each of ``extra_sections`` holds an R_X86_64_64 to each name."""
    b = ElfBuilder()
    text = b.text(16 * max(len(names), 1))
    data = b.section(".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, bytes(8 * max(len(names), 1)),
                     8)
    entries = {"license": "GPL", "name": "lp", "vermagic": f"{SYNTH_RELEASE} SMP mod_unload "}
    if is_livepatch:
        entries["livepatch"] = "Y"
    b.modinfo(**entries)
    b.this_module("lp")
    b.symbol(".text", text, STB_LOCAL, STT_SECTION)
    b.symbol("init_module", text, STB_GLOBAL, STT_FUNC, 0, 16)
    # A livepatch registers itself: klp_enable_patch (so no guard is added).
    b.rela(text, 6, b.symbol("klp_enable_patch"), R_X86_64_PLT32, -4)
    syms = {}
    for i, name in enumerate(names):
        s = syms[name] = b.symbol(name)
        b.rela(text, 16 * i + 1, s, R_X86_64_PLT32, -4)
        b.rela(data, 8 * i, s, R_X86_64_64, 0)
    for secname in extra_sections:
        sec = b.section(secname, SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, bytes(8 * len(names)), 8)
        for i, name in enumerate(names):
            b.rela(sec, 8 * i, syms[name], R_X86_64_64, 0)
    if debug:
        sec = b.section(".debug_info", SHT_PROGBITS, 0, bytes(8 * len(names)), 1)
        for i, name in enumerate(names):
            b.rela(sec, 8 * i, syms[name], R_X86_64_64, 0)
    for obj, items in (annotations or {}).items():
        sec = b.section(f".klp.module_relocs.{obj}", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE,
                        b"".join(struct.pack("<QI", 0, pos) for _, pos in items), 1)
        b.symbol(f".klp.module_relocs.{obj}", sec, STB_LOCAL, STT_SECTION)
        b.symbol(f"{obj}_relocs", sec, STB_LOCAL, STT_OBJECT, 0, 12 * len(items))
        for i, (name, _) in enumerate(items):
            sym = syms.get(name) or b.symbol(name)
            b.rela(sec, 12 * i, sym, R_X86_64_64, 0)
        if debug:  # debug info locates the array through its section symbol
            dbg = b.section(".debug_loc_" + obj, SHT_PROGBITS, 0, bytes(8), 1)
            sect = next(s for s in b.symbols if s.name == f".klp.module_relocs.{obj}")
            b.rela(dbg, 0, sect, R_X86_64_64, 0)
    return b


def write(tmp_path: Path, b: ElfBuilder, name: str = "lp.ko") -> Path:
    p = tmp_path / name
    p.write_bytes(b.build())
    return p


def targets(*paths: Path) -> TargetModules:
    return TargetModules([str(p) for p in paths], SYNTH_RELEASE, None)


def klp_rela_syms(elf: ElfFile, secname: str) -> list[str]:
    sec = elf.section_by_name(secname)
    assert sec is not None, secname
    return [elf.symtab.name(i) for i in elf.layout.r_sym(elf.rela(sec)["r_info"]).tolist()]


def test_module_object_symbols_split_per_object(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("lp_only", "lp_data", "dmesg_restrict", "_printk")))
    res = convert_file(src, target(), {}, output=tmp_path / "out.ko", targets=targets(tm))
    plan = res.plan
    assert plan.livepatch and plan.objects == ["lp_target"]
    assert {s.name: (s.objname, s.pos) for s in plan.to_convert} == {
        "lp_only": ("lp_target", 0), "lp_data": ("lp_target", 0),
        "dmesg_restrict": ("vmlinux", 0)}
    assert {s.name: s.kind for s in plan.to_convert} == {
        "lp_only": "text", "lp_data": "data", "dmesg_restrict": "data"}
    out = ElfFile.from_path(tmp_path / "out.ko")
    assert klp_rela_syms(out, ".klp.rela.lp_target..text") == [
        ".klp.sym.lp_target.lp_only,0", ".klp.sym.lp_target.lp_data,0"]
    assert klp_rela_syms(out, ".klp.rela.vmlinux..text") == [
        ".klp.sym.vmlinux.dmesg_restrict,0"]
    assert klp_rela_syms(out, ".klp.rela.lp_target..data") == [
        ".klp.sym.lp_target.lp_only,0", ".klp.sym.lp_target.lp_data,0"]
    # The exported one stays an ordinary relocation.
    assert "_printk" in klp_rela_syms(out, ".rela.text")
    assert loader_problems(out, 511, livepatch=True) == []
    # A plain module may not carry module objects: the loader skips them.
    assert any("never applied for a plain module" in p for p in loader_problems(out, 511))


def test_plain_module_refuses_module_resident_symbols_with_the_reason(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("lp_only",), is_livepatch=False))
    with pytest.raises(ConvertError) as e:
        convert_file(src, target(), {}, output=tmp_path / "out.ko", targets=targets(tm))
    msg = message(e.value)
    assert "lp_only only in a target module" in msg and "not a livepatch module" in msg
    assert "klp_apply_object_relocs" in msg and "MODULE_INFO(livepatch" in msg
    assert not (tmp_path / "out.ko").exists()
    # Without the target module, it is missing, as before.
    with pytest.raises(ConvertError, match="lp_only is neither exported"):
        convert_file(src, target(), {}, output=tmp_path / "out.ko")


def test_plain_module_takes_vmlinux_for_a_name_both_have(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("kallsyms_lookup_name",), is_livepatch=False))
    res = convert_file(src, target(), {}, output=tmp_path / "out.ko", targets=targets(tm))
    assert [(s.objname, s.pos) for s in res.plan.to_convert] == [("vmlinux", 0)]


def test_homonyms_need_a_choice_listing_every_candidate(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("homonym",)))
    with pytest.raises(ConvertError) as e:
        convert_file(src, target(), {}, output=tmp_path / "out.ko", targets=targets(tm))
    msg = message(e.value)
    assert "homonym is ambiguous: 2 symbols of that name" in msg
    assert "POS 1: t in .text (a.c)" in msg and "POS 2: t in .text (b.c)" in msg
    assert "KLP_SYMPOS(homonym, N)" in msg and "--sympos lp_target:homonym=N" in msg
    assert "\n" not in msg


def test_name_in_vmlinux_and_module_is_ambiguous_across_objects(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("kallsyms_lookup_name",)))
    with pytest.raises(ConvertError) as e:
        convert_file(src, target(), {}, output=tmp_path / "out.ko", targets=targets(tm))
    msg = message(e.value)
    assert "it is in vmlinux, lp_target" in msg
    assert "vmlinux: 1: type T at 0xffffffff811723a0" in msg
    assert "lp_target: POS 1: T in .text" in msg
    assert "--sympos OBJ:kallsyms_lookup_name=POS" in msg
    # NAME=N keeps meaning vmlinux; OBJ:NAME=N the module.
    res = convert_file(src, target(), parse_sympos(["kallsyms_lookup_name=1"]), dry_run=True,
                       targets=targets(tm))
    assert [(s.objname, s.pos) for s in res.plan.to_convert] == [("vmlinux", 1)]
    res = convert_file(src, target(), parse_sympos(["lp_target:kallsyms_lookup_name=0"]),
                       dry_run=True, targets=targets(tm))
    assert [(s.objname, s.pos) for s in res.plan.to_convert] == [("lp_target", 0)]


def test_sympos_object_form_picks_a_homonym(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("homonym", "renamed.12345")))
    res = convert_file(src, target(), parse_sympos(["lp_target:homonym=2"]),
                       output=tmp_path / "out.ko", targets=targets(tm))
    names = ElfFile.from_path(tmp_path / "out.ko").symtab.names()
    assert ".klp.sym.lp_target.homonym,2" in names
    assert ".klp.sym.lp_target.renamed.12345,0" in names  # a GCC-renamed static: a name
    assert res.plan.objects == ["lp_target"]
    with pytest.raises(ConvertError, match="has 2 symbols named homonym; use 1..2"):
        convert_file(src, target(), parse_sympos(["lp_target:homonym=3"]), dry_run=True,
                     targets=targets(tm))
    with pytest.raises(ConvertError, match="lp_target has no symbol named|symbol table has no"):
        convert_file(write(tmp_path, livepatch(("dmesg_restrict",)), "v.ko"), target(),
                     parse_sympos(["lp_target:dmesg_restrict=1"]), dry_run=True,
                     targets=targets(tm))


def test_parse_sympos_object_form() -> None:
    assert parse_sympos(["a=1", "m:b=2", "vmlinux:c=3", "my-mod:d=0"]) == {
        "a": 1, "m:b": 2, "c": 3, "my_mod:d": 0}
    for bad in ("m:=1", ":a=1", "a:b:c=1", "m:a"):
        with pytest.raises(ConvertError, match="OBJ:NAME=N"):
            parse_sympos([bad])


def test_annotations_choose_and_are_removed(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    b = livepatch(("homonym", "lp_only"), annotations={"lp_target": [("homonym", 2)]},
                  debug=True)
    src = write(tmp_path, b)
    res = convert_file(src, target(), {}, output=tmp_path / "out.ko", targets=targets(tm))
    assert {(s.name, s.objname, s.pos, s.chosen_by) for s in res.plan.to_convert} == {
        ("homonym", "lp_target", 2, "annotation"), ("lp_only", "lp_target", 0, "")}
    out = ElfFile.from_path(tmp_path / "out.ko")
    secnames = [s.name for s in out.sections]
    assert not [n for n in secnames if "module_relocs" in n]
    names = out.symtab.names()
    assert "lp_target_relocs" not in names and ".klp.module_relocs.lp_target" not in names
    assert len(names) == len(ElfFile.from_path(src).symtab) - 2
    # Every relocation still names the symbol it named (renumbered).
    assert klp_rela_syms(out, ".klp.rela.lp_target..text") == [
        ".klp.sym.lp_target.homonym,2", ".klp.sym.lp_target.lp_only,0"]
    assert int(out.symtab.section.info) == 1 + sum(
        1 for n in ElfFile.from_path(src).symtab.names()[1:] if n in (".text",))
    assert loader_problems(out, 511, livepatch=True) == []


def test_annotation_validated_against_its_object(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("homonym",), annotations={"lp_target": [("homonym", 5)]}))
    with pytest.raises(ConvertError) as e:
        convert_file(src, target(), {}, dry_run=True, targets=targets(tm))
    assert "its KLP_SYMPOS annotation" in str(e.value) and "use 1..2" in str(e.value)
    # An object given neither by path nor found by name in a module tree.
    src = write(tmp_path, livepatch(("homonym",), annotations={"nosuch": [("homonym", 1)]}),
                "n.ko")
    with pytest.raises(ModuleError, match="no module tree|no module of that name"):
        convert_file(src, target(), {}, dry_run=True, targets=targets(tm))
    # Annotations in a plain module are refused.
    src = write(tmp_path, livepatch(("homonym",), is_livepatch=False,
                                    annotations={"lp_target": [("homonym", 1)]}), "p.ko")
    with pytest.raises(ConvertError, match="not a livepatch module"):
        convert_file(src, target(), {}, dry_run=True, targets=targets(tm))
    # An annotation and a --sympos that disagree.
    src = write(tmp_path, livepatch(("homonym",), annotations={"lp_target": [("homonym", 1)]}),
                "c.ko")
    with pytest.raises(ConvertError, match="already annotated as lp_target POS 1"):
        convert_file(src, target(), parse_sympos(["lp_target:homonym=2"]), dry_run=True,
                     targets=targets(tm))


def test_annotation_of_an_exported_symbol_is_refused(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("_printk",), annotations={"lp_target": [("_printk", 1)]}))
    with pytest.raises(ConvertError, match="_printk is exported.*drop the annotation"):
        convert_file(src, target(), {}, dry_run=True, targets=targets(tm))


def test_malformed_annotation_section(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    b = livepatch(("homonym",), annotations={"lp_target": [("homonym", 1)]})
    sec = next(s for s in b.sections if s.name == ".klp.module_relocs.lp_target")
    sec.data += b"\0"  # 13 bytes
    src = write(tmp_path, b)
    with pytest.raises(ConvertError, match="not a whole number of 12-byte"):
        convert_file(src, target(), {}, dry_run=True, targets=targets(tm))


def test_init_homonym_before_shifts_the_position(tmp_path: Path) -> None:
    src = write(tmp_path, livepatch(("homonym",)))
    before = target_module(tmp_path, init_homonym_first=True)
    with pytest.raises(ConvertError) as e:
        convert_file(src, target(), parse_sympos(["lp_target:homonym=2"]), dry_run=True,
                     targets=targets(before))
    assert "POS differs before and after the module's init" in str(e.value)
    with pytest.raises(ConvertError, match="in an init section"):
        convert_file(src, target(), parse_sympos(["lp_target:homonym=1"]), dry_run=True,
                     targets=targets(before))
    (tmp_path / "late").mkdir()
    after = target_module(tmp_path / "late", init_homonym_last=True)
    res = convert_file(src, target(), parse_sympos(["lp_target:homonym=2"]), dry_run=True,
                       targets=targets(after))
    assert [(s.objname, s.pos) for s in res.plan.to_convert] == [("lp_target", 2)]


def test_module_kallsyms_core_copy(tmp_path: Path) -> None:
    tm = read_module(target_module(tmp_path, init_homonym_last=True))
    full = module_kallsyms(tm)
    assert full.names.tolist().count("homonym") == 3
    core = dict(zip(full.names.tolist(), full.core.tolist(), strict=False))
    assert core["lp_data"] and core["lp_only"] and not core["a.c"]  # SHN_ABS: not core
    assert [bool(full.core[c.index]) for c in full.candidates("homonym")] == [True, True, False]
    text_only = module_kallsyms(tm, kallsyms_all=False)
    assert not text_only.core[text_only.rows_of("lp_data")[0]]
    assert full.types[full.rows_of("lp_data")[0]] == "d"
    assert full.types[full.rows_of("lp_only")[0]] == "T"


@pytest.mark.parametrize("section", ["__jump_table", ".init.data", ".data..percpu"])
def test_module_object_in_a_load_time_section_is_refused(tmp_path: Path, section: str) -> None:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("lp_only",), extra_sections=(section,)))
    with pytest.raises(ConvertError) as e:
        convert_file(src, target(), {}, dry_run=True, targets=targets(tm))
    msg = str(e.value)
    assert f"uses lp_target's lp_only in {section}" in msg and "\n" not in msg


def test_vmlinux_symbol_in_jump_table_is_converted(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("dmesg_restrict",), extra_sections=("__jump_table",)))
    convert_file(src, target(), {}, output=tmp_path / "out.ko", targets=targets(tm))
    out = ElfFile.from_path(tmp_path / "out.ko")
    assert klp_rela_syms(out, ".klp.rela.vmlinux.__jump_table") == [
        ".klp.sym.vmlinux.dmesg_restrict,0"]


def test_module_object_debug_relocations_stay_ordinary(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("lp_only",), debug=True))
    convert_file(src, target(), {}, output=tmp_path / "out.ko", targets=targets(tm))
    out = ElfFile.from_path(tmp_path / "out.ko")
    assert out.section_by_name(".klp.rela.lp_target..debug_info") is None
    assert klp_rela_syms(out, ".rela.debug_info") == [".klp.sym.lp_target.lp_only,0"]
    assert loader_problems(out, 511, livepatch=True) == []


def test_validator_refuses_vmlinux_symbol_in_module_section(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("lp_only", "dmesg_restrict")))
    convert_file(src, target(), {}, output=tmp_path / "out.ko", targets=targets(tm))
    out = ElfFile.from_path(tmp_path / "out.ko")
    klp = out.section_by_name(".klp.rela.lp_target..text")
    vml = out.section_by_name(".klp.rela.vmlinux..text")
    assert klp is not None and vml is not None
    klp.table = np.concatenate([out.rela(klp), out.rela(vml)])
    problems = loader_problems(out, 511, livepatch=True)
    assert any("dmesg_restrict" in p and "belongs to another object" in p for p in problems)


def test_classify_symbols_shares_the_fates(tmp_path: Path) -> None:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("lp_only", "no_such")))
    symbols = classify_symbols(read_module(src), target(), {}, targets(tm))
    assert {s.name: (s.fate, s.objname) for s in symbols} == {
        "lp_only": (Fate.CONVERT, "lp_target"), "no_such": (Fate.MISSING, "vmlinux"),
        "klp_enable_patch": (Fate.EXPORTED, "vmlinux")}
    with pytest.raises(ConvertError, match="nor in lp_target"):
        make_plan(read_module(src), target(), {}, targets(tm))


def test_target_module_of_another_kernel_is_refused(tmp_path: Path) -> None:
    tm = target_module(tmp_path, release="6.1.0-98-synth")
    src = write(tmp_path, livepatch(("lp_only",)))
    with pytest.raises(ModuleError, match="built for kernel 6.1.0-98-synth"):
        convert_file(src, target(), {}, dry_run=True, targets=targets(tm))


def test_given_target_module_is_read_even_when_nothing_needs_it(tmp_path: Path) -> None:
    """A --target-module that names no module is an error even for a module
    with nothing to convert, never silently ignored."""
    src = write(tmp_path, livepatch((), is_livepatch=False))
    with pytest.raises(KlpsymError) as e:
        convert_file(src, target(), {}, output=tmp_path / "out.ko",
                     targets=targets(tmp_path / "nosuch.ko"))
    assert "nosuch.ko" in message(e.value)
    assert not (tmp_path / "out.ko").exists()


def test_target_module_found_by_name_in_the_tree(tmp_path: Path) -> None:
    kdir = tmp_path / "lib" / "modules" / SYNTH_RELEASE / "build"
    kdir.mkdir(parents=True)
    where = tmp_path / "lib" / "modules" / SYNTH_RELEASE / "kernel" / "drivers"
    where.mkdir(parents=True)
    target_module(where, name="lp-target")  # the file lp-target.ko, found as lp_target
    found = TargetModules(["lp_target"], SYNTH_RELEASE, kdir).given
    assert [t.path.name for t in found] == ["lp-target.ko"]
    with pytest.raises(ModuleError, match="has no module of that name"):
        _ = TargetModules(["nosuch"], SYNTH_RELEASE, kdir).given


def test_elf_remove_symbols_renumbers_relocations(tmp_path: Path) -> None:
    b = ElfBuilder()
    text = b.text(32)
    b.module()
    gone = b.symbol("gone", text, STB_LOCAL, STT_FUNC)
    kept = b.symbol("kept", text, STB_LOCAL, STT_FUNC)
    ext = b.symbol("ext")
    b.rela(text, 1, kept)
    b.rela(text, 5, ext)
    elf = ElfFile.from_bytes(b.build())
    names = elf.symtab.names()
    drop = np.array([n == "gone" for n in names])
    elf.remove_symbols(drop)
    again = ElfFile.from_bytes(elf.to_bytes())
    assert "gone" not in again.symtab.names()
    assert klp_rela_syms(again, ".rela.text") == ["kept", "ext"]
    assert int(again.symtab.section.info) == 2  # null, kept
    drop = np.array([n == "kept" for n in again.symtab.names()])
    with pytest.raises(Exception, match="cannot remove a symbol"):
        again.remove_symbols(drop)
    assert gone.index == 1


def converted_livepatch(tmp_path: Path) -> Path:
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("lp_only", "dmesg_restrict")))
    convert_file(src, target(), {}, output=tmp_path / "out.ko", targets=targets(tm))
    return tmp_path / "out.ko"


def test_inspect_recognises_a_livepatch_and_its_objects(tmp_path: Path) -> None:
    out = converted_livepatch(tmp_path)
    k = views.klp(read_module(out))
    assert k["livepatch"] and k["objects"] == ["lp_target", "vmlinux"]
    assert k["problems"] == []  # a valid livepatch is never called invalid
    s = views.summary(read_module(out))
    assert s["livepatch"] and s["klp_objects"] == ["lp_target", "vmlinux"]
    # Not a livepatch: the same sections are ones the loader skips.
    plain = views.klp(read_module(write(tmp_path, livepatch((), is_livepatch=False), "p.ko")))
    assert not plain["livepatch"] and plain["objects"] == []
    # An unconverted livepatch with annotations shows them.
    ann = write(tmp_path, livepatch(("homonym",), annotations={"lp_target": [("homonym", 2)]}),
                "a.ko")
    assert views.klp(read_module(ann))["annotations"] == [
        {"object": "lp_target", "name": "homonym", "pos": 2}]


def test_inspect_prints_livepatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = converted_livepatch(tmp_path)
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "livepatch module (MODULE_INFO livepatch)" in text
    assert "objects: lp_target, vmlinux" in text
    assert main(["inspect", str(out), "--klp"]) == 0
    text = capsys.readouterr().out
    assert "a livepatch module" in text and "all follow the loader's rules" in text


def test_check_applies_module_objects_when_the_target_is_loaded(tmp_path: Path) -> None:
    out = converted_livepatch(tmp_path)
    facts = module_facts(out)
    assert facts.livepatch and facts.klp_static == []
    (v,) = check_modules([facts], target())
    assert not [p for p in v.problems if p.stage == Stage.KLP]
    assert any("needs target module lp_target" in n for n in v.notes)
    lp_only = next(s for s in v.symbols if s.name == "lp_only")
    assert lp_only.ok and lp_only.provider == "lp_target" and lp_only.fate == Fate.LIVEPATCH


def test_module_function_address_on_ibt_target_is_thunked(tmp_path: Path) -> None:
    """A target module seals too: the livepatch's &lp_only goes through an
    IBT thunk (tests/unit/test_ibt_livepatch.py has the details), where
    klpsym used to print a note."""
    tm = target_module(tmp_path)
    src = write(tmp_path, livepatch(("lp_only",)))  # .data holds &lp_only
    ibt = target(config="CONFIG_LIVEPATCH=y\nCONFIG_KALLSYMS_ALL=y\nCONFIG_X86_KERNEL_IBT=y\n")
    res = convert_file(src, ibt, {}, dry_run=True, targets=targets(tm))
    assert [(t.objname, t.name) for t in res.ibt.thunks] == [("lp_target", "lp_only")]
    assert not any("takes its address directly" in n for n in res.plan.notes)
    res = convert_file(src, target(), {}, dry_run=True, targets=targets(tm))
    assert not res.ibt.thunks
