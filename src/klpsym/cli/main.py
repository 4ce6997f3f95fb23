"""klpsym command line.  Only argument parsing and printing live here."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from klpsym import __version__
from klpsym.errors import KlpsymError

# klpsym does no linear algebra: without this, numpy's OpenBLAS starts a
# thread per core when it is imported, a third of a small run's time.  Set
# before numpy is first imported (by the command that runs); a user's own
# value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

DESCRIPTION = """\
Let an out-of-tree kernel module use kernel symbols that are not exported.

klpsym rewrites a built module (.ko) the way livepatch modules are built:
each undefined symbol that the target kernel does not export but has in
kallsyms becomes a livepatch symbol (.klp.sym.vmlinux.NAME,POS), and the
relocations that use it move into .klp.rela.vmlinux.* sections.  The kernel's
own module loader resolves them through kallsyms when the module loads
(kernels >= 5.8 built with CONFIG_LIVEPATCH=y).
"""


def printable(text: str) -> str:
    """``text`` on one line, as any terminal shows it: control characters
    and undecodable bytes (names read from a corrupt file) escaped."""
    if text.isprintable():
        return text
    out = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in out)


@functools.cache  # built once per process (tests and the fuzzer call main() often)
def build_parser() -> argparse.ArgumentParser:
    from klpsym.cli import addr, build, cflags, check, convert, insmod, inspect, lab

    parser = argparse.ArgumentParser(
        prog="klpsym", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'klpsym COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"klpsym {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    convert.register(sub)
    build.register(sub)
    inspect.register(sub)
    check.register(sub)
    addr.register(sub)
    insmod.register(sub)
    cflags.register(sub)
    lab.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        code: int = args.run(args)
        return code
    except KlpsymError as e:
        print(f"klpsym: error: {printable(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every output is written atomically: an interrupt leaves the old file
        # or the complete new one (when it came after the rename), never a part.
        print("klpsym: interrupted; no file was left half-written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def entry() -> NoReturn:
    """The ``klpsym`` program: :func:`main`, then exit.

    Once main() has returned, every output is complete or absent; an
    interrupt that lands after that, while the interpreter shuts down, would
    only make Python print a KeyboardInterrupt traceback from its threading
    module (seen in tests/unit/test_interrupt.py).  So SIGINT raises only
    while main() runs, and is ignored from the moment it returns."""
    working = True

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if working:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        code = main()
        working = False
    except KeyboardInterrupt:  # after main()'s own handler, before the line above
        working = False
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    entry()
