"""The ELF layer on every module of Debian bookworm's current kernel."""

from __future__ import annotations

import time
from pathlib import Path

from klpsym.elf import ElfFile
from klpsym.lab.provision import Kernel
from klpsym.module.ko import read_module


def _modules(kernel: Kernel) -> list[Path]:
    mods = sorted(kernel.modules_dir.rglob("*.ko"))
    assert len(mods) > 3000, f"expected Debian's 4000+ modules under {kernel.modules_dir}"
    return mods


def test_noop_rewrite_is_byte_identical_for_every_module(bookworm: Kernel) -> None:
    """Read each module (tables parsed, so they are re-encoded rather than
    copied) and write it back: the ELF part must be identical to the byte,
    and the signature is what Debian signed."""
    start = time.monotonic()
    mods = _modules(bookworm)
    differ = []
    signed = 0
    for path in mods:
        m = read_module(path)
        signed += m.signature is not None
        elf = m.elf
        elf.parse_tables()
        if elf.to_bytes() != m.elf_bytes:
            differ.append(path.name)
    assert not differ, f"{len(differ)} modules differ after a no-op rewrite: {differ[:10]}"
    assert signed == len(mods)  # Debian signs every module
    print(f"{len(mods)} modules rewritten identically in {time.monotonic() - start:.1f}s")


def test_amdgpu_largest_module(bookworm: Kernel) -> None:
    path = next(bookworm.modules_dir.rglob("amdgpu.ko"))
    m = read_module(path)
    relocs = sum(len(m.elf.rela(s)) for s in m.elf.rela_sections())
    assert relocs > 250_000  # ~320k: the scale the ELF layer has to handle
    assert len(m.elf.symtab.undefined()) > 900
    assert m.elf.to_bytes() == m.elf_bytes
    again = ElfFile.from_bytes(m.elf.to_bytes())
    assert again.symtab.names() == m.elf.symtab.names()
