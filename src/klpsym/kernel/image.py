"""vmlinux's kallsyms read out of the kernel image itself (vmlinuz, bzImage,
or an uncompressed vmlinux without a symbol table).

The kernel carries its own symbol table: scripts/kallsyms turns the link's
symbols into assembler tables in ``.rodata`` (``write_src()``), and
``/proc/kallsyms`` prints from them (kernel/kallsyms.c).  This module reads
those tables from the image, so a kernel that is not running (DKMS rebuilding
for a freshly installed kernel) has its kallsyms without the debug package.

**The image.**  An x86 bzImage gives its compressed payload in the setup
header (boot protocol 2.08+: ``payload_offset``/``payload_length`` at
0x248/0x24c, Documentation/arch/x86/boot.rst); the payload is the vmlinux
ELF compressed with gzip, xz, lzma, bzip2, zstd or lz4 (the kernel's
``lz4 -l`` legacy frames), recognised by its magic.  An ELF file is taken
as vmlinux directly.  Only x86-64 (ELF64 little-endian, EM_X86_64) is read.

**The tables** (scripts/kallsyms.c ``write_src()``; names of one version
apply until the next change):

===========  =================================================================
layout       order of the tables in .rodata
===========  =================================================================
v5.8-v6.3    offsets[N] (s32), relative_base (u64), num_syms (u32),
             names, markers, [seqs_of_names], token_table, token_index;
             every table ``.balign 8`` (ALGN on 64-bit)
v6.4-v6.19   num_syms, names, markers, token_table, token_index, offsets,
             relative_base, seqs_of_names (commit 404bad70fcf7
             "scripts/kallsyms: change the output order", v6.4)
v7.0-        as v6.4, ``.balign 4``, no relative_base: offsets are
             place-relative, address = &offsets[i] + offsets[i] ("kallsyms:
             Get rid of kallsyms relative base", Ard Biesheuvel, v7.0)
===========  =================================================================

* ``names``: per symbol a length (one byte; since v6.1, commit 73bbb94466fd
  "kallsyms: support "big" kernel symbols", a two-byte ULEB128 when it is
  over 0x7f) then that many token bytes; each byte expands to
  ``token_table[token_index[byte]:]`` up to its NUL.  The first expanded
  character is the type letter.
* ``markers[k]``: the offset in ``names`` of symbol 256*k (u32).
* ``seqs_of_names``: 3 big-endian bytes per symbol (v6.2, commit
  60443c88f3a8 "kallsyms: Improve the performance of
  kallsyms_lookup_name()"; Debian's 6.1 has it backported, so for layouts
  before v6.4 its presence is read from the image, not the version).
* Before v7.0 an address is ``relative_base + (u32)offset``, or with
  CONFIG_KALLSYMS_ABSOLUTE_PERCPU (x86-64 SMP until it was removed)
  ``offset`` itself when it is >= 0 (per-cpu symbols) and
  ``relative_base - 1 - offset`` when negative (kallsyms_sym_address()).
  Which of the two is in use is read from the offsets' signs: without it
  every offset is a non-negative distance from the lowest address.

**Finding them.**  The stripped vmlinux has no symbol for any table, so one
anchor is searched: the token table, in which every character that occurs
in a symbol name and was not reused as a token stands for itself, so
``"0\\0" "1\\0" ... "9\\0"`` sits at token_index['0'].  Each place where that
run occurs is checked exactly (256 strings whose offsets are the u16
token_index that follows at the layout's alignment); from there the other
tables are at positions the layout fixes, up to the unknown symbol count,
which is found as the num_syms whose names, markers (and seqs_of_names)
fit together byte for byte.  Decoding then checks every marker against the
decoded names.  The payload is decompressed only up to the end of the
tables (they sit in .rodata, a third into vmlinux), and the text before
``linux_banner`` (in .rodata before them: their object is linked last) is
dropped as soon as it is seen.  Anything that does not fit is an
:class:`ImageError` naming the file and what is missing, never a table read
from the wrong places.  (Damage that keeps the tables consistent, such as a
changed byte inside an offset, cannot be told from a real table.)

The container (bzImage, decompression, segments) is ``kernel.vmlinuz``; what
stays here is one unit, the tables: their layouts, finding them and decoding
them, each step checking the one before (about 500 lines of code under this
description).
"""

from __future__ import annotations

import mmap
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from klpsym.errors import param
from klpsym.kernel import symcache
from klpsym.kernel.cachekey import image_key
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.kernel.symcache import NameIndex
from klpsym.kernel.version import KernelVersion
from klpsym.kernel.vmlinuz import (
    ImageError,
    VmlinuxStream,
    load_segments,
    open_image,
    take_prefetched,
)

# -- the layouts ------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where scripts/kallsyms of one kernel range puts its tables."""

    name: str
    order: str  # "offsets-first" (before v6.4), "names-first" (v6.4 on)
    align: int  # ALGN: 8 on 64-bit before v7.0, .balign 4 since
    pc_relative: bool  # v7.0: no relative_base, offsets place-relative
    big_lengths: bool  # v6.1: ULEB128 lengths over 0x7f
    seqs: bool | None  # seqs_of_names present; None: read from the image


def layout_for(version: KernelVersion) -> Layout:
    """The kallsyms layout of ``version`` (see the module docstring)."""
    if version < (5, 8):
        raise ImageError(f"kernel {version.release}: klpsym supports kernels from 5.8 on")
    if version >= (7, 0):
        return Layout("v7.0", "names-first", 4, True, True, True)
    if version >= (6, 4):
        return Layout("v6.4", "names-first", 8, False, True, True)
    if version >= (6, 2):
        return Layout("v6.2", "offsets-first", 8, False, True, True)
    if version >= (6, 1):
        return Layout("v6.1", "offsets-first", 8, False, True, None)
    return Layout("v5.8", "offsets-first", 8, False, False, None)


_BANNER = re.compile(rb"Linux version (\d+\.\d+[^\s\0]*) \(")


# Bytes kept at the end of the text searched for the banner, in case it
# starts there: "Linux version " and a release (UTS_RELEASE: at most 64).
_BANNER_TAIL = 512


def _banner(buf: bytearray, start: int) -> re.Match[bytes] | None:
    """The first linux_banner in ``buf`` from ``start`` on: its words found
    with bytes.find (the regular expression's own scan of ~16 MB of text
    before it cost ~100 M instructions), the version matched there."""
    at = buf.find(b"Linux version ", start)
    while at >= 0:
        m = _BANNER.match(buf, at)
        if m is not None:
            return m
        at = buf.find(b"Linux version ", at + 1)
    return None


@dataclass(frozen=True)
class _Rodata:
    """The part of the image the tables are searched in, and its address."""

    data: np.ndarray  # uint8
    addr: int  # the link-time address of data[0]


# -- the tables -----------------------------------------------------------------

_LETTER = np.zeros(256, dtype=bool)
_LETTER[0x41:0x5B] = _LETTER[0x61:0x7B] = True
_DIGITS = b"".join(bytes([c, 0]) for c in b"0123456789")


def _up(x: int, a: int) -> int:
    return -(-x // a) * a


@dataclass(frozen=True)
class _Tokens:
    start: int  # token_table, offset in the segment
    index: int  # token_index, offset in the segment
    strings: list[bytes]
    file_start: int = 0  # token_table, offset in the vmlinux file

    def shifted(self, d: int) -> _Tokens:
        return _Tokens(self.start + d, self.index + d, self.strings, self.file_start)


def _tokens_at(raw: bytes, addr: int, digits: int, align: int) -> _Tokens | None:
    # From "0" (token 0x30) on, 208 strings end the table; token_index follows.
    end = digits
    for _ in range(256 - 0x30):
        end = raw.find(b"\0", end)
        if end < 0:
            return None
        end += 1
    index = _up(addr + end, align) - addr
    if index + 512 > len(raw):
        return None
    ti = np.frombuffer(raw, dtype="<u2", count=256, offset=index).astype(np.int64)
    start = digits - int(ti[0x30])
    if ti[0] != 0 or start < 0 or not bool(np.all(np.diff(ti) > 0)):
        return None
    if start + int(ti[255]) >= end or raw[end - 1] != 0:
        return None
    table = raw[start:end]
    strings = table[:-1].split(b"\0")
    if len(strings) != 256:
        return None
    lengths = np.array([len(s) + 1 for s in strings], dtype=np.int64)
    if not bool(np.array_equal(np.concatenate([[0], np.cumsum(lengths)[:-1]]), ti)):
        return None
    return _Tokens(start, index, strings)


def read_image_kallsyms(path: Path | str, version: KernelVersion | None = None) -> KallsymsTable:
    """vmlinux's kallsyms from the kernel image ``path``, in kallsyms order
    with link-time addresses.  ``version`` is the target's (its headers');
    the image's own banner must agree with it.  ImageError when the image is
    not one this can read."""
    source = str(path)
    ahead = take_prefetched(path)
    if ahead is not None:  # decompressing since the command line started
        try:
            return _kallsyms_of(ahead.stream, ahead.how, source, version)
        finally:
            ahead.close()
    try:
        with open(path, "rb") as f:
            try:
                mapped: mmap.mmap | None = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (ValueError, OSError):
                mapped = None
            image: bytes | memoryview = memoryview(mapped) if mapped is not None else f.read()
    except FileNotFoundError:
        raise ImageError(f"{source}: no such file ({param('image')})") from None
    except IsADirectoryError:
        raise ImageError(f"{source}: is a directory, not a kernel image ({param('image')})"
                         ) from None
    except OSError as e:
        raise ImageError(f"{source}: cannot read it ({e.strerror})") from None
    try:
        return kallsyms_from_image(image, source, version)
    finally:
        try:
            if isinstance(image, memoryview):
                image.release()
            if mapped is not None:
                mapped.close()
        except BufferError:  # slices still held by an error's traceback: the GC closes it
            pass


def kallsyms_from_image(image: bytes | memoryview, source: str,
                        version: KernelVersion | None = None) -> KallsymsTable:
    """:func:`read_image_kallsyms` of the image's bytes."""
    stream, how = open_image(image, source, partial=True)
    return _kallsyms_of(stream, how, source, version)


def _kallsyms_of(stream: VmlinuxStream, how: str, source: str,
                 version: KernelVersion | None) -> KallsymsTable:
    segments = load_segments(stream)
    stream.skim()  # until the banner, only text is searched
    # Decompress until the token table (the anchor) has been seen.
    searched = 0  # file offsets
    banner_searched = 0
    tokens: _Tokens | None = None
    release: str | None = None
    layout: Layout | None = None
    while tokens is None:
        more = stream.ensure(stream.end() + 1)
        if release is None:
            m = _banner(stream.buf, max(0, banner_searched - _BANNER_TAIL - stream.base))
            banner_searched = stream.end()
            if m is None:
                # Not yet: the text searched is never needed again (the
                # tables come after the banner), but for a tail where a
                # banner may start.
                stream.drop_before(banner_searched - _BANNER_TAIL)
            else:
                release = m.group(1).decode("ascii", "replace")
                # linux_banner is in .rodata, before the kallsyms tables
                # (their object is linked last): the text before it is
                # never needed again, nor is its own "Linux version ",
                # which lets the stream read the rest as it is from there.
                stream.keep_from(stream.base + m.start() + len(b"Linux version "))
                searched = max(searched, stream.base)
                if version is None:
                    version = KernelVersion.parse(release)
                elif release != version.release:
                    raise ImageError(f"{source}: is the image of kernel {release}, but the "
                                     f"target is {version.release}; pass the image of the "
                                     "same kernel")
                layout = layout_for(version)
        if layout is not None:
            pos = stream.buf.find(_DIGITS, max(0, searched - len(_DIGITS) - stream.base))
            while pos >= 0 and tokens is None:
                tokens = _tokens_in(stream, segments, stream.base + pos, layout)
                if tokens is None:
                    pos = stream.buf.find(_DIGITS, pos + 1)
            searched = stream.end()
        if not more and tokens is None:
            if release is None:
                raise ImageError(f"{source}: no 'Linux version' banner in it; not a Linux "
                                 "kernel image, or truncated")
            raise ImageError(f"{source}: no kallsyms token table in it (a kernel without "
                             "CONFIG_KALLSYMS, a truncated or damaged image, or not the "
                             f"{layout.name if layout else '?'} kallsyms layout)")
    assert layout is not None and version is not None
    tok = tokens
    seg = _segment_of(segments, tok.file_start, source)
    tables = _locate(_view(stream, seg), tok, layout)
    if tables is None:
        raise ImageError(f"{source}: kallsyms_num_syms/names/markers do not fit together "
                         f"around the token table (not the {layout.name} kallsyms layout "
                         f"of {version.release}, or a damaged image)")
    end = max(tok.index + 512, tables.offsets + 4 * tables.num,
              0 if tables.seqs is None else tables.seqs + 3 * tables.num,
              0 if tables.relative_base is None else tables.relative_base + 8)
    if not stream.ensure(_view_start(stream, seg) + end):
        raise ImageError(f"{source}: ends inside the kallsyms tables (truncated image)")
    stream.close()
    # Keep only the tables (a few MB) and let the decompressed image go.
    first = min(tables.names, tables.offsets, tok.start) if tables.relative_base is None \
        else min(tables.names, tables.offsets, tables.relative_base, tok.start)
    first -= first % 8
    ro = _view(stream, seg)
    kept = _Rodata(ro.data[first:end].copy(), ro.addr + first)
    del ro, stream
    tables, tok = tables.shifted(-first), tok.shifted(-first)
    addresses, codes, index = _decode(kept, tok, tables, layout, source)
    return KallsymsTable.compact(addresses, codes, index, source, has_addresses=True,
                                 notes=(f"read from the kernel image ({how}, kallsyms "
                                        f"layout {layout.name})",))


def _segment_of(segments: list[tuple[int, int, int]], pos: int,
                source: str) -> tuple[int, int, int]:
    for seg in segments:
        if seg[0] <= pos < seg[0] + seg[1]:
            return seg
    raise ImageError(f"{source}: the kallsyms token table is outside every loadable segment")


def _view_start(stream: VmlinuxStream, seg: tuple[int, int, int]) -> int:
    """The file offset where the kept part of segment ``seg`` starts."""
    return max(seg[0], stream.base)


def _view(stream: VmlinuxStream, seg: tuple[int, int, int]) -> _Rodata:
    """The kept part of segment ``seg`` as an array: a view of the stream's
    buffer, which cannot grow while it lives.  Offsets in the tables are
    relative to its start."""
    off, size, addr = seg
    start = _view_start(stream, seg)
    end = min(off + size, stream.end())
    return _Rodata(np.frombuffer(stream.buf, dtype=np.uint8, count=end - start,
                                 offset=start - stream.base), addr + (start - off))


def _tokens_in(stream: VmlinuxStream, segments: list[tuple[int, int, int]], pos: int,
               layout: Layout) -> _Tokens | None:
    """The token table whose "0" is at file offset ``pos``, if it is one."""
    seg = next((s for s in segments if s[0] <= pos < s[0] + s[1]), None)
    if seg is None:
        return None
    off, size, addr = seg
    vs = _view_start(stream, seg)
    # 48 short strings before "0", 208 and the 512-byte index after: a window
    # of 64 kB each side holds them.
    w0 = max(vs, pos - 65536)
    w1 = min(off + size, pos + 65536)
    stream.ensure(w1)
    raw = bytes(memoryview(stream.buf)[w0 - stream.base: w1 - stream.base])
    tok = _tokens_at(raw, addr + (w0 - off), pos - w0, layout.align)
    if tok is None:
        return None
    shift = w0 - vs
    return _Tokens(tok.start + shift, tok.index + shift, tok.strings, tok.start + w0)


@dataclass(frozen=True)
class _Tables:
    num: int  # N
    names: int  # offsets in .rodata
    names_end: int
    markers: int
    offsets: int
    relative_base: int | None
    seqs: int | None

    def shifted(self, d: int) -> _Tables:
        return _Tables(self.num, self.names + d, self.names_end + d, self.markers + d,
                       self.offsets + d,
                       None if self.relative_base is None else self.relative_base + d,
                       None if self.seqs is None else self.seqs + d)


def _locate(ro: _Rodata, tok: _Tokens, layout: Layout) -> _Tables | None:
    """Every table's offset, given the token table: the num_syms whose
    names, markers and seqs_of_names fit byte for byte."""
    a = layout.align
    base = ro.addr % a  # .rodata offset x is address-aligned when (x + base) % a == 0

    def up(x: int) -> int:
        return _up(x + base, a) - base

    def down(x: np.ndarray) -> np.ndarray:
        return (x + base) // a * a - base

    data = ro.data
    # Candidates for num_syms: aligned u32 words before the token table
    # whose value could be a symbol count and whose markers (at the place
    # the count puts them) start with 0 and end inside the names; a slice of
    # the segment at a time (it holds millions of words).
    lo = up(0)
    step = a // 4
    words = np.frombuffer(data, dtype="<u4", count=(tok.start - lo) // 4, offset=lo)[::step]
    seq_options = (True, False) if layout.seqs is None else (layout.seqs,)
    survivors: list[tuple[bool, int, int, int]] = []  # seqs, num_syms at, N, markers at
    for c in range(0, len(words), 1 << 16):
        part = words[c: c + (1 << 16)]
        cand = np.flatnonzero((part >= 1) & (part < (1 << 24)))
        n = part[cand].astype(np.int64)
        where = lo + (cand + c) * (4 * step)
        m = (n + 255) // 256
        names_start = where + _up(4, a)
        for seqs in seq_options:
            if layout.order == "offsets-first" and seqs:  # markers, seqs_of_names, tokens
                mstart = down(down(tok.start - 3 * n) - 4 * m)
            else:  # markers right before the token table
                mstart = down(tok.start - 4 * m)
            ok = (mstart >= names_start + n * 2) & (mstart + 4 * m <= tok.start)
            safe = np.where(ok, mstart, 0)
            first = data[safe] | data[safe + 1] | data[safe + 2] | data[safe + 3]
            last_at = np.where(ok, mstart + 4 * (m - 1), 0)
            last = (data[last_at].astype(np.int64) | (data[last_at + 1].astype(np.int64) << 8)
                    | (data[last_at + 2].astype(np.int64) << 16)
                    | (data[last_at + 3].astype(np.int64) << 24))
            ok &= (first == 0) & (names_start + last < mstart)
            survivors += [(seqs, int(w), int(k), int(ms)) for w, k, ms in
                          zip(where[ok].tolist(), n[ok].tolist(), mstart[ok].tolist(),
                              strict=True)]
    hits: list[_Tables] = []
    for seqs, where_at, num, ms in survivors:
        k = (num + 255) // 256
        nstart = where_at + _up(4, a)
        markers = np.frombuffer(data, dtype="<u4", count=k, offset=ms).astype(np.int64)
        if markers[0] != 0 or not bool(np.all(np.diff(markers) > 0)):
            continue
        if nstart + int(markers[-1]) >= ms:
            continue
        names_end = _names_end(data, nstart, ms, int(markers[-1]), num - 256 * (k - 1),
                               layout.big_lengths)
        if names_end is None or up(names_end) != ms:
            continue
        seqs_at: int | None = None
        if layout.order == "names-first":
            offsets = up(tok.index + 512)
            rb = None if layout.pc_relative else up(offsets + 4 * num)
            seqs_at = up(offsets + 4 * num) if rb is None else up(rb + 8)
        else:
            rb = nstart - _up(4, a) - 8
            offsets = rb - _up(4 * num, a)
            if offsets < 0:
                continue
            if seqs:
                seqs_at = up(ms + 4 * k)
                if up(seqs_at + 3 * num) != tok.start:
                    continue
        hits.append(_Tables(num, nstart, names_end, ms, offsets, rb, seqs_at))
    return hits[0] if len(hits) == 1 else None


def _names_end(data: np.ndarray, start: int, limit: int, last_marker: int, last_count: int,
               big: bool) -> int | None:
    """Where the names end: walk the last marker's block (at most 256
    entries) from its marker."""
    pos = start + last_marker
    for _ in range(last_count):
        if pos >= limit:
            return None
        n = int(data[pos])
        if big and n & 0x80:
            n = (n & 0x7F) | (int(data[pos + 1]) << 7)
            pos += 2
        else:
            pos += 1
        if n == 0:
            return None
        pos += n
    return pos if pos <= limit else None


def _entry_offsets(names: np.ndarray, markers: np.ndarray, n: int, big: bool,
                   source: str) -> np.ndarray:
    """The offset of each of the ``n`` entries in ``names``: every 256-entry
    block walked from its marker, all blocks at once (one numpy step per
    entry of a block); each block must end exactly at the next marker."""
    k = len(markers)
    pos = markers.copy()
    out = np.empty((k, 256), dtype=np.int64)
    size = len(names)
    live = np.ones(k, dtype=bool)
    live[-1] = True
    last_count = n - 256 * (k - 1)
    for j in range(256):
        if j == last_count:
            live[-1] = False
        out[:, j] = pos
        if bool(np.any(pos[live] >= size)):
            raise ImageError(f"{source}: kallsyms_names is shorter than its markers say "
                             "(damaged image)")
        at = np.minimum(pos, size - 1)
        ln = names[at].astype(np.int64)
        step = 1
        if big:
            two = (ln & 0x80) != 0
            nxt = names[np.minimum(at + 1, size - 1)].astype(np.int64)
            ln = np.where(two, (ln & 0x7F) | (nxt << 7), ln)
            step_arr = np.where(two, 2, 1)
            pos = np.where(live, pos + step_arr + ln, pos)
        else:
            pos = np.where(live, pos + step + ln, pos)
    ends = np.append(markers[1:], size)
    if not bool(np.array_equal(pos, ends)):
        raise ImageError(f"{source}: kallsyms_names and kallsyms_markers disagree "
                         "(damaged image)")
    return out.reshape(-1)[:n]


def _decode(ro: _Rodata, tok: _Tokens, t: _Tables, layout: Layout,
            source: str) -> tuple[np.ndarray, np.ndarray, NameIndex]:
    """(addresses, type letters, names) of the tables; each step in a
    function of its own, so that its temporaries are gone before the next
    (the peak memory of a first run is here)."""
    blob, starts, types = _names(ro.data, tok, t, layout, source)
    addresses = _addresses(ro, t, layout, source)
    return addresses, types, NameIndex.from_blob(blob, starts)


def _names(data: np.ndarray, tok: _Tokens, t: _Tables, layout: Layout,
           source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The names blob ("name\n" each), its n+1 start offsets, and the type
    letters."""
    n = t.num
    names = data[t.names: t.names_end]
    markers = np.frombuffer(data, dtype="<u4", count=(n + 255) // 256,
                            offset=t.markers).astype(np.int64)
    entry_off = _entry_offsets(names, markers, n, layout.big_lengths, source)
    first = names[entry_off].astype(np.int64)
    if layout.big_lengths:
        two = (first & 0x80) != 0
        second = names[np.minimum(entry_off + 1, len(names) - 1)].astype(np.int64)
        lens = np.where(two, (first & 0x7F) | (second << 7), first)
    else:
        lens = first
    if bool(np.any(lens == 0)):
        raise ImageError(f"{source}: a kallsyms entry of length 0 (damaged image)")
    # The token bytes of all entries, in order: names without the lengths.
    keep = np.ones(len(names), dtype=bool)
    keep[entry_off] = False
    if layout.big_lengths:
        keep[entry_off[two] + 1] = False
    codes_in = names[keep]
    del keep
    # Expand: every token byte becomes its string (the token table holds
    # them fully expanded).
    tok_len = np.array([len(x) for x in tok.strings], dtype=np.uint16)
    tok_start = np.zeros(256, dtype=np.int64)
    np.cumsum(tok_len[:-1], out=tok_start[1:])
    tok_bytes = np.frombuffer(b"".join(tok.strings), dtype=np.uint8)
    if int(lens.sum()) != len(codes_in):
        raise ImageError(f"{source}: kallsyms_names' lengths and bytes disagree (damaged image)")
    # Each entry expands to its type letter and its name; the names blob
    # ("name\n" each) is the expansion shifted by one byte, each type
    # letter after the first overwritten by the newline that ends the name
    # before it.  So the expansion is written one byte early, straight into
    # the blob (its first byte, the first type letter, kept aside), a slice
    # of codes at a time; per slice, the indices of its strings' bytes in
    # the joined token table.  (np.take, not fancy indexing, for the gathers
    # by intp indices: a third faster; never by the uint8 codes themselves,
    # of which it would first make an 8-byte copy each.)
    step = 1 << 16
    total = sum(int(tok_len[codes_in[c: c + step]].sum(dtype=np.int64))
                for c in range(0, len(codes_in), step))
    blob = np.empty(total, dtype=np.uint8)
    code_starts = np.zeros(n, dtype=np.int64)  # each entry's first code
    np.cumsum(lens[:-1], out=code_starts[1:])
    estarts = np.empty(n, dtype=np.int64)  # each entry's first byte, expanded
    at = 0
    first_type = 0  # no letter: an image whose entries expand to nothing
    for c in range(0, len(codes_in), step):
        part = codes_in[c: c + step]
        lens_p = tok_len[part].astype(np.int64)
        begins_p = np.cumsum(lens_p)
        begins_p -= lens_p
        lo, hi = (int(x) for x in np.searchsorted(code_starts, (c, c + len(part))))
        estarts[lo:hi] = begins_p[code_starts[lo:hi] - c] + at
        index = np.repeat(np.take(tok_start, part) - begins_p, lens_p)
        index += np.arange(len(index))
        if at == 0 and len(index):
            first_type = int(tok_bytes[index[0]])
            np.take(tok_bytes, index[1:], out=blob[: len(index) - 1])
        else:
            np.take(tok_bytes, index, out=blob[at - 1: at - 1 + len(index)])
        at += len(index)
    del codes_in
    if bool(np.any(np.diff(estarts, append=total) < 2)):
        raise ImageError(f"{source}: a kallsyms entry expands to no name (damaged image)")
    # Symbol names are printable ASCII without spaces (C, assembler and
    # mangled Rust names); the type is a letter.  Anything else is damage.
    text = blob[:-1]
    types = np.empty(n, dtype=np.uint8)
    types[0] = first_type
    np.take(blob, estarts[1:] - 1, out=types[1:])
    if int(text.min()) < 0x21 or int(text.max()) > 0x7E or not bool(_LETTER[types].all()):
        raise ImageError(f"{source}: a kallsyms name holds a byte no symbol name has "
                         "(damaged image)")
    blob[estarts[1:] - 1] = 10
    blob[-1] = 10
    starts = np.empty(n + 1, dtype=np.int64)
    starts[:-1] = estarts
    starts[-1] = total
    return blob, starts, types


def _addresses(ro: _Rodata, t: _Tables, layout: Layout, source: str) -> np.ndarray:
    """Each symbol's address; kallsyms_seqs_of_names checked on the way."""
    data = ro.data
    n = t.num
    off = np.frombuffer(data, dtype="<i4", count=n, offset=t.offsets).astype(np.int64)
    if layout.pc_relative:
        place = np.uint64(ro.addr + t.offsets) + np.arange(n, dtype=np.uint64) * np.uint64(4)
        addresses = place + off.astype(np.uint64)  # modulo 2**64, as the kernel adds
    else:
        assert t.relative_base is not None
        rb = int(data[t.relative_base: t.relative_base + 8].view("<u8")[0])
        if bool(np.any(off < 0)):  # CONFIG_KALLSYMS_ABSOLUTE_PERCPU
            addresses = np.where(off >= 0, off.astype(np.uint64),
                                 np.uint64(rb - 1) - off.astype(np.uint64))
        else:
            addresses = np.uint64(rb) + off.astype(np.uint64)
    addresses = addresses.astype(np.uint64)
    if t.seqs is not None:
        sq = data[t.seqs: t.seqs + 3 * n].reshape(n, 3).astype(np.int64)
        seq = (sq[:, 0] << 16) | (sq[:, 1] << 8) | sq[:, 2]
        seen = np.zeros(n, dtype=bool)
        if bool(np.any(seq >= n)):
            raise ImageError(f"{source}: kallsyms_seqs_of_names points past the symbols "
                             "(damaged image)")
        seen[seq] = True
        if not bool(seen.all()):
            raise ImageError(f"{source}: kallsyms_seqs_of_names is not a permutation of the "
                             "symbols (damaged image)")
    return addresses


def read_image(path: Path | str, version: KernelVersion | None = None, *,
               cache: bool = True) -> KallsymsTable:
    """:func:`read_image_kallsyms`, kept in the symbol cache
    (:mod:`klpsym.kernel.symcache`, keyed on the file and the target
    release) unless ``cache`` is False: the second read of an image costs a
    millisecond."""
    p = Path(path)
    source = str(path)
    key = image_key(p, version.release if version is not None else None)

    def from_arrays(arrays: dict[str, np.ndarray], meta: dict[str, object]) -> KallsymsTable:
        return KallsymsTable.from_arrays(arrays, meta, source)

    return symcache.cached("image", p, key, enabled=cache,
                           parse=lambda: read_image_kallsyms(p, version),
                           to_arrays=KallsymsTable.to_arrays, from_arrays=from_arrays)
