#!/usr/bin/env python3
"""Benchmark: `klpsym convert` time against the number of relocations.

Synthetic modules (tests/bigobject.py) with 10k, 100k and 1M relocations
against 1000 undefined symbols, half of them converted (so half of the
relocations move).  Each size is converted --runs times in a fresh process
(symbol cache warm), beside `objcopy in.ko out.ko` of the same file.  A
least-squares line through (relocations, median wall time) gives the cost
per relocation past start-up.

Target (issue 7): linear growth, <= 0.3 us per relocation.

The files go to --dir (default /dev/shm: tmpfs, where fsync is free, so the
figures are klpsym's own work; give a disk directory to include the fsync
of the output, which objcopy does not do).

Usage: python benchmarks/convert_synthetic.py [--runs N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from childrun import measure  # noqa: E402  (benchmarks/)

from bigobject import big_module, big_module_names, write_target  # noqa: E402

SIZES = (10_000, 100_000, 300_000, 1_000_000)
def fs_type(path: Path) -> str:
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        f = line.split()
        if len(f) > 2 and str(path.resolve()).startswith(f[1]) and len(f[1]) > len(best):
            best, kind = f[1], f[2]
    return kind


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path,
                    default=Path("/dev/shm") if os.path.isdir("/dev/shm") else None)
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="klpsym-bench-", dir=args.dir) as tmp:
        t = Path(tmp)
        os.environ["KLPSYM_SYMCACHE"] = str(t / "symcache")
        kdir, ks = write_target(t, big_module_names())
        for n in SIZES:
            src = t / f"m{n}.ko"
            src.write_bytes(big_module(n))
            cmd = [sys.executable, "-m", "klpsym.cli.main", "convert", str(src), "-o",
                   str(t / "out.ko"), "--kernel-dir", str(kdir), "--kallsyms", str(ks)]
            measure(cmd)  # warms the symbol cache and the page cache
            klp = [measure(cmd) for _ in range(args.runs)]
            obj = [measure(["objcopy", str(src), str(t / "objcopy.ko")])
                   for _ in range(args.runs)]
            # min of the wall times: the least disturbed run on a shared machine
            rows.append((n, src.stat().st_size,
                         min(w for w, _, _ in klp),
                         statistics.median(c for _, c, _ in klp),
                         max(r for _, _, r in klp),
                         min(w for w, _, _ in obj)))
            src.unlink()
        where = f"{args.dir or tempfile.gettempdir()} ({fs_type(t)})"

    print(f"date {time.strftime('%Y-%m-%d')}  machine {platform.machine()} "
          f"{os.cpu_count()} cpus  python {platform.python_version()}  files in {where}")
    print(f"{'relocations':>12} {'file MB':>8} {'klpsym s':>9} {'cpu s':>7} {'RSS MB':>7} "
          f"{'objcopy s':>10} {'ratio':>6}   (wall: min of runs; CPU: median)")
    for n, size, w, c, r, o in rows:
        print(f"{n:>12} {size / 1e6:>8.1f} {w:>9.3f} {c:>7.3f} {r / 1e6:>7.0f} {o:>10.3f} "
              f"{w / o:>6.1f}x")
    ns = np.array([r[0] for r in rows], dtype=float)
    verdict = True
    for what, ts in (("wall (min)", np.array([r[2] for r in rows])),
                     ("CPU (median)", np.array([r[3] for r in rows]))):
        slope, intercept = np.polyfit(ns, ts, 1)
        fit = np.polyval([slope, intercept], ns)
        r2 = 1 - float(np.sum((ts - fit) ** 2) / np.sum((ts - ts.mean()) ** 2))
        marginal = np.diff(ts) / np.diff(ns)
        steps = ", ".join(f"{a // 1000}k->{b // 1000}k {m * 1e6:.3f}"
                          for a, b, m in zip(SIZES[:-1], SIZES[1:], marginal, strict=True))
        print(f"{what:<13} fit: {intercept:.3f} s + {slope * 1e6:.3f} us/relocation "
              f"(R^2 {r2:.4f}); per step (us/relocation): {steps}")
        verdict &= slope <= 0.3e-6
        if what.startswith("CPU"):
            verdict &= r2 >= 0.98  # linear (CPU time: little disturbed by other load)
    print(f"target: linear, <= 0.3 us/relocation: {'met' if verdict else 'missed'}")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
