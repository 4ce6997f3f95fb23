"""Convert one module: plan, apply, validate the re-read output, write it
atomically."""

from __future__ import annotations

import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from klpsym.elf import ElfFile
from klpsym.elf.file import Buffer
from klpsym.errors import ConvertError, InternalError, KlpsymError, param
from klpsym.fsutil import AtomicOutput, atomic_write
from klpsym.kernel.target import TargetKernel
from klpsym.klp.annotations import annotation_sections, read_annotations, remove_annotations
from klpsym.klp.apply import apply_conversions
from klpsym.klp.classify import Fate
from klpsym.klp.guard import (
    GUARD_SYMBOL,
    GuardAction,
    GuardPlan,
    apply_guard,
    guard_problems,
    plan_guard,
)
from klpsym.klp.ibt import (
    IbtPlan,
    IbtSymbol,
    apply_ibt,
    ibt_config,
    plan_ibt,
    target_vmlinux,
)
from klpsym.klp.names import VMLINUX
from klpsym.klp.plan import Plan, SymbolPlan, make_plan
from klpsym.klp.sign import Signer
from klpsym.klp.validate import (
    ibt_problems,
    loader_problems,
    moved_relocation_problems,
    relocation_changes,
    symbol_changes,
)
from klpsym.klp.x86 import unhandled_relocation_types
from klpsym.module.compression import COMPRESSED_SUFFIXES
from klpsym.module.kallsyms import TargetModules
from klpsym.module.ko import Module, read_module


@dataclass
class ConvertResult:
    plan: Plan
    output: Path | None
    written: bool = False
    moved: dict[str, int] = field(default_factory=dict)
    guard: GuardPlan = field(default_factory=lambda: GuardPlan(GuardAction.NOT_NEEDED))
    signed_with: Signer | None = None  # the output was signed with it
    ibt: IbtPlan = field(default_factory=lambda: IbtPlan(None, True))

    @property
    def module(self) -> Module:
        return self.plan.module


def convert_file(path: Path, target: TargetKernel, sympos: Mapping[str, int], *,
                 output: Path | None = None, in_place: bool = False,
                 dry_run: bool = False, guard: bool = True,
                 signer: Signer | None = None, module: Module | None = None,
                 ibt_thunks: bool = True,
                 targets: TargetModules | None = None) -> ConvertResult:
    """Convert ``path`` for ``target`` and write it to ``output`` (or in place).

    ``guard``: add the load-time guard (:mod:`klpsym.klp.guard`) when the
    output has livepatch symbols.  ``signer``: sign the output
    (:mod:`klpsym.klp.sign`); an input signed before keeps its signature only
    when its bytes are written unchanged.  ``module``: ``path`` already read
    (:func:`read_module` with ``mapped=True``).  ``ibt_thunks``: on an IBT
    target, take unexported functions' addresses through thunks
    (:mod:`klpsym.klp.ibt`); off, each is named in a warning.  ``targets``:
    the modules a livepatch module may reference (``--target-module``);
    the KLP_MODULE_RELOC annotations are removed from the output
    (:mod:`klpsym.klp.annotations`)."""
    check_destination(path, output, in_place, dry_run)
    if module is None:
        module = read_module(path, mapped=True)
    if in_place and module.compressed and not dry_run:
        raise ConvertError(
            f"{path}: is {module.compression.value}-compressed, and klpsym writes uncompressed "
            f"modules, so {param('in_place')} would replace it with a file of another format under "
            f"the same name; write it with {param('output')} NAME.ko instead (and compress that "
            "yourself)")
    # The annotations are read, then removed first: removing their symbols
    # renumbers the symbol table, which every later step indexes.
    annotations = read_annotations(module.elf)
    remove_annotations(module.elf)
    plan = make_plan(module, target, sympos, targets, annotations)
    broken = loader_problems(module.elf, plan.name_width, livepatch=plan.livepatch)
    if broken:
        # Refused here, so that a failed check of the output below is always
        # klpsym's own fault, and no output is one the loader refuses.
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        raise ConvertError(f"{path}: the module already breaks the kernel module loader's "
                           f"livepatch rules: {broken[0]}{more}; it would not load")
    unknown = unhandled_relocation_types(module.elf)
    if unknown:
        # Moved into a .klp.rela section they would fail the output's check;
        # where they are, the loader refuses the module anyway.
        listed = "; ".join(f"{name}: types {types}" for name, types in unknown[:3])
        raise ConvertError(f"{path}: has relocations the x86_64 module loader does not handle "
                           f"({listed}); it would not load, converted or not")
    moved = moved_relocation_problems(module.elf, [s.index for s in plan.to_convert])
    if moved:
        more = f" (and {len(moved) - 1} more)" if len(moved) > 1 else ""
        raise ConvertError(f"{path}: a relocation of a symbol to convert breaks the x86_64 "
                           f"module loader's rules: {moved[0]}{more}; it would not load, "
                           "converted or not")
    # Thunks for vmlinux's functions (sealed at boot) and a livepatch's
    # target modules' (sealed when the module loads): klp.ibt.
    ibt = plan_ibt(module.elf, [_ibt_symbol(s, targets) for s in plan.to_convert],
                   ibt_config(target.config), ibt_thunks, target_vmlinux(target.kallsyms_source))
    plan.notes.extend(ibt.notes())
    has_livepatch = any(s.fate in (Fate.CONVERT, Fate.LIVEPATCH) for s in plan.symbols)
    guard_plan = plan_guard(module, target, has_livepatch, guard)
    if guard_plan.action == GuardAction.OFF:
        plan.notes.append("no load-time guard (--no-guard): on a kernel without "
                          "CONFIG_LIVEPATCH this module loads and finds zero addresses")
    if module.compressed:
        plan.notes.append(f"the input was {module.compression.value}-compressed; the output is "
                          "an uncompressed .ko")
    dest = path if in_place else output
    result = ConvertResult(plan, dest, guard=guard_plan, ibt=ibt)
    changes = bool(plan.to_convert) or guard_plan.adds or bool(plan.annotations)
    if changes and module.signature is not None:
        plan.notes.append(
            "the module's signature was removed (it no longer matches); "
            + (f"signed again with {signer.describe()}" if signer is not None else
               "sign the output again with the kernel's scripts/sign-file, or pass "
               "--sign-key and --sign-cert"))
    if dry_run or dest is None:
        return result
    if not changes:
        # Nothing to do (e.g. converted before): the output is the input, to
        # the byte, signature included; an unsigned one is signed if asked.
        data = module.data
        if signer is not None and module.signature is None:
            data = signer.sign(bytes(module.elf_bytes), str(dest))
            result.signed_with = signer
        if not in_place or data is not module.data:
            atomic_write(dest, data, mode_from=path)
            result.written = True
        return result
    elf = module.elf
    apply_ibt(elf, ibt)
    result.moved = apply_conversions(elf, plan.conversions)
    apply_guard(elf, guard_plan)
    # Streamed into an unnamed temporary file, checked there, then put in
    # place: the converted module is never assembled in memory, and nothing
    # is at ``dest`` until it has passed the checks (and is signed, if asked).
    with AtomicOutput(dest, mode_from=path) as out:
        elf.write_to(out)
        out.sync_in_background()  # overlaps the check; commit() waits for it
        if isinstance(module.data, mmap.mmap):
            # Writing touched every page of the mapped input; the check below
            # reads only its tables back.  Dropped from this process (the page
            # cache keeps them), the rest no longer counts in its memory:
            # ~10 MB less at the peak for amdgpu.ko.
            module.data.madvise(mmap.MADV_DONTNEED)
        check_output(module, out.map(), plan, guard_plan, ibt)
        if signer is not None:
            elf_bytes = bytes(out.map())
            signed = signer.sign(elf_bytes, str(dest))
            out.write(memoryview(signed)[len(elf_bytes):])
            result.signed_with = signer
        out.commit()
    result.written = True
    return result


def check_destination(path: Path, output: Path | None, in_place: bool, dry_run: bool) -> None:
    """Refuse a missing, doubled or compressed destination: the mistakes in
    the arguments themselves, said before anything is read (the CLI calls
    this before it looks for the target kernel)."""
    if in_place and output is not None:
        raise ConvertError(f"give either {param('output')} OUTPUT or {param('in_place')}, not both")
    if not dry_run and output is None and not in_place:
        raise ConvertError(f"{path}: say where to write the result: {param('output')} OUTPUT.ko, "
                           f"or {param('in_place')} to replace the module")
    if output is not None and str(output) == "-":
        raise ConvertError(f"{param('output')} -: klpsym writes the module to a file, not to "
                           "stdout; give a path (./- for a file named '-')")
    if output is not None and _same_file(path, output):
        raise ConvertError(f"{output}: is the input module {path}; pass {param('in_place')} to "
                           f"replace it, or another {param('output')} OUTPUT")
    if output is not None and output.suffix in COMPRESSED_SUFFIXES:
        raise ConvertError(f"{output}: klpsym writes uncompressed modules; name the output .ko "
                           f"and compress it afterwards if you want (e.g. xz -k --check=crc32)")


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``b`` names the file ``a`` (the same inode: a hard or
    symbolic link, another spelling of the path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return False


def check_output(module: Module, data: Buffer, plan: Plan,
                 guard: GuardPlan | None = None, ibt: IbtPlan | None = None) -> None:
    """Re-read the converted bytes and hold them to the loader's rules; a
    failure here is a klpsym bug, and nothing is written.  With IBT thunks
    the input is compared with the thunks added (the only change before
    the conversion), and the output held to the IBT rule."""
    try:
        before = ElfFile.from_bytes(module.elf_bytes, f"{module.path} (input)")
        after = ElfFile.from_bytes(data, f"{module.path} (converted)")
        remove_annotations(before)  # the one change before the conversion, with the thunks
        ibt_checks: list[str] = []
        if ibt is not None and ibt.target_ibt:
            if ibt.applies:
                apply_ibt(before, ibt)
            ibt_checks = ibt_problems(after, _thunked(ibt), plan.name_width)
        problems = (loader_problems(after, plan.name_width, livepatch=plan.livepatch)
                    + annotation_problems(after)
                    + relocation_changes(before, after)
                    + symbol_changes(before, after, plan.name_width,
                                     (GUARD_SYMBOL,) if guard and guard.adds else ())
                    + (guard_problems(before, after, guard) if guard else [])
                    + ibt_checks)
    except KlpsymError as e:
        problems = [f"the output cannot be re-read: {e}"]
    if problems:
        raise InternalError(
            f"{module.path}: the converted module failed validation "
            f"({problems[0]}{f'; and {len(problems) - 1} more' if len(problems) > 1 else ''}); "
            "nothing was written"
        )


def _thunked(ibt: IbtPlan) -> list[str]:
    """The functions the IBT rule holds the output to (``NAME``, or
    ``OBJ:NAME`` for a module object's): the address-taken ones, unless the
    user turned thunks off (then warned about them)."""
    return [t.label for t in ibt.thunks] if ibt.enabled else []


def annotation_problems(elf: ElfFile) -> list[str]:
    """The output keeps no annotation section (klp-convert's rule: they
    are removed with their relocations and symbols)."""
    return [f"{sec.name}: annotation section left in the output"
            for sec in annotation_sections(elf)]


def _ibt_symbol(s: SymbolPlan, targets: TargetModules | None) -> IbtSymbol:
    """A symbol to convert as klp.ibt sees it: a module object's seal state
    from the target module's .ibt_endbr_seal."""
    if s.objname == VMLINUX:
        return IbtSymbol(s.index, s.name, s.kind, s.candidate.address if s.candidate else None)
    sealed = targets.get(s.objname).sealed if targets is not None else None
    return IbtSymbol(s.index, s.name, s.kind, None, s.objname,
                     None if sealed is None or s.candidate is None
                     else bool(sealed[s.candidate.index]))
