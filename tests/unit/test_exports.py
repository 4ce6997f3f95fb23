"""module.exports: every __ksymtab layout the kernel has used, built by hand."""

from __future__ import annotations

import struct

import pytest

from elfbuilder import (
    R_X86_64_64,
    R_X86_64_PC32,
    SHF_ALLOC,
    SHN_ABS,
    STB_LOCAL,
    STT_FUNC,
    ElfBuilder,
)
from klpsym.elf import ElfFile
from klpsym.errors import ModuleError
from klpsym.module.exports import read_exports

R_X86_64_32 = 10

# (name, gpl, namespace, crc)
EXPORTS = [("alpha_fn", False, "", 0x11111111), ("beta_fn", True, "BETA_NS", 0x22222222),
           ("gamma_fn", True, "", 0x33333333)]


def build(*, field: int, with_ns: bool, split_gpl: bool = True, flags: bool = False,
          crcs: bool = True, crc_relocs: bool = False, zero_ns: bool = False,
          drop_name_reloc: bool = False) -> ElfFile:
    """A module exporting EXPORTS in one layout.

    field 4: PREL32 (R_X86_64_PC32), 8: absolute (R_X86_64_64); with_ns: the
    namespace field (5.4+); zero_ns: "no namespace" as 5.4 wrote it (0,
    unrelocated) instead of a pointer to ""; split_gpl: __ksymtab_gpl (else one
    __ksymtab); flags: __kflagstab (7.x); crc_relocs: CRCs as relocations
    against absolute __crc_NAME symbols (before 5.19) instead of literals.
    """
    b = ElfBuilder()
    text = b.text(16 * len(EXPORTS))
    b.module()
    strings = bytearray()
    str_off: dict[str, int] = {}
    for name, _, ns, _ in EXPORTS:
        str_off[name] = len(strings)
        strings += name.encode() + b"\0"
        str_off["ns:" + name] = len(strings)
        strings += ns.encode() + b"\0"
    strsec = b.section("__ksymtab_strings", data=bytes(strings), flags=SHF_ALLOC | 0x30)
    nfields = 3 if with_ns else 2
    groups: dict[str, list[tuple[str, bool, str, int]]] = {}
    for e in EXPORTS:
        table = "__ksymtab_gpl" if split_gpl and e[1] else "__ksymtab"
        groups.setdefault(table, []).append(e)
    rtype = R_X86_64_PC32 if field == 4 else R_X86_64_64
    for table, entries in groups.items():
        sec = b.section(table, data=bytes(field * nfields * len(entries)), align=field)
        crc_sec = None
        if crcs:
            crc_data = b"".join(struct.pack("<I", 0 if crc_relocs else c) for *_, c in entries)
            crc_sec = b.section(table.replace("ksymtab", "kcrctab"), data=crc_data, align=4)
        for i, (name, _, _ns, crc) in enumerate(entries):
            fn = b.symbol(name, text, type=STT_FUNC, value=16 * EXPORTS.index(
                next(e for e in EXPORTS if e[0] == name)), size=16)
            kstr = b.symbol(f"__kstrtab_{name}", strsec, STB_LOCAL, value=str_off[name])
            base = i * field * nfields
            b.rela(sec, base, fn, rtype, 0)
            if not drop_name_reloc:
                b.rela(sec, base + field, kstr, rtype, 0)
            if with_ns and not zero_ns:
                kns = b.symbol(f"__kstrtabns_{name}", strsec, STB_LOCAL,
                               value=str_off["ns:" + name])
                b.rela(sec, base + 2 * field, kns, rtype, 0)
            if crc_sec is not None and crc_relocs:
                abs_crc = b.symbol(f"__crc_{name}", SHN_ABS, STB_LOCAL, value=crc)
                b.rela(crc_sec, 4 * i, abs_crc, R_X86_64_32, 0)
    if flags:
        b.section("__kflagstab", data=bytes(int(g) for _, g, _, _ in EXPORTS))
    return ElfFile.from_bytes(b.build())


def _decoded(elf: ElfFile) -> list[tuple[str, bool, str, int | None]]:
    return sorted((e.name, e.gpl_only, e.namespace, e.crc) for e in read_exports(elf))


@pytest.mark.parametrize("field, with_ns, zero_ns, layout", [
    (4, True, False, "place-relative (PREL32, 4.19+) with namespace (5.4+), 12-byte entries"),
    (4, True, True, "place-relative (PREL32, 4.19+) with namespace (5.4+), 12-byte entries"),
    (4, False, False, "place-relative (PREL32, 4.19+), 8-byte entries"),
    (8, True, False, "absolute pointers with namespace (5.4+), 24-byte entries"),
    (8, False, False, "absolute pointers, 16-byte entries"),
])
def test_layouts(field: int, with_ns: bool, zero_ns: bool, layout: str) -> None:
    elf = build(field=field, with_ns=with_ns, zero_ns=zero_ns)
    ex = read_exports(elf)
    assert ex.layout == layout
    want = sorted((n, g, ns if with_ns and not zero_ns else "", c) for n, g, ns, c in EXPORTS)
    assert _decoded(elf) == want
    by_name = {e.name: e for e in ex}
    assert by_name["beta_fn"].export_type == "EXPORT_SYMBOL_GPL"
    assert by_name["beta_fn"].table == "__ksymtab_gpl"
    assert by_name["alpha_fn"].symbol == "alpha_fn" and by_name["alpha_fn"].section == ".text"


def test_kflagstab_one_table() -> None:
    elf = build(field=4, with_ns=True, split_gpl=False, flags=True, crcs=False)
    ex = read_exports(elf)
    assert ex.layout.endswith("GPL flag in __kflagstab")
    assert _decoded(elf) == sorted((n, g, ns, None) for n, g, ns, _ in EXPORTS)


def test_crcs_as_relocations_against_absolute_symbols() -> None:
    elf = build(field=4, with_ns=True, crc_relocs=True)
    assert _decoded(elf) == sorted(EXPORTS)


def test_no_exports() -> None:
    b = ElfBuilder()
    b.text()
    ex = read_exports(ElfFile.from_bytes(b.build()))
    assert len(ex) == 0 and ex.layout == ""


def test_missing_relocation_is_an_error() -> None:
    with pytest.raises(ModuleError, match="lacks the relocation of its name"):
        read_exports(build(field=4, with_ns=True, drop_name_reloc=True))
