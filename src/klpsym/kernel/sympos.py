"""Livepatch's POS: which kallsyms entry of a name ``NAME,POS`` designates.

kernel/livepatch/core.c klp_find_object_symbol() (v5.8 .. v7.x) counts the
entries of a name in kallsyms order and accepts POS 0 only for a name with
one entry, else POS N for the N-th (1-based) entry.  ``klpsym convert``
writes such a POS (0 for a unique name, ``--sympos`` otherwise), ``klpsym
check`` predicts what convert would write and checks the POS of a converted
module, and ``klpsym addr``/``insmod`` take ``NAME,POS`` queries: all of them
through :func:`choose_pos`.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Generic, NamedTuple, Protocol, TypeVar


class _Entry(Protocol):
    """A kallsyms entry of a name (kernel.kallsyms.Candidate)."""

    @property
    def pos(self) -> int: ...  # 1-based among the entries of its name


_E = TypeVar("_E", bound=_Entry)


class PosError(Enum):
    MISSING = "missing"  # no entry of the name
    AMBIGUOUS = "ambiguous"  # POS 0 (or none chosen) for a name of several entries
    BEYOND = "beyond"  # POS N with fewer than N entries
    NEGATIVE = "negative"  # not a POS
    # A module object's entry (choose_pos_in_both):
    INIT_ONLY = "init-only"  # the entry is gone from the module's kallsyms after its init
    SHIFTED = "shifted"  # an entry gone after init comes before it: its POS changes then


class PosChoice(NamedTuple, Generic[_E]):
    pos: int | None  # the POS to write / the one asked for; None: none can be chosen
    chosen: _E | None  # the entry it designates
    entries: int  # entries of the name
    error: PosError | None  # why it designates nothing


def choose_pos(candidates: Sequence[_E], wanted: int | None) -> PosChoice[_E]:
    """The entry of ``candidates`` (a name's kallsyms entries, in order) that
    POS ``wanted`` designates; ``wanted`` None (no choice made) is POS 0."""
    count = len(candidates)
    if not count:
        return PosChoice(wanted, None, 0, PosError.MISSING)
    if wanted is not None and wanted < 0:
        return PosChoice(wanted, None, count, PosError.NEGATIVE)
    if not wanted:
        if count > 1:
            return PosChoice(None if wanted is None else 0, None, count, PosError.AMBIGUOUS)
        return PosChoice(0, candidates[0], count, None)
    if wanted > count:
        return PosChoice(wanted, None, count, PosError.BEYOND)
    return PosChoice(wanted, candidates[wanted - 1], count, None)


def listed_pos(candidate: _Entry, count: int) -> int:
    """The POS that designates ``candidate`` with no other choice: 0 for the
    only entry of its name, else its own."""
    return 0 if count == 1 else candidate.pos


def choose_pos_in_both(candidates: Sequence[_E], kept: Sequence[bool],
                       wanted: int | None) -> PosChoice[_E]:
    """:func:`choose_pos` for a module object, whose kallsyms has two
    copies (:mod:`klpsym.module.kallsyms`): ``candidates`` are the name's
    entries in the init-time copy (the whole symtab), ``kept`` says which of
    them the core copy keeps.  klp_module_coming() resolves against the
    init-time copy when the target loads after the livepatch, and
    klp_enable_patch() against the core copy when it is already loaded
    (kernel/module/kallsyms.c add_kallsyms(), do_init_module(); v5.8 ..
    v7.x), so a POS is only written where it designates the same entry in
    both: counted in the init-time copy, the entry kept after init, and no
    entry dropped after init before it (else its POS would shift)."""
    choice = choose_pos(candidates, wanted)
    if choice.chosen is None:
        return choice
    at = choice.chosen.pos - 1
    if not kept[at]:
        return PosChoice(choice.pos, None, choice.entries, PosError.INIT_ONLY)
    if not all(kept[:at]):
        return PosChoice(choice.pos, None, choice.entries, PosError.SHIFTED)
    return choice
