"""Other Debian suites than the host's: trixie (6.12) and sid (7.x), through a
private apt under the cache, built in a debootstrap chroot of the suite, booted."""

from __future__ import annotations

import filecmp
import time
from pathlib import Path

import pytest

from klpsym.lab.build import build_modules
from klpsym.lab.provision import APT_LISTS, Kernel, provision
from klpsym.lab.qemu import boot, capture_kallsyms
from klpsym.lab.vmlinux import pvh_entry

CALL_FUNC = Path(__file__).parent.parent / "modules" / "call_func"
SUITES = ["trixie", "sid"]


@pytest.fixture(params=SUITES)
def kernel(request: pytest.FixtureRequest) -> Kernel:
    k: Kernel = request.getfixturevalue(request.param)
    return k


def test_provision_is_idempotent_and_leaves_host_apt_alone(kernel: Kernel) -> None:
    cache = kernel.home.parent.parent.parent
    before = sorted((p.name, p.stat().st_mtime) for p in APT_LISTS.glob("*"))
    start = time.monotonic()
    again = provision(kernel.suite, cache)
    assert time.monotonic() - start < 2.0
    assert again == kernel
    assert sorted((p.name, p.stat().st_mtime) for p in APT_LISTS.glob("*")) == before
    assert (cache / "apt" / kernel.suite / "sources.list").is_file()


def test_tree_and_chroot(kernel: Kernel) -> None:
    assert kernel.suite in SUITES
    assert kernel.release.endswith("-amd64")
    for path in (kernel.vmlinuz, kernel.vmlinux, kernel.config, kernel.system_map):
        assert path.is_file(), path
    assert (kernel.modules_dir / "modules.dep").is_file()
    assert kernel.compiler.startswith("gcc-") and kernel.compiler != "gcc-12"
    assert "/usr/src" not in (kernel.kernel_dir / "Makefile").read_text()
    assert pvh_entry(kernel.vmlinux) is not None
    assert kernel.chroot is not None
    assert (kernel.chroot / "usr" / "bin" / kernel.compiler).exists()
    inside = kernel.chroot / kernel.chroot_kernel_dir.relative_to("/")
    assert filecmp.cmp(inside / "Module.symvers", kernel.kernel_dir / "Module.symvers")


def test_build_call_func_in_chroot(kernel: Kernel, tmp_path: Path) -> None:
    kos = build_modules(kernel, CALL_FUNC, tmp_path / "out")
    assert kos == [tmp_path / "out" / "call_func.ko"]
    blob = kos[0].read_bytes()
    assert blob[:4] == b"\x7fELF"
    assert f"vermagic={kernel.release} ".encode() in blob
    assert kernel.chroot is not None
    # built in place through a bind mount that vanished with make's mount namespace
    assert (tmp_path / "out" / "call_func.o").is_file()
    assert not any((kernel.chroot / "klpsym" / "host").iterdir())
    assert not [ln for ln in Path("/proc/self/mounts").read_text().splitlines()
                if str(kernel.chroot) in ln]


def test_boot_and_kallsyms(kernel: Kernel) -> None:
    result = boot(kernel, {}, "uname -r", timeout=120)
    assert result.output.split() == [kernel.release]
    lines = capture_kallsyms(kernel).read_text().splitlines()
    assert len(lines) > 50_000
    assert any(line.endswith(" T _stext") for line in lines)


def test_kaslr_boot_moves_the_kernel(kernel: Kernel) -> None:
    result = boot(kernel, {}, "grep ' _stext$' /proc/kallsyms", timeout=120, kaslr=True)
    assert result.exit_status == 0, result.output
    address = int(result.output.split()[0], 16)
    if address == 0xFFFFFFFF81000000:
        pytest.skip("boot fact: KASLR picked the link-time address this boot (about 1 boot in 500)")
    assert (address - 0xFFFFFFFF81000000) % 0x200000 == 0, f"{address:#x}: not a KASLR slot"
