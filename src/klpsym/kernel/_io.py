"""Reading the kernel's text files with one-line errors that name the file."""

from __future__ import annotations

from pathlib import Path

from klpsym.errors import KernelSourceError
from klpsym.fsutil import read_file


def read_text(path: Path | str, what: str, fix: str = "") -> str:
    """The whole of a text file.

    ``what`` names the file's role ("Module.symvers", "kallsyms"); ``fix`` is
    appended to the message when the file is missing.  Bytes that are not
    UTF-8 are kept as surrogate escapes (symbol names are ASCII; a stray byte
    must not crash the reader, the line parser reports it).
    """
    return read_text_bytes(path, what, fix).decode("utf-8", errors="surrogateescape")


def read_text_bytes(path: Path | str, what: str, fix: str = "") -> bytes:
    """:func:`read_text` undecoded, for readers that work on the bytes."""
    p = Path(path)
    raw = read_file(p, what, KernelSourceError, fix)
    if b"\0" in raw[:65536]:
        raise KernelSourceError(f"{p}: is a binary file, not a {what} text file")
    return raw


def line_error(path: Path | str, lineno: int, what: str, line: str) -> KernelSourceError:
    """A malformed line, as ``path:line: what: 'text'`` (text shortened)."""
    shown = line if len(line) <= 80 else line[:77] + "..."
    shown = shown.encode("utf-8", errors="surrogateescape").decode("ascii", errors="replace")
    return KernelSourceError(f"{path}:{lineno}: {what}: {shown!r}")
