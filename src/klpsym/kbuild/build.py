"""``klpsym build``: kbuild with a strict modpost, then convert.

kbuild builds an external module in two stages (scripts/Makefile.modpost,
Linux 6.1): first the objects, one ``<m>.o`` per module (for a composite
module the ``ld -r`` of its parts) and ``modules.order``; then modpost checks
every undefined symbol against Module.symvers and writes ``<m>.mod.c``; then
``<m>.ko`` is linked.  :func:`build` runs the first stage alone (the
``modules_check`` goal, which depends on ``modules.order`` only), classifies
each ``<m>.o``'s undefined symbols with :func:`klpsym.klp.plan.classify_symbols`,
and hands the convertible ones to modpost as a generated symvers file in
``KBUILD_EXTRA_SYMBOLS``::

    0x00000000<TAB>NAME<TAB>vmlinux<TAB>EXPORT_SYMBOL_GPL<TAB>

Why this keeps modpost strict and is safe (6.1 scripts/mod/modpost.c):

* read_dump() files the line under module ``vmlinux`` (find_module() finds
  the one the kernel's own Module.symvers made), so check_exports() resolves
  NAME and warns about nothing else: a symbol that is neither exported nor
  in kallsyms is still ``ERROR: modpost: "X" [M.ko] undefined!``.  No ``-w``
  (KBUILD_MODPOST_WARN) is ever passed.
* ``EXPORT_SYMBOL_GPL`` makes modpost itself refuse a GPL-incompatible
  module, as the converter does.
* write_dump() skips modules read from dumps, so the dir's Module.symvers
  does not re-export the names.
* Under CONFIG_MODVERSIONS, sym_set_crc() marks CRC 0 valid and add_versions()
  writes ``{ 0x00000000, "NAME" }`` into ``__versions``.  The loader never
  looks it up: after conversion the symbol is ``.klp.sym.vmlinux.NAME,POS`` in
  SHN_LIVEPATCH, which simplify_symbols() skips, so resolve_symbol() and
  check_version() never see it.
* vmlinux is never a module dependency (add_depends() skips it).

Then kbuild links the .ko files and each is converted in place, with the
exports of the modules just built (the dir's Module.symvers) added so one
module may use another's.  Nothing here parses arguments or prints tables.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from klpsym.errors import KbuildError
from klpsym.kernel.symvers import read_symvers
from klpsym.kernel.target import TargetKernel
from klpsym.klp.convert import ConvertResult, convert_file
from klpsym.klp.plan import Fate, SymbolPlan, classify_symbols
from klpsym.klp.sign import Signer
from klpsym.module.ko import read_module

# Symbols an EXPORT_SYMBOL() leaves in the object: __ksymtab_NAME up to 6.4,
# __export_symbol_NAME since 6.5 (commit ddb5cdbafaaa "kbuild: generate
# KSYMTAB entries by modpost").
_EXPORT_MARKERS = ("__ksymtab_", "__export_symbol_")
# MO= (external module output dir) came with Linux 6.13 (commit 11b3d5175e6b
# "kbuild: support building external modules in a separate build directory").
MO_SINCE = (6, 13)
# A makefile assignment to KBUILD_EXTRA_SYMBOLS other than += and ?= replaces
# the environment's value, which is where the generated symvers is.
_EXTRA_SYMBOLS_SET = re.compile(
    r"^[ \t]*(?:(?:export|override|private)[ \t]+)*KBUILD_EXTRA_SYMBOLS[ \t]*(?::::?=|::?=|!=|=)",
    re.MULTILINE)


@dataclass
class BuiltModule:
    """One module of the build: its object before modpost, its .ko, what
    klpsym found and did."""

    name: str
    obj: Path
    ko: Path
    symbols: list[SymbolPlan]
    result: ConvertResult | None = None

    @property
    def converted(self) -> list[SymbolPlan]:
        """Symbols that are livepatch symbols in the .ko now."""
        if self.result is None:
            return []
        plan = self.result.plan
        return [s for s in plan.symbols if s.fate in (Fate.CONVERT, Fate.LIVEPATCH)]


@dataclass
class BuildResult:
    directory: Path
    target: TargetKernel
    modules: list[BuiltModule]
    resolved: list[str] = field(default_factory=list)  # names given to modpost


def modules_in_order(directory: Path) -> list[Path]:
    """The module objects (``<m>.o``) kbuild listed in ``directory/modules.order``
    (6.1 writes absolute ``.ko`` paths for external modules; older kernels
    relative ``.o`` or ``kernel/...`` ones)."""
    order = directory / "modules.order"
    try:
        entries = order.read_text().split()
    except OSError as e:
        raise KbuildError(f"{order}: kbuild wrote no modules.order ({e.strerror}); is obj-m set "
                          "in the Kbuild/Makefile?") from None
    out: list[Path] = []
    for entry in entries:
        rel = Path(entry.removeprefix("kernel/"))
        obj = (rel if rel.is_absolute() else directory / rel).with_suffix(".o")
        if obj not in out:
            out.append(obj)
    if not out:
        raise KbuildError(f"{order} lists no module; set obj-m in the Kbuild/Makefile")
    return out


def extra_symvers_text(names: Sequence[str]) -> str:
    """The generated symvers: each name as a GPL export of vmlinux with CRC 0
    (see the module docstring for why modpost and the loader accept it)."""
    return "".join(f"0x00000000\t{n}\tvmlinux\tEXPORT_SYMBOL_GPL\t\n" for n in sorted(names))


def _exported_names(symbol_names: Sequence[str]) -> set[str]:
    out: set[str] = set()
    for n in symbol_names:
        for prefix in _EXPORT_MARKERS:
            if n.startswith(prefix):
                out.add(n[len(prefix):])
    return out


def check_make_args(make_args: Sequence[str], target: TargetKernel) -> None:
    """Refuse make arguments that would build something else than DIR."""
    for arg in make_args:
        name = arg.split("=", 1)[0] if "=" in arg else ""
        if name in ("M", "SUBDIRS", "KBUILD_EXTMOD"):
            raise KbuildError(f"make argument {arg!r}: the module directory is klpsym build's "
                              "DIR argument; drop it")
        if name == "MO":
            if target.version < MO_SINCE:
                raise KbuildError(
                    f"make argument {arg!r}: kernel {target.release}'s kbuild has no MO= "
                    "(a separate output dir for external modules came in Linux 6.13); build in "
                    "the source dir, or copy it and build the copy")
            raise KbuildError(f"make argument {arg!r}: klpsym build does not support MO= yet; "
                              "build in the source dir")
        if name == "KBUILD_MODPOST_WARN":
            raise KbuildError(f"make argument {arg!r}: klpsym build keeps modpost strict; "
                              "drop it")


def _make(kdir: Path, directory: Path, make_args: Sequence[str], goal: str,
          env: Mapping[str, str] | None = None) -> int:
    jobs = [] if any(a.startswith("-j") or a == "--jobs" or a.startswith("--jobs=")
                     for a in make_args) else [f"-j{os.cpu_count() or 1}"]
    cmd = ["make", "-C", str(kdir), f"M={directory}", *jobs, *make_args, goal]
    try:
        # kbuild's own output goes straight to the user's terminal.
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, env=env, check=False).returncode
    except FileNotFoundError:
        raise KbuildError("'make' is not installed; install make and the compiler the "
                          "kernel headers use (Debian: build-essential)") from None


def _extra_symbols(make_args: Sequence[str], files: Sequence[Path]) -> tuple[list[str],
                                                                            dict[str, str]]:
    """make arguments and environment that add ``files`` to KBUILD_EXTRA_SYMBOLS.

    The environment, not the command line: a command-line value would override
    the module Makefile's own ``KBUILD_EXTRA_SYMBOLS +=`` (Makefile.modpost
    includes it); an environment value is appended to.  A value the user gave
    on the make command line is extended instead."""
    add = " ".join(str(f) for f in files)
    args = list(make_args)
    env = dict(os.environ)
    for i, arg in enumerate(args):
        if arg.startswith("KBUILD_EXTRA_SYMBOLS="):
            args[i] = f"{arg} {add}"
            return args, env
    env["KBUILD_EXTRA_SYMBOLS"] = " ".join(
        p for p in (env.get("KBUILD_EXTRA_SYMBOLS", ""), add) if p)
    return args, env


def build(directory: Path, target: TargetKernel, sympos: Mapping[str, int],
          make_args: Sequence[str] = (), extra_symvers: Sequence[Path] = (), *,
          guard: bool = True, signer: Signer | None = None) -> BuildResult:
    """Build every module in ``directory`` for ``target`` and convert each .ko
    in place; see the module docstring.  ``extra_symvers`` (the --symvers
    files, already part of ``target.symvers``) go to modpost too.  ``guard``
    and ``signer`` are :func:`klpsym.klp.convert.convert_file`'s."""
    directory = directory.resolve()
    if not directory.is_dir():
        raise KbuildError(f"{directory}: no such directory")
    if not ((directory / "Kbuild").is_file() or (directory / "Makefile").is_file()):
        raise KbuildError(f"{directory}: has neither a Kbuild nor a Makefile "
                          "(expected 'obj-m := NAME.o')")
    kdir = target.kernel_dir
    if kdir is None or not (kdir / "Makefile").is_file():
        raise KbuildError(f"{kdir or 'the target kernel'}: no kbuild Makefile; pass the "
                          "kernel's build/headers dir with --kernel-dir")
    check_make_args(make_args, target)

    # Stage 1: the objects and modules.order, no modpost.
    rc = _make(kdir, directory, make_args, "modules_check")
    if rc != 0:
        raise KbuildError(f"kbuild failed compiling {directory} (make exit {rc}); see its "
                          "messages above")
    objs = modules_in_order(directory)
    modules: list[BuiltModule] = []
    siblings: set[str] = set()
    for obj in objs:
        module = read_module(obj)
        used = {n for n in module.elf.symtab.names() if n}
        mine = {k: v for k, v in sympos.items() if k in used}
        symbols = classify_symbols(module, target, mine)
        siblings |= _exported_names(module.elf.symtab.names())
        modules.append(BuiltModule(module.name, obj, obj.with_suffix(".ko"), symbols))
    unused = sorted(set(sympos) - {s.name for m in modules for s in m.symbols
                                   if s.fate == Fate.CONVERT})
    if unused:
        raise KbuildError(f"--sympos {unused[0]}: no module in {directory} uses {unused[0]} as "
                          "an unexported symbol; drop the flag")

    # The names modpost should take as exported: convertible, and exported by
    # no module being built (modpost would call that an export "twice").
    resolved = sorted({s.name for m in modules for s in m.symbols if s.fate == Fate.CONVERT
                       and s.name not in siblings and s.name not in target.symvers})

    # Stage 2: modpost (strict) and the final link.
    with tempfile.TemporaryDirectory(prefix="klpsym-build-") as tmp:
        gen = Path(tmp) / "klpsym.symvers"
        gen.write_text(extra_symvers_text(resolved))
        args, env = _extra_symbols(make_args, [*(p.resolve() for p in extra_symvers), gen])
        rc = _make(kdir, directory, args, "modules", env)
    if rc != 0:
        raise KbuildError(_failure(directory, modules, siblings, target, rc, resolved))

    # Stage 3: convert each .ko in place, with the exports just built.
    own = directory / "Module.symvers"
    final = target
    if own.is_file() and own.stat().st_size:
        final = dataclasses.replace(target, symvers=target.symvers.merge(read_symvers(own)))
    for m in modules:
        used = {s.name for s in m.symbols}
        mine = {k: v for k, v in sympos.items() if k in used}
        m.result = convert_file(m.ko, final, mine, in_place=True, guard=guard, signer=signer)
    return BuildResult(directory, final, modules, resolved)


def extra_symbols_assignment(directory: Path) -> tuple[Path, int, str] | None:
    """(file, line number, line) where the makefile modpost reads sets
    KBUILD_EXTRA_SYMBOLS with ``:=``/``=`` (not ``+=``/``?=``), or None.

    scripts/Makefile.modpost includes the module's Kbuild, else its Makefile
    (6.1: ``include $(or $(wildcard $(src)/Kbuild), $(src)/Makefile)``; 7.x the
    same through ``$(kbuild-file)``) to read KBUILD_EXTRA_SYMBOLS; such an
    assignment there drops the environment's value, klpsym's generated symvers."""
    for name in ("Kbuild", "Makefile"):
        path = directory / name
        if path.is_file():
            try:
                text = path.read_text(errors="replace")
            except OSError:
                return None
            m = _EXTRA_SYMBOLS_SET.search(text)
            if m is None:
                return None
            line = text.count("\n", 0, m.start()) + 1
            return path, line, text.splitlines()[line - 1].strip()
    return None


def _failure(directory: Path, modules: list[BuiltModule], siblings: set[str],
             target: TargetKernel, rc: int, resolved: Sequence[str] = ()) -> str:
    missing = [(m.name, s.name) for m in modules for s in m.symbols
               if s.fate == Fate.MISSING and s.name not in siblings]
    if not missing:
        where = extra_symbols_assignment(directory) if resolved else None
        if where is not None:
            path, line, text = where
            return (f"kbuild failed in {directory} (make exit {rc}): {path.name}:{line} "
                    f"'{text}' replaces the KBUILD_EXTRA_SYMBOLS that klpsym build passes in "
                    "the environment (the symvers listing the unexported symbols), so modpost "
                    "called them undefined; write 'KBUILD_EXTRA_SYMBOLS +=' instead")
        return f"kbuild failed in {directory} (make exit {rc}); see its messages above"
    mod, name = missing[0]
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    return (f"{mod}.ko: undefined symbol {name}{more} is neither exported by kernel "
            f"{target.release} ({target.symvers.source}) nor in its kallsyms "
            f"({target.kallsyms_source}), so modpost refused it; check the name, or add the "
            "exporting module's Module.symvers with --symvers")

