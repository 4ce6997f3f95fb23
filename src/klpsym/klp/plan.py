"""Classify a module's undefined symbols for a target kernel and decide what
to convert.

Each undefined symbol gets a fate (:class:`klpsym.klp.classify.Fate`, the
classification ``klpsym check`` shares), the way modpost and the loader see it:

* ``exported``: vmlinux exports it (visible to this module) - left alone;
* ``module-export``: a module exports it (the target's own Module.symvers
  lists in-tree modules too, and ``--symvers`` adds others) - left alone;
* ``convert``: not exported, but in vmlinux's kallsyms - becomes
  ``.klp.sym.vmlinux.NAME,POS``;
* ``livepatch``: already a livepatch symbol (converted before);
* ``missing``: neither - an error, as modpost's "undefined!" is;
* ``weak``: a weak reference to nothing - the loader allows it.

Every refusal is a :class:`~klpsym.errors.ConvertError` with one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from klpsym.elf.constants import EM, SHF, SHN, STB
from klpsym.errors import ConvertError, param
from klpsym.kernel.kallsyms import Candidate
from klpsym.kernel.sympos import PosError, choose_pos
from klpsym.kernel.target import TargetKernel
from klpsym.kernel.version import (
    KLP_OBJNAME_MAX,
    KernelVersion,
    kallsyms_letters_tell_data,
    klp_sym_name_max,
    supports_klp_for_plain_modules,
)
from klpsym.klp.annotations import Annotation, read_annotations
from klpsym.klp.apply import Conversion, relocation_users
from klpsym.klp.classify import Fate, ObjectCandidates, classify_in_objects, export_fate
from klpsym.klp.names import VMLINUX, parse_symbol_name
from klpsym.module.kallsyms import ModuleKallsyms, TargetModules
from klpsym.module.ko import Module
from klpsym.module.license import GPL_COMPATIBLE, is_gpl_compatible
from klpsym.module.tree import module_key

SYMPOS = param("sympos")  # the caller's sympos= (the CLI's --sympos)


@dataclass
class SymbolPlan:
    index: int
    name: str
    fate: Fate
    provider: str | None = None  # exporting module, for exports
    pos: int | None = None
    candidate: Candidate | None = None
    candidates: int = 0  # same-name entries in kallsyms
    relocations: dict[str, int] = field(default_factory=dict)
    # 'data' or 'text' for a converted symbol ('' when it cannot be told):
    # KallsymsTable.kind(), by address where known; letters only where trusted.
    kind: str = ""
    objname: str = VMLINUX  # the object a converted symbol resolves in
    chosen_by: str = ""  # "annotation", "sympos" or "" (unique name)


@dataclass
class Plan:
    module: Module
    target: TargetKernel
    version: KernelVersion
    name_width: int
    symbols: list[SymbolPlan]
    notes: list[str]
    livepatch: bool = False  # MODULE_INFO(livepatch, "Y")
    annotations: list[Annotation] = field(default_factory=list)

    @property
    def to_convert(self) -> list[SymbolPlan]:
        return [s for s in self.symbols if s.fate == Fate.CONVERT]

    @property
    def conversions(self) -> list[Conversion]:
        return [Conversion(s.index, s.name, s.pos or 0, s.objname) for s in self.to_convert]

    @property
    def objects(self) -> list[str]:
        """The module objects (not vmlinux) converted symbols resolve in:
        the target modules this livepatch needs."""
        return sorted({s.objname for s in self.to_convert if s.objname != VMLINUX}
                      | {s.objname for s in self.symbols
                         if s.fate == Fate.LIVEPATCH and s.objname != VMLINUX})

    @property
    def relocations_to_move(self) -> int:
        return sum(sum(s.relocations.values()) for s in self.to_convert)


def parse_sympos(items: list[str]) -> dict[str, int]:
    """``NAME=N`` (vmlinux) and ``OBJ:NAME=N`` (object OBJ, a livepatch's
    target module) pairs from ``--sympos``; keyed ``NAME`` and
    ``OBJ:NAME`` (``vmlinux:NAME`` is ``NAME``)."""
    out: dict[str, int] = {}
    for item in items:
        key, sep, num = item.rpartition("=")
        objname, colon, name = key.rpartition(":")
        if (not sep or not name or not num.isdigit() or (colon and not objname)
                or ":" in objname):
            raise ConvertError(f"{SYMPOS} {item!r}: expected NAME=N or OBJ:NAME=N, e.g. "
                               f"{SYMPOS} c_start=2")
        key = name if objname in ("", VMLINUX) else f"{module_key(objname)}:{name}"
        if key in out and out[key] != int(num):
            raise ConvertError(f"{SYMPOS} {key} is given twice with different positions")
        out[key] = int(num)
    return out


def is_livepatch(module: Module) -> bool:
    """MODULE_INFO(livepatch, "Y"): the loader's is_livepatch_module()
    (check_modinfo_livepatch(), kernel/module/main.c) tests only that the
    key is there."""
    return module.modinfo.get("livepatch") is not None


def _choices(module: Module, sympos: Mapping[str, int], annotations: list[Annotation],
             livepatch: bool) -> dict[str, tuple[str, int, str]]:
    """Per name: the object and POS the module chose, and how."""
    where = str(module.path)
    chosen: dict[str, tuple[str, int, str]] = {}
    if annotations and not livepatch:
        raise ConvertError(
            f"{where}: has {annotations[0].section} (KLP_MODULE_RELOC), but is not a livepatch "
            "module; module objects are for livepatches only: add MODULE_INFO(livepatch, \"Y\") "
            "or drop the annotation")
    for a in annotations:
        old = chosen.get(a.name)
        if old is not None and old[:2] != (a.objname, a.pos):
            raise ConvertError(f"{where}: {a.name} is annotated twice, as {old[0]} POS {old[1]} "
                               f"and {a.objname} POS {a.pos}; keep one KLP_SYMPOS")
        chosen[a.name] = (module_key(a.objname), a.pos, "annotation")
    for key, pos in sympos.items():
        objname, _, name = key.rpartition(":")
        objname = objname or VMLINUX
        if objname != VMLINUX and not livepatch:
            raise ConvertError(f"{SYMPOS} {key}={pos}: {where} is not a livepatch module "
                               "(MODULE_INFO(livepatch, \"Y\")), so it can only reference "
                               f"vmlinux; use {SYMPOS} {name}=N")
        old = chosen.get(name)
        if old is not None and old[:2] != (objname, pos):
            raise ConvertError(f"{SYMPOS} {key}={pos}: {name} is already "
                               f"{'annotated' if old[2] == 'annotation' else 'chosen'} as "
                               f"{old[0]} POS {old[1]}; give one choice")
        chosen[name] = (objname, pos, old[2] if old else "sympos")
    return chosen


def classify_symbols(module: Module, target: TargetKernel, sympos: Mapping[str, int],
                     targets: TargetModules | None = None,
                     annotations: list[Annotation] | None = None) -> list[SymbolPlan]:
    """Every undefined and livepatch symbol of ``module`` with its fate.

    Unlike :func:`make_plan` this returns ``missing`` symbols instead of
    refusing them (``klpsym build`` leaves those to modpost, which also knows
    the exports of the modules being built), and checks nothing about the
    conversion itself.  An ambiguous name without ``--sympos`` is still an
    error.  ``module`` may be a module's object before modpost (``<m>.o``).
    ``targets``: the modules a livepatch may reference besides vmlinux.
    ``annotations``: the module's KLP_SYMPOS entries when read (and removed)
    before; None reads them from the module.
    """
    return _classify_all(module, target, sympos, targets, annotations)[0]


def _classify_all(module: Module, target: TargetKernel, sympos: Mapping[str, int],
                  targets: TargetModules | None, annotations: list[Annotation] | None
                  ) -> tuple[list[SymbolPlan], bool, list[Annotation]]:
    elf = module.elf
    if elf.machine != EM.X86_64:
        raise ConvertError(
            f"{module.path}: machine {elf.machine} is not x86_64; klpsym converts x86_64 modules "
            "only (the loader rules it checks are x86_64's)"
        )
    version = _target_version(module, target)
    name_width = klp_sym_name_max(version)
    livepatch = is_livepatch(module)
    if annotations is None:
        annotations = read_annotations(elf)
    chosen = _choices(module, sympos, annotations, livepatch)
    symtab = elf.symtab
    undefined = symtab.undefined()
    binds = symtab.binds
    livepatch_syms = symtab.special(SHN.LIVEPATCH)
    # The annotations' own relocations are not uses: they go with them.
    users = relocation_users(elf, np.concatenate([undefined, livepatch_syms]),
                             skip=[a.section for a in annotations])

    # Look every name up at once (cheap with tables from the symbol cache).
    names = {i: symtab.name(i) for i in undefined.tolist()}
    target.symvers.prefetch(list(names.values()))
    unexported = [n for n in names.values()
                  if n and not ((e := target.symvers.get(n)) and e.visible_to(module.name))]
    if unexported:
        target.kallsyms.prefetch(unexported)
    modules: list[ModuleKallsyms] = []
    # The modules given are read even when no name needs them, so that a
    # wrong --target-module is an error, not silently ignored.
    if targets is not None and (livepatch or unexported or targets.specs):
        modules = list(targets.given)
        for objname, _, _ in chosen.values():
            if objname != VMLINUX and all(module_key(m.name) != objname for m in modules):
                modules.append(targets.get(objname))
    elif any(o != VMLINUX for o, _, _ in chosen.values()):
        missing = next(o for o, _, _ in chosen.values() if o != VMLINUX)
        raise ConvertError(f"{module.path}: references object {missing}, but no target "
                           f"modules are known; give {param('target_module')} {missing}")

    symbols: list[SymbolPlan] = []
    for i in livepatch_syms.tolist():
        name = symtab.name(i)
        parsed = parse_symbol_name(name, name_width)
        symbols.append(SymbolPlan(i, parsed.name if parsed else name, Fate.LIVEPATCH,
                                  pos=parsed.pos if parsed else None, relocations=users[i],
                                  objname=parsed.objname if parsed else VMLINUX))
    trusted = _letters_trusted(target)  # once, not per symbol
    weak = (binds == STB.WEAK).tolist()
    for i, name in names.items():
        if not name:
            continue
        symbols.append(_classify(i, name, weak[i], module, target, chosen.get(name), users[i],
                                 trusted, modules, livepatch))
    return symbols, livepatch, annotations


def make_plan(module: Module, target: TargetKernel, sympos: Mapping[str, int],
              targets: TargetModules | None = None,
              annotations: list[Annotation] | None = None) -> Plan:
    where = str(module.path)
    symbols, livepatch, annotations = _classify_all(module, target, sympos, targets,
                                                    annotations)
    version = target.version
    name_width = klp_sym_name_max(version)
    notes: list[str] = list(target.notes)

    converted = {s.name for s in symbols if s.fate == Fate.CONVERT}
    for key in sorted(sympos):
        name = key.rpartition(":")[2]
        if name in converted:
            continue
        used = next((s for s in symbols if s.name == name), None)
        if used is None:
            raise ConvertError(f"{SYMPOS} {key}: {where} does not use a symbol named {name}")
        raise ConvertError(f"{SYMPOS} {key}: {name} is {used.fate.value}, not converted; "
                           "drop the flag")
    for a in annotations:
        used = next((s for s in symbols if s.name == a.name), None)
        if used is not None and used.fate != Fate.CONVERT:
            raise ConvertError(f"{where}: KLP_SYMPOS({a.name}, {a.pos}) in {a.section}: "
                               f"{a.name} is {used.fate.value} ({used.provider or 'exported'}), "
                               "an ordinary relocation; drop the annotation")

    only_modules = [s.name for s in symbols if s.fate == Fate.TARGET_MODULE]
    if only_modules:
        raise ConvertError(
            f"{where}: {', '.join(only_modules[:8])} only in a target module, and {module.name} "
            "is not a livepatch module: the kernel applies a module object's klp relocations "
            "for livepatches only (kernel/livepatch/core.c klp_apply_object_relocs(), from "
            "klp_init_object_loaded() and klp_module_coming()); add "
            "MODULE_INFO(livepatch, \"Y\") and register it with klp_enable_patch()")
    missing = [s.name for s in symbols if s.fate == Fate.MISSING]
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        shown = ", ".join(missing[:8]) + more
        given = targets.all if targets is not None else []
        also = (f" nor in {', '.join(t.name for t in given)}" if given and livepatch else "")
        raise ConvertError(
            f"{where}: undefined symbol{'s' if len(missing) > 1 else ''} {shown} "
            f"{'are' if len(missing) > 1 else 'is'} neither exported by kernel {target.release} "
            f"({target.symvers.source}) nor in its kallsyms ({target.kallsyms_source}){also}; "
            f"check the name, or add the exporting module's Module.symvers with {param('symvers')}"
            + (f", or the module that has it with {param('target_module')}" if livepatch else "")
        )

    plan = Plan(module, target, version, name_width, symbols, notes, livepatch, annotations)
    if plan.to_convert:
        _check_convertible(plan)
    return plan


def _target_version(module: Module, target: TargetKernel) -> KernelVersion:
    built_for = module.modinfo.vermagic_release
    if built_for is not None and target.release != built_for:
        raise ConvertError(
            f"{module.path}: built for kernel {built_for} (vermagic) but the target kernel is "
            f"{target.release}; rebuild the module against {target.release}'s headers, or point "
            f"{param('kernel_dir')} at {built_for}'s"
        )
    return target.version


def _classify(index: int, name: str, weak: bool, module: Module, target: TargetKernel,
              chosen: tuple[str, int, str] | None, relocations: dict[str, int],
              letters_trusted: bool, modules: list[ModuleKallsyms],
              livepatch: bool) -> SymbolPlan:
    export = target.symvers.get(name)
    if export is not None and export.visible_to(module.name):
        # klp-convert's rule too: an exported symbol stays an ordinary
        # relocation, whatever the annotations say.
        return SymbolPlan(index, name, export_fate(export.module), provider=export.module,
                          relocations=relocations)
    vmlinux = target.kallsyms.candidates(name)
    objects = [ObjectCandidates(VMLINUX, vmlinux, choose_pos)]
    tables = {module_key(m.name): m for m in modules}
    objects += [ObjectCandidates(key, m.candidates(name), m.choose) for key, m in tables.items()]
    wanted = None if chosen is None else (chosen[0], chosen[1])
    found = classify_in_objects(objects, weak, wanted, livepatch)
    if found.fate != Fate.CONVERT:
        return SymbolPlan(index, name, found.fate, relocations=relocations)
    how = "" if chosen is None else chosen[2]
    if found.candidate is None:  # the POS designates no entry
        raise ConvertError(_no_entry(name, found.error, found.objname, found.pos, objects,
                                     tables, target, how, livepatch))
    table = tables.get(found.objname)
    kind = (table.kind(found.candidate) if table is not None
            else target.kallsyms.kind(found.candidate, letters_tell_data=letters_trusted))
    return SymbolPlan(index, name, Fate.CONVERT, pos=found.pos, candidate=found.candidate,
                      candidates=found.candidates, relocations=relocations, kind=kind,
                      objname=found.objname if table is None else table.name, chosen_by=how)


def _listing(obj: ObjectCandidates, tables: Mapping[str, ModuleKallsyms]) -> str:
    table = tables.get(obj.objname)
    return "; ".join(table.describe(c) if table is not None else _describe(c)
                     for c in obj.candidates)


def _no_entry(name: str, error: PosError | None, objname: str, pos: int | None,
              objects: list[ObjectCandidates], tables: Mapping[str, ModuleKallsyms],
              target: TargetKernel, how: str, livepatch: bool) -> str:
    """The one line saying why no entry of ``name`` can be chosen."""
    source = (tables[objname].source if objname in tables
              else target.kallsyms.source)
    asked = ("its KLP_SYMPOS annotation" if how == "annotation"
             else f"{SYMPOS} {name if objname == VMLINUX else objname + ':' + name}={pos}")
    obj = next((o for o in objects if o.objname == objname), None)
    count = len(obj.candidates) if obj is not None else 0
    if error == PosError.AMBIGUOUS and not objname:  # in several objects
        having = [o for o in objects if o.candidates]
        listed = " | ".join(f"{o.objname}: {_listing(o, tables)}" for o in having)
        return (f"{name} is ambiguous: it is in {', '.join(o.objname for o in having)} "
                f"({listed}); say which with KLP_MODULE_RELOC(OBJ) ... = {{ KLP_SYMPOS({name}, "
                f"POS) }} (klpsym.h) or {SYMPOS} OBJ:{name}=POS ({SYMPOS} {name}=POS for vmlinux)")
    if error == PosError.AMBIGUOUS and not how:
        assert obj is not None
        fix = (f"pick one with {SYMPOS} {name}=N" if objname == VMLINUX
               else f"pick one with KLP_MODULE_RELOC({objname}) ... = {{ KLP_SYMPOS({name}, N) }} "
                    f"or {SYMPOS} {objname}:{name}=N")
        if objname == VMLINUX and livepatch and how == "":
            fix += f" (or KLP_MODULE_RELOC(vmlinux) ... = {{ KLP_SYMPOS({name}, N) }})"
        return (f"{name} is ambiguous: {count} symbols of that name in {source} "
                f"({_listing(obj, tables)}); {fix}")
    if error == PosError.MISSING:
        if objname != VMLINUX and objname not in tables:
            return (f"{asked}: {objname} is not a target module; give "
                    f"{param('target_module')} {objname}")
        return f"{asked}: {source} has no symbol named {name}"
    if error in (PosError.INIT_ONLY, PosError.SHIFTED):
        assert obj is not None
        why = ("is in an init section, gone from the module's kallsyms after its init"
               if error == PosError.INIT_ONLY else
               "follows a same-name symbol of an init section, so its POS differs before "
               "and after the module's init")
        return (f"{asked}: {name} POS {pos} in {objname} {why} (kernel/module/kallsyms.c "
                f"add_kallsyms(): klp_module_coming() counts in the init-time table, "
                f"klp_enable_patch() in the core one): no POS designates it in both "
                f"({_listing(obj, tables)})")
    return (f"{asked}: {source} has {count} symbol{'s' if count != 1 else ''} named {name}; "
            f"use 1..{count}")


def _letters_trusted(target: TargetKernel) -> bool:
    """Whether the target's kallsyms letters tell data from text (for
    KallsymsTable.kind()): letters of a /proc/kallsyms are trusted only where
    kallsyms_letters_tell_data() says so (not 7.x); klpsym's own System.map
    and vmlinux readers give nm's letters for every version."""
    return (kallsyms_letters_tell_data(target.version)
            or target.kallsyms_source.startswith(("System.map ", "vmlinux ")))


def _describe(c: Candidate) -> str:
    addr = f" at {c.address:#x}" if c.address else ""
    return f"{c.pos}: type {c.type}{addr}"


def _check_convertible(plan: Plan) -> None:
    module, target, version = plan.module, plan.target, plan.version
    where = str(module.path)
    names = ", ".join(s.name for s in plan.to_convert[:5])
    if not supports_klp_for_plain_modules(version):
        raise ConvertError(
            f"{where}: target kernel {version.release} is older than 5.8; its loader applies klp "
            "relocations only to livepatch modules, so this module would run with zero addresses "
            "(use the kallsyms or kprobe methods instead)"
        )
    config = target.config
    if config is None:
        plan.notes.append("target .config unknown: could not check CONFIG_LIVEPATCH=y; without it "
                          "the loader silently skips klp relocations")
    elif not config.enabled("CONFIG_LIVEPATCH"):
        raise ConvertError(
            f"{where}: target kernel {version.release} is built without CONFIG_LIVEPATCH; its "
            f"loader skips klp relocations, so {names} would be zero at run time"
        )
    license = module.modinfo.license
    if license is None:
        raise ConvertError(f"{where}: no MODULE_LICENSE(); unexported symbols are kernel "
                           "internals, so klpsym converts GPL-compatible modules only")
    if not is_gpl_compatible(license):
        raise ConvertError(
            f"{where}: MODULE_LICENSE(\"{license}\") is not GPL-compatible (the kernel accepts: "
            f"{', '.join(sorted(GPL_COMPATIBLE))}); unexported symbols are kernel internals"
        )
    for s in plan.to_convert:
        if s.objname != VMLINUX:
            _check_module_object(plan, s)
        if "," in s.name:
            raise ConvertError(f"{s.name}: symbol names with ',' cannot be written as "
                               ".klp.sym.vmlinux.NAME,POS")
        if len(s.name) > plan.name_width:
            raise ConvertError(
                f"{s.name[:40]}...: name is {len(s.name)} characters; kernel {version.release} "
                f"parses at most {plan.name_width} (KSYM_NAME_LEN {plan.name_width + 1})"
            )
        if s.kind == "data" and config is not None and not config.enabled("CONFIG_KALLSYMS_ALL"):
            raise ConvertError(
                f"{s.name} is a data symbol (type {s.candidate.type if s.candidate else '?'}) and "
                f"kernel {version.release} lacks CONFIG_KALLSYMS_ALL, so kallsyms cannot find it"
            )


#: Sections whose module-object klp relocations work: those the
#: livepatch's own code reads at run time.  A module object's relocations
#: are applied late -- when the patch is enabled with the target loaded
#: (klp_init_object_loaded()) or when the target loads
#: (klp_module_coming()), kernel/livepatch/core.c klp_apply_object_relocs(),
#: v5.8 .. v7.x, through text_poke() on a live module (x86
#: apply_relocate_add(), v5.8 commit 88fc078a7a8f) -- so a section the
#: kernel reads while the livepatch itself loads would be read before its
#: relocation: ``__jump_table`` (jump_label_add_module() at the
#: livepatch's MODULE_STATE_COMING), ``.static_call_sites``,
#: ``.altinstructions``, ``__ex_table``, ``__bug_table``, ``__dyndbg``,
#: ``__param``, ``.gnu.linkonce.this_module`` and the like; init sections
#: are freed after the livepatch's init, before a late target could load;
#: ``.data..percpu`` is copied to the per-cpu areas at load.  vmlinux
#: objects are applied at load with the ordinary relocations
#: (apply_relocations(), since v5.8 commit 7c8e2bdd5f0d), so they work in
#: any section.
_MODULE_OBJECT_SECTIONS = (".text", ".data", ".rodata", ".bss")
_NOT_MODULE_OBJECT_SECTIONS = (".data..percpu",)


def module_object_section_ok(secname: str) -> bool:
    """Whether a module object's klp relocation can be applied in
    ``secname`` (see above; non-allocated sections keep their ordinary
    relocations, which the loader never applies)."""
    if secname.startswith(_NOT_MODULE_OBJECT_SECTIONS):
        return False
    return secname.startswith(_MODULE_OBJECT_SECTIONS)


def _check_module_object(plan: Plan, s: SymbolPlan) -> None:
    elf = plan.module.elf
    if len(s.objname) > KLP_OBJNAME_MAX or "." in s.objname:
        raise ConvertError(f"{s.name}: object name {s.objname} cannot be written as "
                           f".klp.sym.OBJ.NAME,POS (at most {KLP_OBJNAME_MAX} characters, no '.')")
    for secname in s.relocations:
        sec = elf.section_by_name(secname)
        if sec is None or not sec.flags & SHF.ALLOC:
            continue
        if not module_object_section_ok(secname):
            raise ConvertError(
                f"{s.name}: {plan.module.path} uses {s.objname}'s {s.name} in {secname}, where a "
                "module object's klp relocation cannot work: the kernel applies it when the "
                f"patch is enabled or {s.objname} loads, after it read {secname} (or freed it); "
                "reference it from .text/.data/.rodata only")
