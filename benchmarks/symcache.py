#!/usr/bin/env python3
"""Benchmark: loading the symbol sources with and without the cache.

A kallsyms of 150,000 vmlinux lines (plus module lines) and a
Module.symvers of 35,000 lines, synthetic with kernel-like names, are read
as `klpsym convert` reads them (kernel.proc_kallsyms.read_proc_kallsyms,
kernel.symvers.read_symvers) and 1000 names are looked up in each, in a
fresh process per measurement; the time is that of the loads and lookups
(the interpreter and imports are not counted).  Three cases:

* --no-cache: parsed every time (what a run paid before the cache);
* first run: parsed and stored in the cache (empty cache dir);
* second run: read from the cache.

Target (issue 7): a second run pays almost nothing.

Usage: python benchmarks/symcache.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import sys, time
from klpsym.kernel.proc_kallsyms import read_proc_kallsyms
from klpsym.kernel.symvers import read_symvers
ks, sv, cache = sys.argv[1], sys.argv[2], sys.argv[4] == "1"
names = open(sys.argv[3]).read().split()
t = time.perf_counter()
k = read_proc_kallsyms(ks, cache=cache)
s = read_symvers(sv, cache=cache)
s.prefetch(names)
k.prefetch(names)
found = sum(s.get(n) is not None for n in names) + sum(len(k.candidates(n)) for n in names)
print(time.perf_counter() - t, found, len(k), len(s))
"""


def make_sources(d: Path, n_kallsyms: int = 150_000, n_symvers: int = 35_000) -> list[str]:
    rng = random.Random(1)
    words = ["dev", "net", "sched", "mm", "page", "inode", "lock", "init", "exit", "irq",
             "pci", "usb", "drm", "kvm", "bpf", "xfs", "ext4", "trace", "cpu", "rcu"]
    names = []
    for i in range(n_kallsyms):
        w = "_".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        # some names more than once, as static functions are in a kernel
        names.append(f"{w}_{i:x}" if i % 40 else f"{w}_dup{(i // 40) % 500}")
    types = "tTdDbBrR"
    lines = [f"ffffffff{0x81000000 + 16 * i:08x} {rng.choice(types)} {n}"
             for i, n in enumerate(names)]
    lines += [f"ffffffffc0{i:06x} t mod_{i}\t[some_mod]" for i in range(5000)]
    (d / "kallsyms").write_text("\n".join(lines) + "\n")
    unique = sorted(set(names))
    exported = rng.sample([n for n in unique if "_dup" not in n], n_symvers)
    (d / "Module.symvers").write_text("".join(
        f"0x{rng.getrandbits(32):08x}\t{n}\t{'vmlinux' if i % 3 else 'drivers/x/m' + str(i % 97)}"
        f"\tEXPORT_SYMBOL{'_GPL' if i % 2 else ''}\t\n" for i, n in enumerate(exported)))
    return rng.sample(unique, 1000)


def run(d: Path, cache: bool) -> tuple[float, str]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(d / "kallsyms"), str(d / "Module.symvers"),
         str(d / "names"), "1" if cache else "0"], capture_output=True, text=True, check=True,
    ).stdout.split()
    return float(out[0]), " ".join(out[1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="klpsym-bench-") as tmp:
        d = Path(tmp)
        cache_dir = d / "symcache"
        os.environ["KLPSYM_SYMCACHE"] = str(cache_dir)
        (d / "names").write_text("\n".join(make_sources(d)))
        none = [run(d, False) for _ in range(args.runs)]
        first, second = [], []
        for _ in range(args.runs):
            shutil.rmtree(cache_dir, ignore_errors=True)
            first.append(run(d, True))
            second.append(run(d, True))
        answers = {r[1] for r in none + first + second}
        if len(answers) != 1:
            raise SystemExit(f"the three ways gave different answers: {answers}")
        entry_kb = sum(p.stat().st_size for p in cache_dir.iterdir()) / 1024
    med = {k: statistics.median(t for t, _ in v)
           for k, v in (("none", none), ("first", first), ("second", second))}
    found, nk, ns = next(iter(answers)).split()
    print(f"date {time.strftime('%Y-%m-%d')}  machine {platform.machine()} "
          f"{os.cpu_count()} cpus  python {platform.python_version()}")
    print(f"sources: kallsyms {nk} vmlinux symbols (+5000 module lines), Module.symvers {ns} "
          f"exports; 1000 names looked up in each; cache entries {entry_kb:.0f} KB")
    print(f"--no-cache:  {med['none'] * 1000:7.1f} ms (median of {args.runs})")
    print(f"first run:   {med['first'] * 1000:7.1f} ms (parse and store)")
    print(f"second run:  {med['second'] * 1000:7.1f} ms (from the cache): "
          f"{med['none'] / med['second']:.0f}x faster than parsing")
    return 0 if med["second"] <= 0.1 * med["none"] else 1


if __name__ == "__main__":
    sys.exit(main())
