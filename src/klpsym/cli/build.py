"""``klpsym build``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klpsym.cli.main import printable
from klpsym.cli.sources import SOURCES_HELP, add_source_flags, target_from_args

if TYPE_CHECKING:  # imported when the command runs: `klpsym --help` stays fast
    from klpsym.kbuild import BuildResult

EPILOG = SOURCES_HELP + """

How: kbuild compiles the objects (make ... modules_check); klpsym classifies
each module's undefined symbols; the ones the target has in kallsyms but does
not export are given to modpost in a generated symvers file
(KBUILD_EXTRA_SYMBOLS), so modpost stays strict: any other undefined symbol
still fails the build.  Then kbuild links the .ko files and klpsym converts
each in place.  Separate output dirs (MO=) are not supported (Linux 6.1's
kbuild has no MO=; it came in 6.13).

examples:
  klpsym build                                   # the module in ., for the running kernel
  klpsym build src/ -- V=1                       # make arguments after --
  klpsym build --kernel-dir /usr/src/linux-headers-6.1.0-56-amd64 --kallsyms kallsyms.txt

exit status: 0 built and converted, 2 refused or kbuild failed (one line on
stderr says why, after kbuild's own messages)."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "build", help="build an external module with kbuild and convert it",
        usage="klpsym build [DIR] [options] [-- MAKE_ARG...]",
        description="Build the external module(s) in DIR with the target kernel's kbuild, "
                    "letting modpost accept exactly the unexported symbols klpsym can resolve, "
                    "and convert each .ko in place.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", metavar="DIR", type=Path, nargs="?", default=Path("."),
                   help="the module's source dir, with its Kbuild or Makefile (default: .)")
    p.add_argument("--sympos", metavar="NAME=N", action="append", default=[],
                   help="which of several same-name kallsyms entries to use (1-based, in "
                        "kallsyms order; repeatable)")
    add_source_flags(p)
    p.set_defaults(run=run, make_args=[])
    # Everything after the first '--' goes to make, untouched (argparse alone
    # would give "klpsym build -- V=1" the directory "V=1").
    p.__class__ = _MakeArgsParser


class _MakeArgsParser(argparse.ArgumentParser):
    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        make_args: list[str] = []
        if "--" in argv:
            i = argv.index("--")
            argv, make_args = argv[:i], argv[i + 1:]
        ns, extra = super().parse_known_args(argv, namespace)
        ns.make_args = make_args
        return ns, extra


def run(args: argparse.Namespace) -> int:
    from klpsym.kbuild import build
    from klpsym.klp.plan import parse_sympos

    sympos = parse_sympos(args.sympos)
    target = target_from_args(args)
    result = build(args.directory, target, sympos, args.make_args, tuple(args.symvers))
    print_table(result)
    return 0


def print_table(result: BuildResult) -> None:
    from rich.console import Console
    from rich.table import Table

    # markup=False and printable(): names come from the modules, as they are
    console = Console(highlight=False, markup=False,
                      width=None if sys.stdout.isatty() else 200)
    console.print(printable(f"klpsym: built for {result.target.release} "
                            f"(symbols from {result.target.kallsyms_source})"))
    table = Table()
    for col in ("module", "converted", "relocations"):
        table.add_column(col, no_wrap=col == "module")
    for m in result.modules:
        conv = m.converted
        names = ", ".join(s.name + (f",{s.pos}" if s.pos else "") for s in conv) or "-"
        moved = sum(sum(s.relocations.values()) for s in conv)
        table.add_row(printable(str(m.ko.relative_to(result.directory)
                                    if m.ko.is_relative_to(result.directory) else m.ko)),
                      printable(names), str(moved))
    console.print(table)
    for m in result.modules:
        for note in m.result.plan.notes if m.result else []:
            console.print(printable(f"note: {m.name}: {note}"))
