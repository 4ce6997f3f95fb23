"""The provisioned kernel's vmlinux with its full symbol table and its real
System.map, from Debian's ``linux-image-<release>-dbg`` package (an 858 MB
download for 6.1).

Only those two files are kept (in the kernel's cache home, ~640 MB); the
package is deleted once they are unpacked.  Used to prove the ``--vmlinux``
and ``--system-map`` sources against a real kernel.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from klpsym.errors import LabError
from klpsym.lab.apt import apt_show, deb_from, download
from klpsym.lab.provision import Kernel

EXTRACT_TIMEOUT = 900.0


@dataclass(frozen=True)
class DebugFiles:
    vmlinux: Path
    system_map: Path


def debug_files(kernel: Kernel) -> DebugFiles:
    """The kernel's debug vmlinux and System.map, fetched on first use."""
    home = kernel.home / "dbg"
    files = DebugFiles(home / "vmlinux", home / "System.map")
    if files.vmlinux.is_file() and files.system_map.is_file():
        return files
    package = f"linux-image-{kernel.release}-dbg"
    shown = apt_show([f"{package}={kernel.package_version}"])
    if package not in shown:
        raise LabError(f"apt has no {package} version {kernel.package_version}; "
                       "run 'apt-get update'")
    deb = deb_from(shown[package])
    members = {f"./usr/lib/debug/boot/vmlinux-{kernel.release}": files.vmlinux,
               f"./usr/lib/debug/boot/System.map-{kernel.release}": files.system_map}
    with tempfile.TemporaryDirectory(prefix=".dbg-", dir=kernel.home) as tmp:
        download([deb], Path(tmp))
        dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb.path(Path(tmp)))],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert dpkg.stdout is not None
        try:
            tar = subprocess.run(["tar", "-x", "-C", tmp, *members], stdin=dpkg.stdout,
                                 stderr=subprocess.PIPE, timeout=EXTRACT_TIMEOUT)
        finally:
            dpkg.stdout.close()
            dpkg.wait(timeout=60)
        if tar.returncode != 0 or dpkg.returncode != 0:
            raise LabError(f"could not unpack the debug vmlinux from {deb.filename}: "
                           f"{tar.stderr.decode(errors='replace').strip()[:200]}")
        home.mkdir(exist_ok=True)
        for member, dest in members.items():
            os.replace(Path(tmp) / member, dest)
    return files
