"""``klpsym check``'s simplify_symbols() step: every undefined symbol
through resolve_symbol() (kernel/module/main.c, 6.1): find_symbol(),
inherit_taint(), check_version(), verify_namespace_is_imported(); and the
two rules other steps share (check_version, try_to_force_load)."""

from __future__ import annotations

import errno

from klpsym.elf.constants import EM
from klpsym.kernel.symvers import MODULE_NS_PREFIX, module_name_matches
from klpsym.klp.classify import Fate, classify_unexported
from klpsym.load.checker import NOT_PLAIN, Checker
from klpsym.load.model import ModuleFacts
from klpsym.load.verdict import ModuleVerdict, Problem, Stage, SymbolCheck
from klpsym.module.license import is_gpl_compatible

ENOENT = -errno.ENOENT  # -2
EINVAL = -errno.EINVAL  # -22


def symbols_step(f: ModuleFacts, ctx: Checker, v: ModuleVerdict) -> None:
    # simplify_symbols(): every symbol is tried, each failure logged.
    if f.common:
        v.problems.append(Problem(
            Stage.SYMBOL, f"common symbols ({', '.join(f.common[:5])}): compile with -fno-common",
            (f"{f.name}: please compile with -fno-common",)))
    gplok = is_gpl_compatible(f.license or "unspecified")
    using_gplonly = False
    versions, has_crcs, depends, plain_rows = f.versions, f.has_crcs, v.depends, v.plain
    checked = v.checked
    at = len(plain_rows) + len(checked)  # the next symbol's place in the loader's order
    looked_up = ctx.plain_found
    listing = ctx.list_plain
    for name, weak in f.undefined:
        plain = looked_up.get(name, NOT_PLAIN)
        if plain is NOT_PLAIN:
            plain = ctx.plain(name)
        if plain is not None:
            # The common case, as _resolve() would find it: an export of a
            # non-proprietary module or vmlinux, in no namespace, visible to
            # this module, whose CRC (if it has one) the module has.
            p, pcrc, first, gpl_only = plain
            crc = versions.get(name)
            if (gplok or not gpl_only) and (pcrc is None or has_crcs and crc == pcrc):
                if listing:
                    plain_rows.append((at, name, p, crc))
                    at += 1
                if gpl_only:
                    using_gplonly = True
                if first is not None and first not in depends:
                    depends.append(first)
                continue
        check, err, stage, lines = _resolve(f, ctx, v, name, gplok, using_gplonly)
        using_gplonly = using_gplonly or (check.ok and check.gpl_only)
        checked.append(check)
        at += 1
        if check.ok:
            if check.fate == Fate.MODULE_EXPORT and check.provider \
                    and check.provider not in depends:
                depends.append(check.provider)
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
        ok, problem = check_version(f, ctx, v, name, p.crc)
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
    """A symbol no export provides: what `klpsym convert` would make of it
    (klp.classify, the classification convert itself uses)."""
    cands = ctx.kallsyms_candidates(name)
    if cands is None:
        return SymbolCheck(name, Fate.MISSING, False,
                           reason="not exported by the kernel (pass a kallsyms source to see "
                                  "whether `klpsym convert` can resolve it)")
    found = classify_unexported(cands, weak=False)
    if found.fate != Fate.CONVERT:
        return SymbolCheck(name, found.fate, False,
                           reason=f"neither exported by {ctx.target.release} nor in its kallsyms")
    if found.pos is not None:
        return SymbolCheck(name, Fate.CONVERT, False, pos=found.pos, candidates=found.candidates,
                           reason="not exported, but in kallsyms: `klpsym convert` resolves it "
                                  f"(POS {found.pos})")
    return SymbolCheck(name, Fate.CONVERT, False, candidates=found.candidates,
                       reason=f"not exported; {found.candidates} kallsyms entries of that name: "
                              f"`klpsym convert --sympos {name}=N` resolves it")


def check_version(f: ModuleFacts, ctx: Checker, v: ModuleVerdict, name: str,
                   exporter_crc: int) -> tuple[bool, Problem | None]:
    """kernel/module/version.c check_version(): (passes, the failure)."""
    if not f.has_crcs:
        # "No versions at all?  modprobe --force does this."
        return force_load(f, ctx, v, name, "no symbol versions (__versions)"), None
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


def force_load(f: ModuleFacts, ctx: Checker, v: ModuleVerdict, reason: str, what: str) -> bool:
    """try_to_force_load(): taints (F) with CONFIG_MODULE_FORCE_LOAD, else fails."""
    if not ctx.force_load:
        return False
    if "F" not in v.taints:
        v.taints.append("F")
        v.problems.append(Problem(Stage.TAINT, f"{what}: loads only because the kernel has "
                                  "CONFIG_MODULE_FORCE_LOAD, and taints it (F)",
                                  (f"{f.name}: {reason}: kernel tainted.",), fatal=False))
    return True
