"""The data of ``klpsym check``'s verdicts: one :class:`ModuleVerdict` per
module, its :class:`Problem` list and its symbols (:class:`SymbolCheck`),
and what is decided across the verdicts of one check (dependencies).
:mod:`klpsym.load.check` makes them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

from klpsym.klp.classify import LOADER_LABELS, Fate, export_fate


class Verdict(StrEnum):
    LOADS = "loads"
    LOADS_AFTER = "loads-after"  # once the modules it uses are loaded
    FAILS = "fails"
    ERROR = "error"  # not a module klpsym can read


class Stage(StrEnum):
    SIGNATURE = "signature"
    ELF = "elf"
    VERMAGIC = "vermagic"
    MODVERSIONS = "modversions"
    LICENSE = "license"
    SYMBOL = "symbol"
    GPL = "gpl-only"
    NAMESPACE = "namespace"
    TAINT = "taint"
    RELOCATION = "relocation"
    KLP = "klp"
    EXPORTS = "exports"
    DEPENDENCY = "dependency"


@dataclass(frozen=True)
class Problem:
    stage: Stage
    message: str  # klpsym's explanation, one line
    kernel: tuple[str, ...] = ()  # the lines the kernel logs for it
    symbol: str | None = None
    fatal: bool = True


@dataclass(slots=True)
class SymbolCheck:
    name: str
    fate: Fate  # printed in the loader's words (klp.classify.LOADER_LABELS)
    ok: bool
    provider: str | None = None  # "vmlinux" or the exporting module's name
    gpl_only: bool = False
    namespace: str = ""
    crc: int | None = None  # the module's __versions CRC
    exporter_crc: int | None = None
    pos: int | None = None  # for klp: POS `klpsym convert` would write / the one written
    candidates: int = 0  # same-name kallsyms entries
    reason: str = ""


SYMBOL_FIELDS = tuple(f.name for f in fields(SymbolCheck))




def symbol_record(s: SymbolCheck) -> tuple[Any, ...]:
    """``s`` as a tuple of its fields in SYMBOL_FIELDS' order, the fate in
    the loader's words (what the check's JSON prints)."""
    return (s.name, LOADER_LABELS[s.fate], s.ok, s.provider, s.gpl_only, s.namespace, s.crc,
            s.exporter_crc, s.pos, s.candidates, s.reason)


class Provider(NamedTuple):
    """Who exports a symbol, as find_symbol() would find it."""

    module: str  # "vmlinux" or a module name
    gpl_only: bool
    namespace: str
    crc: int | None
    proprietary: bool  # the exporter is tainted P (batch modules only)
    fate: Fate  # EXPORTED or MODULE_EXPORT


def provider(module: str, gpl_only: bool, namespace: str, crc: int | None,
             proprietary: bool = False) -> Provider:
    return Provider(module, gpl_only, namespace, crc, proprietary, export_fate(module))


#: A symbol an export resolves plainly (see ModuleVerdict.plain): its place
#: in the loader's order, its name, its provider and the module's CRC of it.
PlainSymbol = tuple[int, str, Provider, "int | None"]

_T = TypeVar("_T")


@dataclass(eq=False)
class ModuleVerdict:
    path: str
    name: str
    verdict: Verdict
    problems: list[Problem] = field(default_factory=list)
    taints: list[str] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    vermagic: str | None = None
    expected_vermagic: tuple[str, ...] = ()
    # False where a batch check left the symbols out (load.batch.check_paths
    # with symbols=False, for a module that would load)
    symbols_listed: bool = True
    # The symbols, in the loader's order, are kept in two lists: those with
    # a check of their own, and those an export resolves plainly, each with
    # its place in the order.  A SymbolCheck is made for the plain ones only
    # when ``symbols`` is asked for: most never are, and making them all was
    # a third of a whole kernel's check.
    checked: list[SymbolCheck] = field(default_factory=list, repr=False)
    plain: list[PlainSymbol] = field(default_factory=list, repr=False)

    @property
    def symbols(self) -> list[SymbolCheck]:
        """Every symbol, in the loader's order."""
        if self.plain:
            self.checked = self._merged(_plain_check, _same)
            self.plain = []
        return self.checked

    @symbols.setter
    def symbols(self, value: list[SymbolCheck]) -> None:
        self.checked = list(value)
        self.plain = []

    def add_symbol(self, check: SymbolCheck) -> None:
        """``check`` after the symbols so far."""
        self.checked.append(check)

    def symbol_records(self) -> list[tuple[Any, ...]]:
        """The symbols as :func:`symbol_record` tuples, in the loader's
        order, without making SymbolCheck objects (for reports of many
        modules)."""
        return self._merged(_plain_record, symbol_record)

    def _merged(self, of_plain: Callable[[PlainSymbol], _T],
                of_checked: Callable[[SymbolCheck], _T]) -> list[_T]:
        out: list[_T] = []
        checked = iter(self.checked)
        for row in self.plain:
            while len(out) < row[0]:
                out.append(of_checked(next(checked)))
            out.append(of_plain(row))
        out += map(of_checked, checked)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModuleVerdict):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def _key(self) -> tuple[object, ...]:
        return (self.path, self.name, self.verdict, self.problems, self.symbols, self.taints,
                self.depends, self.notes, self.vermagic, self.expected_vermagic,
                self.symbols_listed)

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    @property
    def would_load(self) -> bool:
        return self.verdict in (Verdict.LOADS, Verdict.LOADS_AFTER)

    def kernel_messages(self) -> list[str]:
        return [line for p in self.problems for line in p.kernel]


def _same(s: SymbolCheck) -> SymbolCheck:
    return s


def _plain_check(row: PlainSymbol) -> SymbolCheck:
    _, name, p, crc = row
    return SymbolCheck(name, p.fate, True, p.module, p.gpl_only, "", crc, p.crc)


def _plain_record(row: PlainSymbol) -> tuple[Any, ...]:
    _, name, p, crc = row
    return (name, LOADER_LABELS[p.fate], True, p.module, p.gpl_only, "", crc, p.crc, None, 0, "")


def propagate_dependencies(verdicts: Iterable[ModuleVerdict],
                           ) -> list[tuple[ModuleVerdict, list[str]]]:
    """A module that needs a module of the same check which would not load
    would not load either.  Returns each module failed here with the
    modules it needed (see :func:`fail_for_dependencies`)."""
    by_name = {v.name: v for v in verdicts if v.verdict != Verdict.ERROR}
    # the names of the modules that would not load, as they become so
    failing = {name for name, v in by_name.items() if v.verdict == Verdict.FAILS}
    failed: list[tuple[ModuleVerdict, list[str]]] = []
    changed = bool(failing)
    while changed:
        changed = False
        for v in by_name.values():
            if v.verdict != Verdict.LOADS_AFTER or failing.isdisjoint(v.depends):
                continue
            bad = [d for d in v.depends if d in failing]
            fail_for_dependencies(v, bad)
            failing.add(v.name)
            failed.append((v, bad))
            changed = True
    return failed


def fail_for_dependencies(v: ModuleVerdict, bad: list[str]) -> None:
    v.problems.append(Problem(Stage.DEPENDENCY, f"needs {', '.join(bad)}, which would not load"))
    v.verdict = Verdict.FAILS


def summary_reason(v: ModuleVerdict) -> str:
    """One line: why it would not load, or what it needs."""
    if v.verdict == Verdict.ERROR:
        return v.problems[0].message if v.problems else "unreadable"
    fatal = v.fatal
    if fatal:
        first = fatal[0]
        more = f" (+{len(fatal) - 1} more)" if len(fatal) > 1 else ""
        return first.message + more
    if v.depends:
        return "after " + ", ".join(v.depends)
    return ""
