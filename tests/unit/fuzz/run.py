"""Run the fuzzer (see harness.py) for a number of inputs, on one core.

    .venv/bin/python -m tests.unit.fuzz.run --inputs 1000000 --seed 1 --findings DIR

Prints progress every --every inputs and a summary; each new finding (one
per distinct signature) is saved as DIR/<target>-<kind>-<n>.ko with a .txt
beside it.  Exit 1 if anything was found.  Copy a fixed finding's .ko into
tests/unit/fuzz/corpus/ to keep it as a regression test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per input and target")
    ap.add_argument("--every", type=int, default=10_000, help="progress line every N inputs")
    ap.add_argument("--findings", type=Path, default=Path("fuzz-findings"))
    ap.add_argument("--targets", default="", help="comma separated (default: all)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="klpsym-fuzz-",
                                     dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as t:
        os.environ.setdefault("KLPSYM_SYMCACHE", str(Path(t) / "symcache"))
        from tests.unit.fuzz.harness import Fuzzer

        fz = Fuzzer(Path(t), seed=args.seed, timeout=args.timeout,
                    targets=[x for x in args.targets.split(",") if x] or None)
        seen: dict[str, int] = {}
        start = time.monotonic()
        print(f"fuzz: {len(fz.seeds)} seeds, targets {', '.join(fz.targets)}, seed {args.seed}",
              flush=True)
        for n, data in enumerate(fz.inputs(args.inputs), 1):
            for f in fz.check(data):
                sig = f.signature()
                seen[sig] = seen.get(sig, 0) + 1
                if seen[sig] == 1:
                    args.findings.mkdir(parents=True, exist_ok=True)
                    stem = args.findings / f"{f.target}-{f.kind}-{len(seen)}"
                    stem.with_suffix(".ko").write_bytes(f.data)
                    stem.with_suffix(".txt").write_text(f"{sig}\n\n{f.detail}\n")
                    print(f"fuzz: NEW finding {stem}.ko: {sig}", flush=True)
            if n % args.every == 0:
                rate = n / (time.monotonic() - start)
                print(f"fuzz: {n} inputs, {len(seen)} distinct findings, {rate:.0f}/s",
                      flush=True)
        fz.close()
    elapsed = time.monotonic() - start
    print(json.dumps({"inputs": fz.count, "seconds": round(elapsed), "seed": args.seed,
                      "inputs_per_second": round(fz.count / elapsed, 1),
                      "distinct_findings": len(seen), "findings": seen,
                      "outcomes": dict(sorted(fz.outcomes.items()))}), flush=True)
    return 1 if seen else 0


if __name__ == "__main__":
    sys.exit(main())
