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

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import NamedTuple

from klpsym.kernel.kallsyms import Candidate
from klpsym.kernel.sympos import PosChoice, PosError, choose_pos
from klpsym.klp.names import VMLINUX


class Fate(StrEnum):
    EXPORTED = "exported"  # vmlinux exports it (visible to this module)
    MODULE_EXPORT = "module-export"  # a module exports it: loaded first
    CONVERT = "convert"  # not exported, in an object's kallsyms: .klp.sym.OBJ.NAME,POS
    LIVEPATCH = "livepatch"  # already .klp.sym.OBJ.NAME,POS (converted before)
    MISSING = "missing"  # neither exported nor in kallsyms (or no kallsyms to tell)
    WEAK = "weak"  # a weak reference to nothing: stays NULL, which the loader allows
    IGNORED = "ignored"  # _GLOBAL_OFFSET_TABLE_ on x86 (the loader's ignore_undef_symbol)
    # Only in a target module's symbols, and the module is not a livepatch:
    # the loader applies module-object klp sections for livepatches only
    # (kernel/livepatch/core.c klp_apply_object_relocs(), from
    # klp_init_object_loaded() and klp_module_coming(); v5.8 .. v7.x).
    TARGET_MODULE = "target-module"


#: ``klpsym check``'s words for the fates (its table and JSON, since before
#: the fates were one): the loader's view of who provides the symbol.
LOADER_LABELS: dict[Fate, str] = {
    Fate.EXPORTED: "vmlinux", Fate.MODULE_EXPORT: "module", Fate.CONVERT: "klp",
    Fate.LIVEPATCH: "livepatch", Fate.MISSING: "unresolved", Fate.WEAK: "weak",
    Fate.IGNORED: "ignored", Fate.TARGET_MODULE: "unresolved",
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
    objname: str = VMLINUX  # the object POS counts in ("": several, none chosen)


def classify_unexported(candidates: Sequence[Candidate] | None, weak: bool,
                        sympos: int | None = None) -> Unexported:
    """The fate of an unexported symbol with these kallsyms entries (None:
    no kallsyms to tell), weak or not, and the POS convert writes for it
    (``sympos``: the user's ``--sympos``; none: 0 when the name is unique)."""
    if not candidates:
        return Unexported(Fate.WEAK if weak else Fate.MISSING, None, 0, None, None)
    choice = choose_pos(candidates, sympos)
    return Unexported(Fate.CONVERT, choice.pos, choice.entries, choice.chosen, choice.error)


#: livepatch's POS rule for one object: its candidates and the POS asked for.
Chooser = Callable[[Sequence[Candidate], "int | None"], PosChoice[Candidate]]


class ObjectCandidates(NamedTuple):
    """One object's entries of a name: vmlinux's kallsyms, or a target
    module's (:mod:`klpsym.module.kallsyms`), with that object's POS rule."""

    objname: str
    candidates: Sequence[Candidate]
    choose: Chooser


def classify_in_objects(objects: Sequence[ObjectCandidates], weak: bool,
                        wanted: tuple[str, int | None] | None, livepatch: bool) -> Unexported:
    """The fate of an unexported symbol of a module that may reference
    several objects (a livepatch: vmlinux and its target modules, the
    rules of klp-convert, the "livepatch: klp-convert tool" series v7,
    2023): ``wanted`` is the object and POS the module chose (a
    KLP_MODULE_RELOC/KLP_SYMPOS annotation or ``--sympos [OBJ:]NAME=N``);
    without one, the name must be in one object only, and be unique there
    (POS 0).  A plain module (``livepatch`` False) resolves in vmlinux only;
    a name only a target module has is TARGET_MODULE."""
    if not livepatch:
        vmlinux = [o for o in objects if o.objname == VMLINUX]
        in_vmlinux = vmlinux[0].candidates if vmlinux else ()
        if not in_vmlinux and any(o.candidates for o in objects):
            return Unexported(Fate.TARGET_MODULE, None, 0, None, None, "")
        return classify_unexported(in_vmlinux, weak, wanted[1] if wanted else None)
    if wanted is not None:
        objname, pos = wanted
        chosen = [o for o in objects if o.objname == objname]
        if not chosen or not chosen[0].candidates:
            return Unexported(Fate.CONVERT, pos, 0, None, PosError.MISSING, objname)
        choice = chosen[0].choose(chosen[0].candidates, pos)
        return Unexported(Fate.CONVERT, choice.pos, choice.entries, choice.chosen,
                          choice.error, objname)
    found = [o for o in objects if o.candidates]
    if not found:
        return Unexported(Fate.WEAK if weak else Fate.MISSING, None, 0, None, None)
    if len(found) > 1:
        total = sum(len(o.candidates) for o in found)
        return Unexported(Fate.CONVERT, None, total, None, PosError.AMBIGUOUS, "")
    only = found[0]
    choice = only.choose(only.candidates, None)
    return Unexported(Fate.CONVERT, choice.pos, choice.entries, choice.chosen, choice.error,
                      only.objname)
