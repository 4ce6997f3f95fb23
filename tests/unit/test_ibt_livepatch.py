"""IBT thunks for a livepatch's target-module functions (klp.ibt): a module
seals, at its load, the ENDBR64 of every function it never takes the address
of (objtool --ibt --module, module_finalize()), so a livepatch that takes
such a function's address goes through a thunk whose jmp is a klp
relocation of that module's object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_convert import target

from elfbuilder import (
    R_X86_64_64,
    R_X86_64_PC32,
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
from klpsym.elf import ElfFile
from klpsym.klp.convert import convert_file
from klpsym.klp.ibt import THUNK_PREFIX, THUNK_SECTION, thunk_bytes
from klpsym.klp.validate import ibt_problems, loader_problems
from klpsym.load.check import Stage, check_modules
from klpsym.load.facts import module_facts
from klpsym.module.kallsyms import TargetModules, endbr_sealed, module_kallsyms
from klpsym.module.ko import read_module

IBT = "CONFIG_LIVEPATCH=y\nCONFIG_KALLSYMS_ALL=y\nCONFIG_X86_KERNEL_IBT=y\n"
NO_IBT = "CONFIG_LIVEPATCH=y\nCONFIG_KALLSYMS_ALL=y\n"
VMLINUX_FN = "kallsyms_lookup_name"
KLP_SEALED = ".klp.sym.lp_target.sealed_fn,0"

# The livepatch's .text, per function it uses (32 bytes each): a direct
# call (PLT32 at +1), nop, then lea FN(%rip) (PC32 at +9: an address).
CALL_AT, LEA_AT = 1, 9


def target_module(tmp_path: Path, *, seal: bool = True) -> Path:
    """lp_target.ko: ``sealed_fn`` (its ENDBR64 in .ibt_endbr_seal, as
    objtool lists a function whose address the module never takes),
    ``open_fn`` (address taken in the module: not listed) and ``lp_data``."""
    b = ElfBuilder()
    text = b.text(64)
    data = b.section(".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, bytes(16), 8)
    b.module(name="lp_target")
    sect = b.symbol(".text", text, STB_LOCAL, STT_SECTION)
    b.symbol("sealed_fn", text, STB_LOCAL, STT_FUNC, 16, 16)
    b.symbol("open_fn", text, STB_GLOBAL, STT_FUNC, 32, 16)
    b.symbol("lp_data", data, STB_LOCAL, STT_OBJECT, 0, 8)
    b.symbol("init_module", text, STB_GLOBAL, STT_FUNC, 0, 16)
    if seal:
        # tools/objtool/check.c create_ibt_endbr_seal_sections(): an s32 a
        # function, R_X86_64_PC32 against the section symbol + its offset
        seal_sec = b.section(".ibt_endbr_seal", SHT_PROGBITS, SHF_ALLOC, bytes(4), 1)
        b.rela(seal_sec, 0, sect, R_X86_64_PC32, 16)
    p = tmp_path / "lp_target.ko"
    p.write_bytes(b.build())
    return p


def livepatch(names: tuple[str, ...], *, address: bool = True) -> ElfBuilder:
    """A livepatch that calls each of ``names`` directly and, with
    ``address``, takes its address in .text (lea) and .data (a pointer)."""
    b = ElfBuilder()
    code = (b"\xe8" + bytes(4) + b"\x90\x48\x8d\x05" + bytes(4)).ljust(32, b"\xcc")
    text = b.section(".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR,
                     code * len(names) + b"\xe8" + bytes(4) + bytes(11), 16)
    data = b.section(".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, bytes(8 * len(names)), 8)
    b.modinfo(license="GPL", name="lp", livepatch="Y",
              vermagic=f"{SYNTH_RELEASE} SMP mod_unload ")
    b.this_module("lp")
    b.symbol(".text", text, STB_LOCAL, STT_SECTION)
    b.symbol("init_module", text, STB_GLOBAL, STT_FUNC, 32 * len(names), 16)
    b.rela(text, 32 * len(names) + 1, b.symbol("klp_enable_patch"), R_X86_64_PLT32, -4)
    for i, name in enumerate(names):
        s = b.symbol(name)
        b.rela(text, 32 * i + CALL_AT, s, R_X86_64_PLT32, -4)
        if address:
            b.rela(text, 32 * i + LEA_AT, s, R_X86_64_PC32, -4)
            b.rela(data, 8 * i, s, R_X86_64_64, 0)
    return b


def convert(tmp_path: Path, names: tuple[str, ...], config: str = IBT, out: str = "out.ko",
            **kw: object) -> tuple[ElfFile, object]:
    tm = target_module(tmp_path)
    src = tmp_path / "lp.ko"
    src.write_bytes(livepatch(names).build())
    res = convert_file(src, target(config=config), {}, output=tmp_path / out,
                       targets=TargetModules([str(tm)], SYNTH_RELEASE, None),
                       **kw)  # type: ignore[arg-type]
    return ElfFile.from_path(tmp_path / out), res


def relocs(elf: ElfFile, secname: str) -> list[tuple[int, int, str, int]]:
    sec = elf.section_by_name(secname)
    assert sec is not None, secname
    rela = elf.rela(sec)
    syms = elf.layout.r_sym(rela["r_info"])
    types = elf.layout.r_type(rela["r_info"])
    return sorted((int(o), int(t), elf.symtab.name(int(s)), int(a)) for o, t, s, a in
                  zip(rela["r_offset"], types, syms, rela["r_addend"], strict=True))


def test_endbr_sealed_reads_the_modules_seal_list(tmp_path: Path) -> None:
    module = read_module(target_module(tmp_path))
    names = module.elf.symtab.names()
    sealed = endbr_sealed(module)
    assert sealed is not None
    assert [names[i] for i in sealed.nonzero()[0].tolist()] == ["sealed_fn"]
    table = module_kallsyms(module)
    assert table.sealed is not None
    assert {n for n, s in zip(table.names.tolist(), table.sealed.tolist(), strict=True)
            if s} == {"sealed_fn"}
    # no .ibt_endbr_seal (a kernel without IBT): unknown, not "none sealed"
    assert endbr_sealed(read_module(target_module(tmp_path, seal=False))) is None


def test_target_module_function_gets_a_thunk_applied_with_its_object(tmp_path: Path) -> None:
    out, res = convert(tmp_path, ("sealed_fn", VMLINUX_FN))
    thunk = THUNK_PREFIX + "sealed_fn"
    vthunk = THUNK_PREFIX + VMLINUX_FN
    text = out.section_by_name(THUNK_SECTION)
    assert text is not None and bytes(text.content()) == thunk_bytes() * 2
    # thunks in name order: kallsyms_lookup_name at 0, sealed_fn at 16;
    # each jmp in its own object's klp section
    assert relocs(out, f".klp.rela.vmlinux.{THUNK_SECTION}") == [
        (5, R_X86_64_PLT32, f".klp.sym.vmlinux.{VMLINUX_FN},0", -4)]
    assert relocs(out, f".klp.rela.lp_target.{THUNK_SECTION}") == [
        (21, R_X86_64_PLT32, KLP_SEALED, -4)]
    # the direct call stays a klp relocation of the module object; the
    # address-takers use the thunk
    assert relocs(out, ".klp.rela.lp_target..text") == [(CALL_AT, R_X86_64_PLT32, KLP_SEALED, -4)]
    assert (LEA_AT, R_X86_64_PC32, thunk, -4) in relocs(out, ".rela.text")
    assert (32 + LEA_AT, R_X86_64_PC32, vthunk, -4) in relocs(out, ".rela.text")
    assert relocs(out, ".rela.data") == [(0, R_X86_64_64, thunk, 0), (8, R_X86_64_64, vthunk, 0)]
    assert ibt_problems(out, ["lp_target:sealed_fn", VMLINUX_FN], 511) == []
    assert loader_problems(out, 511, livepatch=True) == []
    thunks = {t.label: t for t in res.ibt.thunks}  # type: ignore[attr-defined]
    assert set(thunks) == {"lp_target:sealed_fn", VMLINUX_FN}
    assert thunks["lp_target:sealed_fn"].sealed is True
    note = next(n for n in res.plan.notes  # type: ignore[attr-defined]
                if n.startswith(f"IBT thunk {thunk} "))
    assert "jmp lp_target:sealed_fn" in note
    assert "sealed: its ENDBR64 is removed when lp_target loads" in note
    # the note it replaces is gone
    assert not any("not through an IBT thunk" in n
                   for n in res.plan.notes)  # type: ignore[attr-defined]


def test_unsealed_module_function_and_data(tmp_path: Path) -> None:
    """open_fn (not in the seal list) is thunked too -- any function may be
    sealed in another build -- and says so; lp_data is data: no thunk."""
    out, res = convert(tmp_path, ("open_fn", "lp_data"))
    (t,) = res.ibt.thunks  # type: ignore[attr-defined]
    assert (t.objname, t.name, t.sealed) == ("lp_target", "open_fn", False)
    assert any("(not sealed in lp_target)" in n for n in res.plan.notes)  # type: ignore[attr-defined]
    assert relocs(out, ".klp.rela.lp_target..data") == [
        (8, R_X86_64_64, ".klp.sym.lp_target.lp_data,0", 0)]


def test_no_ibt_target_no_module_thunks(tmp_path: Path) -> None:
    out, res = convert(tmp_path, ("sealed_fn",), NO_IBT)
    assert out.section_by_name(THUNK_SECTION) is None
    assert not res.ibt.thunks  # type: ignore[attr-defined]


def test_no_ibt_thunks_warns_naming_the_module_function(tmp_path: Path) -> None:
    out, res = convert(tmp_path, ("sealed_fn",), out="off.ko", ibt_thunks=False)
    assert out.section_by_name(THUNK_SECTION) is None
    warning = [n for n in res.plan.notes if "--no-ibt-thunks" in n]  # type: ignore[attr-defined]
    assert len(warning) == 1, warning
    assert "takes the address of lp_target:sealed_fn (sealed: its ENDBR64 is removed when " \
           "lp_target loads)" in warning[0]
    # the validator, asked about the module function, names each relocation
    problems = ibt_problems(out, ["lp_target:sealed_fn"], 511)
    assert len(problems) == 2 and all("Missing ENDBR: sealed_fn" in p for p in problems)
    assert any(p.startswith(".data+0x0 (R_X86_64_64)") for p in problems)
    # the vmlinux function of the same name would be another function
    assert ibt_problems(out, ["sealed_fn"], 511) == []


def test_validator_catches_a_module_thunk_without_its_jmp(tmp_path: Path) -> None:
    out, _ = convert(tmp_path, ("sealed_fn",))
    klp = out.section_by_name(f".klp.rela.lp_target.{THUNK_SECTION}")
    assert klp is not None
    table = out.rela(klp).copy()
    table["r_offset"] += 1  # the jmp's rel32 no longer relocated
    klp.table = table
    problems = ibt_problems(out, ["lp_target:sealed_fn"], 511)
    assert any(f"IBT thunk {THUNK_PREFIX}sealed_fn's jmp has no klp relocation to sealed_fn" in p
               for p in problems), problems


def test_check_warns_of_a_module_function_taken_directly(tmp_path: Path) -> None:
    """``klpsym check --target-module``: a livepatch converted without thunks
    loads with a warning and the kernel's line; the thunked one has none;
    without the target module, a note says how to check."""
    convert(tmp_path, ("sealed_fn",), out="off.ko", ibt_thunks=False)
    convert(tmp_path, ("sealed_fn",), out="on.ko")
    tm = str(tmp_path / "lp_target.ko")
    off = module_facts(tmp_path / "off.ko")
    assert sorted(w for n, w in off.klp_addresses if n == "lp_target:sealed_fn") == [
        ".data+0x0 (R_X86_64_64)", ".text+0x9 (R_X86_64_PC32)"]
    (v,) = check_modules([off], target(config=IBT), [tm])
    ibt = [p for p in v.problems if p.stage == Stage.KLP]
    assert len(ibt) == 1 and not ibt[0].fatal and ibt[0].symbol == "lp_target:sealed_fn"
    assert ibt[0].kernel == ("Missing ENDBR: sealed_fn+0x0",)
    assert "takes the address of lp_target:sealed_fn directly (sealed: its ENDBR64 is removed " \
           "when lp_target loads)" in ibt[0].message
    (v,) = check_modules([off], target(config=NO_IBT), [tm])
    assert not [p for p in v.problems if p.stage == Stage.KLP]
    (v,) = check_modules([module_facts(tmp_path / "on.ko")], target(config=IBT), [tm])
    assert not [p for p in v.problems if p.stage == Stage.KLP], v.problems
    (v,) = check_modules([off], target(config=IBT))
    assert not [p for p in v.problems if p.stage == Stage.KLP]
    assert any("give --target-module lp_target to check" in n for n in v.notes), v.notes


def test_cli_json_lists_module_thunks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_convert import KALLSYMS
    from test_json import documented, keys_of

    from klpsym.cli.main import main

    tm = target_module(tmp_path)
    kdir = tmp_path / "kdir"
    (kdir / "include/config").mkdir(parents=True)
    (kdir / "include/config/kernel.release").write_text(SYNTH_RELEASE + "\n")
    (kdir / ".config").write_text(IBT)
    (kdir / "Module.symvers").write_text(
        "0x1\t_printk\tvmlinux\tEXPORT_SYMBOL\t\n0x2\tklp_enable_patch\tvmlinux\tEXPORT_SYMBOL_GPL\t\n")
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("".join(f"{a:016x} {t} {n}\n" for a, t, n in KALLSYMS))
    src = tmp_path / "lp.ko"
    src.write_bytes(livepatch(("sealed_fn",)).build())
    common = [str(src), "--dry-run", "--kernel-dir", str(kdir), "--kallsyms", str(kallsyms),
              "--target-module", str(tm)]
    assert main(["convert", *common, "--json"]) == 0
    ibt = json.loads(capsys.readouterr().out)["ibt"]
    (entry,) = ibt["thunks"]
    assert entry["function"] == "sealed_fn" and entry["object"] == "lp_target"
    assert entry["symbol"] == THUNK_PREFIX + "sealed_fn" and entry["sealed"] is True
    assert {(r["section"], r["offset"]) for r in entry["relocations"]} == {
        (".text", LEA_AT), (".data", 0)}
    assert not keys_of(ibt) - documented("convert"), sorted(keys_of(ibt) - documented("convert"))
    assert main(["convert", *common, "--no-ibt-thunks"]) == 0
    assert "the module takes the address of lp_target:sealed_fn" in capsys.readouterr().out
