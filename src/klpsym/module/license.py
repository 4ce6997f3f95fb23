"""MODULE_LICENSE() strings the kernel treats as GPL-compatible.

Mirrors license_is_gpl_compatible() in include/linux/license.h (unchanged
from v4.x through v6.12).  Unexported symbols are kernel internals, and a
module that reaches them is a derived work: klpsym only converts modules
whose license the kernel itself would let use EXPORT_SYMBOL_GPL symbols.
"""

from __future__ import annotations

GPL_COMPATIBLE = frozenset(
    {
        "GPL",
        "GPL v2",
        "GPL and additional rights",
        "Dual BSD/GPL",
        "Dual MIT/GPL",
        "Dual MPL/GPL",
    }
)


def is_gpl_compatible(license: str) -> bool:
    return license in GPL_COMPATIBLE
