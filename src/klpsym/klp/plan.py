"""Classify a module's undefined symbols for a target kernel and decide what
to convert.

Each undefined symbol gets a fate (:class:`klpsym.klp.classify.Fate`, the
classification ``klpsym check`` shares), the way modpost and the loader see it:

* ``exported``: vmlinux exports it (visible to this module) - left alone;
* ``module-export``: a module exports it (the target's own Module.symvers
  lists in-tree modules too, and ``--symvers`` adds others) - left alone;
* ``convert``: not exported, but in vmlinux's kallsyms - becomes
  ``.klp.sym.vmlinux.NAME,POS``;
* ``livepatch``: already a livepatch symbol (converted before);
* ``missing``: neither - an error, as modpost's "undefined!" is;
* ``weak``: a weak reference to nothing - the loader allows it.

Every refusal is a :class:`~klpsym.errors.ConvertError` with one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from klpsym.elf.constants import EM, SHN, STB
from klpsym.errors import ConvertError, param
from klpsym.kernel.kallsyms import Candidate
from klpsym.kernel.target import TargetKernel
from klpsym.kernel.version import (
    KernelVersion,
    kallsyms_letters_tell_data,
    klp_sym_name_max,
    supports_klp_for_plain_modules,
)
from klpsym.klp.apply import Conversion, relocation_users
from klpsym.klp.classify import Fate, classify_unexported, export_fate
from klpsym.klp.names import parse_symbol_name
from klpsym.module.ko import Module
from klpsym.module.license import GPL_COMPATIBLE, is_gpl_compatible

SYMPOS = param("sympos")  # the caller's sympos= (the CLI's --sympos)


@dataclass
class SymbolPlan:
    index: int
    name: str
    fate: Fate
    provider: str | None = None  # exporting module, for exports
    pos: int | None = None
    candidate: Candidate | None = None
    candidates: int = 0  # same-name entries in kallsyms
    relocations: dict[str, int] = field(default_factory=dict)
    # 'data' or 'text' for a converted symbol ('' when it cannot be told):
    # KallsymsTable.kind(), by address where known; letters only where trusted.
    kind: str = ""


@dataclass
class Plan:
    module: Module
    target: TargetKernel
    version: KernelVersion
    name_width: int
    symbols: list[SymbolPlan]
    notes: list[str]

    @property
    def to_convert(self) -> list[SymbolPlan]:
        return [s for s in self.symbols if s.fate == Fate.CONVERT]

    @property
    def conversions(self) -> list[Conversion]:
        return [Conversion(s.index, s.name, s.pos or 0) for s in self.to_convert]

    @property
    def relocations_to_move(self) -> int:
        return sum(sum(s.relocations.values()) for s in self.to_convert)


def parse_sympos(items: list[str]) -> dict[str, int]:
    """``NAME=N`` pairs from ``--sympos``."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, num = item.rpartition("=")
        if not sep or not name or not num.isdigit():
            raise ConvertError(f"{SYMPOS} {item!r}: expected NAME=N, e.g. {SYMPOS} c_start=2")
        if name in out and out[name] != int(num):
            raise ConvertError(f"{SYMPOS} {name} is given twice with different positions")
        out[name] = int(num)
    return out


def classify_symbols(module: Module, target: TargetKernel,
                     sympos: Mapping[str, int]) -> list[SymbolPlan]:
    """Every undefined and livepatch symbol of ``module`` with its fate.

    Unlike :func:`make_plan` this returns ``missing`` symbols instead of
    refusing them (``klpsym build`` leaves those to modpost, which also knows
    the exports of the modules being built), and checks nothing about the
    conversion itself.  An ambiguous name without ``--sympos`` is still an
    error.  ``module`` may be a module's object before modpost (``<m>.o``).
    """
    elf = module.elf
    if elf.machine != EM.X86_64:
        raise ConvertError(
            f"{module.path}: machine {elf.machine} is not x86_64; klpsym converts x86_64 modules "
            "only (the loader rules it checks are x86_64's)"
        )
    version = _target_version(module, target)
    name_width = klp_sym_name_max(version)
    symtab = elf.symtab
    undefined = symtab.undefined()
    binds = symtab.binds
    livepatch = symtab.special(SHN.LIVEPATCH)
    users = relocation_users(elf, np.concatenate([undefined, livepatch]))

    # Look every name up at once (cheap with tables from the symbol cache).
    names = {i: symtab.name(i) for i in undefined.tolist()}
    target.symvers.prefetch(list(names.values()))
    unexported = [n for n in names.values()
                  if n and not ((e := target.symvers.get(n)) and e.visible_to(module.name))]
    if unexported:
        target.kallsyms.prefetch(unexported)

    symbols: list[SymbolPlan] = []
    for i in livepatch.tolist():
        name = symtab.name(i)
        parsed = parse_symbol_name(name, name_width)
        symbols.append(SymbolPlan(i, parsed.name if parsed else name, Fate.LIVEPATCH,
                                  pos=parsed.pos if parsed else None, relocations=users[i]))
    trusted = _letters_trusted(target)  # once, not per symbol
    weak = (binds == STB.WEAK).tolist()
    for i, name in names.items():
        if not name:
            continue
        symbols.append(_classify(i, name, weak[i], module, target, sympos, users[i], trusted))
    return symbols


def make_plan(module: Module, target: TargetKernel, sympos: Mapping[str, int]) -> Plan:
    where = str(module.path)
    symbols = classify_symbols(module, target, sympos)
    version = target.version
    name_width = klp_sym_name_max(version)
    notes: list[str] = list(target.notes)

    unknown = sorted(set(sympos) - {s.name for s in symbols if s.fate == Fate.CONVERT})
    for name in unknown:
        used = next((s for s in symbols if s.name == name), None)
        if used is None:
            raise ConvertError(f"{SYMPOS} {name}: {where} does not use a symbol named {name}")
        raise ConvertError(f"{SYMPOS} {name}: {name} is {used.fate.value}, not converted; "
                           "drop the flag")

    missing = [s.name for s in symbols if s.fate == Fate.MISSING]
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        shown = ", ".join(missing[:8]) + more
        raise ConvertError(
            f"{where}: undefined symbol{'s' if len(missing) > 1 else ''} {shown} "
            f"{'are' if len(missing) > 1 else 'is'} neither exported by kernel {target.release} "
            f"({target.symvers.source}) nor in its kallsyms ({target.kallsyms_source}); "
            f"check the name, or add the exporting module's Module.symvers with {param('symvers')}"
        )

    plan = Plan(module, target, version, name_width, symbols, notes)
    if plan.to_convert:
        _check_convertible(plan)
    return plan


def _target_version(module: Module, target: TargetKernel) -> KernelVersion:
    built_for = module.modinfo.vermagic_release
    if built_for is not None and target.release != built_for:
        raise ConvertError(
            f"{module.path}: built for kernel {built_for} (vermagic) but the target kernel is "
            f"{target.release}; rebuild the module against {target.release}'s headers, or point "
            f"{param('kernel_dir')} at {built_for}'s"
        )
    return target.version


def _classify(index: int, name: str, weak: bool, module: Module, target: TargetKernel,
              sympos: Mapping[str, int], relocations: dict[str, int],
              letters_trusted: bool) -> SymbolPlan:
    export = target.symvers.get(name)
    if export is not None and export.visible_to(module.name):
        return SymbolPlan(index, name, export_fate(export.module), provider=export.module,
                          relocations=relocations)
    candidates = target.kallsyms.candidates(name)
    wanted = sympos.get(name)
    found = classify_unexported(candidates, weak, wanted)
    if found.fate != Fate.CONVERT:
        return SymbolPlan(index, name, found.fate, relocations=relocations)
    if found.candidate is None:  # the POS designates no entry
        if wanted is None:
            listing = "; ".join(_describe(c) for c in candidates)
            raise ConvertError(
                f"{name} is ambiguous: {len(candidates)} symbols of that name in "
                f"{target.kallsyms.source} ({listing}); pick one with {SYMPOS} {name}=N"
            )
        raise ConvertError(
            f"{SYMPOS} {name}={wanted}: {target.kallsyms.source} has {len(candidates)} "
            f"symbol{'s' if len(candidates) > 1 else ''} named {name}; use 1..{len(candidates)}"
        )
    return SymbolPlan(index, name, Fate.CONVERT, pos=found.pos, candidate=found.candidate,
                      candidates=found.candidates, relocations=relocations,
                      kind=target.kallsyms.kind(found.candidate,
                                                letters_tell_data=letters_trusted))


def _letters_trusted(target: TargetKernel) -> bool:
    """Whether the target's kallsyms letters tell data from text (for
    KallsymsTable.kind()): letters of a /proc/kallsyms are trusted only where
    kallsyms_letters_tell_data() says so (not 7.x); klpsym's own System.map
    and vmlinux readers give nm's letters for every version."""
    return (kallsyms_letters_tell_data(target.version)
            or target.kallsyms_source.startswith(("System.map ", "vmlinux ")))


def _describe(c: Candidate) -> str:
    addr = f" at {c.address:#x}" if c.address else ""
    return f"{c.pos}: type {c.type}{addr}"


def _check_convertible(plan: Plan) -> None:
    module, target, version = plan.module, plan.target, plan.version
    where = str(module.path)
    names = ", ".join(s.name for s in plan.to_convert[:5])
    if not supports_klp_for_plain_modules(version):
        raise ConvertError(
            f"{where}: target kernel {version.release} is older than 5.8; its loader applies klp "
            "relocations only to livepatch modules, so this module would run with zero addresses "
            "(use the kallsyms or kprobe methods instead)"
        )
    config = target.config
    if config is None:
        plan.notes.append("target .config unknown: could not check CONFIG_LIVEPATCH=y; without it "
                          "the loader silently skips klp relocations")
    elif not config.enabled("CONFIG_LIVEPATCH"):
        raise ConvertError(
            f"{where}: target kernel {version.release} is built without CONFIG_LIVEPATCH; its "
            f"loader skips klp relocations, so {names} would be zero at run time"
        )
    license = module.modinfo.license
    if license is None:
        raise ConvertError(f"{where}: no MODULE_LICENSE(); unexported symbols are kernel "
                           "internals, so klpsym converts GPL-compatible modules only")
    if not is_gpl_compatible(license):
        raise ConvertError(
            f"{where}: MODULE_LICENSE(\"{license}\") is not GPL-compatible (the kernel accepts: "
            f"{', '.join(sorted(GPL_COMPATIBLE))}); unexported symbols are kernel internals"
        )
    for s in plan.to_convert:
        if "," in s.name:
            raise ConvertError(f"{s.name}: symbol names with ',' cannot be written as "
                               ".klp.sym.vmlinux.NAME,POS")
        if len(s.name) > plan.name_width:
            raise ConvertError(
                f"{s.name[:40]}...: name is {len(s.name)} characters; kernel {version.release} "
                f"parses at most {plan.name_width} (KSYM_NAME_LEN {plan.name_width + 1})"
            )
        if s.kind == "data" and config is not None and not config.enabled("CONFIG_KALLSYMS_ALL"):
            raise ConvertError(
                f"{s.name} is a data symbol (type {s.candidate.type if s.candidate else '?'}) and "
                f"kernel {version.release} lacks CONFIG_KALLSYMS_ALL, so kallsyms cannot find it"
            )
