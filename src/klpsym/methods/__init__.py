"""The two methods beside klp: kallsyms parameters and kprobe lookup.

Both live mostly in the C header shipped with klpsym (``include/klpsym.h``,
:func:`include_dir`); this package holds what runs on the host: the
compiler flags that select a method, and ``klpsym insmod``, which fills a
kallsyms-method module's parameters from /proc/kallsyms.
"""

from __future__ import annotations

from klpsym.methods.header import METHODS, Method, cflags, include_dir
from klpsym.methods.insmod import (
    DeclaredSymbol,
    InsmodPlan,
    declared_symbols,
    plan_insmod,
    run_insmod,
)

__all__ = [
    "METHODS", "DeclaredSymbol", "InsmodPlan", "Method", "cflags", "declared_symbols",
    "include_dir", "plan_insmod", "run_insmod",
]
