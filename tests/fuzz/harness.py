"""A mutational fuzzer for klpsym's module reader and ``klpsym convert``.

Inputs are seeds (small real Debian modules from the lab cache when it has
them, and synthetic objects from ``tests/elfbuilder.py``) changed by 1-4
mutations: bit flips, interesting integers at random places and in ELF
fields (header, section headers, symbols, relocations), truncation,
insertion, splicing, a fake signature trailer.  Structure-aware mutations
reach the code behind the header checks, which random bytes rarely do.

Every input goes to every target (an entry point; add one to ``TARGETS``):

* ``reader``: parse the ELF part and every table, read .modinfo, write it
  back; the written bytes must read again.
* ``convert``: ``klpsym.cli.main.main(["convert", ...])`` in this process
  against a small made-up target kernel (its own Module.symvers, kallsyms,
  .config), with ``-o`` or ``--in-place``.  It must return 0 or 2; on 2,
  stderr is one ``klpsym: error:`` line and nothing was written; on 0 the
  output re-reads, passes the loader rules and has the input's relocations
  and symbols (klpsym's validators, run again here); the input is unchanged
  unless converted in place; no temporary file is left.

Anything else (an exception that is not a KlpsymError turned into exit 2, a
run over the time limit, a bad output) is a finding.  Runs are
deterministic for a given seed.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import signal
import struct
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from elfbuilder import (  # noqa: E402
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHT_NOBITS,
    STB_LOCAL,
    STB_WEAK,
    STT_FUNC,
    STT_SECTION,
    ElfBuilder,
    simple_module,
)
from klpsym.elf import ElfFile  # noqa: E402
from klpsym.errors import KlpsymError  # noqa: E402
from klpsym.fsutil import TEMP_SUFFIX  # noqa: E402
from klpsym.module.modinfo import read_modinfo  # noqa: E402
from klpsym.module.signature import MODULE_SIG_STRING, split_signature  # noqa: E402

RELEASE = "6.1.0-56-amd64"
CORPUS = HERE / "corpus"
NAME_WIDTH = 511  # KSYM_NAME_LEN - 1 of 6.1


class Hang(BaseException):
    """Raised by the per-input timer (a BaseException: no handler in klpsym
    may swallow it)."""


@dataclass
class Finding:
    target: str
    kind: str  # "exception", "hang", "bad-exit", "bad-output", "input-changed", "leftover"
    detail: str
    data: bytes = field(repr=False, default=b"")

    def signature(self) -> str:
        """What makes two findings the same bug (for de-duplication)."""
        last = self.detail.strip().splitlines()[-1] if self.detail.strip() else ""
        where = [ln for ln in self.detail.splitlines() if ln.strip().startswith("File ")]
        return f"{self.target}:{self.kind}:{where[-1].strip() if where else ''}:{last[:120]}"


# -- seeds ------------------------------------------------------------------------


def real_seeds(limit: int = 40, max_size: int = 24_000) -> list[bytes]:
    """Small modules of the Debian kernel in the lab cache (none if the
    cache has none; nothing is downloaded)."""
    root = Path(os.environ.get("KLPSYM_CACHE") or Path.home() / ".cache" / "klpsym")
    found: list[Path] = []
    for kdir in sorted(root.glob(f"kernels*/bookworm/*/root/lib/modules/{RELEASE}/kernel")):
        found = sorted((p for p in kdir.rglob("*.ko") if p.stat().st_size <= max_size),
                       key=lambda p: (p.stat().st_size, p.name))
        if found:
            break
    # every k-th, so sizes and kinds vary
    step = max(1, len(found) // limit) if found else 1
    return [p.read_bytes() for p in found[::step][:limit]]


def synthetic_seeds() -> list[bytes]:
    out = [
        simple_module().build(),
        simple_module(("kallsyms_lookup_name", "show_state_filter", "fuzz_data_sym"),
                      ("_printk", "fuzz_exported")).build(),
        simple_module((), ("_printk",)).build(),
        simple_module(("fuzz_dup",)).build(),
        simple_module(("kallsyms_lookup_name",), big_endian=True).build(),
        simple_module(("kallsyms_lookup_name",), license="Proprietary").build(),
    ]
    b = simple_module(("kallsyms_lookup_name", "fuzz_weak_target"))
    b.symbol("fuzz_weak_missing", bind=STB_WEAK)
    b.section(".bss", SHT_NOBITS, SHF_ALLOC | 1, b"", 8, nobits_size=64)
    out.append(b.build())
    b = ElfBuilder(force_xindex=True)
    text = b.text(64)
    b.module()
    b.symbol(".text", text, STB_LOCAL, STT_SECTION)
    b.symbol("init_module", text, STB_WEAK, STT_FUNC, 0, 16)
    s = b.symbol("kallsyms_lookup_name")
    b.rela(text, 1, s)
    b.rela(text, 1, s)  # two relocations at one offset
    b.section(".text.unlikely", 1, SHF_ALLOC | SHF_EXECINSTR, bytes(32), 16)
    out.append(b.build())
    signed = simple_module().build()
    sig = b"\x30" * 40
    info = bytes([0, 0, 2, 0, 0, 0, 0, 0]) + struct.pack(">I", len(sig))
    out.append(signed + sig + info + MODULE_SIG_STRING)
    return out


# -- the made-up target kernel ------------------------------------------------------


def undefined_names(seeds: list[bytes]) -> set[str]:
    names: set[str] = set()
    for data in seeds:
        try:
            elf_part, _ = split_signature(data, "seed")
            st = ElfFile.from_bytes(elf_part).symtab
            names |= {st.name(int(i)) for i in st.undefined()} - {""}
        except KlpsymError:
            pass
    return names


def make_target(where: Path, names: set[str]) -> tuple[Path, Path]:
    """A kernel dir (release, .config, Module.symvers) and a kallsyms file.
    About two thirds of ``names`` are exported; the rest are only in
    kallsyms, so they convert; ``fuzz_dup`` is there twice."""
    kdir = where / "kdir"
    (kdir / "include" / "config").mkdir(parents=True, exist_ok=True)
    (kdir / "include" / "config" / "kernel.release").write_text(RELEASE + "\n")
    (kdir / ".config").write_text("CONFIG_LIVEPATCH=y\nCONFIG_KALLSYMS_ALL=y\n"
                                  "CONFIG_MODULES=y\n")
    rng = random.Random(7)
    ordered = sorted(names | {"_printk", "fuzz_exported", "kallsyms_lookup_name",
                              "show_state_filter", "fuzz_data_sym", "fuzz_dup"})
    exported = {n for n in ordered if rng.random() < 0.66} | {"_printk", "fuzz_exported"}
    exported -= {"kallsyms_lookup_name", "show_state_filter", "fuzz_data_sym", "fuzz_dup"}
    (kdir / "Module.symvers").write_text("".join(
        f"0x{i:08x}\t{n}\tvmlinux\tEXPORT_SYMBOL_GPL\t\n" for i, n in enumerate(sorted(exported))))
    lines = [f"ffffffff81{i:06x}0 {'D' if n.endswith('_data_sym') else 'T'} {n}"
             for i, n in enumerate(ordered)]
    lines.append("ffffffff82000000 t fuzz_dup")
    ks = where / "kallsyms"
    ks.write_text("\n".join(lines) + "\n")
    return kdir, ks


# -- mutations ----------------------------------------------------------------------

_INTS = [0, 1, 2, 3, 4, 7, 8, 15, 16, 24, 63, 64, 0x7F, 0x80, 0xFF, 0x100, 0xFF00, 0xFF20,
         0xFFF1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000,
         0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF]


def _u(data: bytes | bytearray, off: int, size: int) -> int:
    return int.from_bytes(data[off: off + size], "little")


def _put(data: bytearray, off: int, size: int, value: int) -> None:
    if 0 <= off and off + size <= len(data):
        data[off: off + size] = (value % (1 << (8 * size))).to_bytes(size, "little")


def _value(rng: random.Random, data: bytearray, old: int) -> int:
    r = rng.random()
    if r < 0.5:
        return rng.choice(_INTS)
    if r < 0.7:
        return old + rng.choice([-8, -1, 1, 8, 24, 64])
    if r < 0.85:
        return rng.choice([len(data), len(data) - 1, len(data) + 1, len(data) // 2])
    return rng.getrandbits(rng.choice([8, 16, 32, 64]))


def _sections(data: bytes | bytearray) -> list[tuple[int, int, int, int, int]]:
    """(header offset, type, offset, size, entsize) of each section header
    that lies inside the file (little-endian ELF64 only; [] otherwise)."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    shoff, shnum = _u(data, 0x28, 8), _u(data, 0x3C, 2)
    out = []
    for i in range(min(shnum, 4096)):
        h = shoff + 64 * i
        if h + 64 > len(data):
            break
        out.append((h, _u(data, h + 4, 4), _u(data, h + 24, 8), _u(data, h + 32, 8),
                    _u(data, h + 56, 8)))
    return out


def _table_entry(rng: random.Random, data: bytearray, sh_type: int,
                 entsize: int) -> int | None:
    tables = [s for s in _sections(data) if s[1] == sh_type and 0 < s[3] and
              s[2] + s[3] <= len(data)]
    if not tables:
        return None
    _, _, off, size, _ = rng.choice(tables)
    n = size // entsize
    return off + entsize * rng.randrange(n) if n else None


def mutate(rng: random.Random, seed: bytes, others: list[bytes]) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        op = rng.randrange(14)
        if not data:
            data = bytearray(rng.choice(others))
        n = len(data)
        if op == 0:  # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(n)
                data[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # an integer somewhere
            size = rng.choice([1, 2, 4, 8])
            off = rng.randrange(max(1, n - size)) & ~(size - 1 if rng.random() < 0.7 else 0)
            _put(data, off, size, _value(rng, data, _u(data, off, size)))
        elif op == 2:  # an ELF header field
            off, size = rng.choice([(4, 1), (5, 1), (6, 1), (0x10, 2), (0x12, 2), (0x14, 4),
                                    (0x28, 8), (0x30, 4), (0x34, 2), (0x3A, 2), (0x3C, 2),
                                    (0x3E, 2), (0x20, 8), (0x38, 2)])
            _put(data, off, size, _value(rng, data, _u(data, off, size)))
        elif op in (3, 4):  # a section header field
            secs = _sections(data)
            if secs:
                h = rng.choice(secs)[0]
                off, size = rng.choice([(0, 4), (4, 4), (8, 8), (24, 8), (32, 8), (40, 4),
                                        (44, 4), (48, 8), (56, 8)])
                _put(data, h + off, size, _value(rng, data, _u(data, h + off, size)))
        elif op == 5:  # a symbol
            e = _table_entry(rng, data, 2, 24)
            if e is not None:
                off, size = rng.choice([(0, 4), (4, 1), (5, 1), (6, 2), (8, 8), (16, 8)])
                _put(data, e + off, size, _value(rng, data, _u(data, e + off, size)))
        elif op == 6:  # a relocation
            e = _table_entry(rng, data, 4, 24)
            if e is not None:
                off, size = rng.choice([(0, 8), (8, 4), (12, 4), (16, 8)])
                _put(data, e + off, size, _value(rng, data, _u(data, e + off, size)))
        elif op == 7:  # truncate
            del data[rng.randrange(n):]
        elif op == 8:  # insert bytes (everything after moves)
            i = rng.randrange(n + 1)
            data[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 3, 8, 64])))
        elif op == 9:  # duplicate or delete a chunk
            a = rng.randrange(n)
            b = min(n, a + rng.choice([1, 8, 24, 64, 512]))
            if rng.random() < 0.5:
                data[a:a] = data[a:b]
            else:
                del data[a:b]
        elif op == 10:  # splice with another input
            other = rng.choice(others)
            a, b = rng.randrange(n), rng.randrange(len(other))
            data = data[:a] + other[b:] if rng.random() < 0.5 else bytearray(other[:b]) + data[a:]
        elif op == 11:  # a string: names of symbols and sections, .modinfo
            i = rng.randrange(n)
            j = data.find(b"\0", i)
            if j > i:
                k = rng.randrange(i, j)
                data[k] = rng.choice(b",.=_ \xff\x00ax")
        elif op == 12:  # a signature trailer
            sig_len = rng.choice([0, 1, 12, 40, n, n + 100, rng.getrandbits(32)])
            data += bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 8, 40])))
            data += bytes([0, 0, 2, 0, 0, 0, 0, 0]) + struct.pack(">I", sig_len % (1 << 32))
            data += MODULE_SIG_STRING
        else:  # a run of interesting bytes
            i = rng.randrange(n)
            data[i: i + 8] = bytes([rng.choice([0, 0xFF, 0x7F, 0x80])]) * 8
    return bytes(data)


# -- targets ------------------------------------------------------------------------


def target_reader(fz: Fuzzer, data: bytes) -> list[Finding]:
    try:
        elf_part, _ = split_signature(data, "input")
        elf = ElfFile.from_bytes(elf_part, "input")
        elf.parse_tables()
        if elf.has_symtab:
            elf.symtab.names()
            elf.symtab.undefined()
        read_modinfo(elf)
        out = elf.to_bytes()
    except KlpsymError:
        return []
    try:
        again = ElfFile.from_bytes(out, "rewritten")
        again.parse_tables()
    except KlpsymError as e:
        return [Finding("reader", "bad-output", f"the rewritten file does not read: {e}", data)]
    return []


def target_convert(fz: Fuzzer, data: bytes) -> list[Finding]:
    from klpsym.cli.main import main
    from klpsym.klp.validate import loader_problems, relocation_changes, symbol_changes

    work = fz.work
    src, out = work / "in.ko", work / "out.ko"
    for p in work.iterdir():
        if p.is_file() and p.name not in ("kallsyms",):
            p.unlink()
    src.write_bytes(data)
    r = fz.rng.random()
    in_place, dry_run = r < 0.2, 0.2 <= r < 0.3
    argv = ["convert", str(src), "--kernel-dir", str(fz.kdir), "--kallsyms", str(fz.kallsyms)]
    argv += ["--in-place"] if in_place else ["-o", str(out)]
    if dry_run:
        argv.append("--dry-run")
    if fz.rng.random() < 0.1:
        argv.append("--json")
    if fz.rng.random() < 0.1:
        argv += ["--sympos", "fuzz_dup=2"]
    err = io.StringIO()
    # What a terminal would take: UTF-8, strictly (a stray surrogate fails)
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(err):
        rc = main(argv)
        stdout.flush()
    if dry_run and rc == 0:
        if out.exists() or src.read_bytes() != data:
            return [Finding("convert", "bad-output", "--dry-run wrote something", data)]
        return []
    dest = src if in_place else out
    left = [p.name for p in work.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    found: list[Finding] = []
    if left:
        found.append(Finding("convert", "leftover", f"temporary files left: {left}", data))
    if rc == 2:
        lines = err.getvalue().splitlines()
        if len(lines) != 1 or not lines[0].startswith("klpsym: error: "):
            found.append(Finding("convert", "bad-exit", f"exit 2 with stderr {lines!r}", data))
        if src.read_bytes() != data:
            found.append(Finding("convert", "input-changed", "the input changed on exit 2", data))
        if not in_place and out.exists():
            found.append(Finding("convert", "bad-output", "exit 2 but an output exists", data))
        return found
    if rc != 0:
        return [*found, Finding("convert", "bad-exit", f"exit {rc}: {err.getvalue()!r}", data)]
    if not in_place and src.read_bytes() != data:
        found.append(Finding("convert", "input-changed", "the input changed", data))
    written = dest.read_bytes()
    try:
        before_part, _ = split_signature(data, "input")
        after_part, _ = split_signature(written, "output")
        before = ElfFile.from_bytes(before_part, "input")
        after = ElfFile.from_bytes(after_part, "output")
        problems = (loader_problems(after, NAME_WIDTH) + relocation_changes(before, after)
                    + symbol_changes(before, after, NAME_WIDTH))
    except KlpsymError as e:
        problems = [f"the output does not read: {e}"]
    if problems:
        found.append(Finding("convert", "bad-output", "; ".join(problems[:3]), data))
    return found


Target = Callable[["Fuzzer", bytes], list[Finding]]
TARGETS: dict[str, Target] = {"reader": target_reader, "convert": target_convert}


# -- the loop -----------------------------------------------------------------------


class Fuzzer:
    def __init__(self, work: Path, *, seed: int = 0, timeout: float = 20.0,
                 seeds: list[bytes] | None = None, targets: list[str] | None = None) -> None:
        self.work = work / "run"
        self.work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("KLPSYM_SYMCACHE", str(work / "symcache"))  # not the user's
        self.rng = random.Random(seed)
        self.timeout = timeout
        self.seeds = seeds if seeds is not None else synthetic_seeds() + real_seeds()
        self.kdir, self.kallsyms = make_target(work, undefined_names(self.seeds))
        self.targets = {k: TARGETS[k] for k in (targets or list(TARGETS))}
        self.count = 0

    def inputs(self, n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield mutate(self.rng, self.rng.choice(self.seeds), self.seeds)

    def check(self, data: bytes) -> list[Finding]:
        """Run every target on ``data``; the findings."""
        found: list[Finding] = []
        for name, fn in self.targets.items():
            old = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, self.timeout)
            try:
                found += fn(self, data)
            except Hang:
                found.append(Finding(name, "hang", f"over {self.timeout} s", data))
            except Exception:
                found.append(Finding(name, "exception", traceback.format_exc(), data))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
        self.count += 1
        return found

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _alarm(signum: int, frame: object) -> None:
    raise Hang()
