"""``klpsym insmod``: load a kallsyms-method module with its addresses.

A module built with ``KLPSYM_METHOD_KALLSYMS`` (klpsym.h) declares each
symbol it needs as a module parameter named after the symbol, and lists
them in .modinfo as ``klpsym_symbol=NAME,POS,func|var`` beside
``klpsym_method=kallsyms``.  This module reads those, finds each symbol in
the running kernel's /proc/kallsyms (POS as livepatch counts it), and runs
``insmod MODULE.ko ... NAME=0xADDRESS``.  The module itself checks each
address against the kernel's own kallsyms (sprint_symbol()) when the
parameter is set, so a stale or wrong address is refused, not used.

The kernel prints the *first* name at an address (get_symbol_pos()), so a
symbol that shares its address with an earlier one is refused here with the
alias to declare instead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from klpsym.errors import MethodError, param
from klpsym.kernel.kallsyms import SymbolLookupError
from klpsym.kernel.symbols import (
    Found,
    Query,
    SymbolSource,
    first_name_at,
    lookup,
    require_addresses,
)
from klpsym.kernel.sympos import PosError, choose_pos
from klpsym.module.ko import Module, read_module

INSMOD_TIMEOUT = 300.0


@dataclass(frozen=True)
class DeclaredSymbol:
    """One ``klpsym_symbol=NAME,POS,KIND`` entry of .modinfo."""

    name: str
    pos: int
    kind: str  # "func" (called through a pointer) or "var"


def declared_symbols(module: Module) -> tuple[str | None, list[DeclaredSymbol]]:
    """The method the module was built for (None: not built with klpsym.h)
    and the symbols it declares."""
    method = module.modinfo.get("klpsym_method")
    out: list[DeclaredSymbol] = []
    seen: set[str] = set()
    for value in module.modinfo.get_all("klpsym_symbol"):
        parts = value.split(",")
        if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in ("func", "var"):
            raise MethodError(f"{module.path}: malformed klpsym_symbol={value!r} in .modinfo "
                              "(expected NAME,POS,func|var); rebuild it with this klpsym.h")
        if parts[0] in seen:
            raise MethodError(f"{module.path}: {parts[0]} is declared twice; declare each "
                              "symbol once per module (KLPSYM_FUNC/KLPSYM_VAR)")
        seen.add(parts[0])
        out.append(DeclaredSymbol(parts[0], int(parts[1]), parts[2]))
    return method, out


@dataclass
class InsmodPlan:
    module: Module
    method: str
    symbols: list[tuple[DeclaredSymbol, Found]] = field(default_factory=list)
    user_args: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def args(self) -> list[str]:
        """The parameters: the user's first, then one NAME=0xADDRESS per symbol."""
        filled = [f"{d.name}={f.address:#x}" for d, f in self.symbols if f.address]
        return [*self.user_args, *filled]

    def command(self, insmod: str = "insmod") -> list[str]:
        return [insmod, str(self.module.path), *self.args]


def plan_insmod(module_path: Path | str, source: SymbolSource,
                sympos: Mapping[str, int] | None = None,
                user_args: Sequence[str] = ()) -> InsmodPlan:
    """The parameters that load ``module_path`` against ``source``.

    ``sympos`` overrides the POS the module declares (``--sympos NAME=N``).
    ``user_args`` (the module's own parameters) may not set a declared symbol.
    """
    module = read_module(module_path)
    method, declared = declared_symbols(module)
    if method is None:
        raise MethodError(
            f"{module.path}: not built with klpsym.h (no klpsym_method in .modinfo); "
            "nothing to fill in: use insmod, or 'klpsym convert' for a module that "
            "references unexported symbols directly")
    plan = InsmodPlan(module, method, user_args=list(user_args))
    sympos = dict(sympos or {})
    unknown = sorted(set(sympos) - {d.name for d in declared})
    if unknown:
        raise MethodError(f"{param('sympos')} {unknown[0]}: {module.path} declares no symbol "
                          f"{unknown[0]} (it declares: "
                          f"{', '.join(d.name for d in declared) or 'none'})")
    for arg in user_args:
        key = arg.partition("=")[0]
        if key in {d.name for d in declared}:
            raise MethodError(f"{arg}: {key} is a symbol klpsym fills in from kallsyms; "
                              f"to choose another entry of the name use {param('sympos')} {key}=N")
    if method != "kallsyms":
        plan.notes.append(
            f"{module.path} uses the {method} method: its symbols need no parameters"
            + (" (it looks them up itself when it initialises)" if method == "kprobe" else
               " (the module loader resolves them)"))
        return plan
    require_addresses(source)
    table = source.table
    for d in declared:
        pos = sympos.get(d.name, d.pos)
        cands = table.candidates(d.name)
        if choose_pos(cands, pos).error == PosError.AMBIGUOUS:
            raise MethodError(
                f"{d.name} is ambiguous: {len(cands)} entries in {source.description} "
                f"({', '.join(c.describe() for c in cands)}); declare it with "
                f"KLPSYM_FUNC_POS/KLPSYM_VAR_POS({d.name}, POS) or pass {param('sympos')} "
                f"{d.name}=POS")
        try:
            (found,) = lookup(table, [Query(d.name, pos)])
        except SymbolLookupError as e:
            raise MethodError(*e.args) from None
        alias = first_name_at(table, found)
        if alias != d.name:
            raise MethodError(
                f"{d.name} (POS {found.pos}) is at {found.address:#x}, where kallsyms "
                f"names {alias} first, so the kernel cannot tell which the module meant; "
                f"declare {alias} instead")
        plan.symbols.append((d, found))
    if not source.runtime:
        plan.notes.append(
            f"addresses from {source.description} are link-time addresses: right only for a "
            "boot of that kernel without KASLR (nokaslr); the module refuses them otherwise")
    return plan


def run_insmod(plan: InsmodPlan, *, running_release: str | None = None,
               insmod: str = "insmod") -> subprocess.CompletedProcess[str]:
    """Run ``insmod`` with the plan's parameters.  The addresses must come
    from this boot's /proc/kallsyms and the module must be for the running
    kernel."""
    release = running_release if running_release is not None else os.uname().release
    built_for = plan.module.modinfo.vermagic_release
    if built_for is not None and built_for != release:
        raise MethodError(f"{plan.module.path} is built for {built_for}, but this machine runs "
                          f"{release}; load it on its kernel (or use {param('print_args')} "
                          "there)")
    try:
        return subprocess.run(plan.command(insmod), capture_output=True, text=True,
                              timeout=INSMOD_TIMEOUT, check=False)
    except FileNotFoundError:
        raise MethodError(f"{insmod}: not found; install kmod (or busybox)") from None
    except subprocess.TimeoutExpired:
        raise MethodError(f"{insmod} {plan.module.path} did not finish within "
                          f"{INSMOD_TIMEOUT:g} s") from None


__all__ = ["DeclaredSymbol", "InsmodPlan", "declared_symbols", "plan_insmod",
           "run_insmod"]
