"""lab layer: provision real Debian kernels, build modules for them, boot them in QEMU.

Used by the tests, the demo and users; nothing here installs anything on the host.
"""

from klpsym.lab.build import BuildError, build_modules
from klpsym.lab.provision import Kernel, default_cache_dir, provision
from klpsym.lab.qemu import BootError, BootResult, boot, capture_kallsyms

__all__ = [
    "BootError",
    "BootResult",
    "BuildError",
    "Kernel",
    "boot",
    "build_modules",
    "capture_kallsyms",
    "default_cache_dir",
    "provision",
]
