"""``klpsym build``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klpsym.cli.finish import FINISH_HELP, add_finish_flags, signer_from_args
from klpsym.cli.main import HelpFormatter, printable
from klpsym.cli.sources import (
    LIVEPATCH_HELP,
    SOURCES_HELP,
    add_source_flags,
    add_target_module_flag,
    target_from_args,
    targets_from_args,
)

if TYPE_CHECKING:  # imported when the command runs: `klpsym --help` stays fast
    from klpsym.kbuild import BuildResult
    from klpsym.kbuild.make import KbuildRun
    from klpsym.kbuild.methods import MethodBuild

# klpsym.kbuild.methods.AUTO and klpsym.methods.header.METHODS, without
# importing them (and numpy) to build the parser; a test keeps them equal.
AUTO = "auto"
METHODS = ("klp", "kallsyms", "kprobe")

EPILOG = SOURCES_HELP + "\n\n" + LIVEPATCH_HELP + "\n\n" + FINISH_HELP + """

How: one 'make modules'; when kbuild has compiled the objects, modpost waits
while klpsym classifies each module's undefined symbols; the ones the target
has in kallsyms but does not export are given to modpost in a generated
symvers file (KBUILD_EXTRA_SYMBOLS, through .klpsym-modpost/ in the build
dir), so modpost stays strict: any other undefined symbol still fails the
build.  Then kbuild links the .ko files and klpsym converts each in place.

A separate output dir: '-- MO=OUTDIR' (kernels >= 6.13; refused for older
ones, whose kbuild has none).  kbuild then writes the objects,
modules.order, Module.symvers and the .ko files into OUTDIR (created if
needed; a relative path is taken from the current dir) and nothing into DIR;
klpsym converts the .ko files there.  DIR must not hold an earlier in-place
build (modules.order): kbuild refuses MO= then.

--method (modules that use klpsym.h, with 'ccflags-y += $(shell klpsym
cflags)' in their Kbuild): klp (the default) as above; kallsyms or kprobe
build with a plain, strict kbuild and convert nothing; auto picks klp where
the target supports it (>= 5.8, CONFIG_LIVEPATCH=y), else kprobe
(CONFIG_KPROBES=y), else kallsyms, and says why.

examples:
  klpsym build                                   # the module in ., for the running kernel
  klpsym build --method auto                     # klp if the kernel can, else kprobe/kallsyms
  klpsym build src/ -- V=1                       # make arguments after --
  klpsym build src/ -- MO=/tmp/out               # objects and .ko in /tmp/out (>= 6.13)
  klpsym build --kernel-dir /usr/src/linux-headers-6.1.0-56-amd64 --kallsyms kallsyms.txt
  klpsym build --sign-key MOK.priv --sign-cert MOK.der   # and sign each .ko
  # the target's compiler lives in a chroot of its distribution (as root):
  klpsym build --chroot /srv/trixie --kallsyms kallsyms-6.12.txt \
      --kernel-dir /srv/trixie/usr/src/linux-headers-6.12.48+deb13-amd64
  # or let the lab provision the kernel, its kallsyms and the chroot:
  klpsym lab build trixie

exit status: 0 built and converted, 2 refused or kbuild failed (one line on
stderr says why, after kbuild's own messages)."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "build", help="build an external module with kbuild and convert it",
        usage="klpsym build [DIR] [options] [-- MAKE_ARG...]",
        description="Build the external module(s) in DIR with the target kernel's kbuild, "
                    "letting modpost accept exactly the unexported symbols klpsym can resolve, "
                    "and convert each .ko in place.",
        epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("directory", metavar="DIR", type=Path, nargs="?", default=Path("."),
                   help="the module's source dir, with its Kbuild or Makefile (default: .)")
    add_target_module_flag(p)
    p.add_argument("--sympos", metavar="[OBJ:]NAME=N", action="append", default=[],
                   help="which of several same-name kallsyms entries to use (1-based, in "
                        "kallsyms order; repeatable); OBJ:NAME=N: in livepatch target module "
                        "OBJ (its symbol table order)")
    p.add_argument("--method", choices=[*METHODS, AUTO], default="klp",
                   help="klpsym.h's method for modules that use it (default: klp)")
    p.add_argument("--chroot", metavar="ROOT", type=Path,
                   help="run make inside this chroot, a system with the compiler the target's "
                        "headers call (needs root); KDIR must be inside it, DIR (and MO=) are "
                        "bind-mounted")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout (kbuild's output goes to stderr)")
    add_source_flags(p)
    add_finish_flags(p)
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
    from klpsym.kbuild import early
    from klpsym.kbuild.make import start_early

    # make starts first, so that klpsym's imports and the target's tables load
    # while kbuild compiles; modpost waits for them (klpsym.kbuild.gate).
    started = start_early(args.directory, args.kernel_dir, args.kernel_release,
                          args.make_args, args.symvers,
                          {"KLPSYM_METHOD": "klp"}) if _may_start_early(args) else None
    key = None
    try:
        if started is None:
            early.abandon()  # a make the last run's record started is not this one
        else:
            if started.command is not None and not args.no_cache:
                # The next run with this command line starts it at once.
                early.remember(*started.command, started.gate.dir, _given_files(args))
            from klpsym.kbuild import stamp

            key = stamp.inputs(_arguments(args), _named_files(args, started.kdir))
            # Nothing changed: make ends without modpost; the last report
            # holds if the inputs and the .ko files are the same (no kernel
            # table is loaded then).  When make will probably build, the
            # target loads at once, beside it.
            if (stamp.likely_current(started.objdir, started.directory, key)
                    and started.idle() and started.returncode_now() == 0):
                report = stamp.recorded_report(started.objdir, key)
                if report is not None:
                    sys.stdout.write(report)
                    return 0
        return _run(args, started, key)
    finally:
        if started is not None:
            started.close()


def _arguments(args: argparse.Namespace) -> list[str]:
    """The parsed command line, as text, and whether stdout is a terminal
    (the report is a table there, plain columns elsewhere): for the build
    stamp."""
    from klpsym.cli.text import is_terminal

    return [f"{k}={v!s}" for k, v in sorted(vars(args).items()) if k != "run"] + [
        f"terminal={is_terminal()}"]


def _named_files(args: argparse.Namespace, kdir: Path) -> list[Path | None]:
    return [args.kallsyms, args.system_map, args.vmlinux, args.config, *args.symvers,
            getattr(args, "sign_key", None), getattr(args, "sign_cert", None),
            kdir / "Module.symvers", kdir / ".config",
            kdir / "include/generated/utsrelease.h", kdir / "include/config/kernel.release"]


def _may_start_early(args: argparse.Namespace) -> bool:
    """Whether make may start before the arguments are all checked: the klp
    method on this machine, and no file argument that is missing (a typo is
    said before kbuild prints anything); --sympos is parsed by klp.plan;
    --json sends make's output to stderr, which the early make does not."""
    return (args.method == "klp" and args.chroot is None and not args.sympos
            and not args.target_module
            and not args.json and all(Path(f).is_file() for f in _given_files(args)))


def _given_files(args: argparse.Namespace) -> list[Path]:
    """The files the arguments name (kernel tables, symvers, signing key)."""
    files = [args.kallsyms, args.system_map, args.vmlinux, args.config, *args.symvers,
             getattr(args, "sign_key", None), getattr(args, "sign_cert", None)]
    return [f for f in files if f is not None]


def _run(args: argparse.Namespace, started: KbuildRun | None,
         key: dict[str, object] | None = None) -> int:
    from klpsym.cli.text import is_terminal
    from klpsym.kbuild import ChrootRunner, HostRunner, Runner
    from klpsym.kbuild.build import check_module_dir
    from klpsym.kbuild.methods import build_with_method
    from klpsym.klp.plan import parse_sympos

    sympos = parse_sympos(args.sympos)
    check_module_dir(args.directory)  # the user's own mistake first, then the target
    target = target_from_args(args)
    signer, sign_notes = signer_from_args(args, target)
    targets = targets_from_args(args, target)
    runner: Runner = HostRunner()
    if args.chroot is not None:
        runner = ChrootRunner(args.chroot)
    if started is not None and is_terminal():  # while make runs: print_table's table
        import rich.console
        import rich.table  # noqa: F401
    with _stdout_to_stderr(args.json):
        out = build_with_method(args.directory, target, args.method, sympos, args.make_args,
                                tuple(args.symvers), guard=not args.no_guard, signer=signer,
                                runner=runner, started=started, targets=targets)
    if args.json:
        from klpsym.cli.jsonout import dump

        dump(to_json(out, sign_notes), sys.stdout)
        return 0
    if args.method != "klp":
        print(f"klpsym: method {out.method.label}: {out.reason}")
    if out.klp is not None:
        report = print_table(out.klp, sign_notes)
        if key is not None:
            from klpsym.kbuild import stamp

            stamp.save(out.klp.objdir, key, report)
    else:
        print_method_table(out)
    return 0


@contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """With --json, what make and the compiler print goes to stderr (file
    descriptor 1 is pointed at 2 meanwhile), so stdout holds the JSON only."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def to_json(out: MethodBuild, sign_notes: list[str]) -> dict[str, Any]:
    """``build --json``'s object (see docs/json.md)."""
    from klpsym.cli.jsonout import target_json

    doc: dict[str, Any] = {"method": out.method.label, "reason": out.reason}
    if out.klp is None:
        return {**doc, "target": None, "output_dir": None, "modules": [
            {"name": m.name, "ko": str(m.ko), "converted": [], "relocations_moved": 0,
             "guard": None, "signed_with": None, "notes": [],
             "declared": [{"name": s.name, "pos": s.pos, "kind": s.kind} for s in m.symbols]}
            for m in out.modules], "notes": list(sign_notes)}
    result = out.klp
    modules = []
    for m in result.modules:
        conv = m.converted
        modules.append({
            "name": m.name, "ko": str(m.ko),
            "converted": [{"name": s.name, "pos": s.pos, "relocations": s.relocations}
                          for s in conv],
            "relocations_moved": sum(sum(s.relocations.values()) for s in conv),
            "guard": m.result.guard.action.value if m.result else None,
            "signed_with": (m.result.signed_with.key if m.result and m.result.signed_with
                            else None),
            "notes": list(m.result.plan.notes) if m.result else [],
            "declared": [],
        })
    return {**doc, "target": target_json(result.target),
            "output_dir": None if result.output_dir is None else str(result.output_dir),
            "modules": modules, "notes": list(sign_notes) + list(result.notes)}


def print_method_table(out: MethodBuild) -> None:
    print(f"klpsym: built with the {out.method.label} method (nothing converted)")
    for m in out.modules:
        names = ", ".join(s.name + (f",{s.pos}" if s.pos else "") for s in m.symbols) or "-"
        print(printable(f"  {m.ko}: {names}"))
    if out.method.label == "kallsyms":
        print("load with: klpsym insmod MODULE.ko (it passes the addresses from /proc/kallsyms)")


def print_table(result: BuildResult, notes: list[str] | None = None) -> str:
    """What was built and converted: a table on a terminal, aligned plain
    columns otherwise (a pipe, DKMS's make.log).  Returns what it printed
    (the table as plain text)."""
    from klpsym.cli.text import columns, is_terminal

    head = [printable(f"klpsym: built for {result.target.release} "
                      f"(symbols from {result.target.kallsyms_source})")]
    if result.output_dir is not None:
        head.append(printable(f"output in {result.output_dir} (MO=)"))
    rows = []
    for m in result.modules:
        conv = m.converted
        names = ", ".join(s.name + (f",{s.pos}" if s.pos else "") for s in conv) or "-"
        moved = sum(sum(s.relocations.values()) for s in conv)
        rows.append((str(m.ko.relative_to(result.objdir)
                         if m.ko.is_relative_to(result.objdir) else m.ko),
                     names, str(moved), m.result.guard.action.value if m.result else "-",
                     "yes" if m.result and m.result.signed_with else "no"))
    tail = [f"signed with {s}" for s in sorted(
        {m.result.signed_with.describe() for m in result.modules
         if m.result and m.result.signed_with})]
    tail += [f"note: {note}" for note in notes or []]
    tail += [f"note: {m.name}: {note}" for m in result.modules
             for note in (m.result.plan.notes if m.result else [])]
    tail += [f"note: {note}" for note in result.notes]
    tail = [printable(line) for line in tail]
    if not is_terminal():
        text = "\n".join(head + columns([BUILD_COLUMNS, *rows]) + tail) + "\n"
        sys.stdout.write(text)
        return text
    from rich.console import Console
    from rich.table import Table

    # markup=False and printable(): names come from the modules, as they are
    console = Console(highlight=False, markup=False, record=True)
    for line in head:
        console.print(line)
    table = Table()
    for col in BUILD_COLUMNS:
        table.add_column(col, no_wrap=col == "module")
    for row in rows:
        table.add_row(*(printable(x) for x in row))
    console.print(table)
    for line in tail:
        console.print(line)
    return console.export_text()


BUILD_COLUMNS = ("module", "converted", "relocations", "guard", "signed")
