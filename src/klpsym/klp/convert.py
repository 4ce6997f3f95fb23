"""Convert one module: plan, apply, validate the re-read output, write it
atomically."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from klpsym.elf import ElfFile
from klpsym.elf.file import Buffer
from klpsym.errors import ConvertError, KlpsymError
from klpsym.fsutil import AtomicOutput, atomic_write
from klpsym.kernel.target import TargetKernel
from klpsym.klp.apply import apply_conversions
from klpsym.klp.plan import Plan, make_plan
from klpsym.klp.validate import loader_problems, relocation_changes, symbol_changes
from klpsym.module.ko import Module, read_module


@dataclass
class ConvertResult:
    plan: Plan
    output: Path | None
    written: bool = False
    moved: dict[str, int] = field(default_factory=dict)

    @property
    def module(self) -> Module:
        return self.plan.module


def convert_file(path: Path, target: TargetKernel, sympos: Mapping[str, int], *,
                 output: Path | None = None, in_place: bool = False,
                 dry_run: bool = False) -> ConvertResult:
    if in_place and output is not None:
        raise ConvertError("give either -o OUTPUT or --in-place, not both")
    if not dry_run and output is None and not in_place:
        raise ConvertError(f"{path}: say where to write the result: -o OUTPUT.ko, or --in-place "
                           "to replace the module")
    module = read_module(path)
    plan = make_plan(module, target, sympos)
    broken = loader_problems(module.elf, plan.name_width)
    if broken:
        # Refused here, so that a failed check of the output below is always
        # klpsym's own fault, and no output is one the loader refuses.
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        raise ConvertError(f"{path}: the module already breaks the kernel module loader's "
                           f"livepatch rules: {broken[0]}{more}; it would not load")
    dest = path if in_place else output
    result = ConvertResult(plan, dest)
    if dry_run or dest is None:
        return result
    if not plan.to_convert:
        # Nothing to do (e.g. converted before): the output is the input, to
        # the byte, signature included.
        if not in_place:
            atomic_write(dest, module.data, mode_from=path)
        result.written = not in_place
        return result
    elf = module.elf
    result.moved = apply_conversions(elf, plan.conversions)
    # Streamed into an unnamed temporary file, checked there, then put in
    # place: the converted module is never assembled in memory, and nothing
    # is at ``dest`` until it has passed the checks.
    with AtomicOutput(dest, mode_from=path) as out:
        elf.write_to(out)
        check_output(module, out.map(), plan)
        out.commit()
    result.written = True
    return result


def check_output(module: Module, data: Buffer, plan: Plan) -> None:
    """Re-read the converted bytes and hold them to the loader's rules; a
    failure here is a klpsym bug, and nothing is written."""
    try:
        before = ElfFile.from_bytes(module.elf_bytes, f"{module.path} (input)")
        after = ElfFile.from_bytes(data, f"{module.path} (converted)")
        problems = (loader_problems(after, plan.name_width)
                    + relocation_changes(before, after)
                    + symbol_changes(before, after, plan.name_width))
    except KlpsymError as e:
        problems = [f"the output cannot be re-read: {e}"]
    if problems:
        raise ConvertError(
            f"{module.path}: internal error, the converted module failed validation "
            f"({problems[0]}{f'; and {len(problems) - 1} more' if len(problems) > 1 else ''}); "
            "nothing was written; please report this"
        )
