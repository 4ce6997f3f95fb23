"""The vmlinux inside a kernel image (an x86 bzImage, a bare compressed
vmlinux, or vmlinux itself), decompressed only as far as it is read, and its
loadable segments.  Shared by the image symbol source (``kernel.image``) and
the lab, which boots the whole vmlinux.

An x86 bzImage gives its compressed payload in the setup header (boot
protocol 2.08+: ``payload_offset``/``payload_length`` at 0x248/0x24c,
Documentation/arch/x86/boot.rst); the payload is the vmlinux ELF compressed
with gzip, xz, lzma, bzip2, zstd or lz4 (the kernel's ``lz4 -l`` legacy
frames), recognised by its magic.  Only x86-64 (ELF64 little-endian,
EM_X86_64) is read.
"""

from __future__ import annotations

import io
import lzma
import mmap
import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path

from klpsym.errors import InternalError, KernelSourceError

# numpy, the ELF readers and constants, and bz2 are imported where they are
# used, not with this module: the command line imports it to start
# decompressing an image (prefetch()) before anything else it needs.


class ImageError(KernelSourceError):
    """A kernel image whose kallsyms cannot be read (damaged, foreign, or a
    layout this reader does not know)."""


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


class VmlinuxStream:
    """The vmlinux, decompressed only as far as it is read: kallsyms sits in
    .rodata, in the first half of the image, so the rest (.data, .init,
    relocations, the section table) is never decompressed."""

    CHUNK = 1 << 21

    def __init__(self, source: str, kind: str, blob: bytes | memoryview, *,
                 partial: bool = False) -> None:
        self.source, self.kind = source, kind
        self.partial = partial
        self.buf = bytearray()  # the vmlinux from file offset ``base`` on
        self.base = 0
        self.done = False
        # The kernel's build appends the uncompressed size (le32) to the
        # compressed vmlinux (scripts/Makefile.lib size_append).
        self.expected = int.from_bytes(bytes(blob[-4:]), "little") \
            if kind != "vmlinux" and len(blob) >= 4 else None
        # An xz payload's x86 BCJ filter, undone here rather than by the
        # decoder (see skim()); None once it is not (being) undone.
        self._x86: _X86Unfilter | None = None
        # After skim(): the filter's decoder paused, where (the file offset
        # it had given the bytes up to) and how many bytes it held back.
        self._paused: tuple[_X86Unfilter, int, int] | None = None
        self._next = self._reader(kind, blob)
        self._ahead: _Ahead | None = None

    # How far the thread of decompress_ahead() may run ahead of ensure():
    # the reader takes nothing until the command's imports and its
    # Module.symvers are done (~0.15 s in), by when bookworm's xz decoder
    # is ~10 MB in on an idle machine; at 8 MB it had to stop and wait.
    # And how much it decompresses at a time: what the reader may wait for
    # once it has found the tables, and what close() waits for (bookworm's
    # xz: ~4 ms for 256 kB, ~30 ms for a CHUNK).
    AHEAD = 8 * CHUNK
    AHEAD_CHUNK = 1 << 18

    def decompress_ahead(self) -> None:
        """Decompress in a thread of its own from now on, at most
        :attr:`AHEAD` bytes ahead of what :meth:`ensure` has taken: the
        decompressors (zlib, lzma, bz2, zstandard, lz4) release the GIL, so
        the caller's own work (the imports of a command) runs meanwhile.
        Same bytes, same errors (raised by ensure()); :meth:`close` stops
        the thread."""
        if self.kind == "vmlinux" or self._ahead is not None or self.done:
            return
        self._ahead = _Ahead(self._next, self.AHEAD_CHUNK, self.AHEAD)
        self._next = self._ahead.take

    def _reader(self, kind: str, blob: bytes | memoryview) -> Callable[[int], bytes]:
        if kind == "vmlinux":
            at = [0]

            def plain(n: int) -> bytes:
                out = bytes(blob[at[0]: at[0] + n])
                at[0] += len(out)
                return out
            return plain
        if kind == "gzip":
            z = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pending: list[bytes | memoryview] = [blob]

            def gz(n: int) -> bytes:
                if z.eof or not pending:
                    return b""
                out = z.decompress(pending[0], n)
                pending[0] = z.unconsumed_tail
                if not pending[0] and not out:
                    pending.clear()
                return out
            return gz
        if kind in ("xz", "lzma", "bzip2"):
            import bz2

            raw = _xz_single_block(blob) if kind == "xz" and self.partial else None
            if raw is not None:
                start, filters = raw
                blob = blob[start:]
                if filters[0]["id"] == lzma.FILTER_X86:
                    filters = filters[1:]
                    self._x86 = _X86Unfilter(0)
            d: lzma.LZMADecompressor | bz2.BZ2Decompressor = (
                bz2.BZ2Decompressor() if kind == "bzip2"
                else lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=filters)
                if raw is not None else lzma.LZMADecompressor(
                    format=lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE))
            fed = [0]

            def lz(n: int) -> bytes:
                # Input a slice at a time, as for zstd: given the whole
                # payload, the decompressor copies what it has not used yet
                # into a buffer of its own (MBs) whenever it stops at n.
                out = b""
                while not out and not d.eof:
                    piece: bytes | memoryview = b""
                    if d.needs_input:
                        if fed[0] >= len(blob):
                            break
                        piece = blob[fed[0]: fed[0] + (1 << 18)]
                        fed[0] += len(piece)
                    out = d.decompress(piece, n)
                return out
            return lz
        if kind == "zstd":
            import zstandard

            zd = zstandard.ZstdDecompressor().decompressobj()
            at = [0]

            def zs(n: int) -> bytes:
                # Input a slice at a time (the output of one is ~4 times its
                # size); the frame's end stops it before the appended size.
                out = b""
                while not out and at[0] < len(blob) and not zd.eof:
                    piece = blob[at[0]: at[0] + (1 << 18)]
                    at[0] += len(piece)
                    try:
                        out = zd.decompress(piece)
                    except zstandard.ZstdError as e:
                        raise ValueError(str(e)) from None
                return out
            return zs
        return self._lz4(blob)

    @staticmethod
    def _lz4(blob: bytes | memoryview) -> Callable[[int], bytes]:
        """The kernel's lz4 payload: ``lz4 -l`` legacy frames (magic
        0x184C2102, then per block a u32 compressed size and an LZ4 block of
        at most 8 MB), as lib/decompress_unlz4.c reads them.  The blocks are
        decoded by the ``lz4`` package (BSD-licensed bindings of the
        reference library): a decoder in Python would take seconds."""
        import lz4.block  # type: ignore[import-untyped]

        data = bytes(blob)
        pos = [4]

        def block(n: int) -> bytes:
            while pos[0] + 4 <= len(data):
                (size,) = struct.unpack_from("<I", data, pos[0])
                if size == 0x184C2102:  # a concatenated frame
                    pos[0] += 4
                    continue
                if size == 0 or pos[0] + 4 + size > len(data):
                    return b""  # the appended output size, or the end
                try:
                    out: bytes = lz4.block.decompress(data[pos[0] + 4: pos[0] + 4 + size],
                                                      uncompressed_size=_LZ4_LEGACY_BLOCK)
                except lz4.block.LZ4BlockError as e:
                    raise ValueError(str(e)) from None
                pos[0] += 4 + size
                return out
            return b""
        return block

    def close(self) -> None:
        """Decompress no more: the decompressor (zstd's window buffer grows
        with the output, ~30 MB by the end of sid's kallsyms) is let go
        before the caller copies what it keeps out of :attr:`buf`."""
        self.done = True
        self._next = _nothing
        if self._ahead is not None:
            self._ahead.stop()

    def end(self) -> int:
        """The file offset decompressed up to."""
        return self.base + len(self.buf)

    def drop_before(self, pos: int) -> None:
        """Forget the vmlinux before file offset ``pos`` (never read again)."""
        if pos > self.base:
            del self.buf[: pos - self.base]
            self.base = pos

    def skim(self) -> None:
        """What is decompressed from now on, until :meth:`keep_from`, is
        only searched for text (the banner): for an xz payload it may still
        be in the form the x86 BCJ filter gave it, which differs from the
        vmlinux only in the 4 bytes after an E8 or E9 byte (a call or jmp
        operand made absolute) when the 4th of them is 00 or FF, so never
        inside or at the start of printable text.  Undoing the filter cost
        ~45 ms of bookworm's ~0.36 s of decompression, ~80% of it on the
        text before the banner."""
        if self._x86 is not None:
            held = self._x86.held()
            self._paused = (self._x86, self.end(), len(held))
            self._x86 = None
            self.buf += held

    def keep_from(self, pos: int) -> None:
        """Forget the vmlinux before file offset ``pos``; from there on it is
        read as it is (the x86 filter undone again after :meth:`skim`).
        None of the 5 bytes before ``pos`` may be E8 or E9 (the caller
        passes a position after 5 bytes of text), so the filter's decoder
        can start afresh at ``pos``: xz's simple/x86.c carries only
        prev_mask and prev_pos from byte to byte, and with no E8/E9 in the
        5 bytes before ``pos`` (in either form: the filter never changes a
        byte it tests) no converted operand covers ``pos`` and the next
        E8/E9 finds prev_pos more than 5 bytes back and clears prev_mask,
        as the fresh decoder does.  A ``pos`` before the point where
        skim() paused the decoder (an image smaller than a chunk) resumes
        that decoder instead."""
        if self._paused is None:
            self.drop_before(pos)
            return
        paused, since, held = self._paused
        at = pos - self.base
        if not 0 <= at <= len(self.buf):
            raise InternalError(f"{self.source}: the x86 filter cannot restart at {pos:#x}")
        if pos < since:  # bytes up to ``since`` are as they are already
            rest = bytes(self.buf[since + held - self.base:])
            del self.buf[since - self.base:]
            self._paused = None
            self._x86 = paused
            self.buf += paused.feed(rest)
            if self.done:  # and the stream's end came while it was paused
                self.buf += paused.finish()
            self.drop_before(pos)
            return
        if at < 5 or any(b in (0xE8, 0xE9) for b in self.buf[at - 5: at]):
            raise InternalError(f"{self.source}: the x86 filter cannot restart at {pos:#x} "
                                "(not after 5 bytes of text)")
        self._paused = None
        tail = bytes(self.buf[at:])
        del self.buf[:]
        self.base = pos
        self._x86 = _X86Unfilter(pos)
        self.buf += self._x86.feed(tail)

    def ensure(self, n: int) -> bool:
        """Decompress until file offset ``n`` (False if it ends before)."""
        while self.end() < n and not self.done:
            try:
                out = self._next(max(self.CHUNK, n - self.end()))
                if self._x86 is not None:
                    out = self._x86.feed(out) if out else self._x86.finish()
                    ended = not out and self._x86.ended()
                else:
                    ended = not out
            except ImportError as e:
                raise ImageError(f"{self.source}: {self.kind}-compressed, and the Python "
                                 f"module '{e.name}' is missing; pip install {e.name}") from None
            except _DECOMPRESS_ERRORS as e:
                raise ImageError(f"{self.source}: its {self.kind} payload does not decompress "
                                 f"({e}); the image is damaged or truncated") from None
            self.buf += out
            if ended:
                self.done = True
                if self.expected is not None and self.end() < self.expected:
                    raise ImageError(f"{self.source}: its {self.kind} payload ends after "
                                     f"{self.end()} of {self.expected} bytes (truncated "
                                     "or damaged image)")
        return self.end() >= n


def _nothing(n: int) -> bytes:
    return b""


class _X86Unfilter:
    """The x86 BCJ filter undone by liblzma's own decoder of it (xz's
    simple/x86.c): the bytes fed in go to a raw decoder whose chain is that
    filter then LZMA2, framed as LZMA2 uncompressed chunks (control byte 1
    for the first, which resets the dictionary, then 2; a big-endian size
    minus one; at most 64 KiB each: xz-file-format and liblzma's
    lzma2_decoder.c), so LZMA2 only copies them.  ``start`` is the
    position of the first byte in the filter's stream (the vmlinux file
    offset), which converted operands are relative to.  The output lags
    the input by up to 4 bytes (an operand may go on in the next input)
    until :meth:`finish`, which gives those bytes as they are, as the
    filter does at the end of a stream."""

    PIECE = 1 << 16

    def __init__(self, start: int) -> None:
        self._d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=[
            {"id": lzma.FILTER_X86, "start_offset": start & 0xFFFFFFFF},
            {"id": lzma.FILTER_LZMA2, "dict_size": 1 << 12}])
        self._control = 1
        self._fed = self._given = 0
        self._tail = b""  # the last bytes fed

    def feed(self, data: bytes) -> bytes:
        view = memoryview(data)
        parts: list[bytes | memoryview] = []
        for i in range(0, len(view), self.PIECE):
            piece = view[i: i + self.PIECE]
            parts += (bytes((self._control, (len(piece) - 1) >> 8, (len(piece) - 1) & 0xFF)),
                      piece)
            self._control = 2
        out = self._d.decompress(b"".join(parts))
        self._fed += len(view)
        self._given += len(out)
        self._tail = (self._tail + bytes(view[-8:]))[-8:]
        return out

    def held(self) -> bytes:
        """The bytes fed and not given back yet (at most 4), as they were fed."""
        n = self._fed - self._given
        return self._tail[len(self._tail) - n:] if n else b""

    def finish(self) -> bytes:
        return self._d.decompress(b"\x00") if not self._d.eof else b""

    def ended(self) -> bool:
        return self._d.eof


class _Ahead:
    """A stream's decompressor run in a thread: ``produce`` (the stream's
    reader) called for ``chunk`` bytes at a time until it ends or fails,
    its outputs queued up to ``limit`` bytes; :meth:`take` hands them over
    in order, then the end (b"") or the reader's exception, every time it
    is asked again."""

    def __init__(self, produce: Callable[[int], bytes], chunk: int, limit: int) -> None:
        self._produce = produce
        self._chunk, self._limit = chunk, limit
        self._ready: deque[bytes] = deque()
        self._held = 0  # bytes in _ready
        self._finished = False  # the reader ended or failed
        self._error: BaseException | None = None
        self._stopped = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="klpsym-decompress",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while self._held >= self._limit and not self._stopped:
                        self._cv.wait()
                    if self._stopped:
                        return
                out = self._produce(self._chunk)
                with self._cv:
                    if out:
                        self._ready.append(out)
                        self._held += len(out)
                    else:
                        self._finished = True
                    self._cv.notify_all()
                if not out:
                    return
        except BaseException as e:  # handed to the caller by take()
            with self._cv:
                self._error = e
                self._finished = True
                self._cv.notify_all()

    def take(self, n: int) -> bytes:
        """The next output (``n`` is the reader's hint, unused: the thread
        decompresses a chunk at a time)."""
        with self._cv:
            while not self._ready and not self._finished and not self._stopped:
                self._cv.wait()
            if self._ready:
                out = self._ready.popleft()
                self._held -= len(out)
                self._cv.notify_all()
                return out
            if self._error is not None:
                raise self._error
            return b""

    def stop(self) -> None:
        """Stop the thread (once it has finished its current chunk) and
        let the decompressor and what it queued go."""
        with self._cv:
            self._stopped = True
            self._ready.clear()
            self._held = 0
            self._cv.notify_all()
        self._thread.join()
        self._produce = _nothing

    def running(self) -> bool:
        return self._thread.is_alive()


# xz (tukaani.org/xz/xz-file-format.txt): filter IDs of the x86 BCJ
# filter and of LZMA2, as Linux's scripts/xz_wrap.sh writes x86 images.
_XZ_X86, _XZ_LZMA2 = 0x04, 0x21


def _xz_vli(data: bytes, at: int) -> tuple[int, int]:
    """A variable-length integer of the xz format at ``at``: (value, next)."""
    value = 0
    for i in range(9):
        if at + i >= len(data):
            raise ValueError("truncated")
        b = data[at + i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value, at + i + 1
    raise ValueError("too long")


def _xz_single_block(blob: bytes | memoryview) -> tuple[int, list[dict[str, int]]] | None:
    """Where the compressed data of an xz stream of one block with the x86
    BCJ and LZMA2 filters (the kernel's) starts, and its filter chain for
    a raw decoder; None for any other xz stream.  Read as far as the
    kallsyms tables, the stream never reaches its block's check (CRC32 or
    CRC64), which an xz decoder computes over every byte it outputs (~3% of
    decompressing bookworm's kallsyms): the raw decoder skips it.  The
    appended size (le32) follows the stream."""
    try:
        head = bytes(blob[:64])
        tail = bytes(blob[-4 - 12: -4])  # the stream footer, before the size
        if head[:6] != b"\xfd7zXZ\x00" or tail[10:12] != b"YZ" or tail[8:10] != head[6:8] \
                or zlib.crc32(head[6:8]) != int.from_bytes(head[8:12], "little"):
            return None
        index_size = (int.from_bytes(tail[4:8], "little") + 1) * 4
        index_at = len(blob) - 4 - 12 - index_size
        if index_at < 12:
            return None
        index = bytes(blob[index_at: index_at + index_size])
        records, _ = _xz_vli(index, 1)
        if index[0] != 0 or records != 1:
            return None
        size = (head[12] + 1) * 4  # the block header's
        flags = head[13]
        if head[12] == 0 or size + 12 > len(head) or flags & 0x3C \
                or zlib.crc32(head[12: 12 + size - 4]) != int.from_bytes(
                    head[12 + size - 4: 12 + size], "little"):
            return None  # (its own header damaged: the xz decoder says so)
        at = 14
        if flags & 0x40:
            _, at = _xz_vli(head, at)
        if flags & 0x80:
            _, at = _xz_vli(head, at)
        ids = []
        props = b""
        for _ in range((flags & 3) + 1):
            fid, at = _xz_vli(head, at)
            psize, at = _xz_vli(head, at)
            props = head[at: at + psize]
            at += psize
            ids.append((fid, psize))
        if ids not in ([(_XZ_LZMA2, 1)], [(_XZ_X86, 0), (_XZ_LZMA2, 1)]) or at > 12 + size - 4:
            return None
        d = props[0]
        if d > 40:
            return None
        dict_size = 0xFFFFFFFF if d == 40 else (2 | (d & 1)) << (d // 2 + 11)
    except ValueError:
        return None
    chain = [{"id": lzma.FILTER_X86}] if len(ids) == 2 else []
    return 12 + size, [*chain, {"id": lzma.FILTER_LZMA2, "dict_size": dict_size}]


_LZ4_LEGACY_BLOCK = 8 << 20  # lz4's legacy format: blocks of 8 MB uncompressed


def bzimage_payload(image: bytes | memoryview) -> tuple[int, int] | None:
    """(offset, length) of a bzImage's compressed payload, from its header."""
    if len(image) < 0x250 or bytes(image[0x202:0x206]) != b"HdrS":
        return None
    (proto,) = struct.unpack_from("<H", image, 0x206)
    if proto < 0x0208:
        return None
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length == 0 or start + length > len(image):
        return (start, -1)  # a bzImage whose payload goes past its end
    return start, length


_DECOMPRESS_ERRORS = (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError, RuntimeError)


def open_image(image: bytes | memoryview, source: str, *,
               partial: bool = False) -> tuple[VmlinuxStream, str]:
    """The vmlinux in ``image`` as a stream, and how it was stored
    ("vmlinux", "bzImage, xz", ...).  ``partial``: the caller reads only a
    part of it, so the payload's own checksum (checked at its end) is not
    computed where it can be skipped."""
    head = bytes(image[:8])
    if head[:4] == b"\x7fELF":
        return VmlinuxStream(source, "vmlinux", image), "vmlinux"
    found = bzimage_payload(image)
    if found is not None:
        start, length = found
        if length < 0:
            raise ImageError(f"{source}: bzImage whose payload goes past the end of the file "
                             "(truncated image)")
        blob = image[start: start + length]
        kind = next((k for k, m in _MAGICS if bytes(blob[:8]).startswith(m)), None)
        if kind is None:
            raise ImageError(f"{source}: bzImage payload in an unknown compression "
                             f"(starts {bytes(blob[:4]).hex()}); klpsym reads gzip, xz, lzma, "
                             "bzip2, zstd and lz4")
        return VmlinuxStream(source, kind, blob, partial=partial), f"bzImage, {kind}"
    for kind, magic in _MAGICS:
        if head.startswith(magic):  # a bare compressed vmlinux (vmlinux.gz, ...)
            return VmlinuxStream(source, kind, image, partial=partial), kind
    raise ImageError(f"{source}: not a kernel image (no bzImage header, no ELF vmlinux, "
                     "no compressed vmlinux)")


# -- the ELF --------------------------------------------------------------------


def load_segments(stream: VmlinuxStream) -> list[tuple[int, int, int]]:
    """(file offset, size, address) of the ELF's PT_LOAD segments, from the
    program headers at its start (the section table is at the end)."""
    import numpy as np

    from klpsym.elf.constants import EI, ELF_MAGIC, EM, PT, ElfClass, ElfData
    from klpsym.elf.layout import layout_for
    from klpsym.elf.segments import read_program_headers

    src = stream.source
    ehdr_type = layout_for(ElfClass.ELF64, ElfData.LSB).ehdr
    stream.ensure(ehdr_type.itemsize)
    elf = bytes(stream.buf[: ehdr_type.itemsize])
    if len(elf) < ehdr_type.itemsize or elf[:4] != ELF_MAGIC:
        raise ImageError(f"{src}: the vmlinux inside is truncated (no ELF header)")
    if elf[EI.CLASS] != ElfClass.ELF64 or elf[EI.DATA] != ElfData.LSB:
        raise ImageError(f"{src}: vmlinux is not a 64-bit little-endian ELF; klpsym reads "
                         "x86-64 kernel images")
    ehdr = np.frombuffer(elf, dtype=ehdr_type, count=1)[0]
    if int(ehdr["e_machine"]) != EM.X86_64:
        raise ImageError(f"{src}: vmlinux is for ELF machine {int(ehdr['e_machine'])}, not "
                         "x86-64; klpsym reads x86-64 kernel images")
    end = int(ehdr["e_phoff"]) + int(ehdr["e_phentsize"]) * int(ehdr["e_phnum"])
    if int(ehdr["e_phnum"]) == 0 or not stream.ensure(end):
        raise ImageError(f"{src}: vmlinux has no program headers (truncated?)")
    found = read_program_headers(io.BytesIO(bytes(stream.buf[:end])))
    if found is None or len(found.headers) < int(ehdr["e_phnum"]):
        raise ImageError(f"{src}: vmlinux has no program headers (truncated?)")
    out = [(int(ph["p_offset"]), int(ph["p_filesz"]), int(ph["p_vaddr"]))
           for ph in found.headers if int(ph["p_type"]) == PT.LOAD and int(ph["p_filesz"])]
    if not out:
        raise ImageError(f"{src}: vmlinux has no loadable segment")
    return out


def read_vmlinux(image: bytes | memoryview, source: str) -> bytes:
    """The whole vmlinux ELF in ``image`` (the lab boots it through its PVH
    entry); ImageError when there is none or it does not decompress."""
    from klpsym.elf.constants import ELF_MAGIC

    stream, _how = open_image(image, source)
    if stream.kind == "vmlinux":
        return bytes(image)
    stream.ensure(stream.expected if stream.expected else 1 << 40)
    out = bytes(stream.buf)
    if out[:4] != ELF_MAGIC:
        raise ImageError(f"{source}: its {stream.kind} payload is not an ELF vmlinux")
    return out


#: The compressions a vmlinux may be stored in, with their magic numbers.
MAGICS = _MAGICS


# -- decompressing ahead -----------------------------------------------------------


class Prefetched:
    """A kernel image mapped, its vmlinux being decompressed ahead in a
    thread (:func:`prefetch`)."""

    def __init__(self, identity: tuple[int, ...], mapped: mmap.mmap, view: memoryview,
                 stream: VmlinuxStream, how: str) -> None:
        self.identity = identity
        self.stream, self.how = stream, how
        self._mapped, self._view = mapped, view

    def close(self) -> None:
        """Stop the thread and unmap the image."""
        self.stream.close()
        try:
            self._view.release()
            self._mapped.close()
        except BufferError:  # slices still held by an error's traceback: the GC closes it
            pass


_PREFETCHED: dict[str, Prefetched] = {}

# The compressions worth a thread: those whose decoding up to the kallsyms
# tables outlasts the imports it overlaps (bookworm's xz: ~0.35 s, first
# run 0.54 -> 0.47 s wall).  zstd and lz4 decode it in a fraction of that,
# and the thread's hand-overs cost more than it saves (trixie and sid,
# zstd: first run +0.005/+0.02 s wall, +17/+20 MB peak), as decoding
# nothing (a plain vmlinux) would.
_AHEAD_KINDS = ("gzip", "xz", "lzma", "bzip2")


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def prefetch(path: Path | str) -> None:
    """Start decompressing the image at ``path`` in a background thread,
    for :func:`take_prefetched` (kernel.image.read_image_kallsyms): a
    command line that knows its image calls this before its imports (numpy's
    and the readers', ~0.1 s) and they run while the thread decompresses.
    Nothing happens for a file that cannot be opened, is not a compressed
    image, or whose decompressor is missing (the reader says why, as
    without this), nor for a payload that decodes fast (zstd, lz4; see
    _AHEAD_KINDS)."""
    source = str(path)
    if source in _PREFETCHED:
        return
    try:
        with open(path, "rb") as f:
            identity = _identity(os.fstat(f.fileno()))
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return
    view = memoryview(mapped)
    found = bzimage_payload(view)
    payload = view[found[0]: found[0] + found[1]] if found is not None and found[1] > 0 \
        else view
    head = bytes(payload[:8])
    del payload
    stream = None
    if any(head.startswith(m) for k, m in _MAGICS if k in _AHEAD_KINDS):
        try:
            stream, how = open_image(view, source, partial=True)
        except Exception:  # the reader opens it again and reports it
            stream = None
    if stream is None or stream.kind not in _AHEAD_KINDS:
        del stream
        try:
            view.release()
            mapped.close()
        except BufferError:
            pass
        return
    stream.decompress_ahead()
    _PREFETCHED[source] = Prefetched(identity, mapped, view, stream, how)


def take_prefetched(path: Path | str) -> Prefetched | None:
    """The image :func:`prefetch` started on for ``path`` (the same path),
    if the file is still the one it mapped; the caller closes it."""
    found = _PREFETCHED.pop(str(path), None)
    if found is None:
        return None
    try:
        same = _identity(os.stat(path)) == found.identity
    except OSError:
        same = False
    if not same:
        found.close()
        return None
    return found


def prefetching(path: Path | str) -> bool:
    """Whether :func:`prefetch` runs a thread for ``path``."""
    return str(path) in _PREFETCHED


def cancel_prefetches() -> None:
    """Stop every prefetch no reader took (the command ended before, or
    read the image's kallsyms from the symbol cache)."""
    while _PREFETCHED:
        _PREFETCHED.popitem()[1].close()
