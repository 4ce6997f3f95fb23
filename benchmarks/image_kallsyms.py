#!/usr/bin/env python3
"""Benchmark: kallsyms read out of Debian's kernel images.

For the vmlinuz of bookworm (6.1, xz), trixie (6.12, zstd) and sid (7.x,
zstd), from the lab cache (provisioned when missing), each in a fresh
process:

* ``klpsym kallsyms --image VMLINUZ --kernel-dir KDIR``, first run (empty
  symbol cache) and second run (from the cache): the whole command, its
  interpreter start and imports included;
* the read alone (``kernel.image.read_image_kallsyms`` timed in the child);
* ``kallsyms-finder VMLINUZ`` of vmlinux-to-elf (GPL-3.0: installed into a
  separate venv for this benchmark only, never a dependency of klpsym).

The outputs of klpsym and kallsyms-finder are compared line by line.
Target (issue 17): first run <= 0.5 s and <= 100 MB peak RSS; the second
near zero.  The first run's time is held to the target twice: its wall
time (what "takes 0.5 s" means; the command decompresses the image in a
thread while it imports, so wall time is below CPU time on a machine with
a core to spare, and above it on a loaded one: the load is printed) and
its CPU time (user + system of the whole command, both threads: the work
done, which the thread does not reduce).  Exit status 1 when the judged
measure (--judge, default wall), the memory or the outputs miss.

Usage: python benchmarks/image_kallsyms.py [--runs N] [--venv DIR] [--judge wall|cpu]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from childrun import compile_klpsym, measure  # noqa: E402

READ_ONLY = r"""
import sys, time
from klpsym.kernel.image import read_image_kallsyms
from klpsym.kernel.version import read_kernel_version
v = read_kernel_version(sys.argv[2])
t, c = time.perf_counter(), time.process_time()
n = len(read_image_kallsyms(sys.argv[1], v))
print(time.perf_counter() - t, time.process_time() - c, n)
"""

TARGET_SECONDS = 0.5
TARGET_RSS = 100 << 20


def finder(venv: Path) -> Path:
    """kallsyms-finder in its own venv (created when missing)."""
    exe = venv / "bin" / "kallsyms-finder"
    if not exe.exists():
        print(f"installing vmlinux-to-elf into {venv} (for this benchmark only)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "vmlinux-to-elf"],
                       check=True)
    return exe


def median_of(runs: int, cmd: list[str], env: dict[str, str],
              before: object = None) -> tuple[float, float, int]:
    out = []
    for _ in range(runs):
        if callable(before):
            before()
        out.append(measure(cmd, env))
    return (statistics.median(r[0] for r in out), statistics.median(r[1] for r in out),
            max(r[2] for r in out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "klpsym-bench-v2e")
    ap.add_argument("--judge", choices=("wall", "cpu"), default="wall",
                    help="the first run's time held to the target for the exit status")
    args = ap.parse_args()
    from klpsym.lab.provision import provision

    compile_klpsym()
    kf = finder(args.venv)
    klpsym = [sys.executable, "-m", "klpsym.cli.main"]
    print(f"{platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}, "
          f"Python {platform.python_version()}, runs {args.runs} (median; RSS max)")
    print(f"{'image':<34} {'tool':<28} {'wall':>7} {'CPU':>7} {'peak RSS':>9}")
    missed = False
    verdicts: list[str] = []
    for suite in ("bookworm", "trixie", "sid"):
        k = provision(suite)
        img = str(k.vmlinuz)
        name = f"{suite} {k.release}"
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, KLPSYM_SYMCACHE=cache)
            env.pop("KLPSYM_NO_CACHE", None)
            cmd = klpsym + ["kallsyms", "--image", img, "--kernel-dir", str(k.kernel_dir)]

            def empty(d: str = cache) -> None:
                shutil.rmtree(d, ignore_errors=True)
                os.mkdir(d)

            first = median_of(args.runs, cmd, env, empty)
            second = median_of(args.runs, cmd, env)
            ours = subprocess.run(cmd, env=env, capture_output=True, check=True).stdout
        reads = [[float(x) for x in subprocess.run(
            [sys.executable, "-c", READ_ONLY, img, str(k.kernel_dir)],
            capture_output=True, text=True, check=True).stdout.split()[:2]]
            for _ in range(args.runs)]
        theirs_cost = median_of(args.runs, [str(kf), img], dict(os.environ))
        theirs = subprocess.run([str(kf), img], capture_output=True, check=True).stdout
        same = ours.splitlines() == [ln for ln in theirs.splitlines() if ln.strip()]
        for tool, (wall, cpu, rss) in (("klpsym kallsyms, first run", first),
                                       ("klpsym kallsyms, cached", second),
                                       ("kallsyms-finder 1.4.0", theirs_cost)):
            print(f"{name:<34} {tool:<28} {wall:6.3f}s {cpu:6.3f}s {rss / 2**20:7.0f} MB")
        print(f"{name:<34} {'read_image_kallsyms alone':<28} "
              f"{statistics.median(r[0] for r in reads):6.3f}s "
              f"{statistics.median(r[1] for r in reads):6.3f}s {'':>9}   "
              f"outputs equal: {'yes' if same else 'NO'}")
        wall_ok, cpu_ok = first[0] <= TARGET_SECONDS, first[1] <= TARGET_SECONDS

        def said(ok: bool) -> str:
            return "met" if ok else "MISSED"

        verdicts.append(f"{name}: first run {first[0]:.3f} s wall ({said(wall_ok)}), "
                        f"{first[1]:.3f} s CPU ({said(cpu_ok)}), {first[2] / 2**20:.0f} MB "
                        f"({said(first[2] <= TARGET_RSS)}); load now {os.getloadavg()[0]:.1f}")
        if not (wall_ok if args.judge == "wall" else cpu_ok) or first[2] > TARGET_RSS \
                or not same:
            missed = True
    print(f"targets: first run <= {TARGET_SECONDS} s, <= {TARGET_RSS >> 20} MB peak RSS "
          f"(judged on {args.judge} time)")
    for v in verdicts:
        print("  " + v)
    print("targets:", "missed" if missed else "met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
