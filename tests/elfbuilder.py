"""A tiny ELF64 relocatable-object builder for synthetic test inputs.

Deliberately independent of klpsym's writer (plain ``struct``), so tests
check klpsym against a second implementation, and binutils' readelf against
both.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_SYMTAB_SHNDX = 1, 2, 3, 4, 8, 18
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_INFO_LINK = 1, 2, 4, 0x40
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION = 0, 1, 2, 3
SHN_UNDEF, SHN_ABS, SHN_XINDEX, SHN_LORESERVE = 0, 0xFFF1, 0xFFFF, 0xFF00
R_X86_64_64, R_X86_64_PC32, R_X86_64_PLT32 = 1, 2, 4
EM_X86_64, EM_AARCH64 = 62, 183

#: The kernel release synthetic modules and made-up kernels carry.  It is no
#: Debian kernel's (Debian's are ``6.1.0-NN-amd64``), so a test on a real,
#: provisioned kernel that forgets to pass that kernel's own release fails at
#: once, not only when Debian's archive moves to the next ABI.  Same length as
#: bookworm's releases, so the fuzzer's corpus could take it in place.
SYNTH_RELEASE = "6.1.0-99-synth"


@dataclass
class Sec:
    name: str
    type: int
    flags: int = 0
    data: bytes = b""
    align: int = 1
    entsize: int = 0
    link: Sec | None = None
    info: Sec | int = 0
    nobits_size: int = 0
    index: int = -1


@dataclass
class Sym:
    name: str
    section: Sec | int = SHN_UNDEF  # a Sec, or a reserved index
    bind: int = STB_GLOBAL
    type: int = STT_NOTYPE
    value: int = 0
    size: int = 0
    index: int = -1


@dataclass
class Rel:
    offset: int
    sym: Sym
    type: int
    addend: int = 0


@dataclass
class ElfBuilder:
    big_endian: bool = False
    machine: int = EM_X86_64
    elf_class: int = 2
    e_type: int = 1
    sections: list[Sec] = field(default_factory=list)
    symbols: list[Sym] = field(default_factory=list)
    relocs: dict[str, list[Rel]] = field(default_factory=dict)
    targets: dict[str, Sec] = field(default_factory=dict)
    force_xindex: bool = False  # write SHT_SYMTAB_SHNDX even when not needed

    @property
    def e(self) -> str:
        return ">" if self.big_endian else "<"

    def section(self, name: str, type: int = SHT_PROGBITS, flags: int = SHF_ALLOC,
                data: bytes = b"", align: int = 1, nobits_size: int = 0) -> Sec:
        s = Sec(name, type, flags, data, align, nobits_size=nobits_size)
        self.sections.append(s)
        return s

    def text(self, size: int = 64, name: str = ".text") -> Sec:
        return self.section(name, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, bytes(size), 16)

    def symbol(self, name: str, section: Sec | int = SHN_UNDEF, bind: int = STB_GLOBAL,
               type: int = STT_NOTYPE, value: int = 0, size: int = 0) -> Sym:
        s = Sym(name, section, bind, type, value, size)
        self.symbols.append(s)
        return s

    def rela(self, target: Sec, offset: int, sym: Sym, type: int = R_X86_64_PLT32,
             addend: int = -4) -> None:
        self.relocs.setdefault(target.name, []).append(Rel(offset, sym, type, addend))
        self.targets[target.name] = target

    def modinfo(self, **entries: str) -> Sec:
        blob = b"".join(f"{k}={v}".encode() + b"\0" for k, v in entries.items())
        return self.section(".modinfo", SHT_PROGBITS, SHF_ALLOC, blob, 1)

    def versions(self, crcs: dict[str, int]) -> Sec:
        """``__versions`` as modpost writes it: a CRC and a 56-byte name each."""
        return self.section("__versions", data=b"".join(
            struct.pack(self.e + "Q", c) + n.encode().ljust(56, b"\0") for n, c in crcs.items()),
            align=32)

    def this_module(self, name: str) -> Sec:
        """``.gnu.linkonce.this_module`` (struct module) with the name at offset 24."""
        this = bytearray(1024)
        this[24:24 + len(name)] = name.encode()
        return self.section(".gnu.linkonce.this_module", data=bytes(this),
                            flags=SHF_ALLOC | SHF_WRITE, align=64)

    def module(self, license: str = "GPL", release: str = SYNTH_RELEASE,
               name: str = "synthetic") -> None:
        """The .modinfo a kbuild module carries."""
        self.modinfo(license=license, name=name,
                     vermagic=f"{release} SMP preempt mod_unload modversions ")

    # ------------------------------------------------------------------

    def build(self) -> bytes:
        e = self.e
        secs: list[Sec] = [Sec("", 0)] + list(self.sections)
        for name in self.relocs:
            secs.append(Sec(".rela" + name, SHT_RELA, SHF_INFO_LINK, b"", 8, 24,
                            info=self.targets[name]))
        symtab = Sec(".symtab", SHT_SYMTAB, 0, b"", 8, 24)
        strtab = Sec(".strtab", SHT_STRTAB, 0, b"", 1)
        shstrtab = Sec(".shstrtab", SHT_STRTAB, 0, b"", 1)
        secs += [symtab, strtab]
        for i, s in enumerate(secs):
            s.index = i
        big = len(secs) + 2 >= SHN_LORESERVE or self.force_xindex
        xsec = None
        if big:
            xsec = Sec(".symtab_shndx", SHT_SYMTAB_SHNDX, 0, b"", 4, 4, link=symtab)
            secs.append(xsec)
        secs.append(shstrtab)
        for i, s in enumerate(secs):
            s.index = i
        symtab.link = strtab

        # symbols: null, then locals, then globals (sh_info = first global)
        syms = [Sym("", SHN_UNDEF, STB_LOCAL)]
        syms += [s for s in self.symbols if s.bind == STB_LOCAL]
        syms += [s for s in self.symbols if s.bind != STB_LOCAL]
        strtab_data = bytearray(b"\0")
        symdata = bytearray()
        xdata = bytearray()
        for i, sym in enumerate(syms):
            sym.index = i
            name_off = 0
            if sym.name:
                name_off = len(strtab_data)
                strtab_data += sym.name.encode() + b"\0"
            if isinstance(sym.section, Sec):
                idx = sym.section.index
                shndx, xval = (SHN_XINDEX, idx) if idx >= SHN_LORESERVE else (idx, 0)
            else:
                shndx, xval = sym.section, 0
            symdata += struct.pack(e + "IBBHQQ", name_off, (sym.bind << 4) | sym.type, 0, shndx,
                                   sym.value, sym.size)
            xdata += struct.pack(e + "I", xval)
        symtab.data = bytes(symdata)
        symtab.info = sum(1 for sym in syms if sym.bind == STB_LOCAL)
        strtab.data = bytes(strtab_data)
        if xsec is not None:
            xsec.data = bytes(xdata)
        for s in secs:
            if s.type == SHT_RELA:
                target = s.info
                assert isinstance(target, Sec)
                s.data = b"".join(
                    struct.pack(e + "QQq", r.offset, (r.sym.index << 32) | r.type, r.addend)
                    for r in self.relocs[target.name])
                s.link = symtab

        names = bytearray(b"\0")
        name_offs = []
        for s in secs:
            if s.name:
                name_offs.append(len(names))
                names += s.name.encode() + b"\0"
            else:
                name_offs.append(0)
        shstrtab.data = bytes(names)

        out = bytearray(64)
        offsets = []
        for s in secs:
            if s.index == 0 or s.type == SHT_NOBITS:
                offsets.append(len(out) if s.index else 0)
                continue
            pad = (-len(out)) % max(s.align, 1)
            out += bytes(pad)
            offsets.append(len(out))
            out += s.data
        out += bytes((-len(out)) % 8)
        shoff = len(out)
        n = len(secs)
        for s, off, name_off in zip(secs, offsets, name_offs, strict=True):
            size = s.nobits_size if s.type == SHT_NOBITS else len(s.data)
            link = s.link.index if s.link is not None else 0
            info = s.info.index if isinstance(s.info, Sec) else s.info
            if s.index == 0:
                size = n if n >= SHN_LORESERVE else 0
                link = shstrtab.index if shstrtab.index >= SHN_LORESERVE else 0
            out += struct.pack(e + "IIQQQQIIQQ", name_off, s.type, s.flags, 0, off, size, link,
                               info, s.align, s.entsize)
        ident = b"\x7fELF" + bytes([self.elf_class, 2 if self.big_endian else 1, 1, 0]) + bytes(8)
        shnum = n if n < SHN_LORESERVE else 0
        shstrndx = shstrtab.index if shstrtab.index < SHN_LORESERVE else SHN_XINDEX
        out[:64] = ident + struct.pack(e + "HHIQQQIHHHHHH", self.e_type, self.machine, 1, 0, 0,
                                       shoff, 0, 64, 0, 0, 64, shnum, shstrndx)
        return bytes(out)


def simple_module(unexported: tuple[str, ...] = ("kallsyms_lookup_name",),
                  exported: tuple[str, ...] = ("_printk",), license: str = "GPL",
                  release: str = SYNTH_RELEASE, big_endian: bool = False,
                  machine: int = EM_X86_64) -> ElfBuilder:
    """A module-shaped object: .text calling each symbol, .data pointing at
    each, .modinfo with license and vermagic."""
    b = ElfBuilder(big_endian=big_endian, machine=machine)
    names = unexported + exported
    text = b.text(16 * max(len(names), 1))
    data = b.section(".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, bytes(8 * max(len(names), 1)), 8)
    b.module(license=license, release=release)
    b.symbol(".text", text, STB_LOCAL, STT_SECTION)
    b.symbol("init_module", text, STB_GLOBAL, STT_FUNC, 0, 16)
    for i, name in enumerate(names):
        s = b.symbol(name)
        b.rela(text, 16 * i + 1, s, R_X86_64_PLT32, -4)
        b.rela(data, 8 * i, s, R_X86_64_64, 0)
    return b
