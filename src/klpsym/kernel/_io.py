"""Reading the kernel's text files with one-line errors that name the file."""

from __future__ import annotations

import errno
from pathlib import Path

from klpsym.errors import KernelSourceError


def read_text(path: Path | str, what: str, fix: str = "") -> str:
    """The whole of a text file.

    ``what`` names the file's role ("Module.symvers", "kallsyms"); ``fix`` is
    appended to the message when the file is missing.  Bytes that are not
    UTF-8 are kept as surrogate escapes (symbol names are ASCII; a stray byte
    must not crash the reader, the line parser reports it).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise KernelSourceError(f"{p}: no such file ({what}){_hint(fix)}") from None
    except IsADirectoryError:
        raise KernelSourceError(f"{p}: is a directory, expected the {what} file") from None
    except PermissionError:
        raise KernelSourceError(
            f"{p}: permission denied reading the {what} file{_hint(fix)}"
        ) from None
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise KernelSourceError(f"{p}: no such file ({what}){_hint(fix)}") from None
        raise KernelSourceError(f"{p}: cannot read the {what} file: {e.strerror}") from None
    if b"\0" in raw[:65536]:
        raise KernelSourceError(f"{p}: is a binary file, not a {what} text file")
    return raw.decode("utf-8", errors="surrogateescape")


def _hint(fix: str) -> str:
    return f"; {fix}" if fix else ""


def line_error(path: Path | str, lineno: int, what: str, line: str) -> KernelSourceError:
    """A malformed line, as ``path:line: what: 'text'`` (text shortened)."""
    shown = line if len(line) <= 80 else line[:77] + "..."
    shown = shown.encode("utf-8", errors="surrogateescape").decode("ascii", errors="replace")
    return KernelSourceError(f"{path}:{lineno}: {what}: {shown!r}")
