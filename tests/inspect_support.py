"""Comparing ``klpsym inspect`` with binutils readelf and kmod's modinfo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def table_rows(text: str, start: str) -> list[str]:
    """The lines of a readelf-style table after its column-header line that
    starts with ``start`` (stripped of trailing blanks), up to a blank line
    or the flags key."""
    lines = text.splitlines()
    out: list[str] = []
    on = False
    for line in lines:
        if line.strip().startswith(start):
            on = True
            continue
        if on:
            if not line.strip() or line.startswith("Key to Flags"):
                on = False
                continue
            out.append(line.rstrip())
    return out


def readelf(path: Path, *flags: str) -> str:
    return subprocess.run(["readelf", "-W", *flags, str(path)], capture_output=True, text=True,
                          check=True).stdout


def klpsym_out(*args: str | Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "klpsym.cli.main", *map(str, args)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def klpsym_json(*args: str | Path) -> dict[str, object]:
    result: dict[str, object] = json.loads(klpsym_out(*args, "--json"))
    return result


def compare_with_readelf(path: Path, inspect_text: dict[str, str]) -> list[str]:
    """Differences between klpsym's tables and readelf's, for -S, -s and -r
    (``inspect_text`` maps the view flag to klpsym's output)."""
    problems = []
    for flag, view, start in (("-S", "sections", "[Nr]"), ("-s", "symbols", "Num:"),
                              ("-r", "relocs", "Offset")):
        want = table_rows(readelf(path, flag), start)
        got = table_rows(inspect_text[view], start)
        if got != want:
            diff = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                        min(len(got), len(want)))
            problems.append(f"{path.name} {flag}: row {diff}: klpsym "
                            f"{got[diff] if diff < len(got) else '<end>'!r} readelf "
                            f"{want[diff] if diff < len(want) else '<end>'!r}")
    return problems
