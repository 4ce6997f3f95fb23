"""module.versions against kmod's own reader, on the lab's real bookworm modules."""

from __future__ import annotations

from klpsym.lab.provision import Kernel
from klpsym.module.versions import (
    read_versions,
)


def test_matches_modprobe_dump_modversions(bookworm: Kernel) -> None:
    """Cross-check with kmod's own reader on real modules (the lab's bookworm
    kernel, provisioned by the session fixture)."""
    import subprocess

    from klpsym.module.ko import read_module

    mods = sorted(bookworm.modules_dir.glob("kernel/net/*/*.ko"))[:40]
    assert len(mods) >= 20, f"only {len(mods)} modules under {bookworm.modules_dir}/kernel/net"
    for path in mods:
        out = subprocess.run(["modprobe", "--dump-modversions", str(path)], check=True,
                             capture_output=True, text=True).stdout
        theirs = [(int(c, 16), n) for c, n in (line.split("\t") for line in out.splitlines())]
        ours = [(e.crc, e.name) for e in read_versions(read_module(path).elf).entries]
        assert theirs and ours == theirs, path


