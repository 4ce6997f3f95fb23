"""The smaller stumbles of a new user's first hour (issue 15, point 7)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from elfbuilder import simple_module
from klpsym.cli.main import main
from klpsym.errors import KernelSourceError


def _ko(tmp_path: Path) -> Path:
    p = tmp_path / "m.ko"
    p.write_bytes(simple_module().build())
    return p


def test_inspect_relocs_before_the_file(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    ko = _ko(tmp_path)
    assert main(["inspect", str(ko), "--relocs"]) == 0
    after = capsys.readouterr().out
    assert main(["inspect", "--relocs", str(ko)]) == 0  # readelf's habit: -r FILE
    assert capsys.readouterr().out == after and "R_X86_64_PLT32" in after
    assert main(["inspect", "--relocs", ".rela.text", str(ko)]) == 0
    assert "'.rela.text'" in capsys.readouterr().out
    assert main(["inspect", "--header"]) == 2
    assert "give the module file" in capsys.readouterr().err


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "klpsym", *argv], capture_output=True,
                          text=True, check=False, timeout=600)


def test_mistyped_flag_shows_the_commands_usage_and_a_suggestion(tmp_path: Path) -> None:
    run = _run("convert", "m.ko", "--kalsyms", "x", "--dry-run")
    assert run.returncode == 2
    assert run.stderr.startswith("usage: klpsym convert ")
    assert run.stderr.rstrip().endswith("did you mean --kallsyms?")
    run = _run("lab", "build", "bookworm", "--sympo", "x=1")
    assert run.stderr.startswith("usage: klpsym lab build ") and "--sympos?" in run.stderr
    run = _run("--bogus", "convert", "m.ko")  # before the command: the program's own usage
    assert run.stderr.startswith("usage: klpsym [-h] [--version] COMMAND")


@pytest.mark.parametrize("argv", [["convert", "m.ko", "--dry-run", "--kall", "k"],
                                  ["check", "m.ko", "--verb"], ["--vers"]])
def test_abbreviations_are_refused(argv: list[str]) -> None:
    run = _run(*argv)
    assert run.returncode == 2 and "unrecognized arguments" in run.stderr


@pytest.mark.parametrize("jobs", ["0", "-3", "two"])
def test_check_jobs_must_be_a_positive_number(jobs: str) -> None:
    run = _run("check", "m.ko", "-j", jobs)
    assert run.returncode == 2 and "argument -j/--jobs" in run.stderr


def test_a_directory_as_symbol_file_is_called_a_directory(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    from klpsym.kernel.target import discover

    kdir = tmp_path / "build"
    (kdir / "include" / "generated").mkdir(parents=True)
    (kdir / "include" / "generated" / "utsrelease.h").write_text(
        '#define UTS_RELEASE "6.1.0-99-test"\n')
    (kdir / "Module.symvers").write_text("0x1\tphys_base\tvmlinux\tEXPORT_SYMBOL\t\n")
    for flag in ("kallsyms", "system_map", "vmlinux"):
        with pytest.raises(KernelSourceError, match=rf"is a directory \({flag}=\)"):
            discover(kdir, running_release="x", **{flag: tmp_path})  # type: ignore[arg-type]
    assert main(["addr", "x", "--kallsyms", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a directory (--kallsyms)" in capsys.readouterr().err


def test_insmod_print_args_blames_the_vermagic(tmp_path: Path) -> None:
    b = simple_module()
    b.sections = [s for s in b.sections if s.name != ".modinfo"]
    other = "0.0.1-not-" + os.uname().release
    b.modinfo(license="GPL", name="m", klpsym_method="kallsyms",
              klpsym_symbol="kallsyms_lookup_name,0,func",
              vermagic=f"{other} SMP preempt mod_unload modversions ")
    ko = tmp_path / "m.ko"
    ko.write_bytes(b.build())
    run = _run("insmod", str(ko), "--print-args")
    assert run.returncode == 2
    assert f"built for {other} (its vermagic)" in run.stderr and run.stderr.count("\n") == 1


def test_build_names_every_missing_symbol() -> None:
    from klpsym.kbuild.build import BuiltModule, _failure
    from klpsym.kernel.kallsyms import KallsymsTable
    from klpsym.kernel.symvers import Symvers
    from klpsym.kernel.target import TargetKernel
    from klpsym.kernel.version import KernelVersion
    from klpsym.klp.plan import Fate, SymbolPlan

    target = TargetKernel(KernelVersion.parse("6.1.0-99-test"), Symvers(sources=["S"]),
                          "kallsyms K", _kallsyms=KallsymsTable.from_rows([], "K"))
    one = [BuiltModule("a", Path("a.o"), Path("a.ko"), [SymbolPlan(0, "no_such_a",
                                                                   Fate.MISSING)])]
    assert _failure(Path("."), one, set(), target, 2).startswith(
        "a.ko: undefined symbol no_such_a is neither exported by kernel 6.1.0-99-test")
    two = [BuiltModule("a", Path("a.o"), Path("a.ko"),
                       [SymbolPlan(0, "no_such_a", Fate.MISSING),
                        SymbolPlan(1, "no_such_b", Fate.MISSING)])]
    msg = _failure(Path("."), two, set(), target, 2)
    assert msg.startswith("a.ko: undefined symbols no_such_a, no_such_b are neither")
    assert "more" not in msg and "refused them" in msg
    two.append(BuiltModule("b", Path("b.o"), Path("b.ko"),
                           [SymbolPlan(0, "no_such_c", Fate.MISSING)]))
    assert _failure(Path("."), two, set(), target, 2).startswith(
        "undefined symbols no_such_a (a.ko), no_such_b (a.ko), no_such_c (b.ko) are neither")




def test_ambiguous_name_names_the_candidates_sources_with_vmlinux(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vmlinux_builder import STB_LOCAL, STT_FILE, XSym, sample_image

    img = sample_image("6.1.0-99-test")
    # each "dup" in .text after its own compilation unit's STT_FILE entry
    dups = [i for i, s in enumerate(img.symbols) if s.name == "dup" and s.section == ".text"]
    for n, i in enumerate(reversed(dups)):
        img.symbols.insert(i, XSym(f"unit_{len(dups) - n}.c", 0, 0xFFF1, STB_LOCAL, STT_FILE))
    vml = tmp_path / "vmlinux"
    vml.write_bytes(img.to_bytes())
    kdir = tmp_path / "build"
    (kdir / "include" / "generated").mkdir(parents=True)
    (kdir / "include" / "generated" / "utsrelease.h").write_text(
        '#define UTS_RELEASE "6.1.0-99-test"\n')
    (kdir / "Module.symvers").write_text("0x1\tglobal_var\tvmlinux\tEXPORT_SYMBOL\t\n")
    (kdir / ".config").write_text("CONFIG_LIVEPATCH=y\nCONFIG_KALLSYMS_ALL=y\n")
    ko = tmp_path / "m.ko"
    ko.write_bytes(simple_module(("dup",), (), release="6.1.0-99-test").build())
    argv = ["convert", str(ko), "--dry-run", "--kernel-dir", str(kdir)]
    assert main([*argv, "--vmlinux", str(vml)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("klpsym: error: dup is ambiguous") and err.count("\n") == 1
    assert (f"(from {vml}: POS 1 in unit_1.c; POS 2 in unit_2.c; POS 3 in unit_3.c; "
            "POS 4 in unit_3.c; POS 5 in unit_3.c)") in err
    ks = tmp_path / "kallsyms"
    ks.write_text("".join(f"ffffffff8100{i}000 t dup\n" for i in range(1, 4))
                  + "ffffffff82000000 D global_var\n")
    assert main([*argv, "--kallsyms", str(ks)]) == 2  # no vmlinux: addresses only, as before
    err = capsys.readouterr().err
    assert err.startswith("klpsym: error: dup is ambiguous") and "(from" not in err


def test_dry_run_with_a_missing_symbol_shows_the_plan(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from test_convert import target

    monkeypatch.setattr("klpsym.cli.convert.target_from_args", lambda args: target())
    ko = tmp_path / "m.ko"
    ko.write_bytes(simple_module(("kallsyms_lookup_name", "no_such_symbol"), ("_printk",))
                   .build())
    assert main(["convert", str(ko), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[3:]
            if len(line.split()) > 1 and not line.startswith(("1 ", "note"))}
    assert rows["no_such_symbol"] == "missing" and rows["kallsyms_lookup_name"] == "convert"
    assert rows["_printk"] == "exported"
    assert err.count("\n") == 1 and "no_such_symbol is neither exported" in err
    assert not list(tmp_path.glob("*.klp*"))
    assert main(["convert", str(ko), "-o", str(tmp_path / "o.ko")]) == 2  # not a dry run
    assert capsys.readouterr().out == ""
