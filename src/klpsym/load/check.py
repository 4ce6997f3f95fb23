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

Here: the order of the steps and all of them but step 5, which is
:mod:`klpsym.load.resolve`; the verdicts' data is :mod:`klpsym.load.verdict`,
the target's side :mod:`klpsym.load.checker`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from klpsym.kernel.sympos import PosError, choose_pos
from klpsym.kernel.target import TargetKernel
from klpsym.kernel.vermagic import same_magic
from klpsym.kernel.version import supports_klp_for_plain_modules
from klpsym.klp.classify import Fate
from klpsym.klp.ibt import (
    function_label,
    is_sealed,
    seal_note,
    sealed_addresses,
    symbol_kind,
    target_vmlinux,
)
from klpsym.klp.names import VMLINUX
from klpsym.load.checker import BatchExports, Checker, batch_exports
from klpsym.load.model import KlpUse, ModuleFacts
from klpsym.load.resolve import check_version, force_load, symbols_step
from klpsym.load.verdict import (
    SYMBOL_FIELDS,
    ModuleVerdict,
    Problem,
    Stage,
    SymbolCheck,
    Verdict,
    fail_for_dependencies,
    propagate_dependencies,
    summary_reason,
)
from klpsym.module.license import is_gpl_compatible

# The API of the check, wherever its parts are defined.
__all__ = [
    "SYMBOL_FIELDS", "BatchExports", "Checker", "Fate", "ModuleVerdict", "Problem", "Stage",
    "SymbolCheck", "Verdict", "batch_exports", "check_modules", "check_one",
    "fail_for_dependencies", "propagate_dependencies", "summary_reason",
]


def check_modules(facts: Sequence[ModuleFacts], target: TargetKernel,
                  target_modules: Sequence[str] = ()) -> list[ModuleVerdict]:
    """The verdict on each module, in the order given; modules checked
    together may use each other's exports.  ``target_modules``: a
    livepatch's (``--target-module``)."""
    ctx = Checker(target, map(batch_exports, facts), target_modules)
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
    ok, problem = check_version(f, ctx, v, "module_layout", layout.crc)
    if not ok:
        v.problems.append(problem or Problem(
            Stage.MODVERSIONS, "no symbol versions (__versions) and no CONFIG_MODULE_FORCE_LOAD: "
            "refused (insmod: Invalid module format); rebuild it with the kernel's headers"))


def _modinfo(f: ModuleFacts, ctx: Checker, v: ModuleVerdict) -> None:
    # check_modinfo()
    if f.vermagic is None:
        if not force_load(f, ctx, v, "bad vermagic", "no vermagic in .modinfo"):
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


def _relocations(f: ModuleFacts, ctx: Checker, v: ModuleVerdict) -> None:
    for sec, rtype in f.bad_relocations:
        # arch/x86/kernel/module.c __write_relocate_add()
        v.problems.append(Problem(Stage.RELOCATION, f"{sec}: relocation type {rtype} is not "
                                  "handled by the x86_64 module loader",
                                  (f"{f.name}: Unknown rela relocation: {rtype}",)))
    if not f.has_klp:
        return
    names = ", ".join(u.name or u.symbol for u in f.klp_uses[:5])
    if not supports_klp_for_plain_modules(ctx.target.version) and not f.livepatch:
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
    objects = sorted({u.objname for u in f.klp_uses if u.objname not in (None, VMLINUX)})
    if f.livepatch and objects:
        # kernel/livepatch/core.c: a module object's .klp.rela sections are
        # applied by klp_apply_object_relocs() when the patch is enabled
        # with the object loaded (klp_init_object_loaded()) or when the
        # object loads later (klp_module_coming()), not by this load.
        v.notes.append(f"livepatch: needs target module{'s' * (len(objects) != 1)} "
                       f"{', '.join(objects)}; its klp relocations for "
                       f"{'them' if len(objects) != 1 else 'it'} are applied when the patch "
                       "is enabled with the module loaded, or when the module loads later")
    for use in f.klp_uses:
        if f.livepatch and use.objname not in (None, VMLINUX):
            v.add_symbol(SymbolCheck(use.name, Fate.LIVEPATCH, True, provider=use.objname,
                                     pos=use.pos, reason=f"applied when {use.objname} is loaded"))
            continue
        problem = _klp_resolve(ctx, use)
        v.add_symbol(SymbolCheck(use.name or use.symbol, Fate.LIVEPATCH, problem is None,
                                 provider=use.objname, pos=use.pos,
                                 reason=problem.message if problem else ""))
        if problem is not None:
            v.problems.append(problem)
            return  # klp_resolve_symbols() stops at the first failure
    _ibt(f, ctx, v)


def _ibt(f: ModuleFacts, ctx: Checker, v: ModuleVerdict) -> None:
    """On a CONFIG_X86_KERNEL_IBT=y kernel, a klp relocation that takes an
    unexported function's address -- vmlinux's, or a livepatch's target
    module's (which seals too, klp.ibt) -- : the module loads, and on IBT
    hardware its first indirect call there is a #CP, "Missing ENDBR"."""
    cfg = ctx.target.config
    if not f.klp_addresses or cfg is None or not cfg.enabled("X86_KERNEL_IBT"):
        return
    pos = {function_label(u.objname, u.name): u.pos for u in f.klp_uses
           if u.objname is not None}
    where: dict[str, list[str]] = {}
    for label, at in f.klp_addresses:
        where.setdefault(label, []).append(at)
    sealed: np.ndarray | None = None
    for label, places in where.items():
        objname, _, name = label.rpartition(":")
        p = pos.get(label, 0)
        if objname:
            if not f.livepatch:
                continue  # never applied: _klp_resolve() said so
            state = _module_function(ctx, v, objname, name, p, places)
            if state is None:
                continue
        else:
            if not ctx.target.has_kallsyms:
                continue
            cands = ctx.kallsyms_candidates(name) or []
            if not cands or p > len(cands) or (p == 0 and len(cands) > 1):
                continue  # _klp_resolve() said so
            cand = cands[max(p, 1) - 1]
            if symbol_kind(ctx.target, cand) != "text":
                continue
            state = ""
            vmlinux = target_vmlinux(ctx.target.kallsyms_source)
            if vmlinux is not None and cand.address:
                if sealed is None:
                    sealed = sealed_addresses(vmlinux)
                state = seal_note(VMLINUX, is_sealed(sealed, cand.address))
        v.problems.append(Problem(
            Stage.KLP, f"takes the address of {label} directly{state} at "
            f"{', '.join(places[:3])}"
            f"{f' and {len(places) - 3} more' if len(places) > 3 else ''}: the kernel has IBT, "
            "so on IBT hardware a call through it faults; convert the original module with "
            "klpsym and its IBT thunks (the default), which put endbr64 in between",
            (f"Missing ENDBR: {name}+0x0",), symbol=label, fatal=False))


def _module_function(ctx: Checker, v: ModuleVerdict, objname: str, name: str, pos: int,
                     places: list[str]) -> str | None:
    """For a livepatch that takes the address of target module
    ``objname``'s ``name``: the seal state to print when it is a function,
    None when it is data or cannot be told (then a note says why)."""
    table = ctx.module_table(objname)
    if table is None:
        v.notes.append(f"takes the address of {objname}:{name} directly at {places[0]}: on an "
                       f"IBT kernel that faults if it is a function {objname} sealed; give "
                       f"--target-module {objname} to check")
        return None
    choice = table.choose(table.candidates(name), pos)
    if choice.chosen is None or table.kind(choice.chosen) != "text":
        return None
    return seal_note(objname, None if table.sealed is None
                     else bool(table.sealed[choice.chosen.index]))


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
    choice = choose_pos(cands, use.pos)
    if choice.error == PosError.MISSING:
        return Problem(Stage.KLP, f"{use.name}: not in {ctx.target.release}'s kallsyms",
                       (f"symbol '{use.name}' not found in symbol table",), symbol=use.name)
    if choice.error == PosError.AMBIGUOUS:
        # objname is NULL for vmlinux: printk prints "(null)"
        return Problem(Stage.KLP, f"{use.name}: POS 0 but {len(cands)} kallsyms entries of "
                       f"that name; convert again with --sympos {use.name}=N",
                       (f"unresolvable ambiguity for symbol '{use.name}' in object '(null)'",),
                       symbol=use.name)
    if choice.error == PosError.BEYOND:
        return Problem(Stage.KLP, f"{use.name}: POS {use.pos}, but kallsyms has {len(cands)} "
                       f"entr{'ies' if len(cands) > 1 else 'y'} of that name",
                       (f"symbol position {use.pos} for symbol '{use.name}' in object "
                        "'vmlinux' not found",), symbol=use.name)
    return None


def _exports(f: ModuleFacts, ctx: Checker, v: ModuleVerdict) -> None:
    if f.exports and ctx.modversions and not f.exports_crcs:
        # check_export_symbol_versions()
        if not force_load(f, ctx, v, "no versions for exported symbols",
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
_STEPS: tuple[_Step, ...] = (_signature, _elf, _module_layout, _modinfo, symbols_step,
                             _relocations, _exports)
