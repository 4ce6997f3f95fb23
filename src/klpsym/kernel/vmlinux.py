"""vmlinux's kallsyms, computed from its ELF ``.symtab``.

What the build does (scripts/link-vmlinux.sh, v6.1): ``nm -n vmlinux``,
filtered by scripts/mksysmap, is fed to scripts/kallsyms.  This module
reproduces the three steps:

1. ``nm``: every .symtab entry except entry 0 and STT_SECTION/STT_FILE
   symbols (BSF_DEBUGGING, hidden without ``-a``), with the letter of
   binutils' bfd_decode_symclass() (bfd/syms.c; section kinds from the ELF
   flags as bfd/elf.c maps them), sorted like ``-n`` (nm.c numeric_forward():
   undefined first, then by value, equal values by name -- strcoll() in the
   C locale, as kbuild exports LC_COLLATE=C).
2. mksysmap (v6.1): drop types ``a N U w`` and names starting with ``$``,
   ``.L``, ``__crc_``, ``__kstrtab_``, ``__kstrtabns_`` and the name ``L0``.
   Before ~v6.1 kallsyms read nm's output directly; then only the filters
   scripts/kallsyms itself had apply (see version.kallsyms_input_is_mksysmap).
3. scripts/kallsyms: :func:`klpsym.kernel.scripts_kallsyms.kallsyms_from_nm`.

A vmlinux with a .symtab is the one in Debian's ``linux-image-<release>-dbg``
(``/usr/lib/debug/boot/vmlinux-<release>``) or a kernel build tree; the
vmlinux inside vmlinuz is stripped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from klpsym.elf import ElfFile
from klpsym.elf.constants import SHF, SHN, SHT, STB, STT
from klpsym.errors import ElfError, KernelSourceError, param
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.kernel.scripts_kallsyms import kallsyms_from_nm
from klpsym.kernel.version import KernelVersion, kallsyms_input_is_mksysmap

STT_GNU_IFUNC = 10
STB_GNU_UNIQUE = 10

_MKSYSMAP_TYPES = frozenset("aNUw")
_MKSYSMAP_PREFIXES = ("$", ".L", "__crc_", "__kstrtab_", "__kstrtabns_")
_DEBUG_PREFIXES = (".debug", ".gnu.debuglto_.debug_", ".gnu.linkonce.wi.", ".zdebug",
                   ".line", ".stab")


def kallsyms_from_vmlinux(path: Path | str, config: KernelConfig | None = None,
                          version: KernelVersion | None = None) -> KallsymsTable:
    """vmlinux's kallsyms table, in kallsyms order, from its symbol table.

    ``version`` defaults to the one in the image's ``linux_banner``.
    """
    elf = open_vmlinux(path)
    addrs, types, names = nm_symbols(elf)
    if version is None:
        version = banner_version(elf)
    if version is None or kallsyms_input_is_mksysmap(version):
        keep = np.fromiter(
            (t not in _MKSYSMAP_TYPES and not n.startswith(_MKSYSMAP_PREFIXES) and n != "L0"
             for t, n in zip(types.tolist(), names.tolist(), strict=True)),
            dtype=bool, count=len(names),
        )
        addrs, types, names = addrs[keep], types[keep], names[keep]
    return kallsyms_from_nm(addrs, types, names, str(path), config=config, version=version)


def open_vmlinux(path: Path | str) -> ElfFile:
    try:
        elf = ElfFile.from_path(path, relocatable_only=False)
    except ElfError as e:
        raise KernelSourceError(
            f"{e} ({param('vmlinux')} needs an uncompressed vmlinux ELF)") from None
    if not elf.has_symtab:
        raise KernelSourceError(
            f"{path}: vmlinux has no .symtab (stripped, e.g. cut out of vmlinuz); use the one "
            "from linux-image-<release>-dbg (/usr/lib/debug/boot/vmlinux-<release>) or the "
            f"kernel build tree, or pass {param('kallsyms')}"
        )
    return elf


def nm_symbols(elf: ElfFile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What ``nm -n`` prints for ``elf``: (addresses uint64, types <U1,
    names object), in nm's order."""
    st = elf.symtab
    arr = st.array
    n = len(arr)
    info = arr["st_info"].astype(np.int64)
    bind, typ = info >> 4, info & 0xF
    ref = st.section_ref
    value = arr["st_value"].astype(np.uint64)

    # section letter per section uid (bfd/syms.c decode_section_type)
    sec_letter: dict[int, str] = {}
    for sec in elf.sections:
        sec_letter[sec.uid] = _section_letter(sec.name, sec.type, sec.flags)
    letters = np.full(n, "?", dtype="<U1")
    defined = ref > 0
    for uid in np.unique(ref[defined]).tolist():
        letters[ref == uid] = sec_letter.get(int(uid), "?")
    letters[ref == -int(SHN.ABS)] = "a"
    upper = bind == int(STB.GLOBAL)
    letters = np.where(upper, np.char.upper(letters), letters)
    # overrides in bfd_decode_symclass() order, last assignment = first test
    weak = bind == int(STB.WEAK)
    obj = typ == int(STT.OBJECT)
    letters[bind == STB_GNU_UNIQUE] = "u"
    letters[weak & obj] = "V"
    letters[weak & ~obj] = "W"
    letters[typ == STT_GNU_IFUNC] = "i"
    letters[ref == -int(SHN.COMMON)] = "C"
    undef = ref == 0
    letters[undef] = "U"
    letters[undef & weak & obj] = "v"
    letters[undef & weak & ~obj] = "w"
    local_or_global = (bind == int(STB.LOCAL)) | upper
    plain = ~(undef | (ref == -int(SHN.COMMON)) | (typ == STT_GNU_IFUNC) | weak
              | (bind == STB_GNU_UNIQUE))
    letters[plain & ~local_or_global] = "?"

    names_list = st.names()
    shown = np.ones(n, dtype=bool)
    if n:
        shown[0] = False
    shown &= (typ != int(STT.SECTION)) & (typ != int(STT.FILE))
    shown &= np.fromiter((bool(s) for s in names_list), dtype=bool, count=n)
    idx = np.flatnonzero(shown)
    names = np.empty(len(idx), dtype=object)
    names[:] = [names_list[i] for i in idx.tolist()]
    addrs, lets, und = value[idx], letters[idx], undef[idx]
    # nm -n: undefined first, then value, then name (C collation)
    name_rank = np.empty(len(idx), dtype=np.int64)
    name_rank[np.argsort(names, kind="stable")] = np.arange(len(idx))
    order = np.lexsort((name_rank, addrs, ~und))
    return addrs[order], lets[order], names[order]


def _section_letter(name: str, sh_type: int, flags: int) -> str:
    if flags & SHF.EXECINSTR:
        return "t"
    alloc = bool(flags & SHF.ALLOC)
    nobits = sh_type == SHT.NOBITS
    if alloc and not nobits:
        return "d" if flags & SHF.WRITE else "r"
    if nobits:
        return "b"
    if name.startswith(_DEBUG_PREFIXES) or name == ".gdb_index":
        return "N"
    if not flags & SHF.WRITE:
        return "n"
    return "?"


_BANNER = re.compile(rb"Linux version (\S+)")


def banner_version(elf: ElfFile) -> KernelVersion | None:
    """The release in ``linux_banner`` ("Linux version 6.1.0-56-amd64 ..."),
    or None if it cannot be found."""
    st = elf.symtab
    try:
        i = st.names().index("linux_banner")
    except ValueError:
        return None
    addr = int(st.array["st_value"][i])
    sec = elf.section_by_uid(int(st.section_ref[i]))
    if sec is None or sec.type == SHT.NOBITS or not sec.addr <= addr < sec.addr + sec.size:
        return None
    off = addr - sec.addr
    m = _BANNER.match(bytes(sec.content()[off: off + 256]))
    if not m:
        return None
    try:
        return KernelVersion.parse(m.group(1).decode("ascii", errors="replace"))
    except KernelSourceError:
        return None
