"""The README's `klpsym check plain_crc.ko` example, run on the lab's bookworm
kernel: the lines it shows are the lines check prints (the kernel's CRC and
headers path taken from the provisioned kernel)."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

from elfbuilder import SHF_ALLOC, simple_module
from klpsym.kernel.symvers import read_symvers
from klpsym.lab.provision import Kernel

README = Path(__file__).parents[2] / "README.md"


def _example() -> tuple[list[str], list[str]]:
    """(the command's words after 'klpsym', the output lines shown)."""
    block = re.search(r"^```\n\$ (klpsym check plain_crc\.ko [^\n]*)\n(.*?)^```",
                      README.read_text(), re.S | re.M)
    assert block is not None, "README has no `klpsym check plain_crc.ko` example"
    return block.group(1).split()[1:], block.group(2).splitlines()


def _plain_crc(kernel: Kernel, dest: Path, crc: int) -> Path:
    """tests/modules/check_plain as built against the kernel, its _printk
    CRC then set to ``crc`` (as tests/vm/test_check_qemu.py makes it)."""
    exports = read_symvers(kernel.kernel_dir / "Module.symvers")
    layout, printk = exports.get("module_layout"), exports.get("_printk")
    assert layout is not None and printk is not None and layout.crc is not None
    b = simple_module(unexported=(), exported=("_printk",))
    b.sections = [s for s in b.sections if s.name != ".modinfo"]
    b.modinfo(license="GPL", name="check_plain",
              vermagic=f"{kernel.release} SMP preempt mod_unload modversions ")
    b.section("__versions", flags=SHF_ALLOC, align=32, data=b"".join(
        struct.pack("<Q", c) + n.encode().ljust(56, b"\0")
        for n, c in (("module_layout", layout.crc), ("_printk", crc))))
    this = bytearray(1024)
    this[24:24 + len("check_plain")] = b"check_plain"
    b.section(".gnu.linkonce.this_module", data=bytes(this), flags=SHF_ALLOC | 1, align=64)
    dest.write_bytes(b.build())
    return dest


def test_readme_check_example(bookworm: Kernel, tmp_path: Path) -> None:
    argv, shown = _example()
    wrong = int(re.search(r"CRC (0x[0-9a-f]+) in the module", "\n".join(shown))  # type: ignore[union-attr]
                .group(1), 16)
    printk = read_symvers(bookworm.kernel_dir / "Module.symvers").get("_printk")
    assert printk is not None and printk.crc is not None
    ko = _plain_crc(bookworm, tmp_path / "plain_crc.ko", wrong)
    kdir = argv.index("--kernel-dir") + 1
    argv[kdir] = str(bookworm.kernel_dir)
    run = subprocess.run([sys.executable, "-m", "klpsym", *argv], cwd=tmp_path,
                         capture_output=True, text=True, check=False, timeout=600)
    assert run.returncode == 1, run.stderr
    printed = run.stdout.splitlines()
    for line in shown:
        if line.strip() == "...":
            continue
        want = re.sub(r"(0x[0-9a-f]{8}) in the kernel", f"{printk.crc:#010x} in the kernel",
                      line)
        assert want in printed, (want, run.stdout)
    assert ko.exists()
