#!/usr/bin/env python3
"""Benchmark: `klpsym convert` of Debian's largest module against `objcopy`.

Input: bookworm's amdgpu.ko (~19 MB, ~320k relocations), with a target whose
Module.symvers lacks every symbol amdgpu imports and whose kallsyms has them
all, so all ~950 undefined symbols and their relocations convert.  Reference:
`objcopy amdgpu.ko out.ko` of the same file, measured in the same run.

Targets (issue 7): wall time <= 3x objcopy's; peak RSS <= 2x file size + 60 MB.

Usage: python benchmarks/convert_amdgpu.py [--runs N]
(provisions bookworm's kernel into the klpsym cache on first use)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from klpsym.lab.provision import provision
from klpsym.lab.qemu import capture_kallsyms
from klpsym.module.ko import read_module


def measure(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    # A fresh interpreter per measurement, so ru_maxrss is this child's alone.
    probe = (
        "import resource,subprocess,sys,time;"
        "t=time.perf_counter();r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL);"
        "w=time.perf_counter()-t;"
        "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024, r.returncode)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True,
                         check=True).stdout.split()
    if out[2] != "0":
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}")
    return float(out[0]), int(out[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", metavar="DIR", type=Path,
                    help="prepare the inputs in DIR and keep them (for profiling); print the "
                         "klpsym command line")
    args = ap.parse_args()

    kernel = provision("bookworm")
    ko = next(kernel.modules_dir.rglob("amdgpu.ko"))
    kallsyms = capture_kallsyms(kernel)
    module = read_module(ko)
    st = module.elf.symtab
    imported = sorted({st.name(int(i)) for i in st.undefined()} - {""})

    with tempfile.TemporaryDirectory(prefix="klpsym-bench-") as tmp:
        t = Path(tmp)
        if args.keep is not None:
            t = args.keep
            t.mkdir(parents=True, exist_ok=True)
            for old in t.iterdir():
                if old.is_symlink() or old.is_file():
                    old.unlink()
                elif old.is_dir():
                    shutil.rmtree(old)
        # The target's exports without anything amdgpu imports ...
        symvers = t / "Module.symvers"
        with (kernel.kernel_dir / "Module.symvers").open() as src, symvers.open("w") as dst:
            for line in src:
                f = line.split("\t")
                if len(f) > 1 and f[1] in imported:
                    continue
                dst.write(line)
        # ... and a kallsyms that has every one of them in vmlinux.
        ks = t / "kallsyms"
        text = kallsyms.read_text()
        rows = [line.split() for line in text.splitlines()]
        present = {r[2] for r in rows if len(r) == 3}
        counts: dict[str, int] = {}
        for r in rows:
            if len(r) == 3:
                counts[r[2]] = counts.get(r[2], 0) + 1
        # Names vmlinux has more than once (e.g. kern_path, a function and a
        # static variable): the user would pick one; the benchmark takes the first.
        sympos = [f"--sympos={n}=1" for n in imported if counts.get(n, 0) > 1]
        with ks.open("w") as f:
            f.write(text)
            for i, name in enumerate(imported):
                if name not in present:  # module exports (drm_*, ttm_*): pretend vmlinux
                    f.write(f"ffffffff9{i:07x} T {name}\n")
        kdir = t / "kdir"
        kdir.mkdir()
        for entry in kernel.kernel_dir.iterdir():
            if entry.name != "Module.symvers":
                (kdir / entry.name).symlink_to(entry)
        (kdir / "Module.symvers").symlink_to(symvers)

        out = t / "out.ko"
        klp_cmd = [sys.executable, "-m", "klpsym.cli.main", "convert", str(ko), "-o", str(out),
                   "--kernel-dir", str(kdir), "--kallsyms", str(ks), *sympos]
        res = subprocess.run(klp_cmd + ["--json"], capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(res.stderr.strip())
        import json

        doc = json.loads(res.stdout)
        if args.keep is not None:
            print(" ".join(klp_cmd))
            return 0
        obj_cmd = ["objcopy", str(ko), str(t / "objcopy.ko")]

        klp = [measure(klp_cmd) for _ in range(args.runs)]
        obj = [measure(obj_cmd) for _ in range(args.runs)]

    size = ko.stat().st_size
    kw, kr = statistics.median(w for w, _ in klp), max(r for _, r in klp)
    ow, orss = statistics.median(w for w, _ in obj), max(r for _, r in obj)
    relocs = sum(len(module.elf.rela(s)) for s in module.elf.rela_sections())
    print(f"date {time.strftime('%Y-%m-%d')}  machine {platform.machine()} "
          f"{os.cpu_count()} cpus  python {platform.python_version()}")
    print(f"input {ko.name}: {size / 1e6:.1f} MB, {relocs} relocations; converted "
          f"{doc['converted']} symbols, moved {doc['relocations_moved']} relocations")
    print(f"klpsym convert: {kw:.2f} s wall (median of {args.runs}), peak RSS {kr / 1e6:.0f} MB")
    print(f"objcopy:        {ow:.2f} s wall (median of {args.runs}), peak RSS {orss / 1e6:.0f} MB")
    print(f"ratio wall klpsym/objcopy: {kw / ow:.2f}x (target <= 3x)")
    print(f"peak RSS: {kr / 1e6:.0f} MB vs budget 2 x {size / 1e6:.1f} MB + 60 MB = "
          f"{(2 * size + 60e6) / 1e6:.0f} MB ({'within' if kr <= 2 * size + 60e6 else 'OVER'})")
    return 0 if kw <= 3 * ow and kr <= 2 * size + 60e6 else 1


if __name__ == "__main__":
    sys.exit(main())
