#!/usr/bin/env python3
"""Benchmark: `klpsym check` of every module of an installed kernel against
that kernel, beside `depmod -n` of the same tree.

Input: by default the lab's Debian bookworm kernel (6.1, 4,023 modules),
unpacked by `klpsym lab provision bookworm` in Debian's installed layout
(ROOT/lib/modules/RELEASE, ROOT/usr/src/linux-headers-RELEASE); with
--root/--release any installed kernel (e.g. --root / --release $(uname -r)).

  klpsym check ROOT/lib/modules/RELEASE --kernel-dir HEADERS [--system-map MAP] > /dev/null
  depmod -n -b ROOT RELEASE > /dev/null

klpsym's report goes to /dev/null, not a terminal, so it is the plain-text
report a pipe or a file gets (--json is measured too, and printed apart).
The symbol source: the lab's System.map from the -dbg package when it is
already cached (`klpsym lab` fetches it for the real-kernel tests), else
none; in-tree modules use only exports, so check never has to read it.

klpsym is byte-compiled first, as an installed package is (this
environment may set PYTHONDONTWRITEBYTECODE), and uses the benchmark's own
symbol cache, filled by a first run.  Both commands run once before
measuring (page cache warm), then alternately --runs times each, so both
see the same machine load.  Reported: median and best wall time, median
CPU time (user+sys of the process and its workers), the ratio of the
median walls, and two floors: the interpreter with numpy, and with the
modules `klpsym check` imports.

Target (issue 7): klpsym check's wall time <= 1.0x depmod's.

Usage: python benchmarks/check_all.py [--runs N] [--root ROOT --release RELEASE]
       [--system-map auto|none|PATH] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from childrun import compile_klpsym, run_child  # benchmarks/


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and exit status of one run of ``cmd`` (check
    exits 1 when a module would not load: a result, not a failure)."""
    wall, cpu, _, status = run_child(cmd, env=env)
    return wall, cpu, status


def lab_tree() -> tuple[Path, str, Path, Path | None]:
    """(root, release, headers, cached System.map or None) of the lab's bookworm."""
    from klpsym.lab.provision import provision

    kernel = provision("bookworm")
    system_map = kernel.home / "dbg" / "System.map"
    return kernel.root, kernel.release, kernel.kernel_dir, \
        system_map if system_map.is_file() else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--root", type=Path, help="root of an installed kernel (default: the lab's "
                    "bookworm)")
    ap.add_argument("--release", help="its release (uname -r); with --root")
    ap.add_argument("--system-map", default="auto",
                    help="auto (the lab's -dbg System.map if cached), none, or a path")
    ap.add_argument("--jobs", type=int, help="klpsym check -j N (default: one per CPU)")
    args = ap.parse_args()

    if args.root is not None:
        if not args.release:
            ap.error("--root needs --release")
        root, release = args.root, args.release
        headers = root / "lib" / "modules" / release / "build"
        if not headers.is_dir():
            headers = root / "usr" / "src" / f"linux-headers-{release}"
        system_map = None
    else:
        root, release, headers, system_map = lab_tree()
    if args.system_map == "none":
        system_map = None
    elif args.system_map != "auto":
        system_map = Path(args.system_map)
    modules = root / "lib" / "modules" / release

    klp_cmd = [sys.executable, "-m", "klpsym.cli.main", "check", str(modules),
               "--kernel-dir", str(headers)]
    if system_map is not None:
        klp_cmd += ["--system-map", str(system_map)]
    if args.jobs:
        klp_cmd += ["-j", str(args.jobs)]
    dep_cmd = ["depmod", "-n", "-b", str(root), release]
    floors = {"python -c 'import numpy'": [sys.executable, "-c", "import numpy"],
              "python -c 'import (check's modules)'": [
                  sys.executable, "-c", "import klpsym.cli.main, klpsym.cli.check, "
                  "klpsym.load.batch, klpsym.kernel.target"]}

    compile_klpsym()
    os.environ["KLPSYM_SYMCACHE"] = tempfile.mkdtemp(prefix="klpsym-bench-symcache-")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the klpsym command sets it
    # Warm-up: page cache, symbol cache; and the verdicts, for the record.
    report = subprocess.run(klp_cmd + ["--json"], capture_output=True, text=True)
    if report.returncode not in (0, 1):
        raise SystemExit(f"klpsym check failed ({report.returncode}): {report.stderr.strip()}")
    verdicts = [m["verdict"] for m in json.loads(report.stdout)["modules"]]
    if subprocess.run(dep_cmd, stdout=subprocess.DEVNULL).returncode != 0:
        raise SystemExit(f"{' '.join(dep_cmd)} failed")

    klp, dep, klp_json = [], [], []
    floor: dict[str, list[tuple[float, float, int]]] = {k: [] for k in floors}
    for _ in range(args.runs):
        klp.append(measure(klp_cmd))
        dep.append(measure(dep_cmd))
        klp_json.append(measure(klp_cmd + ["--json"]))
        for k, cmd in floors.items():
            floor[k].append(measure(cmd))
    shutil.rmtree(os.environ["KLPSYM_SYMCACHE"])
    if any(rc not in (0, 1) for _, _, rc in klp + klp_json):
        raise SystemExit("klpsym check failed during the measurement")

    def stats(runs: list[tuple[float, float, int]]) -> tuple[float, float, float]:
        return (statistics.median(w for w, _, _ in runs), min(w for w, _, _ in runs),
                statistics.median(c for _, c, _ in runs))

    kw, kb, kc = stats(klp)
    dw, db, dc = stats(dep)
    jw, jb, jc = stats(klp_json)
    counts = {v: verdicts.count(v) for v in sorted(set(verdicts))}
    print(f"date {time.strftime('%Y-%m-%d')}  machine {platform.machine()} "
          f"{os.cpu_count()} cpus  python {platform.python_version()}  "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"tree {modules}: {len(verdicts)} modules "
          f"({', '.join(f'{n} {v}' for v, n in counts.items())}); "
          f"symbols {'from ' + str(system_map) if system_map else 'none'}")
    print(f"{'':24}{'wall median':>12}{'wall best':>11}{'CPU median':>12}   (of {args.runs})")
    for label, (w, b, c) in (("klpsym check", (kw, kb, kc)), ("klpsym check --json", (jw, jb, jc)),
                             ("depmod -n", (dw, db, dc))):
        print(f"{label:24}{w:>11.2f}s{b:>10.2f}s{c:>11.2f}s")
    for label, runs in floor.items():
        w, b, c = stats(runs)
        print(f"floor: {label} {w:.2f}s wall, {c:.2f}s CPU")
    print(f"ratio wall klpsym check / depmod: {kw / dw:.2f}x (best runs {kb / db:.2f}x; "
          "target <= 1.0x); --json: "
          f"{jw / dw:.2f}x")
    return 0 if kw <= dw else 1


if __name__ == "__main__":
    sys.exit(main())
