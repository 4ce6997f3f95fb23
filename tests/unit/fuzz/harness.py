"""A mutational fuzzer for klpsym's module reader and its commands.

Inputs are seeds (small real Debian modules from the lab cache when it has
them, synthetic objects from ``tests/elfbuilder.py``, and some of both
converted once) changed by 1-4 mutations: bit flips, interesting integers
at random places and in ELF fields (header, section headers, symbols,
relocations), truncation, insertion, splicing, a fake signature trailer;
now and then the result is compressed (gzip, xz, zstd), sometimes then
damaged.  Structure-aware mutations reach the code behind the header
checks, which random bytes rarely do.

Every input goes to every target (an entry point; add one to ``TARGETS``),
each in this process with a time limit:

* ``reader``: parse the ELF part and every table, read .modinfo, write it
  back; the written bytes must read again.
* ``convert``: ``klpsym convert`` through ``klpsym.cli.main.main()`` against
  a small made-up target kernel (its own Module.symvers, kallsyms,
  .config), with ``-o`` or ``--in-place``.  It must return 0 or 2 (not
  70, klpsym's exit code for a bug it found in its own work: an
  InternalError); on 2, stderr is one ``klpsym: error:`` line and nothing
  was written; on 0 the output re-reads, passes the loader
  rules, has the input's relocations and symbols (klpsym's validators,
  run again here) and the load-time guard where it has livepatch symbols;
  the input is unchanged unless converted in place; no temporary file.
* ``inspect``: ``klpsym inspect`` (summary, every view, one view alone;
  text or --json): exit 0 or 2, one error line naming the file, JSON
  that parses, text without unprintable characters.
* ``check``: ``klpsym check FILE`` (and now and then ``check DIR``) against
  a made-up kernel with the seeds' CRCs: exit 0, 1 or 2 as the verdicts
  say, one verdict per file, an error verdict naming the file.
* ``facts``: ``klpsym.load.facts.module_facts`` with ``fast=True`` (check's
  reader, load.fastread) and ``fast=False`` (the general ELF
  reader): both return, agree on whether the file reads, and give equal
  facts where both read it.

Anything else (an exception that is not a KlpsymError turned into exit 2, a
run over the time limit, a bad output) is a finding.  Runs are
deterministic for a given seed.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import io
import json
import lzma
import os
import random
import re
import shutil
import signal
import struct
import sys
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1]
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
    SYNTH_RELEASE,
    ElfBuilder,
    simple_module,
)
from klpsym.cli.main import EXIT_BUG  # noqa: E402
from klpsym.elf import ElfFile  # noqa: E402
from klpsym.errors import KlpsymError  # noqa: E402
from klpsym.fsutil import TEMP_SUFFIX  # noqa: E402
from klpsym.module.compression import decompress  # noqa: E402
from klpsym.module.modinfo import read_modinfo  # noqa: E402
from klpsym.module.signature import MODULE_SIG_STRING, split_signature  # noqa: E402
from klpsym.module.versions import read_versions  # noqa: E402

# The made-up kernels' release: a synthetic one (the corpus's modules carry it
# too), so that nothing here depends on which Debian kernel the lab has.
RELEASE = SYNTH_RELEASE
CORPUS = HERE / "corpus"
NAME_WIDTH = 511  # KSYM_NAME_LEN - 1 of 6.1


class Hang(BaseException):
    """Raised by the per-input timer (a BaseException: no handler in klpsym
    may swallow it)."""


@dataclass
class Finding:
    target: str
    # "exception", "hang", "internal-error", "bad-exit", "bad-output", "input-changed",
    # "leftover"
    kind: str
    detail: str
    data: bytes = field(repr=False, default=b"")

    def signature(self) -> str:
        """What makes two findings the same bug (for de-duplication)."""
        last = self.detail.strip().splitlines()[-1] if self.detail.strip() else ""
        where = [ln for ln in self.detail.splitlines() if ln.strip().startswith("File ")]
        # what varies between inputs with the same bug: paths, numbers
        last = re.sub(r"0x[0-9a-f]+|\d+", "N", re.sub(r"\S*/\S+", "PATH", last))
        return f"{self.target}:{self.kind}:{where[-1].strip() if where else ''}:{last[:200]}"


# -- seeds ------------------------------------------------------------------------


def real_seeds(limit: int = 40, max_size: int = 24_000) -> list[bytes]:
    """Small modules of the newest bookworm kernel in the lab cache, whatever its
    release (none if the cache has none; nothing is downloaded), their vermagic
    made the made-up kernels' (``with_release``), so that they reach as deep."""
    root = Path(os.environ.get("KLPSYM_CACHE") or Path.home() / ".cache" / "klpsym")
    homes = sorted((h for h in root.glob("kernels-v*/bookworm/*") if (h / "complete").is_file()),
                   key=lambda h: (h / "complete").stat().st_mtime, reverse=True)
    found: list[Path] = []
    for home in homes:
        found = sorted((p for p in home.glob("root/lib/modules/*/kernel/**/*.ko")
                        if p.stat().st_size <= max_size),
                       key=lambda p: (p.stat().st_size, p.name))
        if found:
            break
    # every k-th, so sizes and kinds vary
    step = max(1, len(found) // limit) if found else 1
    seeds = (with_release(p.read_bytes(), RELEASE) for p in found[::step][:limit])
    return [s for s in seeds if s is not None]


def with_release(data: bytes, release: str) -> bytes | None:
    """``data`` with the release in its vermagic replaced by ``release`` in place
    (NUL-padded when shorter; .modinfo readers skip NULs between entries), or
    None where it would not fit or there is no vermagic."""
    start = data.find(b"\0vermagic=")
    if start < 0:
        return None
    start += len(b"\0vermagic=")
    end = data.find(b"\0", start)
    old = data[start:end]
    old_release, sep, rest = old.partition(b" ")
    new = release.encode() + sep + rest
    if end < 0 or len(new) > len(old):
        return None
    return data[:start] + new + bytes(len(old) - len(new)) + data[end:]


def modpost_seed(unexported: tuple[str, ...], exported: tuple[str, ...], name: str) -> bytes:
    """A seed as modpost links a module: __versions (each exported name, CRCs
    made up here and given to the check kernel through ``seed_crcs``; the
    corpus's real CRCs of module_layout and _printk are the check kernel's, so
    the seeds name neither: a missing entry only warns, kernel/module/version.c)
    and .gnu.linkonce.this_module, so that ``check`` can find it loadable
    without the lab's real modules."""
    b = simple_module(unexported, exported)
    b.versions({n: 0x1000 + i for i, n in enumerate(exported)})
    b.this_module(name)
    return b.build()


def synthetic_seeds() -> list[bytes]:
    out = [
        simple_module().build(),
        simple_module(("kallsyms_lookup_name", "show_state_filter", "fuzz_data_sym"),
                      ("_printk", "fuzz_exported")).build(),
        simple_module((), ("_printk",)).build(),
        simple_module(("fuzz_dup",)).build(),
        simple_module(("kallsyms_lookup_name",), big_endian=True).build(),
        simple_module(("kallsyms_lookup_name", "show_state_filter", "fuzz_data_sym"),
                      big_endian=True).build(),
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
    out += [modpost_seed((), ("fuzz_exported",), "fuzz_plain"),
            modpost_seed(("kallsyms_lookup_name",), ("fuzz_exported",), "fuzz_klp")]
    signed = simple_module().build()
    sig = b"\x30" * 40
    info = bytes([0, 0, 2, 0, 0, 0, 0, 0]) + struct.pack(">I", len(sig))
    out.append(signed + sig + info + MODULE_SIG_STRING)
    return out


# -- the made-up target kernel ------------------------------------------------------

# What Debian's 6.1 vermagic says ("SMP preempt mod_unload modversions "), so
# that check's vermagic step passes the seeds and reaches the symbols.
CONFIG = ("CONFIG_X86_64=y\nCONFIG_SMP=y\nCONFIG_PREEMPT_BUILD=y\nCONFIG_MODULE_UNLOAD=y\n"
          "CONFIG_MODVERSIONS=y\nCONFIG_MODULE_SIG=y\nCONFIG_LIVEPATCH=y\n"
          "CONFIG_KALLSYMS_ALL=y\nCONFIG_MODULES=y\n")


def plausible(name: str) -> bool:
    """A name a kernel could export (the made-up kernels leave corrupt
    ones out, as a real kernel would not have them)."""
    return bool(name) and name.isascii() and name.isprintable() and " " not in name


def undefined_names(seeds: list[bytes]) -> set[str]:
    names: set[str] = set()
    for data in seeds:
        try:
            elf_part, _ = split_signature(data, "seed")
            st = ElfFile.from_bytes(elf_part).symtab
            names |= {n for n in (st.name(int(i)) for i in st.undefined()) if plausible(n)}
        except KlpsymError:
            pass
    return names


def seed_crcs(seeds: list[bytes]) -> dict[str, int]:
    """The CRCs the seeds' __versions record, by name."""
    crcs: dict[str, int] = {}
    for data in seeds:
        try:
            elf_part, _ = split_signature(data, "seed")
            crcs.update((e.name, e.crc) for e in read_versions(ElfFile.from_bytes(elf_part))
                        .entries if plausible(e.name))
        except KlpsymError:
            pass
    return crcs


def make_check_target(where: Path, names: set[str], crcs: dict[str, int]) -> Path:
    """A second kernel dir for ``klpsym check`` (same release and .config
    as :func:`make_target`'s): almost every name the seeds use is exported,
    with the seeds' own CRC, so unchanged seeds would load and a mutation
    has something to break.  Some exports are GPL-only, some in a
    namespace, some of a module (check: "loads after"); a few CRCs differ
    and a few names are not exported (only in kallsyms)."""
    kdir = where / "kdir-check"
    (kdir / "include" / "config").mkdir(parents=True, exist_ok=True)
    (kdir / "include" / "config" / "kernel.release").write_text(RELEASE + "\n")
    (kdir / ".config").write_text(CONFIG)
    rng = random.Random(8)
    lines = []
    always = {"module_layout", "klp_enable_patch"}
    for n in sorted(names | set(crcs) | {"_printk", "fuzz_exported"} | always):
        r = rng.random()
        if r < 0.01 and n not in always:
            continue  # not exported
        crc = crcs.get(n, rng.getrandbits(32))
        if rng.random() < 0.01:
            crc ^= 1 << rng.randrange(32)
        owner = "kernel/fuzz/fuzzdep" if 0.01 <= r < 0.11 and n not in always else "vmlinux"
        kind = "EXPORT_SYMBOL_GPL" if rng.random() < 0.3 else "EXPORT_SYMBOL"
        ns = "FUZZ_NS" if rng.random() < 0.01 else ""
        lines.append(f"0x{crc:08x}\t{n}\t{owner}\t{kind}\t{ns}\n")
    (kdir / "Module.symvers").write_text("".join(lines))
    return kdir


def make_target(where: Path, names: set[str]) -> tuple[Path, Path]:
    """A kernel dir (release, .config, Module.symvers) and a kallsyms file.
    About two thirds of ``names`` are exported; the rest are only in
    kallsyms, so they convert; ``fuzz_dup`` is there twice."""
    kdir = where / "kdir"
    (kdir / "include" / "config").mkdir(parents=True, exist_ok=True)
    (kdir / "include" / "config" / "kernel.release").write_text(RELEASE + "\n")
    (kdir / ".config").write_text(CONFIG)
    rng = random.Random(7)
    ordered = sorted(names | {"_printk", "fuzz_exported", "kallsyms_lookup_name",
                              "show_state_filter", "fuzz_data_sym", "fuzz_dup"})
    # klp_enable_patch: what the load-time guard convert adds refers to
    exported = {n for n in ordered if rng.random() < 0.66} | {"_printk", "fuzz_exported",
                                                                 "klp_enable_patch"}
    exported -= {"kallsyms_lookup_name", "show_state_filter", "fuzz_data_sym", "fuzz_dup"}
    (kdir / "Module.symvers").write_text("".join(
        f"0x{i:08x}\t{n}\tvmlinux\tEXPORT_SYMBOL_GPL\t\n" for i, n in enumerate(sorted(exported))))
    # A kernel that exports more (half of what the first one does not): a
    # module converted for it has more to convert for the first one.
    rest = sorted(set(ordered) - exported - {"kallsyms_lookup_name", "fuzz_dup"})
    partial = where / "kdir-partial"
    shutil.copytree(kdir, partial)
    (partial / "Module.symvers").write_text("".join(
        f"0x{i:08x}\t{n}\tvmlinux\tEXPORT_SYMBOL_GPL\t\n"
        for i, n in enumerate(sorted(exported | set(rest[::2]) | {"show_state_filter",
                                                                  "fuzz_data_sym"}))))
    lines = [f"ffffffff81{i:05x}0 {'D' if n.endswith('_data_sym') else 'T'} {n}"
             for i, n in enumerate(ordered)]
    lines.append("ffffffff82000000 t fuzz_dup")
    ks = where / "kallsyms"
    ks.write_text("\n".join(lines) + "\n")
    return kdir, ks


def converted_seeds(where: Path, seeds: list[bytes], kallsyms: Path) -> list[bytes]:
    """Some seeds converted for the kernel in ``where/kdir-partial``: inputs
    with livepatch symbols and .klp.rela sections (for inspect --klp,
    check's livepatch step, and convert again with more to convert)."""
    from klpsym.kernel.target import discover
    from klpsym.klp.convert import convert_file

    target = discover(kernel_dir=where / "kdir-partial", kallsyms=kallsyms)
    out = []
    for i, data in enumerate(seeds):
        src, dest = where / f"seed{i}.ko", where / f"seed{i}.klp.ko"
        src.write_bytes(data)
        try:
            convert_file(src, target, {"fuzz_dup": 1} if i == 3 else {}, output=dest)
            if dest.exists() and dest.read_bytes() != data:
                out.append(dest.read_bytes())
        except KlpsymError:
            pass
        src.unlink()
        dest.unlink(missing_ok=True)
    return out


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
    if rng.random() < 0.04:  # a compressed module (.ko.xz, .ko.zst, .ko.gz are read as such)
        data = bytearray(compress(rng, bytes(data)))
        if rng.random() < 0.25:  # and a damaged stream
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def compress(rng: random.Random, data: bytes) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return gzip.compress(data, 1)
    if kind == 1:
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=0)
    import zstandard

    return bytes(zstandard.ZstdCompressor(level=1,
                                          write_content_size=rng.random() < 0.5).compress(data))


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
    from klpsym.elf.constants import SHN
    from klpsym.klp.guard import GUARD_SYMBOL, guard_index
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
    no_guard = fz.rng.random() < 0.1
    if no_guard:
        argv.append("--no-guard")
    err = io.StringIO()
    # What a terminal would take: UTF-8, strictly (a stray surrogate fails)
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(err):
        rc = main(argv)
        stdout.flush()
    fz.outcomes[f"convert exit {rc}"] += 1
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
    if rc == EXIT_BUG:  # an InternalError: a check of klpsym's own work failed
        return [*found, Finding("convert", "internal-error", err.getvalue(), data)]
    if rc != 0:
        return [*found, Finding("convert", "bad-exit", f"exit {rc}: {err.getvalue()!r}", data)]
    if not in_place and src.read_bytes() != data:
        found.append(Finding("convert", "input-changed", "the input changed", data))
    written = dest.read_bytes()
    try:
        before_part, _ = split_signature(decompress(data, "input")[0], "input")
        after_part, _ = split_signature(written, "output")
        before = ElfFile.from_bytes(before_part, "input")
        after = ElfFile.from_bytes(after_part, "output")
        # The load-time guard (klp.guard): one undefined klp_enable_patch
        # appended, which an output with livepatch symbols must have
        # unless --no-guard
        guarded = guard_index(before) is None and guard_index(after) is not None
        problems = (loader_problems(after, NAME_WIDTH) + relocation_changes(before, after)
                    + symbol_changes(before, after, NAME_WIDTH,
                                     (GUARD_SYMBOL,) if guarded else ()))
        if (not no_guard and guard_index(after) is None
                and len(after.symtab.special(SHN.LIVEPATCH))):
            problems.append("livepatch symbols but no load-time guard")
    except KlpsymError as e:
        problems = [f"the output does not read: {e}"]
    if problems:
        found.append(Finding("convert", "bad-output", "; ".join(problems[:3]), data))
    return found


class _Terminal(io.TextIOWrapper):
    """A standard output that says it is a terminal (a dumb one: TERM=dumb
    while it is used, so rich writes no escape sequences)."""

    def isatty(self) -> bool:
        return True


def run_main(argv: list[str], tty: bool = False) -> tuple[int, str, str]:
    """``klpsym ARGV`` in this process: (exit status, stdout, stderr).  The
    standard output takes what a terminal or a pipe would: UTF-8, strictly
    (a stray surrogate fails); ``tty``: it is a terminal."""
    from klpsym.cli.main import main

    err = io.StringIO()
    raw = io.BytesIO()
    stdout = (_Terminal if tty else io.TextIOWrapper)(raw, encoding="utf-8", errors="strict")
    term = os.environ.get("TERM")
    if tty:
        os.environ["TERM"] = "dumb"
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(err):
            rc = main(argv)
            stdout.flush()
    finally:
        if tty and term is None:
            del os.environ["TERM"]
        elif tty and term is not None:
            os.environ["TERM"] = term
    return rc, raw.getvalue().decode("utf-8"), err.getvalue()


def unprintable(text: str) -> str | None:
    """The first line of ``text`` with a character a terminal does not show
    as itself (a control character, an escape, an invisible separator):
    names read from a file must be printed escaped.  Tabs are columns."""
    for line in text.split("\n"):
        if not line.replace("\t", " ").isprintable():
            return repr(line[:300])
    return None


def error_line(err: str, names: list[str]) -> str | None:
    """What is wrong with ``err`` as klpsym's answer to bad input: exactly
    one ``klpsym: error:`` line, naming one of ``names`` (None: fine)."""
    lines = err.splitlines()
    if len(lines) != 1 or not lines[0].startswith("klpsym: error: "):
        return f"stderr is not one klpsym: error: line: {lines[:3]!r}"
    if not any(n in lines[0] for n in names):
        return f"the error does not name the file: {lines[0]!r}"
    return None


def fresh_input(fz: Fuzzer, data: bytes, name: str = "in.ko") -> Path:
    """An empty work directory holding ``data`` as ``name``."""
    for p in fz.work.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    src = fz.work / name
    src.write_bytes(data)
    return src


# klpsym inspect's views, and the JSON key of each
INSPECT_VIEWS = {"--header": "header", "--sections": "sections", "--symbols": "symbols",
                 "--relocs": "relocations", "--modinfo": "modinfo", "--exports": "exports",
                 "--versions": "versions", "--klp": "klp", "--signature": "signature"}
SECTION_NAMES = [".text", ".rela.text", ".data", ".rela.data", ".modinfo", ".strtab",
                 ".shstrtab", ".symtab", "__ksymtab_strings", "__ksymtab", "__versions",
                 ".bss", ".gnu.linkonce.this_module", ".klp.rela.vmlinux.text",
                 ".klp.rela.vmlinux..text", ".rela.klp", ".nosuch", ""]


def target_inspect(fz: Fuzzer, data: bytes) -> list[Finding]:
    """``klpsym inspect FILE``: the summary, every view at once, and one
    view alone (--relocs and --strings of a section), each with or without
    --json.  Exit 0 or 2; on 2 one ``klpsym: error:`` line naming the file
    and nothing on stdout; on 0 nothing on stderr, JSON that parses with
    the views asked for, or text without unprintable characters; the input
    untouched."""
    rng = fz.rng
    src = fresh_input(fz, data)
    one = rng.choice([*INSPECT_VIEWS, "--relocs SEC", "--strings SEC"])
    if one.endswith(" SEC"):
        one_argv = [one.split()[0], rng.choice(SECTION_NAMES)]
        if one_argv[0] == "--strings" and not one_argv[1]:
            one_argv[1] = ".modinfo"
    else:
        one_argv = [one]
    found: list[Finding] = []
    for views in ([], list(INSPECT_VIEWS), one_argv):
        as_json = rng.random() < 0.5
        argv = ["inspect", str(src), *views] + (["--json"] if as_json else [])
        rc, out, err = run_main(argv)
        fz.outcomes[f"inspect exit {rc}"] += 1
        what = f"{' '.join(argv[2:]) or '(summary)'}: "
        if rc == 2:
            bad = error_line(err, [src.name])
            if bad:
                found.append(Finding("inspect", "bad-exit", what + bad, data))
            if out and not (as_json and json_error(out)):
                found.append(Finding("inspect", "bad-output",
                                     what + f"exit 2 after printing {out[:200]!r}", data))
        elif rc == EXIT_BUG:
            found.append(Finding("inspect", "internal-error", what + err, data))
        elif rc != 0:
            found.append(Finding("inspect", "bad-exit", what + f"exit {rc}: {err!r}", data))
        else:
            if err:
                found.append(Finding("inspect", "bad-output", what + f"stderr {err[:300]!r}",
                                     data))
            if as_json:
                want = {"schema", "module"} | ({INSPECT_VIEWS.get(v, "strings") for v in views
                                     if v.startswith("--")} if views else {"summary"})
                try:
                    keys = set(json.loads(out))
                    if keys != want:
                        found.append(Finding("inspect", "bad-output",
                                             what + f"JSON keys {sorted(keys)}", data))
                except (ValueError, TypeError) as e:
                    found.append(Finding("inspect", "bad-output",
                                         what + f"JSON does not parse: {e}", data))
            else:
                line = unprintable(out)
                if line:
                    found.append(Finding("inspect", "bad-output",
                                         what + f"unprintable output line {line}", data))
    if src.read_bytes() != data:
        found.append(Finding("inspect", "input-changed", "the input changed", data))
    return found


def json_error(out: str) -> bool:
    """Whether ``out`` is --json's error object (docs/json.md), which a
    refused run prints on stdout besides its error line."""
    try:
        doc = json.loads(out)
    except ValueError:
        return False
    return (isinstance(doc, dict) and set(doc) == {"schema", "error"}
            and isinstance(doc["error"], dict) and doc["error"].get("exit") == 2
            and isinstance(doc["error"].get("message"), str))


def check_report(rc: int, out: str, err: str, paths: list[Path],
                 as_json: bool) -> list[tuple[str, str]]:
    """What is wrong with ``klpsym check``'s answer for ``paths``:
    (kind, detail) pairs.  Exit 0, 1 or 2; either one error line naming a
    file (exit 2, no report) or a report with one verdict per file whose
    exit status follows from the verdicts (2 if one is "error", 0 if all
    would load, else 1); JSON that parses; text without unprintable
    characters."""
    if rc == EXIT_BUG:
        return [("internal-error", err[:300])]
    if rc not in (0, 1, 2):
        return [("bad-exit", f"exit {rc}: {err[:300]!r}")]
    if err:
        bad = error_line(err, [p.name for p in paths])
        if rc != 2 or bad:
            return [("bad-exit", f"exit {rc} and {bad or 'an error line'}")]
        if out and not (as_json and json_error(out)):
            return [("bad-output", f"an error line and a report: {out[:200]!r}")]
        return []
    names = [str(p) for p in paths]
    if as_json:
        try:
            report = json.loads(out)
            mods = report["modules"]
            verdicts = [m["verdict"] for m in mods]
            paths_seen = sorted(m["path"] for m in mods)
            would = [m["would_load"] for m in mods]
            status = report["exit_status"]
        except (ValueError, TypeError, KeyError) as e:
            return [("bad-output", f"the JSON report does not parse: {e!r} in {out[:300]!r}")]
        if paths_seen != sorted(names):
            return [("bad-output", f"verdicts for {paths_seen}, not for {sorted(names)}")]
        if any(w != (v in ("loads", "loads-after")) for v, w in zip(verdicts, would,
                                                                     strict=True)):
            return [("bad-output", f"would_load {would} for verdicts {verdicts}")]
        for m in mods:
            if m["verdict"] == "error" and not any(
                    Path(m["path"]).name in p["message"] for p in m["problems"]):
                return [("bad-output", f"an error verdict that does not name the file: {m}")]
        counts: dict[str, int] = {}
        for v in verdicts:
            counts[v] = counts.get(v, 0) + 1
        if status != rc:
            return [("bad-output", f"exit {rc}, but the JSON says {status}")]
    else:
        line = unprintable(out)
        if line:
            return [("bad-output", f"unprintable output line {line}")]
        lines = out.splitlines()
        counts = {}
        try:
            for part in lines[-1].split(", "):
                n, v = part.split(" ")
                counts[v] = counts.get(v, 0) + int(n)
        except (ValueError, IndexError):
            return [("bad-output", f"no verdict counts at the end: {out[-300:]!r}")]
        if not lines[0].startswith("target ") or sum(counts.values()) != len(paths):
            return [("bad-output", f"not a report on {len(paths)} modules: {out[:300]!r}")]
    if not set(counts) <= {"loads", "loads-after", "fails", "error"}:
        return [("bad-output", f"verdicts {counts}")]
    expect = 2 if "error" in counts else 0 if set(counts) <= {"loads", "loads-after"} else 1
    if rc != expect:
        return [("bad-exit", f"exit {rc} for the verdicts {counts}")]
    return []


def target_check(fz: Fuzzer, data: bytes) -> list[Finding]:
    """``klpsym check FILE`` against one of the made-up kernels (with or
    without kallsyms, --json, -v): see :func:`check_report`; the input
    untouched.  Now and then, ``klpsym check DIR`` on this input, the last
    few and a seed, read in this process (and, rarely, 17 and more modules
    with -j 2: the batch read in worker processes)."""
    rng = fz.rng
    src = fresh_input(fz, data)
    fz.recent.append(data)
    argv = ["check", str(src)]
    many = False
    found: list[Finding] = []
    for batch in (False, True):
        if batch:
            if rng.random() >= fz.batch_rate:
                break
            many = rng.random() < 0.1
            bdir = fz.work / "batch"
            bdir.mkdir()
            inputs = list(fz.recent) * (6 if many else 1)
            inputs.append(rng.choice(fz.seeds))
            for i, d in enumerate(inputs):
                (bdir / f"m{i:02}.ko").write_bytes(d)
            argv = ["check", str(bdir), "-j", "2" if many else "1"]
        kdir = fz.check_kdir if rng.random() < 0.7 else fz.kdir
        argv += ["--kernel-dir", str(kdir)]
        if rng.random() < 0.5:
            argv += ["--kallsyms", str(fz.kallsyms)]
        as_json = rng.random() < 0.5
        if as_json:
            argv.append("--json")
        if rng.random() < 0.3:
            argv.append("-v")
        tty = not as_json and rng.random() < 0.25  # the report through rich
        try:
            rc, out, err = run_main(argv, tty)
        finally:
            # check freezes what it made (for its own process's exit); here
            # the next input follows, so let the collector see it again
            gc.unfreeze()
        paths = sorted(bdir.iterdir()) if batch else [src]
        fz.outcomes[f"check{(' DIR -j 2' if many else ' DIR') if batch else ''} exit {rc}"] += 1
        where = " ".join(a.replace(str(fz.work.parent), "") for a in argv[1:])
        where += " (a terminal): " if tty else ": "
        found += [Finding("check", kind, where + detail, data)
                  for kind, detail in check_report(rc, out, err, paths, as_json)]
    if src.read_bytes() != data:
        found.append(Finding("check", "input-changed", "the input changed", data))
    return found


def target_facts(fz: Fuzzer, data: bytes) -> list[Finding]:
    """What check reads of a module, through its public entry point
    ``klpsym.load.facts.module_facts``: the fast reader (``fast=True``,
    load.fastread) and the general ELF reader (``fast=False``) must
    both return (bad input is recorded in ``error``, not raised), agree on
    whether the file reads, and, where both read it, give equal facts."""
    import dataclasses

    from klpsym.load.facts import module_facts

    src = fresh_input(fz, data)
    fast = module_facts(src, fast=True)
    general = module_facts(src, fast=False)
    fz.outcomes["facts " + ("unreadable" if general.error else "read")] += 1
    if (fast.error is None) != (general.error is None):
        return [Finding("facts", "facts-differ", f"fast reader: {fast.error or 'read'}; "
                        f"general reader: {general.error or 'read'}", data)]
    if fast.error is None and fast != general:
        fields = [f.name for f in dataclasses.fields(fast)
                  if getattr(fast, f.name) != getattr(general, f.name)]
        first = fields[0] if fields else ""
        return [Finding("facts", "facts-differ", f"the readers' facts differ in {fields}; "
                        f"{first}: fast {getattr(fast, first, None)!r:.300} general "
                        f"{getattr(general, first, None)!r:.300}", data)]
    return []


Target = Callable[["Fuzzer", bytes], list[Finding]]
TARGETS: dict[str, Target] = {"reader": target_reader, "convert": target_convert,
                              "inspect": target_inspect, "check": target_check,
                              "facts": target_facts}


# -- the loop -----------------------------------------------------------------------


class Fuzzer:
    def __init__(self, work: Path, *, seed: int = 0, timeout: float = 20.0,
                 seeds: list[bytes] | None = None, targets: list[str] | None = None,
                 real: bool = True) -> None:
        """``real``: add the lab cache's small bookworm modules to the seeds, when
        there are any (the long runs; pytest's runs keep to synthetic seeds, so
        they do not depend on what the cache holds)."""
        self.work = work / "run"
        self.work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("KLPSYM_SYMCACHE", str(work / "symcache"))  # not the user's
        self.rng = random.Random(seed)
        self.timeout = timeout
        made = seeds is None
        self.seeds = seeds if seeds is not None else (
            synthetic_seeds() + (real_seeds() if real else []))
        # The corpus's names too: its inputs meet the same kernels whether
        # or not the lab's cache gave real seeds
        corpus = [p.read_bytes() for p in sorted(CORPUS.glob("*.ko"))]
        names = undefined_names(self.seeds + corpus)
        self.kdir, self.kallsyms = make_target(work, names)
        self.check_kdir = make_check_target(work, names, seed_crcs(self.seeds + corpus))
        if made:
            synthetic = synthetic_seeds()
            self.seeds += converted_seeds(work, synthetic + self.seeds[len(synthetic)::8],
                                          self.kallsyms)
        self.recent: deque[bytes] = deque(maxlen=3)  # the last inputs, for check DIR
        _assert_target_reads(self.kdir, self.check_kdir, self.kallsyms)
        self.batch_rate = 0.03  # how often check also reads a directory of modules
        self.targets = {k: TARGETS[k] for k in (targets or list(TARGETS))}
        self.count = 0
        # how far inputs got, per target ("check loads", "inspect exit 2", ...)
        self.outcomes: Counter[str] = Counter()

    def inputs(self, n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield mutate(self.rng, self.rng.choice(self.seeds), self.seeds)

    def check(self, data: bytes, only: str | None = None) -> list[Finding]:
        """Run every target (or ``only`` that one) on ``data``; the findings."""
        found: list[Finding] = []
        for name, fn in self.targets.items():
            if only is not None and name != only:
                continue
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


def _assert_target_reads(kdir: Path, check_kdir: Path, kallsyms: Path) -> None:
    """The made-up kernels must read (else every input would only meet
    klpsym's error about them, and reach nothing)."""
    from klpsym.kernel.target import discover
    from klpsym.kernel.vermagic import expected_vermagic

    for d in (kdir, check_kdir):
        t = discover(kernel_dir=d, kallsyms=kallsyms)
        assert t.symvers.exports and len(t.kallsyms) and t.livepatch_enabled, d
        assert expected_vermagic(t.version, t.config) == (
            f"{RELEASE} SMP preempt mod_unload modversions ",), d


def _alarm(signum: int, frame: object) -> None:
    raise Hang()
