"""klpsym convert on synthetic modules: classification, the kernel's rules,
refusals, and the loader-rule validation of the output."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from elfbuilder import EM_AARCH64, SYNTH_RELEASE, ElfBuilder, simple_module
from klpsym.cli.main import main, message
from klpsym.elf import ElfFile
from klpsym.elf.constants import SHF, SHN
from klpsym.errors import ConvertError, KlpsymError
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.kernel.symvers import Export, Symvers
from klpsym.kernel.target import TargetKernel
from klpsym.kernel.version import KernelVersion
from klpsym.klp.convert import convert_file
from klpsym.klp.validate import loader_problems, relocation_changes
from klpsym.module.signature import MODULE_SIG_STRING

RELEASE = SYNTH_RELEASE
KALLSYMS = [
    (0xFFFFFFFF81000000, "T", "_stext"),
    (0xFFFFFFFF81100000, "T", "_printk"),
    (0xFFFFFFFF81172300, "t", "show_state"),
    (0xFFFFFFFF811723A0, "T", "kallsyms_lookup_name"),
    (0xFFFFFFFF81200000, "t", "show_state"),
    (0xFFFFFFFF81300000, "t", "show_state"),
    (0xFFFFFFFF82000000, "D", "dmesg_restrict"),
    (0xFFFFFFFF82100000, "T", "x" * 200),
]


def target(*, release: str = RELEASE, config: str | None = "CONFIG_LIVEPATCH=y\n"
           "CONFIG_KALLSYMS_ALL=y\n", exports: dict[str, str] | None = None,
           namespaces: dict[str, str] | None = None) -> TargetKernel:
    exports = {"_printk": "vmlinux", "klp_enable_patch": "vmlinux"} if exports is None else exports
    namespaces = namespaces or {}
    symvers = Symvers({n: Export(n, None, m, "EXPORT_SYMBOL_GPL", namespaces.get(n, ""))
                       for n, m in exports.items()}, sources=["test Module.symvers"])
    return TargetKernel(
        version=KernelVersion.parse(release), symvers=symvers, kallsyms_source="test kallsyms",
        config=None if config is None else KernelConfig.from_text(config),
        _kallsyms=KallsymsTable.from_rows(KALLSYMS, "test kallsyms"),
    )


def write(tmp_path: Path, b: ElfBuilder, name: str = "m.ko") -> Path:
    p = tmp_path / name
    p.write_bytes(b.build())
    return p


def test_converts_unexported_and_leaves_exports(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module(("kallsyms_lookup_name",), ("_printk",)))
    before = src.read_bytes()
    res = convert_file(src, target(), {}, output=tmp_path / "out.ko")
    assert src.read_bytes() == before  # input untouched
    assert [s.name for s in res.plan.to_convert] == ["kallsyms_lookup_name"]
    assert res.moved == {".text": 1, ".data": 1}
    out = ElfFile.from_bytes((tmp_path / "out.ko").read_bytes())
    st = out.symtab
    names = st.names()
    klp = names.index(".klp.sym.vmlinux.kallsyms_lookup_name,0")
    assert int(st.array["st_shndx"][klp]) == SHN.LIVEPATCH
    assert "_printk" in names and st.section_ref[names.index("_printk")] == 0
    for target_name in (".text", ".data"):
        sec = out.section_by_name(f".klp.rela.vmlinux.{target_name}")
        assert sec is not None
        assert sec.flags == SHF.RELA_LIVEPATCH | SHF.INFO_LINK | SHF.ALLOC
        assert sec.link is st.section and sec.info_section is out.section_by_name(target_name)
        rela = out.rela(sec)
        assert out.layout.r_sym(rela["r_info"]).tolist() == [klp]
        ordinary = out.rela(out.section_by_name(f".rela{target_name}"))  # type: ignore[arg-type]
        assert klp not in out.layout.r_sym(ordinary["r_info"]).tolist()  # moved, not copied
        assert len(ordinary) == 1  # the _printk one stays
    assert loader_problems(out, 511) == []


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils readelf not installed")
def test_readelf_sees_klp_sections(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module())
    convert_file(src, target(), {}, output=tmp_path / "out.ko")
    out = subprocess.run(["readelf", "-SWs", str(tmp_path / "out.ko")], capture_output=True,
                         text=True, check=True)
    assert ".klp.rela.vmlinux..text RELA" in out.stdout
    assert " AIo " in out.stdout  # SHF_ALLOC, SHF_INFO_LINK, OS-specific (RELA_LIVEPATCH)
    assert "OS [0xff20] .klp.sym.vmlinux.kallsyms_lookup_name,0" in out.stdout
    assert not out.stderr


def test_missing_symbol_is_an_error_naming_it(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module(("no_such_function", "kallsyms_lookup_name")))
    with pytest.raises(ConvertError, match="no_such_function is neither exported"):
        convert_file(src, target(), {}, output=tmp_path / "out.ko")
    assert not (tmp_path / "out.ko").exists()


def test_ambiguous_name_lists_candidates_and_the_flag(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module(("show_state",)))
    with pytest.raises(ConvertError) as e:
        convert_file(src, target(), {}, output=tmp_path / "out.ko")
    msg = message(e.value)  # as the command line shows it
    assert "3 symbols of that name" in msg and "--sympos show_state=N" in msg
    assert "1: type t at 0xffffffff81172300" in msg and "3: type t at 0xffffffff81300000" in msg
    assert "\n" not in msg


def test_sympos_picks_the_position(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module(("show_state",)))
    res = convert_file(src, target(), {"show_state": 2}, output=tmp_path / "out.ko")
    assert res.plan.to_convert[0].candidate.address == 0xFFFFFFFF81200000  # type: ignore[union-attr]
    names = ElfFile.from_bytes((tmp_path / "out.ko").read_bytes()).symtab.names()
    assert ".klp.sym.vmlinux.show_state,2" in names


@pytest.mark.parametrize("pos", [0, 4])
def test_sympos_out_of_range(tmp_path: Path, pos: int) -> None:
    src = write(tmp_path, simple_module(("show_state",)))
    with pytest.raises(ConvertError, match="use 1..3"):
        convert_file(src, target(), {"show_state": pos}, output=tmp_path / "out.ko")


def test_sympos_for_a_symbol_the_module_does_not_use(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module())
    with pytest.raises(ConvertError, match="does not use a symbol named show_state"):
        convert_file(src, target(), {"show_state": 1}, output=tmp_path / "out.ko")


@pytest.mark.parametrize("license", ["Proprietary", "BSD", "MIT"])
def test_non_gpl_license_is_refused(tmp_path: Path, license: str) -> None:
    src = write(tmp_path, simple_module(license=license))
    with pytest.raises(ConvertError, match="not GPL-compatible"):
        convert_file(src, target(), {}, output=tmp_path / "out.ko")


@pytest.mark.parametrize("license", ["GPL", "GPL v2", "Dual BSD/GPL", "Dual MIT/GPL"])
def test_gpl_compatible_licenses(tmp_path: Path, license: str) -> None:
    src = write(tmp_path, simple_module(license=license))
    assert convert_file(src, target(), {}, output=tmp_path / "out.ko").written


def test_kernel_older_than_5_8_is_refused(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module(release="5.7.0-1-amd64"))
    with pytest.raises(ConvertError, match="older than 5.8"):
        convert_file(src, target(release="5.7.0-1-amd64"), {}, output=tmp_path / "out.ko")


def test_kernel_without_livepatch_is_refused(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module())
    with pytest.raises(ConvertError, match="without CONFIG_LIVEPATCH"):
        convert_file(src, target(config="CONFIG_KALLSYMS_ALL=y\n"), {},
                     output=tmp_path / "out.ko")


def test_unknown_config_is_said(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module())
    res = convert_file(src, target(config=None), {}, output=tmp_path / "out.ko")
    assert any("CONFIG_LIVEPATCH" in n for n in res.plan.notes)


def test_data_symbol_needs_kallsyms_all(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module(("dmesg_restrict",)))
    with pytest.raises(ConvertError, match="lacks CONFIG_KALLSYMS_ALL"):
        convert_file(src, target(config="CONFIG_LIVEPATCH=y\n"), {}, output=tmp_path / "o.ko")
    res = convert_file(src, target(), {}, output=tmp_path / "o.ko")
    assert res.plan.to_convert[0].kind == "data"


def test_name_width_follows_the_target_version(tmp_path: Path) -> None:
    long = "x" * 200
    ok = write(tmp_path, simple_module((long,)), "ok.ko")
    assert convert_file(ok, target(), {}, output=tmp_path / "o.ko").written
    old = write(tmp_path, simple_module((long,), release="6.0.0-1-amd64"), "old.ko")
    with pytest.raises(ConvertError, match="parses at most 127"):
        convert_file(old, target(release="6.0.0-1-amd64"), {}, output=tmp_path / "o2.ko")


def test_release_mismatch_is_refused(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module(release="6.1.0-55-amd64"))
    with pytest.raises(ConvertError, match="built for kernel 6.1.0-55-amd64"):
        convert_file(src, target(), {}, output=tmp_path / "out.ko")


def test_module_export_and_namespaced_module_only_export(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module(("kvm_thing", "kallsyms_lookup_name"), ()))
    t = target(exports={"kvm_thing": "arch/x86/kvm/kvm", "_printk": "vmlinux",
                        "kallsyms_lookup_name": "vmlinux", "klp_enable_patch": "vmlinux"},
               namespaces={"kallsyms_lookup_name": "module:kvm"})
    res = convert_file(src, t, {}, output=tmp_path / "out.ko")
    fates = {s.name: s.fate.value for s in res.plan.symbols}
    # exported by a module: left alone; exported only to module kvm: for us
    # it is unexported, and in kallsyms, so it is converted.
    assert fates == {"kvm_thing": "module-export", "kallsyms_lookup_name": "convert"}


def test_non_x86_64_is_refused(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module(machine=EM_AARCH64))
    with pytest.raises(ConvertError, match="not x86_64"):
        convert_file(src, target(), {}, output=tmp_path / "out.ko")


def test_signature_is_removed_and_said(tmp_path: Path) -> None:
    sig = b"\x30\x82" + b"S" * 100
    info = bytes([0, 0, 2, 0, 0, 0, 0, 0]) + len(sig).to_bytes(4, "big")
    p = tmp_path / "signed.ko"
    p.write_bytes(simple_module().build() + sig + info + MODULE_SIG_STRING)
    res = convert_file(p, target(), {}, output=tmp_path / "out.ko")
    data = (tmp_path / "out.ko").read_bytes()
    assert not data.endswith(MODULE_SIG_STRING) and sig not in data
    assert any("sign" in n and "scripts/sign-file" in n for n in res.plan.notes)


def test_converting_twice_changes_nothing(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module())
    convert_file(src, target(), {}, output=tmp_path / "once.ko")
    res = convert_file(tmp_path / "once.ko", target(), {}, output=tmp_path / "twice.ko")
    assert not res.plan.to_convert
    assert [s.fate.value for s in res.plan.symbols if s.name == "kallsyms_lookup_name"] == [
        "livepatch"]
    assert (tmp_path / "twice.ko").read_bytes() == (tmp_path / "once.ko").read_bytes()


def test_in_place(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module())
    convert_file(src, target(), {}, in_place=True)
    assert ".klp.sym.vmlinux.kallsyms_lookup_name,0" in ElfFile.from_bytes(
        src.read_bytes()).symtab.names()
    assert [p.name for p in tmp_path.iterdir()] == ["m.ko"]  # no temp files left


def test_output_is_required(tmp_path: Path) -> None:
    src = write(tmp_path, simple_module())
    with pytest.raises(ConvertError) as shown:
        convert_file(src, target(), {})
    assert re.search("-o OUTPUT.ko, or --in-place", message(shown.value))


@pytest.mark.parametrize(("module", "flags", "said"), [
    ("m.ko", [], "say where to write the result: -o OUTPUT.ko, or --in-place"),
    ("m.ko", ["-o", "x.ko.xz"], "klpsym writes uncompressed modules"),
    ("missing.ko", ["-o", "x.ko"], "missing.ko: no such file"),
    ("text.ko", ["-o", "x.ko"], "not an ELF file"),
])
def test_cli_own_mistakes_are_said_before_the_kernel_is_looked_for(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], module: str, flags: list[str],
        said: str) -> None:
    """A missing -o, a wrong output name, a missing or non-module input are
    the user's first mistakes to hear about, not the missing headers of a
    kernel that was not even needed yet."""
    write(tmp_path, simple_module())
    (tmp_path / "text.ko").write_text("hello\n")
    rc = main(["convert", str(tmp_path / module), *flags,
               "--kernel-dir", str(tmp_path / "no-such-kdir")])
    err = capsys.readouterr().err
    assert rc == 2 and said in err and "no-such-kdir" not in err, err


# -- validation catches what the loader would reject ---------------------------


def _converted(tmp_path: Path) -> tuple[ElfFile, ElfFile]:
    src = write(tmp_path, simple_module(("kallsyms_lookup_name",), ("_printk",)))
    convert_file(src, target(), {}, output=tmp_path / "out.ko")
    return (ElfFile.from_bytes(src.read_bytes()),
            ElfFile.from_bytes((tmp_path / "out.ko").read_bytes()))


def test_validator_catches_ordinary_relocation_to_klp_symbol(tmp_path: Path) -> None:
    before, after = _converted(tmp_path)
    klp = after.section_by_name(".klp.rela.vmlinux..text")
    ordinary = after.section_by_name(".rela.text")
    assert klp is not None and ordinary is not None
    ordinary.table = np.concatenate([after.rela(ordinary), after.rela(klp)])  # duplicated
    again = ElfFile.from_bytes(after.to_bytes())
    assert any("ordinary relocation uses livepatch symbol" in p
               for p in loader_problems(again, 511))
    assert relocation_changes(before, again) == [".text: 2 relocations before, 3 after"]


def test_validator_catches_missing_flags_and_nonzero_targets(tmp_path: Path) -> None:
    _, after = _converted(tmp_path)
    klp = after.section_by_name(".klp.rela.vmlinux..text")
    text = after.section_by_name(".text")
    assert klp is not None and text is not None
    klp.flags &= ~int(SHF.ALLOC)
    text.data = b"\xff" * len(text.data)
    problems = loader_problems(ElfFile.from_bytes(after.to_bytes()), 511)
    assert any("lack SHF_ALLOC" in p for p in problems)
    assert any("nonzero" in p for p in problems)


def test_validator_catches_bad_symbol_names(tmp_path: Path) -> None:
    _, after = _converted(tmp_path)
    st = after.symtab
    i = st.names().index(".klp.sym.vmlinux.kallsyms_lookup_name,0")
    st.rename(i, ".klp.sym.vmlinux.kallsyms_lookup_name")  # no ,POS
    problems = loader_problems(ElfFile.from_bytes(after.to_bytes()), 511)
    assert any("incorrectly" in p or "is not .klp.sym" in p for p in problems)


def _rela(rows: list[tuple[int, int, int]]) -> np.ndarray:
    from klpsym.elf.constants import ElfClass, ElfData
    from klpsym.elf.layout import layout_for

    a = np.zeros(len(rows), dtype=layout_for(ElfClass.ELF64, ElfData.LSB).rela)
    for i, (o, info, add) in enumerate(rows):
        a[i] = (o, info, add)
    return a


def test_same_relocations_is_a_multiset_comparison() -> None:
    from klpsym.klp.validate import same_relocations

    x = _rela([(0, 1, -4), (8, 2, 0), (8, 3, 0), (8, 2, 5), (16, 1, 0)])
    assert same_relocations(x, x[[4, 2, 0, 3, 1]])  # any order
    assert same_relocations(x[:0], x[:0])
    assert not same_relocations(x, x[[0, 1, 1, 3, 4]])  # one duplicated, one lost
    assert not same_relocations(x, _rela([(0, 1, -4), (8, 2, 0), (8, 3, 0), (8, 2, 6),
                                          (16, 1, 0)]))  # an addend at a shared offset
    assert not same_relocations(x, _rela([(0, 1, -4), (8, 2, 0), (8, 3, 0), (8, 2, 5),
                                          (24, 1, 0)]))  # an offset
    assert not same_relocations(x, x[:4])
    swapped = _rela([(0, 1, -4), (8, 3, 0), (8, 2, 0), (8, 2, 5), (16, 2, 0)])
    assert not same_relocations(x, swapped)  # the last one's symbol


def test_validator_catches_an_unexpected_rename(tmp_path: Path) -> None:
    from klpsym.klp.validate import symbol_changes

    before, after = _converted(tmp_path)
    st = after.symtab
    i = st.names().index("_printk")
    st.rename(i, "_printk2")
    again = ElfFile.from_bytes(after.to_bytes())
    guard = ("klp_enable_patch",)  # the load-time guard's one appended symbol
    assert symbol_changes(before, again, 511, guard) == ["symbol '_printk' changed to "
                                                         "'_printk2' unexpectedly"]
    assert symbol_changes(before, ElfFile.from_bytes(after.to_bytes()), 511, guard)
    _, fine = _converted(tmp_path)
    assert symbol_changes(before, fine, 511, guard) == []
    assert symbol_changes(before, fine, 511) != []  # an appended symbol nobody announced


# -- the command line -----------------------------------------------------------


def test_cli_error_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("klpsym.cli.convert.target_from_args", lambda args: target())
    src = write(tmp_path, simple_module(("show_state",)))
    assert main(["convert", str(src), "-o", str(tmp_path / "out.ko")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("klpsym: error: show_state is ambiguous") and err.count("\n") == 1
    assert not (tmp_path / "out.ko").exists()


@pytest.mark.parametrize("content", [b"", b"not an elf at all", b"\x7fELF\x01\x01\x01"])
def test_cli_bad_input_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch, content: bytes) -> None:
    monkeypatch.setattr("klpsym.cli.convert.target_from_args", lambda args: target())
    p = tmp_path / "bad.ko"
    p.write_bytes(content)
    assert main(["convert", str(p), "-o", str(tmp_path / "out.ko")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"klpsym: error: {p}") and err.count("\n") == 1
    assert not (tmp_path / "out.ko").exists()


def test_cli_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("klpsym.cli.convert.target_from_args", lambda args: target())
    assert main(["convert", str(tmp_path / "nope.ko"), "--dry-run"]) == 2
    assert "nope.ko: no such file" in capsys.readouterr().err


def test_cli_dry_run_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("klpsym.cli.convert.target_from_args", lambda args: target())
    src = write(tmp_path, simple_module(("show_state", "kallsyms_lookup_name")))
    assert main(["convert", str(src), "--dry-run", "--sympos", "show_state=3"]) == 0
    out = capsys.readouterr().out
    assert "show_state" in out and "2 symbols to convert, 4 relocations to move" in out
    assert not list(tmp_path.glob("*.klp*"))
    assert main(["convert", str(src), "--dry-run", "--json", "--sympos", "show_state=3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    conv = {s["name"]: s for s in doc["symbols"] if s["kind"] == "convert"}
    assert conv["show_state"]["pos"] == 3 and conv["show_state"]["candidates"] == 3
    assert conv["kallsyms_lookup_name"]["relocations"] == {".text": 1, ".data": 1}
    assert doc["written"] is False and doc["relocations_to_move"] == 4


def test_cli_says_which_kernel_it_converted_for(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The target (by default the running kernel) and its sources are named,
    converted or not: the first thing to look at when the module will not load."""
    monkeypatch.setattr("klpsym.cli.convert.target_from_args", lambda args: target())
    src = write(tmp_path, simple_module())
    assert main(["convert", str(src), "-o", str(tmp_path / "out.ko")]) == 0
    assert main(["convert", str(tmp_path / "out.ko"), "-o", str(tmp_path / "again.ko")]) == 0
    lines = capsys.readouterr().out.splitlines()
    said = f"target {RELEASE}, exports from test Module.symvers, symbols from test kallsyms"
    assert lines[0].endswith("moved 2 relocations into 2 .klp.rela.vmlinux sections")
    assert lines[1] == said, lines
    assert "nothing to convert, already converted" in lines[-2] and lines[-1] == said, lines


def test_cli_bad_sympos_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(tmp_path, simple_module())
    assert main(["convert", str(src), "--dry-run", "--sympos", "show_state"]) == 2
    assert "expected NAME=N" in capsys.readouterr().err


def test_every_error_derives_from_the_package_base() -> None:
    assert issubclass(ConvertError, KlpsymError)


def test_unhandled_relocation_type_is_refused(tmp_path: Path) -> None:
    """A relocation type the x86_64 loader does not handle (fuzz finding:
    moved into a .klp.rela section, it failed convert's own check of the
    output as an "internal error")."""
    b = simple_module()
    sym = next(s for s in b.symbols if s.name == "kallsyms_lookup_name")
    b.rela(b.sections[0], 8, sym, 1119, 0)
    with pytest.raises(ConvertError, match=r"x86_64 module loader does not handle "
                                           r"\(\.rela\.text: types \[1119\]\)"):
        convert_file(write(tmp_path, b), target(), {}, output=tmp_path / "out.ko")
    assert not (tmp_path / "out.ko").exists()


def test_symbol_table_info_off_in_the_input(tmp_path: Path) -> None:
    """A symbol table whose sh_info is below its last local (the loader does
    not read it): converted, guard appended, not an "internal error"."""
    import struct

    data = bytearray(simple_module().build())
    elf = ElfFile.from_bytes(bytes(data))
    shoff = int(elf.header["e_shoff"])
    index = next(i for i, s in enumerate(elf.sections) if s is elf.symtab.section)
    struct.pack_into("<I", data, shoff + 64 * index + 44, 1)  # sh_info: 2 -> 1
    src = tmp_path / "m.ko"
    src.write_bytes(bytes(data))
    convert_file(src, target(), {}, output=tmp_path / "out.ko")
    out = ElfFile.from_bytes((tmp_path / "out.ko").read_bytes())
    assert out.symtab.names()[-1] == "klp_enable_patch"


def test_big_endian_module_converted_twice(tmp_path: Path) -> None:
    """Converted for a kernel that exports one of its symbols, then for one
    that does not: the second conversion appends to the .klp.rela section
    of a big-endian file (fuzz finding: np.concatenate made the table
    native, the output's symbol indexes byte-swapped)."""
    b = simple_module(("kallsyms_lookup_name", "dmesg_restrict"), big_endian=True)
    first = convert_file(write(tmp_path, b), target(exports={
        "_printk": "vmlinux", "klp_enable_patch": "vmlinux", "dmesg_restrict": "vmlinux"}),
        {}, output=tmp_path / "once.ko")
    assert [s.name for s in first.plan.to_convert] == ["kallsyms_lookup_name"]
    second = convert_file(tmp_path / "once.ko", target(), {}, output=tmp_path / "twice.ko")
    assert [s.name for s in second.plan.to_convert] == ["dmesg_restrict"]
    out = ElfFile.from_bytes((tmp_path / "twice.ko").read_bytes())
    assert not loader_problems(out, 511)
    assert ".klp.sym.vmlinux.dmesg_restrict,0" in out.symtab.names()


def test_klp_section_that_applies_elsewhere_is_not_extended(tmp_path: Path) -> None:
    """Converted once, then for a kernel exporting less: the new relocations
    of .text belong in .klp.rela.vmlinux..text, but that section's sh_info
    names .data; appended there they would apply to .data (fuzz finding,
    corpus convert-klp-section-applies-elsewhere.ko).  Refused as corrupt,
    nothing written."""
    b = simple_module(("kallsyms_lookup_name", "dmesg_restrict"))
    convert_file(write(tmp_path, b), target(exports={
        "_printk": "vmlinux", "klp_enable_patch": "vmlinux", "dmesg_restrict": "vmlinux"}),
        {}, output=tmp_path / "once.ko")
    elf = ElfFile.from_bytes((tmp_path / "once.ko").read_bytes())
    klp, data = elf.section_by_name(".klp.rela.vmlinux..text"), elf.section_by_name(".data")
    assert klp is not None and data is not None and klp.info_section is not data
    klp.info_section = data
    (tmp_path / "elsewhere.ko").write_bytes(elf.to_bytes())
    with pytest.raises(ConvertError, match=r"\.klp\.rela\.vmlinux\.\.text applies to \.data "
                                           r"\(sh_info\), not \.text; the module is corrupt"):
        convert_file(tmp_path / "elsewhere.ko", target(), {}, output=tmp_path / "twice.ko")
    assert not (tmp_path / "twice.ko").exists()


@pytest.mark.parametrize("offset", [8, 60])
def test_relocation_of_a_symbol_to_convert_breaking_the_loader_rules(tmp_path: Path,
                                                                     offset: int) -> None:
    """A relocation of a symbol to convert at nonzero bytes, or past the end
    of its section: the x86_64 loader refuses it where it is and would in a
    .klp.rela section (fuzz findings: convert's own output check failed as
    an "internal error")."""
    b = simple_module()
    text = b.sections[0]
    text.data = text.data[:8] + b"\x01\x02\x03\x04" + text.data[12:]
    sym = next(s for s in b.symbols if s.name == "kallsyms_lookup_name")
    b.rela(text, offset, sym, 2, 0)  # R_X86_64_PC32
    with pytest.raises(ConvertError, match="breaks the x86_64 module loader's rules: "
                       r"\.rela\.text: (target bytes at \.text\+0x8 are nonzero|"
                       r"relocation offset outside \.text)"):
        convert_file(write(tmp_path, b), target(), {}, output=tmp_path / "out.ko")
