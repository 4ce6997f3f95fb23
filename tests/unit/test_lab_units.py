"""Lab helpers that need no kernel: cpio archives and vmlinuz payload extraction."""

from __future__ import annotations

import gzip
import lzma
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from klpsym.errors import LabError
from klpsym.lab.cpio import CpioWriter
from klpsym.lab.vmlinux import decompress_vmlinuz

FAKE_ELF = b"\x7fELF" + bytes(range(256)) * 64


def _bzimage(payload: bytes, setup_sects: int = 4) -> bytes:
    """A minimal bzImage: boot header 2.15 pointing at ``payload``."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    offset = 100
    struct.pack_into("<II", setup, 0x248, offset, len(payload))
    return bytes(setup) + b"\0" * offset + payload + struct.pack("<I", len(FAKE_ELF))


@pytest.mark.parametrize(
    "compress",
    [
        lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
        lambda b: gzip.compress(b),
        # the kernel's lzma streams use a 2^n dictionary >= 16 MiB: magic 5d 00 00 00
        lambda b: lzma.compress(
            b, format=lzma.FORMAT_ALONE, filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 24}]
        ),
    ],
    ids=["xz", "gzip", "lzma"],
)
def test_decompress_vmlinuz(compress: Callable[[bytes], bytes]) -> None:
    blob = compress(FAKE_ELF)
    assert decompress_vmlinuz(_bzimage(blob)) == FAKE_ELF
    # Without a usable header the magic scan (scripts/extract-vmlinux style) finds it.
    assert decompress_vmlinuz(b"junk" * 100 + blob + b"\0" * 8) == FAKE_ELF


def test_decompress_vmlinuz_rejects_garbage() -> None:
    with pytest.raises(LabError, match="no compressed vmlinux"):
        decompress_vmlinuz(b"\0" * 4096)


def _parse(archive: bytes) -> list[tuple[str, int, bytes]]:
    out: list[tuple[str, int, bytes]] = []
    pos = 0
    while True:
        assert archive[pos : pos + 6] == b"070701"
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize, mode = fields[11], fields[6], fields[1]
        pos += 110
        name = archive[pos : pos + namesize - 1].decode()
        pos = (pos + namesize + 3) & ~3
        data = archive[pos : pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            assert pos == len(archive)
            return out
        out.append((name, mode, data))


def test_cpio_newc(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.ko").write_bytes(b"abc")
    w = CpioWriter()
    w.file("init", b"#!/bin/sh\n", 0o755)
    w.add_path("lab/mods", tmp_path / "d")
    w.chardev("dev/console", 5, 1)
    entries = _parse(bytes(w))
    names = [name for name, _mode, _data in entries]
    assert names == ["init", "lab", "lab/mods", "lab/mods/x.ko", "dev", "dev/console"]
    assert entries[0][1] == 0o100755 and entries[0][2] == b"#!/bin/sh\n"
    assert entries[3][2] == b"abc"
    assert entries[5][1] == 0o020600
    first = bytes(w)
    assert bytes(w) == first  # reproducible, trailer not accumulated


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x", "a/../../b"])
def test_cpio_rejects_escaping_paths(bad: str) -> None:
    with pytest.raises(LabError, match="bad guest path"):
        CpioWriter().file(bad, b"")
