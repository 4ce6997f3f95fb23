"""IBT thunks (klp.ibt): on a CONFIG_X86_KERNEL_IBT=y target every relocation
that takes an unexported function's address goes through an endbr64 thunk;
direct branches and data stay as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_convert import KALLSYMS, target

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
    STT_SECTION,
    ElfBuilder,
    simple_module,
)
from klpsym.elf import ElfFile
from klpsym.elf.constants import SHN
from klpsym.errors import ConvertError
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.klp.convert import convert_file
from klpsym.klp.ibt import (
    ENDBR64,
    THUNK_PREFIX,
    THUNK_SECTION,
    branch_mask,
    thunk_bytes,
)
from klpsym.klp.validate import ibt_problems

IBT = "CONFIG_LIVEPATCH=y\nCONFIG_KALLSYMS_ALL=y\nCONFIG_X86_KERNEL_IBT=y\n"
NO_IBT = "CONFIG_LIVEPATCH=y\nCONFIG_KALLSYMS_ALL=y\n"
FN = "kallsyms_lookup_name"
THUNK = THUNK_PREFIX + FN

# .text of the synthetic module: each instruction's rel32 is left zero, as
# the compiler leaves it for the relocation.
CODE = (
    b"\xe8" + bytes(4)                  # 0: call FN          (PLT32 at 1: direct)
    + b"\xe9" + bytes(4)                # 5: jmp FN           (PLT32 at 6: direct)
    + b"\x0f\x84" + bytes(4)            # 10: je FN           (PC32 at 12: direct)
    + b"\x48\x8d\x05" + bytes(4)        # 16: lea FN(%rip)    (PC32 at 19: address)
    + b"\x48\xc7\xc0" + bytes(4)        # 23: mov $FN,%rax    (32S at 26: address)
    + b"\xc3"                           # 30: ret
)
CALLS = [(1, R_X86_64_PLT32), (6, R_X86_64_PLT32), (12, R_X86_64_PC32)]
R_X86_64_32S = 11


def ibt_module(*, addresses: bool = True) -> ElfBuilder:
    """Calls FN three ways; with ``addresses``, also takes its address in
    code (lea, mov $imm32), .data, .rodata and __initdata; points at the
    data symbol dmesg_restrict from .data."""
    b = ElfBuilder()
    text = b.section(".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, CODE.ljust(32, b"\xcc"), 16)
    data = b.section(".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, bytes(16), 8)
    rodata = b.section(".rodata", SHT_PROGBITS, SHF_ALLOC, bytes(8), 8)
    initdata = b.section(".init.data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, bytes(8), 8)
    b.module()
    b.this_module("synthetic")
    b.symbol(".text", text, STB_LOCAL, STT_SECTION)
    b.symbol("init_module", text, STB_GLOBAL, STT_FUNC, 0, 31)
    fn = b.symbol(FN)
    var = b.symbol("dmesg_restrict")
    b.symbol("_printk")
    for offset, rtype in CALLS:
        b.rela(text, offset, fn, rtype, -4)
    b.rela(data, 8, var, R_X86_64_64, 0)
    if addresses:
        b.rela(text, 19, fn, R_X86_64_PC32, -4)
        b.rela(text, 26, fn, R_X86_64_32S, 0)
        b.rela(data, 0, fn, R_X86_64_64, 0)
        b.rela(rodata, 0, fn, R_X86_64_64, 0)
        b.rela(initdata, 0, fn, R_X86_64_64, 0)
    return b


def convert(tmp_path: Path, b: ElfBuilder, config: str, name: str = "out.ko",
            **kw: object) -> tuple[ElfFile, object]:
    src = tmp_path / "m.ko"
    src.write_bytes(b.build())
    res = convert_file(src, target(config=config), {}, output=tmp_path / name,
                       **kw)  # type: ignore[arg-type]
    return ElfFile.from_bytes((tmp_path / name).read_bytes()), res


def relocs(elf: ElfFile, secname: str) -> list[tuple[int, int, str, int]]:
    sec = elf.section_by_name(secname)
    assert sec is not None, secname
    rela = elf.rela(sec)
    syms = elf.layout.r_sym(rela["r_info"])
    types = elf.layout.r_type(rela["r_info"])
    return sorted((int(o), int(t), elf.symtab.name(int(s)), int(a)) for o, t, s, a in
                  zip(rela["r_offset"], types, syms, rela["r_addend"], strict=True))


def test_branch_mask_tells_calls_from_address_loads() -> None:
    src = ibt_module().build()
    elf = ElfFile.from_bytes(src)
    text = elf.section_by_name(".text")
    rela = elf.rela(elf.section_by_name(".rela.text"))  # type: ignore[arg-type]
    mask = branch_mask(elf, text, rela)
    got = {int(o): bool(m) for o, m in zip(rela["r_offset"], mask, strict=True)}
    assert got == {1: True, 6: True, 12: True, 19: False, 26: False}
    # a data section's PC32 is never a branch, whatever byte precedes it
    data = elf.section_by_name(".data")
    assert not branch_mask(elf, data, rela).any()


def test_thunks_on_an_ibt_target(tmp_path: Path) -> None:
    out, res = convert(tmp_path, ibt_module(), IBT)
    names = out.symtab.names()
    thunk = names.index(THUNK)
    text = out.section_by_name(THUNK_SECTION)
    assert text is not None and text.flags == SHF_ALLOC | SHF_EXECINSTR
    assert out.symtab.section_ref[thunk] == text.uid
    assert bytes(text.content()) == thunk_bytes()
    assert bytes(text.content())[:4] == ENDBR64 == b"\xf3\x0f\x1e\xfa"
    klp = ".klp.sym.vmlinux.kallsyms_lookup_name,0"
    # the thunk's jmp is the only new klp relocation
    assert relocs(out, f".klp.rela.vmlinux.{THUNK_SECTION}") == [(5, R_X86_64_PLT32, klp, -4)]
    # direct branches stay direct (moved to klp), address-takers use the thunk
    assert relocs(out, ".klp.rela.vmlinux..text") == [(o, t, klp, -4) for o, t in CALLS]
    assert relocs(out, ".rela.text") == [(19, R_X86_64_PC32, THUNK, -4),
                                         (26, R_X86_64_32S, THUNK, 0)]
    for sec in (".rela.rodata", ".rela.init.data"):
        assert relocs(out, sec) == [(0, R_X86_64_64, THUNK, 0)]
    assert relocs(out, ".rela.data") == [(0, R_X86_64_64, THUNK, 0)]
    # data symbols are untouched: dmesg_restrict is converted, not thunked
    assert relocs(out, ".klp.rela.vmlinux..data") == [
        (8, R_X86_64_64, ".klp.sym.vmlinux.dmesg_restrict,0", 0)]
    assert not any(n == THUNK_PREFIX + "dmesg_restrict" for n in names)
    assert ibt_problems(out, [FN], 511) == []
    ibt = res.ibt  # type: ignore[attr-defined]
    assert [t.name for t in ibt.thunks] == [FN]
    where = {(u.section, u.offset) for u in ibt.thunks[0].uses}
    assert where == {(".text", 19), (".text", 26), (".data", 0), (".rodata", 0),
                     (".init.data", 0)}
    as_json = ibt.to_json()
    assert as_json["section"] == THUNK_SECTION and as_json["target_ibt"] is True
    [one] = as_json["thunks"]
    assert one["function"] == FN and one["symbol"] == THUNK and one["offset"] == 0
    assert {(r["section"], r["offset"]) for r in one["relocations"]} == where
    note = next(n for n in res.plan.notes if "IBT thunk" in n)  # type: ignore[attr-defined]
    assert THUNK in note and ".rodata+0x0" in note and ".text+0x13" in note


def test_converting_again_changes_nothing(tmp_path: Path) -> None:
    convert(tmp_path, ibt_module(), IBT)
    first = (tmp_path / "out.ko").read_bytes()
    again = convert_file(tmp_path / "out.ko", target(config=IBT), {}, output=tmp_path / "2.ko")
    assert not again.ibt.thunks
    assert (tmp_path / "2.ko").read_bytes() == first


@pytest.mark.parametrize("config", [NO_IBT, IBT])
def test_no_address_taken_is_byte_identical(tmp_path: Path, config: str) -> None:
    """Only direct calls: the IBT target's output is the non-IBT one."""
    convert(tmp_path, ibt_module(addresses=False), NO_IBT, "plain.ko")
    convert(tmp_path, ibt_module(addresses=False), config, "ibt.ko")
    assert (tmp_path / "plain.ko").read_bytes() == (tmp_path / "ibt.ko").read_bytes()


def test_no_ibt_target_no_thunks(tmp_path: Path) -> None:
    out, res = convert(tmp_path, ibt_module(), NO_IBT)
    assert out.section_by_name(THUNK_SECTION) is None
    assert not any("IBT" in n for n in res.plan.notes)  # type: ignore[attr-defined]


def test_no_ibt_thunks_warns_and_leaves_addresses(tmp_path: Path) -> None:
    convert(tmp_path, ibt_module(), NO_IBT, "plain.ko")
    out, res = convert(tmp_path, ibt_module(), IBT, "off.ko", ibt_thunks=False)
    assert (tmp_path / "off.ko").read_bytes() == (tmp_path / "plain.ko").read_bytes()
    warning = [n for n in res.plan.notes if "--no-ibt-thunks" in n]  # type: ignore[attr-defined]
    assert len(warning) == 1 and FN in warning[0] and "Missing ENDBR" in warning[0]
    # the validator, asked about FN, names each address-taking relocation
    problems = ibt_problems(out, [FN], 511)
    assert len(problems) == 5
    assert all(f'"Missing ENDBR: {FN}"' in p for p in problems)
    assert any(p.startswith(".rodata+0x0 (R_X86_64_64)") for p in problems)


def test_validator_catches_a_broken_thunk(tmp_path: Path) -> None:
    out, _ = convert(tmp_path, ibt_module(), IBT)
    text = out.section_by_name(THUNK_SECTION)
    assert text is not None
    text.data = b"\x90" * 4 + bytes(text.content())[4:]
    text.table = None
    assert any("does not start with endbr64" in p for p in ibt_problems(out, [FN], 511))


def test_unknown_kind_address_only_is_refused(tmp_path: Path) -> None:
    """No addresses and untrusted letters: a symbol the module only takes the
    address of cannot be told function or data; one it calls is a function."""
    b = simple_module(("kallsyms_lookup_name",), ("_printk",), release="7.0.0-1-amd64")
    src = tmp_path / "m.ko"
    src.write_bytes(b.build())
    t = target(config=IBT, release="7.0.0-1-amd64")
    t._kallsyms = KallsymsTable.from_rows([(0, ty, n) for _, ty, n in KALLSYMS],
                                          "test kallsyms")
    t.config = KernelConfig.from_text(IBT)
    with pytest.raises(ConvertError, match="does not say whether it is a function"):
        convert_file(src, t, {}, output=tmp_path / "o.ko", dry_run=True)
    # the same module calling it directly as well: a function, thunked
    b.relocs[".text"][0] = type(b.relocs[".text"][0])(1, b.relocs[".text"][0].sym,
                                                       R_X86_64_PLT32, -4)
    b.targets[".text"].data = b"\xe8" + bytes(15)
    b.rela(b.targets[".text"], 8, b.relocs[".text"][0].sym, R_X86_64_64, 0)
    src.write_bytes(b.build())
    res = convert_file(src, t, {}, output=tmp_path / "o.ko")
    assert [th.name for th in res.ibt.thunks] == [FN]


def test_thunk_symbol_is_defined_func(tmp_path: Path) -> None:
    out, _ = convert(tmp_path, ibt_module(), IBT)
    st = out.symtab
    i = st.names().index(THUNK)
    assert int(st.types[i]) == STT_FUNC and int(st.binds[i]) == STB_GLOBAL
    assert int(st.section_ref[i]) > 0 and int(st.array["st_shndx"][i]) != SHN.LIVEPATCH
    assert np.count_nonzero(np.array(st.names()) == THUNK) == 1


def test_cli_dry_run_json_and_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``klpsym convert --dry-run --json`` names the thunk and the relocations
    through it; ``--no-ibt-thunks`` says the warning instead."""
    import json

    from elfbuilder import SYNTH_RELEASE
    from klpsym.cli.main import main

    kdir = tmp_path / "kdir"
    (kdir / "include/config").mkdir(parents=True)
    (kdir / "include/config/kernel.release").write_text(SYNTH_RELEASE + "\n")
    (kdir / ".config").write_text(IBT)
    (kdir / "Module.symvers").write_text(
        "0x1\t_printk\tvmlinux\tEXPORT_SYMBOL\t\n0x2\tklp_enable_patch\tvmlinux\tEXPORT_SYMBOL_GPL\t\n")
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("".join(f"{a:016x} {t} {n}\n" for a, t, n in KALLSYMS))
    src = tmp_path / "m.ko"
    src.write_bytes(ibt_module().build())
    common = [str(src), "--dry-run", "--kernel-dir", str(kdir), "--kallsyms", str(kallsyms)]
    assert main(["convert", *common, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    notes = doc["notes"]
    thunk = [n for n in notes if n.startswith(f"IBT thunk {THUNK} ")]
    assert len(thunk) == 1 and ".data+0x0" in thunk[0] and ".init.data+0x0" in thunk[0], notes
    # the same as data: which relocations go through which thunk
    ibt = doc["ibt"]
    assert ibt["target_ibt"] is True and ibt["enabled"] is True
    (entry,) = ibt["thunks"]
    assert entry["function"] == FN and entry["symbol"] == THUNK and entry["offset"] == 0
    where = {(r["section"], r["offset"]) for r in entry["relocations"]}
    assert {(".data", 0), (".init.data", 0)} <= where, entry
    from test_json import documented, keys_of

    assert not keys_of(ibt) - documented("convert"), sorted(keys_of(ibt) - documented("convert"))
    assert main(["convert", *common, "--no-ibt-thunks"]) == 0
    out = capsys.readouterr().out
    assert f"WARNING: no IBT thunks (--no-ibt-thunks): the module takes the address of {FN}" \
        in out, out


def test_check_reports_an_unthunked_function_on_an_ibt_target(tmp_path: Path) -> None:
    """``klpsym check`` of a module converted with the thunks off (or by
    another tool): it loads, with a warning and the kernel's Missing ENDBR
    line, on an IBT target only; the thunked module has no such warning."""
    from klpsym.load.check import Stage, Verdict, check_modules
    from klpsym.load.facts import module_facts

    convert(tmp_path, ibt_module(), IBT, "off.ko", ibt_thunks=False)
    convert(tmp_path, ibt_module(), IBT, "on.ko")
    off = module_facts(tmp_path / "off.ko")
    assert sorted(w for n, w in off.klp_addresses if n == FN) == [
        ".data+0x0 (R_X86_64_64)", ".init.data+0x0 (R_X86_64_64)", ".rodata+0x0 (R_X86_64_64)",
        ".text+0x13 (R_X86_64_PC32)", ".text+0x1a (R_X86_64_32S)"]
    # dmesg_restrict's address is taken too, but it is data
    assert any(n == "dmesg_restrict" for n, _ in off.klp_addresses)
    (v,) = check_modules([off], target(config=IBT))
    assert v.verdict == Verdict.LOADS, [p.message for p in v.problems]
    ibt = [p for p in v.problems if p.stage == Stage.KLP and not p.fatal]
    assert len(ibt) == 1 and ibt[0].symbol == FN, v.problems
    assert ibt[0].kernel == (f"Missing ENDBR: {FN}+0x0",)
    assert "takes the address of kallsyms_lookup_name directly" in ibt[0].message
    (v,) = check_modules([off], target(config=NO_IBT))
    assert not [p for p in v.problems if p.stage == Stage.KLP], v.problems
    (v,) = check_modules([module_facts(tmp_path / "on.ko")], target(config=IBT))
    assert not [p for p in v.problems if p.stage == Stage.KLP], v.problems
