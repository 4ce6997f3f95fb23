"""Tables only on terminals: a pipe or a file (DKMS's make.log) gets plain
aligned columns from every command; check on a terminal shows the module
paths relative to what was named, wraps the reasons, and --failed lists
only the modules that would not load."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from test_check import kmod, write
from test_check import target as check_target
from test_convert import target as convert_target

from elfbuilder import simple_module
from klpsym.cli.main import main

BOX = re.compile("[\u2500-\u257f]")  # box-drawing characters


def test_convert_dry_run_piped_is_plain_columns(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("klpsym.cli.convert.target_from_args", lambda args: convert_target())
    src = tmp_path / "m.ko"
    src.write_bytes(simple_module(("kallsyms_lookup_name",), ("_printk",)).build())
    assert main(["convert", str(src), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not BOX.search(out)
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("symbol "))
    assert lines[head].split() == ["symbol", "kind", "POS", "type", "address", "relocations"]
    # columns are aligned: "kind" starts where every row's kind starts
    col = lines[head].index("kind")
    rows = lines[head + 1: head + 3]
    assert {r.split()[0] for r in rows} == {"kallsyms_lookup_name", "_printk"}
    assert all(r[col - 2: col] == "  " and r[col] != " " for r in rows)


def test_build_table_piped_is_plain_columns(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from klpsym.cli.build import print_table
    from klpsym.kbuild.build import BuildResult, BuiltModule
    from klpsym.klp.convert import convert_file

    src = tmp_path / "m.ko"
    src.write_bytes(simple_module(("kallsyms_lookup_name",), ("_printk",)).build())
    result = convert_file(src, convert_target(), {}, in_place=True)
    built = BuildResult(tmp_path, convert_target(), [
        BuiltModule("m", tmp_path / "m.o", src, result.plan.symbols, result)])
    print_table(built)
    out = capsys.readouterr().out
    assert not BOX.search(out)
    lines = out.splitlines()
    assert lines[1].split() == ["module", "converted", "relocations", "guard", "signed"]
    assert lines[2].split()[:3] == ["m.ko", "kallsyms_lookup_name", "2"]


def _kernel_tree(tmp_path: Path) -> Path:
    top = tmp_path / "lib" / "modules" / "6.1.0-99-test" / "kernel"
    sub = top / "drivers" / "net" / "ethernet" / "intel"
    sub.mkdir(parents=True)
    for i in range(8):
        uses = ("_printk",) if i % 2 else (f"a_symbol_that_nobody_exports_anywhere_{i}",
                                          "another_missing_one")
        write(sub, kmod(uses, name=f"m{i}"), f"a_long_module_file_name_{i}.ko")
    return top


@pytest.mark.parametrize("width", [80, 160])
def test_check_on_a_terminal_reads(tmp_path: Path, width: int) -> None:
    from klpsym.cli.check import print_verdicts
    from klpsym.load.batch import check_paths, collect_modules

    top = _kernel_tree(tmp_path)
    checked = check_paths(collect_modules([top]), check_target(), 1, symbols=False)
    for failed in (False, True):
        out = io.StringIO()
        print_verdicts(checked.verdicts, check_target(), verbose=False, named=[top],
                       failed=failed, console=Console(file=out, width=width, highlight=False,
                                                      force_terminal=True, color_system=None))
        text = out.getvalue()
        assert str(top) not in text  # paths relative to the directory named
        assert max(len(line) for line in text.splitlines()) <= width
        rows = _summary_rows(text)
        expect = [i for i in range(8) if not failed or i % 2 == 0]
        assert [r[0] for r in rows] == [
            f"drivers/net/ethernet/intel/a_long_module_file_name_{i}.ko" for i in expect]
        # each reason whole, wrapped in its column (not cut to '…'); a row
        # is empty only where the module loads and needs nothing
        assert "…" not in text
        for i, (_, verdict, why) in zip(expect, rows, strict=True):
            assert verdict == ("loads" if i % 2 else "fails")
            assert why == ("" if i % 2 else re.sub(r"\s", "", (
                f"a_symbol_that_nobody_exports_anywhere_{i}: neither exported by "
                f"{check_target().release} nor in its kallsyms (+1 more)")))
        assert text.rstrip().endswith("4 fails, 4 loads")
        # each problem's stage, as off a terminal (rich took "[symbol]" for a style)
        assert re.search(r"^  error \[symbol\] a_symbol_that", text, re.M), text


def _summary_rows(text: str) -> list[tuple[str, str, str]]:
    """The summary table's rows as (module, verdict, why), each cell's
    wrapped lines joined (why without spaces: wrapping moves them)."""
    rows: list[list[str]] = []
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "module" in line and "verdict" in line)
    for line in lines[start + 2:]:
        if not line.startswith("\u2502"):
            break
        cells = [c.strip() for c in line.split("\u2502")[1:-1]]
        if cells[1]:
            rows.append(["", cells[1], ""])
        rows[-1][0] += cells[0]
        rows[-1][2] += re.sub(r"\s", "", cells[2])
    return [(a, b, c) for a, b, c in rows]


def test_check_failed_view_piped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import klpsym.cli.check as cli_check

    monkeypatch.setattr(cli_check, "target_for_check", lambda args: check_target())
    top = _kernel_tree(tmp_path)
    assert main(["check", str(top), "--failed"]) == 1
    out = capsys.readouterr().out
    assert not BOX.search(out)
    listed = [line.split()[0] for line in out.splitlines() if line.endswith(".ko  fails")
              or " fails  " in line]
    assert len(listed) == 4 and all(re.search(r"_[0246]\.ko$", p) for p in listed)
    assert "_1.ko" not in out and out.rstrip().endswith("4 fails, 4 loads")
