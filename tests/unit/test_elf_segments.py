"""klpsym.elf.segments: program headers and notes of an executable (used by
the lab to tell a static busybox and to find vmlinux's PVH entry)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from klpsym.elf.constants import PT, ElfData
from klpsym.elf.segments import has_interpreter, read_program_headers, segment_notes


def _note(order: str, name: bytes, ntype: int, desc: bytes) -> bytes:
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack(order + "III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def _executable(order: str, segments: list[tuple[int, bytes]], phentsize: int = 56) -> bytes:
    """An ELF64 executable of byte order ``order`` with one segment per
    (p_type, content), the program headers right after the ELF header."""
    data = 1 if order == "<" else 2
    phoff = 64
    body_at = phoff + phentsize * len(segments)
    ident = b"\x7fELF" + bytes([2, data, 1]) + bytes(9)
    ehdr = ident + struct.pack(order + "HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64,
                               phentsize, len(segments), 64, 0, 0)
    phdrs, body = b"", b""
    for p_type, content in segments:
        phdrs += struct.pack(order + "IIQQQQQQ", p_type, 4, body_at + len(body), 0, 0,
                             len(content), len(content), 4).ljust(phentsize, b"\0")
        body += content
    return ehdr + phdrs + body


@pytest.mark.parametrize("order", ["<", ">"])
def test_program_headers_and_notes(tmp_path: Path, order: str) -> None:
    notes = _note(order, b"GNU", 3, b"\x01\x02\x03\x04\x05") + _note(order, b"Xen", 18,
                                                                   b"\x00\x10\x00\x01")
    p = tmp_path / "exe"
    p.write_bytes(_executable(order, [(PT.LOAD, b"code"), (PT.NOTE, notes)], phentsize=64))
    with p.open("rb") as f:
        found = read_program_headers(f)
        assert found is not None
        assert found.layout.data == (ElfData.LSB if order == "<" else ElfData.MSB)
        assert found.headers["p_type"].tolist() == [PT.LOAD, PT.NOTE]
        assert not has_interpreter(found)
        got = [(n.name, n.type, n.desc) for n in segment_notes(f, found)]
    assert got == [(b"GNU", 3, b"\x01\x02\x03\x04\x05"), (b"Xen", 18, b"\x00\x10\x00\x01")]


def test_interpreter_and_non_elf(tmp_path: Path) -> None:
    p = tmp_path / "dyn"
    p.write_bytes(_executable("<", [(PT.INTERP, b"/lib/ld.so\0"), (PT.LOAD, b"x")]))
    with p.open("rb") as f:
        found = read_program_headers(f)
    assert found is not None and has_interpreter(found)
    # a file too short for all of its headers: the entries that fit
    p.write_bytes(p.read_bytes()[:64 + 56 + 20])
    with p.open("rb") as f:
        found = read_program_headers(f)
    assert found is not None and found.headers["p_type"].tolist() == [PT.INTERP]
    for content in (b"", b"\x7fELF", b"\x7fELF\x01\x01" + bytes(58), b"#!/bin/sh\n" * 10):
        p.write_bytes(content)
        with p.open("rb") as f:
            assert read_program_headers(f) is None, content


def test_lab_uses_it() -> None:
    """The lab's two readers of program headers (busybox's, vmlinux's) are
    this module's: a static executable is one without PT_INTERP."""
    import shutil

    from klpsym.lab.qemu import _is_static

    python = Path(shutil.which("python3") or "/usr/bin/python3").resolve()
    assert not _is_static(python)  # Debian's python3 is dynamically linked
    busybox = shutil.which("busybox")
    if busybox is not None:
        assert _is_static(Path(busybox))  # busybox-static, which the lab boots
