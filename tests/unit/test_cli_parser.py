"""The command line's parser: a run builds only its command's parser, and
what the user sees (help, errors) is the same as with every parser built."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pytest

from klpsym.cli.main import COMMANDS, _parser_for, build_parser, main


def _output(argv: list[str], one_command: bool) -> tuple[str, str, int]:
    parser = _parser_for(argv) if one_command else build_parser()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            parser.parse_args(argv)
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    return out.getvalue(), err.getvalue(), code


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_is_the_same_with_one_parser(command: str) -> None:
    assert _parser_for([command, "--help"]) is build_parser(command)
    one = _output([command, "--help"], one_command=True)
    assert one == _output([command, "--help"], one_command=False)
    assert one[2] == 0 and f"usage: klpsym {command}" in one[0]


@pytest.mark.parametrize("argv", [["convert"], ["check", "--bogus"], ["addr"],
                                  ["convert", "m.ko", "-o", "x", "--in-place"]])
def test_command_errors_are_the_same_with_one_parser(argv: list[str]) -> None:
    one = _output(argv, one_command=True)
    assert one == _output(argv, one_command=False)
    assert one[2] == 2 and "error:" in one[1]


def test_main_help_lists_every_command_with_its_summary() -> None:
    proc = subprocess.run([sys.executable, "-m", "klpsym.cli.main", "--help"],
                          capture_output=True, text=True, check=True, timeout=600)
    listed = [line.split()[0] for line in proc.stdout.splitlines()
              if line.startswith("    ") and not line.startswith("      ")]
    assert listed == list(COMMANDS)
    assert "rewrite a built module so unexported symbols resolve" in proc.stdout


@pytest.mark.parametrize("argv", [["frobnicate"], ["--bogus", "convert", "m.ko"], ["-x"]])
def test_unknown_command_or_option_is_refused(argv: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert _output(argv, one_command=True) == _output(argv, one_command=False)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: klpsym [-h] [--version] COMMAND ...")
    if argv == ["frobnicate"]:
        assert "invalid choice: 'frobnicate' (choose from 'convert', 'build'" in err


def test_no_command_prints_the_full_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(f"    {c} " in out for c in COMMANDS)


def test_a_run_imports_only_its_command() -> None:
    code = ("import sys; from klpsym.cli.main import _parser_for; _parser_for(['convert']); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('klpsym.cli.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600).stdout.split()
    assert out == ["klpsym.cli.convert", "klpsym.cli.finish", "klpsym.cli.main",
                   "klpsym.cli.sources"]


@pytest.mark.parametrize("columns", [None, "100", "0", "-3", "wide"])
def test_help_width_is_shutils(columns: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """argparse's default width (shutil.get_terminal_size() - 2), found
    without importing shutil: $COLUMNS, else stdout's terminal, else 80."""
    import argparse
    import shutil

    from klpsym.cli.main import HelpFormatter, terminal_columns

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert terminal_columns() == shutil.get_terminal_size().columns
    ours, theirs = HelpFormatter("klpsym"), argparse.RawDescriptionHelpFormatter("klpsym")
    assert vars(ours).keys() == vars(theirs).keys()
    assert (ours._width, ours._max_help_position) == (theirs._width, theirs._max_help_position)


def test_the_build_parser_imports_no_shutil() -> None:
    """``klpsym build`` parses its arguments before it starts make: nothing
    it does not need is imported by then (shutil: zlib, bz2, lzma)."""
    code = ("import sys; from klpsym.cli.main import _parser_for; "
            "_parser_for(['build']).parse_known_args(['build', '.']); "
            "print('shutil' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600).stdout.split()
    assert out == ["False"]
