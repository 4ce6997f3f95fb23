"""Plain text output: aligned columns for pipes, files and logs.

Box-drawing tables (rich) are for terminals only; anything else (a pipe,
a file, DKMS's make.log) gets the same rows as left-aligned columns two
spaces apart, the last one ragged, which grep, awk and diff read.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from itertools import chain
from typing import TextIO

from klpsym.cli.main import printable


def is_terminal(out: TextIO | None = None) -> bool:
    stream = sys.stdout if out is None else out
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real stream
        return False


def columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart (the last one ragged)."""
    if not "".join(chain.from_iterable(rows)).isprintable():  # one pass, mostly
        rows = [tuple(map(printable, row)) for row in rows]  # widths as printed
    widths = [max(map(len, col)) for col in zip(*rows, strict=True)][:-1]
    return ["  ".join([cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
                      + [row[-1]]).rstrip() for row in rows]
