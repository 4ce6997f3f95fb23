"""``klpsym inspect``: what is inside a module, as plain data.

Each view is a JSON-ready value (dicts and lists); the command line prints
tables from the same values, so ``--json`` carries exactly what is shown.
Column choices follow binutils readelf -W (sections, symbols, relocations,
string dumps) and kmod's modinfo.
"""

from __future__ import annotations

from typing import Any

from klpsym.elf import describe
from klpsym.elf.constants import EI, SHF, SHN, SHT
from klpsym.errors import ConvertError, KlpsymError, param
from klpsym.kernel.version import KLP_SYM_NAME_WIDEST
from klpsym.klp.annotations import read_annotations
from klpsym.klp.names import parse_section_name, parse_symbol_name
from klpsym.klp.plan import is_livepatch
from klpsym.klp.validate import loader_problems
from klpsym.module.exports import read_exports
from klpsym.module.ko import Module
from klpsym.module.signature import describe_signature
from klpsym.module.versions import read_versions

_MAX_KLP_NAME = KLP_SYM_NAME_WIDEST  # the widest any loader parses


def header(m: Module) -> dict[str, Any]:
    h = m.elf.header
    ident = bytes(h["e_ident"])
    return {
        "magic": " ".join(f"{b:02x}" for b in ident),
        "class": describe.elf_class(ident[EI.CLASS]),
        "data": describe.elf_data(ident[EI.DATA]),
        "version": int(ident[EI.VERSION]),
        "os_abi": int(ident[EI.OSABI]),
        "abi_version": int(ident[8]),
        "type": describe.ELF_TYPES.get(int(h["e_type"]), str(int(h["e_type"]))),
        "machine": describe.machine_name(int(h["e_machine"])),
        "e_machine": int(h["e_machine"]),
        "entry": int(h["e_entry"]),
        "program_headers_offset": int(h["e_phoff"]),
        "section_headers_offset": int(h["e_shoff"]),
        "flags": int(h["e_flags"]),
        "header_size": int(h["e_ehsize"]),
        "program_header_size": int(h["e_phentsize"]),
        "program_headers": int(h["e_phnum"]),
        "section_header_size": int(h["e_shentsize"]),
        "sections": len(m.elf.sections),
        "section_names_index": m.elf.index_of(m.elf.shstrtab),
    }


def sections(m: Module) -> list[dict[str, Any]]:
    elf = m.elf
    out = []
    for i, s in enumerate(elf.sections):
        link = elf.index_of(s.link) if s.link is not None else s.link_raw
        info = elf.index_of(s.info_section) if s.info_section is not None else s.info
        row = {
            "index": i, "name": s.name, "type": describe.section_type(s.type),
            "address": s.addr, "offset": s.orig_offset or 0, "size": s.size,
            "entsize": s.entsize, "flags": describe.section_flags(s.flags),
            "flags_value": s.flags, "link": link, "info": info, "align": s.addralign,
        }
        if i == 0:  # the null entry as it is in the file
            h = elf.shdr0
            row.update(link=int(h["sh_link"]), info=int(h["sh_info"]),
                       align=int(h["sh_addralign"]), size=int(h["sh_size"]))
        out.append(row)
    return out


def symbols(m: Module) -> list[dict[str, Any]]:
    elf = m.elf
    if not elf.has_symtab:
        return []
    st = elf.symtab
    index_of_uid = {s.uid: i for i, s in enumerate(elf.sections)}
    arr = st.array
    names = st.names()
    types = st.types.tolist()
    binds = st.binds.tolist()
    vis = (arr["st_other"] & 3).tolist()
    sec_name = {s.uid: s.name for s in elf.sections}
    out = []
    for i, (value, size, ref) in enumerate(zip(arr["st_value"].tolist(), arr["st_size"].tolist(),
                                               st.section_ref.tolist(), strict=True)):
        name = names[i]
        if types[i] == 3 and not name and ref > 0:  # STT_SECTION: readelf shows the section's
            name = sec_name.get(ref, "")
        out.append({
            "num": i, "value": value, "size": size,
            "type": describe.SYMBOL_TYPES.get(types[i], str(types[i])),
            "bind": describe.SYMBOL_BINDS.get(binds[i], str(binds[i])),
            "visibility": describe.SYMBOL_VISIBILITY[vis[i]],
            "ndx": describe.section_index(ref, index_of_uid), "name": name,
        })
    return out


def relocations(m: Module, section: str | None = None) -> list[dict[str, Any]]:
    """Every SHT_RELA section (or the one named ``section``, which may also
    be given as the section it relocates, e.g. ``.text``)."""
    elf = m.elf
    secs = [s for s in elf.sections if s.type == SHT.RELA]
    if section is not None:
        chosen = [s for s in secs if s.name == section
                  or (s.info_section is not None and s.info_section.name == section)]
        if not chosen:
            raise KlpsymError(f"{m.path}: no relocation section {section!r} (nor one that "
                              f"relocates it); {param('sections')} lists the sections")
        secs = chosen
    st = elf.symtab
    names = st.names()
    values = st.array["st_value"].tolist()
    types = st.types.tolist()
    sec_name = {s.uid: s.name for s in elf.sections}
    out = []
    for s in secs:
        rela = elf.rela(s)
        syms = elf.layout.r_sym(rela["r_info"]).tolist()
        rtypes = elf.layout.r_type(rela["r_info"]).tolist()
        entries = []
        for off, info, addend, sym, rtype in zip(rela["r_offset"].tolist(),
                                                rela["r_info"].tolist(),
                                                rela["r_addend"].tolist(), syms, rtypes,
                                                strict=True):
            name = names[sym] if sym < len(names) else f"<bad symbol {sym}>"
            if sym < len(names) and types[sym] == 3 and not name:
                name = sec_name.get(int(st.section_ref[sym]), "")
            entries.append({
                "offset": off, "info": info, "type": describe.relocation_type(elf.machine, rtype),
                "symbol_value": values[sym] if sym < len(values) else 0, "symbol": name,
                "addend": addend,
            })
        out.append({"section": s.name, "offset": s.orig_offset or 0,
                    "applies_to": s.info_section.name if s.info_section else None,
                    "livepatch": bool(s.flags & SHF.RELA_LIVEPATCH), "entries": entries})
    return out


def strings(m: Module, section: str) -> list[tuple[int, str]]:
    """readelf -p: each NUL-terminated string of a section with its offset."""
    sec = m.elf.section_by_name(section)
    if sec is None:
        raise KlpsymError(f"{m.path}: no section {section!r}; {param('sections')} lists the "
                          "sections")
    if sec.type == SHT.NOBITS:
        raise KlpsymError(f"{m.path}: section {section} has no data in the file (NOBITS)")
    data = bytes(sec.content())
    out = []
    start = 0
    for part in data.split(b"\0"):
        if part:
            out.append((start, part.decode("utf-8", "replace")))
        start += len(part) + 1
    return out


def modinfo(m: Module) -> list[tuple[str, str]]:
    return list(m.modinfo.entries)


def exports(m: Module) -> dict[str, Any]:
    ex = read_exports(m.elf)
    return {"layout": ex.layout, "entries": [
        {"name": e.name, "type": e.export_type, "namespace": e.namespace, "crc": e.crc,
         "table": e.table, "index": e.index, "symbol": e.symbol, "section": e.section,
         "offset": e.offset}
        for e in ex]}


def versions(m: Module) -> dict[str, Any]:
    v = read_versions(m.elf)
    return {"format": v.format.value, "entries": [{"name": e.name, "crc": e.crc}
                                                  for e in v.entries]}


def klp(m: Module) -> dict[str, Any]:
    elf = m.elf
    syms: list[dict[str, Any]] = []
    if elf.has_symtab:
        st = elf.symtab
        for i in st.special(SHN.LIVEPATCH).tolist():
            name = st.name(i)
            parsed = parse_symbol_name(name, _MAX_KLP_NAME)
            syms.append({"num": i, "symbol": name,
                         "object": parsed.objname if parsed else None,
                         "name": parsed.name if parsed else None,
                         "pos": parsed.pos if parsed else None})
    secs = []
    for s in elf.sections:
        if s.flags & SHF.RELA_LIVEPATCH:
            secs.append({"section": s.name, "object": parse_section_name(s.name),
                         "applies_to": s.info_section.name if s.info_section else None,
                         "relocations": len(elf.rela(s)) if s.type == SHT.RELA else 0,
                         "flags": describe.section_flags(s.flags)})
    livepatch = is_livepatch(m)
    # A livepatch's module objects are applied when the object is loaded
    # (kernel/livepatch/core.c klp_apply_object_relocs()): valid there.
    problems = (loader_problems(elf, _MAX_KLP_NAME, livepatch=livepatch) if (syms or secs)
                else [])
    objects = sorted({str(x["object"]) for x in syms + secs if x["object"]})
    try:
        found = read_annotations(elf) if elf.has_symtab else []
        annotations = [{"object": a.objname, "name": a.name, "pos": a.pos} for a in found]
    except ConvertError as e:
        annotations = []
        problems.append(f"annotations: {e}")
    return {"symbols": syms, "sections": secs, "problems": problems, "livepatch": livepatch,
            "objects": objects, "annotations": annotations}


def signature(m: Module) -> dict[str, Any] | None:
    if m.signature is None:
        return None
    return describe_signature(m.signature)


def summary(m: Module) -> dict[str, Any]:
    elf = m.elf
    info = m.modinfo
    undefined: list[str] = []
    nsyms = 0
    if elf.has_symtab:
        st = elf.symtab
        nsyms = len(st)
        undefined = [st.name(i) for i in st.undefined().tolist() if st.name(i)]
    alloc = sum(s.size for s in elf.sections if s.flags & SHF.ALLOC and s.type != SHT.NOBITS)
    bss = sum(s.size for s in elf.sections if s.flags & SHF.ALLOC and s.type == SHT.NOBITS)
    text = sum(s.size for s in elf.sections if s.flags & SHF.EXECINSTR)
    k = klp(m)
    ex = read_exports(elf)
    ver = read_versions(elf)
    return {
        "path": str(m.path),
        "name": m.name,
        "compression": m.compression.value,
        "file_size": len(m.data),
        "arch": describe.arch_name(elf.machine),
        "license": info.license,
        "vermagic": info.vermagic,
        "description": info.get("description"),
        "depends": [d for d in (info.get("depends") or "").split(",") if d],
        "intree": info.get("intree") is not None,
        "import_ns": info.get_all("import_ns"),
        "sizes": {"text": text, "alloc": alloc, "bss": bss},
        "counts": {"sections": len(elf.sections), "symbols": nsyms,
                   "undefined": len(undefined), "exports": len(ex),
                   "versions": len(ver), "klp_symbols": len(k["symbols"]),
                   "klp_sections": len(k["sections"]),
                   "relocations": int(sum(len(elf.rela(s)) for s in elf.rela_sections()))},
        "undefined": undefined,
        "klp_sections": [s["section"] for s in k["sections"]],
        "klp_problems": k["problems"],
        "livepatch": k["livepatch"],
        "klp_objects": k["objects"],
        "signature": signature(m),
    }
