"""A Debian machine to install kernel packages in as a user would, without
touching the host: a minimal debootstrap of the suite (cached), and for
each use a throwaway overlay on it in a private mount namespace, where
dpkg installs packages and runs their maintainer scripts and the
/etc/kernel hooks (dkms, initramfs-tools) for real.

Cache layout: ``machines-v<LAYOUT>/<suite>/<key>/root``.  The key covers
the packages asked for and the versions the archive serves of them, so a
machine follows the archive: when one of them moves on, the next use
debootstraps a new machine, and machines older than a day are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from klpsym.errors import LabError
from klpsym.lab.apt import HOST_APT, Apt, apt_show, depends, host_codename, private_apt
from klpsym.lab.chroot import debootstrap, remove_tree
from klpsym.lab.staging import completed_at, is_complete
from klpsym.lab.store import LAYOUT, MANIFEST, Kernel, default_cache_dir, locked

MACHINE_TIMEOUT = 1800.0
STALE_SECONDS = 24 * 3600.0
# The machine's PATH and locale: a root shell's on Debian, nothing of the caller's.
MACHINE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}

# Runs in a new mount namespace (unshare): the overlay, /proc and /dev exist
# only there and vanish with its last process, whatever happens to it.
# Without overlayfs (e.g. on an overlay root file system) the machine is copied.
_ENTER = """set -e
L=$1 U=$2 W=$3 M=$4
if ! mount -t overlay klpsym-machine -o "lowerdir=$L,upperdir=$U,workdir=$W" "$M" 2>/dev/null
then
    cp -a "$L/." "$U/"
    mount --bind "$U" "$M"
fi
mount -t proc proc "$M/proc"
mount --bind /dev "$M/dev"
exec chroot "$M" /bin/sh -c "$5"
"""


def machines_dir(cache: Path, suite: str) -> Path:
    return cache / f"machines-v{LAYOUT}" / suite


def foreign_depends(shown: Mapping[str, Mapping[str, str]], own: Collection[str]) -> list[str]:
    """What the packages in ``shown`` depend on besides the ``own`` ones: the
    first alternative of each item of their Depends, sorted."""
    return sorted({name for fields in shown.values()
                   for name, _rel, _ver in depends(fields.get("Depends", ""))
                   if name not in own})


def kernel_packages(kernel: Kernel) -> list[tuple[str, str]]:
    """(package, version) of each package the kernel was provisioned from."""
    data = json.loads((kernel.home / MANIFEST).read_text())
    return [(str(p["package"]), str(p["version"])) for p in data["packages"]]


def kernel_debs(kernel: Kernel, cache: Path) -> list[Path]:
    """The kernel's .deb files, as the lab downloaded them (verified) into the cache."""
    out = []
    for package, version in kernel_packages(kernel):
        found = sorted((cache / "debs").glob(f"{package}_{version.split(':')[-1]}_*.deb"))
        if len(found) != 1:
            raise LabError(f"{cache / 'debs'} has {len(found)} files of {package} {version}; "
                           f"provision {kernel.suite} again")
        out.append(found[0])
    return out


def _apt_for(cache: Path, suite: str) -> Apt:
    return HOST_APT if host_codename() == suite else private_apt(cache, suite)


def machine(kernels: Sequence[Kernel], packages: Sequence[str],
            cache: Path | None = None) -> Path:
    """The root of a cached minimal debootstrap of the ``kernels``' suite
    with ``packages`` and whatever the kernels' own packages depend on
    besides each other (so that dpkg can install them there, offline)."""
    cache = (cache or default_cache_dir()).expanduser().resolve()
    kernel = kernels[0]
    if any(k.suite != kernel.suite for k in kernels):
        raise LabError("a machine holds the kernels of one suite")
    apt = _apt_for(cache, kernel.suite)
    own = sorted({pv for k in kernels for pv in kernel_packages(k)})
    shown = apt_show([f"{p}={v}" for p, v in own], apt)
    missing = [p for p, _v in own if p not in shown]
    if missing:
        raise LabError(f"apt does not know {', '.join(missing)} any more; {apt.fix()}")
    names = sorted(set(packages) | set(foreign_depends(shown, {p for p, _v in own})))
    versions = apt_show(names, apt)
    key_text = " ".join([kernel.suite, *(f"{n}={versions[n]['Version']}" if n in versions
                                          else n for n in names)])
    home = machines_dir(cache, kernel.suite) / hashlib.sha256(key_text.encode()).hexdigest()[:12]
    with locked(cache, f"machine-{kernel.suite}"):
        debootstrap(home, kernel.suite, names, what="machine")
        for other in home.parent.iterdir():
            if (other != home and is_complete(other)
                    and time.time() - completed_at(other) > STALE_SECONDS):
                remove_tree(other)
    return home / "root"


def upper(scratch: Path) -> Path:
    """What a use of the machine added or changed (see :func:`run_in`)."""
    return scratch / "upper"


def enter_command(root: Path, scratch: Path, script: str) -> list[str]:
    """The command that runs ``script`` in the machine ``root`` (see :func:`run_in`)."""
    for path in (root, scratch):
        if any(c in str(path) for c in ",:\n"):
            raise LabError(f"{path}: overlayfs cannot take a path with ',' or ':'; "
                           "set KLPSYM_CACHE to a plainer directory")
    dirs = [upper(scratch), scratch / "work", scratch / "merged"]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER, "enter",
            str(root), *map(str, dirs), script]


def run_in(root: Path, scratch: Path, script: str, *,
           timeout: float = MACHINE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (/bin/sh, as root, Debian's root PATH) in a throwaway
    copy of the machine ``root``: an overlay whose upper layer is
    ``upper(scratch)`` (``scratch`` an empty directory on a file system
    that is not an overlay; files put in ``upper(scratch)`` beforehand are
    in the machine), in a private mount namespace with /proc and /dev
    mounted.  What the script changes stays in ``upper(scratch)`` (the
    whole machine when overlayfs is missing); nothing outside ``scratch``
    changes.  Returns the completed process, whatever its exit status."""
    if os.geteuid() != 0:
        raise LabError("using the machine needs root (mount, chroot); run as root")
    cmd = enter_command(root, scratch, script)
    for d in (upper(scratch), scratch / "work", scratch / "merged"):
        d.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, errors="replace",
                          env=MACHINE_ENV, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise LabError(f"the script in the machine {root} timed out after {timeout:g} s"
                           ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
