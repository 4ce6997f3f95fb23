"""/proc/kallsyms (or a saved copy of it) read into a
:class:`~klpsym.kernel.kallsyms.KallsymsTable`: the kernel's own layout
straight from the bytes with numpy (:func:`_read_canonical`), anything else
line by line (:func:`_parse_lines`; the tests hold the two equal), the
result kept in the symbol cache.  The ADDRESS TYPE NAME columns parser
(:func:`columns`) serves System.map too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from klpsym.errors import InternalError, KernelSourceError, param
from klpsym.kernel import symcache
from klpsym.kernel._io import line_error, read_text_bytes
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.kernel.symcache import NameIndex

PROC_KALLSYMS = "/proc/kallsyms"


def read_proc_kallsyms(path: Path | str = PROC_KALLSYMS, *, cache: bool = True) -> KallsymsTable:
    """A ``/proc/kallsyms`` (or a saved copy): ``ADDR TYPE NAME`` for vmlinux,
    ``ADDR TYPE NAME\\t[MODULE]`` for modules, BPF programs and ftrace/kprobe
    trampolines -- every ``[...]`` line is dropped: only vmlinux counts.

    The parsed table is kept in the symbol cache (:mod:`klpsym.kernel.symcache`)
    unless ``cache`` is False."""
    p = Path(path)
    source = str(path)

    def parse() -> KallsymsTable:
        raw = read_text_bytes(
            p, "kallsyms",
            f"pass {param('kallsyms')} with a copy of the target's /proc/kallsyms, or "
            f"{param('system_map')}/{param('vmlinux')}",
        )
        return parse_proc_kallsyms(raw, source)

    def from_arrays(arrays: dict[str, np.ndarray], meta: dict[str, object]) -> KallsymsTable:
        return KallsymsTable.from_arrays(arrays, meta, source)

    key = symcache.proc_kallsyms_key(p) if source == PROC_KALLSYMS else symcache.file_key(p)
    return symcache.cached("kallsyms", p, key, enabled=cache, parse=parse,
                           to_arrays=KallsymsTable.to_arrays, from_arrays=from_arrays)


def parse_proc_kallsyms(text: str | bytes, source: str = PROC_KALLSYMS) -> KallsymsTable:
    """The vmlinux lines of a /proc/kallsyms text (module lines dropped)."""
    table = _read_canonical(text if isinstance(text, bytes)
                            else text.encode("utf-8", errors="surrogateescape"), source)
    if table is not None:
        return table
    return _parse_lines(text.decode("utf-8", errors="surrogateescape")
                        if isinstance(text, bytes) else text, source)


def _parse_lines(text: str, source: str) -> KallsymsTable:
    """:func:`parse_proc_kallsyms` line by line, for any text."""
    # One pass that keeps only the three fields of vmlinux lines (a list of
    # every line's fields would hold ~10 Python objects per line at once).
    addrs: list[str] = []
    types: list[str] = []
    names: list[str] = []
    for lineno, line in enumerate(_lines(text), 1):
        p = line.split()
        if len(p) == 3:
            addrs.append(p[0])
            types.append(p[1])
            names.append(p[2])
        elif p and not (len(p) == 4 and _is_module_tag(p[3])):
            raise line_error(source, lineno, "not a kallsyms line (ADDRESS TYPE NAME [MODULE])",
                             line)
    try:
        columns = columns_of(addrs, types, names)
    except BadRow as e:
        lineno, line = _nth_vmlinux_line(text, e.row)
        raise line_error(source, lineno, e.what, line) from None
    del addrs, types, names
    table = KallsymsTable(*columns, source)
    if not len(table):
        raise KernelSourceError(f"{source}: no vmlinux symbols (empty, or modules only)")
    if not table.has_addresses:
        table.notes += (_HIDDEN_NOTE,)
    return table


_HEX_DIGIT = np.full(256, 0xFF, dtype=np.uint8)
_HEX_DIGIT[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX_DIGIT[np.frombuffer(b"ABCDEF", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _read_canonical(raw: bytes, source: str) -> KallsymsTable | None:
    """The vmlinux lines of a /proc/kallsyms as the kernel prints it
    (s_show(): ``%px %c %s``, and ``\\t[%s]`` after it for modules), read with numpy
    from the bytes: no Python object per line, so the first read of a
    kernel's 100k+ lines neither holds ~45 MB of small strings at its peak
    nor leaves the allocator's arenas fragmented.  The table comes out in
    the compact form the symbol cache gives.

    None when the text strays from that layout anywhere (other address
    widths, other whitespace, empty lines, non-ASCII bytes): the
    line-by-line parser reads it then, with the same result for what it
    accepts and its error naming the line for what it does not.  Every line
    here is 16 hex digits, a space, a printable type letter, a space and a
    printable name, then for a module line a tab and ``[MODULE]``."""
    if raw and not raw.endswith(b"\n"):
        raw += b"\n"
    buf = np.frombuffer(raw, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if not len(ends):
        return None
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    if int((ends - starts).min()) < 20:  # 16 + 1 + 1 + 1 + a name of one byte
        return None
    # Every byte that is not printable ASCII (a space, a tab, the newlines,
    # ...), by position: two spaces a line at fixed places, and a tab on
    # module lines.  (Positions, not a running count over the whole text:
    # that would take 8 bytes per byte of text.)
    odd = np.flatnonzero((buf < 0x21) | (buf > 0x7E))
    odd = odd[buf[odd] != 10]
    line = np.searchsorted(ends, odd)
    count = np.bincount(line, minlength=len(ends))
    vmlinux, module = count == 2, count == 3
    if not bool(np.all(vmlinux | module)):
        return None
    col = odd - starts[line]
    space = buf[odd] == 32
    tab = buf[odd] == 9
    if not bool(np.all((space & ((col == 16) | (col == 18))) | (tab & module[line]))):
        return None
    tabs, tab_line = odd[tab], line[tab]
    if len(tabs) != int(module.sum()) or not (
            bool(np.all(tabs - starts[tab_line] >= 20))
            and bool(np.all(ends[tab_line] - tabs >= 3))
            and bool(np.all(buf[tabs + 1] == ord("[")))
            and bool(np.all(buf[ends[tab_line] - 1] == ord("]")))):
        return None  # (spaces at 16 and 18 and one tab: the tab is past the name)
    first, last = starts[vmlinux], ends[vmlinux]
    if not len(first):
        return None
    addresses = np.zeros(len(first), dtype=np.uint64)
    for k in range(16):  # a column of digits at a time: no 16-wide index matrix
        digit = _HEX_DIGIT[buf[first + k]]
        if bool(np.any(digit == 0xFF)):
            return None
        addresses <<= np.uint64(4)
        addresses |= digit
    codes = buf[first + 17].copy()
    # The names with their newlines are the byte ranges [first + 19, last].
    edge = np.zeros(len(buf) + 1, dtype=np.int8)
    edge[first + 19] = 1
    edge[last + 1] = -1
    blob = buf[np.cumsum(edge[:-1], dtype=np.int8).view(np.bool_)]
    name_starts = np.zeros(len(first) + 1, dtype=np.int64)
    np.cumsum(last - first - 18, out=name_starts[1:])
    has_addresses = bool(np.any(addresses))
    return KallsymsTable.compact(addresses, codes, NameIndex.from_blob(blob, name_starts), source,
                                 has_addresses=has_addresses,
                                 notes=() if has_addresses else (_HIDDEN_NOTE,))


def _lines(text: str, chunk: int = 1 << 20) -> Iterator[str]:
    """``text.split("\\n")``, a megabyte at a time (the whole list of a
    150k-line kallsyms would be ~15 MB of small strings at once)."""
    start, n = 0, len(text)
    while start < n:
        end = text.find("\n", min(start + chunk, n))
        if end < 0:
            end = n
        yield from text[start:end].split("\n")
        start = end + 1


def _nth_vmlinux_line(text: str, row: int) -> tuple[int, str]:
    """(line number, text) of the ``row``-th three-field line."""
    seen = -1
    for lineno, line in enumerate(text.split("\n"), 1):
        if len(line.split()) == 3:
            seen += 1
            if seen == row:
                return lineno, line
    raise InternalError(f"vmlinux line {row} not found again")  # pragma: no cover


_HIDDEN_NOTE = ("addresses are hidden (read without root, or kptr_restrict); "
                "the order is kept, which is all POS needs")


def _is_module_tag(tok: str) -> bool:
    return len(tok) >= 2 and tok[0] == "[" and tok[-1] == "]"


class BadRow(Exception):
    """Row ``row`` of the three columns is not ADDRESS TYPE NAME: ``what``."""

    def __init__(self, row: int, what: str) -> None:
        self.row, self.what = row, what


def columns(rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return columns_of([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


def columns_of(alist: list[str], tlist: list[str],
                nlist: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(alist)
    try:
        addrs = np.fromiter((int(a, 16) for a in alist), dtype=np.uint64, count=n)
    except (ValueError, OverflowError):
        for i, a in enumerate(alist):
            try:
                v = int(a, 16)
                if not 0 <= v < 1 << 64:
                    raise ValueError
            except ValueError:
                raise BadRow(i, f"address {a!r} is not a 64-bit hexadecimal number") from None
        raise  # pragma: no cover - the loop finds the row
    if any(len(t) != 1 for t in tlist):
        i = next(i for i, t in enumerate(tlist) if len(t) != 1)
        raise BadRow(i, f"type {tlist[i]!r} is not one letter")
    types = np.array(tlist, dtype="<U1")
    names = np.empty(n, dtype=object)
    names[:] = nlist
    return addrs, types, names
