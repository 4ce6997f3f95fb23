"""Write a small vmlinux-like ELF64 executable (ET_EXEC, x86-64) with a
.symtab, using plain ``struct`` (independent of klpsym's ELF layer), so that
binutils' nm and klpsym.kernel.vmlinux can both read it."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS = 1, 2, 3, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
SHN_UNDEF, SHN_ABS = 0, 0xFFF1


@dataclass
class XSec:
    name: str
    type: int
    flags: int
    addr: int
    size: int
    data: bytes = b""  # PROGBITS content (padded to size)


@dataclass
class XSym:
    name: str
    value: int
    section: str | int  # section name, or SHN_UNDEF / SHN_ABS
    bind: int = STB_GLOBAL
    type: int = STT_FUNC
    size: int = 0


@dataclass
class VmlinuxImage:
    sections: list[XSec] = field(default_factory=list)
    symbols: list[XSym] = field(default_factory=list)

    def section(self, name: str) -> XSec:
        return next(s for s in self.sections if s.name == name)

    def to_bytes(self) -> bytes:
        shstr = bytearray(b"\0")
        strtab = bytearray(b"\0")

        def add(table: bytearray, text: str) -> int:
            off = len(table)
            table += text.encode() + b"\0"
            return off

        secs = list(self.sections)
        index = {s.name: i + 1 for i, s in enumerate(secs)}
        # locals first, as ELF requires; st_info > last local in sh_info
        syms = sorted(self.symbols, key=lambda s: s.bind != STB_LOCAL)
        symdata = bytearray(24)  # entry 0
        for s in syms:
            if isinstance(s.section, str):
                shndx = index[s.section]
            else:
                shndx = s.section
            symdata += struct.pack("<IBBHQQ", add(strtab, s.name) if s.name else 0,
                                   (s.bind << 4) | s.type, 0, shndx, s.value, s.size)
        n_local = 1 + sum(1 for s in syms if s.bind == STB_LOCAL)

        out = bytearray(64)
        headers: list[tuple[int, int, int, int, int, int, int, int, int, int]] = []
        for s in secs:
            name = add(shstr, s.name)
            if s.type == SHT_NOBITS:
                headers.append((name, s.type, s.flags, s.addr, len(out), s.size, 0, 0, 1, 0))
                continue
            body = s.data.ljust(s.size, b"\xcc" if s.flags & SHF_EXECINSTR else b"\0")
            off = len(out)
            out += body
            headers.append((name, s.type, s.flags, s.addr, off, len(body), 0, 0, 1, 0))
        strtab_i, shstrtab_i = len(secs) + 2, len(secs) + 3
        sym_name, str_name, shs_name = add(shstr, ".symtab"), add(shstr, ".strtab"), \
            add(shstr, ".shstrtab")
        while len(out) % 8:
            out += b"\0"
        headers.append((sym_name, SHT_SYMTAB, 0, 0, len(out), len(symdata), strtab_i, n_local,
                        8, 24))
        out += symdata
        headers.append((str_name, SHT_STRTAB, 0, 0, len(out), len(strtab), 0, 0, 1, 0))
        out += strtab
        headers.append((shs_name, SHT_STRTAB, 0, 0, len(out), len(shstr), 0, 0, 1, 0))
        out += shstr
        while len(out) % 8:
            out += b"\0"
        shoff = len(out)
        out += bytes(64)  # section 0
        for h in headers:
            out += struct.pack("<IIQQQQIIQQ", *h)
        ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
        out[:64] = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0xFFFFFFFF81000000, 0,
                                       shoff, 0, 64, 0, 0, 64, len(headers) + 1, shstrtab_i)
        return bytes(out)


TEXT = 0xFFFFFFFF81000000
INIT = 0xFFFFFFFF83000000
RODATA = 0xFFFFFFFF82000000
DATA = 0xFFFFFFFF82800000
BSS = 0xFFFFFFFF82C00000


def sample_image(release: str = "6.1.0-99-test") -> VmlinuxImage:
    """A vmlinux with the cases kallsyms treats specially."""
    banner = f"Linux version {release} (test@example) #1 SMP\n".encode()
    img = VmlinuxImage(sections=[
        XSec(".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, TEXT, 0x1000),
        XSec(".rodata", SHT_PROGBITS, SHF_ALLOC, RODATA, 0x100, banner),
        XSec(".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, DATA, 0x100),
        XSec(".data..percpu", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, 0, 0x100),
        XSec(".bss", SHT_NOBITS, SHF_ALLOC | SHF_WRITE, BSS, 0x100),
        XSec(".init.text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, INIT, 0x100),
        XSec(".comment", SHT_PROGBITS, 0, 0, 0x10, b"GCC: test"),
    ])
    S = XSym
    img.symbols = [
        S("vmlinux.o", 0, SHN_ABS, STB_LOCAL, STT_FILE),
        S("", TEXT, ".text", STB_LOCAL, STT_SECTION),
        # text range and its corner cases
        S("_text", TEXT, ".text", STB_GLOBAL, STT_NOTYPE),
        S("_stext", TEXT, ".text", STB_GLOBAL, STT_NOTYPE),
        S("startup_64", TEXT, ".text", STB_GLOBAL, STT_FUNC),
        S("__startup_secondary", TEXT, ".text", STB_GLOBAL, STT_FUNC),
        S("weak_at_text", TEXT, ".text", STB_WEAK, STT_FUNC),
        S("dup", TEXT + 0x100, ".text", STB_LOCAL, STT_FUNC),
        S("dup", TEXT + 0x200, ".text", STB_LOCAL, STT_FUNC),
        S("dup", TEXT + 0x300, ".text", STB_LOCAL, STT_FUNC),
        S("same_addr_dup", TEXT + 0x400, ".text", STB_LOCAL, STT_FUNC),
        S("same_addr_dup", TEXT + 0x400, ".text", STB_LOCAL, STT_FUNC),
        S("__end_of_thing", TEXT + 0x500, ".text", STB_GLOBAL, STT_NOTYPE),
        S("__x_start", TEXT + 0x500, ".text", STB_GLOBAL, STT_NOTYPE),
        S("a_plain", TEXT + 0x500, ".text", STB_GLOBAL, STT_FUNC),
        S("__b_plain", TEXT + 0x500, ".text", STB_GLOBAL, STT_FUNC),
        S("_b_one", TEXT + 0x500, ".text", STB_GLOBAL, STT_FUNC),
        S(".Llocal_label", TEXT + 0x600, ".text", STB_LOCAL, STT_NOTYPE),
        S("$x", TEXT + 0x600, ".text", STB_LOCAL, STT_NOTYPE),
        S("__kcfi_typeid_foo", 0x1234, SHN_ABS, STB_GLOBAL, STT_NOTYPE),
        S("x" * 600, TEXT + 0x700, ".text", STB_LOCAL, STT_FUNC),
        S("at_etext", TEXT + 0x1000, ".text", STB_LOCAL, STT_NOTYPE),
        S("_etext", TEXT + 0x1000, ".text", STB_GLOBAL, STT_NOTYPE),
        # init text
        S("_sinittext", INIT, ".init.text", STB_GLOBAL, STT_NOTYPE),
        S("dup", INIT + 0x10, ".init.text", STB_LOCAL, STT_FUNC),
        S("_einittext", INIT + 0x100, ".init.text", STB_GLOBAL, STT_NOTYPE),
        # data, outside the text ranges
        S("linux_banner", RODATA, ".rodata", STB_GLOBAL, STT_OBJECT, len(banner)),
        S("__kstrtab_dup_export", RODATA + 0x80, ".rodata", STB_LOCAL, STT_OBJECT),
        S("__start___tracepoints", RODATA + 0x90, ".rodata", STB_GLOBAL, STT_NOTYPE),
        S("kallsyms_offsets", RODATA + 0xA0, ".rodata", STB_GLOBAL, STT_NOTYPE),
        S("dup", DATA + 0x10, ".data", STB_LOCAL, STT_OBJECT),
        S("global_var", DATA + 0x20, ".data", STB_GLOBAL, STT_OBJECT),
        S("weak_var", DATA + 0x30, ".data", STB_WEAK, STT_OBJECT),
        S("bss_var", BSS + 0x10, ".bss", STB_LOCAL, STT_OBJECT),
        # per-cpu (absolute per-cpu: shown as 'A' by kallsyms)
        S("__per_cpu_start", 0, ".data..percpu", STB_GLOBAL, STT_NOTYPE),
        S("fixed_percpu_data", 0, ".data..percpu", STB_GLOBAL, STT_OBJECT),
        S("pcpu_var", 0x40, ".data..percpu", STB_LOCAL, STT_OBJECT),
        S("__per_cpu_end", 0x100, ".data..percpu", STB_GLOBAL, STT_NOTYPE),
        # absolute and undefined
        S("__crc_foo", 0xDEADBEEF, SHN_ABS, STB_GLOBAL, STT_NOTYPE),
        S("local_abs", 0x10, SHN_ABS, STB_LOCAL, STT_NOTYPE),
        S("undef_weak", 0, SHN_UNDEF, STB_WEAK, STT_NOTYPE),
    ]
    return img


# scripts/kallsyms (v6.1.192, checked with Debian's binary) on sample_image():
# (type, name) in kallsyms order.
SAMPLE_KALLSYMS_ALL = [
    ("A", "fixed_percpu_data"), ("A", "__per_cpu_start"), ("A", "pcpu_var"),
    ("A", "__per_cpu_end"),
    ("T", "startup_64"), ("T", "_stext"), ("T", "_text"), ("T", "__startup_secondary"),
    ("W", "weak_at_text"),
    ("t", "dup"), ("t", "dup"), ("t", "dup"), ("t", "same_addr_dup"), ("t", "same_addr_dup"),
    ("T", "a_plain"), ("T", "_b_one"), ("T", "__b_plain"), ("T", "__end_of_thing"),
    ("T", "__x_start"),
    ("t", "at_etext"), ("T", "_etext"),
    ("R", "linux_banner"), ("R", "__start___tracepoints"),
    ("d", "dup"), ("D", "global_var"), ("V", "weak_var"), ("b", "bss_var"),
    ("T", "_sinittext"), ("t", "dup"), ("T", "_einittext"),
]
# without CONFIG_KALLSYMS_ALL: only [_stext, _etext] and [_sinittext, _einittext],
# minus what sits at _etext but is not _etext
SAMPLE_KALLSYMS_TEXT = SAMPLE_KALLSYMS_ALL[4:19] + [
    ("T", "_etext"), ("T", "_sinittext"), ("t", "dup"), ("T", "_einittext"),
]


MKSYSMAP_TYPES = frozenset("aNUw")
MKSYSMAP_PREFIXES = ("$", ".L", "__crc_", "__kstrtab_", "__kstrtabns_")


def mksysmap(nm_lines: list[tuple[int, str, str]]) -> str:
    """scripts/mksysmap (v6.1) on ``nm -n`` rows."""
    out = []
    for addr, t, name in nm_lines:
        if t in MKSYSMAP_TYPES or name.startswith(MKSYSMAP_PREFIXES) or name == "L0":
            continue
        out.append(f"{addr:016x} {t} {name}\n")
    return "".join(out)
