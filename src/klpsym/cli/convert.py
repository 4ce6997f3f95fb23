"""``klpsym convert``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klpsym.cli.finish import FINISH_HELP, add_finish_flags, signer_from_args
from klpsym.cli.main import printable
from klpsym.cli.sources import (
    LIVEPATCH_HELP,
    SOURCES_HELP,
    add_source_flags,
    add_target_module_flag,
    target_from_args,
    targets_from_args,
)
from klpsym.errors import KlpsymError

if TYPE_CHECKING:  # imported when the command runs: `klpsym --help` stays fast
    from klpsym.kernel.target import TargetKernel
    from klpsym.klp.convert import ConvertResult
    from klpsym.klp.guard import GuardPlan
    from klpsym.klp.plan import Plan
    from klpsym.module.kallsyms import TargetModules
    from klpsym.module.ko import Module

EPILOG = SOURCES_HELP + "\n\n" + LIVEPATCH_HELP + "\n\n" + FINISH_HELP + """

examples:
  # built with KBUILD_MODPOST_WARN=1 (modpost: "kallsyms_lookup_name" undefined!)
  klpsym convert hello.ko -o hello.klp.ko
  klpsym convert hello.ko --dry-run              # show the plan, write nothing
  klpsym convert hello.ko --in-place --sympos c_start=2
  # for another kernel: its headers and a copy of its kallsyms
  klpsym convert hello.ko -o out.ko --kernel-dir /usr/src/linux-headers-6.1.0-56-amd64 \\
      --kallsyms kallsyms-6.1.0-56.txt
  # signed with your Secure Boot / MOK key
  klpsym convert hello.ko -o hello.klp.ko --sign-key MOK.priv --sign-cert MOK.der
  # a livepatch module that also uses statics of the module it patches
  klpsym convert lp.ko -o lp.klp.ko --target-module ext4 --sympos ext4:ext4_fill_super=1

exit status: 0 converted (or nothing to convert), 2 refused or bad input
(one line on stderr says why; nothing is written)."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "convert", help="rewrite a built module so unexported symbols resolve at load time",
        description="Rewrite a built module (.ko) so that its references to unexported kernel "
                    "symbols are resolved by the module loader through kallsyms.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("module", metavar="MODULE.ko", type=Path, help="the linked module")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="OUT", type=Path,
                     help="write the converted module here (atomically)")
    out.add_argument("--in-place", action="store_true", help="replace MODULE.ko (atomically)")
    p.add_argument("--sympos", metavar="[OBJ:]NAME=N", action="append", default=[],
                   help="which of several same-name kallsyms entries to use (1-based, in "
                        "kallsyms order; repeatable); OBJ:NAME=N: in livepatch target module "
                        "OBJ (its symbol table order)")
    add_target_module_flag(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (symbol, kind, POS, relocations per section); "
                        "write nothing")
    p.add_argument("--json", action="store_true", help="print the plan/result as JSON")
    p.add_argument("--no-ibt-thunks", action="store_true",
                   help="on an IBT target (CONFIG_X86_KERNEL_IBT=y), take unexported functions' "
                        "addresses directly instead of through endbr64 thunks; each such "
                        "function is named in a warning (an indirect call to it faults on IBT "
                        "hardware if the kernel sealed it)")
    add_source_flags(p)
    add_finish_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from klpsym.errors import ConvertError
    from klpsym.klp.convert import check_destination, convert_file
    from klpsym.klp.plan import parse_sympos
    from klpsym.module.ko import read_module, require_kernel_module

    sympos = parse_sympos(args.sympos)
    # The user's own mistakes (the destination, the module file) first, then
    # the target kernel, which may need headers or a kallsyms to be found.
    check_destination(args.module, args.output, args.in_place, args.dry_run)
    module = read_module(args.module, mapped=True)
    require_kernel_module(module)
    target = target_from_args(args)
    targets = targets_from_args(args, target)
    signer, sign_notes = signer_from_args(args, target)
    try:
        result = convert_file(args.module, target, sympos, output=args.output,
                              in_place=args.in_place, dry_run=args.dry_run,
                              guard=not args.no_guard, signer=signer, module=module,
                              ibt_thunks=not args.no_ibt_thunks, targets=targets)
    except ConvertError as e:
        if args.dry_run and not args.json:
            _show_missing(module, target, sympos, targets)
        raise _with_sources(e, target, args.vmlinux) from None
    result.plan.notes.extend(sign_notes)
    if args.json:
        from klpsym.cli.jsonout import dump

        dump(to_json(result, args.dry_run), sys.stdout)
    elif args.dry_run:
        print_plan(result.plan, result.guard)
    else:
        print_result(result)
    return 0


def _show_missing(module: Module, target: TargetKernel, sympos: dict[str, int],
                  targets: TargetModules) -> None:
    """--dry-run refused for symbols found nowhere: print the plan anyway,
    with them as ``missing`` rows beside the rest, before the error line
    (what a dry run is for: seeing everything that would happen)."""
    from klpsym.kernel.version import klp_sym_name_max
    from klpsym.klp.classify import Fate
    from klpsym.klp.plan import Plan, classify_symbols

    try:
        symbols = classify_symbols(module, target, sympos, targets)
    except KlpsymError:
        return  # refused for another reason (an ambiguous name): the error says it
    if any(s.fate == Fate.MISSING for s in symbols):
        print_plan(Plan(module, target, target.version, klp_sym_name_max(target.version),
                        symbols, list(target.notes)), None)
        sys.stdout.flush()


def _with_sources(error: KlpsymError, target: TargetKernel,
                  vmlinux: Path | None) -> KlpsymError:
    """An ambiguous name's error with, when --vmlinux was given, where each
    candidate comes from (its compilation unit, and file:line where the
    vmlinux has DWARF): addresses alone do not say which one to pick."""
    import re

    from klpsym.kernel.symbols import Query, lookup, with_sources

    m = re.match(r"(\S+) is ambiguous: ", str(error))
    if vmlinux is None or m is None:
        return error
    try:
        found = with_sources(lookup(target.kallsyms, [Query(m.group(1), None)]), vmlinux)
    except KlpsymError:
        return error
    # addr2line says "FILE:?" where the vmlinux has no line table: the unit then
    where = "; ".join(f"POS {f.pos} in {src}" for f in found
                      for src in [f.source if f.source and not f.source.endswith(":?")
                                  else f.unit] if src)
    if not where:
        return error
    return type(error)(f"{error} (from {vmlinux}: {where})")


def _relocs(counts: dict[str, int]) -> str:
    return " ".join(f"{sec}:{n}" for sec, n in sorted(counts.items())) or "-"


def print_plan(plan: Plan, guard: GuardPlan | None) -> None:
    """The --dry-run plan: a table on a terminal, aligned plain columns
    otherwise (a pipe, a file, a build log)."""
    from klpsym.cli.text import columns, is_terminal
    from klpsym.klp.classify import Fate

    order = {Fate.CONVERT: 0, Fate.LIVEPATCH: 1, Fate.MODULE_EXPORT: 2, Fate.EXPORTED: 3,
             Fate.WEAK: 4, Fate.MISSING: 5, Fate.TARGET_MODULE: 6, Fate.IGNORED: 7}
    rows = []
    for s in sorted(plan.symbols, key=lambda s: (order[s.fate], s.name)):
        fate = s.fate.value + (f" ({s.provider})" if s.fate == Fate.MODULE_EXPORT else
                               f" ({s.objname})" if s.fate in (Fate.CONVERT, Fate.LIVEPATCH)
                               and s.objname != "vmlinux" else "")
        c = s.candidate
        rows.append((s.name, fate, "" if s.pos is None else str(s.pos), c.type if c else "",
                     f"{c.address:#x}" if c and c.address else "", _relocs(s.relocations)))
    n = len(plan.to_convert)
    head = [printable(f"module {plan.module.path} ({plan.module.name})"),
            printable(f"target {plan.target.describe()}")]
    tail = [f"{n} symbol{'s' * (n != 1)} to convert, {plan.relocations_to_move} "
            f"relocation{'s' * (plan.relocations_to_move != 1)} to move"]
    if plan.objects:
        tail.append(f"livepatch module: needs target module{'s' * (len(plan.objects) != 1)} "
                    f"{', '.join(plan.objects)} (klp relocations applied when each is loaded)")
    tail += [guard.describe()] if guard is not None else []
    tail += [printable(f"note: {note}") for note in plan.notes]
    if not is_terminal():
        print("\n".join(head + columns([PLAN_COLUMNS, *rows]) + tail))
        return
    from rich.console import Console
    from rich.table import Table

    # markup=False: a symbol name like "[bold]" is a name, not a style
    console = Console(highlight=False, markup=False)
    for line in head:
        console.print(line)
    table = Table()
    for col in PLAN_COLUMNS:
        table.add_column(col, no_wrap=col != "relocations")
    for row in rows:
        table.add_row(*(printable(x) for x in row))
    console.print(table)
    for line in tail:
        console.print(line)


PLAN_COLUMNS = ("symbol", "kind", "POS", "type", "address", "relocations")


def print_result(result: ConvertResult) -> None:
    from klpsym.klp.classify import Fate

    plan = result.plan
    n = len(plan.to_convert)
    if not n:
        already = sum(1 for s in plan.symbols if s.fate == Fate.LIVEPATCH)
        why = (f"already converted ({already} livepatch symbols)" if already
               else "every undefined symbol is exported")
        where = f"; copied to {result.output}" if result.written else ""
        print(printable(f"{plan.module.path}: nothing to convert, {why}{where}"))
        _print_finish(result)
        return
    moved = sum(result.moved.values())
    names = ", ".join((f"{s.objname}:" if s.objname != "vmlinux" else "") + f"{s.name}"
                      + (f",{s.pos}" if s.pos else "") for s in plan.to_convert[:6])
    more = f" and {n - 6} more" if n > 6 else ""
    kind = ".klp.rela" if plan.objects else ".klp.rela.vmlinux"
    print(printable(
        f"{plan.module.path} -> {result.output}: converted {n} symbol{'s' * (n != 1)} "
        f"({names}{more}), moved {moved} relocation{'s' * (moved != 1)} into "
        f"{len(result.moved)} {kind} section{'s' * (len(result.moved) != 1)}"))
    if plan.objects:
        print(printable(f"livepatch module: needs target module"
                        f"{'s' * (len(plan.objects) != 1)} {', '.join(plan.objects)}"))
    _print_finish(result)


def _print_finish(result: ConvertResult) -> None:
    # Which kernel the symbols were classified for (by default the running
    # one): the first thing to look at when a module will not load.
    print(printable(f"target {result.plan.target.describe()}"))
    if result.guard.adds:
        print(printable(result.guard.describe()))
    if result.signed_with is not None:
        print(printable(f"signed with {result.signed_with.describe()}"))
    for note in result.plan.notes:
        print(printable(f"note: {note}"))


def to_json(result: ConvertResult, dry_run: bool) -> dict[str, Any]:
    from klpsym.cli.jsonout import target_json
    from klpsym.klp.classify import Fate
    from klpsym.klp.guard import GUARD_SYMBOL as guard_symbol

    plan = result.plan
    return {
        "module": str(plan.module.path),
        "module_name": plan.module.name,
        "target": target_json(plan.target),
        "dry_run": dry_run,
        "output": None if result.output is None or dry_run else str(result.output),
        "written": result.written,
        "symbols": [
            {
                "name": s.name,
                "kind": s.fate.value,
                "provider": s.provider,
                "pos": s.pos,
                "type": s.candidate.type if s.candidate else None,
                "address": s.candidate.address if s.candidate and s.candidate.address else None,
                "candidates": s.candidates,
                "relocations": s.relocations,
                "object": s.objname if s.fate in (Fate.CONVERT, Fate.LIVEPATCH) else None,
            }
            for s in plan.symbols
        ],
        "livepatch": plan.livepatch,
        "objects": plan.objects,
        "annotations": [{"object": a.objname, "name": a.name, "pos": a.pos}
                        for a in plan.annotations],
        "converted": len(plan.to_convert),
        "relocations_moved": sum(result.moved.values()) if result.written else 0,
        "relocations_to_move": plan.relocations_to_move,
        "guard": {"action": result.guard.action.value, "symbol": guard_symbol,
                  "crc": result.guard.crc, "version_tables": list(result.guard.tables)},
        "signed_with": None if result.signed_with is None else result.signed_with.key,
        "ibt": result.ibt.to_json(),
        "notes": plan.notes,
    }
