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
decoded names.  Anything that does not fit is an
:class:`ImageError` naming the file and what is missing: never a wrong table.
"""

from __future__ import annotations

import bz2
import lzma
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from klpsym.errors import KernelSourceError
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.kernel.symcache import NameIndex
from klpsym.kernel.version import KernelVersion

EM_X86_64 = 62


class ImageError(KernelSourceError):
    """A kernel image whose kallsyms cannot be read (damaged, foreign, or a
    layout this reader does not know)."""


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


# -- decompression ----------------------------------------------------------------

# (format, magic) as scripts/extract-vmlinux knows them.
_MAGICS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lz4", b"\x02\x21\x4c\x18"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00"),
)


def _decompress(kind: str, data: bytes) -> bytes:
    """One stream; trailing bytes (the kernel appends the output size) ignored."""
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if kind == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    if kind == "bzip2":
        return bz2.BZ2Decompressor().decompress(data)
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return _lz4_legacy(data)


_LZ4_LEGACY_BLOCK = 8 << 20  # lz4's legacy format: blocks of 8 MB uncompressed


def _lz4_legacy(data: bytes) -> bytes:
    """The kernel's lz4 payload: ``lz4 -l`` legacy frames (magic 0x184C2102,
    then per block a u32 compressed size and an LZ4 block of at most 8 MB),
    as lib/decompress_unlz4.c reads them.  The blocks are decoded by the
    ``lz4`` package (BSD-licensed bindings of the reference library): a
    decoder in Python would take seconds per image."""
    import lz4.block

    out: list[bytes] = []
    pos, n = 4, len(data)
    while pos + 4 <= n:
        (size,) = struct.unpack_from("<I", data, pos)
        if size == 0x184C2102:  # a concatenated frame
            pos += 4
            continue
        if size == 0 or pos + 4 + size > n:
            break  # the appended output size, or the end
        out.append(lz4.block.decompress(data[pos + 4: pos + 4 + size],
                                        uncompressed_size=_LZ4_LEGACY_BLOCK))
        pos += 4 + size
    return b"".join(out)


def _payload(image: bytes) -> tuple[int, int] | None:
    """(offset, length) of a bzImage's compressed payload, from its header."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        return None
    (proto,) = struct.unpack_from("<H", image, 0x206)
    if proto < 0x0208:
        return None
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length == 0 or start + length > len(image):
        return None
    return start, length


_DECOMPRESS_ERRORS = (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError, RuntimeError)


def vmlinux_bytes(image: bytes, source: str) -> tuple[bytes, str]:
    """The vmlinux ELF in ``image`` and how it was stored ("vmlinux",
    "bzImage, xz", ...)."""
    if image[:4] == b"\x7fELF":
        return image, "vmlinux"
    found = _payload(image)
    if found is not None:
        start, length = found
        blob = image[start: start + length]
        kind = next((k for k, m in _MAGICS if blob.startswith(m)), None)
        if kind is None:
            raise ImageError(f"{source}: bzImage payload in an unknown compression "
                             f"(starts {blob[:4].hex()}); klpsym reads gzip, xz, lzma, "
                             "bzip2, zstd and lz4")
        try:
            out = _decompress(kind, blob)
        except ImportError as e:
            raise ImageError(f"{source}: {kind}-compressed, and the Python module "
                             f"'{e.name}' is missing; pip install {e.name}") from None
        except _DECOMPRESS_ERRORS as e:
            raise ImageError(f"{source}: its {kind} payload does not decompress ({e}); "
                             "the image is damaged or truncated") from None
        if out[:4] != b"\x7fELF":
            raise ImageError(f"{source}: its {kind} payload is not a vmlinux ELF "
                             "(truncated or damaged image)")
        return out, f"bzImage, {kind}"
    for kind, magic in _MAGICS:
        if image.startswith(magic):  # a bare compressed vmlinux (vmlinux.gz, ...)
            try:
                out = _decompress(kind, image)
            except ImportError as e:
                raise ImageError(f"{source}: {kind}-compressed, and the Python module "
                                 f"'{e.name}' is missing; pip install {e.name}") from None
            except _DECOMPRESS_ERRORS as e:
                raise ImageError(f"{source}: does not decompress as {kind} ({e})") from None
            if out[:4] == b"\x7fELF":
                return out, kind
            break
    raise ImageError(f"{source}: not a kernel image (no bzImage header, no ELF vmlinux, "
                     "no compressed vmlinux)")


# -- the ELF --------------------------------------------------------------------


@dataclass(frozen=True)
class _Rodata:
    data: np.ndarray  # uint8, the section's bytes
    addr: int  # its link-time address


def _rodata(elf: bytes, source: str) -> _Rodata:
    if len(elf) < 64 or elf[4] != 2 or elf[5] != 1:
        raise ImageError(f"{source}: vmlinux is not a 64-bit little-endian ELF; klpsym "
                         "reads x86-64 kernel images")
    (machine,) = struct.unpack_from("<H", elf, 18)
    if machine != EM_X86_64:
        raise ImageError(f"{source}: vmlinux is for ELF machine {machine}, not x86-64; "
                         "klpsym reads x86-64 kernel images")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    if shoff == 0 or shentsize != 64 or shoff + shnum * 64 > len(elf) or shstrndx >= shnum:
        raise ImageError(f"{source}: vmlinux has no section table (truncated?)")
    heads = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + 64 * i) for i in range(shnum)]
    strtab = heads[shstrndx]
    names = elf[strtab[4]: strtab[4] + strtab[5]]
    for name_off, _type, _flags, addr, off, size, *_ in heads:
        end = names.find(b"\0", name_off)
        if names[name_off:end] == b".rodata":
            if off + size > len(elf):
                raise ImageError(f"{source}: vmlinux is truncated (.rodata goes past its end)")
            return _Rodata(np.frombuffer(elf, dtype=np.uint8, count=size, offset=off), addr)
    raise ImageError(f"{source}: vmlinux has no .rodata section, where kallsyms lives")


_BANNER = re.compile(rb"Linux version (\d+\.\d+[^\s\0]*) \(")


def image_release(rodata: bytes) -> str | None:
    """The release in ``linux_banner``, or None."""
    m = _BANNER.search(rodata)
    return m.group(1).decode("ascii", "replace") if m else None


# -- the tables -----------------------------------------------------------------

_DIGITS = b"".join(bytes([c, 0]) for c in b"0123456789")


def _up(x: int, a: int) -> int:
    return -(-x // a) * a


@dataclass(frozen=True)
class _Tokens:
    start: int  # token_table, offset in .rodata
    index: int  # token_index, offset in .rodata
    strings: list[bytes]


def _find_tokens(ro: _Rodata, layout: Layout) -> _Tokens | None:
    """The token table and index (see the module docstring), or None."""
    raw = ro.data.tobytes()
    found: list[_Tokens] = []
    pos = raw.find(_DIGITS)
    while pos >= 0 and len(found) < 2:
        tok = _tokens_at(raw, ro, pos, layout.align)
        if tok is not None and all(t.start != tok.start for t in found):
            found.append(tok)
        pos = raw.find(_DIGITS, pos + 1)
    return found[0] if len(found) == 1 else None


def _tokens_at(raw: bytes, ro: _Rodata, digits: int, align: int) -> _Tokens | None:
    # From "0" (token 0x30) on, 208 strings end the table; token_index follows.
    end = digits
    for _ in range(256 - 0x30):
        end = raw.find(b"\0", end)
        if end < 0:
            return None
        end += 1
    index = _up(ro.addr + end, align) - ro.addr
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
    p = Path(path)
    source = str(path)
    try:
        image = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{source}: no such file (--image)") from None
    except IsADirectoryError:
        raise ImageError(f"{source}: is a directory, not a kernel image (--image)") from None
    except OSError as e:
        raise ImageError(f"{source}: cannot read it ({e.strerror})") from None
    elf, how = vmlinux_bytes(image, source)
    del image
    return kallsyms_from_elf(elf, source, version, how)


def kallsyms_from_elf(elf: bytes, source: str, version: KernelVersion | None = None,
                      how: str = "vmlinux") -> KallsymsTable:
    """:func:`read_image_kallsyms` of an uncompressed vmlinux's bytes."""
    ro = _rodata(elf, source)
    release = image_release(ro.data.tobytes())
    if release is None:
        raise ImageError(f"{source}: no 'Linux version' banner in its .rodata; not a "
                         "Linux kernel image")
    if version is None:
        version = KernelVersion.parse(release)
    elif release != version.release:
        raise ImageError(f"{source}: is the image of kernel {release}, but the target is "
                         f"{version.release}; pass the image of the same kernel")
    layout = layout_for(version)
    tokens = _find_tokens(ro, layout)
    if tokens is None:
        raise ImageError(f"{source}: no kallsyms token table in it (a kernel without "
                         f"CONFIG_KALLSYMS, or a damaged image; expected the {layout.name} "
                         "layout)")
    tables = _locate(ro, tokens, layout)
    if tables is None:
        raise ImageError(f"{source}: kallsyms_num_syms/names/markers do not fit together "
                         f"around the token table (not the {layout.name} kallsyms layout "
                         f"of {version.release}, or a damaged image)")
    addresses, codes, index = _decode(ro, tokens, tables, layout, source)
    return KallsymsTable.compact(addresses, codes, index, source, has_addresses=True,
                                 notes=(f"read from the kernel image ({how}, kallsyms "
                                        f"layout {layout.name})",))


@dataclass(frozen=True)
class _Tables:
    num: int  # N
    names: int  # offsets in .rodata
    names_end: int
    markers: int
    offsets: int
    relative_base: int | None
    seqs: int | None


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
    size = len(data)
    # Candidates for num_syms: aligned u32 words before the token table.
    lo = up(0)
    words = np.frombuffer(data, dtype="<u4", count=(tok.start - lo) // 4, offset=lo)
    step = a // 4
    cand_idx = np.arange(0, len(words), step)
    values = words[cand_idx].astype(np.int64)
    where = lo + cand_idx * 4
    plausible = (values >= 1) & (values < (1 << 24))
    values, where = values[plausible], where[plausible]
    seq_options = (True, False) if layout.seqs is None else (layout.seqs,)
    hits: list[_Tables] = []
    for seqs in seq_options:
        n = values
        m = (n + 255) // 256
        names_start = where + _up(4, a)
        if layout.order == "offsets-first" and seqs:  # markers, seqs_of_names, tokens
            mstart = down(down(tok.start - 3 * n) - 4 * m)
        else:  # markers right before the token table
            mstart = down(tok.start - 4 * m)
        ok = (mstart >= names_start + n * 2) & (mstart + 4 * m <= tok.start)
        # markers[0] == 0 and the last marker inside the names, for all at once
        safe = np.where(ok, mstart, 0)
        first = data[safe] | data[safe + 1] | data[safe + 2] | data[safe + 3]
        last_at = np.where(ok, mstart + 4 * (m - 1), 0)
        last = (data[last_at].astype(np.int64) | (data[last_at + 1].astype(np.int64) << 8)
                | (data[last_at + 2].astype(np.int64) << 16)
                | (data[last_at + 3].astype(np.int64) << 24))
        ok &= (first == 0) & (names_start + last < mstart)
        for i in np.flatnonzero(ok).tolist():
            ms, k, num = int(mstart[i]), int(m[i]), int(n[i])
            markers = np.frombuffer(data, dtype="<u4", count=k, offset=ms).astype(np.int64)
            nstart = int(names_start[i])
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
                if seqs_at + 3 * num > size:
                    continue
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


def _decode(ro: _Rodata, tok: _Tokens, t: _Tables, layout: Layout,
            source: str) -> tuple[np.ndarray, np.ndarray, NameIndex]:
    data = ro.data
    n = t.num
    names = data[t.names: t.names_end]
    # Entry starts: a sequential walk over the length bytes.
    raw = names.tobytes()
    heads = np.empty(n, dtype=np.int64)  # first token byte of each entry
    lens = np.empty(n, dtype=np.int64)
    pos = 0
    big = layout.big_lengths
    for i in range(n):
        ln = raw[pos]
        if big and ln & 0x80:
            ln = (ln & 0x7F) | (raw[pos + 1] << 7)
            pos += 2
        else:
            pos += 1
        heads[i] = pos
        lens[i] = ln
        pos += ln
    if pos != len(raw):
        raise ImageError(f"{source}: kallsyms_names does not decode to "
                         f"{n} symbols (damaged image)")
    entry_off = heads - np.where((lens > 0x7F) & big, 2, 1)
    markers = np.frombuffer(data, dtype="<u4", count=(n + 255) // 256,
                            offset=t.markers).astype(np.int64)
    if not bool(np.array_equal(markers, entry_off[::256])):
        raise ImageError(f"{source}: kallsyms_markers disagree with kallsyms_names "
                         "(damaged image)")
    # Expand the tokens: every token byte becomes its string.
    tok_bytes = b"".join(tok.strings)
    tok_len = np.array([len(s) for s in tok.strings], dtype=np.int64)
    tok_start = np.concatenate([[0], np.cumsum(tok_len)[:-1]])
    tokbuf = np.frombuffer(tok_bytes, dtype=np.uint8)
    inside = np.zeros(len(names) + 1, dtype=np.int64)
    np.add.at(inside, heads, 1)
    np.add.at(inside, heads + lens, -1)
    sel = np.cumsum(inside[:-1]).astype(bool)
    codes_in = names[sel]  # the token bytes of all entries, in order
    expand = tok_len[codes_in]
    entry_tokens = np.repeat(np.arange(n), lens)
    entry_len = np.bincount(entry_tokens, weights=expand, minlength=n).astype(np.int64)
    if bool(np.any(entry_len < 2)):
        raise ImageError(f"{source}: a kallsyms entry expands to no name (damaged image)")
    total = int(expand.sum())
    out_pos = np.repeat(np.cumsum(expand) - expand, expand)
    within = np.arange(total, dtype=np.int64) - out_pos
    text = tokbuf[np.repeat(tok_start[codes_in], expand) + within]
    estarts = np.concatenate([[0], np.cumsum(entry_len)[:-1]])
    types = text[estarts].copy()
    # Names with '\n' in place of each following type letter: the NameIndex blob.
    blob = np.empty(total, dtype=np.uint8)
    keep = np.ones(total, dtype=bool)
    keep[estarts] = False
    body = text[keep]
    name_len = entry_len - 1
    nl_at = np.cumsum(name_len + 1) - 1
    blob_len = total
    blob = np.empty(blob_len, dtype=np.uint8)
    mask = np.ones(blob_len, dtype=bool)
    mask[nl_at] = False
    blob[mask] = body
    blob[nl_at] = 10
    if bool(np.any(body == 10)) or bool(np.any(body == 0)):
        raise ImageError(f"{source}: a kallsyms name holds a control byte (damaged image)")
    starts = np.zeros(n + 1, dtype=np.int64)
    starts[1:] = nl_at + 1
    # Addresses.
    off = np.frombuffer(data, dtype="<i4", count=n, offset=t.offsets).astype(np.int64)
    if layout.pc_relative:
        place = np.uint64(ro.addr + t.offsets) + np.arange(n, dtype=np.uint64) * np.uint64(4)
        addresses = place + off.astype(np.uint64)  # modulo 2**64, as the kernel adds
    else:
        assert t.relative_base is not None
        (rb,) = struct.unpack_from("<Q", data, t.relative_base)
        if bool(np.any(off < 0)):  # CONFIG_KALLSYMS_ABSOLUTE_PERCPU
            addresses = np.where(off >= 0, off.astype(np.uint64),
                                 np.uint64(rb - 1) - off.astype(np.uint64))
        else:
            addresses = np.uint64(rb) + off.astype(np.uint64)
    addresses = addresses.astype(np.uint64)
    if t.seqs is not None:
        sq = data[t.seqs: t.seqs + 3 * n].reshape(n, 3).astype(np.int64)
        seq = (sq[:, 0] << 16) | (sq[:, 1] << 8) | sq[:, 2]
        if not bool(np.array_equal(np.sort(seq), np.arange(n))):
            raise ImageError(f"{source}: kallsyms_seqs_of_names is not a permutation of the "
                             "symbols (damaged image)")
    return addresses, types, NameIndex.from_blob(blob, starts)
