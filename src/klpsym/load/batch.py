"""Many modules at once: find them, read them in parallel, judge them together.

The target kernel is read once, in the parent.  Workers (forked, so they
start without importing anything again) only read module files into
:class:`~klpsym.load.facts.ModuleFacts`; the verdicts are computed in the
parent, where every module's exports are known.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from klpsym.errors import KlpsymError
from klpsym.kernel.target import TargetKernel
from klpsym.load.check import ModuleVerdict, check_modules
from klpsym.load.facts import ModuleFacts, module_facts

MODULE_PATTERNS = ("*.ko", "*.ko.xz", "*.ko.zst", "*.ko.gz")
# Below this many modules a pool costs more than it saves.
PARALLEL_MIN = 16


def collect_modules(paths: Iterable[Path]) -> list[Path]:
    """The module files named, with directories searched recursively for
    ``.ko``, ``.ko.xz``, ``.ko.zst`` and ``.ko.gz``."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted({f for pat in MODULE_PATTERNS for f in p.rglob(pat) if f.is_file()})
            if not found:
                raise KlpsymError(f"{p}: no kernel modules (*.ko, *.ko.xz, *.ko.zst, *.ko.gz) "
                                  "in this directory")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise KlpsymError(f"{p}: no such file or directory")
    return out


def gather_facts(paths: Sequence[Path], jobs: int | None = None,
                 progress: Callable[[int], None] | None = None) -> list[ModuleFacts]:
    """Read every module (in ``jobs`` processes; default: one per CPU),
    in the order given.  ``progress`` is called with the number done."""
    jobs = jobs or os.cpu_count() or 1
    if jobs <= 1 or len(paths) < PARALLEL_MIN:
        out = []
        for i, p in enumerate(paths, 1):
            out.append(module_facts(p))
            if progress is not None:
                progress(i)
        return out
    ctx = multiprocessing.get_context("fork")
    chunk = max(1, min(64, len(paths) // (jobs * 8)))
    results: list[ModuleFacts] = []
    with ctx.Pool(jobs) as pool:
        for i, f in enumerate(pool.imap(module_facts, paths, chunksize=chunk), 1):
            results.append(f)
            if progress is not None:
                progress(i)
    return results


def check_paths(paths: Sequence[Path], target: TargetKernel, jobs: int | None = None,
                progress: Callable[[int], None] | None = None) -> list[ModuleVerdict]:
    return check_modules(gather_facts(paths, jobs, progress), target)
