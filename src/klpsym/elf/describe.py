"""Names for ELF numbers, in binutils readelf's spelling (so that ``klpsym
inspect`` reads like ``readelf -W`` to a kernel developer)."""

from __future__ import annotations

from klpsym.elf.constants import EM, ET, R_X86_64, SHF, SHN, SHT, STB, STT, ElfClass, ElfData

SECTION_TYPES = {int(t): t.name for t in SHT}
SECTION_TYPES[int(SHT.SYMTAB_SHNDX)] = "SYMTAB SECTION INDICES"
SECTION_TYPES[int(SHT.INIT_ARRAY)] = "INIT_ARRAY"

ELF_TYPES = {
    int(ET.NONE): "NONE (None)",
    int(ET.REL): "REL (Relocatable file)",
    int(ET.EXEC): "EXEC (Executable file)",
    int(ET.DYN): "DYN (Shared object file)",
    int(ET.CORE): "CORE (Core file)",
}

MACHINES = {
    int(EM.X86_64): "Advanced Micro Devices X86-64",
    int(EM.AARCH64): "AArch64",
    int(EM.PPC64): "PowerPC64",
    int(EM.S390): "IBM S/390",
    int(EM.RISCV): "RISC-V",
    int(EM.LOONGARCH): "LoongArch",
    int(EM.SPARCV9): "Sparc v9",
    int(EM.IA_64): "Intel IA-64",
}

#: The short architecture names distributions use.
ARCH_NAMES = {
    int(EM.X86_64): "x86_64",
    int(EM.AARCH64): "arm64",
    int(EM.PPC64): "ppc64",
    int(EM.S390): "s390x",
    int(EM.RISCV): "riscv64",
    int(EM.LOONGARCH): "loongarch64",
}

SYMBOL_TYPES = {int(t): t.name for t in STT}
SYMBOL_BINDS = {int(b): b.name for b in STB}
SYMBOL_VISIBILITY = {0: "DEFAULT", 1: "INTERNAL", 2: "HIDDEN", 3: "PROTECTED"}

# readelf's key to section flags, lowest bit first (binutils get_elf_section_flags).
_FLAG_LETTERS = (
    (int(SHF.WRITE), "W"),
    (int(SHF.ALLOC), "A"),
    (int(SHF.EXECINSTR), "X"),
    (int(SHF.MERGE), "M"),
    (int(SHF.STRINGS), "S"),
    (int(SHF.INFO_LINK), "I"),
    (int(SHF.LINK_ORDER), "L"),
    (int(SHF.OS_NONCONFORMING), "O"),
    (int(SHF.GROUP), "G"),
    (int(SHF.TLS), "T"),
    (int(SHF.COMPRESSED), "C"),
)
_SHF_MASKOS = 0x0FF00000
_SHF_MASKPROC = 0xF0000000
_SHF_GNU_RETAIN = 0x00200000  # readelf's "R"; the kernel's SHF_RO_AFTER_INIT
_SHF_EXCLUDE = int(SHF.EXCLUDE)


def section_flags(flags: int) -> str:
    """readelf -S's Flg column ("AX", "AIo", "WAL"...)."""
    out = []
    rest = flags
    for bit, letter in _FLAG_LETTERS:
        if flags & bit:
            out.append(letter)
            rest &= ~bit
    if rest & _SHF_GNU_RETAIN:
        out.append("R")
        rest &= ~_SHF_GNU_RETAIN
    if rest & _SHF_MASKOS:
        out.append("o")
        rest &= ~_SHF_MASKOS
    if rest & _SHF_EXCLUDE:
        out.append("E")
        rest &= ~_SHF_EXCLUDE
    if rest & _SHF_MASKPROC:
        out.append("p")
        rest &= ~_SHF_MASKPROC
    if rest:
        out.append("x")
    return "".join(out)


def section_index(ref: int, index_of_uid: dict[int, int]) -> str:
    """readelf -s's Ndx column for a SymbolTable.section_ref value."""
    if ref == 0:
        return "UND"
    if ref > 0:
        return str(index_of_uid.get(ref, ref))
    shn = -ref
    if shn == SHN.ABS:
        return "ABS"
    if shn == SHN.COMMON:
        return "COM"
    if 0xFF20 <= shn <= 0xFF3F:  # SHN_LOOS..SHN_HIOS (SHN_LIVEPATCH is 0xff20)
        return f"OS [0x{shn:04x}]"
    if 0xFF00 <= shn <= 0xFF1F:
        return f"PRC[0x{shn:04x}]"
    return f"RSV[0x{shn:04x}]"


def section_type(stype: int) -> str:
    return SECTION_TYPES.get(stype, f"{stype:08x}")


def relocation_type(machine: int, rtype: int) -> str:
    if machine == EM.X86_64:
        try:
            name = R_X86_64(rtype).name
        except ValueError:
            return f"unrecognized: {rtype:x}"
        return "R_X86_64_" + {"R64": "64", "R32": "32", "R32S": "32S", "R16": "16",
                              "R8": "8"}.get(name, name)
    return f"type {rtype}"


def elf_class(value: int) -> str:
    return {int(ElfClass.ELF32): "ELF32", int(ElfClass.ELF64): "ELF64"}.get(value, str(value))


def elf_data(value: int) -> str:
    return {int(ElfData.LSB): "2's complement, little endian",
            int(ElfData.MSB): "2's complement, big endian"}.get(value, str(value))


def machine_name(machine: int) -> str:
    return MACHINES.get(machine, f"<unknown>: {machine:#x}")


def arch_name(machine: int) -> str:
    return ARCH_NAMES.get(machine, f"machine {machine}")
