"""vmlinux's kallsyms table, and the livepatch symbol position (POS) rule.

Livepatch resolves ``.klp.sym.vmlinux.NAME,POS`` by walking vmlinux's
kallsyms in index order (kernel/livepatch/core.c klp_find_object_symbol() with
klp_find_callback(), or klp_match_callback() since v6.2, whose name-sorted
walk keeps same-name entries in (address, index) order) and counting the
entries called NAME:

* POS 0: NAME must occur exactly once;
* POS N > 0: the N-th occurrence (1-based) -- N = 1 is also fine for a
  unique name;
* an entry whose address is 0 counts as "not found" (``args.addr == 0``).

So all POS needs is the *order* of vmlinux's kallsyms entries: /proc/kallsyms
read without privileges (addresses shown as 0) is as good as root's.

kallsyms is not System.map: scripts/kallsyms (v6.1, used by Debian bookworm)
reads the mksysmap output and drops more (``is_ignored_symbol()``:
kallsyms_* tables, absolute symbols, some arch stubs; ``symbol_valid()``:
without CONFIG_KALLSYMS_ALL everything outside [_stext, _etext] and
[_sinittext, _einittext]; names of KSYM_NAME_LEN or more), relabels per-cpu
symbols as ``A`` (CONFIG_KALLSYMS_ABSOLUTE_PERCPU) and sorts by address with
its own tie-breaks (``compare_symbols()``).  :func:`read_system_map` applies
the same rules so its POS match the running kernel's.

Type letters are informational only: POS never depends on them.  They follow
nm's meaning (t/T text, d/D b/B r/R data, w/W weak, A absolute/per-cpu) up to
6.12, but Debian's 7.2 /proc/kallsyms labels global variables ``T``
(``dmesg_restrict``, ``jiffies``; see
:func:`klpsym.kernel.version.kallsyms_letters_tell_data`).  Whether a symbol
is data or text is therefore decided by :meth:`KallsymsTable.kind`: by its
address against kallsyms' own text ranges when addresses are known, from the
letter only for kernels whose letters are trusted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from klpsym.errors import KernelSourceError, arg
from klpsym.kernel import symcache
from klpsym.kernel._io import line_error, read_text, read_text_bytes
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.symcache import NameIndex
from klpsym.kernel.version import (
    KernelVersion,
    kallsyms_keeps_start_stop,
    ksym_name_len,
)

# -- errors -----------------------------------------------------------------------


class SymbolLookupError(KernelSourceError):
    """A name cannot be turned into a livepatch symbol position."""


class SymbolNotFoundError(SymbolLookupError):
    """The name is not in vmlinux's kallsyms (or not at the asked position)."""


class AmbiguousSymbolError(SymbolLookupError):
    """The name occurs more than once in kallsyms and no position was chosen."""

    def __init__(self, name: str, candidates: Sequence[Candidate], source: str,
                 message: str | None = None) -> None:
        self.name = name
        self.candidates = tuple(candidates)
        self.source = source
        listed = ", ".join(c.describe() for c in self.candidates)
        super().__init__(message or (
            f"symbol {name} is ambiguous: {len(self.candidates)} entries in {source} "
            f"({listed}); choose one with {arg('sympos')} {name}=POS"
        ))


# -- the table -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """One kallsyms entry of a name."""

    pos: int  # 1-based among the entries of this name, in kallsyms order
    type: str  # the type letter
    address: int | None  # None when the source shows no addresses
    index: int  # row in the table (kallsyms index)

    def describe(self) -> str:
        addr = "address unknown" if self.address is None else f"{self.address:#x}"
        return f"POS {self.pos}: {self.type} {addr}"


TEXT_TYPES = frozenset("tTwW")
DATA_TYPES = frozenset("dDbBrRgGsSvVcCuA")


def is_text(entry: str | Candidate) -> bool:
    """t/T (and w/W, which the kernel uses for weak functions).  Takes a type
    letter or a Candidate."""
    letter = entry.type if isinstance(entry, Candidate) else entry
    return letter in TEXT_TYPES


def is_data(entry: str | Candidate) -> bool:
    """d/D b/B r/R (and small-data, weak-object, common, unique, and ``A``,
    which kallsyms uses for per-cpu variables).  Takes a type letter or a
    Candidate.  See the module docstring: letters are hints."""
    letter = entry.type if isinstance(entry, Candidate) else entry
    return letter in DATA_TYPES


class KallsymsTable:
    """vmlinux's symbols in kallsyms order, as numpy arrays.

    ``addresses`` (uint64; all 0 when unknown), ``types`` (``<U1``),
    ``names`` (object array of str).  ``has_addresses`` is False for a
    /proc/kallsyms read without privileges or under kptr_restrict.  A table
    read from the symbol cache (:mod:`klpsym.kernel.symcache`) keeps its
    names in a :class:`~klpsym.kernel.symcache.NameIndex` and makes
    ``types``/``names`` only when asked.
    """

    def __init__(self, addresses: np.ndarray, types: np.ndarray, names: np.ndarray,
                 source: str, *, has_addresses: bool | None = None,
                 notes: Sequence[str] = ()) -> None:
        n = len(names)
        if len(addresses) != n or len(types) != n:
            raise ValueError("addresses, types and names differ in length")
        self.addresses = np.ascontiguousarray(addresses, dtype=np.uint64)
        self._types: np.ndarray | None = np.asarray(types, dtype="<U1")
        self._type_codes: np.ndarray | None = None
        self._names: np.ndarray | None = np.asarray(names, dtype=object)
        self._nidx: NameIndex | None = None
        self.source = source
        self.has_addresses = bool(np.any(self.addresses)) if has_addresses is None \
            else has_addresses
        self.notes = tuple(notes)
        self._first: dict[str, int] | None = None
        self._dups: dict[str, list[int]] = {}
        self._text_ranges: list[tuple[int, int]] | None = None

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[int, str, str]], source: str, *,
                  has_addresses: bool | None = None,
                  notes: Sequence[str] = ()) -> KallsymsTable:
        """From (address, type, name) tuples already in kallsyms order."""
        addresses = np.fromiter((r[0] for r in rows), dtype=np.uint64, count=len(rows))
        types = np.array([r[1] for r in rows], dtype="<U1")
        names = np.empty(len(rows), dtype=object)
        names[:] = [r[2] for r in rows]
        return cls(addresses, types, names, source, has_addresses=has_addresses, notes=notes)

    # -- the cached form ---------------------------------------------------------

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """The table as plain arrays and metadata (for the symbol cache)."""
        index = self._nidx if self._nidx is not None else NameIndex.build(self.names.tolist())
        codes = np.frombuffer("".join(self.types.tolist()).encode("latin-1"), dtype=np.uint8)
        return ({"addresses": self.addresses.astype("<u8"), "types": codes,
                 **index.arrays("names_")},
                {"has_addresses": self.has_addresses, "notes": list(self.notes)})

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, object],
                    source: str) -> KallsymsTable:
        """The inverse of :meth:`to_arrays`; names stay in their index."""
        index = NameIndex.from_arrays(arrays, "names_")
        addresses, codes = arrays["addresses"], arrays["types"]
        if len(addresses) != len(index) or len(codes) != len(index):
            raise ValueError("symbol cache entry with columns of different lengths")
        notes = meta["notes"]
        return cls.compact(addresses, codes, index, source,
                           has_addresses=bool(meta["has_addresses"]),
                           notes=tuple(str(n) for n in notes) if isinstance(notes, list) else ())

    @classmethod
    def compact(cls, addresses: np.ndarray, codes: np.ndarray, index: NameIndex, source: str,
                *, has_addresses: bool, notes: Sequence[str] = ()) -> KallsymsTable:
        """A table whose names stay in ``index`` and whose type letters stay
        bytes (``codes``, uint8); ``types``/``names`` are made when asked."""
        table = cls.__new__(cls)
        table.addresses = addresses.astype(np.uint64, copy=False)
        table._types = None
        table._type_codes = codes
        table._names = None
        table._nidx = index
        table.source = source
        table.has_addresses = has_addresses
        table.notes = tuple(notes)
        table._first, table._dups = None, {}
        table._text_ranges = None
        return table

    @property
    def types(self) -> np.ndarray:
        if self._types is None:
            assert self._type_codes is not None
            self._types = np.array(list(self._type_codes.tobytes().decode("latin-1")),
                                   dtype="<U1")
        return self._types

    @property
    def names(self) -> np.ndarray:
        if self._names is None:
            assert self._nidx is not None
            names = np.empty(len(self._nidx), dtype=object)
            names[:] = self._nidx.names()
            self._names = names
        return self._names

    def _type_of(self, row: int) -> str:
        if self._type_codes is not None:
            return chr(int(self._type_codes[row]))
        return str(self.types[row])

    # -- queries -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.addresses)

    def __repr__(self) -> str:
        return f"<KallsymsTable {len(self)} symbols from {self.source}>"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.rows_of(name))

    def __iter__(self) -> Iterator[tuple[int, str, str]]:
        names, types = self.names, self.types
        for i in range(len(self)):
            yield int(self.addresses[i]), str(types[i]), str(names[i])

    def _index(self) -> dict[str, int]:
        if self._first is None:
            first: dict[str, int] = {}
            dups: dict[str, list[int]] = {}
            setdefault = first.setdefault
            for i, name in enumerate(self.names.tolist()):
                j = setdefault(name, i)
                if j != i:
                    lst = dups.get(name)
                    if lst is None:
                        dups[name] = [j, i]
                    else:
                        lst.append(i)
            self._first, self._dups = first, dups
        return self._first

    def prefetch(self, names: Sequence[str]) -> None:
        """Look many names up at once (cheaper than one by one with a cached
        table); later :meth:`rows_of` calls for them are dict lookups."""
        if self._nidx is not None:
            self._nidx.prefetch(names)

    def rows_of(self, name: str) -> list[int]:
        """Table rows holding ``name``, in kallsyms order."""
        if self._nidx is not None:
            return list(self._nidx.rows(name))
        i = self._index().get(name)
        if i is None:
            return []
        return list(self._dups.get(name, (i,)))

    def count(self, name: str) -> int:
        return len(self.rows_of(name))

    def text_ranges(self) -> list[tuple[int, int]]:
        """[_stext, _etext] and [_sinittext, _einittext] from the table itself,
        when it has addresses: what scripts/kallsyms calls text (text_ranges[]
        of scripts/kallsyms.c, unchanged since before v5.8)."""
        if self._text_ranges is None:
            out = []
            for lo, hi in (("_stext", "_etext"), ("_sinittext", "_einittext")):
                a, b = self.rows_of(lo), self.rows_of(hi)
                if self.has_addresses and len(a) == 1 and len(b) == 1:
                    out.append((int(self.addresses[a[0]]), int(self.addresses[b[0]])))
            self._text_ranges = out
        return self._text_ranges

    def kind(self, entry: Candidate, *, letters_tell_data: bool = True) -> str:
        """``"text"``, ``"data"`` or ``""`` (cannot tell) for one entry.

        With addresses and the text range markers: text when the address is
        inside [_stext, _etext] or [_sinittext, _einittext], data otherwise
        (variables, rodata, bss, per-cpu), whatever the letter says.  Without
        them: the letter, when ``letters_tell_data`` (the target kernel's
        letters are trusted, see kallsyms_letters_tell_data()); else ``""``."""
        ranges = self.text_ranges() if entry.address is not None else []
        if ranges and entry.address is not None:
            inside = any(lo <= entry.address <= hi for lo, hi in ranges)
            return "text" if inside else "data"
        if not letters_tell_data:
            return ""
        if is_data(entry):
            return "data"
        return "text" if is_text(entry) else ""

    def duplicated_names(self) -> dict[str, int]:
        """Every name that occurs more than once, with its count."""
        if self._nidx is not None:
            return {k: len(v) for k, v in self._nidx.duplicates().items()}
        self._index()
        return {k: len(v) for k, v in self._dups.items()}

    def candidates(self, name: str) -> list[Candidate]:
        """Every entry called ``name``, POS 1..N in kallsyms order."""
        return [
            Candidate(pos, self._type_of(i),
                      int(self.addresses[i]) if self.has_addresses else None, i)
            for pos, i in enumerate(self.rows_of(name), 1)
        ]

    def sympos(self, name: str) -> int:
        """The POS livepatch needs for ``name`` with no choice made: 0 when
        it is unique.  Raises SymbolNotFoundError or AmbiguousSymbolError."""
        return self.resolve(name)[0]

    def resolve(self, name: str, sympos: int | None = None) -> tuple[int, Candidate]:
        """The POS to write for ``name`` and the entry it designates.

        ``sympos`` is the user's choice (``--sympos NAME=N``); None or 0
        means "must be unique" and gives POS 0.
        """
        cands = self.candidates(name)
        if not cands:
            raise SymbolNotFoundError(
                f"symbol {name} is not in vmlinux's kallsyms ({self.source}); it is neither "
                "exported nor resolvable by livepatch on this kernel"
            )
        if sympos is not None and sympos < 0:
            raise SymbolLookupError(f"{arg('sympos')} {name}={sympos}: POS must be 0 or more")
        if not sympos:
            if len(cands) > 1:
                raise AmbiguousSymbolError(name, cands, self.source)
            pos, chosen = 0, cands[0]
        else:
            if sympos > len(cands):
                only = "once" if len(cands) == 1 else f"{len(cands)} times"
                raise SymbolNotFoundError(
                    f"{arg('sympos')} {name}={sympos}: {name} occurs only {only} in {self.source} "
                    f"({', '.join(c.describe() for c in cands)})"
                )
            pos, chosen = sympos, cands[sympos - 1]
        if chosen.address == 0:
            raise SymbolNotFoundError(
                f"symbol {name} is at address 0 in {self.source}; livepatch treats address 0 "
                "as 'not found' (klp_find_object_symbol), so it cannot be resolved"
            )
        return pos, chosen


# -- /proc/kallsyms ---------------------------------------------------------------

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
            f"pass {arg('kallsyms')} with a copy of the target's /proc/kallsyms, or "
            f"{arg('system_map')}/{arg('vmlinux')}",
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
        columns = _columns_of(addrs, types, names)
    except _BadRow as e:
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
    raise AssertionError("row out of range")  # pragma: no cover


_HIDDEN_NOTE = ("addresses are hidden (read without root, or kptr_restrict); "
                "the order is kept, which is all POS needs")


def _is_module_tag(tok: str) -> bool:
    return len(tok) >= 2 and tok[0] == "[" and tok[-1] == "]"


class _BadRow(Exception):
    def __init__(self, row: int, what: str) -> None:
        self.row, self.what = row, what


def _columns(rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _columns_of([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


def _columns_of(alist: list[str], tlist: list[str],
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
                raise _BadRow(i, f"address {a!r} is not a 64-bit hexadecimal number") from None
        raise  # pragma: no cover - the loop finds the row
    if any(len(t) != 1 for t in tlist):
        i = next(i for i, t in enumerate(tlist) if len(t) != 1)
        raise _BadRow(i, f"type {tlist[i]!r} is not one letter")
    types = np.array(tlist, dtype="<U1")
    names = np.empty(n, dtype=object)
    names[:] = nlist
    return addrs, types, names


# -- System.map -------------------------------------------------------------------

_DEBIAN_STUB = "The real System.map is in"


def is_debian_stub(head: str) -> bool:
    """Whether ``head`` (the start of a System.map) is Debian's one-line
    placeholder ``ffffffffffffffff B The real System.map is in the
    linux-image-<version>-dbg package``."""
    return _DEBIAN_STUB in head


def reject_debian_stub(head: str, source: str) -> None:
    """Raise if ``head`` is Debian's placeholder (:func:`is_debian_stub`)."""
    if is_debian_stub(head):
        raise KernelSourceError(
            f"{source}: is Debian's placeholder ('The real System.map is in the "
            f"linux-image-<version>-dbg package'), not a symbol map; use {arg('kallsyms')} with "
            "the target's /proc/kallsyms, the System.map from linux-image-<release>-dbg, or "
            f"{arg('vmlinux')} /usr/lib/debug/boot/vmlinux-<release> from that package"
        )


def read_system_map(path: Path | str, *, config: KernelConfig | None = None,
                    version: KernelVersion | None = None) -> KallsymsTable:
    """A System.map (``nm -n vmlinux`` filtered by scripts/mksysmap), turned
    into what scripts/kallsyms keeps, in kallsyms order.

    ``config`` supplies CONFIG_KALLSYMS_ALL and CONFIG_KALLSYMS_ABSOLUTE_PERCPU
    (without it KALLSYMS_ALL=y is assumed, as in distribution kernels, and a
    note says so); ``version`` the version-dependent rules (default: v6.1).
    """
    text = read_text(
        path, "System.map",
        f"pass the System.map of the target kernel's build (or {arg('kallsyms')}/"
        f"{arg('vmlinux')})",
    )
    source = str(path)
    reject_debian_stub(text[:1024], source)
    lines = text.split("\n")
    parts = [ln.split() for ln in lines]
    ok = [len(p) == 3 or not p for p in parts]
    if not all(ok):
        bad = ok.index(False)
        raise line_error(source, bad + 1, "not a System.map line (ADDRESS TYPE NAME)",
                         lines[bad])
    rows = [p for p in parts if p]
    try:
        addrs, types, names = _columns(rows)
    except _BadRow as e:
        i = [k for k, p in enumerate(parts) if p][e.row]
        raise line_error(source, i + 1, e.what, lines[i]) from None
    return kallsyms_from_nm(addrs, types, names, source, config=config, version=version)


# -- scripts/kallsyms emulation (shared with vmlinux.py) --------------------------

# is_ignored_symbol() of scripts/kallsyms.c (v6.1.192, plus the "$", ".L" and
# "__crc_" prefixes it had before mksysmap took them over; harmless to keep).
_IGNORED_NAMES = frozenset({
    "kallsyms_addresses", "kallsyms_offsets", "kallsyms_relative_base",
    "kallsyms_num_syms", "kallsyms_names", "kallsyms_markers",
    "kallsyms_token_table", "kallsyms_token_index", "kallsyms_seqs_of_names",
    "_SDA_BASE_", "_SDA2_BASE_",
})
_IGNORED_PREFIXES = (
    "$", ".L", "__crc_",
    "__efistub_", "__kvm_nvhe_$", "__kvm_nvhe_.L", "__AArch64ADRPThunk_",
    "__ARMV5PILongThunk_", "__ARMV7PILongThunk_", "__ThumbV7PILongThunk_",
    "__LA25Thunk_", "__microLA25Thunk_", "__kcfi_typeid_",
)
_IGNORED_SUFFIXES = ("_from_arm", "_from_thumb", "_veneer")
_IGNORED_MATCHES = (".long_branch.", ".plt_branch.")
_KEPT_ABSOLUTE = frozenset({
    "__kernel_syscall_via_break", "__kernel_syscall_via_epc", "__kernel_sigtramp", "__gp",
})


def _ignored(name: str, type_: str) -> bool:
    if type_ in "UuNn":
        return True
    if type_ in "Aa" and name not in _KEPT_ABSOLUTE:
        return True
    return (
        name in _IGNORED_NAMES
        or name.startswith(_IGNORED_PREFIXES)
        or name.endswith(_IGNORED_SUFFIXES)
        or any(m in name for m in _IGNORED_MATCHES)
    )


def _linker_provided(name: str) -> bool:
    """may_be_linker_script_provide_symbol() of scripts/kallsyms.c."""
    if len(name) < 8 or not name.startswith("__"):
        return False
    return (name.startswith(("__start_", "__stop_", "__end_"))
            or name.endswith(("_start", "_end")))


def kallsyms_from_nm(addresses: np.ndarray, types: np.ndarray, names: np.ndarray,
                     source: str, *, config: KernelConfig | None,
                     version: KernelVersion | None) -> KallsymsTable:
    """Apply scripts/kallsyms to ``nm -n``-ordered symbols (after mksysmap):
    read_symbol() filters, shrink_table(), make_percpus_absolute(),
    sort_symbols()."""
    notes: list[str] = []
    if version is None:
        version = KernelVersion(6, 1, 0, "6.1 (assumed)")
        notes.append("kernel version unknown: kallsyms rules of v6.1 assumed")
    if config is None:
        all_symbols, absolute_percpu = True, True
        notes.append("no .config: CONFIG_KALLSYMS_ALL=y and CONFIG_KALLSYMS_ABSOLUTE_PERCPU=y "
                     "assumed (as in distribution kernels)")
    else:
        all_symbols = config.enabled("KALLSYMS_ALL")
        absolute_percpu = config.enabled("KALLSYMS_ABSOLUTE_PERCPU")
    name_len = ksym_name_len(version)
    name_list: list[str] = names.tolist()
    type_list: list[str] = types.tolist()

    # read_symbol(): too long names and is_ignored_symbol()
    keep = np.fromiter(
        (len(n) < name_len and not _ignored(n, t)
         for n, t in zip(name_list, type_list, strict=True)),
        dtype=bool, count=len(name_list),
    )
    # check_symbol_range() sees only the symbols read_symbol() kept; the last wins.
    ranges: dict[str, int] = {}
    wanted = {"_stext", "_etext", "_sinittext", "_einittext", "__per_cpu_start",
              "__per_cpu_end"}
    for i in np.flatnonzero(keep).tolist():
        if name_list[i] in wanted:
            ranges[name_list[i]] = int(addresses[i])

    if not all_symbols:  # symbol_valid()
        valid = np.zeros(len(name_list), dtype=bool)
        text_end = ranges.get("_etext", 0)
        init_end = ranges.get("_einittext", 0)
        for lo_name, hi in (("_stext", text_end), ("_sinittext", init_end)):
            lo = ranges.get(lo_name, 0)
            valid |= (addresses >= np.uint64(lo)) & (addresses <= np.uint64(hi))
        at_end = ((addresses == np.uint64(text_end)) & (names != "_etext")) | \
                 ((addresses == np.uint64(init_end)) & (names != "_einittext"))
        valid &= ~at_end
        if kallsyms_keeps_start_stop(version):
            valid |= np.fromiter((n.startswith(("__start_", "__stop_")) for n in name_list),
                                 dtype=bool, count=len(name_list))
        keep &= valid

    idx = np.flatnonzero(keep)
    if not len(idx):
        raise KernelSourceError(f"{source}: no symbol is left after kallsyms' filtering")
    addr_k = addresses[idx]
    types_k = types[idx].copy()
    names_k = names[idx]
    if absolute_percpu and "__per_cpu_start" in ranges:  # make_percpus_absolute()
        lo, hi = ranges["__per_cpu_start"], ranges.get("__per_cpu_end", 0)
        types_k[(addr_k >= np.uint64(lo)) & (addr_k <= np.uint64(hi))] = "A"

    # sort_symbols(): address, then non-weak first, then not linker-provided
    # first, then fewer leading underscores, then input order.
    kept_names: list[str] = names_k.tolist()
    weak = np.isin(types_k, np.array(["w", "W"]))
    provided = np.fromiter((_linker_provided(n) for n in kept_names), dtype=bool,
                           count=len(kept_names))
    unders = np.fromiter((len(n) - len(n.lstrip("_")) for n in kept_names), dtype=np.int64,
                         count=len(kept_names))
    start_pos = np.arange(len(kept_names))
    order = np.lexsort((start_pos, unders, provided, weak, addr_k))
    return KallsymsTable(addr_k[order], types_k[order], names_k[order], source,
                         notes=notes)
