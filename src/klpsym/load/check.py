"""``klpsym check``: would these modules load on the target kernel?

A static walk through the kernel's load path, in its order (Linux 6.1
kernel/module/main.c load_module(); the same steps exist from 5.8 to 7.x):

1. module_sig_check() (kernel/module/signing.c): an unsigned module is
   refused only with CONFIG_MODULE_SIG_FORCE, otherwise it taints (E).
2. elf_validity_check(), setup_load_info(): the ELF machine, a symbol
   table, ``.gnu.linkonce.this_module``.
3. check_modstruct_version(): the module's CRC of ``module_layout`` against
   vmlinux's (only kernels that still export module_layout).
4. check_modinfo(): vermagic (same_magic(): the release is not compared
   when the module has CRCs), the livepatch flag, the licence (a
   non-GPL-compatible one taints P, and then GPL-only exports are invisible).
5. simplify_symbols(): every SHN_UNDEF symbol through resolve_symbol():
   find_symbol() (vmlinux first, then loaded modules; GPL-only exports only
   for GPL-compatible modules), inherit_taint(), check_version() (the
   module's ``__versions`` CRC against the exporter's), and
   verify_namespace_is_imported() (MODULE_IMPORT_NS).  A failure logs
   "Unknown symbol NAME (err N)" and the load fails, unless the reference
   is weak and the symbol simply was not found.
6. apply_relocations(): unknown x86_64 relocation types, and the
   ``.klp.rela.vmlinux.*`` sections through klp_apply_section_relocs() and
   klp_resolve_symbols() (kernel/livepatch/core.c): each
   ``.klp.sym.vmlinux.NAME,POS`` looked up in vmlinux's kallsyms.
7. verify_exported_symbols(): an export that vmlinux already has.

What it cannot know: whether a signature verifies, the module's init
function, the running system's state (already loaded modules other than the
target's own, blacklists, lockdown).  Messages the kernel prints once per
boot (taints, "no symbol version") are listed as if this were the first
module loaded.

Each problem carries the line the kernel logs for it (``Problem.kernel``),
as the 6.1 sources print it, so that a user can match it against dmesg.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, NamedTuple

from klpsym.elf.constants import EM
from klpsym.kernel.kallsyms import Candidate
from klpsym.kernel.symvers import (
    GPL_ONLY_TYPES,
    MODULE_NS_PREFIX,
    ExportFields,
    module_name_matches,
)
from klpsym.kernel.target import TargetKernel
from klpsym.kernel.vermagic import expected_vermagic, same_magic
from klpsym.kernel.version import klp_sym_name_max, supports_klp_for_plain_modules
from klpsym.klp.names import VMLINUX
from klpsym.load.facts import KlpUse, ModuleFacts
from klpsym.module.license import is_gpl_compatible

ENOENT = -errno.ENOENT  # -2
EINVAL = -errno.EINVAL  # -22


class Verdict(StrEnum):
    LOADS = "loads"
    LOADS_AFTER = "loads-after"  # once the modules it uses are loaded
    FAILS = "fails"
    ERROR = "error"  # not a module klpsym can read


class Fate(StrEnum):
    VMLINUX = "vmlinux"  # exported by vmlinux
    MODULE = "module"  # exported by a module, which must be loaded first
    KLP = "klp"  # not exported, in vmlinux's kallsyms: `klpsym convert` resolves it
    UNRESOLVED = "unresolved"  # neither
    WEAK = "weak"  # weak reference to nothing: allowed
    IGNORED = "ignored"  # _GLOBAL_OFFSET_TABLE_ on x86
    LIVEPATCH = "livepatch"  # .klp.sym.OBJ.NAME,POS, resolved through kallsyms


class Stage(StrEnum):
    SIGNATURE = "signature"
    ELF = "elf"
    VERMAGIC = "vermagic"
    MODVERSIONS = "modversions"
    LICENSE = "license"
    SYMBOL = "symbol"
    GPL = "gpl-only"
    NAMESPACE = "namespace"
    TAINT = "taint"
    RELOCATION = "relocation"
    KLP = "klp"
    EXPORTS = "exports"
    DEPENDENCY = "dependency"


@dataclass(frozen=True)
class Problem:
    stage: Stage
    message: str  # klpsym's explanation, one line
    kernel: tuple[str, ...] = ()  # the lines the kernel logs for it
    symbol: str | None = None
    fatal: bool = True


@dataclass(slots=True)
class SymbolCheck:
    name: str
    fate: Fate
    ok: bool
    provider: str | None = None  # "vmlinux" or the exporting module's name
    gpl_only: bool = False
    namespace: str = ""
    crc: int | None = None  # the module's __versions CRC
    exporter_crc: int | None = None
    pos: int | None = None  # for klp: POS `klpsym convert` would write / the one written
    candidates: int = 0  # same-name kallsyms entries
    reason: str = ""


SYMBOL_FIELDS = tuple(f.name for f in fields(SymbolCheck))


def _astuple(s: SymbolCheck) -> tuple[Any, ...]:
    return (s.name, s.fate, s.ok, s.provider, s.gpl_only, s.namespace, s.crc, s.exporter_crc,
            s.pos, s.candidates, s.reason)


@dataclass(eq=False)
class ModuleVerdict:
    path: str
    name: str
    verdict: Verdict
    problems: list[Problem] = field(default_factory=list)
    taints: list[str] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    vermagic: str | None = None
    expected_vermagic: tuple[str, ...] = ()
    # False where a batch check left ``symbols`` out (load.batch.check_paths
    # with symbols=False, for a module that would load)
    symbols_listed: bool = True
    # The symbols in the loader's order: SymbolCheck, or (name, provider,
    # crc) for one an export resolves plainly, made a SymbolCheck on first
    # use of ``symbols`` (most are never looked at; making them all was a
    # third of a whole kernel's check).
    _symbols: list[SymbolCheck | tuple[str, _Provider, int | None]] = field(
        default_factory=list, repr=False)

    @property
    def symbols(self) -> list[SymbolCheck]:
        rows = self._symbols
        if any(type(r) is tuple for r in rows):
            rows[:] = [SymbolCheck(r[0], r[1].fate, True, r[1].module, r[1].gpl_only, "", r[2],
                                   r[1].crc) if type(r) is tuple else r for r in rows]
        return rows  # type: ignore[return-value]  # all SymbolCheck now

    @symbols.setter
    def symbols(self, value: list[SymbolCheck]) -> None:
        self._symbols = list(value)

    def symbol_records(self) -> list[tuple[Any, ...]]:
        """The symbols as tuples of SymbolCheck's fields, in its order
        (SYMBOL_FIELDS), without making SymbolCheck objects (for reports of
        many modules)."""
        return [_astuple(r) if isinstance(r, SymbolCheck) else
                (r[0], r[1].fate, True, r[1].module, r[1].gpl_only, "", r[2], r[1].crc, None, 0, "")
                for r in self._symbols]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModuleVerdict):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def _key(self) -> tuple[object, ...]:
        return (self.path, self.name, self.verdict, self.problems, self.symbols, self.taints,
                self.depends, self.notes, self.vermagic, self.expected_vermagic,
                self.symbols_listed)

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    @property
    def would_load(self) -> bool:
        return self.verdict in (Verdict.LOADS, Verdict.LOADS_AFTER)

    def kernel_messages(self) -> list[str]:
        return [line for p in self.problems for line in p.kernel]


class _Provider(NamedTuple):
    """Who exports a symbol, as find_symbol() would find it."""

    module: str  # "vmlinux" or a module name
    gpl_only: bool
    namespace: str
    crc: int | None
    proprietary: bool  # the exporter is tainted P (batch modules only)
    fate: Fate  # VMLINUX or MODULE


def _provider(module: str, gpl_only: bool, namespace: str, crc: int | None,
              proprietary: bool = False) -> _Provider:
    return _Provider(module, gpl_only, namespace, crc, proprietary,
                     Fate.VMLINUX if module == "vmlinux" else Fate.MODULE)


_MISSING = _provider("", False, "", None)  # not looked up yet
_Plain = tuple[_Provider, int | None, str | None, bool]  # see Checker.plain
_NOT_PLAIN: _Plain = (_MISSING, None, None, False)  # not looked up yet


#: An export of a module of the batch: (name, gpl_only, namespace, crc), the
#: fields of ExportFact as a plain tuple (cheaper to send between processes).
_ExportTuple = tuple[str, bool, str, int | None]
#: What a module of the batch exports to the others: (its name, whether it
#: is proprietary, its exports).
BatchExports = tuple[str, bool, tuple[_ExportTuple, ...]]


def batch_exports(f: ModuleFacts) -> BatchExports | None:
    if f.error is not None:
        return None
    return f.name, not is_gpl_compatible(f.license or "unspecified"), \
        tuple((e.name, e.gpl_only, e.namespace, e.crc) for e in f.exports)


class Checker:
    """What the checks need of the target, computed once for many modules;
    :meth:`check` judges one."""

    def __init__(self, target: TargetKernel, batch: Iterable[BatchExports | None]) -> None:
        self.target = target
        cfg = target.config
        self.config_known = cfg is not None
        self.force_load = cfg is not None and cfg.enabled("MODULE_FORCE_LOAD")
        self.sig_force = cfg is not None and cfg.enabled("MODULE_SIG_FORCE")
        self.sig = cfg is not None and cfg.enabled("MODULE_SIG")
        self.modversions = cfg.enabled("MODVERSIONS") if cfg is not None else None
        self.allow_missing_ns = cfg is not None and cfg.enabled(
            "MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS")
        self.livepatch = cfg.enabled("LIVEPATCH") if cfg is not None else None
        self.machine = EM.X86_64 if cfg is not None and cfg.enabled("X86_64") else None
        self.vermagic = expected_vermagic(target.version, cfg, target.kernel_dir)
        self.klp_width = klp_sym_name_max(target.version)
        # One dict lookup a name (Symvers.get may cost more, per name), and
        # no Export object made for the ~25,000 names a kernel exports
        self.exports: dict[str, ExportFields] = target.symvers.fields()
        layout = self.exports.get("module_layout")
        self.module_layout = _from_fields(layout) if layout is not None \
            and layout[0] == VMLINUX else None
        self._providers: dict[str, _Provider | None] = {}
        self._plain: dict[str, _Plain | None] = {}
        # Exports of the modules checked together (they would be loaded),
        # the first module's where two export a name; a provider is made
        # when a name is looked up.
        self._batch: dict[str, tuple[str, bool, _ExportTuple]] = {
            e[0]: (item[0], item[1], e)
            for item in reversed([b for b in batch if b is not None]) for e in item[2]}

    #: False: the symbols an export resolves plainly are not listed in the
    #: verdicts (load.batch, for modules that load and whose symbols are
    #: not shown: a tuple each, made and thrown away, for ~185,000 symbols)
    list_plain = True

    def check(self, f: ModuleFacts) -> ModuleVerdict:
        return check_one(f, self)

    def provider(self, name: str) -> _Provider | None:
        """find_symbol(): vmlinux first, then the modules (this batch's
        before the target's own, which the batch may replace)."""
        found = self._providers.get(name, _MISSING)
        if found is _MISSING:
            found = self._providers[name] = self._find(name)
        return found

    def plain(self, name: str) -> _Plain | None:
        """For a symbol exported by vmlinux or a non-proprietary module in no
        namespace (resolve_symbol()'s common case): (provider, its CRC, the
        module to load first or None, GPL-only); else None."""
        found = self._plain.get(name, _NOT_PLAIN)
        if found is _NOT_PLAIN:
            p = self.provider(name)
            found = None if p is None or p.proprietary or p.namespace else (
                p, p.crc, None if p.fate == Fate.VMLINUX else p.module, p.gpl_only)
            self._plain[name] = found
        return found

    def _find(self, name: str) -> _Provider | None:
        e = self.exports.get(name)
        if e is not None and e[0] == VMLINUX:
            return _from_fields(e)
        exporter = self._batch.get(name)
        if exporter is not None:
            module, proprietary, (_, gpl_only, namespace, crc) = exporter
            return _provider(module, gpl_only, namespace, crc, proprietary)
        return _from_fields(e) if e is not None else None

    def kallsyms_candidates(self, name: str) -> list[Candidate] | None:
        if not self.target.has_kallsyms:
            return None
        return self.target.kallsyms.candidates(name)


def _from_fields(e: ExportFields) -> _Provider:
    module, export_type, namespace, crc = e
    owner = VMLINUX if module == VMLINUX else module.rsplit("/", 1)[-1].replace("-", "_")
    return _provider(owner, export_type in GPL_ONLY_TYPES, namespace, crc)


def check_modules(facts: Sequence[ModuleFacts], target: TargetKernel) -> list[ModuleVerdict]:
    """The verdict on each module, in the order given; modules checked
    together may use each other's exports."""
    ctx = Checker(target, map(batch_exports, facts))
    verdicts = [check_one(f, ctx) for f in facts]
    propagate_dependencies(verdicts)
    return verdicts


def check_one(f: ModuleFacts, ctx: Checker) -> ModuleVerdict:
    if f.error is not None:
        return ModuleVerdict(str(f.path), f.path.name, Verdict.ERROR,
                             [Problem(Stage.ELF, f.error)])
    v = ModuleVerdict(str(f.path), f.name, Verdict.LOADS, vermagic=f.vermagic,
                      expected_vermagic=ctx.vermagic)
    problems = v.problems
    fatal = False
    for step in _STEPS:
        seen = len(problems)
        step(f, ctx, v)
        # a step that added no problem cannot have made the module fail
        if len(problems) > seen and any(p.fatal for p in problems[seen:]):
            fatal = True
            break
    if fatal:
        v.verdict = Verdict.FAILS
    elif v.depends:
        v.verdict = Verdict.LOADS_AFTER
    return v


# ---------------------------------------------------------------- the steps


def _signature(f: ModuleFacts, ctx: Checker, v: ModuleVerdict) -> None:
    if f.signed:
        v.notes.append("signed: klpsym does not verify signatures; the kernel rejects one that "
                       "does not verify, and with CONFIG_MODULE_SIG_FORCE one by an unknown key")
        return
    if ctx.sig_force:
        # kernel/module/signing.c module_sig_check(): -EKEYREJECTED
        v.problems.append(Problem(
            Stage.SIGNATURE, "unsigned, and the kernel has CONFIG_MODULE_SIG_FORCE: sign it with "
            "scripts/sign-file and a key the kernel trusts",
            ("Loading of unsigned module is rejected",)))
    elif ctx.sig:
        v.taints.append("E")
        v.problems.append(Problem(
            Stage.TAINT, "unsigned: loads, and taints the kernel (E)",
            (f"{f.name}: module verification failed: signature and/or required key missing - "
             "tainting kernel",), fatal=False))


def _elf(f: ModuleFacts, ctx: Checker, v: ModuleVerdict) -> None:
    if ctx.machine is not None and f.machine != ctx.machine:
        # kernel/module/main.c elf_validity_check()
        v.problems.append(Problem(
            Stage.ELF, f"ELF machine {f.machine}, but the kernel is x86_64 ({int(ctx.machine)})",
            (f"Invalid architecture in ELF header: {f.machine}",)))
    label = f.modinfo_name or "(missing .modinfo section or name field)"
    # setup_load_info()
    if not f.has_symtab:
        v.problems.append(Problem(Stage.ELF, "no symbol table (stripped?)",
                                  (f"{label}: module has no symbols (stripped?)",)))
    if not f.has_this_module:
        v.problems.append(Problem(
            Stage.ELF, "no .gnu.linkonce.this_module section: not linked by kbuild's modpost",
            (f"{label}: No module found in object",)))


def _module_layout(f: ModuleFacts, ctx: Checker, v: ModuleVerdict) -> None:
    layout = ctx.module_layout
    if layout is None or layout.crc is None:
        return
    # check_modstruct_version(): a failure is -ENOEXEC ("Invalid module format"
    # from insmod), whatever check_version() logged.
    ok, problem = _check_version(f, ctx, v, "module_layout", layout.crc)
    if not ok:
        v.problems.append(problem or Problem(
            Stage.MODVERSIONS, "no symbol versions (__versions) and no CONFIG_MODULE_FORCE_LOAD: "
            "refused (insmod: Invalid module format); rebuild it with the kernel's headers"))


def _modinfo(f: ModuleFacts, ctx: Checker, v: ModuleVerdict) -> None:
    # check_modinfo()
    if f.vermagic is None:
        if not _force(f, ctx, v, "bad vermagic", "no vermagic in .modinfo"):
            v.problems.append(Problem(Stage.VERMAGIC, "no vermagic in .modinfo, and no "
                                      "CONFIG_MODULE_FORCE_LOAD: refused"))
    elif ctx.vermagic:
        if not any(same_magic(f.vermagic, k, f.has_crcs) for k in ctx.vermagic):
            want = ctx.vermagic[0]
            what = ("the configuration words differ" if _release(f.vermagic) == _release(want)
                    else "built for another kernel")
            v.problems.append(Problem(
                Stage.VERMAGIC, f"vermagic {f.vermagic.strip()!r} is not the kernel's "
                f"{want.strip()!r} ({what}); rebuild it against {ctx.target.release}'s headers",
                (f"{f.name}: version magic '{f.vermagic}' should be '{want}'",)))
        elif f.has_crcs and _release(f.vermagic) != ctx.target.release:
            v.notes.append(f"built for {_release(f.vermagic)}, but it has symbol CRCs, so the "
                           "loader does not compare the release (same_magic)")
    else:
        v.notes.append("the kernel's vermagic is unknown (no .config): only the release was "
                       "compared")
        if _release(f.vermagic) != ctx.target.release and not f.has_crcs:
            v.problems.append(Problem(
                Stage.VERMAGIC, f"built for {_release(f.vermagic)}, the kernel is "
                f"{ctx.target.release}"))
    if not f.intree:
        v.taints.append("O")
        v.problems.append(Problem(Stage.TAINT, "out-of-tree: taints the kernel (O)",
                                  (f"{f.name}: loading out-of-tree module taints kernel.",),
                                  fatal=False))
    if f.staging:
        v.taints.append("C")
        v.problems.append(Problem(
            Stage.TAINT, "from staging: taints the kernel (C)",
            (f"{f.name}: module is from the staging directory, the quality is unknown, you "
             "have been warned.",), fatal=False))
    if f.livepatch and ctx.livepatch is False:
        v.problems.append(Problem(
            Stage.KLP, "a livepatch module, and the kernel has no CONFIG_LIVEPATCH",
            (f"{f.name}: module is marked as livepatch module, but livepatch support is "
             "disabled",)))
    license = f.license or "unspecified"
    if not is_gpl_compatible(license):
        v.taints.append("P")
        v.problems.append(Problem(
            Stage.LICENSE, f"license {license!r} is not GPL-compatible: taints the kernel (P), "
            "and GPL-only exports are invisible to it",
            (f"{f.name}: module license '{license}' taints kernel.",), fatal=False))


def _release(vermagic: str) -> str:
    return vermagic.split(" ", 1)[0]


def _symbols(f: ModuleFacts, ctx: Checker, v: ModuleVerdict) -> None:
    # simplify_symbols(): every symbol is tried, each failure logged.
    if f.common:
        v.problems.append(Problem(
            Stage.SYMBOL, f"common symbols ({', '.join(f.common[:5])}): compile with -fno-common",
            (f"{f.name}: please compile with -fno-common",)))
    gplok = is_gpl_compatible(f.license or "unspecified")
    using_gplonly = False
    versions, has_crcs, depends, rows = f.versions, f.has_crcs, v.depends, v._symbols
    looked_up = ctx._plain
    listing = ctx.list_plain
    for name, weak in f.undefined:
        plain = looked_up.get(name, _NOT_PLAIN)
        if plain is _NOT_PLAIN:
            plain = ctx.plain(name)
        if plain is not None:
            # The common case, as _resolve() would find it: an export of a
            # non-proprietary module or vmlinux, in no namespace, visible to
            # this module, whose CRC (if it has one) the module has.
            p, pcrc, first, gpl_only = plain
            crc = versions.get(name)
            if (gplok or not gpl_only) and (pcrc is None or has_crcs and crc == pcrc):
                if listing:
                    rows.append((name, p, crc))
                if gpl_only:
                    using_gplonly = True
                if first is not None and first not in depends:
                    depends.append(first)
                continue
        check, err, stage, lines = _resolve(f, ctx, v, name, gplok, using_gplonly)
        using_gplonly = using_gplonly or (check.ok and check.gpl_only)
        rows.append(check)
        if check.ok:
            if check.fate == Fate.MODULE and check.provider and check.provider not in v.depends:
                v.depends.append(check.provider)
            continue
        if err == 0 and (weak or _ignored(f, name)):
            check.ok = True
            check.fate = Fate.WEAK if weak else Fate.IGNORED
            check.reason = ("weak reference: stays NULL" if weak
                            else "ignored by the x86 loader (ignore_undef_symbol)")
            continue
        unknown = f"{f.name}: Unknown symbol {name} (err {err or ENOENT})"
        v.problems.append(Problem(stage, f"{name}: {check.reason}", (*lines, unknown),
                                  symbol=name))


def _ignored(f: ModuleFacts, name: str) -> bool:
    # kernel/module/main.c ignore_undef_symbol() (since 5.11)
    return f.machine == EM.X86_64 and name == "_GLOBAL_OFFSET_TABLE_"


def _resolve(f: ModuleFacts, ctx: Checker, v: ModuleVerdict, name: str, gplok: bool,
             using_gplonly: bool) -> tuple[SymbolCheck, int, Stage, tuple[str, ...]]:
    """resolve_symbol(): the symbol's check, the error it returns (0: not
    found, NULL), the stage that failed and the lines the kernel logs
    before "Unknown symbol"."""
    p = ctx.provider(name)
    crc = f.versions.get(name)
    if p is None:
        check = _unexported(ctx, name)
        check.crc = crc
        return check, 0, Stage.SYMBOL, ()
    check = SymbolCheck(name, p.fate, False, provider=p.module, gpl_only=p.gpl_only,
                        namespace=p.namespace, crc=crc, exporter_crc=p.crc)
    if p.gpl_only and not gplok:
        # find_exported_symbol_in_section(): !gplok skips GPL_ONLY
        check.reason = (f"GPL-only export of {p.module}, invisible to a module with license "
                        f"{f.license or 'unspecified'!r}")
        return check, 0, Stage.GPL, ()
    # inherit_taint()
    if p.proprietary:
        if using_gplonly or p.gpl_only:
            check.reason = f"uses GPL-only symbols, and {p.module} is proprietary"
            return check, 0, Stage.LICENSE, (
                f"{f.name}: module using GPL-only symbols uses symbols {name} from proprietary "
                f"module {p.module}.",)
        if "P" not in v.taints:
            v.taints.append("P")
            v.problems.append(Problem(
                Stage.TAINT, f"uses {name} from the proprietary module {p.module}: taints (P)",
                (f"{f.name}: module uses symbols {name} from proprietary module {p.module}, "
                 "inheriting taint.",), symbol=name, fatal=False))
    # check_version()
    if p.crc is not None:
        ok, problem = _check_version(f, ctx, v, name, p.crc)
        if not ok:
            check.reason = problem.message if problem else (
                "no symbol versions (__versions) and no CONFIG_MODULE_FORCE_LOAD")
            return check, EINVAL, Stage.MODVERSIONS, problem.kernel if problem else ()
    # verify_namespace_is_imported()
    ns = p.namespace
    if ns:
        module_ns = ns.startswith(MODULE_NS_PREFIX)
        allowed = (module_name_matches(ns[len(MODULE_NS_PREFIX):], f.name) if module_ns
                   else ns in f.import_ns)
        if not allowed:
            line = (f"{f.name}: module uses symbol ({name}) from namespace {ns}, but does not "
                    "import it.")
            if ctx.allow_missing_ns and not module_ns:
                v.problems.append(Problem(
                    Stage.NAMESPACE, f"{name}: namespace {ns} not imported (this kernel allows "
                    "it: CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS)", (line,), symbol=name,
                    fatal=False))
            else:
                check.reason = (f"exported only for the modules {ns[len(MODULE_NS_PREFIX):]}"
                                if module_ns else
                                f"namespace {ns} not imported: add MODULE_IMPORT_NS({ns})")
                return check, EINVAL, Stage.NAMESPACE, (line,)
    check.ok = True
    return check, 0, Stage.SYMBOL, ()


def _unexported(ctx: Checker, name: str) -> SymbolCheck:
    cands = ctx.kallsyms_candidates(name)
    if cands is None:
        return SymbolCheck(name, Fate.UNRESOLVED, False,
                           reason="not exported by the kernel (pass a kallsyms source to see "
                                  "whether `klpsym convert` can resolve it)")
    if not cands:
        return SymbolCheck(name, Fate.UNRESOLVED, False,
                           reason=f"neither exported by {ctx.target.release} nor in its kallsyms")
    if len(cands) == 1:
        return SymbolCheck(name, Fate.KLP, False, pos=0, candidates=1,
                           reason="not exported, but in kallsyms: `klpsym convert` resolves it "
                                  "(POS 0)")
    return SymbolCheck(name, Fate.KLP, False, candidates=len(cands),
                       reason=f"not exported; {len(cands)} kallsyms entries of that name: "
                              f"`klpsym convert --sympos {name}=N` resolves it")


def _check_version(f: ModuleFacts, ctx: Checker, v: ModuleVerdict, name: str,
                   exporter_crc: int) -> tuple[bool, Problem | None]:
    """kernel/module/version.c check_version(): (passes, the failure)."""
    if not f.has_crcs:
        # "No versions at all?  modprobe --force does this."
        return _force(f, ctx, v, name, "no symbol versions (__versions)"), None
    crc = f.versions.get(name)
    if crc is None:
        # "Broken toolchain. Warn once, then let it go.."
        v.problems.append(Problem(Stage.MODVERSIONS, f"no CRC for {name} in __versions",
                                  (f"{f.name}: no symbol version for {name}",), symbol=name,
                                  fatal=False))
        return True, None
    if crc == exporter_crc:
        return True, None
    return False, Problem(
        Stage.MODVERSIONS, f"CRC {crc:#010x} in the module, {exporter_crc:#010x} in the kernel: "
        "built against other headers; rebuild against the target's",
        (f"{f.name}: disagrees about version of symbol {name}",), symbol=name)


def _force(f: ModuleFacts, ctx: Checker, v: ModuleVerdict, reason: str, what: str) -> bool:
    """try_to_force_load(): taints (F) with CONFIG_MODULE_FORCE_LOAD, else fails."""
    if not ctx.force_load:
        return False
    if "F" not in v.taints:
        v.taints.append("F")
        v.problems.append(Problem(Stage.TAINT, f"{what}: loads only because the kernel has "
                                  "CONFIG_MODULE_FORCE_LOAD, and taints it (F)",
                                  (f"{f.name}: {reason}: kernel tainted.",), fatal=False))
    return True


def _relocations(f: ModuleFacts, ctx: Checker, v: ModuleVerdict) -> None:
    for sec, rtype in f.bad_relocations:
        # arch/x86/kernel/module.c __write_relocate_add()
        v.problems.append(Problem(Stage.RELOCATION, f"{sec}: relocation type {rtype} is not "
                                  "handled by the x86_64 module loader",
                                  (f"{f.name}: Unknown rela relocation: {rtype}",)))
    if not f.has_klp:
        return
    names = ", ".join(u.name or u.symbol for u in f.klp_uses[:5])
    if not supports_klp_for_plain_modules(ctx.target.version):
        v.problems.append(Problem(
            Stage.KLP, f"livepatch relocations ({names}): kernel {ctx.target.release} is older "
            "than 5.8 and applies them to livepatch modules only, so they would stay 0"))
        return
    if ctx.livepatch is False:
        v.problems.append(Problem(
            Stage.KLP, f"livepatch relocations ({names}): the kernel has no CONFIG_LIVEPATCH, "
            "so the loader skips them silently and they would stay 0"))
        return
    if ctx.livepatch is None:
        v.notes.append("the kernel's .config is unknown: CONFIG_LIVEPATCH=y not checked")
    for text in f.klp_static:
        v.problems.append(Problem(Stage.KLP, text))
    if not ctx.target.has_kallsyms:
        v.notes.append("no kallsyms source: the livepatch symbols were not looked up")
    for use in f.klp_uses:
        problem = _klp_resolve(ctx, use)
        v.symbols.append(SymbolCheck(use.name or use.symbol, Fate.LIVEPATCH, problem is None,
                                     provider=use.objname, pos=use.pos,
                                     reason=problem.message if problem else ""))
        if problem is not None:
            v.problems.append(problem)
            return  # klp_resolve_symbols() stops at the first failure


def _klp_resolve(ctx: Checker, use: KlpUse) -> Problem | None:
    # kernel/livepatch/core.c klp_resolve_symbols(), klp_find_object_symbol() (6.1)
    if use.objname is None or len(use.name) > ctx.klp_width:
        return Problem(Stage.KLP, f"{use.symbol}: not .klp.sym.OBJ.NAME,POS (NAME at most "
                       f"{ctx.klp_width} characters for {ctx.target.release})",
                       (f"symbol {use.symbol} has an incorrectly formatted name",),
                       symbol=use.symbol)
    if use.objname != VMLINUX:
        return Problem(Stage.KLP, f"{use.symbol}: object {use.objname}: a plain module's klp "
                       "relocations can only use vmlinux symbols", symbol=use.name)
    cands = ctx.kallsyms_candidates(use.name)
    if cands is None:
        return None
    if not cands:
        return Problem(Stage.KLP, f"{use.name}: not in {ctx.target.release}'s kallsyms",
                       (f"symbol '{use.name}' not found in symbol table",), symbol=use.name)
    if use.pos == 0 and len(cands) > 1:
        # objname is NULL for vmlinux: printk prints "(null)"
        return Problem(Stage.KLP, f"{use.name}: POS 0 but {len(cands)} kallsyms entries of "
                       f"that name; convert again with --sympos {use.name}=N",
                       (f"unresolvable ambiguity for symbol '{use.name}' in object '(null)'",),
                       symbol=use.name)
    if use.pos > len(cands):
        return Problem(Stage.KLP, f"{use.name}: POS {use.pos}, but kallsyms has {len(cands)} "
                       f"entr{'ies' if len(cands) > 1 else 'y'} of that name",
                       (f"symbol position {use.pos} for symbol '{use.name}' in object "
                        "'vmlinux' not found",), symbol=use.name)
    return None


def _exports(f: ModuleFacts, ctx: Checker, v: ModuleVerdict) -> None:
    if f.exports and ctx.modversions and not f.exports_crcs:
        # check_export_symbol_versions()
        if not _force(f, ctx, v, "no versions for exported symbols",
                      "exports symbols without CRCs"):
            v.problems.append(Problem(Stage.EXPORTS, "exports symbols without CRCs, and the "
                                      "kernel has modversions but no CONFIG_MODULE_FORCE_LOAD"))
    for e in f.exports:
        owner = ctx.exports.get(e.name)
        if owner is not None and owner[0] == VMLINUX:
            # verify_exported_symbols()
            v.problems.append(Problem(
                Stage.EXPORTS, f"exports {e.name}, which vmlinux already exports",
                (f"{f.name}: exports duplicate symbol {e.name} (owned by kernel)",),
                symbol=e.name))


_Step = Callable[[ModuleFacts, Checker, ModuleVerdict], None]
# load_module()'s order; it stops after the first step that fails.
_STEPS: tuple[_Step, ...] = (_signature, _elf, _module_layout, _modinfo, _symbols,
                             _relocations, _exports)


def propagate_dependencies(verdicts: Iterable[ModuleVerdict],
                           ) -> list[tuple[ModuleVerdict, list[str]]]:
    """A module that needs a module of the same check which would not load
    would not load either.  Returns each module failed here with the
    modules it needed (see :func:`fail_for_dependencies`)."""
    by_name = {v.name: v for v in verdicts if v.verdict != Verdict.ERROR}
    # the names of the modules that would not load, as they become so
    failing = {name for name, v in by_name.items() if v.verdict == Verdict.FAILS}
    failed: list[tuple[ModuleVerdict, list[str]]] = []
    changed = bool(failing)
    while changed:
        changed = False
        for v in by_name.values():
            if v.verdict != Verdict.LOADS_AFTER or failing.isdisjoint(v.depends):
                continue
            bad = [d for d in v.depends if d in failing]
            fail_for_dependencies(v, bad)
            failing.add(v.name)
            failed.append((v, bad))
            changed = True
    return failed


def fail_for_dependencies(v: ModuleVerdict, bad: list[str]) -> None:
    v.problems.append(Problem(Stage.DEPENDENCY, f"needs {', '.join(bad)}, which would not load"))
    v.verdict = Verdict.FAILS


def summary_reason(v: ModuleVerdict) -> str:
    """One line: why it would not load, or what it needs."""
    if v.verdict == Verdict.ERROR:
        return v.problems[0].message if v.problems else "unreadable"
    fatal = v.fatal
    if fatal:
        first = fatal[0]
        more = f" (+{len(fatal) - 1} more)" if len(fatal) > 1 else ""
        return first.message + more
    if v.depends:
        return "after " + ", ".join(v.depends)
    return ""
