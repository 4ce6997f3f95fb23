"""``klpsym check``."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klpsym.cli.sources import SOURCES_HELP, add_source_flags

if TYPE_CHECKING:  # imported when the command runs: `klpsym --help` stays fast
    from klpsym.kernel.target import TargetKernel
    from klpsym.load.check import ModuleVerdict

EPILOG = SOURCES_HELP + """
  A kallsyms source is optional here: with one, an unexported symbol is also
  told apart as resolvable by 'klpsym convert' (with its POS) or not at all,
  and already converted modules have their livepatch symbols looked up.

What is checked, in the loader's order (kernel/module/main.c load_module):
signature enforcement, ELF machine, module_layout's CRC, vermagic (the
release is not compared when the module has CRCs, as same_magic() does),
licence taint, then every undefined symbol: exported by vmlinux or by a
module (which must be loaded first; modules checked together count),
GPL-only exports for non-GPL modules, MODULE_IMPORT_NS, modversions CRCs
against the target's Module.symvers; relocation types; livepatch sections
and symbols; exports vmlinux already has.  The kernel's own log line is shown
for each problem.  Not checked: whether a signature verifies, the module's
init function.

examples:
  klpsym check hello.ko --kernel-dir /usr/src/linux-headers-6.1.0-56-amd64
  klpsym check build/ --kernel-dir KDIR --kallsyms kallsyms.txt   # every .ko in build/
  klpsym check /lib/modules/$(uname -r)/kernel --json > report.json

exit status: 0 every module would load, 1 at least one would not,
2 bad input (a file that is not a module, a missing kernel directory)."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check", help="tell whether modules would load on the target kernel, and why not",
        description="Simulate the kernel's module loader on each MODULE (a .ko, .ko.xz, .ko.zst, "
                    ".ko.gz file or a directory of them) for the target kernel, without "
                    "loading anything.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("modules", metavar="MODULE", type=Path, nargs="+",
                   help="module files or directories (searched recursively)")
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    p.add_argument("-j", "--jobs", type=int, metavar="N",
                   help="read modules in N processes (default: one per CPU)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show every module's symbols, not only the failing ones' problems")
    add_source_flags(p)
    p.set_defaults(run=run)


def target_for_check(args: argparse.Namespace) -> TargetKernel:
    from klpsym.kernel.target import discover

    return discover(
        kernel_dir=args.kernel_dir, kallsyms=args.kallsyms, system_map=args.system_map,
        vmlinux=args.vmlinux, symvers=tuple(args.symvers), config=args.config,
        require_kallsyms=False,
    )


def run(args: argparse.Namespace) -> int:
    from klpsym.load.batch import collect_modules
    from klpsym.load.check import check_modules

    paths = collect_modules(args.modules)
    target = target_for_check(args)
    facts = _gather(paths, args.jobs)
    verdicts = check_modules(facts, target)
    if args.json:
        json.dump(to_json(verdicts, target), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_verdicts(verdicts, target, verbose=args.verbose or len(verdicts) == 1)
    return exit_code(verdicts)


def exit_code(verdicts: list[ModuleVerdict]) -> int:
    from klpsym.load.check import Verdict

    if any(v.verdict == Verdict.ERROR for v in verdicts):
        return 2
    return 0 if all(v.would_load for v in verdicts) else 1


def _gather(paths: list[Path], jobs: int | None) -> list[Any]:
    from klpsym.load.batch import gather_facts

    if not sys.stderr.isatty() or len(paths) < 2:
        return gather_facts(paths, jobs)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("reading modules"), BarColumn(), MofNCompleteColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("read", total=len(paths))
        return gather_facts(paths, jobs, lambda n: bar.update(task, completed=n))


_STYLE = {"loads": "green", "loads-after": "green", "fails": "red", "error": "red"}


def print_verdicts(verdicts: list[ModuleVerdict], target: TargetKernel, verbose: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from klpsym.load.check import summary_reason

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    console.print(f"target {escape(target.describe())}")
    for note in target.notes:
        console.print(f"note: {escape(note)}")
    if len(verdicts) > 1:
        table = Table()
        for col in ("module", "verdict", "why / needs"):
            table.add_column(col, no_wrap=col != "why / needs")
        for v in verdicts:
            style = _STYLE.get(v.verdict.value, "red")
            table.add_row(escape(v.path), f"[{style}]{v.verdict.value}[/]",
                          escape(summary_reason(v)))
        console.print(table)
    for v in verdicts:
        if verbose or not v.would_load:
            _print_details(console, v)
    counts = Counter(v.verdict for v in verdicts)
    console.print(", ".join(f"{n} {verdict.value}" for verdict, n in sorted(counts.items())))


def _print_details(console: Any, v: ModuleVerdict) -> None:
    from rich.markup import escape
    from rich.table import Table

    from klpsym.load.check import Fate, Verdict, summary_reason

    console.print(f"\n[bold]{escape(v.path)}[/] ({escape(v.name)}): "
                  f"[{_STYLE.get(v.verdict.value, 'red')}]{v.verdict.value}[/]"
                  + (f" after {', '.join(v.depends)}" if v.depends else ""))
    if v.verdict == Verdict.ERROR:
        console.print(f"  {escape(summary_reason(v))}")
        return
    if v.vermagic is not None:
        console.print(f"  vermagic {escape(v.vermagic.strip())!s}"
                      + (f" (kernel: {escape(v.expected_vermagic[0].strip())})"
                         if v.expected_vermagic else ""))
    if v.symbols:
        table = Table(title=None)
        for col in ("symbol", "fate", "provider", "flags", "ok", "why"):
            table.add_column(col, no_wrap=col not in ("why",))
        for s in v.symbols:
            flags = " ".join(x for x in (
                "GPL" if s.gpl_only else "",
                f"ns={s.namespace}" if s.namespace else "",
                f"POS={s.pos}" if s.pos is not None and s.fate in (Fate.KLP, Fate.LIVEPATCH)
                else "",
                f"{s.candidates} candidates" if s.candidates > 1 else "",
            ) if x)
            table.add_row(escape(s.name), s.fate.value, escape(s.provider or ""), escape(flags),
                          "yes" if s.ok else "[red]no[/]", escape(s.reason))
        console.print(table)
    for p in v.problems:
        mark = "[red]error[/]" if p.fatal else "warning"
        console.print(f"  {mark} [{p.stage.value}] {escape(p.message)}")
        for line in p.kernel:
            console.print(f"      kernel: {escape(line)}")
    if v.taints:
        console.print(f"  taints: {''.join(v.taints)}")
    for note in v.notes:
        console.print(f"  note: {escape(note)}")


def to_json(verdicts: list[ModuleVerdict], target: TargetKernel) -> dict[str, Any]:
    return {
        "target": {"release": target.release, "description": target.describe(),
                   "notes": target.notes},
        "exit_status": exit_code(verdicts),
        "modules": [
            {
                "path": v.path,
                "name": v.name,
                "verdict": v.verdict.value,
                "would_load": v.would_load,
                "depends": v.depends,
                "vermagic": v.vermagic,
                "expected_vermagic": list(v.expected_vermagic),
                "taints": v.taints,
                "problems": [
                    {"stage": p.stage.value, "fatal": p.fatal, "message": p.message,
                     "symbol": p.symbol, "kernel": list(p.kernel)}
                    for p in v.problems
                ],
                "symbols": [
                    {"name": s.name, "fate": s.fate.value, "ok": s.ok, "provider": s.provider,
                     "gpl_only": s.gpl_only, "namespace": s.namespace, "crc": s.crc,
                     "exporter_crc": s.exporter_crc, "pos": s.pos, "candidates": s.candidates,
                     "reason": s.reason}
                    for s in v.symbols
                ],
                "notes": v.notes,
            }
            for v in verdicts
        ],
    }
