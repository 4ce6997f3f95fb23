"""README's first command, ``examples/demo``, end to end: it builds
examples/hello_klp against bookworm's current headers, converts it and boots
that kernel in QEMU, where the module as built is refused and the converted
one loads and reports OK."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from klpsym.lab.provision import Kernel

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_boots_the_provisioned_kernel_and_reports_ok(
        bookworm: Kernel, tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.run(
        [str(REPO / "examples" / "demo")], cwd=tmp_path,
        env={**os.environ, "KLPSYM_DEMO_DIR": str(work)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1200, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    # the kernel the suite provisioned, not one the demo found on its own
    assert f"kernel {bookworm.release} ({bookworm.package_version})" in out
    assert f"KDIR={bookworm.kernel_dir}" in out
    refused, converted = out.split("$ insmod hello_klp.klp.ko")
    assert "hello_klp: Unknown symbol kallsyms_lookup_name" in refused
    assert "klptest hello: result=OK" in converted
    assert "hello_klp is loaded (lsmod)" in converted
    assert "OK: the unmodified kernel resolved kallsyms_lookup_name" in out
    klp = work / "hello_klp" / "hello_klp.klp.ko"
    assert klp.is_file() and b".klp.rela.vmlinux." in klp.read_bytes()
