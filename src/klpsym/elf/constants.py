"""ELF constants used by klpsym, as IntEnum/IntFlag (values from the ELF gABI
and the kernel's include/uapi/linux/elf.h).  Numbers are kept as plain ints in
the model; these enums are for comparisons and, in :mod:`klpsym.elf.describe`,
for names."""

from __future__ import annotations

from enum import IntEnum, IntFlag

ELF_MAGIC = b"\x7fELF"


class EI(IntEnum):
    """Offsets into e_ident."""

    CLASS = 4
    DATA = 5
    VERSION = 6
    OSABI = 7
    NIDENT = 16


class ElfClass(IntEnum):
    NONE = 0
    ELF32 = 1
    ELF64 = 2


class ElfData(IntEnum):
    NONE = 0
    LSB = 1  # little endian
    MSB = 2  # big endian


class PT(IntEnum):
    """Program header (segment) types."""

    NULL = 0
    LOAD = 1
    DYNAMIC = 2
    INTERP = 3
    NOTE = 4


class ET(IntEnum):
    NONE = 0
    REL = 1
    EXEC = 2
    DYN = 3
    CORE = 4


class EM(IntEnum):
    """The machines Linux builds 64-bit kernels for (a subset)."""

    SPARCV9 = 43
    PPC64 = 21
    S390 = 22
    IA_64 = 50
    X86_64 = 62
    AARCH64 = 183
    RISCV = 243
    LOONGARCH = 258


class SHT(IntEnum):
    NULL = 0
    PROGBITS = 1
    SYMTAB = 2
    STRTAB = 3
    RELA = 4
    HASH = 5
    DYNAMIC = 6
    NOTE = 7
    NOBITS = 8
    REL = 9
    SHLIB = 10
    DYNSYM = 11
    INIT_ARRAY = 14
    FINI_ARRAY = 15
    PREINIT_ARRAY = 16
    GROUP = 17
    SYMTAB_SHNDX = 18


class SHF(IntFlag):
    WRITE = 0x1
    ALLOC = 0x2
    EXECINSTR = 0x4
    MERGE = 0x10
    STRINGS = 0x20
    INFO_LINK = 0x40
    LINK_ORDER = 0x80
    OS_NONCONFORMING = 0x100
    GROUP = 0x200
    TLS = 0x400
    COMPRESSED = 0x800
    # include/uapi/linux/elf.h, since v4.7 (commit f31e0960f395, "module:
    # preserve Elf information for livepatch modules")
    RELA_LIVEPATCH = 0x00100000
    # include/uapi/linux/elf.h, since v4.10 (commit 444d13ff10fb, "modules:
    # add ro_after_init support")
    RO_AFTER_INIT = 0x00200000
    EXCLUDE = 0x80000000


class SHN(IntEnum):
    UNDEF = 0
    LORESERVE = 0xFF00
    # include/uapi/linux/elf.h, since v4.7 (commit f31e0960f395)
    LIVEPATCH = 0xFF20
    ABS = 0xFFF1
    COMMON = 0xFFF2
    XINDEX = 0xFFFF


class STB(IntEnum):
    LOCAL = 0
    GLOBAL = 1
    WEAK = 2


class STT(IntEnum):
    NOTYPE = 0
    OBJECT = 1
    FUNC = 2
    SECTION = 3
    FILE = 4
    COMMON = 5
    TLS = 6


class R_X86_64(IntEnum):
    NONE = 0
    R64 = 1
    PC32 = 2
    GOT32 = 3
    PLT32 = 4
    COPY = 5
    GLOB_DAT = 6
    JUMP_SLOT = 7
    RELATIVE = 8
    GOTPCREL = 9
    R32 = 10
    R32S = 11
    R16 = 12
    PC16 = 13
    R8 = 14
    PC8 = 15
    PC64 = 24
    GOTPCRELX = 41
    REX_GOTPCRELX = 42
