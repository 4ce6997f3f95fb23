"""Copies of a built module with one thing changed, as a loader would see a
module built wrongly: another .modinfo value, a different __versions CRC,
a section renamed away.  Used by the check tests (unit and QEMU)."""

from __future__ import annotations

from pathlib import Path

from klpsym.elf import ElfFile
from klpsym.module.signature import split_signature
from klpsym.module.versions import SymbolVersion, encode_basic, read_versions


def _load(src: Path) -> ElfFile:
    elf_part, _ = split_signature(src.read_bytes(), str(src))  # a signature would no longer fit
    return ElfFile.from_bytes(elf_part, str(src))


def set_modinfo(src: Path, dest: Path, **changes: str | None) -> Path:
    """``dest``: ``src`` with .modinfo ``key=value`` entries replaced (None
    removes every entry of that key; a key not there is added)."""
    elf = _load(src)
    sec = elf.section_by_name(".modinfo")
    assert sec is not None, f"{src} has no .modinfo"
    entries = [e for e in bytes(sec.content()).split(b"\0") if e]
    out, done = [], set()
    for e in entries:
        key = e.split(b"=", 1)[0].decode()
        if key in changes:
            value = changes[key]
            if value is not None and key not in done:
                out.append(f"{key}={value}".encode())
            done.add(key)
        else:
            out.append(e)
    for key, value in changes.items():
        if key not in done and value is not None:
            out.append(f"{key}={value}".encode())
    sec.data = b"".join(e + b"\0" for e in out)
    dest.write_bytes(elf.to_bytes())
    return dest


def set_crc(src: Path, dest: Path, symbol: str, crc: int) -> Path:
    """``dest``: ``src`` with the __versions CRC of ``symbol`` set to ``crc``."""
    elf = _load(src)
    versions = read_versions(elf)
    assert versions.crc(symbol) is not None, f"{src}: no __versions entry for {symbol}"
    sec = elf.section_by_name("__versions")
    assert sec is not None
    sec.data = encode_basic(elf, [SymbolVersion(e.name, crc if e.name == symbol else e.crc)
                                  for e in versions.entries])
    dest.write_bytes(elf.to_bytes())
    return dest


def rename_section(src: Path, dest: Path, old: str, new: str) -> Path:
    elf = _load(src)
    sec = elf.section_by_name(old)
    assert sec is not None, f"{src} has no {old}"
    sec.name = new
    dest.write_bytes(elf.to_bytes())
    return dest
