"""The one exception base of the package.

Every error that klpsym raises on bad input derives from :class:`KlpsymError`;
the command line turns it into one line on stderr and exit code 2.  Anything
else escaping is a bug in klpsym: :class:`InternalError` is the one klpsym
raises itself when a check of its own work fails (exit code 70, reported as
a bug).
"""

from __future__ import annotations

import re
from collections.abc import Callable

# An input named in a message: see :func:`param`.
_GIVEN = re.compile("\x00([a-z_]+)\x00")


def param(name: str) -> str:
    """A reference, in an error message, to the input the caller passed as
    keyword ``name`` (``kallsyms``, ``system_map``, ``kernel_dir``, ...):
    the layers below the command line know their own parameters, not the
    command line's options.  ``str()`` of the error shows it as the
    parameter (``kallsyms=``); the command line shows its option for it
    (``--kallsyms``: see :meth:`KlpsymError.render`)."""
    return f"\x00{name}\x00"


class KlpsymError(Exception):
    """Bad input or an impossible request; the message is one line naming the
    thing that is wrong and, where there is one, the fix.  It may name the
    caller's inputs with :func:`param`."""

    def render(self, name: Callable[[str], str]) -> str:
        """The message with each input named by ``name(parameter)``."""
        return _GIVEN.sub(lambda m: name(m[1]), super().__str__())

    def __str__(self) -> str:
        return self.render(lambda name: f"{name}=")


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


class InternalError(Exception):
    """klpsym's check of its own work failed: a bug in klpsym, never bad
    input (so not a :class:`KlpsymError`; code that handles bad input must
    not swallow it).  The message says what the check found; the command
    line reports it as a bug, exit code 70 (EX_SOFTWARE)."""
