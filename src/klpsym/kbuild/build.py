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
module may use another's.

``MO=OUTDIR`` (Linux 6.13+, commit 11b3d5175e6b "kbuild: support building
external modules in a separate build directory") moves everything kbuild
writes out of the source dir.  7.2's top Makefile: ``output :=
$(KBUILD_EXTMOD_OUTPUT)`` (from MO= on the command line, else the
environment), ``mkdir -p`` of it, then the final make runs with ``-C
$(abs_output)`` and ``VPATH := $(srcroot)``, so the objects, ``<m>.mod``
(entries ``./part.o``), ``modules.order`` (entries ``m.o``, relative),
``<m>.mod.c``, Module.symvers, modules.nsdeps and the .ko files are all
written in OUTDIR: Makefile.modpost and Makefile.modfinal run there and read
``modules.order`` by a relative name.  The module's Kbuild/Makefile is still
read from the source dir (``src := $(srcroot)``, ``include $(kbuild-file)``).
kbuild also writes OUTDIR/Makefile, OUTDIR/source (a link to the source dir)
and OUTDIR/.gitignore, and refuses to start while the source dir has a
``modules.order`` of an in-place build (target ``outputmakefile``).
Nothing here parses arguments or prints tables.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from klpsym.errors import KbuildError, KlpsymError
from klpsym.kbuild.gate import ModpostGate
from klpsym.kbuild.runner import HostRunner, Runner, modules_in_order
from klpsym.kernel.symvers import MODULE_NS_PREFIX, read_symvers
from klpsym.kernel.target import TargetKernel
from klpsym.klp.classify import Fate
from klpsym.klp.convert import ConvertResult, convert_file
from klpsym.klp.plan import SymbolPlan, classify_symbols
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
    notes: list[str] = field(default_factory=list)
    output_dir: Path | None = None  # MO=; None: kbuild wrote into ``directory``

    @property
    def objdir(self) -> Path:
        """Where kbuild wrote the objects, modules.order and the .ko files."""
        return self.output_dir or self.directory


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
        if name == "MO" and target.version < MO_SINCE:
            raise KbuildError(
                f"make argument {arg!r}: kernel {target.release}'s kbuild has no MO= "
                "(a separate output dir for external modules came in Linux 6.13); build in "
                "the source dir, or copy it and build the copy")
        if name == "KBUILD_EXTMOD_OUTPUT":
            raise KbuildError(f"make argument {arg!r}: give the output dir as MO=DIR")
        if name == "KBUILD_MODPOST_WARN":
            raise KbuildError(f"make argument {arg!r}: klpsym build keeps modpost strict; "
                              "drop it")


def output_dir(make_args: Sequence[str], directory: Path, target: TargetKernel,
               environ: Mapping[str, str] | None = None) -> tuple[list[str], Path | None]:
    """``make_args`` without ``MO=``, and the separate output dir it names
    (None: kbuild writes into ``directory``), made ready for make.

    After :func:`check_make_args`.  A relative MO= is taken from the current
    dir (make would take it from KDIR, its ``-C``); the last MO= wins, as in
    make; without one, 6.13+ kbuild takes ``KBUILD_EXTMOD_OUTPUT`` from the
    environment, and so does this.  The dir is created (a chroot's bind mount
    needs it) and the source dir must not hold an in-place build's
    modules.order, which 6.13+ kbuild refuses (``outputmakefile``: "The
    external module source tree is not clean")."""
    environ = os.environ if environ is None else environ
    rest: list[str] = []
    value: str | None = None
    for arg in make_args:
        if arg.startswith("MO="):
            value = arg[3:]
        else:
            rest.append(arg)
    if value is None and target.version >= MO_SINCE:
        value = environ.get("KBUILD_EXTMOD_OUTPUT")
    if not value:
        return rest, None
    out = Path(os.path.abspath(Path(value).expanduser()))
    if os.path.realpath(out) == os.path.realpath(directory):
        return rest, None
    if out.exists() and not out.is_dir():
        raise KbuildError(f"MO={value}: {out} is not a directory; name a dir for kbuild's output")
    if (directory / "modules.order").exists():
        raise KbuildError(
            f"{directory}: holds an earlier build made in the source dir (modules.order), and "
            f"kbuild refuses MO= while it does; clean it with 'make -C KDIR M={directory} "
            "clean' first")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KbuildError(f"MO={value}: cannot create {out} ({e.strerror})") from None
    return rest, out


def _make(kdir: Path, directory: Path, make_args: Sequence[str], goal: str,
          env: Mapping[str, str] | None = None, runner: Runner | None = None,
          output: Path | None = None) -> int:
    """make -C KDIR M=DIR [MO=OUTPUT] ... GOAL where ``runner`` runs it
    (default: here); ``env`` is added to make's environment."""
    runner = runner or HostRunner()
    jobs = [] if any(a.startswith("-j") or a == "--jobs" or a.startswith("--jobs=")
                     for a in make_args) else [f"-j{os.cpu_count() or 1}"]
    mo = [] if output is None else [f"MO={runner.guest_path(output)}"]
    args = ["-C", str(runner.guest_path(kdir)), f"M={runner.guest_path(directory)}", *mo,
            *jobs, *make_args, goal]
    # kbuild's own output goes straight to the user's terminal.
    return runner.make(args, env).returncode


def _extra_symbols(make_args: Sequence[str], files: Sequence[Path],
                   runner: Runner | None = None) -> tuple[list[str], dict[str, str]]:
    """make arguments and environment additions that add ``files`` to
    KBUILD_EXTRA_SYMBOLS (as ``runner``'s make sees them).

    The environment, not the command line: a command-line value would override
    the module Makefile's own ``KBUILD_EXTRA_SYMBOLS +=`` (Makefile.modpost
    includes it); an environment value is appended to.  A value the user gave
    on the make command line is extended instead."""
    runner = runner or HostRunner()
    add = " ".join(str(runner.guest_path(f)) for f in files)
    args = list(make_args)
    for i, arg in enumerate(args):
        if arg.startswith("KBUILD_EXTRA_SYMBOLS="):
            args[i] = f"{arg} {add}"
            return args, {}
    mine = [str(runner.guest_path(Path(p)))
            for p in os.environ.get("KBUILD_EXTRA_SYMBOLS", "").split()]
    return args, {"KBUILD_EXTRA_SYMBOLS": " ".join([*mine, add])}


def check_module_dir(directory: Path) -> Path:
    """``directory`` resolved, if it is a module dir kbuild can build (the
    CLI checks it before it looks for the target kernel)."""
    directory = directory.resolve()
    if not directory.is_dir():
        raise KbuildError(f"{directory}: no such directory")
    if not ((directory / "Kbuild").is_file() or (directory / "Makefile").is_file()):
        raise KbuildError(f"{directory}: has neither a Kbuild nor a Makefile "
                          "(expected 'obj-m := NAME.o')")
    return directory


def prepare(directory: Path, target: TargetKernel, make_args: Sequence[str],
            ) -> tuple[Path, Path, list[str], Path | None]:
    """What every kbuild run of ``directory`` for ``target`` starts with: the
    module dir (resolved) and the kernel's kbuild dir, both checked; the make
    arguments checked, with MO= turned into the output dir (or None)."""
    directory = check_module_dir(directory)
    kdir = target.kernel_dir
    if kdir is None or not (kdir / "Makefile").is_file():
        raise KbuildError(f"{kdir or 'the target kernel'}: no kbuild Makefile; pass the "
                          "kernel's build/headers dir with --kernel-dir")
    check_make_args(make_args, target)
    args, output = output_dir(make_args, directory, target)
    return directory, kdir, args, output


def build(directory: Path, target: TargetKernel, sympos: Mapping[str, int],
          make_args: Sequence[str] = (), extra_symvers: Sequence[Path] = (), *,
          guard: bool = True, signer: Signer | None = None,
          runner: Runner | None = None) -> BuildResult:
    """Build every module in ``directory`` for ``target`` and convert each .ko
    in place (in the ``MO=`` dir of ``make_args`` if any); see the module
    docstring.  ``extra_symvers`` (the --symvers
    files, already part of ``target.symvers``) go to modpost too.  ``guard``
    and ``signer`` are :func:`klpsym.klp.convert.convert_file`'s.  ``runner``
    runs make (default: on this machine; a ChrootRunner for a chroot with the
    target's compiler, where ``target.kernel_dir`` must be)."""
    runner = runner or HostRunner()
    directory, kdir, make_args, output = prepare(directory, target, make_args)
    objdir = output or directory
    stage = _Stage(directory, objdir, target, sympos, runner)

    # One kbuild run; modpost waits at the gate while klpsym classifies the
    # objects and writes the names it may take as exported.
    nsdeps = stage.nsdeps
    nsdeps_file = objdir / "modules.nsdeps"  # modpost's working dir
    had_nsdeps_file = nsdeps_file.exists()
    with ModpostGate(objdir, stage.symvers_text) as gate:
        args, env = _extra_symbols(make_args, [*(p.resolve() for p in extra_symvers),
                                               *gate.files], runner)
        if nsdeps:
            env["KBUILD_NSDEPS"] = "1"
        try:
            rc = _make(kdir, directory, args, "modules", env, runner, output)
        finally:
            if nsdeps and not had_nsdeps_file:
                nsdeps_file.unlink(missing_ok=True)
    error = gate.error or stage.refusal
    if error is not None and not isinstance(error, Exception):
        raise error  # KeyboardInterrupt and the like, in the gate's thread
    if rc != 0:
        if isinstance(error, KlpsymError):
            raise error  # klpsym's reason, after modpost's own messages
        raise KbuildError(stage.failure(rc, gate.opened))
    if error is not None:
        _remove_unconverted(stage.order)
        raise error
    modules = stage.classified()
    if not gate.opened:  # no modpost run (nothing changed): not checked yet
        try:
            stage.check(modules)
        except KlpsymError:
            _remove_unconverted(stage.order)
            raise

    # Convert each .ko in place, with the exports just built.
    own = objdir / "Module.symvers"
    final = target
    if own.is_file() and own.stat().st_size:
        final = dataclasses.replace(target, symvers=target.symvers.merge(read_symvers(own)))
    for m in modules:
        used = {s.name for s in m.symbols}
        mine = {k: v for k, v in sympos.items() if k in used}
        m.result = convert_file(m.ko, final, mine, in_place=True, guard=guard, signer=signer)
    notes = [f"{name} is exported for named modules only ({ns}) and converted like an "
             "unexported symbol; modpost's warning about its namespace is expected"
             for name, ns in _module_only_exports(modules, target).items()]
    return BuildResult(directory, final, modules, stage.resolved, notes, output)


class _Stage:
    """What klpsym learns from the objects kbuild compiled: each module's
    symbols with their fate (:func:`klpsym.klp.plan.classify_symbols`), and
    the names modpost may take as exported."""

    def __init__(self, directory: Path, objdir: Path, target: TargetKernel,
                 sympos: Mapping[str, int], runner: Runner) -> None:
        self.directory, self.objdir, self.target = directory, objdir, target
        self.sympos, self.runner = sympos, runner
        self.modules: list[BuiltModule] | None = None
        self.siblings: set[str] = set()
        self.resolved: list[str] = []
        self.order: list[Path] = []
        self.refusal: KlpsymError | None = None
        # Exports for named modules only that these modules may not use are
        # converted like unexported symbols, but modpost still sees the export
        # and refuses it unless KBUILD_NSDEPS (see _module_only_exports);
        # which modules use them is known only once modpost runs.
        self.nsdeps = _has_module_only_exports(target)

    def classified(self) -> list[BuiltModule]:
        """The modules of modules.order, classified (once)."""
        if self.modules is None:
            objs = modules_in_order(self.objdir, self.runner.host_path)
            self.order = [o.with_suffix(".ko") for o in objs]
            modules: list[BuiltModule] = []
            siblings: set[str] = set()
            for obj in objs:
                module = read_module(obj)
                names = module.elf.symtab.names()
                used = {n for n in names if n}
                mine = {k: v for k, v in self.sympos.items() if k in used}
                symbols = classify_symbols(module, self.target, mine)
                siblings |= _exported_names(names)
                modules.append(BuiltModule(module.name, obj, obj.with_suffix(".ko"), symbols))
            self.modules, self.siblings = modules, siblings
            # The names modpost should take as exported: convertible, and
            # exported by no module being built (modpost would call that an
            # export "twice").
            self.resolved = sorted({s.name for m in modules for s in m.symbols
                                    if s.fate == Fate.CONVERT and s.name not in siblings
                                    and s.name not in self.target.symvers})
        return self.modules

    def check(self, modules: Sequence[BuiltModule]) -> None:
        """klpsym's own refusals: a --sympos no module needs; a namespace not
        imported, which modpost no longer checks under KBUILD_NSDEPS."""
        unused = sorted(set(self.sympos) - {s.name for m in modules for s in m.symbols
                                            if s.fate == Fate.CONVERT})
        if unused:
            raise KbuildError(f"--sympos {unused[0]}: no module in {self.directory} uses "
                              f"{unused[0]} as an unexported symbol; drop the flag")
        if self.nsdeps:
            _check_namespace_imports(modules, self.target)

    def symvers_text(self) -> str:
        """The generated symvers, for the gate (modpost waits meanwhile).
        A refusal (:meth:`check`) is kept in :attr:`refusal` and the names
        still go to modpost, so that its own errors come first; klpsym's
        follows once make is done."""
        modules = self.classified()
        try:
            self.check(modules)
        except KlpsymError as e:
            self.refusal = e
        return extra_symvers_text(self.resolved)

    def failure(self, rc: int, gated: bool) -> str:
        """klpsym's line after a failed make.  ``gated``: modpost read the
        generated symvers, so the objects were all compiled; else make
        failed before modpost, or the module's makefile dropped the file."""
        generic = f"kbuild failed in {self.directory} (make exit {rc}); see its messages above"
        if not gated and extra_symbols_assignment(self.directory) is None:
            return generic
        try:
            modules = self.classified()
        except KlpsymError:
            return generic
        return _failure(self.directory, modules, self.siblings, self.target, rc,
                        () if gated else self.resolved)


def _remove_unconverted(kos: Sequence[Path]) -> None:
    """kbuild linked these .ko files, then klpsym refused to convert them:
    removed, so that nothing unconverted looks built (as when modpost fails,
    and kbuild links nothing)."""
    for ko in kos:
        ko.unlink(missing_ok=True)


def _has_module_only_exports(target: TargetKernel) -> bool:
    return any(ns.startswith(MODULE_NS_PREFIX)
               for _, _, ns, _ in target.symvers.fields().values())


def _module_only_exports(modules: Sequence[BuiltModule],
                         target: TargetKernel) -> dict[str, str]:
    """Convertible names that the target exports for named modules only
    (``EXPORT_SYMBOL_FOR_MODULES``, namespace ``module:NAMES``, v6.16+; see
    klpsym.kernel.symvers).  To these modules they are unexported, so klpsym
    converts them, but modpost finds the export and fails with "module M uses
    symbol X from namespace module:..., but does not import it" (7.x
    scripts/mod/modpost.c check_exports(); KBUILD_MODPOST_WARN does not cover
    it).  Only modpost's -N turns that into a warning, and kbuild passes -N
    only with ``KBUILD_NSDEPS`` set (scripts/Makefile.modpost since v5.4, which
    also makes modpost write ``modules.nsdeps`` into its working directory:
    for external modules since 6.13 the output dir, the module dir or MO=;
    such exports came later).  So klpsym sets KBUILD_NSDEPS for the modpost run, removes the
    nsdeps file, and checks the namespace imports itself
    (:func:`_check_namespace_imports`) so that nothing else is let through."""
    out: dict[str, str] = {}
    for m in modules:
        for s in m.symbols:
            export = target.symvers.get(s.name)
            if s.fate == Fate.CONVERT and export is not None and export.module_only:
                out[s.name] = export.namespace
    return dict(sorted(out.items()))


def _check_namespace_imports(modules: Sequence[BuiltModule], target: TargetKernel) -> None:
    """What modpost's -N stops checking: every namespaced export a module uses
    is imported with MODULE_IMPORT_NS() (``import_ns=`` in .modinfo).  Fails
    with modpost's wording, which the loader would otherwise echo at insmod
    (verify_namespace_is_imported())."""
    for m in modules:
        imported = set(read_module(m.obj).modinfo.get_all("import_ns"))
        for s in m.symbols:
            export = target.symvers.get(s.name)
            if s.fate not in (Fate.EXPORTED, Fate.MODULE_EXPORT) or export is None:
                continue
            ns = export.import_namespace
            if ns and ns not in imported:
                raise KbuildError(
                    f"module {m.name} uses symbol {s.name} from namespace {ns}, but does not "
                    f"import it; add MODULE_IMPORT_NS(\"{ns}\") to its source")


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
    # every one named (up to 8, as convert does): "x (and 1 more)" hid the other
    mods = {mod for mod, _ in missing}
    names = ", ".join(name if len(mods) == 1 else f"{name} ({mod}.ko)"
                      for mod, name in missing[:8])
    names += f" and {len(missing) - 8} more" if len(missing) > 8 else ""
    one = len(missing) == 1
    head = f"{missing[0][0]}.ko: undefined" if len(mods) == 1 else "undefined"
    return (f"{head} symbol{'' if one else 's'} {names} {'is' if one else 'are'} neither "
            f"exported by kernel {target.release} ({target.symvers.source}) nor in its "
            f"kallsyms ({target.kallsyms_source}), so modpost refused {'it' if one else 'them'}; "
            "check the name, or add the "
            f"exporting module's Module.symvers with {param('symvers')}")

