"""Synthetic x86-64 kernel images with kallsyms tables, for the image reader.

:func:`kallsyms_tables` writes what scripts/kallsyms ``write_src()`` of a
given layout emits (table order, alignment, length encoding, address
encoding, seqs_of_names), from (address, type, name) rows in kallsyms order;
:func:`vmlinux` puts them into the .rodata part of a minimal ELF (one
PT_LOAD, a ``linux_banner``, a decoy digit run in the text before them);
:func:`bzimage` wraps that in a bzImage setup header with the payload
compressed as the kernel's Makefile.lib does (gzip, xz, lzma, bzip2, zstd,
lz4 legacy frames), the uncompressed size appended.

The token compression is not scripts/kallsyms' (it picks the most
profitable pairs, recursively); any table of fully expanded tokens in which
each used character stands for itself reads the same way, which is all the
reader relies on.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

TEXT_ADDR = 0xFFFFFFFF81000000
RODATA_ADDR = 0xFFFFFFFF82000000
SEG_OFFSET = 0x1000


@dataclass(frozen=True)
class Spec:
    """A kallsyms layout, as the builder writes it."""

    order: str  # "offsets-first" | "names-first"
    align: int
    pc_relative: bool
    big_lengths: bool
    seqs: bool
    abs_percpu: bool


LAYOUTS: dict[str, tuple[str, Spec]] = {
    # name: (a release of it, spec)
    "v5.8": ("5.10.209-synthetic", Spec("offsets-first", 8, False, False, False, True)),
    "v5.8-noabs": ("5.10.209-synthetic", Spec("offsets-first", 8, False, False, False, False)),
    "v6.1": ("6.1.99-synthetic", Spec("offsets-first", 8, False, True, False, True)),
    "v6.1-seqs": ("6.1.99-synthetic", Spec("offsets-first", 8, False, True, True, True)),
    "v6.2": ("6.2.16-synthetic", Spec("offsets-first", 8, False, True, True, True)),
    "v6.4": ("6.12.58-synthetic", Spec("names-first", 8, False, True, True, True)),
    "v6.4-noabs": ("6.16.1-synthetic", Spec("names-first", 8, False, True, True, False)),
    "v7.0": ("7.2.1-synthetic", Spec("names-first", 4, True, True, True, False)),
}

PERCPU_END = 0x30000


def sample_rows(n: int = 700, *, long_name: bool = True,
                abs_percpu: bool = True) -> list[tuple[int, str, str]]:
    """(address, type, name) in kallsyms order: per-cpu ``A`` symbols at
    small addresses first, then text and data, with duplicated names, every
    digit, and (``long_name``) a name whose compressed length needs two
    bytes (v6.1+).  Without ``abs_percpu`` the per-cpu symbols are ``D`` at
    their addresses in the image, as in 7.x."""
    pc = 0 if abs_percpu else RODATA_ADDR + 0x80000
    letter = "A" if abs_percpu else "D"
    rows: list[tuple[int, str, str]] = [(pc, letter, "fixed_percpu_data"),
                                         (pc + 0x1000, letter, "cpu_debug_store"),
                                         (pc + 0x2000, letter, "irq_stack_backing_store")]
    rows.append((TEXT_ADDR, "T", "_text"))
    rows.append((TEXT_ADDR, "T", "_stext"))
    addr = TEXT_ADDR + 0x10
    for i in range(n):
        kind = "t" if i % 3 else "T"
        name = f"func_{i:04d}_helper" if i % 7 else f"sym{i}0123456789"
        if i % 50 == 49:
            name = "duplicated_static"
        rows.append((addr, kind, name))
        addr += 0x10 + (i % 5) * 8
    rows.append((addr, "T", "_etext"))
    if long_name:
        # No two-character run of it repeats, so it stays longer than 0x7f
        # bytes compressed: its length takes two bytes (v6.1+).
        alphabet = [chr(c) for c in range(0x21, 0x7F)]
        text = "".join(alphabet[(7 * i) % 94] for i in range(94)) + \
            "".join(alphabet[(11 * i + 3) % 94] for i in range(60))
        rows.append((addr + 0x100, "T", text))
    rows.append((RODATA_ADDR + 0x40000, "D", "jiffies"))
    rows.append((RODATA_ADDR + 0x40100, "b", "some_bss"))
    return rows


def _tokens(entries: Sequence[bytes]) -> list[bytes]:
    """A token table: used bytes stand for themselves, unused codes get
    frequent substrings."""
    used = set()
    for e in entries:
        used.update(e)
    table: list[bytes] = [b""] * 256
    for c in used:
        table[c] = bytes([c])
    free = [c for c in range(1, 256) if c not in used]
    counts: Counter[bytes] = Counter()
    for e in entries:
        for ln in (2, 3, 5, 8):
            for i in range(0, len(e) - ln + 1, 1):
                counts[e[i: i + ln]] += 1
    best = [s for s, k in counts.most_common(len(free) * 2) if k > 1][: len(free)]
    for c, s in zip(free, best, strict=False):
        table[c] = s
    return table


def _compress(entry: bytes, table: list[bytes]) -> bytes:
    by_first: dict[int, list[tuple[bytes, int]]] = {}
    for code, s in enumerate(table):
        if s:
            by_first.setdefault(s[0], []).append((s, code))
    for lst in by_first.values():
        lst.sort(key=lambda x: -len(x[0]))
    out = bytearray()
    i = 0
    while i < len(entry):
        for s, code in by_first[entry[i]]:
            if entry.startswith(s, i):
                out.append(code)
                i += len(s)
                break
    return bytes(out)


class _Writer:
    def __init__(self, addr: int, align: int) -> None:
        self.buf = bytearray()
        self.addr = addr
        self.align = align
        self.longest = 0

    def here(self) -> int:
        return self.addr + len(self.buf)

    def balign(self, a: int | None = None) -> None:
        a = a or self.align
        while self.here() % a:
            self.buf.append(0)

    def put(self, data: bytes) -> int:
        at = len(self.buf)
        self.buf += data
        return at


def kallsyms_tables(rows: Sequence[tuple[int, str, str]], spec: Spec,
                    w: _Writer) -> None:
    """Append the tables for ``rows`` to ``w`` (see the module docstring)."""
    n = len(rows)
    entries = [(t + name).encode() for _, t, name in rows]
    table = _tokens(entries)
    comp = [_compress(e, table) for e in entries]
    w.longest = max(len(c) for c in comp)
    names = bytearray()
    markers = []
    for i, c in enumerate(comp):
        if i % 256 == 0:
            markers.append(len(names))
        ln = len(c)
        if ln > 0x7F:
            assert spec.big_lengths, "a name too long for a one-byte length"
            names += bytes([(ln & 0x7F) | 0x80, ln >> 7])
        else:
            names.append(ln)
        names += c
    tok_blob = bytearray()
    tok_index = []
    for s in table:
        tok_index.append(len(tok_blob))
        tok_blob += s + b"\0"
    order = sorted(range(n), key=lambda i: (rows[i][2], rows[i][0], i))
    seqs = b"".join(i.to_bytes(3, "big") for i in order)
    addrs = [a for a, _, _ in rows]
    percpu = [spec.abs_percpu and a < PERCPU_END for a in addrs]
    rb = min(a for a, p in zip(addrs, percpu, strict=True) if not p)

    def offsets(at: int) -> bytes:
        out = bytearray()
        for i, a in enumerate(addrs):
            if spec.pc_relative:
                out += struct.pack("<i", a - (at + 4 * i))
            elif not spec.abs_percpu:
                out += struct.pack("<I", a - rb)
            elif percpu[i]:
                out += struct.pack("<i", a)
            else:
                out += struct.pack("<i", rb - a - 1)
        return bytes(out)

    def num_names_markers() -> None:
        w.balign()
        w.put(struct.pack("<I", n))
        w.balign()
        w.put(bytes(names))
        w.balign()
        w.put(b"".join(struct.pack("<I", m) for m in markers))

    def tokens() -> None:
        w.balign()
        w.put(bytes(tok_blob))
        w.balign()
        w.put(b"".join(struct.pack("<H", t) for t in tok_index))

    if spec.order == "offsets-first":
        w.balign()
        w.put(offsets(w.here()))
        w.balign()
        w.put(struct.pack("<Q", rb))
        num_names_markers()
        if spec.seqs:
            w.balign()
            w.put(seqs)
        tokens()
    else:
        num_names_markers()
        tokens()
        w.balign()
        w.put(offsets(w.here()))
        if not spec.pc_relative:
            w.balign()
            w.put(struct.pack("<Q", rb))
        w.balign()
        w.put(seqs)


DECOY = b"".join(bytes([c, 0]) for c in b"0123456789")


def vmlinux(release: str, rows: Sequence[tuple[int, str, str]], spec: Spec, *,
            machine: int = 62, tables: bool = True, stats: dict[str, int] | None = None) -> bytes:
    """A minimal x86-64 vmlinux ELF (no section table) holding the tables;
    ``stats`` gets the longest compressed entry ("longest")."""
    seg = _Writer(TEXT_ADDR, spec.align)
    seg.put(b"\x90" * 0x200 + DECOY + b"\xcc" * 0x100)  # a digit run that is no token table
    # .rodata: a banner, some strings, the tables
    seg.balign(4096)
    seg.put(f"Linux version {release} (builder@klpsym) #1 SMP\n\0".encode())
    seg.put(b"%s version %s\0" + DECOY + b"\x07" * 37)
    if tables:
        kallsyms_tables(rows, spec, seg)
    if stats is not None:
        stats["longest"] = seg.longest
    seg.put(b"\0" * 64 + b"after the tables" + b"\0" * 4096)
    body = bytes(seg.buf)
    ehdr = bytearray(64)
    ehdr[:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
    struct.pack_into("<HHIQQQIHHHHHH", ehdr, 16, 2, machine, 1, TEXT_ADDR, 64, 0, 0, 64, 56,
                     1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, SEG_OFFSET, TEXT_ADDR, TEXT_ADDR - 0xFFFFFFFF80000000,
                       len(body), len(body), 0x1000)
    head = bytes(ehdr) + phdr
    return head + bytes(SEG_OFFSET - len(head)) + body


def compress(kind: str, data: bytes) -> bytes:
    """``data`` compressed as the kernel's build does, size appended."""
    size = struct.pack("<I", len(data) & 0xFFFFFFFF)
    if kind == "gzip":
        out = gzip.compress(data, 9)
    elif kind == "xz":  # scripts/xz_wrap.sh for x86: --check=crc32 --x86 --lzma2
        out = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                            filters=[{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2}])
    elif kind == "lzma":
        out = lzma.compress(data, format=lzma.FORMAT_ALONE)
    elif kind == "bzip2":
        out = bz2.compress(data, 9)
    elif kind == "zstd":
        import zstandard

        out = zstandard.ZstdCompressor(level=19).compress(data)
    elif kind == "lz4":
        import lz4.block  # type: ignore[import-untyped]

        parts = [b"\x02\x21\x4c\x18"]
        block = 8 << 20
        for i in range(0, len(data), block):
            c = lz4.block.compress(data[i: i + block], store_size=False, mode="high_compression")
            parts.append(struct.pack("<I", len(c)) + c)
        out = b"".join(parts)
    else:
        raise ValueError(kind)
    return out + size


def bzimage(payload: bytes) -> bytes:
    """A bzImage: boot sector, setup header (protocol 2.15), one setup
    sector, the protected-mode part holding ``payload`` at payload_offset."""
    setup = bytearray(2 * 512)
    setup[0x1F1] = 1  # setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    pm = bytearray(b"\xe8decompressor stub" + bytes(0x200))
    offset = len(pm)
    struct.pack_into("<II", setup, 0x248, offset, len(payload))
    return bytes(setup) + bytes(pm) + payload + bytes(64)
