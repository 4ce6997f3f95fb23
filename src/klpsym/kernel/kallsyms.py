"""vmlinux's kallsyms table, and the livepatch symbol position (POS) rule.

The table's sources are elsewhere: /proc/kallsyms in
:mod:`klpsym.kernel.proc_kallsyms`, System.map in
:mod:`klpsym.kernel.system_map`, vmlinux in :mod:`klpsym.kernel.vmlinux`
(the last two through :mod:`klpsym.kernel.scripts_kallsyms`).

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

import numpy as np

from klpsym.errors import KernelSourceError, param
from klpsym.kernel.symcache import NameIndex
from klpsym.kernel.sympos import PosError, choose_pos

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
            f"({listed}); choose one with {param('sympos')} {name}=POS"
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
        choice = choose_pos(cands, sympos)  # livepatch's rule
        if choice.error == PosError.MISSING:
            raise SymbolNotFoundError(
                f"symbol {name} is not in vmlinux's kallsyms ({self.source}); it is neither "
                "exported nor resolvable by livepatch on this kernel"
            )
        if choice.error == PosError.NEGATIVE:
            raise SymbolLookupError(f"{param('sympos')} {name}={sympos}: POS must be 0 or more")
        if choice.error == PosError.AMBIGUOUS:
            raise AmbiguousSymbolError(name, cands, self.source)
        if choice.chosen is None or choice.pos is None:  # BEYOND
            only = "once" if len(cands) == 1 else f"{len(cands)} times"
            raise SymbolNotFoundError(
                f"{param('sympos')} {name}={sympos}: {name} occurs only {only} in "
                f"{self.source} "
                f"({', '.join(c.describe() for c in cands)})"
            )
        pos, chosen = choice.pos, choice.chosen
        if chosen.address == 0:
            raise SymbolNotFoundError(
                f"symbol {name} is at address 0 in {self.source}; livepatch treats address 0 "
                "as 'not found' (klp_find_object_symbol), so it cannot be resolved"
            )
        return pos, chosen
