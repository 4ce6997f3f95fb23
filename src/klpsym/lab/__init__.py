"""lab layer: provision real Debian kernels, build modules for them, boot them in QEMU.

Used by the tests, the demo and users; nothing here installs anything on the host.
"""

from klpsym.lab.build import BuildError, build_modules
from klpsym.lab.provision import Kernel, default_cache_dir, provision

__all__ = ["BuildError", "Kernel", "build_modules", "default_cache_dir", "provision"]
