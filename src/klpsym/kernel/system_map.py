"""A System.map (``nm -n vmlinux`` filtered by scripts/mksysmap) read into
the table scripts/kallsyms would have built from it
(:mod:`klpsym.kernel.scripts_kallsyms`), and Debian's placeholder for it
recognised.
"""

from __future__ import annotations

from pathlib import Path

from klpsym.errors import KernelSourceError, param
from klpsym.kernel._io import line_error, read_text
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.kernel.proc_kallsyms import BadRow, columns
from klpsym.kernel.scripts_kallsyms import kallsyms_from_nm
from klpsym.kernel.version import KernelVersion

_DEBIAN_STUB = "The real System.map is in"


def is_debian_stub(head: str) -> bool:
    """Whether ``head`` (the start of a System.map) is Debian's one-line
    placeholder ``ffffffffffffffff B The real System.map is in the
    linux-image-<version>-dbg package``."""
    return _DEBIAN_STUB in head


def reject_debian_stub(head: str, source: str) -> None:
    """Raise if ``head`` is Debian's placeholder (:func:`is_debian_stub`)."""
    if is_debian_stub(head):
        raise KernelSourceError(
            f"{source}: is Debian's placeholder ('The real System.map is in the "
            f"linux-image-<version>-dbg package'), not a symbol map; use {param('kallsyms')} with "
            "the target's /proc/kallsyms, the System.map from linux-image-<release>-dbg, or "
            f"{param('vmlinux')} /usr/lib/debug/boot/vmlinux-<release> from that package"
        )


def read_system_map(path: Path | str, *, config: KernelConfig | None = None,
                    version: KernelVersion | None = None) -> KallsymsTable:
    """A System.map (``nm -n vmlinux`` filtered by scripts/mksysmap), turned
    into what scripts/kallsyms keeps, in kallsyms order.

    ``config`` supplies CONFIG_KALLSYMS_ALL and CONFIG_KALLSYMS_ABSOLUTE_PERCPU
    (without it KALLSYMS_ALL=y is assumed, as in distribution kernels, and a
    note says so); ``version`` the version-dependent rules (default: v6.1).
    """
    text = read_text(
        path, "System.map",
        f"pass the System.map of the target kernel's build (or {param('kallsyms')}/"
        f"{param('vmlinux')})",
    )
    source = str(path)
    reject_debian_stub(text[:1024], source)
    lines = text.split("\n")
    parts = [ln.split() for ln in lines]
    ok = [len(p) == 3 or not p for p in parts]
    if not all(ok):
        bad = ok.index(False)
        raise line_error(source, bad + 1, "not a System.map line (ADDRESS TYPE NAME)",
                         lines[bad])
    rows = [p for p in parts if p]
    try:
        addrs, types, names = columns(rows)
    except BadRow as e:
        i = [k for k, p in enumerate(parts) if p][e.row]
        raise line_error(source, i + 1, e.what, lines[i]) from None
    return kallsyms_from_nm(addrs, types, names, source, config=config, version=version)
