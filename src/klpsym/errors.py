"""The one exception base of the package.

Every error that klpsym raises on bad input derives from :class:`KlpsymError`;
the command line turns it into one line on stderr and exit code 2.  Anything
else escaping is a bug in klpsym.
"""

from __future__ import annotations


class KlpsymError(Exception):
    """Bad input or an impossible request; the message is one line naming the
    thing that is wrong and, where there is one, the fix."""


class ElfError(KlpsymError):
    """A file is not an ELF object klpsym can read or write."""


class KernelSourceError(KlpsymError):
    """A kernel symbol source (Module.symvers, kallsyms, System.map, vmlinux,
    .config) is missing, unreadable or malformed."""


class ModuleError(KlpsymError):
    """A kernel module (.ko) breaks a rule of the module format."""


class ConvertError(KlpsymError):
    """A module cannot be converted for the target kernel."""


class LabError(KlpsymError):
    """Provisioning or booting a test kernel failed."""


class KbuildError(KlpsymError):
    """``klpsym build``: kbuild failed, or the module directory cannot be built."""


class SignError(KlpsymError):
    """Signing a module with the kernel's scripts/sign-file is impossible or failed."""

class MethodError(KlpsymError):
    """``klpsym insmod`` and the kallsyms/kprobe methods: the module or the
    kernel does not allow what was asked."""
