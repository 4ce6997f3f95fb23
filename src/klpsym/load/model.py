"""The facts of one module as ``klpsym check`` keeps them (:class:`ModuleFacts`
and its parts): small picklable values, made by either reader --
:func:`klpsym.load.facts.facts_of` (the general one) or
:mod:`klpsym.load.fastread` -- and judged by :mod:`klpsym.load.check`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from klpsym.kernel.version import MODULE_NAME_LEN
from klpsym.module.versions import VersionsFormat

#: include/linux/module.h: struct module { enum module_state state;
#: struct list_head list; char name[MODULE_NAME_LEN]; ... } -- the name is at
#: offset 24 on every 64-bit architecture since 2.6.
THIS_MODULE_SECTION = ".gnu.linkonce.this_module"
THIS_MODULE_NAME_OFFSET = 24
class ExportFact(NamedTuple):  # a tuple: cheap to make and to send between processes
    name: str
    gpl_only: bool
    namespace: str
    crc: int | None


@dataclass(frozen=True, slots=True)
class KlpUse:
    """One livepatch symbol used by a klp relocation section."""

    section: str  # .klp.rela.OBJ.TARGET
    symbol: str  # .klp.sym.OBJ.NAME,POS as written
    objname: str | None  # None when the name does not parse
    name: str
    pos: int


@dataclass
class ModuleFacts:
    path: Path
    error: str | None = None  # set when the file is bad input; nothing else is
    compression: str = "none"
    machine: int = 0
    name: str = ""  # the name the kernel uses (this_module's, else modinfo's)
    modinfo_name: str | None = None
    has_symtab: bool = True
    has_this_module: bool = True
    vermagic: str | None = None
    license: str | None = None
    import_ns: tuple[str, ...] = ()
    intree: bool = False
    staging: bool = False
    livepatch: bool = False
    signed: bool = False
    versions_format: str = VersionsFormat.NONE.value
    versions: dict[str, int] = field(default_factory=dict)
    # SHN_UNDEF symbols in symbol-table order: (name, weak)
    undefined: list[tuple[str, bool]] = field(default_factory=list)
    common: list[str] = field(default_factory=list)
    klp_uses: list[KlpUse] = field(default_factory=list)
    klp_static: list[str] = field(default_factory=list)  # klp.validate.loader_problems
    # klp relocations taking a vmlinux symbol's address: klp.ibt.klp_address_uses
    klp_addresses: list[tuple[str, str]] = field(default_factory=list)
    has_klp: bool = False
    bad_relocations: list[tuple[str, int]] = field(default_factory=list)  # (section, type)
    exports: list[ExportFact] = field(default_factory=list)
    exports_crcs: bool = True  # every export table has its CRC table

    has_crcs: bool = False  # the loader sees symbol versions (info->index.vers)


def struct_module_name(this_module: bytes) -> str:
    """The name in struct module, from the content of its section."""
    raw = this_module[THIS_MODULE_NAME_OFFSET:THIS_MODULE_NAME_OFFSET + MODULE_NAME_LEN]
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
