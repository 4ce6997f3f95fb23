"""Kernel symbol addresses: ``klpsym addr`` and ``klpsym insmod``.

Only a symbol source is needed here (no Module.symvers): the running
kernel's /proc/kallsyms by default, or ``--kallsyms``, ``--system-map``,
``--vmlinux``.  /proc/kallsyms gives the addresses of *this boot* (with its
KASLR offset); System.map and vmlinux give link-time addresses, which are
the running ones only in a boot without KASLR (``nokaslr``).

/proc/kallsyms shows every address as 0 unless the reader may see kernel
pointers: kallsyms_show_value() (kernel/kallsyms.c, kernel/ksyms_common.c
since 6.7) allows it for kptr_restrict=0 when perf_event_paranoid <= 1 or
with CAP_SYSLOG, for kptr_restrict=1 with CAP_SYSLOG only, and never for
kptr_restrict=2.  The check uses the credentials of whoever opened the file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from klpsym.elf.constants import STB, STT
from klpsym.errors import KernelSourceError, param
from klpsym.fsutil import not_a_file
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import AmbiguousSymbolError, KallsymsTable, SymbolNotFoundError, is_text
from klpsym.kernel.proc_kallsyms import PROC_KALLSYMS, read_proc_kallsyms
from klpsym.kernel.sympos import PosError, choose_pos, listed_pos
from klpsym.kernel.system_map import read_system_map
from klpsym.kernel.version import KernelVersion, read_kernel_version
from klpsym.kernel.vmlinux import banner_version, kallsyms_from_vmlinux, open_vmlinux

KPTR_RESTRICT = Path("/proc/sys/kernel/kptr_restrict")
ADDR2LINE_TIMEOUT = 120.0


@dataclass
class SymbolSource:
    """vmlinux's kallsyms from one source, and what its addresses mean."""

    table: KallsymsTable
    description: str  # "/proc/kallsyms", "kallsyms FILE", "System.map FILE", "vmlinux FILE"
    runtime: bool  # addresses of a running kernel (kallsyms), not link-time ones
    vmlinux: Path | None = None  # for source files

    @property
    def is_proc(self) -> bool:
        return self.description == PROC_KALLSYMS


def open_symbols(kallsyms: Path | str | None = None, system_map: Path | str | None = None,
                 vmlinux: Path | str | None = None, *, kernel_dir: Path | str | None = None,
                 config: Path | str | None = None,
                 proc_kallsyms: Path | str = PROC_KALLSYMS) -> SymbolSource:
    """The one symbol source given (default: /proc/kallsyms of the running
    kernel).  ``kernel_dir`` and ``config`` only refine the System.map and
    vmlinux rules (release, CONFIG_KALLSYMS_ALL)."""
    given = [(k, Path(v)) for k, v in
             (("kallsyms", kallsyms), ("system_map", system_map), ("vmlinux", vmlinux))
             if v is not None]
    if len(given) > 1:
        raise KernelSourceError(
            f"{' and '.join(param(k) for k, _ in given)} both given; pass one symbol source")
    if not given:
        return SymbolSource(read_proc_kallsyms(proc_kallsyms), str(proc_kallsyms), True)
    flag, path = given[0]
    if not path.is_file():
        raise KernelSourceError(not_a_file(path, param(flag)))
    if flag == "kallsyms":
        return SymbolSource(read_proc_kallsyms(path), f"kallsyms {path}", True)
    version: KernelVersion | None = None
    cfg: KernelConfig | None = None
    if kernel_dir is not None:
        kdir = Path(kernel_dir)
        if not kdir.is_dir():
            raise KernelSourceError(f"{kdir}: no such directory ({param('kernel_dir')})")
        version = read_kernel_version(kdir)
        if config is None and (kdir / ".config").is_file():
            cfg = KernelConfig.from_path(kdir / ".config")
    if config is not None:
        cfg = KernelConfig.from_path(config)
    if flag == "system_map":
        return SymbolSource(read_system_map(path, config=cfg, version=version),
                            f"System.map {path}", False)
    if version is None:
        version = banner_version(open_vmlinux(path))
    return SymbolSource(kallsyms_from_vmlinux(path, cfg, version), f"vmlinux {path}", False,
                        vmlinux=path)


def hidden_addresses_fix(kptr_restrict: Path = KPTR_RESTRICT, euid: int | None = None) -> str:
    """Why /proc/kallsyms shows zero addresses here, and the fix."""
    uid = os.geteuid() if euid is None else euid
    try:
        level = int(kptr_restrict.read_text().strip())
    except (OSError, ValueError):
        level = None
    if level is not None and level >= 2:
        return ("kernel.kptr_restrict=2 hides them even from root; run "
                "'sysctl kernel.kptr_restrict=1' and read it as root")
    if uid != 0:
        return ("they are shown only to root (CAP_SYSLOG"
                + (f", kernel.kptr_restrict={level}" if level is not None else "")
                + "); run klpsym as root")
    return ("check kernel.kptr_restrict (2 hides them from root) and that this process "
            "has CAP_SYSLOG")


def require_addresses(source: SymbolSource) -> None:
    """Refuse a source whose addresses are all 0, naming the cause and fix."""
    if source.table.has_addresses:
        return
    if source.is_proc:
        raise KernelSourceError(
            f"{source.description}: every address is 0: {hidden_addresses_fix()}; or pass "
            f"{param('vmlinux')}/{param('system_map')} for link-time addresses (right only "
            "without KASLR)")
    raise KernelSourceError(
        f"{source.description}: every address is 0 (read without root, or under "
        "kptr_restrict); copy /proc/kallsyms as root")


# -- queries -------------------------------------------------------------------------

_QUERY = re.compile(r"^([^\s,]+)(?:,(\d+))?$")


@dataclass(frozen=True)
class Query:
    name: str
    pos: int | None  # None: every entry of the name; 0: the name must be unique


def parse_query(text: str) -> Query:
    """``NAME`` or ``NAME,POS`` (POS as in livepatch: 0 unique, N the N-th entry)."""
    m = _QUERY.match(text)
    if not m:
        raise KernelSourceError(f"{text!r}: expected NAME or NAME,POS (POS a number)")
    return Query(m.group(1), None if m.group(2) is None else int(m.group(2)))


@dataclass(frozen=True)
class Found:
    """One kallsyms entry of a queried name."""

    name: str
    pos: int  # 0 for a unique name, else 1-based in kallsyms order
    count: int  # entries of this name
    type: str
    address: int | None
    index: int  # row in the table
    unit: str | None = None  # compilation unit (STT_FILE) of a local symbol, from vmlinux
    source: str | None = None  # file:line from the vmlinux's DWARF (addr2line), text only


def lookup(table: KallsymsTable, queries: Sequence[Query]) -> list[Found]:
    """Every entry each query designates.  A name alone gives all its entries
    (POS 0 if it is unique); NAME,POS exactly one.  Raises SymbolLookupError
    (or its subclasses) naming the first query that designates nothing."""
    out: list[Found] = []
    for q in queries:
        cands = table.candidates(q.name)
        listed = ", ".join(c.describe() for c in cands)
        if not cands:
            raise SymbolNotFoundError(f"{q.name}: not in vmlinux's kallsyms ({table.source})")
        if q.pos is None:
            out += [Found(q.name, listed_pos(c, len(cands)), len(cands), c.type, c.address,
                          c.index) for c in cands]
            continue
        choice = choose_pos(cands, q.pos)
        if choice.error == PosError.AMBIGUOUS:
            raise AmbiguousSymbolError(q.name, cands, table.source,
                                       f"{q.name},0: {q.name} is not unique: {len(cands)} "
                                       f"entries in {table.source} ({listed}); ask for "
                                       f"{q.name},POS")
        if choice.chosen is None or choice.pos is None:  # BEYOND (parse_query: POS >= 0)
            raise SymbolNotFoundError(f"{q.name},{q.pos}: {q.name} has only {len(cands)} "
                                      f"entr{'y' if len(cands) == 1 else 'ies'} in "
                                      f"{table.source} ({listed})")
        c = choice.chosen
        out.append(Found(q.name, choice.pos, len(cands), c.type, c.address, c.index))
    return out


def first_name_at(table: KallsymsTable, found: Found) -> str:
    """The name the kernel prints for ``found.address`` (sprint_symbol):
    get_symbol_pos() walks back to the first of several symbols at one
    address, in kallsyms order."""
    i = found.index
    addrs = table.addresses
    while i > 0 and addrs[i - 1] == addrs[found.index]:
        i -= 1
    return str(table.names[i])


# -- source files (with a vmlinux) ----------------------------------------------------


def with_sources(found: Sequence[Found], vmlinux: Path) -> list[Found]:
    """``found`` with each local symbol's compilation unit (the STT_FILE entry
    before it in .symtab, as the compiler wrote it: a file name without
    directories) and, where binutils' addr2line and DWARF are there, each
    text symbol's file:line."""
    elf = open_vmlinux(vmlinux)
    st = elf.symtab
    arr = st.array
    info = arr["st_info"].astype(np.int64)
    types, binds = info & 0xF, info >> 4
    names = st.names()
    values = arr["st_value"].astype(np.uint64)
    wanted = {f.name for f in found}
    units: dict[tuple[str, int], str] = {}
    unit = ""
    file_rows = np.flatnonzero(types == int(STT.FILE))
    rows = np.flatnonzero(np.fromiter((n in wanted for n in names), dtype=bool,
                                      count=len(names)) & (binds == int(STB.LOCAL)))
    # each wanted local symbol takes the closest STT_FILE before it
    for r in rows.tolist():
        k = int(np.searchsorted(file_rows, r)) - 1
        unit = names[int(file_rows[k])] if k >= 0 else ""
        if unit:
            units[(names[r], int(values[r]))] = unit
    lines = _addr2line(vmlinux, [f.address for f in found if f.address and is_text(f.type)])
    return [Found(f.name, f.pos, f.count, f.type, f.address, f.index,
                  units.get((f.name, f.address or 0)), lines.get(f.address or 0))
            for f in found]


def _addr2line(vmlinux: Path, addresses: Iterable[int]) -> dict[int, str]:
    """file:line of each address from the DWARF line table, or nothing when
    addr2line (binutils) is missing or the vmlinux has no line table."""
    addrs = sorted(set(addresses))
    tool = shutil.which("addr2line")
    if not addrs or tool is None:
        return {}
    try:
        proc = subprocess.run([tool, "-e", str(vmlinux), *(f"{a:#x}" for a in addrs)],
                              capture_output=True, text=True, timeout=ADDR2LINE_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != len(addrs):
        return {}
    return {a: ln for a, ln in zip(addrs, lines, strict=True) if not ln.startswith("??")}


__all__ = [
    "Found", "Query", "SymbolNotFoundError", "SymbolSource", "first_name_at",
    "hidden_addresses_fix", "lookup", "open_symbols", "parse_query", "require_addresses",
    "with_sources",
]
