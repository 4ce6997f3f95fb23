"""One classification of a module's undefined symbol: its fate, and for a
symbol livepatch resolves, its POS and how many kallsyms entries share its
name.

``klpsym convert`` and ``klpsym build`` (:mod:`klpsym.klp.plan`) act on it;
``klpsym check`` (:mod:`klpsym.load`) tells what the loader would do with
the module as it is and, for a symbol no export provides, what convert
would make of it -- from this same classification, so the two cannot
disagree.  The POS rule itself is livepatch's
(:func:`klpsym.kernel.sympos.choose_pos`), shared with ``klpsym addr``.

Each fate has one name here; ``klpsym check`` prints the loader's words for
some of them (:data:`LOADER_LABELS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import NamedTuple

from klpsym.kernel.kallsyms import Candidate
from klpsym.kernel.sympos import PosError, choose_pos


class Fate(StrEnum):
    EXPORTED = "exported"  # vmlinux exports it (visible to this module)
    MODULE_EXPORT = "module-export"  # a module exports it: loaded first
    CONVERT = "convert"  # not exported, in vmlinux's kallsyms: .klp.sym.vmlinux.NAME,POS
    LIVEPATCH = "livepatch"  # already .klp.sym.OBJ.NAME,POS (converted before)
    MISSING = "missing"  # neither exported nor in kallsyms (or no kallsyms to tell)
    WEAK = "weak"  # a weak reference to nothing: stays NULL, which the loader allows
    IGNORED = "ignored"  # _GLOBAL_OFFSET_TABLE_ on x86 (the loader's ignore_undef_symbol)


#: ``klpsym check``'s words for the fates (its table and JSON, since before
#: the fates were one): the loader's view of who provides the symbol.
LOADER_LABELS: dict[Fate, str] = {
    Fate.EXPORTED: "vmlinux", Fate.MODULE_EXPORT: "module", Fate.CONVERT: "klp",
    Fate.LIVEPATCH: "livepatch", Fate.MISSING: "unresolved", Fate.WEAK: "weak",
    Fate.IGNORED: "ignored",
}


def export_fate(provider: str) -> Fate:
    """The fate of a symbol ``provider`` ("vmlinux" or a module) exports."""
    return Fate.EXPORTED if provider == "vmlinux" else Fate.MODULE_EXPORT


class Unexported(NamedTuple):
    """The classification of a symbol that no export provides."""

    fate: Fate  # CONVERT, MISSING or WEAK
    pos: int | None  # the POS convert writes; None: ambiguous, no POS chosen (or not CONVERT)
    candidates: int  # kallsyms entries of the name
    candidate: Candidate | None  # the entry POS designates
    error: PosError | None  # for CONVERT: why the chosen POS designates nothing


def classify_unexported(candidates: Sequence[Candidate] | None, weak: bool,
                        sympos: int | None = None) -> Unexported:
    """The fate of an unexported symbol with these kallsyms entries (None:
    no kallsyms to tell), weak or not, and the POS convert writes for it
    (``sympos``: the user's ``--sympos``; none: 0 when the name is unique)."""
    if not candidates:
        return Unexported(Fate.WEAK if weak else Fate.MISSING, None, 0, None, None)
    choice = choose_pos(candidates, sympos)
    return Unexported(Fate.CONVERT, choice.pos, choice.entries, choice.chosen, choice.error)
