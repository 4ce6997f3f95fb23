"""The DKMS upgrade, end to end: a second kernel arrives as packages and
dkms builds the example for it with no flags, klpsym taking its symbols
from the kernel's own image.

The bookworm machine is a cached minimal debootstrap (klpsym.lab.machine),
used through a throwaway overlay in a private mount namespace, so that the
host's boot configuration, dpkg database and /lib/modules never change.  In
it: Debian's dkms, klpsym (from this checkout, on Debian's python3 and its
numpy, rich, zstandard and lz4), and the machine's own kernel R0, the lab's
bookworm amd64 one, installed from its packages (image and headers; in the
chroot uname still names the host's kernel, so R0 is the kernel this
machine would boot).  The example is registered with ``dkms add``
(AUTOINSTALL=yes) and installed for R0 with ``dkms install -k R0``.  Then
``dpkg -i`` of the packages of bookworm's current cloud-amd64 kernel R, the
flavour beside R0, as apt would install them: image, headers, their common
headers, kbuild; no -dbg, and Debian's System.map is a placeholder.  Their postinst
scripts run /etc/kernel/header_postinst.d and postinst.d, whose dkms hook
runs ``dkms autoinstall`` for R: that builds the module (MAKE is ``klpsym
build``, with nothing in $KLPSYM_FLAGS), klpsym reads R's symbols from
/boot/vmlinuz-R, and dkms signs and installs it for R.  R is then booted
in QEMU with KASLR from the image dpkg installed, and the module dkms
installed loads there and prints the addresses of that boot's /proc/kallsyms.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from dkms_support import (
    EXAMPLE,
    MODULE,
    NAME,
    VERSION,
    boot_and_load,
    check_converted,
    check_loaded,
)

import klpsym
from klpsym.lab.machine import kernel_debs, machine, run_in, upper
from klpsym.lab.provision import Kernel, default_cache_dir, provision
from klpsym.lab.qemu import BootError, BootResult
from klpsym.module.signature import MODULE_SIG_STRING

FLAVOUR = "cloud-amd64"
# In the machine besides what the kernel's packages need: dkms, and what
# klpsym runs on (pyproject.toml's dependencies; python3-zstandard needs the
# cffi backend, which debootstrap does not find through its virtual name).
PACKAGES = ("dkms", "openssl", "python3", "python3-numpy", "python3-rich",
            "python3-zstandard", "python3-lz4", "python3-cffi-backend")
OUT = "/klpsym/out"
SCRATCH = "klpsym-dkms-upgrade-"

# Each step's output and status go to /klpsym/out/<step>.log and .rc.
SCRIPT = """R=@RELEASE@
R0=@RELEASE0@
out=@OUT@
step() {
    name=$1; shift; start=$(date +%s.%N)
    "$@" >"$out/$name.log" 2>&1; echo $? >"$out/$name.rc"
    echo "$name $start $(date +%s.%N)" >>"$out/times"
}
step klpsym klpsym --version
step dpkg0 sh -c 'dpkg -i /klpsym/debs0/*.deb'
step add dkms add @NAME@/@VERSION@
step install0 dkms install @NAME@/@VERSION@ -k "$R0"
step dpkg sh -c 'dpkg -i /klpsym/debs/*.deb'
step status dkms status
step packages dpkg-query -W -f '${Package} ${Version} ${Status}\\n' 'linux-*' '*-dbg'
step uname uname -r
cp "/lib/modules/$R/updates/dkms/@MODULE@.ko" "$out/" || true
cp /var/lib/dkms/@NAME@/@VERSION@/"$R"/*/log/make.log "$out/" || true
mkdir "$out/r0"
cp "/lib/modules/$R0/updates/dkms/@MODULE@.ko" "$out/r0/" || true
cp /var/lib/dkms/@NAME@/@VERSION@/"$R0"/*/log/make.log "$out/r0/" || true
cp "/boot/vmlinuz-$R" "$out/" || true
head -c 4096 "/boot/System.map-$R" >"$out/System.map" || true
find /usr/lib/debug -type f >"$out/debug" 2>/dev/null || true
"""


@dataclass
class Upgrade:
    kernel: Kernel  # R, as the lab provisioned it
    kernel0: Kernel  # R0, the machine's own
    out: Path  # the machine's /klpsym/out, after the script

    def log(self, step: str) -> str:
        return (self.out / f"{step}.log").read_text(errors="replace")

    def ok(self, step: str) -> str:
        rc = (self.out / f"{step}.rc").read_text().strip()
        assert rc == "0", f"{step} exited with {rc}:\n{self.log(step)[-4000:]}"
        return self.log(step)

    @property
    def module(self) -> Path:
        return self.out / f"{MODULE}.ko"

    @property
    def make_log(self) -> str:
        path = self.out / "make.log"
        assert path.is_file(), f"dkms kept no make.log for {self.kernel.release}"
        return path.read_text(errors="replace")


def _prepare(top: Path, kernel: Kernel, kernel0: Kernel) -> None:
    """What the machine holds besides its packages: klpsym (this checkout's
    sources, run by the machine's python3), the example in /usr/src as
    dkms.conf's comment says, and R0's and R's packages."""
    src = top / "klpsym" / "src" / "klpsym"
    shutil.copytree(Path(klpsym.__file__).parent, src,
                    ignore=shutil.ignore_patterns("__pycache__"))
    wrapper = top / "usr" / "local" / "bin" / "klpsym"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text('#!/bin/sh\nPYTHONPATH=/klpsym/src exec python3 -m klpsym "$@"\n')
    wrapper.chmod(0o755)
    shutil.copytree(EXAMPLE, top / "usr" / "src" / f"{NAME}-{VERSION}")
    for name, k in (("debs0", kernel0), ("debs", kernel)):
        debs = top / "klpsym" / name
        debs.mkdir(parents=True)
        for deb in kernel_debs(k, default_cache_dir().expanduser().resolve()):
            shutil.copy(deb, debs / deb.name)
    (top / OUT.lstrip("/")).mkdir(parents=True)


@pytest.fixture(scope="module")
def upgrade() -> Iterator[Upgrade]:
    assert os.geteuid() == 0, "the machine needs root; run as root"
    kernel = provision("bookworm", flavour=FLAVOUR)
    assert kernel.flavour == FLAVOUR and kernel.release.endswith(f"-{FLAVOUR}")
    kernel0 = provision("bookworm")
    assert kernel0.release != kernel.release
    root = machine([kernel0, kernel], PACKAGES)
    script = SCRIPT
    for key, value in (("RELEASE", kernel.release), ("RELEASE0", kernel0.release),
                       ("OUT", OUT), ("NAME", NAME), ("VERSION", VERSION), ("MODULE", MODULE)):
        script = script.replace(f"@{key}@", value)
    # Not /tmp (often a tmpfs, and R's image, modules and initramfs take ~300 MB).
    # A killed run's scratch stays (its mounts do not: they lived in its namespace).
    for stale in Path("/var/tmp").glob(f"{SCRATCH}*"):
        if time.time() - stale.stat().st_mtime > 24 * 3600:
            shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH, dir="/var/tmp"))
    try:
        _prepare(upper(scratch), kernel, kernel0)
        proc = run_in(root, scratch, script)
        assert proc.returncode == 0, f"the machine's script failed:\n{proc.stderr[-3000:]}"
        out = scratch / "out"
        shutil.copytree(upper(scratch) / OUT.lstrip("/"), out)
        for part in ("upper", "work", "merged"):
            shutil.rmtree(scratch / part)
        yield Upgrade(kernel, kernel0, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="module")
def booted(upgrade: Upgrade) -> BootResult:
    """R booted from the image dpkg installed, the module dkms installed loaded."""
    assert upgrade.module.is_file(), "dkms did not install the module for R"
    kernel = replace(upgrade.kernel, vmlinuz=upgrade.out / f"vmlinuz-{upgrade.kernel.release}")
    try:
        return boot_and_load(kernel, upgrade.module)
    except BootError as exc:
        pytest.fail(f"the guest did not finish: {exc}\n{exc.console_tail()}")


def test_r_is_installed_as_packages_without_symbols(upgrade: Upgrade) -> None:
    """The scenario: R is not running, its image and headers are installed
    packages, and nothing else of R has symbols (no -dbg, a placeholder
    System.map)."""
    r = upgrade.kernel.release
    assert upgrade.ok("uname").strip() != r
    packages = [ln.split()[0] for ln in upgrade.log("packages").splitlines()
                if ln.endswith(" install ok installed")]
    for name in (f"linux-image-{r}", f"linux-headers-{r}"):
        assert name in packages, packages
    assert not [p for p in packages if p.endswith("-dbg")], packages
    assert not (upgrade.out / "debug").read_text().strip()  # /usr/lib/debug is empty
    assert "The real System.map is in the linux-image" in (upgrade.out / "System.map").read_text()
    kver = upgrade.ok("klpsym")
    assert kver.startswith("klpsym "), kver


def test_the_module_is_installed_for_the_machines_kernel_first(upgrade: Upgrade) -> None:
    """Before R arrives: R0's packages installed, and ``dkms install -k R0``
    built the module with klpsym (symbols from R0's image, R0 not running
    either), converted, signed and installed it for R0.  After: installed
    for both."""
    r0 = upgrade.kernel0.release
    upgrade.ok("dpkg0")
    install = upgrade.ok("install0")
    assert f"Installing to /lib/modules/{r0}/updates/dkms/" in install, install[-3000:]
    log = (upgrade.out / "r0" / "make.log").read_text(errors="replace")
    assert f"klpsym: built for {r0} (symbols from image /boot/vmlinuz-{r0})" in log, log[-3000:]
    module = upgrade.out / "r0" / f"{MODULE}.ko"
    check_converted(module, r0)
    assert module.read_bytes().endswith(MODULE_SIG_STRING), "dkms did not sign it"
    status = upgrade.ok("status")
    for r in (r0, upgrade.kernel.release):
        assert f"{NAME}/{VERSION}, {r}, x86_64: installed" in status, status


def test_kernel_postinst_runs_dkms_autoinstall(upgrade: Upgrade) -> None:
    """dpkg's output: a kernel postinst hook of dkms ran the autoinstall
    for R, which built the module with dkms.conf's MAKE, nothing in
    $KLPSYM_FLAGS (dkms prints the command, then "..." and a dot every
    few seconds until it ends), and installed it."""
    r = re.escape(upgrade.kernel.release)
    upgrade.ok("add")
    dpkg = upgrade.ok("dpkg")
    assert re.search(
        rf"^/etc/kernel/(header_)?postinst\.d/dkms:\n"
        rf"dkms: running auto installation service for kernel {r}\.\n"
        rf"(.*\n)*?Building module:\n"
        rf"(.*\n)*?klpsym build \. --kernel-dir /lib/modules/{r}/build \.{{3,}}\n"
        rf"(.*\n)*?   - Installing to /lib/modules/{r}/updates/dkms/\n",
        dpkg, re.MULTILINE), dpkg[-4000:]
    status = upgrade.ok("status")
    assert f"{NAME}/{VERSION}, {upgrade.kernel.release}, x86_64: installed" in status, status


def test_make_log_names_the_image_as_symbol_source(upgrade: Upgrade) -> None:
    r = upgrade.kernel.release
    log = upgrade.make_log
    assert f"klpsym: built for {r} (symbols from image /boot/vmlinuz-{r})" in log, log[-3000:]
    notes = [ln for ln in log.splitlines() if ln.startswith("note: ")]
    assert any(f"symbols from /boot/vmlinuz-{r} " in ln for ln in notes), log[-3000:]
    row = next((ln for ln in log.splitlines() if ln.startswith(f"{MODULE}.ko ")), "")
    assert "kallsyms_lookup_name" in row and "kptr_restrict" in row, log[-2000:]


def test_installed_module_is_converted_and_signed(upgrade: Upgrade) -> None:
    assert upgrade.module.is_file(), "dkms did not install the module for R"
    check_converted(upgrade.module, upgrade.kernel.release)
    assert upgrade.module.read_bytes().endswith(MODULE_SIG_STRING), "dkms did not sign it"


def test_module_loads_in_a_kaslr_boot_of_r(upgrade: Upgrade, booted: BootResult) -> None:
    check_loaded(booted, upgrade.kernel.release)
