"""Build chroots: a minimal debootstrap of a suite with the compiler its
kernel's headers call, for suites whose compiler this machine lacks (trixie:
gcc-14, sid: gcc-16), with the kernel's headers hard-linked inside."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from klpsym.errors import LabError
from klpsym.fsutil import atomic_write
from klpsym.lab._run import run
from klpsym.lab.apt import APT_TIMEOUT, DEBIAN_KEYRING, Apt, build_depends, mirror
from klpsym.lab.staging import is_complete, staged_dir
from klpsym.lab.store import CHROOT_KERNELS, LAYOUT, MANIFEST, Kernel

DEBOOTSTRAP_TIMEOUT = 1800.0
LINK_TIMEOUT = 900.0


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (debootstrap mounts /proc, /sys in its target)."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    prefix = str(path)
    points = [ln.split()[1].replace("\\040", " ") for ln in lines if len(ln.split()) > 1]
    return [m for m in points if m == prefix or m.startswith(prefix + "/")]


def remove_tree(path: Path) -> None:
    """rmtree that first unmounts what an interrupted debootstrap left mounted inside."""
    for mount in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], timeout=60, check=False, capture_output=True)
    if _mounts_under(path):
        raise LabError(f"{path} still has mounts inside; unmount them, then delete it")
    shutil.rmtree(path, ignore_errors=True)


def chroots_dir(cache: Path, suite: str) -> Path:
    return cache / f"chroots-v{LAYOUT}" / suite


def chroot_home(cache: Path, suite: str, packages: Sequence[str]) -> Path:
    key = hashlib.sha256(" ".join([suite, *sorted(packages)]).encode()).hexdigest()[:12]
    return chroots_dir(cache, suite) / key


def debootstrap(home: Path, suite: str, packages: Sequence[str], *,
                what: str = "build chroot") -> None:
    """``debootstrap --variant=minbase`` of ``suite`` with ``packages`` into
    ``home``/root (``what`` it is, for the messages)."""
    if is_complete(home):
        return
    if shutil.which("debootstrap") is None:
        raise LabError(
            f"creating the {suite} {what} needs debootstrap, which is missing;"
            " run scripts/bootstrap or 'apt-get install debootstrap'"
        )
    if os.geteuid() != 0:
        raise LabError(f"creating the {suite} {what} needs root (debootstrap); run as root")
    with staged_dir(home, remove=remove_tree) as tmp:
        run(
            [
                "debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
                f"--keyring={DEBIAN_KEYRING}", suite, tmp / "root", mirror(),
            ],  # fmt: skip
            what=f"debootstrap of the {suite} {what}",
            timeout=DEBOOTSTRAP_TIMEOUT,
            fix=f"see {tmp}/root/debootstrap/debootstrap.log; check that {mirror()} is reachable",
        )
        run(["chroot", tmp / "root", "apt-get", "clean"], what="apt-get clean", timeout=APT_TIMEOUT)
        (tmp / "packages").write_text("".join(p + "\n" for p in packages))


def linked_kernels(chroot: Path) -> Path:
    """Where kernel trees are linked inside ``chroot`` (its root)."""
    return chroot / CHROOT_KERNELS


def _link_kernel(chroot: Path, kernel: Kernel) -> None:
    """Make the kernel's headers visible in ``chroot`` at ``kernel.chroot_kernel_dir``:
    a hard-linked copy of the kernel's usr/ (headers + kbuild, linked relatively)."""
    dest = linked_kernels(chroot) / kernel.home.name
    if is_complete(dest):
        return
    with staged_dir(dest) as tmp:
        # usr/src holds the headers, usr/lib/linux-kbuild-* the tools they link to.
        parts = [kernel.root / "usr" / "src", *(kernel.root / "usr" / "lib").glob("linux-kbuild-*")]
        for part in parts:
            dest_part = tmp / part.relative_to(kernel.root)
            dest_part.parent.mkdir(parents=True, exist_ok=True)
            try:
                run(["cp", "-al", part, dest_part], what="linking the headers",
                    timeout=LINK_TIMEOUT)
            except LabError:  # another file system: copy instead
                shutil.rmtree(dest_part, ignore_errors=True)
                run(["cp", "-a", part, dest_part],
                    what=f"copying the {kernel.release} headers into {chroot}",
                    timeout=LINK_TIMEOUT)


def chroot_packages(kernel: Kernel, apt: Apt | None) -> list[str] | None:
    """What the kernel's build chroot holds: recorded in its manifest once
    known (asked of ``apt`` and recorded, when given; else None)."""
    manifest = kernel.home / MANIFEST
    data = json.loads(manifest.read_text())
    packages = data.get("build_depends")
    if isinstance(packages, list):
        return [str(p) for p in packages]
    if apt is None:
        return None
    packages = build_depends(kernel.release, kernel.package_version, kernel.compiler, apt)
    data["build_depends"] = packages
    atomic_write(manifest, (json.dumps(data, indent=1) + "\n").encode())
    return packages


def with_chroot(cache: Path, kernel: Kernel, apt: Apt) -> Kernel:
    """``kernel`` with its suite's build chroot, created (once) if needed."""
    packages = chroot_packages(kernel, apt)
    assert packages is not None
    home = chroot_home(cache, kernel.suite, packages)
    debootstrap(home, kernel.suite, packages)
    root = home / "root"
    if not (root / "usr" / "bin" / kernel.compiler).exists():
        raise LabError(
            f"the {kernel.suite} chroot {root} has no {kernel.compiler}; delete {home} and retry"
        )
    kernel = dataclasses.replace(kernel, chroot=root)
    _link_kernel(root, kernel)
    return kernel
