"""The provisioned kernel's vmlinux with its full symbol table, from Debian's
``linux-image-<release>-dbg`` package (an 858 MB download for 6.1).

Only the vmlinux is kept (in the kernel's cache home, ~630 MB); the package
is deleted once it has been unpacked.  Used to prove ``--vmlinux`` and
``--system-map``-style sources against a real kernel.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from klpsym.errors import LabError
from klpsym.lab.provision import Kernel, _apt_show, _deb, _download

EXTRACT_TIMEOUT = 900.0


def debug_vmlinux(kernel: Kernel) -> Path:
    """Path of the kernel's debug vmlinux, fetched on first use."""
    dest = kernel.home / "vmlinux-dbg"
    if dest.is_file():
        return dest
    package = f"linux-image-{kernel.release}-dbg"
    shown = _apt_show([f"{package}={kernel.package_version}"])
    if package not in shown:
        raise LabError(f"apt has no {package} version {kernel.package_version}; "
                       "run 'apt-get update'")
    deb = _deb(shown[package])
    member = f"./usr/lib/debug/boot/vmlinux-{kernel.release}"
    with tempfile.TemporaryDirectory(prefix=".dbg-", dir=kernel.home) as tmp:
        _download([deb], Path(tmp))
        part = Path(tmp) / "vmlinux"
        with part.open("wb") as out:
            dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb.path(Path(tmp)))],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert dpkg.stdout is not None
            try:
                tar = subprocess.run(["tar", "-xO", member], stdin=dpkg.stdout, stdout=out,
                                     stderr=subprocess.PIPE, timeout=EXTRACT_TIMEOUT)
            finally:
                dpkg.stdout.close()
                dpkg.wait(timeout=60)
        if tar.returncode != 0 or dpkg.returncode != 0 or part.stat().st_size == 0:
            raise LabError(f"could not unpack {member} from {deb.filename}: "
                           f"{tar.stderr.decode(errors='replace').strip()[:200]}")
        os.replace(part, dest)
    return dest
