"""klpsym check on synthetic modules: one test per verdict and per rule of
the loader it follows."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import zstandard

from elfbuilder import (
    SHF_ALLOC,
    STB_LOCAL,
    STB_WEAK,
    STT_FUNC,
    SYNTH_RELEASE,
    ElfBuilder,
    simple_module,
)
from klpsym.cli.main import main
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.kernel.symvers import parse_symvers
from klpsym.kernel.target import TargetKernel
from klpsym.kernel.version import KernelVersion
from klpsym.klp.classify import Fate
from klpsym.klp.convert import convert_file
from klpsym.load.batch import collect_modules, gather_facts
from klpsym.load.check import ModuleVerdict, Stage, Verdict, check_modules
from klpsym.load.facts import ModuleFacts, module_facts

RELEASE = SYNTH_RELEASE
VERMAGIC = f"{RELEASE} SMP preempt mod_unload modversions "
CONFIG = """CONFIG_X86_64=y
CONFIG_SMP=y
CONFIG_PREEMPT_BUILD=y
CONFIG_MODULE_UNLOAD=y
CONFIG_MODVERSIONS=y
CONFIG_MODULE_SIG=y
CONFIG_LIVEPATCH=y
CONFIG_KALLSYMS_ALL=y
"""
SYMVERS = """0x9060323f\tmodule_layout\tvmlinux\tEXPORT_SYMBOL\t
0x92997ed8\t_printk\tvmlinux\tEXPORT_SYMBOL\t
0xb43f9365\tktime_get\tvmlinux\tEXPORT_SYMBOL_GPL\t
0x669aff23\tcrypto_cipher_setkey\tvmlinux\tEXPORT_SYMBOL_GPL\tCRYPTO_INTERNAL
0x12121212\tjbd2_journal_start\tfs/jbd2/jbd2\tEXPORT_SYMBOL\t
0x06689996\tklp_enable_patch\tvmlinux\tEXPORT_SYMBOL_GPL\t
"""
CRCS = {"module_layout": 0x9060323F, "_printk": 0x92997ED8, "ktime_get": 0xB43F9365,
        "crypto_cipher_setkey": 0x669AFF23, "jbd2_journal_start": 0x12121212}
KALLSYMS = [
    (0xFFFFFFFF81000000, "T", "_stext"),
    (0xFFFFFFFF811723A0, "T", "kallsyms_lookup_name"),
    (0xFFFFFFFF81172300, "t", "c_start"),
    (0xFFFFFFFF81200000, "t", "c_start"),
]


def target(config: str = CONFIG, kallsyms: bool = True, release: str = RELEASE) -> TargetKernel:
    return TargetKernel(
        version=KernelVersion.parse(release), symvers=parse_symvers(SYMVERS, "test symvers"),
        kallsyms_source="test kallsyms" if kallsyms else "",
        config=KernelConfig.from_text(config),
        _kallsyms=KallsymsTable.from_rows(KALLSYMS, "test kallsyms") if kallsyms else None,
    )


def kmod(uses: tuple[str, ...] = ("_printk",), *, name: str = "synthetic",
         license: str = "GPL", vermagic: str | None = VERMAGIC,
         versions: dict[str, int] | None = None, import_ns: str | None = None,
         weak: tuple[str, ...] = (), exports: tuple[str, ...] = ()) -> ElfBuilder:
    """A module-shaped object as modpost links it: .modinfo, __versions
    (module_layout and every used symbol, CRCs as the target's unless
    ``versions`` says otherwise; None entries are left out),
    .gnu.linkonce.this_module with the name at offset 24, __ksymtab."""
    b = simple_module(unexported=(), exported=uses, license=license)
    b.sections = [s for s in b.sections if s.name != ".modinfo"]
    info = {"license": license, "name": name}
    if vermagic is not None:
        info["vermagic"] = vermagic
    if import_ns is not None:
        info["import_ns"] = import_ns
    b.modinfo(**info)
    crcs = {n: CRCS.get(n, 0x0BADC0DE) for n in ("module_layout", *uses)}
    if versions is not None:
        crcs.update(versions)
    b.section("__versions", data=b"".join(
        struct.pack("<Q", c) + n.encode().ljust(56, b"\0") for n, c in crcs.items()
        if c is not None), align=32)
    this = bytearray(1024)
    this[24:24 + len(name)] = name.encode()
    b.section(".gnu.linkonce.this_module", data=bytes(this), flags=SHF_ALLOC | 1, align=64)
    text = b.sections[0]
    for w in weak:
        sym = b.symbol(w, bind=STB_WEAK)
        b.rela(text, 1, sym)
    if exports:
        strings = b"".join(e.encode() + b"\0\0" for e in exports)
        strsec = b.section("__ksymtab_strings", data=strings, flags=SHF_ALLOC | 0x30)
        tab = b.section("__ksymtab", data=bytes(12 * len(exports)), align=4)
        b.section("__kcrctab", data=b"".join(struct.pack("<I", 7) for _ in exports), align=4)
        off = 0
        for i, e in enumerate(exports):
            fn = b.symbol(e, text, type=STT_FUNC, value=0, size=1)
            s = b.symbol(f"__kstrtab_{e}", strsec, STB_LOCAL, value=off)
            ns = b.symbol(f"__kstrtabns_{e}", strsec, STB_LOCAL, value=off + len(e) + 1)
            for k, sym in enumerate((fn, s, ns)):
                b.rela(tab, 12 * i + 4 * k, sym, 2, 0)
            off += len(e) + 2
    return b


def write(tmp_path: Path, b: ElfBuilder, name: str = "m.ko") -> Path:
    p = tmp_path / name
    p.write_bytes(b.build())
    return p


def check(tmp_path: Path, *builders: ElfBuilder, tgt: TargetKernel | None = None,
          ) -> list[ModuleVerdict]:
    paths = [write(tmp_path, b, f"m{i}.ko") for i, b in enumerate(builders)]
    return check_modules([module_facts(p) for p in paths], tgt or target())


def one(tmp_path: Path, b: ElfBuilder, tgt: TargetKernel | None = None) -> ModuleVerdict:
    return check(tmp_path, b, tgt=tgt)[0]


def fatal_lines(v: ModuleVerdict) -> list[str]:
    return [line for p in v.fatal for line in p.kernel]


def test_plain_module_loads_with_its_taints(tmp_path: Path) -> None:
    v = one(tmp_path, kmod())
    assert v.verdict == Verdict.LOADS and not v.fatal
    assert v.taints == ["E", "O"]
    assert {s.name: s.fate for s in v.symbols} == {"_printk": Fate.EXPORTED}
    assert "synthetic: loading out-of-tree module taints kernel." in v.kernel_messages()


def test_unresolved_and_klp_fates(tmp_path: Path) -> None:
    v = one(tmp_path, kmod(("_printk", "kallsyms_lookup_name", "c_start", "no_such_thing")))
    assert v.verdict == Verdict.FAILS
    fates = {s.name: (s.fate, s.pos, s.candidates) for s in v.symbols}
    assert fates["kallsyms_lookup_name"] == (Fate.CONVERT, 0, 1)
    assert fates["c_start"] == (Fate.CONVERT, None, 2)
    assert fates["no_such_thing"][0] == Fate.MISSING
    assert fatal_lines(v) == [f"synthetic: Unknown symbol {n} (err -2)"
                              for n in ("kallsyms_lookup_name", "c_start", "no_such_thing")]


def test_symbols_keep_the_loader_s_order(tmp_path: Path) -> None:
    """Symbols an export resolves plainly and those with a check of their
    own are kept apart in a verdict, in one order: the symbol table's,
    whether read as SymbolCheck objects or as records."""
    uses = ("_printk", "c_start", "ktime_get", "no_such_thing", "jbd2_journal_start",
            "kallsyms_lookup_name", "module_layout")
    v = one(tmp_path, kmod(uses))
    assert v.plain and v.checked  # both kinds
    undefined = [n for n, _ in module_facts(write(tmp_path, kmod(uses))).undefined]
    records = v.symbol_records()
    assert [r[0] for r in records] == undefined
    assert [s.name for s in v.symbols] == undefined
    assert not v.plain  # made SymbolCheck objects once asked for
    assert v.symbol_records() == records


def test_check_prints_the_loader_s_words_for_the_fates(tmp_path: Path) -> None:
    """convert and check share one Fate; check's table and JSON keep the
    loader's words for it (vmlinux, module, klp, unresolved, ...)."""
    from klpsym.cli.check import _symbol_row, json_module, module_json

    v = one(tmp_path, kmod(("_printk", "jbd2_journal_start", "c_start", "no_such_thing"),
                           weak=("maybe_there",)))
    words = {"_printk": "vmlinux", "jbd2_journal_start": "module", "c_start": "klp",
             "no_such_thing": "unresolved", "maybe_there": "weak"}
    assert {r[0]: r[1] for r in v.symbol_records()} == words
    assert {s["name"]: s["fate"] for s in json.loads(json_module(v))["symbols"]} == words
    assert {s["name"]: s["fate"] for s in module_json(v)["symbols"]} == words
    assert {s.name: _symbol_row(s)[1] for s in v.symbols} == words


def test_check_and_convert_classify_alike(tmp_path: Path) -> None:
    """check's fate, POS and candidate count of each symbol are what
    convert's plan (klp.plan.classify_symbols) gives it: one classification."""
    from klpsym.klp.plan import classify_symbols
    from klpsym.module.ko import read_module

    uses = ("_printk", "kallsyms_lookup_name", "c_start", "no_such_thing", "jbd2_journal_start")
    p = write(tmp_path, kmod(uses, weak=("maybe_there",)))
    checked = {s.name: (s.fate, s.pos, s.candidates) for s in check_modules(
        [module_facts(p)], target())[0].symbols}
    planned = {s.name: (s.fate, s.pos, s.candidates)
               for s in classify_symbols(read_module(p), target(), {"c_start": 2})}
    assert planned.pop("c_start") == (Fate.CONVERT, 2, 2)  # --sympos chose one
    assert checked.pop("c_start") == (Fate.CONVERT, None, 2)  # check cannot
    assert checked == planned


def test_without_kallsyms_an_unexported_symbol_is_unresolved(tmp_path: Path) -> None:
    v = one(tmp_path, kmod(("kallsyms_lookup_name",)), target(kallsyms=False))
    assert v.symbols[0].fate == Fate.MISSING and "kallsyms source" in v.symbols[0].reason


def test_gpl_only_export_is_invisible_to_a_proprietary_module(tmp_path: Path) -> None:
    v = one(tmp_path, kmod(("_printk", "ktime_get"), license="Proprietary"))
    assert v.verdict == Verdict.FAILS and "P" in v.taints
    assert [p.stage for p in v.fatal] == [Stage.GPL]
    assert fatal_lines(v) == ["synthetic: Unknown symbol ktime_get (err -2)"]
    assert one(tmp_path, kmod(("ktime_get",), license="Dual MIT/GPL")).would_load


def test_namespace_must_be_imported(tmp_path: Path) -> None:
    v = one(tmp_path, kmod(("crypto_cipher_setkey",)))
    assert v.verdict == Verdict.FAILS
    assert fatal_lines(v) == [
        "synthetic: module uses symbol (crypto_cipher_setkey) from namespace CRYPTO_INTERNAL, "
        "but does not import it.",
        "synthetic: Unknown symbol crypto_cipher_setkey (err -22)"]
    assert one(tmp_path, kmod(("crypto_cipher_setkey",), import_ns="CRYPTO_INTERNAL")).would_load
    lenient = target(CONFIG + "CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS=y\n")
    v = one(tmp_path, kmod(("crypto_cipher_setkey",)), lenient)
    assert v.would_load and any(p.stage == Stage.NAMESPACE for p in v.problems)


def test_crc_mismatch_and_missing_crc(tmp_path: Path) -> None:
    v = one(tmp_path, kmod(versions={"_printk": 0x12345678}))
    assert v.verdict == Verdict.FAILS
    assert fatal_lines(v) == ["synthetic: disagrees about version of symbol _printk",
                              "synthetic: Unknown symbol _printk (err -22)"]
    v = one(tmp_path, kmod(versions={"_printk": None}))
    assert v.would_load
    assert "synthetic: no symbol version for _printk" in v.kernel_messages()


def test_module_layout_crc(tmp_path: Path) -> None:
    v = one(tmp_path, kmod(versions={"module_layout": 1}))
    assert v.verdict == Verdict.FAILS
    assert fatal_lines(v) == ["synthetic: disagrees about version of symbol module_layout"]
    assert not v.symbols  # the loader stops before simplify_symbols()


def test_no_versions_loads_only_with_force_load(tmp_path: Path) -> None:
    b = kmod()
    b.sections = [s for s in b.sections if s.name != "__versions"]
    v = one(tmp_path, b)
    assert v.verdict == Verdict.FAILS and "Invalid module format" in v.fatal[0].message
    v = one(tmp_path, b, target(CONFIG + "CONFIG_MODULE_FORCE_LOAD=y\n"))
    assert v.would_load and "F" in v.taints
    assert "synthetic: module_layout: kernel tainted." in v.kernel_messages()


@pytest.mark.parametrize("vermagic, loads", [
    (VERMAGIC, True),
    (f"{RELEASE} SMP mod_unload modversions ", False),  # configuration words differ
    ("6.1.0-99-amd64 SMP preempt mod_unload modversions ", True),  # CRCs: release skipped
])
def test_vermagic(tmp_path: Path, vermagic: str, loads: bool) -> None:
    v = one(tmp_path, kmod(vermagic=vermagic))
    assert v.would_load == loads
    if not loads:
        assert fatal_lines(v) == [f"synthetic: version magic '{vermagic}' should be "
                                  f"'{VERMAGIC}'"]


def test_vermagic_release_counts_without_crcs(tmp_path: Path) -> None:
    b = kmod(vermagic="6.1.0-99-amd64 SMP preempt mod_unload modversions ")
    b.sections = [s for s in b.sections if s.name != "__versions"]
    v = one(tmp_path, b, target(CONFIG + "CONFIG_MODULE_FORCE_LOAD=y\n"))
    assert v.verdict == Verdict.FAILS and v.fatal[0].stage == Stage.VERMAGIC


def test_weak_reference_to_nothing_is_fine(tmp_path: Path) -> None:
    v = one(tmp_path, kmod(weak=("maybe_there",)))
    assert v.would_load
    assert {s.name: s.fate for s in v.symbols}["maybe_there"] == Fate.WEAK


def test_module_dependencies(tmp_path: Path) -> None:
    # an in-tree module's export (the target's Module.symvers)
    v = one(tmp_path, kmod(("jbd2_journal_start",)))
    assert v.verdict == Verdict.LOADS_AFTER and v.depends == ["jbd2"]
    # a module of the same check
    provider = kmod(name="provider", exports=("provider_fn",))
    user = kmod(("provider_fn",), name="user", versions={"provider_fn": 7})
    p, u = check(tmp_path, provider, user)
    assert p.verdict == Verdict.LOADS and u.verdict == Verdict.LOADS_AFTER
    assert u.depends == ["provider"]
    # ... which would not load itself
    bad_provider = kmod(("nothing_here",), name="provider", exports=("provider_fn",))
    p, u = check(tmp_path, bad_provider, user)
    assert p.verdict == Verdict.FAILS and u.verdict == Verdict.FAILS
    assert u.fatal[-1].stage == Stage.DEPENDENCY


def test_duplicate_export(tmp_path: Path) -> None:
    v = one(tmp_path, kmod(name="dup", exports=("ktime_get",)))
    assert fatal_lines(v) == ["dup: exports duplicate symbol ktime_get (owned by kernel)"]


def test_unknown_relocation_type(tmp_path: Path) -> None:
    b = kmod()
    text = b.sections[0]
    b.rela(text, 8, b.symbols[1], 41, 0)  # R_X86_64_GOTPCRELX
    v = one(tmp_path, b)
    assert fatal_lines(v) == ["synthetic: Unknown rela relocation: 41"]


def test_converted_module_is_looked_up_in_kallsyms(tmp_path: Path) -> None:
    src = write(tmp_path, kmod(("_printk", "kallsyms_lookup_name")), "src.ko")
    out = tmp_path / "klp.ko"
    convert_file(src, target(), {}, output=out)
    v = check_modules([module_facts(out)], target())[0]
    assert v.verdict == Verdict.LOADS, v.problems
    klp = [s for s in v.symbols if s.fate == Fate.LIVEPATCH]
    assert [(s.name, s.ok, s.pos) for s in klp] == [("kallsyms_lookup_name", True, 0)]
    # on a kernel whose kallsyms lacks it, or has it twice
    global KALLSYMS
    saved = KALLSYMS
    try:
        KALLSYMS = [r for r in saved if r[2] != "kallsyms_lookup_name"]
        v = check_modules([module_facts(out)], target())[0]
        assert fatal_lines(v) == ["symbol 'kallsyms_lookup_name' not found in symbol table"]
        KALLSYMS = [*saved, (0xFFFFFFFF81400000, "t", "kallsyms_lookup_name")]
        v = check_modules([module_facts(out)], target())[0]
        assert fatal_lines(v) == ["unresolvable ambiguity for symbol 'kallsyms_lookup_name' in "
                                  "object '(null)'"]
    finally:
        KALLSYMS = saved
    v = check_modules([module_facts(out)], target(CONFIG.replace("CONFIG_LIVEPATCH=y\n", "")))[0]
    assert v.verdict == Verdict.FAILS and "CONFIG_LIVEPATCH" in v.fatal[0].message


def test_bad_input_is_an_error_verdict(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ko"
    bad.write_bytes(b"not an elf")
    (v,) = check_modules([module_facts(bad)], target())
    assert v.verdict == Verdict.ERROR and "not an ELF file" in v.problems[0].message


@pytest.mark.parametrize("suffix, compress", [
    (".xz", lzma.compress), (".gz", gzip.compress),
    (".zst", lambda d: zstandard.ZstdCompressor().compress(d)),
])
def test_compressed_modules(tmp_path: Path, suffix: str, compress: object) -> None:
    assert callable(compress)
    p = tmp_path / f"m.ko{suffix}"
    p.write_bytes(compress(kmod().build()))
    f = module_facts(p)
    assert f.error is None and f.compression != "none"
    assert check_modules([f], target())[0].would_load


def test_directories_and_parallel_reading(tmp_path: Path) -> None:
    for i in range(20):
        write(tmp_path, kmod(name=f"m{i}"), f"m{i}.ko")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.ko.xz").write_bytes(lzma.compress(kmod(name="x").build()))
    (tmp_path / "notes.txt").write_text("not a module")
    paths = collect_modules([tmp_path])
    assert len(paths) == 21
    seen: list[int] = []
    facts = gather_facts(paths, jobs=2, progress=seen.append)
    assert [f.path for f in facts] == paths and seen[-1] == 21
    assert [f.name for f in facts] == [f.name for f in gather_facts(paths, jobs=1)]


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import klpsym.cli.check as cli_check

    monkeypatch.setattr(cli_check, "target_for_check", lambda args: target())
    good = write(tmp_path, kmod(), "good.ko")
    bad = write(tmp_path, kmod(("nothing_here",)), "bad.ko")
    assert main(["check", str(good)]) == 0
    assert "1 loads" in capsys.readouterr().out
    assert main(["check", str(good), str(bad), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [m["verdict"] for m in report["modules"]] == ["loads", "fails"]
    assert report["modules"][1]["problems"][-1]["kernel"] == [
        "synthetic: Unknown symbol nothing_here (err -2)"]
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"\x7fELF")
    assert main(["check", str(good), str(junk)]) == 2
    assert main(["check", str(tmp_path / "missing.ko")]) == 2
    assert "no such file" in capsys.readouterr().err


# -- the fast reader (load.fastread.fast_facts) against the general one


def _signed(data: bytes) -> bytes:
    """``data`` with a PKCS#7-shaped trailer as scripts/sign-file appends it."""
    sig = bytes(range(40))
    return data + sig + bytes([0, 0, 2, 0, 0, 0, 0, 0]) + struct.pack(">I", len(sig)) \
        + b"~Module signature appended~\n"


def _variants() -> dict[str, bytes]:
    return {
        "plain": kmod().build(),
        "exports": kmod(("_printk", "ktime_get"), exports=("a_fn", "b_fn", "c_fn")).build(),
        "weak": kmod(weak=("maybe_there",)).build(),
        "no versions": kmod(versions={"module_layout": None, "_printk": None}).build(),
        "namespace": kmod(("crypto_cipher_setkey",), import_ns="CRYPTO_INTERNAL").build(),
        "proprietary": kmod(license="Proprietary").build(),
        "signed": _signed(kmod(exports=("x_fn",)).build()),
        "no modinfo name": kmod(name="").build(),
    }


def _fast_reader(data: bytes, p: Path) -> ModuleFacts | None:
    """What the fast reader (load.fastread) reads of ``data``: facts, or
    None where it leaves the module to the general reader."""
    from klpsym.load.fastread import fast_facts

    return fast_facts(data, p, "none")


def test_fast_reader_layouts_come_from_elf_layout() -> None:
    """The fast reader unpacks records with struct formats derived from
    klpsym.elf.layout's dtypes (one declaration of each layout): the formats
    read what the dtypes read."""
    import numpy as np

    from klpsym.elf.constants import ElfClass, ElfData
    from klpsym.elf.layout import layout_for, record_struct
    from klpsym.load import fastread

    le = layout_for(ElfClass.ELF64, ElfData.LSB)
    data = bytes(range(256)) * 2
    for dtype in (le.ehdr, le.shdr, le.sym, le.rela, le.phdr, le.nhdr):
        got = record_struct(dtype).unpack_from(data)
        want = np.frombuffer(data, dtype=dtype, count=1)[0].tolist()
        assert got == tuple(bytes(v) if isinstance(v, (bytes, memoryview)) else v
                            for v in want), dtype
    assert fastread._SYM_DTYPE == le.sym
    assert fastread._EHDR.size == le.ehdr.itemsize and fastread._SHDR.size == le.shdr.itemsize


@pytest.mark.parametrize("variant", list(_variants()))
def test_fast_reader_equals_general_reader(tmp_path: Path, variant: str) -> None:
    p = tmp_path / "m.ko"
    p.write_bytes(_variants()[variant])
    assert _fast_reader(p.read_bytes(), p) is not None  # the fast path read it
    assert module_facts(p) == module_facts(p, fast=False)


def test_fast_readers_refuse_overlapping_relocation_tables(tmp_path: Path) -> None:
    """Relocation tables that together are bigger than the file overlap:
    reading them one by one could be made to take any time (65,535 tables
    over the same megabytes), so both fast readers give such a file up."""
    from klpsym.elf import ElfFile

    good = kmod(("_printk", "ktime_get"), exports=("a_fn",)).build()
    elf = ElfFile.from_bytes(good)
    shoff = int(elf.header["e_shoff"])
    data = bytearray(good)
    relas = [i for i, sec in enumerate(elf.sections) if sec.type == 4]  # SHT_RELA
    assert len(relas) >= 2
    span = (shoff - 64) // 24 * 24
    for i in relas:  # sh_offset, sh_size: every table over the whole file
        struct.pack_into("<QQ", data, shoff + 64 * i + 24, 64, span)
    p = tmp_path / "m.ko"
    p.write_bytes(bytes(data))
    assert _fast_reader(bytes(data), p) is None
    module_facts(p)  # the general reader's facts or error; no hang


def test_files_the_fast_reader_cannot_read(tmp_path: Path) -> None:
    """Anything the fast reader does not read (missing, a directory, empty,
    short, not ELF) is said by the general path; a compressed module is
    decompressed and read by the fast reader."""
    good = kmod().build()
    files = {"missing": None, "dir": "dir", "empty": b"", "short": good[:40],
             "xz": lzma.compress(good), "text": b"not a module at all" * 10}
    for name, content in files.items():
        p = tmp_path / f"{name}.ko"
        if content == "dir":
            p.mkdir()
        elif isinstance(content, bytes):
            p.write_bytes(content)
        facts = module_facts(p)
        if name == "xz":
            assert facts.error is None and facts.compression == "xz"
            assert facts == module_facts(p, fast=False)
        else:
            assert facts.error, name
    p = tmp_path / "good.ko"
    p.write_bytes(good)
    assert _fast_reader(good, p) is not None
    assert module_facts(p) == module_facts(p, fast=False)


def test_fast_reader_on_corrupted_modules(tmp_path: Path) -> None:
    """Bytes changed in the headers and tables the fast reader reads: it
    gives the general reader's facts or its error, never other ones."""
    import random

    from klpsym.elf import ElfFile
    from klpsym.module.signature import split_signature

    rng = random.Random(7)
    fast_read = 0
    for variant in ("exports", "signed", "weak"):
        good = _variants()[variant]
        elf = ElfFile.from_bytes(split_signature(good, variant)[0])
        shoff = int(elf.header["e_shoff"])
        regions = [(0, 64), (shoff, shoff + 64 * len(elf.sections))] + [
            (s.orig_offset, s.orig_offset + s.orig_size) for s in elf.sections
            if s.orig_offset is not None and s.orig_size and s.name != ".text"]
        for _ in range(150):
            data = bytearray(good)
            for _ in range(rng.choice((1, 1, 2, 3))):
                start, end = rng.choice(regions)
                data[rng.randrange(start, end)] = rng.choice((0, 1, 0xFF, rng.randrange(256)))
            p = tmp_path / "m.ko"
            p.write_bytes(bytes(data))
            fast_read += _fast_reader(bytes(data), p) is not None
            assert module_facts(p) == module_facts(p, fast=False), (variant, data.hex())
    assert fast_read > 100  # most single-byte changes leave a module the fast path reads


def _batch(tmp_path: Path) -> list[Path]:
    """20 modules: m00 exports dep_fn but would not load (an unknown
    symbol), m01..m04 need it (so they fail with it), m05 exports ok_fn
    that m06..m09 use, the rest use vmlinux only."""
    mods = [kmod(("_printk", "nothing_here"), name="m00", exports=("dep_fn",))]
    mods += [kmod(("_printk", "dep_fn"), name=f"m{i:02}", versions={"dep_fn": 7})
             for i in range(1, 5)]
    mods.append(kmod(("ktime_get",), name="m05", exports=("ok_fn",)))
    mods += [kmod(("_printk", "ok_fn"), name=f"m{i:02}", versions={"ok_fn": 7})
             for i in range(6, 10)]
    mods += [kmod(name=f"m{i:02}") for i in range(10, 20)]
    return [write(tmp_path, b, f"m{i:02}.ko") for i, b in enumerate(mods)]


def test_parallel_check_equals_serial(tmp_path: Path) -> None:
    """load.batch.check_paths in two processes: the serial verdicts, the
    symbol lists of modules that would load left out only when asked, the
    rendered JSON made from the final verdicts (after dependencies)."""
    from klpsym.cli.check import json_module
    from klpsym.load.batch import check_paths

    paths = _batch(tmp_path)
    serial = check_modules([module_facts(p, fast=False) for p in paths], target())
    assert [v.verdict for v in serial] == [Verdict.FAILS] * 5 + [Verdict.LOADS] + \
        [Verdict.LOADS_AFTER] * 4 + [Verdict.LOADS] * 10
    assert serial[1].problems[-1].stage == Stage.DEPENDENCY
    for symbols in (True, False):
        got = check_paths(paths, target(), 2, symbols=symbols, render=json_module)
        assert got.rendered == [json_module(v) for v in serial]
        for a, b in zip(got.verdicts, serial, strict=True):
            if symbols or not b.would_load:
                assert a == b
            else:
                assert not a.symbols_listed and not a.symbols
                b.symbols, b.symbols_listed = [], False
                assert a == b
                b.symbols_listed = True


def test_parallel_check_progress_and_more_processes(tmp_path: Path) -> None:
    """Three processes share the chunks (the queue pipe); progress counts
    every module read, in any process; no worker is left behind."""
    from klpsym.load import batch

    paths = _batch(tmp_path) * 4  # 80 modules: several chunks each
    seen: list[int] = []
    got = batch.check_paths(paths, target(), 3, progress=seen.append)
    assert seen and seen[-1] == len(paths) and seen == sorted(seen)
    assert got.verdicts == check_modules([module_facts(p) for p in paths], target())
    batch.wait_for_workers()
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # no child left


def test_parallel_check_worker_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that fails sends its traceback, one that dies is noticed;
    either way the parent raises (the CLI's internal-error path) and reaps
    it, and nothing hangs."""
    from klpsym.load import batch

    paths = _batch(tmp_path) * 3  # more than one chunk: a worker is forked
    parent = os.getpid()
    real_checker = batch.Checker

    def failing(*args: Any) -> Any:  # every worker makes one, whatever it read
        if os.getpid() != parent:
            raise ValueError("judging went wrong")
        return real_checker(*args)

    monkeypatch.setattr(batch, "Checker", failing)
    with pytest.raises(RuntimeError, match="worker failed:(.|\n)*judging went wrong"):
        batch.check_paths(paths, target(), 2)

    def dying(*args: Any) -> Any:
        if os.getpid() != parent:
            os._exit(3)
        return real_checker(*args)

    monkeypatch.setattr(batch, "Checker", dying)
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        batch.check_paths(paths, target(), 2)
    batch.wait_for_workers()
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_plain_report_for_a_pipe(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Not on a terminal: the same report without rich (aligned columns),
    details for the modules that would not load only."""
    import klpsym.cli.check as cli_check

    monkeypatch.setattr(cli_check, "target_for_check", lambda args: target())
    paths = _batch(tmp_path)
    assert main(["check", str(tmp_path), "-j", "2"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"target {RELEASE}")
    header = out.index(next(line for line in out if line.startswith("module ")))
    rows = [line.split() for line in out[header + 1: header + 21]]
    assert [r[0] for r in rows] == [str(p) for p in paths]
    assert rows[1][1:] == ["fails", "needs", "m00,", "which", "would", "not", "load"]
    assert rows[6][1:] == ["loads-after", "after", "m05"] and rows[10][1:] == ["loads"]
    assert f"{paths[0]} (m00): fails" in out
    assert "      kernel: m00: Unknown symbol nothing_here (err -2)" in out
    assert not any(line.startswith(f"{paths[6]} (") for line in out)  # loads: no details
    symbols = out.index(f"{paths[1]} (m01): fails after m00") + 2
    assert out[symbols].split() == ["symbol", "fate", "provider", "flags", "ok", "why"]
    assert out[symbols + 2].split()[:5] == ["dep_fn", "module", "m00", "yes"]
    assert out[-1] == "5 fails, 11 loads, 4 loads-after"
    assert main(["check", str(tmp_path), "-j", "2", "--json"]) == 1
    text = capsys.readouterr().out
    report = json.loads(text)
    assert [m["verdict"] for m in report["modules"]][:6] == ["fails"] * 5 + ["loads"]
    assert sum(line.startswith('    {"path": ') for line in text.splitlines()) == 20


def test_json_lines_are_json_dumps_of_the_report(tmp_path: Path) -> None:
    """cli.check.json_module writes symbols through cached formats: the
    same text as json.dumps of the module's dict, for every kind of symbol
    (vmlinux, module, unresolved, klp with its POS, weak, livepatch, GPL,
    namespaced, CRC mismatch, names that need escaping)."""
    from klpsym.cli.check import json_module, module_json

    src = write(tmp_path, kmod(("_printk", "kallsyms_lookup_name")), "src.ko")
    convert_file(src, target(), {}, output=tmp_path / "klp.ko")
    src.unlink()
    _batch(tmp_path)
    write(tmp_path, kmod(("_printk", "c_start", "ktime_get", "weird\\name%s\u00e9"),
                         weak=("maybe_there",), versions={"_printk": 5}), "mixed.ko")
    write(tmp_path, kmod(("crypto_cipher_setkey",), import_ns="CRYPTO_INTERNAL",
                         license="Proprietary"), "ns.ko")
    verdicts = check_modules([module_facts(p) for p in collect_modules([tmp_path])], target())
    fates = {s.fate for v in verdicts for s in v.symbols}
    assert fates >= {Fate.EXPORTED, Fate.MODULE_EXPORT, Fate.CONVERT, Fate.MISSING, Fate.WEAK,
                     Fate.LIVEPATCH}
    for v in verdicts:
        assert json_module(v) == json.dumps(module_json(v))


@pytest.mark.parametrize("tty", [False, True])
def test_names_from_the_file_are_printed_escaped(tmp_path: Path, tty: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An undefined symbol whose name has a newline and an undecodable byte
    (fuzz finding: UnicodeEncodeError on a strict UTF-8 stdout): the
    report, plain or through rich on a terminal, shows it escaped on one line."""
    import contextlib
    import io

    import klpsym.cli.check as cli_check

    class Out(io.TextIOWrapper):
        def isatty(self) -> bool:
            return tty

    monkeypatch.setattr(cli_check, "target_for_check", lambda args: target())
    monkeypatch.setenv("TERM", "dumb")  # rich: no escape sequences
    p = tmp_path / "m.ko"
    p.write_bytes(kmod(("_printk", "nothing_here")).build()
                  .replace(b"nothing_here", b"nothing\n\xffere"))
    raw = io.BytesIO()
    out = Out(raw, encoding="utf-8", errors="strict")
    with contextlib.redirect_stdout(out):
        assert main(["check", str(p), "-v"]) == 1
        out.flush()
    text = raw.getvalue().decode()
    assert "nothing\\x0a" in text
    assert all(line.isprintable() for line in text.split("\n")), text


def test_check_takes_every_target_flag(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """check's target is found with the same flags as convert's: it used to
    drop --kernel-release, --no-cache and --no-symbol-check."""
    import klpsym.kernel.target as target_mod
    from klpsym.cli.check import target_for_check
    from klpsym.cli.main import build_parser

    seen: dict[str, Any] = {}
    monkeypatch.setattr(target_mod, "discover", lambda **kw: seen.update(kw))
    args = build_parser("check").parse_args(
        ["check", "m.ko", "--kernel-release", "9.9.9-test", "--no-cache", "--no-symbol-check"])
    target_for_check(args)
    assert seen["kernel_release"] == "9.9.9-test"
    assert seen["cache"] is False and seen["check_symbols"] is False
