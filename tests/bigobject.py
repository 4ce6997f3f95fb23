"""Large synthetic kernel modules, made with numpy (ElfBuilder makes one
Python object per relocation, too slow for millions).

``big_module(n)`` is a module-shaped ELF64 object with ``n`` relocations:
.text with a call (R_X86_64_PLT32) every 8 bytes, .data with a pointer
(R_X86_64_64) every 8 bytes, both against ``symbols`` undefined symbols used
round-robin; ``unexported`` of those are meant to be converted.  Like
elfbuilder.py it does not use klpsym to write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elfbuilder import SYNTH_RELEASE

R_X86_64_64, R_X86_64_PLT32 = 1, 4


def big_module(n: int, symbols: int = 1000, release: str = SYNTH_RELEASE) -> bytes:
    n_text = n - n // 4
    n_data = n - n_text
    names = [f"big_sym_{i}" for i in range(symbols)]
    modinfo = (b"license=GPL\0name=big\0"
               + f"vermagic={release} SMP preempt mod_unload modversions \0".encode())
    # symbols: null, .text section symbol, init_module, then the undefined ones
    strtab = bytearray(b"\0init_module\0")
    sym = np.zeros(3 + symbols, dtype=[("st_name", "<u4"), ("st_info", "u1"),
                                       ("st_other", "u1"), ("st_shndx", "<u2"),
                                       ("st_value", "<u8"), ("st_size", "<u8")])
    sym[1] = (0, 3, 0, 1, 0, 0)  # STT_SECTION, LOCAL, .text
    sym[2] = (1, 0x12, 0, 1, 0, 8)  # init_module: GLOBAL FUNC in .text
    for i, name in enumerate(names):
        sym[3 + i] = (len(strtab), 0x10, 0, 0, 0, 0)  # GLOBAL NOTYPE UNDEF
        strtab += name.encode() + b"\0"
    rela_dt = np.dtype([("r_offset", "<u8"), ("r_info", "<u8"), ("r_addend", "<i8")])

    def relocs(count: int, rtype: int, addend: int) -> np.ndarray:
        r = np.zeros(count, dtype=rela_dt)
        at = 1 if rtype == R_X86_64_PLT32 else 0  # a call's operand is after its opcode
        r["r_offset"] = np.arange(count, dtype=np.uint64) * np.uint64(8) + np.uint64(at)
        symidx = 3 + np.arange(count, dtype=np.uint64) % np.uint64(symbols)
        r["r_info"] = (symidx << np.uint64(32)) | np.uint64(rtype)
        r["r_addend"] = addend
        return r

    # (name, type, flags, content, align, entsize, link, info)
    secs: list[tuple[str, int, int, bytes, int, int, int, int]] = [
        ("", 0, 0, b"", 0, 0, 0, 0),
        (".text", 1, 6, bytes(8 * n_text + 8), 16, 0, 0, 0),
        (".data", 1, 3, bytes(8 * n_data + 8), 8, 0, 0, 0),
        (".modinfo", 1, 2, modinfo, 1, 0, 0, 0),
        (".rela.text", 4, 0x40, relocs(n_text, R_X86_64_PLT32, -4).tobytes(), 8, 24, 6, 1),
        (".rela.data", 4, 0x40, relocs(n_data, R_X86_64_64, 0).tobytes(), 8, 24, 6, 2),
        (".symtab", 2, 0, sym.tobytes(), 8, 24, 7, 2),
        (".strtab", 3, 0, bytes(strtab), 1, 0, 0, 0),
    ]
    shstr = bytearray(b"\0")
    name_off = []
    for s in secs + [(".shstrtab", 3, 0, b"", 1, 0, 0, 0)]:
        name_off.append(len(shstr) if s[0] else 0)
        shstr += s[0].encode() + b"\0" if s[0] else b""
    secs.append((".shstrtab", 3, 0, bytes(shstr), 1, 0, 0, 0))
    out = bytearray(64)
    offsets = []
    for s in secs:
        if not s[0]:
            offsets.append(0)
            continue
        out += bytes(-len(out) % max(s[4], 1))
        offsets.append(len(out))
        out += s[3]
    out += bytes(-len(out) % 8)
    shoff = len(out)
    shdr = np.zeros(len(secs), dtype=[("sh_name", "<u4"), ("sh_type", "<u4"),
                                      ("sh_flags", "<u8"), ("sh_addr", "<u8"),
                                      ("sh_offset", "<u8"), ("sh_size", "<u8"),
                                      ("sh_link", "<u4"), ("sh_info", "<u4"),
                                      ("sh_addralign", "<u8"), ("sh_entsize", "<u8")])
    for i, s in enumerate(secs):
        if i:
            shdr[i] = (name_off[i], s[1], s[2], 0, offsets[i], len(s[3]), s[6], s[7], s[4], s[5])
    out += shdr.tobytes()
    ehdr = np.zeros(1, dtype=[("ident", "V16"), ("type", "<u2"), ("machine", "<u2"),
                              ("version", "<u4"), ("entry", "<u8"), ("phoff", "<u8"),
                              ("shoff", "<u8"), ("flags", "<u4"), ("ehsize", "<u2"),
                              ("phentsize", "<u2"), ("phnum", "<u2"), ("shentsize", "<u2"),
                              ("shnum", "<u2"), ("shstrndx", "<u2")])
    ehdr[0] = (np.void(b"\x7fELF\x02\x01\x01" + bytes(9)), 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0,
               64, len(secs), len(secs) - 1)
    out[:64] = ehdr.tobytes()
    return bytes(out)


def big_module_names(symbols: int = 1000) -> list[str]:
    return [f"big_sym_{i}" for i in range(symbols)]


def write_target(where: Path, names: list[str], release: str = SYNTH_RELEASE,
                 exported_every: int = 2) -> tuple[Path, Path]:
    """A kernel dir (release, .config with LIVEPATCH, Module.symvers that
    exports every ``exported_every``-th of ``names``) and a kallsyms file
    with all of them: the rest convert."""
    kdir = where / "kdir"
    (kdir / "include" / "config").mkdir(parents=True, exist_ok=True)
    (kdir / "include" / "config" / "kernel.release").write_text(release + "\n")
    (kdir / ".config").write_text("CONFIG_LIVEPATCH=y\nCONFIG_KALLSYMS_ALL=y\n")
    (kdir / "Module.symvers").write_text("".join(
        f"0x{i:08x}\t{n}\tvmlinux\tEXPORT_SYMBOL_GPL\t\n"
        for i, n in enumerate(names) if i % exported_every == 0)
        # what every CONFIG_LIVEPATCH kernel exports (the load-time guard's symbol)
        + "0x06689996\tklp_enable_patch\tvmlinux\tEXPORT_SYMBOL_GPL\t\n")
    ks = where / "kallsyms"
    ks.write_text("".join(f"ffffffff8{i:06x}0 T {n}\n" for i, n in enumerate(names)))
    return kdir, ks
