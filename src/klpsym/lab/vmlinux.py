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

from pathlib import Path

from klpsym.elf.constants import ElfData
from klpsym.elf.segments import read_program_headers, segment_notes
from klpsym.errors import LabError
from klpsym.fsutil import atomic_write
from klpsym.kernel.vmlinuz import MAGICS, ImageError, read_vmlinux

XEN_ELFNOTE_PHYS32_ENTRY = 18  # include/xen/interface/elfnote.h

def decompress_vmlinuz(image: bytes) -> bytes:
    """The vmlinux ELF inside a bzImage (read by :mod:`klpsym.kernel.vmlinuz`,
    which the image symbol source uses too); LabError if none is found."""
    try:
        return read_vmlinux(image, "vmlinuz")
    except ImageError:
        pass
    # Fallback: scan for every magic like scripts/extract-vmlinux.
    for _kind, magic in MAGICS:
        pos = image.find(magic)
        while pos >= 0:
            try:
                return read_vmlinux(image[pos:], "vmlinuz")
            except ImageError:
                pos = image.find(magic, pos + 1)
    raise LabError("no compressed vmlinux found in the vmlinuz; is it an x86 bzImage?")


def extract_vmlinux(vmlinuz: Path, dest: Path) -> Path:
    """Write the uncompressed vmlinux of ``vmlinuz`` to ``dest`` (atomically)."""
    try:
        image = vmlinuz.read_bytes()
    except OSError as exc:
        raise LabError(f"cannot read {vmlinuz}: {exc.strerror}") from None
    out = decompress_vmlinuz(image)
    atomic_write(dest, out)
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
