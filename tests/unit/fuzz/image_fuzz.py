"""A mutational fuzzer for the kernel image reader (``klpsym kallsyms --image``).

Seeds are synthetic images from ``tests/imagebuilder.py``: every kallsyms
layout, as a plain vmlinux and in a bzImage with each compression.  A
mutation works on the vmlinux (bit flips, interesting u32 values at aligned
places, truncation, a run of bytes copied from another layout's image, a
changed ELF header field) or on the bzImage (its setup header fields, the
compressed payload's bytes, truncation); the mutated vmlinux is then
compressed again half of the time.

Each input goes to ``klpsym kallsyms --image FILE`` in this process.  It
must exit 0 or 2; on 2 stderr is one ``klpsym: error:`` line naming the
file; on 0 every output line is ``ADDRESS TYPE NAME``.  And where the
mutation left the kallsyms tables and the banner alone (it touched only the
text before them or the bytes after them), the output must be the seed's
own table, or an error: damage elsewhere never changes the table.

Usage: python -m tests.unit.fuzz.image_fuzz [--inputs N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.unit.fuzz.harness import error_line, run_main  # noqa: E402

import imagebuilder as ib  # noqa: E402

COMPRESSIONS = ("gzip", "xz", "lzma", "bzip2", "zstd", "lz4")
LINE = re.compile(r"^[0-9a-f]{16} [!-~] [^\s]+$")
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF)


@dataclass(frozen=True)
class Seed:
    layout: str
    elf: bytes
    expected: str  # klpsym kallsyms' output for it
    tables: tuple[int, int]  # [start, end) of the banner and tables in ``elf``


def seeds() -> list[Seed]:
    out = []
    for layout, (release, spec) in sorted(ib.LAYOUTS.items()):
        rows = ib.sample_rows(200, long_name=spec.big_lengths, abs_percpu=spec.abs_percpu)
        elf = ib.vmlinux(release, rows, spec)
        start = elf.index(b"Linux version")
        end = elf.index(b"after the tables")
        expected = "".join(f"{a:016x} {t} {n}\n" for a, t, n in rows)
        out.append(Seed(layout, elf, expected, (start, end)))
    return out


def mutate_elf(rng: random.Random, seed: Seed, others: list[Seed]) -> tuple[bytes, bool]:
    """A mutated vmlinux, and whether the tables and banner were left alone."""
    data = bytearray(seed.elf)
    start, end = seed.tables
    outside = rng.random() < 0.4
    for _ in range(rng.randint(1, 4)):
        if outside:
            where = rng.choice([(ib.SEG_OFFSET, start), (end, len(data))])
        else:
            where = (start, end)
        op = rng.randrange(5)
        lo, hi = where
        if hi <= lo + 8:
            continue
        if op == 0:
            i = rng.randrange(lo, hi)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            i = rng.randrange(lo, hi - 4) & ~3
            struct.pack_into("<I", data, i, rng.choice(INTERESTING))
        elif op == 2 and not outside:
            other = rng.choice(others).elf
            n = rng.randint(1, 64)
            i = rng.randrange(lo, hi - n)
            j = rng.randrange(0, len(other) - n)
            data[i: i + n] = other[j: j + n]
        elif op == 3 and not outside:
            del data[rng.randrange(lo, hi):]
            break
        elif op == 4 and not outside:
            field = rng.choice([(18, 2), (0x20, 8), (0x36, 2), (0x38, 2), (64 + 8, 8),
                                (64 + 32, 8)])
            struct.pack_into("<" + {2: "H", 8: "Q"}[field[1]], data, field[0],
                             rng.choice(INTERESTING) & ((1 << (8 * field[1])) - 1))
        else:
            i = rng.randrange(lo, hi)
            data[i] ^= 0xFF
    return bytes(data), outside


def mutate_bzimage(rng: random.Random, image: bytes) -> bytes:
    data = bytearray(image)
    op = rng.randrange(4)
    if op == 0:
        field = rng.choice([0x1F1, 0x206, 0x248, 0x24C])
        size = 1 if field == 0x1F1 else (2 if field == 0x206 else 4)
        struct.pack_into({1: "<B", 2: "<H", 4: "<I"}[size], data, field,
                         rng.choice(INTERESTING) & ((1 << (8 * size)) - 1))
    elif op == 1:
        del data[rng.randrange(0x300, len(data)):]
    else:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(0x400, len(data))
            data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def check(path: Path, expected: str | None) -> str | None:
    """What is wrong with klpsym kallsyms on ``path`` (None: fine)."""
    try:
        rc, out, err = run_main(["kallsyms", "--no-cache", "--image", str(path)])
    except Exception as e:  # noqa: BLE001 - every escape is a finding
        return f"raised {type(e).__name__}: {e}"
    if rc == 2:
        return error_line(err, [str(path)])
    if rc != 0:
        return f"exit status {rc}"
    bad = next((ln for ln in out.splitlines() if not LINE.match(ln)), None)
    if bad is not None:
        return f"malformed output line {bad[:100]!r}"
    if expected is not None and out != expected:
        return "damage outside the tables changed the table"
    return None


def run(inputs: int, seed: int, work: Path) -> list[str]:
    rng = random.Random(seed)
    pool = seeds()
    findings = []
    path = work / "vmlinuz"
    for k in range(inputs):
        s = rng.choice(pool)
        if rng.random() < 0.25:
            kind = rng.choice(COMPRESSIONS)
            data = mutate_bzimage(rng, ib.bzimage(ib.compress(kind, s.elf)))
            expected = None
            what = f"bzImage {kind} mutated"
        else:
            data, outside = mutate_elf(rng, s, pool)
            expected = s.expected if outside else None
            what = "vmlinux mutated" + (" outside the tables" if outside else "")
            if rng.random() < 0.5:
                kind = rng.choice(COMPRESSIONS)
                data = ib.bzimage(ib.compress(kind, data))
                what += f", then {kind} bzImage"
        path.write_bytes(data)
        problem = check(path, expected)
        if problem is not None:
            keep = work / f"finding-{k}-{s.layout}.img"
            keep.write_bytes(data)
            findings.append(f"{keep.name}: {s.layout}, {what}: {problem}")
    return findings


def main() -> int:
    ap = argparse.ArgumentParser(description="fuzz klpsym's kernel image reader")
    ap.add_argument("--inputs", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/klpsym-image-fuzz"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    findings = run(args.inputs, args.seed, args.work)
    for f in findings:
        print(f)
    print(f"{args.inputs} inputs, {len(findings)} findings (kept in {args.work})")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
