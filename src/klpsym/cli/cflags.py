"""``klpsym cflags``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from klpsym.cli.build import METHODS

EPILOG = """\
klpsym.h (installed with klpsym) lets a module declare the unexported
symbols it uses once, and reach them by one of three methods chosen at build
time:

  klp       direct references, resolved by the module loader after
            'klpsym build'/'klpsym convert' (Linux >= 5.8, CONFIG_LIVEPATCH=y)
  kallsyms  module parameters filled from /proc/kallsyms by 'klpsym insmod'
  kprobe    looked up by the module itself when it loads (CONFIG_KPROBES=y)

In the module's Kbuild (or Makefile's kbuild part), one line:

  ccflags-y += $(shell klpsym cflags --method kallsyms)

or, to let 'klpsym build --method M' choose (it sets KLPSYM_METHOD=M in
make's environment, which a plain 'klpsym cflags' reads):

  ccflags-y += $(shell klpsym cflags)

examples:
  klpsym cflags --method kprobe       # -I/.../klpsym/include -DKLPSYM_METHOD=KLPSYM_METHOD_KPROBE
  klpsym cflags --include-dir         # the directory holding klpsym.h"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "cflags", help="print the compiler flags for klpsym.h (and a method)",
        description="Print the compiler flags that make klpsym.h available to a module's "
                    "build, and select its method.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--method", choices=METHODS,
                   help="add -DKLPSYM_METHOD=... for this method")
    g.add_argument("--include-dir", action="store_true",
                   help="print only the directory holding klpsym.h")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from klpsym.methods.header import Method, cflags, include_dir

    if args.include_dir:
        print(include_dir())
        return 0
    # 'klpsym build --method' puts the method in the environment of make.
    chosen = args.method or os.environ.get("KLPSYM_METHOD")
    print(" ".join(cflags(Method.parse(chosen) if chosen else None)))
    return 0
