"""The check's fast module reader: :func:`fast_facts`.

Reading a whole distribution's modules (4,000 files) through the general
ELF model (:func:`klpsym.load.facts.facts_of`) costs ~0.5 ms a module:
Section objects for every section, a writable copy of the symbol table, a
Python object per export.  The check needs far less, so the common module
(64-bit little-endian, one symbol table, no livepatch content, known
relocation types) is read here straight from the file's bytes: section
headers and export tables with struct, the symbol table as a numpy view,
names decoded in bulk, relocation types as one strided view over the
adjacent relocation tables.  Whenever the file is anything else -- or
anything the general reader would refuse -- this path gives up (returns
None) and facts_of() reads it, so the facts and error messages are the
general reader's by construction; tests compare both on every module of
the lab's kernels and on corrupted copies, and the fuzzer (tests/fuzz)
feeds it mutated modules.

Every constant comes from where the general reader takes it (the ELF
enums, klpsym.module's section tables, klp.x86's relocation types,
kernel.version's MODULE_NAME_LEN); the layouts read with struct are the
ELF64 little-endian ones of klpsym.elf.layout (tests/unit/test_check.py
holds them equal).

Each method of the reader is the counterpart of one general reader
(module.modinfo, module.versions, elf.file's symbol table, klp.x86,
module.exports), so that a rule of the loader is found in one place here
and one there.
"""

from __future__ import annotations

import operator
import struct
from pathlib import Path

import numpy as np

from klpsym.elf.constants import (
    ELF_MAGIC,
    EM,
    ET,
    R_X86_64,
    SHF,
    SHN,
    SHT,
    STB,
    ElfClass,
    ElfData,
)
from klpsym.elf.layout import layout_for, record_struct
from klpsym.errors import KlpsymError
from klpsym.klp.x86 import X86_64_HANDLED
from klpsym.load.model import THIS_MODULE_SECTION, ExportFact, ModuleFacts, struct_module_name
from klpsym.module.exports import (
    FLAGS_SECTION,
    GPL_ONLY,
    KSYM_FLAG_GPL_ONLY,
    KSYMTAB_SECTIONS,
    STRINGS_SECTION,
    crc_section,
)
from klpsym.module.modinfo import MODINFO_SECTION
from klpsym.module.signature import MODULE_SIG_STRING
from klpsym.module.versions import (
    EXT_CRCS_SECTION,
    EXT_NAMES_SECTION,
    VERSIONS_SECTION,
    VersionsFormat,
    modversion_dtype,
)

_STB_WEAK = int(STB.WEAK)
_SHF_ALLOC = int(SHF.ALLOC)
_SHF_RELA_LIVEPATCH = int(SHF.RELA_LIVEPATCH)

# The ELF64 little-endian layouts, from klpsym.elf.layout
_LE = layout_for(ElfClass.ELF64, ElfData.LSB)
_EHDR = record_struct(_LE.ehdr)
_SHDR = record_struct(_LE.shdr)
_SYM = record_struct(_LE.sym)
_RELA_RECORD = record_struct(_LE.rela)
_SYM_DTYPE = _LE.sym
_RELA_SIZE = _RELA_RECORD.size
_R_INFO_AT = _LE.rela.fields["r_info"][1]  # type: ignore[index]  # a record dtype
_ELF64_LSB = ELF_MAGIC + bytes([ElfClass.ELF64, ElfData.LSB])
# struct modversion_info (module.versions)
_VERSIONS_DTYPE = modversion_dtype("<")
# __ksymtab* section -> whether its exports are GPL-only
_KSYMTABS = {name.encode(): t in GPL_ONLY for name, t in KSYMTAB_SECTIONS.items()}
_HANDLED_X86_64 = np.zeros(256, dtype=bool)
_HANDLED_X86_64[sorted(X86_64_HANDLED)] = True
_POWERS_OF_TWO = frozenset({0} | {1 << k for k in range(64)})
_FALLBACK_SHN = frozenset({int(SHN.XINDEX), int(SHN.COMMON), int(SHN.LIVEPATCH)})
# x86_64 kernel_symbol fields: R_X86_64_PC32 (4.19+ place-relative), R_X86_64_64
_X86_64_PREL32, _X86_64_ABS64 = int(R_X86_64.PC32), int(R_X86_64.R64)
# The sections read by name, as the general reader names them
_MODINFO = MODINFO_SECTION.encode()
_THIS_MODULE = THIS_MODULE_SECTION.encode()
_VERSIONS = VERSIONS_SECTION.encode()
_EXT_CRCS = EXT_CRCS_SECTION.encode()
_EXT_NAMES = EXT_NAMES_SECTION.encode()
_STRINGS = STRINGS_SECTION.encode()
_FLAGS = FLAGS_SECTION.encode()
_KSYMTAB = b"__ksymtab"  # the one table __kflagstab describes (module.exports)
assert _KSYMTAB in _KSYMTABS
_KCRCTABS = {name.encode(): crc_section(name).encode() for name in KSYMTAB_SECTIONS}
# Every section name the fast path looks up, and the prefixes to find them by.
_WANTED_NAMES = frozenset({_MODINFO, _THIS_MODULE, _VERSIONS, _EXT_CRCS, _EXT_NAMES, _STRINGS,
                           _FLAGS, *_KSYMTABS, *_KCRCTABS.values()})
_WANTED_PREFIXES = (_MODINFO + b"\0", _THIS_MODULE + b"\0", b"__k", b"__version")
assert all(n.startswith(_WANTED_PREFIXES) or n + b"\0" in _WANTED_PREFIXES
           for n in _WANTED_NAMES)
_NULL, _PROGBITS, _SYMTAB, _STRTAB, _RELA, _NOBITS, _SYMTAB_SHNDX = (
    int(SHT.NULL), int(SHT.PROGBITS), int(SHT.SYMTAB), int(SHT.STRTAB), int(SHT.RELA),
    int(SHT.NOBITS), int(SHT.SYMTAB_SHNDX))
_ET_REL, _EM_X86_64, _SHN_LORESERVE = int(ET.REL), int(EM.X86_64), int(SHN.LORESERVE)


class _Unusual(Exception):
    """The fast path does not handle this module: read it the general way."""


def fast_facts(data: bytes, path: Path, compression: str) -> ModuleFacts | None:
    """The facts of a decompressed module file, or None where only the
    general reader (:func:`klpsym.load.facts.facts_of`) can tell them."""
    try:
        return _Reader(data, path).facts(compression)
    except (_Unusual, KlpsymError):
        return None


def _decode_all(parts: list[bytes], errors: str) -> list[str]:
    """``[p.decode("utf-8", errors) for p in parts]``, in one decode when
    they are all ASCII (and none holds a NUL)."""
    joined = b"\0".join(parts)
    if joined.isascii() and joined.count(b"\0") == len(parts) - 1:
        return joined.decode("ascii").split("\0") if parts else []
    return [p.decode("utf-8", errors) for p in parts]


class _Reader:
    """One module's ELF part, checked the way elf.file._read checks it."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path
        size = len(data)
        self.signed = data.endswith(MODULE_SIG_STRING)
        if self.signed:  # module.signature.split_signature, without copying
            end = size - len(MODULE_SIG_STRING)
            sig_len = int.from_bytes(data[end - 4:end], "big") if end >= 12 else 0
            size = end - 12 - sig_len
            if sig_len == 0 or size < 0:
                raise _Unusual
        if size < _EHDR.size or data[:6] != _ELF64_LSB:
            raise _Unusual
        (_, etype, self.machine, _, _, _, shoff, _, _, _, phnum, shentsize, shnum,
         shstrndx) = _EHDR.unpack_from(data)
        if (etype != _ET_REL or phnum != 0 or shoff == 0 or shentsize != _SHDR.size
                or shnum == 0 or shoff + shnum * _SHDR.size > size or not 0 < shstrndx < shnum):
            raise _Unusual
        self.shnum = shnum
        self.rows = rows = list(_SHDR.iter_unpack(data[shoff:shoff + shnum * _SHDR.size]))
        (names, self.types, self.flags, _, self.offsets, self.sizes, self.links, self.infos,
         aligns, self.entsizes) = zip(*rows, strict=True)
        types = self.types
        if (not set(aligns[1:]) <= _POWERS_OF_TWO or _NULL in types[1:]
                or _SYMTAB_SHNDX in types or types.count(_SYMTAB) > 1):
            raise _Unusual
        if max(map(operator.add, self.offsets, self.sizes)) > size and any(
                o + s > size for t, o, s in zip(types, self.offsets, self.sizes, strict=True)
                if t != _NOBITS and t != _NULL):
            raise _Unusual
        self.relas = [i for i, t in enumerate(types) if t == _RELA]
        if sum(self.sizes[i] for i in self.relas) > size:
            # relocation tables that overlap (more of them than the file
            # holds) would be read over and over: not a linked module
            raise _Unusual
        shstr = self.shstr = self.content(shstrndx)
        if not shstr.endswith(b"\0") or max(names[1:], default=0) >= len(shstr):
            raise _Unusual
        # The sections the check reads, by name: where those names are in
        # the name table, and which sections have them.
        by_offset = dict(zip(names[1:], range(1, shnum), strict=True))
        shared: dict[int, list[int]] = {}
        if len(by_offset) != shnum - 1:  # sections that share a name offset
            for i in range(1, shnum):
                shared.setdefault(names[i], []).append(i)
        self.named: dict[bytes, list[int]] = {}
        index = shstr.index
        for prefix in _WANTED_PREFIXES:
            p = shstr.find(prefix)
            while p >= 0:
                name = shstr[p:index(b"\0", p)]
                found = shared.get(p, []) if shared else [by_offset[p]] if p in by_offset else []
                if found and name in _WANTED_NAMES:
                    self.named.setdefault(name, []).extend(found)
                p = shstr.find(prefix, p + 1)
        for found in self.named.values():
            found.sort()

    def content(self, i: int) -> bytes:
        t = self.types[i]
        if t == _NOBITS or t == _NULL:
            return b""
        off = self.offsets[i]
        return self.data[off:off + self.sizes[i]]

    def sections_named(self, name: bytes) -> list[int]:
        """The indexes of the sections called ``name`` (one of
        _WANTED_NAMES), in order."""
        return self.named.get(name, [])

    def section(self, name: bytes) -> int | None:
        found = self.named.get(name)
        return found[0] if found else None

    def facts(self, compression: str) -> ModuleFacts:
        f = ModuleFacts(self.path, compression=compression, machine=self.machine,
                        signed=self.signed)
        self._modinfo(f)
        # struct module's name
        this = self.section(_THIS_MODULE)
        f.has_this_module = this is not None
        struct_name = ""
        if this is not None and self.types[this] != _NOBITS:
            struct_name = struct_module_name(self.content(this))
        f.name = struct_name or f.modinfo_name or self.path.name.split(".")[0].replace("-", "_")
        self._versions(f)
        f.has_symtab = _SYMTAB in self.types
        if not f.has_symtab:
            return f
        syms, strtab = self._symtab()
        if any(flag & _SHF_RELA_LIVEPATCH for flag in set(self.flags)):
            raise _Unusual
        self.syms = syms
        self._undefined(f, syms, strtab)
        if self.machine == _EM_X86_64:
            self._relocation_types()
        tables = sorted(i for name in _KSYMTABS for i in self.sections_named(name)
                        if self.types[i] != _NOBITS)
        if any(self.sizes[i] for i in tables):
            if self.machine != _EM_X86_64:
                raise _Unusual
            for t in tables:
                if self.sizes[t]:
                    f.exports += self._exports(t)
        f.exports_crcs = all(e.crc is not None for e in f.exports)
        return f

    def _modinfo(self, f: ModuleFacts) -> None:
        """module.modinfo.read_modinfo: the first value of each key."""
        mi = self.section(_MODINFO)
        text = b"" if mi is None or self.types[mi] == _NOBITS else b"\0" + self.content(mi)

        def values(key: bytes, first: bool = True) -> list[str]:
            """The values of the entries "key=value" (each after a NUL)."""
            out = []
            needle = b"\0" + key + b"="
            p = text.find(needle)
            while p >= 0:
                start = p + len(needle)
                end = text.find(b"\0", start)
                out.append(text[start:end if end >= 0 else len(text)].decode("utf-8", "replace"))
                if first:
                    break
                p = text.find(needle, start)
            return out

        def get(key: bytes) -> str | None:
            found = values(key)
            return found[0] if found else None

        f.modinfo_name = get(b"name")
        f.vermagic = get(b"vermagic")
        f.license = get(b"license")
        f.import_ns = tuple(values(b"import_ns", first=False))
        f.intree = b"\0intree=" in text
        f.staging = b"\0staging=" in text
        f.livepatch = b"\0livepatch=" in text

    def _versions(self, f: ModuleFacts) -> None:
        """module.versions.read_versions."""
        ext_crcs = self.section(_EXT_CRCS)
        ext_names = self.section(_EXT_NAMES)
        if ext_crcs is not None or ext_names is not None:
            if (ext_crcs is None or ext_names is None or self.sizes[ext_crcs] % 4
                    or self.types[ext_crcs] != _PROGBITS or self.types[ext_names] != _PROGBITS):
                raise _Unusual
            values = np.frombuffer(self.content(ext_crcs), dtype="<u4").tolist()
            raw = self.content(ext_names)
            if raw.count(b"\0") < len(values):
                raise _Unusual
            vnames = _decode_all(raw.split(b"\0")[:len(values)], "replace")
            f.versions = dict(zip(vnames, values, strict=True))
            f.versions_format = VersionsFormat.EXTENDED.value
            f.has_crcs = True
            return
        vi = self.section(_VERSIONS)
        if vi is None:
            return
        raw = self.content(vi)
        if self.types[vi] != _PROGBITS or len(raw) % _VERSIONS_DTYPE.itemsize:
            raise _Unusual
        arr = np.frombuffer(raw, dtype=_VERSIONS_DTYPE)
        names = _decode_all(arr["name"].tolist(), "replace")
        f.versions = dict(zip(names, (arr["crc"] & 0xFFFFFFFF).tolist(), strict=True))
        f.versions_format = VersionsFormat.BASIC.value
        f.has_crcs = True

    def _symtab(self) -> tuple[np.ndarray, bytes]:
        """elf.file._read_symtab's checks; the symbols as a view."""
        i = self.types.index(_SYMTAB)
        link, size = self.links[i], self.sizes[i]
        if self.entsizes[i] not in (0, _SYM.size) or size % _SYM.size or not 0 < link < self.shnum \
                or self.types[link] != _STRTAB:
            raise _Unusual
        strtab = self.content(link)
        self.symtab_offset = self.offsets[i]
        syms = np.frombuffer(self.data, dtype=_SYM_DTYPE, count=size // _SYM.size,
                             offset=self.offsets[i])
        if len(syms):
            if not strtab.endswith(b"\0") or int(syms["st_name"].max()) >= len(strtab):
                raise _Unusual
            shndx = syms["st_shndx"]
            if int(shndx.max()) >= self.shnum:
                # Reserved indexes are fine but for these (the general
                # reader handles them); others past the count are refused.
                high = set(shndx[shndx >= self.shnum].tolist())
                if min(high) < _SHN_LORESERVE or high & _FALLBACK_SHN:
                    raise _Unusual
        return syms, strtab

    def _undefined(self, f: ModuleFacts, syms: np.ndarray, strtab: bytes) -> None:
        mask = syms["st_shndx"] == 0
        if len(mask):
            mask[0] = False  # the null symbol
        undefined = syms[mask]
        weak = [info >> 4 == _STB_WEAK for info in undefined["st_info"].tolist()]
        offsets = undefined["st_name"].tolist()
        names: list[str]
        if strtab.isascii():  # decoded once; byte offsets are character offsets
            text = strtab.decode("ascii")
            index = text.index
            names = [text[o:index("\0", o)] for o in offsets]
        else:
            bindex = strtab.index
            names = [strtab[o:bindex(b"\0", o)].decode("utf-8", "surrogateescape")
                     for o in offsets]
        if "" in names:  # an empty name is no symbol to resolve
            weak = [w for n, w in zip(names, weak, strict=True) if n]
            names = [n for n in names if n]
        f.undefined = list(zip(names, weak, strict=True))

    def _relocation_types(self) -> None:
        """klp.x86.unhandled_relocation_types(): any type apply_relocate_add() does
        not handle sends the module to facts_of(), which lists them.  One
        strided view per run of adjacent tables."""
        runs: list[list[int]] = []  # [start, end]
        flags, shnum = self.flags, self.shnum
        for i in self.relas:
            target = self.infos[i]
            if not 0 < target < shnum or not flags[target] & _SHF_ALLOC:
                continue
            off, size = self.offsets[i], self.sizes[i]
            if size % _RELA_SIZE:
                raise _Unusual
            if runs and runs[-1][1] == off:
                runs[-1][1] = off + size
            elif size:
                runs.append([off, off + size])
        for start, end in runs:
            # r_type: the low half of r_info
            types = np.ndarray(((end - start) // _RELA_SIZE,), dtype="<u4", buffer=self.data,
                               offset=start + _R_INFO_AT, strides=(_RELA_SIZE,))
            if int(types.max()) >= len(_HANDLED_X86_64) or not _HANDLED_X86_64[types].all():
                raise _Unusual

    def _exports(self, table: int) -> list[ExportFact]:
        """module.exports._read_table for an x86_64 table whose entries are
        all relocated, without two relocations at one offset, and with
        literal CRCs; else _Unusual.  Plain Python: a table has tens of
        entries, fewer than numpy's calls would cost."""
        relocs: dict[int, tuple[int, int]] = {}  # offset -> (symbol, addend)
        types = set()
        count = 0
        for i in self.relas:
            if self.infos[i] != table:
                continue
            if self.entsizes[i] not in (0, _RELA_SIZE) or self.sizes[i] % _RELA_SIZE:
                raise _Unusual
            off = self.offsets[i]
            for r_offset, r_info, r_addend in _RELA_RECORD.iter_unpack(
                    self.data[off:off + self.sizes[i]]):
                relocs[r_offset] = (r_info >> 32, r_addend)
                types.add(r_info & 0xFFFFFFFF)
                count += 1
        if not relocs or len(relocs) != count:
            raise _Unusual
        if types == {_X86_64_PREL32}:
            field = 4
        elif types == {_X86_64_ABS64}:
            field = 8
        else:
            raise _Unusual
        nsyms, symoff = len(self.syms), self.symtab_offset
        targets: dict[int, tuple[int | None, int]] = {}
        for r_offset, (sym, addend) in relocs.items():
            if sym >= nsyms:
                raise _Unusual
            shndx, value = _SYM.unpack_from(self.data, symoff + _SYM.size * sym)[3:5]
            # module.exports._Resolver.target(): section (None: absolute,
            # undefined or another reserved index) and offset in it
            targets[r_offset] = (shndx if 0 < shndx < _SHN_LORESERVE else None,
                                 value + addend)
        strings = self.section(_STRINGS)
        size = self.sizes[table]
        if size % (2 * field) and not size % (3 * field):
            nfields = 3
        elif size % (3 * field) and not size % (2 * field):
            nfields = 2
        else:
            third = targets.get(2 * field)
            nfields = 3 if third is None or strings is not None and third[0] == strings else 2
        entsize = nfields * field
        if size % entsize:
            raise _Unusual
        count = size // entsize
        name = self.shstr[self.rows[table][0]:].split(b"\0", 1)[0]
        gpl_only: list[bool] = [_KSYMTABS[name]] * count
        flags_sec = self.section(_FLAGS)
        if flags_sec is not None and name == _KSYMTAB:
            # one byte per entry, KSYM_FLAG_GPL_ONLY (module.exports)
            flags = self.content(flags_sec)
            if len(flags) < count:
                raise _Unusual
            gpl_only = [bool(b & KSYM_FLAG_GPL_ONLY) for b in flags[:count]]
        crcs: list[int] | list[None] = [None] * count
        crc_sec = self.section(_KCRCTABS[name])
        if crc_sec is not None and self.types[crc_sec] != _NOBITS:
            if self.sizes[crc_sec] != 4 * count or any(self.infos[i] == crc_sec
                                                       for i in self.relas):
                raise _Unusual
            crcs = list(struct.unpack(f"<{count}I", self.content(crc_sec)))
        texts: dict[int, bytes] = {}

        def string(target: tuple[int | None, int]) -> str:
            sec, off = target
            if sec is None:
                raise _Unusual
            text = texts.get(sec)
            if text is None:
                text = texts[sec] = self.content(sec)
            end = text.find(b"\0", off)
            if off < 0 or off >= len(text) or end < 0:
                raise _Unusual
            return text[off:end].decode("utf-8", "replace")

        out = []
        for i in range(count):
            base = i * entsize
            name_at = targets.get(base + field)
            if base not in targets or name_at is None:  # a field not relocated
                raise _Unusual
            namespace = ""
            if nfields == 3:
                ns = targets.get(base + 2 * field)
                if ns is not None and ns[0] is not None:
                    namespace = string(ns)
            out.append(ExportFact(string(name_at), gpl_only[i], namespace, crcs[i]))
        return out
