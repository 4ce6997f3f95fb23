"""klpsym command line.  Only argument parsing and printing live here."""

from __future__ import annotations

import signal
import sys


def _interrupted_while_starting(signum: int, frame: object) -> None:
    # Ctrl-C or SIGTERM while the modules below are imported: nothing is open
    # yet but the make `klpsym build` may have started.  entry() replaces this
    # handler before main() runs.
    _abandon_early_make()
    sys.stderr.write("klpsym: interrupted; no file was left half-written\n")
    sys.exit(128 + signum)


def _abandon_early_make() -> None:
    """Stop the make klpsym.kbuild.early.replay started, unless the build
    took it."""
    early = sys.modules.get("klpsym.kbuild.early")
    if early is not None:
        early.abandon()


# Only when this is the klpsym program (the console script, `python -m`), not a
# module another program imports.
if __name__ == "__main__" or sys.argv[0].endswith(("/klpsym", "/klpsym/__main__.py")):
    signal.signal(signal.SIGINT, _interrupted_while_starting)
    signal.signal(signal.SIGTERM, _interrupted_while_starting)
    if sys.argv[1:2] == ["build"]:
        # The make the last run with this command line started, started now,
        # before argparse and the rest are imported (klpsym.kbuild.early).
        from klpsym.kbuild import early as _early

        _early.replay(sys.argv[1:])

import argparse  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from klpsym import __version__  # noqa: E402
from klpsym.errors import InternalError, KlpsymError  # noqa: E402

if TYPE_CHECKING:
    from types import FrameType
    from typing import NoReturn

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


# Exit codes of every command (README, "Exit codes"); a command may also
# return 1 for a negative answer (check: a module would not load).
EXIT_ERROR = 2  # bad input: one "klpsym: error:" line
EXIT_BUG = 70  # EX_SOFTWARE (sysexits.h): klpsym's check of its own work failed
EXIT_INTERRUPTED = 130  # SIGINT; 143 (128 + SIGTERM) when that ended the run

# The lower layers' parameters whose option is not the parameter spelt
# with dashes.
_OPTIONS = {"output": "-o", "guard": "--no-guard", "key": "--sign-key", "cert": "--sign-cert",
            "check_symbols": "--no-symbol-check"}


def option(param: str) -> str:
    """The option that gives the input a lower layer calls ``param``: the
    parameter spelt as an option (system_map is --system-map, argparse's
    dest the other way round), but for the few in _OPTIONS."""
    return _OPTIONS.get(param) or "--" + param.replace("_", "-")


def message(e: KlpsymError) -> str:
    """``e``'s message as the command line shows it: the inputs it names
    given as this command line's options, on one printable line."""
    return printable(e.render(option))


def error_line(e: KlpsymError) -> str:
    """The line the command line prints for ``e``."""
    return f"klpsym: error: {message(e)}"


# Set to show a bug's traceback (below its one line).
DEBUG_ENV = "KLPSYM_DEBUG"


def report_bug(e: InternalError) -> None:
    """One line on stderr for a bug klpsym found in its own work: what it
    is and what to report; the traceback too when $KLPSYM_DEBUG is set."""
    if os.environ.get(DEBUG_ENV):
        import traceback

        traceback.print_exception(e, file=sys.stderr)
    print(f"klpsym: internal error: {printable(str(e))} -- a bug in klpsym {__version__}; "
          f"please report it with this line, the command and its input files "
          f"({DEBUG_ENV}=1 adds the traceback)", file=sys.stderr)


# The commands, in the order `klpsym --help` lists them, and their modules
# (each has a register(sub) that adds its parser).
COMMANDS = ("convert", "build", "inspect", "check", "addr", "kallsyms", "insmod", "cflags",
            "lab")


def terminal_columns() -> int:
    """The width argparse formats help for, as shutil.get_terminal_size()
    gives it ($COLUMNS, else stdout's terminal, else 80), without importing
    shutil (zlib, bz2, lzma: ~2 ms of each run's start, paid before ``klpsym
    build`` starts make: argparse makes a formatter for every argument it
    adds, and each one asked shutil)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    stdout = sys.__stdout__
    if columns <= 0 and stdout is not None:
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's RawDescriptionHelpFormatter, its width from
    :func:`terminal_columns` (argparse's own default: shutil's width - 2)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         terminal_columns() - 2 if width is None else width)


@functools.cache  # built once per process (tests and the fuzzer call main() often)
def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` (one of :data:`COMMANDS`) only that
    command's own parser is built, and only its module imported: a run
    parses one command's arguments, and building every command's parser
    (and importing their modules) cost ~10 ms of each run's start-up.
    Without ``command``: every command's parser (help, unknown commands)."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="klpsym", description=DESCRIPTION, formatter_class=HelpFormatter,
        epilog="Run 'klpsym COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="show klpsym's version and which module reader it uses, and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if command is None else (command,):
        importlib.import_module(f"klpsym.cli.{name}").register(sub)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """No parser takes a prefix of a flag (--kall for --kallsyms): a
    script's abbreviation would break, or change meaning, when a flag with
    the same prefix is added."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def _refuse_unknown(parser: argparse.ArgumentParser, argv: Sequence[str],
                    args: argparse.Namespace, extra: list[str]) -> NoReturn:
    """An unknown argument, said by the parser it was meant for (the
    command's, with its usage, for one after the command) with the closest
    flag it has."""
    import difflib

    target, commands = parser, []
    argv = list(argv)
    if args.command is not None and args.command in argv \
            and argv.index(extra[0]) > argv.index(args.command):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                target = action.choices[args.command]
                nested = getattr(args, "lab_command", None)
                for inner in target._actions:
                    if isinstance(inner, argparse._SubParsersAction) and nested in inner.choices:
                        commands.append(nested)
                        target = inner.choices[nested]
    flags = [s for a in target._actions for s in a.option_strings]
    word = extra[0].split("=", 1)[0]
    close = difflib.get_close_matches(word, flags, n=1, cutoff=0.6) if word.startswith("-") \
        else []
    hint = f"; did you mean {close[0]}?" if close else ""
    target.error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def version_text() -> str:
    """``klpsym --version``: the version, the reader `check` reads modules
    with (the module that holds it: one Python reader since the compiled
    one was dropped; a report of speed starts from knowing which), and the
    Python running it."""
    import platform

    from klpsym.load.fastread import fast_facts

    return (f"klpsym {__version__}\nmodule reader: Python ({fast_facts.__module__})\n"
            f"Python {platform.python_version()} ({sys.executable})")


class _Version(argparse.Action):
    """--version, its text made only when asked (it imports the reader)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


def _parser_for(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Only the named command's parser when the first argument names one
    (the main parser's own options, -h/--help and --version, come before
    the command; with them, no command or an unknown one: every parser, for
    the full help and argparse's list of valid commands)."""
    first = argv[0] if argv else None
    return build_parser(first if first in COMMANDS else None)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        if argv is None:
            argv = sys.argv[1:]
        parser = _parser_for(argv)
        args, extra = parser.parse_known_args(argv)
        if extra:
            _refuse_unknown(parser, argv, args, extra)
        if args.command is None:
            parser.print_help()
            return EXIT_ERROR
        code: int = args.run(args)
        return code
    except KlpsymError as e:
        print(error_line(e), file=sys.stderr)
        _json_error(argv, message(e))
        return EXIT_ERROR
    except InternalError as e:
        report_bug(e)
        return EXIT_BUG
    except KeyboardInterrupt:
        # Every output is written atomically: an interrupt leaves the old file
        # or the complete new one (when it came after the rename), never a part.
        print("klpsym: interrupted; no file was left half-written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    finally:
        _abandon_early_make()


def _json_error(argv: Sequence[str] | None, message: str) -> None:
    """Under --json, the error as a JSON object on stdout too (docs/json.md),
    so that a script reading stdout learns why there is no result."""
    from klpsym.cli.jsonout import error_document, wants_json

    if argv is not None and wants_json(tuple(argv)):
        import json

        print(json.dumps(error_document(message, 2), indent=2))


def entry() -> NoReturn:
    """The ``klpsym`` program: :func:`main`, then exit.

    Once main() has returned, every output is complete or absent; an
    interrupt that lands after that, while the interpreter shuts down, would
    only make Python print a KeyboardInterrupt traceback from its threading
    module (seen in tests/unit/test_interrupt.py).  So SIGINT raises only
    while main() runs, and is ignored from the moment it returns.  SIGTERM
    (timeout(1), systemd, a DKMS run being stopped) is handled the same way,
    exit status 143: without it, a ``klpsym build`` it killed left its make
    running, and that make's modpost would wait at the gate for good.

    A run's objects (numpy's and klpsym's modules, the tables of a module)
    live until it ends: the cyclic garbage collector is off while main()
    runs (the lab's long QEMU sessions excepted) and everything is frozen
    when it returns, so that neither its passes nor the interpreter's exit
    walk them (amdgpu convert: ~18 ms CPU of a 0.19 s run); and the process
    ends without the interpreter's teardown (see below)."""
    working = True
    signalled = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signalled
        if working:
            signalled = signum
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if sys.argv[1:2] != ["lab"]:
        gc.disable()
    try:
        code = main()
        working = False
    except KeyboardInterrupt:  # after main()'s own handler, before the line above
        working = False
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED and signalled:
        code = 128 + signalled
    gc.freeze()
    # Everything main() made is complete (outputs committed and synced,
    # temporary directories removed, workers done): the interpreter's
    # teardown would only free every object one by one (~10 ms after a whole
    # kernel's check).  Skip it once stdout and stderr are out.
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away: nothing more to say
        pass
    try:
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)


if __name__ == "__main__":
    entry()
