"""The lab's cache of provisioned kernels: where each kernel lives and how it
is read back.

Cache layout (``default_cache_dir()``, i.e. ``$KLPSYM_CACHE`` or
``~/.cache/klpsym``)::

    debs/<package>_<version>_<arch>.deb        verified against apt's SHA256
    resolved-<suite>-<flavour>.json            last resolution, keyed on apt's lists
    locks/<suite>.lock                         held while provisioning or pruning the suite
    apt/<suite>/                               a private apt (other suites than the host's)
    kernels-v<LAYOUT>/<suite>/<release>_<version>/   one provisioned kernel ("home")
        root/                                  the packages, dpkg-deb -x'ed
        vmlinux                                uncompressed, for the PVH boot
        kernel.json                            the manifest: suite, flavour, release, version,
                                               packages
        complete                               marker: written last (klpsym.lab.staging)
        kallsyms                               captured by qemu.capture_kallsyms
    chroots-v<LAYOUT>/<suite>/<key>/root/      a build chroot (debootstrap)
    machines-v<LAYOUT>/<suite>/<key>/root/     a machine to install kernels in (klpsym.lab.machine)

A suite's kernels of every flavour share its directory; the manifest says
which flavour each one is (``amd64`` when it does not: older manifests).

``LAYOUT`` is in the names of the kernel and chroot dirs: bump it whenever
what a tree holds or how it is made changes, so that trees made by an older
klpsym are rebuilt beside the old ones instead of reused (``klpsym lab prune``
removes the old ones).  Layout 1 had no version in the names (``kernels/``,
``chroots/``).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from klpsym.lab.staging import completed_at, is_complete
from klpsym.lab.tree import compiler_of

MANIFEST = "kernel.json"
CHROOT_KERNELS = "klpsym/kernels"  # inside a chroot: hard-linked copies of kernel trees
#: Version of the kernel and chroot trees' layout (see the module docstring).
#: 2: kbuild runs in the chroot through klpsym.kbuild.ChrootRunner (bind mounts
#: under /klpsym/host), and trees are provisioned under per-suite locks.
LAYOUT = 2
DEFAULT_FLAVOUR = "amd64"


@dataclass(frozen=True)
class Kernel:
    """One provisioned Debian kernel: everything needed to build for it and boot it."""

    suite: str  # "bookworm"
    release: str  # uname -r, e.g. "6.1.0-NN-amd64"
    package_version: str  # the Debian package version, e.g. "6.1.192-N"
    root: Path  # the extracted packages
    kernel_dir: Path  # headers build dir: KDIR / `klpsym convert --kernel-dir`
    vmlinuz: Path
    vmlinux: Path  # uncompressed, for the PVH boot
    config: Path  # boot/config-<release>
    system_map: Path  # Debian's one-line stub
    modules_dir: Path  # <root>/lib/modules/<release>
    home: Path  # this kernel's cache directory (root, vmlinux, kallsyms live here)
    compiler: str  # the C compiler the headers call, e.g. "gcc-12"
    # A debootstrap of the suite with its compiler and the headers inside (see
    # chroot_kernel_dir), for suites other than the host's; None for the host's.
    chroot: Path | None = None
    # The metapackage it was resolved through: linux-image-<flavour>.
    flavour: str = DEFAULT_FLAVOUR

    @property
    def kallsyms_cache(self) -> Path:
        """Where ``capture_kallsyms`` stores the guest's /proc/kallsyms."""
        return self.home / "kallsyms"

    @property
    def chroot_kernel_dir(self) -> Path:
        """``kernel_dir`` as seen inside ``chroot`` (an absolute path in the chroot)."""
        return Path("/") / CHROOT_KERNELS / self.home.name / self.kernel_dir.relative_to(self.root)

    @property
    def label(self) -> str:
        """``6.1.0-NN-amd64 (6.1.192-N)``: the release and the package version."""
        return f"{self.release} ({self.package_version})"


def default_cache_dir() -> Path:
    """``$KLPSYM_CACHE`` if set, else ``~/.cache/klpsym``."""
    env = os.environ.get("KLPSYM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "klpsym"


def kernels_dir(cache: Path, suite: str) -> Path:
    """Where ``suite``'s kernels of the current LAYOUT live."""
    return cache / f"kernels-v{LAYOUT}" / suite


def home_name(release: str, version: str) -> str:
    return f"{release}_{version.replace(':', '%3a')}"


def kernel_from(home: Path, suite: str, release: str, version: str,
                flavour: str = DEFAULT_FLAVOUR) -> Kernel:
    root = home / "root"
    kernel_dir = root / "usr" / "src" / f"linux-headers-{release}"
    modules_dir = root / "lib" / "modules" / release

    def boot_file(name: str) -> Path:
        # /boot/<name>-<release> up to 6.x; since 7.x only /usr/lib/modules/<release>/<name>
        # (the postinst copies it to /boot).
        in_boot = root / "boot" / f"{name}-{release}"
        in_modules = modules_dir / name
        return in_modules if not in_boot.exists() and in_modules.exists() else in_boot

    return Kernel(
        suite=suite,
        release=release,
        package_version=version,
        root=root,
        kernel_dir=kernel_dir,
        vmlinuz=boot_file("vmlinuz"),
        vmlinux=home / "vmlinux",
        config=boot_file("config"),
        system_map=boot_file("System.map"),
        modules_dir=modules_dir,
        home=home,
        compiler=compiler_of(kernel_dir),
        flavour=flavour,
    )


def load(home: Path) -> Kernel | None:
    """The complete kernel in ``home``, or None."""
    if not is_complete(home):
        return None
    try:
        data = json.loads((home / MANIFEST).read_text())
        return kernel_from(home, str(data["suite"]), str(data["release"]), str(data["version"]),
                           str(data.get("flavour", DEFAULT_FLAVOUR)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cached_kernels(kernels: Path, flavour: str | None = DEFAULT_FLAVOUR) -> list[Kernel]:
    """The complete kernels of ``flavour`` (None: of any) under ``kernels``,
    the most recently completed first."""
    homes = [h for h in kernels.glob("*") if is_complete(h)] if kernels.is_dir() else []
    found = (load(h) for h in sorted(homes, key=completed_at, reverse=True))
    return [k for k in found if k is not None and flavour in (None, k.flavour)]


@contextmanager
def locked(cache: Path, suite: str) -> Iterator[None]:
    """Exclusive per suite, across processes (several test sessions share a cache)."""
    locks = cache / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f"{suite}.lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
