"""``klpsym check``."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from klpsym.cli.main import printable
from klpsym.cli.sources import SOURCES_HELP, add_source_flags, add_target_module_flag
from klpsym.cli.text import columns, is_terminal

_json_string = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str

if TYPE_CHECKING:  # imported when the command runs: `klpsym --help` stays fast
    from klpsym.kernel.target import TargetKernel
    from klpsym.load.check import ModuleVerdict, SymbolCheck

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
    p.add_argument("-j", "--jobs", type=_jobs, metavar="N",
                   help="read modules in N processes (default: one per CPU)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show every module's symbols, not only the failing ones' problems")
    p.add_argument("--failed", action="store_true",
                   help="list only the modules that would not load (the counts stay those of "
                        "every module)")
    add_source_flags(p)
    add_target_module_flag(p)
    p.set_defaults(run=run)


def _jobs(text: str) -> int:
    """-j N: a number of processes, at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: give at least 1 process")
    return n


def target_for_check(args: argparse.Namespace) -> TargetKernel:
    from klpsym.kernel.target import discover

    return discover(
        kernel_dir=args.kernel_dir, kernel_release=args.kernel_release, kallsyms=args.kallsyms,
        system_map=args.system_map, vmlinux=args.vmlinux, symvers=tuple(args.symvers),
        config=args.config, image=args.image, require_kallsyms=False, cache=not args.no_cache,
        check_symbols=not args.no_symbol_check,
    )


def run(args: argparse.Namespace) -> int:
    # ~a million objects that all live to the end: no cyclic GC passes over
    # them, now or at the interpreter's exit (frozen when done)
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(args)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _run(args: argparse.Namespace) -> int:
    from klpsym.load.batch import check_paths, collect_modules

    _require_files(args.modules)
    paths = collect_modules(args.modules)
    target = target_for_check(args)
    verbose = args.verbose or len(paths) == 1
    with _progress(len(paths)) as progress:
        if args.json:
            checked = check_paths(paths, target, args.jobs, symbols=False,
                                  render=json_module, progress=progress,
                                  target_modules=args.target_module)
        else:
            checked = check_paths(paths, target, args.jobs, symbols=verbose, progress=progress,
                                  target_modules=args.target_module)
    if args.json:
        assert checked.rendered is not None
        write_json(checked.verdicts, checked.rendered, target, sys.stdout)
    elif is_terminal():
        print_verdicts(checked.verdicts, target, verbose=verbose, named=args.modules,
                       failed=args.failed)
    else:
        print_plain(checked.verdicts, target, verbose=verbose, out=sys.stdout,
                    failed=args.failed)
    # Kept until the next run: freeing a whole kernel's verdicts one by one
    # costs ~5 ms, and the program ends without freeing them (cli.main.entry).
    _last_report[:] = [checked]
    return exit_code(checked.verdicts)


_last_report: list[object] = []


def _require_files(named: list[Path]) -> None:
    """A module named on the command line (not a directory) is a regular
    file: /dev/zero would be read until memory runs out, a FIFO wait."""
    import os

    from klpsym.errors import ModuleError
    from klpsym.fsutil import open_regular

    for p in named:
        if not p.is_dir() and p.exists():
            os.close(open_regular(p, "kernel module", ModuleError))


def exit_code(verdicts: list[ModuleVerdict]) -> int:
    from klpsym.load.check import Verdict

    if any(v.verdict == Verdict.ERROR for v in verdicts):
        return 2
    return 0 if all(v.would_load for v in verdicts) else 1


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on a terminal's stderr for many modules."""
    if not sys.stderr.isatty() or total < 2:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("reading modules"), BarColumn(), MofNCompleteColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("read", total=total)
        yield lambda n: bar.update(task, completed=n)


_STYLE = {"loads": "green", "loads-after": "green", "fails": "red", "error": "red"}
SUMMARY_COLUMNS = ("module", "verdict", "why / needs")
SYMBOL_COLUMNS = ("symbol", "fate", "provider", "flags", "ok", "why")


def _heading(v: ModuleVerdict) -> tuple[str, str, str]:
    """(path, name, verdict and what it waits for) of a module's details."""
    return v.path, v.name, v.verdict.value + (f" after {', '.join(v.depends)}"
                                              if v.depends else "")


def _symbol_row(s: SymbolCheck) -> tuple[str, str, str, str, bool, str]:
    from klpsym.klp.classify import LOADER_LABELS, Fate

    flags = " ".join(x for x in (
        "GPL" if s.gpl_only else "",
        f"ns={s.namespace}" if s.namespace else "",
        f"POS={s.pos}" if s.pos is not None and s.fate in (Fate.CONVERT, Fate.LIVEPATCH) else "",
        f"{s.candidates} candidates" if s.candidates > 1 else "",
    ) if x)
    return s.name, LOADER_LABELS[s.fate], s.provider or "", flags, s.ok, s.reason


def _counts(verdicts: list[ModuleVerdict]) -> str:
    counts = Counter(v.verdict for v in verdicts)
    return ", ".join(f"{n} {verdict.value}" for verdict, n in sorted(counts.items()))


def _markup(text: str) -> str:
    """``text`` from a module file for rich: control characters and
    undecodable bytes escaped (:func:`printable`), then markup."""
    from rich.markup import escape

    return escape(printable(text))


def shown_path(path: str, named: list[Path]) -> str:
    """``path`` relative to the directory the user named that holds it
    (``drivers/net/foo.ko`` for ``check /lib/modules/R/kernel``): the
    terminal's module column, which an absolute path filled."""
    for d in named:
        prefix = str(d).rstrip("/") + "/"
        if prefix != "/" and path.startswith(prefix) and len(path) > len(prefix):
            return path[len(prefix):]
    return path


def print_verdicts(verdicts: list[ModuleVerdict], target: TargetKernel, verbose: bool,
                   named: list[Path] | None = None, failed: bool = False,
                   console: Any = None) -> None:
    """The report on a terminal, through rich: module paths relative to
    the directories named, each reason wrapped in its column (not cut to
    '…'), only the failing modules with ``failed``."""
    from rich.console import Console
    from rich.table import Table

    from klpsym.load.check import summary_reason

    if console is None:
        console = Console(highlight=False)
    named = named or []
    console.print(f"target {_markup(target.describe())}")
    for note in target.notes:
        console.print(f"note: {_markup(note)}")
    shown = [v for v in verdicts if not v.would_load] if failed else verdicts
    if len(verdicts) > 1 and shown:
        table = Table()
        table.add_column(SUMMARY_COLUMNS[0], overflow="fold", ratio=2)
        table.add_column(SUMMARY_COLUMNS[1], no_wrap=True)
        table.add_column(SUMMARY_COLUMNS[2], overflow="fold", ratio=3, min_width=20)
        for v in shown:
            table.add_row(_markup(shown_path(v.path, named)),
                          f"[{_STYLE[v.verdict.value]}]{v.verdict.value}[/]",
                          _markup(summary_reason(v)))
        console.print(table)
    for v in shown:
        if verbose or not v.would_load:
            _print_details(console, v, named)
    console.print(_counts(verdicts))


def _print_details(console: Any, v: ModuleVerdict, named: list[Path]) -> None:
    from rich.table import Table

    from klpsym.load.check import Verdict, summary_reason

    path, name, verdict = _heading(v)
    path = shown_path(path, named)
    console.print(f"\n[bold]{_markup(path)}[/] ({_markup(name)}): "
                  f"[{_STYLE[v.verdict.value]}]{_markup(verdict)}[/]")
    if v.verdict == Verdict.ERROR:
        console.print(f"  {_markup(summary_reason(v))}")
        return
    if v.vermagic is not None:
        console.print(f"  vermagic {_markup(v.vermagic.strip())!s}"
                      + (f" (kernel: {_markup(v.expected_vermagic[0].strip())})"
                         if v.expected_vermagic else ""))
    if v.symbols:
        table = Table(title=None)
        for col in SYMBOL_COLUMNS:
            # names fold rather than push "why" off the edge (then an empty
            # column of '…' rows)
            table.add_column(col, no_wrap=col in ("fate", "ok"), overflow="fold",
                             ratio=3 if col == "why" else 2 if col == "symbol" else None)
        for s in v.symbols:
            sym, fate, provider, flags, ok, why = _symbol_row(s)
            table.add_row(_markup(sym), fate, _markup(provider), _markup(flags),
                          "yes" if ok else "[red]no[/]", _markup(why))
        console.print(table)
    for p in v.problems:
        mark = "[red]error[/]" if p.fatal else "warning"
        # \[ : the stage is text, not a rich style tag (it vanished before)
        console.print(f"  {mark} \\[{p.stage.value}] {_markup(p.message)}")
        for line in p.kernel:
            console.print(f"      kernel: {_markup(line)}")
    if v.taints:
        console.print(f"  taints: {''.join(v.taints)}")
    for note in v.notes:
        console.print(f"  note: {_markup(note)}")


def print_plain(verdicts: list[ModuleVerdict], target: TargetKernel, verbose: bool,
                out: TextIO, failed: bool = False) -> None:
    """The same report as plain text, for a pipe or a file: the same lines
    and columns, without rich (whose table costs ~0.3 ms a row: seconds for
    a whole kernel's modules)."""
    from klpsym.load.check import summary_reason

    lines = [f"target {target.describe()}"] + [f"note: {note}" for note in target.notes]
    shown = [v for v in verdicts if not v.would_load] if failed else verdicts
    if len(verdicts) > 1 and shown:
        lines += columns([SUMMARY_COLUMNS] + [(v.path, v.verdict.value, summary_reason(v))
                                              for v in shown])
    for v in shown:
        if verbose or not v.would_load:
            lines += _plain_details(v)
    lines.append(_counts(verdicts))
    # names, messages and vermagic come from the files as they are
    if not all(map(str.isprintable, lines)):
        lines = list(map(printable, lines))
    out.write("\n".join(lines) + "\n")


def _plain_details(v: ModuleVerdict) -> list[str]:
    from klpsym.load.check import Verdict, summary_reason

    path, name, verdict = _heading(v)
    lines = ["", f"{path} ({name}): {verdict}"]
    if v.verdict == Verdict.ERROR:
        return lines + [f"  {summary_reason(v)}"]
    if v.vermagic is not None:
        lines.append(f"  vermagic {v.vermagic.strip()}" + (
            f" (kernel: {v.expected_vermagic[0].strip()})" if v.expected_vermagic else ""))
    if v.symbols:
        rows = [(sym, fate, provider, flags, "yes" if ok else "no", why)
                for sym, fate, provider, flags, ok, why in map(_symbol_row, v.symbols)]
        lines += ["  " + line for line in columns([SYMBOL_COLUMNS, *rows])]
    for p in v.problems:
        lines.append(f"  {'error' if p.fatal else 'warning'} [{p.stage.value}] {p.message}")
        lines += [f"      kernel: {line}" for line in p.kernel]
    if v.taints:
        lines.append(f"  taints: {''.join(v.taints)}")
    lines += [f"  note: {note}" for note in v.notes]
    return lines


def to_json(verdicts: list[ModuleVerdict], target: TargetKernel) -> dict[str, Any]:
    """The JSON report as one object (see :func:`write_json` for the text)."""
    from klpsym.cli.jsonout import document, target_json

    return document({"target": target_json(target), "exit_status": exit_code(verdicts),
                     "modules": [module_json(v) for v in verdicts]})


def module_json(v: ModuleVerdict, symbols: bool = True) -> dict[str, Any]:
    from klpsym.cli.jsonout import hexify
    from klpsym.load.check import SYMBOL_FIELDS

    out = {
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
        "symbols": [dict(zip(SYMBOL_FIELDS, r, strict=True)) for r in v.symbol_records()]
        if symbols else [],
        "notes": v.notes,
    }
    if not symbols:
        del out["symbols"]
    return hexify(out)  # type: ignore[no-any-return]


def json_module(v: ModuleVerdict) -> str:
    """One module's JSON on one line (made in the check's workers): what
    ``json.dumps(module_json(v))`` prints, with the symbols (a whole kernel
    has ~200,000) written through a format per kind of symbol instead of a
    dict each."""
    head = module_json(v, symbols=False)
    notes = head.pop("notes")
    formats, string = _SYMBOL_FORMATS, _json_string
    texts = []
    for r in v.symbol_records():
        fmt = formats.get(r[1:6] + r[8:])
        if fmt is None:
            fmt = _symbol_format(r)
        name, crc, exporter_crc = r[0], r[6], r[7]
        texts.append(fmt % (string(name), "null" if crc is None else f'"0x{crc:08x}"',
                            "null" if exporter_crc is None else f'"0x{exporter_crc:08x}"'))
    return (f'{json.dumps(head)[:-1]}, "symbols": [{", ".join(texts)}], '
            f'"notes": {json.dumps(notes)}}}')


# a symbol's fields but the name and CRCs -> its JSON with %s for those three
_SYMBOL_FORMATS: dict[tuple[Any, ...], str] = {}


def _symbol_format(r: tuple[Any, ...]) -> str:
    """``json.dumps`` of the symbol's dict (SYMBOL_FIELDS -> the record)
    with %s where the name and the CRCs go."""
    from klpsym.load.check import SYMBOL_FIELDS

    marks = {"name": "\0N", "crc": "\0C", "exporter_crc": "\0E"}
    text = json.dumps({k: marks.get(k, val) for k, val in zip(SYMBOL_FIELDS, r, strict=True)})
    for mark in marks.values():
        text = text.replace(json.dumps(mark), "\0")
    fmt = _SYMBOL_FORMATS[r[1:6] + r[8:]] = text.replace("%", "%%").replace("\0", "%s")
    return fmt


def write_json(verdicts: list[ModuleVerdict], modules: list[str], target: TargetKernel,
               out: TextIO) -> None:
    """The JSON report: the target and exit status indented, then each
    module's object on a line of its own (grep- and diff-friendly; encoding
    every symbol of a whole kernel's modules indented would take seconds)."""
    from klpsym.cli.jsonout import SCHEMA, target_json

    head = json.dumps({"schema": SCHEMA, "target": target_json(target),
                       "exit_status": exit_code(verdicts)}, indent=2)
    body = "[\n    " + ",\n    ".join(modules) + "\n  ]" if modules else "[]"
    out.write(f'{head[:-2]},\n  "modules": {body}\n}}\n')
