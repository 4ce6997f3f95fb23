"""``klpsym insmod``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from klpsym.cli.sources import SYMBOL_SOURCE_HELP, add_symbol_source_flags, symbols_from_args
from klpsym.errors import MethodError

EPILOG = SYMBOL_SOURCE_HELP + """

For modules built with klpsym.h's kallsyms method (klpsym cflags --method
kallsyms): each symbol the module declares is a module parameter, which
this command fills with the address of the symbol's entry (the module's
declared POS, or --sympos) in this boot's /proc/kallsyms, then runs insmod.
The module checks every address against the kernel's kallsyms and refuses
to initialise if one is missing, zero or wrong.  Needs root (addresses).

examples:
  sudo klpsym insmod hello.ko                      # insmod hello.ko sym=0xffff... ...
  sudo klpsym insmod hello.ko verbose=1 --sympos c_start=2
  sudo klpsym insmod hello.ko --print-args         # only print the parameters
  # parameters for another machine's kernel, from a copy of its /proc/kallsyms:
  klpsym insmod hello.ko --print-args --kallsyms kallsyms.txt

exit status: insmod's, or 2 when klpsym refuses (one line on stderr says why)."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "insmod", help="load a kallsyms-method module with its symbols' addresses",
        description="Load a module built with klpsym.h's kallsyms method, giving it the "
                    "addresses of the symbols it declares as module parameters.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("module", metavar="MODULE.ko", type=Path)
    p.add_argument("params", metavar="PARAM=VALUE", nargs="*",
                   help="the module's own parameters, passed on unchanged")
    p.add_argument("--sympos", metavar="NAME=N", action="append", default=[],
                   help="which entry of a duplicated name (overrides the module's POS)")
    p.add_argument("--print-args", action="store_true",
                   help="print the parameters (one line, for insmod/modprobe) instead of "
                        "loading")
    add_symbol_source_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from klpsym.klp.plan import parse_sympos
    from klpsym.methods.insmod import plan_insmod, run_insmod

    given = args.kallsyms or args.system_map or args.vmlinux or args.image
    if given and not args.print_args:
        raise MethodError(
            f"{given}: a load takes this boot's addresses from /proc/kallsyms; other "
            "sources only with --print-args")
    _check_vermagic(args)
    plan = plan_insmod(args.module, symbols_from_args(args), parse_sympos(args.sympos),
                       args.params)
    for note in plan.notes:
        print(f"klpsym: note: {note}", file=sys.stderr)
    if args.print_args:
        print(shlex.join(plan.args))
        return 0
    print(f"klpsym: {shlex.join(plan.command())}", file=sys.stderr)
    proc = run_insmod(plan)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


def _check_vermagic(args: argparse.Namespace) -> None:
    """The module is for the kernel whose symbols are used: the running
    one's (/proc/kallsyms) by default, --kernel-dir's when given.  Said
    first, as the vermagic: a module of another release would otherwise be
    refused for the first symbol that kernel lacks or has elsewhere."""
    import os

    from klpsym.kernel.version import read_kernel_version
    from klpsym.module.ko import read_module

    given = args.kallsyms or args.system_map or args.vmlinux or getattr(args, "image", None)
    if args.kernel_dir is not None:
        release, whose = read_kernel_version(args.kernel_dir).release, "--kernel-dir's"
    elif not given:
        release, whose = os.uname().release, "the running kernel's (/proc/kallsyms)"
    else:
        return  # a copied symbol file of a kernel not named: nothing to compare
    built_for = read_module(args.module).modinfo.vermagic_release
    if built_for is not None and built_for != release:
        raise MethodError(
            f"{args.module}: built for {built_for} (its vermagic), but the symbols are "
            f"{whose}, {release}; run this on {built_for}, or give its symbols with "
            "--kallsyms/--system-map/--vmlinux and --kernel-dir")
