"""--image against reality: the kallsyms read out of Debian's own vmlinuz
(bookworm 6.1 xz, trixie 6.12 zstd, sid 7.x zstd) must equal, entry by
entry, the vmlinux part of the same kernel's /proc/kallsyms, booted without
KASLR (the lab's PVH boot: link-time addresses)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from klpsym.kernel.image import read_image, read_image_kallsyms
from klpsym.kernel.proc_kallsyms import read_proc_kallsyms
from klpsym.kernel.target import discover
from klpsym.kernel.version import read_kernel_version
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms

SUITES = ["bookworm", "trixie", "sid"]


@pytest.mark.parametrize("suite", SUITES)
def test_image_equals_the_booted_kallsyms(suite: str, request: pytest.FixtureRequest) -> None:
    kernel: Kernel = request.getfixturevalue(suite)
    booted = read_proc_kallsyms(capture_kallsyms(kernel), cache=False)
    version = read_kernel_version(kernel.kernel_dir)
    table = read_image_kallsyms(kernel.vmlinuz, version)
    assert len(booted) > 50_000 and booted.has_addresses
    assert len(table) == len(booted)
    assert list(table.names) == list(booted.names)
    assert list(table.types) == list(booted.types)
    assert (table.addresses == booted.addresses).all()
    # ... and so every POS livepatch would count
    dups = booted.duplicated_names()
    assert len(dups) > 500
    assert table.duplicated_names() == dups
    # the uncompressed vmlinux the lab boots holds the same tables
    assert (read_image_kallsyms(kernel.vmlinux, version).addresses == booted.addresses).all()


@pytest.mark.parametrize("suite", SUITES)
def test_kallsyms_command_prints_the_booted_vmlinux_lines(
        suite: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``klpsym kallsyms --image`` prints, byte for byte, the vmlinux lines
    of the booted /proc/kallsyms; the second run comes from the symbol
    cache."""
    kernel: Kernel = request.getfixturevalue(suite)
    lines = [ln for ln in capture_kallsyms(kernel).read_bytes().splitlines(keepends=True)
             if not ln.endswith(b"]\n")]
    cache = tmp_path_factory.mktemp("symcache")
    env = {"KLPSYM_SYMCACHE": str(cache), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "klpsym.cli.main", "kallsyms", "--image", str(kernel.vmlinuz),
           "--kernel-dir", str(kernel.kernel_dir)]
    for _ in range(2):
        proc = subprocess.run(cmd, capture_output=True, env=env, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b"".join(lines)
    assert list(cache.iterdir())


def test_not_running_target_defaults_to_its_image(bookworm: Kernel, tmp_path_factory:
                                                  pytest.TempPathFactory) -> None:
    """discover() for an installed kernel that is not running, with no debug
    package: its /boot/vmlinuz, named in the target line."""
    boot = bookworm.vmlinuz.parent
    t = discover(bookworm.kernel_dir, running_release="0.0.0-not-this-one", boot_dir=boot,
                 debug_dir=tmp_path_factory.mktemp("no_debug"), cache=False)
    assert t.kallsyms_source == f"image {bookworm.vmlinuz}"
    assert f"symbols from image {bookworm.vmlinuz}" in t.describe()
    booted = read_proc_kallsyms(capture_kallsyms(bookworm), cache=False)
    assert list(t.kallsyms.names) == list(booted.names)
    assert read_image(bookworm.vmlinuz, t.version, cache=False).count("jiffies") == 1
