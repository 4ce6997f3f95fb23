"""``klpsym build``: kbuild with a strict modpost, then convert.

kbuild builds an external module in two stages (scripts/Makefile.modpost,
Linux 6.1): first the objects, one ``<m>.o`` per module (for a composite
module the ``ld -r`` of its parts) and ``modules.order``; then modpost checks
every undefined symbol against Module.symvers and writes ``<m>.mod.c``; then
``<m>.ko`` is linked.  :func:`build` runs ``make modules`` once
(:class:`klpsym.kbuild.make.KbuildRun`); when modpost starts, it waits at
klpsym's gate (:mod:`klpsym.kbuild.gate`) while klpsym classifies each
``<m>.o``'s undefined symbols with :func:`klpsym.klp.plan.classify_symbols`
and writes the convertible ones into a symvers file that modpost then reads
(through ``KBUILD_EXTRA_SYMBOLS``)::

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
* A livepatch module's names that resolve in a target module
  (``--target-module``, :mod:`klpsym.module.kallsyms`) are classified
  ``convert`` like vmlinux's and go into the same file, filed under
  ``vmlinux`` too: so modpost resolves them, and adds no ``depends=`` on the
  target (a livepatch loads before or after its target; klp_module_coming()
  applies the relocations when the target comes).  The conversion then
  writes them as ``.klp.sym.<module>.NAME,POS`` in ``.klp.rela.<module>.*``.

Then kbuild links the .ko files and each is converted in place, with the
exports of the modules just built (the dir's Module.symvers) added so one
module may use another's.  A rebuild where nothing changed runs no modpost
(its command line, gate included, is the same as last time); the objects are
classified afterwards then, and the .ko files, converted before, are left as
they are.

Why not hand modpost every unexported name of the target's kallsyms, without
waiting: 6.1's modpost keeps symbols in a 1024-bucket hash, and with the
78,079 unexported names of bookworm's kallsyms it took 0.88-1.24 s against
0.22 s without them (2026-12-04); and a module that exports a name that is
also a static vmlinux symbol would fail with "exported twice".

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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from klpsym.errors import KbuildError, KlpsymError, param
from klpsym.kbuild.make import (
    MO_SINCE,
    MODULE_ONLY_SINCE,
    KbuildRun,
    check_args,
    check_kernel_dir,
    check_module_dir,
    extra_symbols,
    make_argv,
    split_output,
)
from klpsym.kbuild.runner import HostRunner, Runner, modules_in_order
from klpsym.kernel.symvers import Export, ExportFields, Symvers, read_symvers
from klpsym.kernel.target import TargetKernel
from klpsym.klp.classify import Fate
from klpsym.klp.convert import ConvertResult, convert_file
from klpsym.klp.plan import SymbolPlan, classify_symbols
from klpsym.klp.sign import Signer
from klpsym.module.kallsyms import TargetModules
from klpsym.module.ko import read_module

# Symbols an EXPORT_SYMBOL() leaves in the object: __ksymtab_NAME up to 6.4,
# __export_symbol_NAME since 6.5 (commit ddb5cdbafaaa "kbuild: generate
# KSYMTAB entries by modpost").
__all__ = ["MO_SINCE", "BuildResult", "BuiltModule", "build", "check_make_args",
           "check_module_dir", "extra_symvers_text", "modpost_names", "output_dir", "prepare"]

_EXPORT_MARKERS = ("__ksymtab_", "__export_symbol_")
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


def modpost_names(name: str) -> tuple[str, ...]:
    """The names modpost may look ``name`` up by: itself, and without gcc's
    numeric suffix of a renamed static (``count.4``: ``count``).
    read_symbols() passes every symbol name through remove_dot() before
    handle_symbol() records an undefined one, so a livepatch's reference to
    a target module's ``count.4`` is ``"count" undefined!`` to modpost unless
    the generated symvers has ``count``.  remove_dot() cuts at the first dot
    when digits follow it up to the end or another dot (6.1, 6.12 and 7.x
    all cut: their modpost said ``"count" undefined!``); before the commit
    "modpost: fix removing numeric suffixes" (Lobakin, acked May 2022) it
    tested the wrong character and cut nothing, so the name itself is given
    too."""
    dot = name.find(".")
    if dot <= 0:
        return (name,)
    rest = name[dot + 1:]
    digits = len(rest) - len(rest.lstrip("0123456789"))
    if digits and (digits == len(rest) or rest[digits] == "."):
        return (name, name[:dot])
    return (name,)


def _exported_names(symbol_names: Sequence[str]) -> set[str]:
    out: set[str] = set()
    for n in symbol_names:
        for prefix in _EXPORT_MARKERS:
            if n.startswith(prefix):
                out.add(n[len(prefix):])
    return out


def check_make_args(make_args: Sequence[str], target: TargetKernel) -> None:
    """Refuse make arguments that would build something else than DIR."""
    check_args(make_args, target.version.as_tuple, target.release)


def output_dir(make_args: Sequence[str], directory: Path, target: TargetKernel,
               environ: Mapping[str, str] | None = None) -> tuple[list[str], Path | None]:
    """:func:`klpsym.kbuild.make.split_output` for ``target``."""
    return split_output(make_args, directory, target.version.as_tuple, environ)


def _make(kdir: Path, directory: Path, make_args: Sequence[str], goal: str,
          env: Mapping[str, str] | None = None, runner: Runner | None = None,
          output: Path | None = None) -> int:
    """make -C KDIR M=DIR [MO=OUTPUT] ... GOAL where ``runner`` runs it
    (default: here); ``env`` is added to make's environment."""
    runner = runner or HostRunner()
    # kbuild's own output goes straight to the user's terminal.
    return runner.make(make_argv(kdir, directory, make_args, goal, runner, output),
                       env).returncode


_extra_symbols = extra_symbols


def prepare(directory: Path, target: TargetKernel, make_args: Sequence[str],
            ) -> tuple[Path, Path, list[str], Path | None]:
    """What every kbuild run of ``directory`` for ``target`` starts with: the
    module dir (resolved) and the kernel's kbuild dir, both checked; the make
    arguments checked, with MO= turned into the output dir (or None)."""
    directory = check_module_dir(directory)
    kdir = check_kernel_dir(target.kernel_dir)
    check_make_args(make_args, target)
    args, output = output_dir(make_args, directory, target)
    return directory, kdir, args, output


def build(directory: Path, target: TargetKernel, sympos: Mapping[str, int],
          make_args: Sequence[str] = (), extra_symvers: Sequence[Path] = (), *,
          guard: bool = True, signer: Signer | None = None,
          runner: Runner | None = None, started: KbuildRun | None = None,
          targets: TargetModules | None = None) -> BuildResult:
    """Build every module in ``directory`` for ``target`` and convert each .ko
    in place (in the ``MO=`` dir of ``make_args`` if any); see the module
    docstring.  ``extra_symvers`` (the --symvers
    files, already part of ``target.symvers``) go to modpost too.  ``guard``
    and ``signer`` are :func:`klpsym.klp.convert.convert_file`'s.  ``runner``
    runs make (default: on this machine; a ChrootRunner for a chroot with the
    target's compiler, where ``target.kernel_dir`` must be).  ``started``:
    the make run :func:`klpsym.kbuild.make.start_early` began for this
    build, used if it is the one this build would start (else stopped).
    ``targets``: the modules a livepatch module may reference
    (:class:`klpsym.module.kallsyms.TargetModules`)."""
    runner = runner or HostRunner()
    try:
        directory, kdir, make_args, output = prepare(directory, target, make_args)
    except BaseException:
        if started is not None:
            started.close()
        raise
    objdir = output or directory
    stage = _Stage(directory, objdir, target, sympos, runner, targets)

    # One kbuild run; modpost waits at the gate while klpsym classifies the
    # objects and writes the names it may take as exported.
    run = KbuildRun(kdir, directory, make_args, output, [p.resolve() for p in extra_symvers],
                    nsdeps=target.version >= MODULE_ONLY_SINCE, runner=runner)
    if started is not None and (started.key != run.key or not isinstance(runner, HostRunner)):
        started.close()
        started = None
    run = started or run.start()
    run.attach(stage.symvers_text)
    rc = run.wait()
    error = run.gate.error or stage.refusal
    if error is not None and not isinstance(error, Exception):
        raise error  # KeyboardInterrupt and the like, in the gate's thread
    if rc != 0:
        if isinstance(error, KlpsymError):
            raise error  # klpsym's reason, after modpost's own messages
        raise KbuildError(stage.failure(rc, run.gated))
    if error is not None:
        _remove_unconverted(stage.order)
        raise error
    modules = stage.classified()
    if not run.gated:  # no modpost run (nothing changed): not checked yet
        try:
            stage.check(modules)
        except KlpsymError:
            _remove_unconverted(stage.order)
            raise

    # Convert each .ko in place, with the exports just built.
    own = objdir / "Module.symvers"
    final = target
    if own.is_file() and own.stat().st_size:
        final = dataclasses.replace(target, symvers=_WithSiblings(target.symvers,
                                                                  read_symvers(own, cache=False)))
    for m in modules:
        used = {s.name for s in m.symbols}
        mine = {k: v for k, v in sympos.items() if _sympos_name(k) in used}
        m.result = convert_file(m.ko, final, mine, in_place=True, guard=guard, signer=signer,
                                targets=targets)
    notes = [f"{name} is exported for named modules only ({ns}) and converted like an "
             "unexported symbol; modpost's warning about its namespace is expected"
             for name, ns in _module_only_exports(modules, target).items()]
    return BuildResult(directory, final, modules, stage.resolved, notes, output)


class _Stage:
    """What klpsym learns from the objects kbuild compiled: each module's
    symbols with their fate (:func:`klpsym.klp.plan.classify_symbols`), and
    the names modpost may take as exported."""

    def __init__(self, directory: Path, objdir: Path, target: TargetKernel,
                 sympos: Mapping[str, int], runner: Runner,
                 targets: TargetModules | None = None) -> None:
        self.directory, self.objdir, self.target = directory, objdir, target
        self.sympos, self.runner, self.targets = sympos, runner, targets
        self.modules: list[BuiltModule] | None = None
        self.siblings: set[str] = set()
        self.resolved: list[str] = []
        self.order: list[Path] = []
        self.refusal: KlpsymError | None = None
        # Exports for named modules only that these modules may not use are
        # converted like unexported symbols, but modpost still sees the export
        # and refuses it unless KBUILD_NSDEPS (see _module_only_exports);
        # which modules use them is known only once modpost runs.
        self.nsdeps = target.version >= MODULE_ONLY_SINCE

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
                mine = {k: v for k, v in self.sympos.items() if _sympos_name(k) in used}
                symbols = classify_symbols(module, self.target, mine, self.targets)
                siblings |= _exported_names(names)
                modules.append(BuiltModule(module.name, obj, obj.with_suffix(".ko"), symbols))
            self.modules, self.siblings = modules, siblings
            # The names modpost should take as exported: convertible, and
            # exported by no module being built (modpost would call that an
            # export "twice").
            self.resolved = sorted({n for m in modules for s in m.symbols
                                    if s.fate == Fate.CONVERT
                                    for n in modpost_names(s.name)
                                    if n not in siblings and n not in self.target.symvers})
        return self.modules

    def check(self, modules: Sequence[BuiltModule]) -> None:
        """klpsym's own refusals: a --sympos no module needs; a namespace not
        imported, which modpost no longer checks under KBUILD_NSDEPS."""
        converted = {s.name for m in modules for s in m.symbols if s.fate == Fate.CONVERT}
        unused = sorted(k for k in self.sympos if _sympos_name(k) not in converted)
        if unused:
            raise KbuildError(f"{param('sympos')} {unused[0]}: no module in {self.directory} uses "
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


class _WithSiblings(Symvers):
    """The target's exports and those of the modules just built, as
    :meth:`Symvers.merge` gives them, without making an Export of each of the
    target's ~30,000 (~50 ms: one run's conversion of a small module costs
    less).  A name both export is refused as merge refuses it (modpost has
    said "exported twice" before, for a vmlinux export)."""

    def __init__(self, base: Symvers, siblings: Symvers) -> None:
        super().__init__(None, [*base.sources, *(s for s in siblings.sources
                                                 if s not in base.sources)],
                         base.layouts | siblings.layouts)
        self._base, self._siblings = base, siblings
        self._exports = None
        for e in siblings:
            prev = base.get(e.name)
            if prev is not None and prev.module != e.module:
                base.merge(siblings)  # raises merge's error

    @property
    def exports(self) -> dict[str, Export]:
        return {**self._base.exports, **self._siblings.exports}

    def prefetch(self, names: Sequence[str]) -> None:
        self._base.prefetch(names)
        self._siblings.prefetch(names)

    def __len__(self) -> int:
        return len(self.exports)

    def get(self, name: str) -> Export | None:
        return self._siblings.get(name) or self._base.get(name)

    def fields(self) -> dict[str, ExportFields]:
        return {**self._base.fields(), **self._siblings.fields()}

    def has_vmlinux_exports(self) -> bool:
        return self._base.has_vmlinux_exports() or self._siblings.has_vmlinux_exports()


def _sympos_name(key: str) -> str:
    """The symbol name of a ``--sympos`` key (``NAME`` or ``OBJ:NAME``)."""
    return key.rpartition(":")[2]


def _remove_unconverted(kos: Sequence[Path]) -> None:
    """kbuild linked these .ko files, then klpsym refused to convert them:
    removed, so that nothing unconverted looks built (as when modpost fails,
    and kbuild links nothing)."""
    for ko in kos:
        ko.unlink(missing_ok=True)


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
    such exports came later).  So klpsym sets KBUILD_NSDEPS for the modpost run
    on every target that can have such exports (6.16+: whether a module uses
    one is known only when modpost is already running, at the gate), removes
    the nsdeps file, and checks the namespace imports itself
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

