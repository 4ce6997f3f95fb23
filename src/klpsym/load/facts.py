"""What the module loader will look at in one module file, read once.

:func:`module_facts` reads a module (compressed or not) and keeps only what
the load simulation (:mod:`klpsym.load.check`) needs, as small picklable
values, so that many modules can be read in worker processes and judged in
the parent against one target kernel.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from klpsym.elf.constants import SHF, SHN, SHT, STB
from klpsym.errors import KlpsymError
from klpsym.kernel.version import KLP_SYM_NAME_WIDEST
from klpsym.klp.names import parse_symbol_name
from klpsym.klp.x86 import unhandled_relocation_types
from klpsym.load.fastread import fast_facts
from klpsym.load.model import (
    THIS_MODULE_SECTION,
    ExportFact,
    KlpUse,
    ModuleFacts,
    struct_module_name,
)
from klpsym.module.compression import decompress
from klpsym.module.exports import read_exports
from klpsym.module.versions import VersionsFormat, read_versions

# The facts' types are this module's API too.
__all__ = ["ExportFact", "KlpUse", "ModuleFacts", "facts_of", "module_facts"]

if TYPE_CHECKING:
    from klpsym.module.ko import Module

#: The widest klp symbol name any loader parses; the target's own width is
#: applied by the check.
_KLP_NAME_WIDTH = KLP_SYM_NAME_WIDEST


def module_facts(path: Path, *, fast: bool = True) -> ModuleFacts:
    """The facts of one module file; bad input is recorded, not raised.
    ``fast=False`` reads it through the general ELF model only (the
    reference the fast path, :mod:`klpsym.load.fastread`, is tested against)."""
    try:
        with open(path, "rb", buffering=0) as fd:
            raw = fd.read()
    except IsADirectoryError:
        return ModuleFacts(path, error=f"{path}: is a directory, expected a module file")
    except OSError as e:
        return ModuleFacts(path, error=f"{path}: cannot read: {e.strerror}")
    try:
        if fast:
            data, compression = decompress(raw, str(path))
            found = fast_facts(data, path, compression.value)
            if found is not None:
                return found
        from klpsym.module.ko import module_from_bytes  # the general reader: the ELF model

        return facts_of(module_from_bytes(raw, path))
    except KlpsymError as e:
        return ModuleFacts(path, error=str(e))


def facts_of(module: Module) -> ModuleFacts:
    elf = module.elf
    info = module.modinfo
    f = ModuleFacts(module.path, compression=module.compression.value, machine=elf.machine)
    f.modinfo_name = info.name
    f.vermagic = info.vermagic
    f.license = info.license
    f.import_ns = tuple(info.get_all("import_ns"))
    f.intree = info.get("intree") is not None
    f.staging = info.get("staging") is not None
    f.livepatch = info.get("livepatch") is not None
    f.signed = module.signature is not None
    this = elf.section_by_name(THIS_MODULE_SECTION)
    f.has_this_module = this is not None
    struct_name = ""
    if this is not None and this.type != SHT.NOBITS:
        struct_name = struct_module_name(bytes(this.content()))
    # load_module(): info->name is modinfo's name; mod->name (what most
    # messages print) is struct module's, which kbuild fills with the same.
    f.name = struct_name or info.name or module.name
    versions = read_versions(elf)
    f.versions_format = versions.format.value
    f.versions = {e.name: e.crc for e in versions.entries}
    f.has_crcs = versions.format != VersionsFormat.NONE
    f.has_symtab = elf.has_symtab
    if not f.has_symtab:
        return f
    symtab = elf.symtab
    undefined = symtab.undefined()
    weak = ((symtab.array["st_info"][undefined] >> 4) == _STB_WEAK).tolist()
    strtab = symtab.strings.data
    for off, w in zip(symtab.array["st_name"][undefined].tolist(), weak, strict=True):
        end = strtab.find(b"\0", off)
        if end > off:
            f.undefined.append((strtab[off:end].decode("utf-8", "surrogateescape"), w))
    f.common = [symtab.name(i) for i in symtab.special(SHN.COMMON).tolist()]
    f.has_klp = bool(len(symtab.special(SHN.LIVEPATCH))) or any(
        s.flags & _SHF_RELA_LIVEPATCH for s in elf.sections)
    if f.has_klp:
        from klpsym.klp.ibt import klp_address_uses
        from klpsym.klp.validate import loader_problems

        f.klp_static = loader_problems(elf, _KLP_NAME_WIDTH, livepatch=f.livepatch)
        f.klp_addresses = klp_address_uses(elf, _KLP_NAME_WIDTH)
        f.klp_uses = _klp_uses(module)
    f.bad_relocations = [(name, t) for name, types in unhandled_relocation_types(elf)
                         for t in types]
    exports = read_exports(elf)
    f.exports = [ExportFact(e.name, e.gpl_only, e.namespace, e.crc) for e in exports]
    f.exports_crcs = all(e.crc is not None for e in exports)
    return f


def _klp_uses(module: Module) -> list[KlpUse]:
    elf = module.elf
    symtab = elf.symtab
    uses: list[KlpUse] = []
    seen: set[int] = set()  # each symbol once, at its first use
    for sec in elf.sections:
        if sec.type != SHT.RELA or not sec.flags & SHF.RELA_LIVEPATCH:
            continue
        target = sec.info_section
        if target is None or not target.flags & SHF.ALLOC:
            continue  # apply_relocations() skips relocations of non-ALLOC sections
        syms = elf.layout.r_sym(elf.rela(sec)["r_info"])
        for s in syms.tolist():
            if s in seen or s >= len(symtab):
                continue
            seen.add(s)
            name = symtab.name(s)
            parsed = parse_symbol_name(name, _KLP_NAME_WIDTH)
            if parsed is None:
                uses.append(KlpUse(sec.name, name, None, "", 0))
            else:
                uses.append(KlpUse(sec.name, name, parsed.objname, parsed.name, parsed.pos))
    return uses


_SHT_RELA = int(SHT.RELA)
_STB_WEAK = int(STB.WEAK)
_SHF_ALLOC = int(SHF.ALLOC)
_SHF_RELA_LIVEPATCH = int(SHF.RELA_LIVEPATCH)
