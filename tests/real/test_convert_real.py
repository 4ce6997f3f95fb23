"""Convert every module of Debian bookworm's kernel with a forced symbol set.

For each of the 4000+ modules, a target kernel that exports none of the
module's undefined symbols and has each of them once in kallsyms, so every
one of them converts (the most work a conversion can do to that module).
The output must pass klpsym's loader-rule checks and keep the module's
relocations: the multiset of (relocated section, offset, type, addend,
symbol name) is the same before and after, a converted symbol counting under
its plain name.  This check is written here from the ELF fields, apart from
klpsym's own validator (which is run too).
"""

from __future__ import annotations

import os
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from klpsym.elf import ElfFile
from klpsym.elf.constants import SHT
from klpsym.errors import KlpsymError
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.kernel.symvers import Symvers
from klpsym.kernel.target import TargetKernel
from klpsym.kernel.version import KernelVersion
from klpsym.klp.apply import apply_conversions
from klpsym.klp.names import parse_symbol_name
from klpsym.klp.plan import make_plan
from klpsym.klp.validate import loader_problems, relocation_changes, symbol_changes
from klpsym.lab.provision import Kernel
from klpsym.module.ko import read_module

CONFIG = KernelConfig.from_text("CONFIG_LIVEPATCH=y\nCONFIG_KALLSYMS_ALL=y\n")


def relocation_multiset(elf: ElfFile, width: int) -> np.ndarray:
    """Every relocation as (section name, offset, type, addend, symbol
    name), klp names read as their plain name, sorted (a structured array,
    so two can be compared with ==)."""
    st = elf.symtab
    names = []
    for n in st.names():
        parsed = parse_symbol_name(n, width) if n.startswith(".klp.sym.") else None
        names.append(parsed.name if parsed is not None else n)
    rows = []
    for sec in elf.sections:
        if sec.type != SHT.RELA:
            continue
        r = elf.rela(sec)
        target = sec.info_section.name if sec.info_section is not None else "?"
        syms = (r["r_info"] >> np.uint64(32)).astype(np.int64).tolist()
        part = np.zeros(len(r), dtype=[("target", object), ("offset", "u8"), ("type", "u4"),
                                       ("addend", "i8"), ("name", object)])
        part["target"] = target
        part["offset"] = r["r_offset"]
        part["type"] = (r["r_info"] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        part["addend"] = r["r_addend"]
        part["name"] = np.array([names[s] for s in syms], dtype=object) if syms else []
        rows.append(part)
    if not rows:
        return np.zeros(0, dtype=[("target", object)])
    allrows = np.concatenate(rows)
    keys = [allrows[f].astype(str) if allrows.dtype[f] == np.dtype(object) else allrows[f]
            for f in ("name", "addend", "type", "offset", "target")]
    return allrows[np.lexsort(keys)]


def check_module(path: Path) -> tuple[str, list[str], int, int]:
    """(module, problems, symbols converted, relocations moved)."""
    try:
        module = read_module(path)
        st = module.elf.symtab
        undefined = [st.name(int(i)) for i in st.undefined()]
        release = module.modinfo.vermagic_release or "6.1.0"
        names = sorted(set(undefined) - {""})
        target = TargetKernel(
            version=KernelVersion.parse(release), symvers=Symvers(),
            kallsyms_source="every undefined name once", config=CONFIG,
            _kallsyms=KallsymsTable.from_rows(
                [(0xFFFFFFFF81000000 + 16 * i, "T", n) for i, n in enumerate(names)],
                "forced"),
        )
        plan = make_plan(module, target, {})
        before = ElfFile.from_bytes(module.elf_bytes, f"{path.name} (input)")
        width = plan.name_width
        want = relocation_multiset(before, width)
        moved = apply_conversions(module.elf, plan.conversions)
        after = ElfFile.from_bytes(module.elf.to_bytes(), f"{path.name} (output)")
    except KlpsymError as e:
        return path.name, [f"refused: {e}"], 0, 0
    problems = (loader_problems(after, width) + relocation_changes(before, after)
                + symbol_changes(before, after, width))
    got = relocation_multiset(after, width)
    if len(got) != len(want) or not all(bool(np.all(got[f] == want[f])) for f in want.dtype.names
                                        or ()):
        problems.append(f"relocations differ as (section, offset, type, addend, name): "
                        f"{len(want)} before, {len(got)} after")
    if len(plan.to_convert) != len(names):
        problems.append(f"{len(plan.to_convert)} of {len(names)} undefined names converted")
    return path.name, problems, len(plan.to_convert), sum(moved.values())


def test_forced_convert_of_every_module(bookworm: Kernel) -> None:
    mods = sorted(bookworm.modules_dir.rglob("*.ko"))
    assert len(mods) > 3000, f"expected Debian's 4000+ modules under {bookworm.modules_dir}"
    start = time.monotonic()
    workers = max(1, min(2, os.cpu_count() or 1))
    with get_context("fork").Pool(workers) as pool:
        results = pool.map(check_module, mods, chunksize=16)
    bad = [(name, p) for name, p, _, _ in results if p]
    assert not bad, f"{len(bad)} modules: {bad[:5]}"
    converted = sum(r[2] for r in results)
    moved = sum(r[3] for r in results)
    assert converted > 100_000 and moved > 500_000  # real work was done
    print(f"{len(mods)} modules converted ({converted} symbols, {moved} relocations moved) "
          f"and checked in {time.monotonic() - start:.1f}s")


def test_the_check_sees_a_changed_relocation(bookworm: Kernel) -> None:
    """The multiset comparison above is not blind: one changed symbol name
    or addend in one relocation shows."""
    path = next(bookworm.modules_dir.rglob("nls_cp437.ko"))
    elf = read_module(path).elf
    want = relocation_multiset(elf, 511)
    sec = next(s for s in elf.rela_sections() if len(elf.rela(s)))
    r = elf.rela(sec).copy()
    r["r_addend"][0] += 1
    sec.table = r
    got = relocation_multiset(ElfFile.from_bytes(elf.to_bytes()), 511)
    assert len(got) == len(want) and not all(bool(np.all(got[f] == want[f]))
                                              for f in want.dtype.names or ())
    _, problems, _, _ = check_module(path)
    assert problems == []
