"""Cut the uncompressed vmlinux ELF out of an x86 bzImage (vmlinuz).

Does what the kernel's ``scripts/extract-vmlinux`` does, but reads the payload
position from the bzImage header instead of guessing: since boot protocol 2.08
(Linux 2.6.26) ``payload_offset``/``payload_length`` at 0x248/0x24c give the
compressed vmlinux inside the protected-mode part (Documentation/x86/boot.rst).
A magic-number scan is kept as the fallback for odd images.

The vmlinux is booted directly through its PVH entry (the Xen ELF note
``XEN_ELFNOTE_PHYS32_ENTRY``, CONFIG_PVH, Linux 4.21+), which QEMU supports
with ``-kernel vmlinux``: no decompressor, no KASLR, so the running kernel's
addresses are the link-time ones.
"""

from __future__ import annotations

import bz2
import lzma
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

from klpsym.elf.constants import ElfData
from klpsym.elf.segments import read_program_headers, segment_notes
from klpsym.errors import LabError

XEN_ELFNOTE_PHYS32_ENTRY = 18  # include/xen/interface/elfnote.h

# (name, magic) as in scripts/extract-vmlinux; order = preference when scanning.
_MAGICS: tuple[tuple[str, bytes], ...] = (
    ("xz", b"\xfd7zXZ\x00"),
    ("gzip", b"\x1f\x8b\x08"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00\x00"),
    ("lz4", b"\x02\x21\x4c\x18"),
    ("lzo", b"\x89\x4c\x5a"),
)


def _decompress(kind: str, data: bytes) -> bytes:
    """Decompress one stream, ignoring trailing bytes (the kernel appends the size)."""
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if kind == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    if kind == "bzip2":
        return bz2.BZ2Decompressor().decompress(data)
    if kind == "zstd":
        if shutil.which("zstd") is None:
            raise LabError("vmlinuz is zstd-compressed but 'zstd' is missing; apt-get install zstd")
        proc = subprocess.run(
            ["zstd", "-dcq"], input=data, capture_output=True, timeout=300, check=False
        )
        # zstd complains about the trailing size word but has written the frame.
        return proc.stdout
    raise LabError(f"vmlinuz payload is {kind}-compressed, which klpsym cannot decompress")


def _is_elf(blob: bytes) -> bool:
    return blob[:4] == b"\x7fELF"


def _payload(image: bytes) -> tuple[int, int] | None:
    """(offset, length) of the compressed payload from the bzImage header, if any."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        return None
    (version,) = struct.unpack_from("<H", image, 0x206)
    if version < 0x0208:
        return None
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length == 0 or start + length > len(image):
        return None
    return start, length


def decompress_vmlinuz(image: bytes) -> bytes:
    """The vmlinux ELF inside a bzImage; LabError if none is found."""
    found = _payload(image)
    if found is not None:
        start, length = found
        blob = image[start : start + length]
        for kind, magic in _MAGICS:
            if blob.startswith(magic):
                try:
                    out = _decompress(kind, blob)
                except (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError):
                    break
                if _is_elf(out):
                    return out
                break
    # Fallback: scan for every magic like scripts/extract-vmlinux.
    for kind, magic in _MAGICS:
        pos = image.find(magic)
        while pos >= 0:
            try:
                out = _decompress(kind, image[pos:])
            except (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError, LabError):
                out = b""
            if _is_elf(out):
                return out
            pos = image.find(magic, pos + 1)
    raise LabError("no compressed vmlinux found in the vmlinuz; is it an x86 bzImage?")


def extract_vmlinux(vmlinuz: Path, dest: Path) -> Path:
    """Write the uncompressed vmlinux of ``vmlinuz`` to ``dest`` (atomically)."""
    try:
        image = vmlinuz.read_bytes()
    except OSError as exc:
        raise LabError(f"cannot read {vmlinuz}: {exc.strerror}") from None
    out = decompress_vmlinuz(image)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(out)
    os.replace(tmp, dest)
    return dest


def pvh_entry(vmlinux: Path) -> int | None:
    """The PVH 32-bit entry point from the ELF notes of ``vmlinux``, or None."""
    with vmlinux.open("rb") as f:
        found = read_program_headers(f)
        if found is None or found.layout.data != ElfData.LSB:
            return None  # only ELF64 little-endian (x86-64) is bootable here
        for note in segment_notes(f, found):
            if note.name == b"Xen" and note.type == XEN_ELFNOTE_PHYS32_ENTRY \
                    and len(note.desc) >= 4:
                value: int = int.from_bytes(note.desc[:8], "little")
                return value
    return None
