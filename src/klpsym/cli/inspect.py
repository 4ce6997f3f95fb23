"""``klpsym inspect``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klpsym.cli.main import printable

if TYPE_CHECKING:  # imported when the command runs: `klpsym --help` stays fast
    from klpsym.module.ko import Module

EPILOG = """\
With no view flag: a one-screen summary (arch, license, vermagic, sizes,
counts, undefined symbols, klp sections, signature).  Views may be combined;
--json prints the same data as one JSON object.  Tables follow readelf -W's
columns (--header -h, --sections -S, --symbols -s, --relocs -r, --strings -p)
and modinfo's "key: value" lines (--modinfo).  .ko.xz, .ko.zst and .ko.gz are
read as they are.

examples:
  klpsym inspect hello.ko                      # the summary
  klpsym inspect hello.ko --relocs .text       # .rela.text (or give .rela.text)
  klpsym inspect ext4.ko.xz --exports --versions
  klpsym inspect hello.klp.ko --klp            # livepatch symbols and sections
  klpsym inspect hello.ko --strings .modinfo --json

exit status: 0 shown, 2 bad input (one line on stderr says why)."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "inspect", help="show what is inside a module (readelf/modinfo views, exports, klp)",
        description="Show the inside of a kernel module: its ELF header, sections, symbols, "
                    "relocations, .modinfo, exports, symbol versions, livepatch symbols and "
                    "signature.", epilog=EPILOG,
        usage="klpsym inspect MODULE [--header] [--sections] [--symbols] [--relocs [SECTION]]"
              "\n                      [--strings SECTION] [--modinfo] [--exports] "
              "[--versions] [--klp]\n                      [--signature] [--json]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    # Optional for argparse only: `inspect --relocs m.ko` (readelf's order)
    # gives the file to --relocs, and run() takes it back (_module_of).
    p.add_argument("module", metavar="MODULE", type=Path, nargs="?",
                   help="a .ko, .ko.xz, .ko.zst or .ko.gz file")
    p.add_argument("--header", action="store_true", help="the ELF header (readelf -h)")
    p.add_argument("--sections", action="store_true", help="section headers (readelf -S)")
    p.add_argument("--symbols", action="store_true", help="the symbol table (readelf -s)")
    p.add_argument("--relocs", nargs="?", const="", default=None, metavar="SECTION",
                   help="relocations (readelf -r); only SECTION's if given")
    p.add_argument("--strings", metavar="SECTION",
                   help="the strings of a section (readelf -p)")
    p.add_argument("--modinfo", action="store_true", help=".modinfo (as modinfo prints it)")
    p.add_argument("--exports", action="store_true",
                   help="exported symbols, decoded from __ksymtab*")
    p.add_argument("--versions", action="store_true",
                   help="symbol versions (__versions): name and CRC")
    p.add_argument("--klp", action="store_true",
                   help="livepatch symbols and .klp.rela sections, checked against the "
                        "loader's rules")
    p.add_argument("--signature", action="store_true", help="the appended signature")
    p.add_argument("--json", action="store_true", help="print the views as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from klpsym.module.ko import read_module
    from klpsym.view import inspect as views

    m = read_module(_module_of(args))
    data: dict[str, Any] = {}
    printers: list[Callable[[], None]] = []

    def view(key: str, value: Any, printer: Callable[[Any], None]) -> None:
        data[key] = value
        printers.append(lambda: printer(value))

    if args.header:
        view("header", views.header(m), _print_header)
    if args.sections:
        shoff = int(m.elf.header["e_shoff"])
        view("sections", views.sections(m), lambda rows: _print_sections(rows, shoff))
    if args.symbols:
        view("symbols", views.symbols(m), _print_symbols)
    if args.relocs is not None:
        view("relocations", views.relocations(m, args.relocs or None), _print_relocs)
    if args.strings is not None:
        view("strings", {"section": args.strings, "strings": views.strings(m, args.strings)},
             _print_strings)
    if args.modinfo:
        view("modinfo", views.modinfo(m), lambda v: _print_modinfo(m, v))
    if args.exports:
        view("exports", views.exports(m), _print_exports)
    if args.versions:
        view("versions", views.versions(m), _print_versions)
    if args.klp:
        view("klp", views.klp(m), _print_klp)
    if args.signature:
        view("signature", views.signature(m), _print_signature)
    if not data:
        view("summary", views.summary(m), _print_summary)
    if args.json:
        if "strings" in data:
            data["strings"]["strings"] = [{"offset": o, "string": s}
                                          for o, s in data["strings"]["strings"]]
        if "modinfo" in data:
            data["modinfo"] = [{"key": k, "value": v} for k, v in data["modinfo"]]
        from klpsym.cli.jsonout import dump

        dump({"module": str(m.path), **data}, sys.stdout)
        return 0
    for i, p in enumerate(printers):
        if i:
            print()
        p()
    return 0


def _module_of(args: argparse.Namespace) -> Path:
    """The module named: as MODULE, or as --relocs' value when it came
    right after --relocs with nothing after it (readelf's `-r FILE`)."""
    from klpsym.errors import ModuleError

    if args.module is not None:
        return Path(args.module)
    if args.relocs:
        module, args.relocs = Path(args.relocs), ""
        return module
    raise ModuleError("inspect: give the module file (klpsym inspect MODULE [views])")


def _line(text: str = "") -> None:
    """Print one line of a view: names, strings and values come from the
    file as they are, so control characters and undecodable bytes are
    escaped (a terminal or a pipe gets them as text, the line stays one).
    A value padded to a column is escaped before it is padded (printable()
    leaves text escaped before as it is), so its column keeps its width."""
    print(printable(text))


def _print_summary(s: dict[str, Any]) -> None:
    counts, sizes = s["counts"], s["sizes"]
    comp = f" ({s['compression']})" if s["compression"] != "none" else ""
    rows = [
        ("module", f"{s['path']}{comp}"),
        ("name", s["name"]),
        ("arch", s["arch"]),
        ("license", s["license"] or "(none)"),
        ("vermagic", (s["vermagic"] or "(none)").strip()),
        ("description", s["description"]),
        ("depends", ", ".join(s["depends"]) or "-"),
        ("in-tree", "yes" if s["intree"] else "no"),
        ("imports", ", ".join(s["import_ns"]) or None),
        ("size", f"{s['file_size']} bytes; text {sizes['text']}, allocated {sizes['alloc']}, "
                 f"bss {sizes['bss']}"),
        ("counts", f"{counts['sections']} sections, {counts['symbols']} symbols "
                   f"({counts['undefined']} undefined), {counts['relocations']} relocations, "
                   f"{counts['exports']} exports, {counts['versions']} versions"),
        ("livepatch", ("livepatch module (MODULE_INFO livepatch); " if s["livepatch"] else "")
         + (f"{counts['klp_symbols']} klp symbols in {counts['klp_sections']} "
            f"sections: {', '.join(s['klp_sections'])}; objects: {', '.join(s['klp_objects'])}"
            if counts["klp_sections"] else "no klp sections" if s["livepatch"] else "none")),
    ]
    sig = s["signature"]
    rows.append(("signature", "none" if sig is None else
                 f"{sig['id_type']}, {sig.get('sig_hashalgo', '?')}, by "
                 f"{sig.get('signer', '?')} (not verified)"))
    for key, value in rows:
        if value is not None:
            _line(f"{key + ':':<13}{value}")
    if s["undefined"]:
        shown = s["undefined"][:40]
        more = f" ... and {len(s['undefined']) - 40} more" if len(s["undefined"]) > 40 else ""
        _line(f"{'undefined:':<13}{' '.join(shown)}{more}")
    for p in s["klp_problems"]:
        _line(f"klp problem: {p}")


def _print_header(h: dict[str, Any]) -> None:
    _line("ELF Header:")
    rows = [
        ("Magic:", f"  {h['magic']} "),
        ("Class:", h["class"]), ("Data:", h["data"]),
        ("Version:", f"{h['version']}{' (current)' if h['version'] == 1 else ''}"),
        ("OS/ABI:", "UNIX - System V" if h["os_abi"] == 0 else str(h["os_abi"])),
        ("ABI Version:", h["abi_version"]), ("Type:", h["type"]), ("Machine:", h["machine"]),
        ("Version:", "0x1"), ("Entry point address:", f"{h['entry']:#x}"),
        ("Start of program headers:", f"{h['program_headers_offset']} (bytes into file)"),
        ("Start of section headers:", f"{h['section_headers_offset']} (bytes into file)"),
        ("Flags:", f"{h['flags']:#x}"), ("Size of this header:", f"{h['header_size']} (bytes)"),
        ("Size of program headers:", f"{h['program_header_size']} (bytes)"),
        ("Number of program headers:", h["program_headers"]),
        ("Size of section headers:", f"{h['section_header_size']} (bytes)"),
        ("Number of section headers:", h["sections"]),
        ("Section header string table index:", h["section_names_index"]),
    ]
    for key, value in rows:
        if key == "Magic:":
            _line(f"  {key}{value}")
        else:
            _line(f"  {key:<35}{value}")


def _print_sections(rows: list[dict[str, Any]], shoff: int) -> None:
    print(f"There are {len(rows)} section headers, starting at offset {shoff:#x}:\n\n"
          "Section Headers:")
    _line("  [Nr] Name              Type            Address          Off    Size   ES Flg "
          "Lk Inf Al")
    for r in rows:
        _line(f"  [{r['index']:>2}] {printable(r['name']):<17} {r['type']:<15} "
              f"{r['address']:016x} {r['offset']:06x} {r['size']:06x} {r['entsize']:02x} "
              f"{r['flags']:>3} {r['link']:>2} {r['info']:>3} {r['align']:>2}")
    print("Key to Flags:\n  W (write), A (alloc), X (execute), M (merge), S (strings), "
          "I (info),\n  L (link order), O (extra OS processing required), G (group), T (TLS),"
          "\n  C (compressed), x (unknown), o (OS specific), E (exclude),"
          "\n  D (mbind), l (large), p (processor specific)"
          "\n  (o on a .klp.rela section: SHF_RELA_LIVEPATCH)")


def _print_symbols(rows: list[dict[str, Any]]) -> None:
    _line(f"Symbol table '.symtab' contains {len(rows)} entries:")
    _line("   Num:    Value          Size Type    Bind   Vis      Ndx Name")
    for r in rows:
        _line(f"{r['num']:>6}: {r['value']:016x} {r['size']:>5} {r['type']:<7} {r['bind']:<6} "
              f"{r['visibility']:<8} {r['ndx']:>3} {r['name']}")


def _print_relocs(secs: list[dict[str, Any]]) -> None:
    for i, s in enumerate(secs):
        if i:
            _line()
        n = len(s["entries"])
        _line(f"Relocation section '{s['section']}' at offset {s['offset']:#x} contains {n} "
              f"entr{'y' if n == 1 else 'ies'}:")
        _line("    Offset             Info             Type               Symbol's Value  "
              "Symbol's Name + Addend")
        for e in s["entries"]:
            a = e["addend"]
            sign = "-" if a < 0 else "+"
            _line(f"{e['offset']:016x}  {e['info']:016x} {e['type']:<22} "
                  f"{e['symbol_value']:016x} {e['symbol']} {sign} {abs(a):x}")


def _print_strings(v: dict[str, Any]) -> None:
    _line(f"String dump of section '{v['section']}':")
    for off, s in v["strings"]:
        _line(f"  [{off:>6x}]  {s}")


def _print_modinfo(m: Module, entries: list[tuple[str, str]]) -> None:
    _line(f"{'filename:':<16}{m.path}")
    for k, v in entries:
        _line(f"{printable(k) + ':':<16}{v}")


def _print_exports(v: dict[str, Any]) -> None:
    n = len(v["entries"])
    if not n:
        _line("no exports")
        return
    _line(f"{n} export{'s' * (n != 1)} ({v['layout']}):")
    _line(f"  {'CRC':<10} {'type':<18} {'namespace':<20} {'name':<32} symbol")
    for e in v["entries"]:
        crc = f"{e['crc']:#010x}" if e["crc"] is not None else "-"
        where = e["symbol"] or f"{e['section']}+{e['offset']:#x}"
        _line(f"  {crc:<10} {printable(e['type']):<18} {printable(e['namespace'] or '-'):<20} "
              f"{printable(e['name']):<32} {where}")


def _print_versions(v: dict[str, Any]) -> None:
    if not v["entries"]:
        _line("no symbol versions (built without CONFIG_MODVERSIONS)")
        return
    _line(f"{len(v['entries'])} symbol versions ({v['format']}):")
    for e in v["entries"]:
        print(f"{e['crc']:#010x}\t{printable(e['name'])}")


def _print_klp(v: dict[str, Any]) -> None:
    if v["livepatch"]:
        _line("a livepatch module (MODULE_INFO(livepatch, \"Y\"))" + (
            f"; objects: {', '.join(v['objects'])} (a module object's sections are applied "
            "when that module is loaded)" if v["objects"] else ""))
    for a in v["annotations"]:
        _line(f"annotation: KLP_SYMPOS({printable(a['name'])}, {a['pos']}) in object "
              f"{printable(a['object'])} (klpsym convert removes it)")
    if not v["symbols"] and not v["sections"]:
        _line("no livepatch symbols or sections")
        return
    _line(f"livepatch symbols ({len(v['symbols'])}):")
    for s in v["symbols"]:
        pos = "" if s["pos"] is None else s["pos"]
        _line(f"  [{s['num']:>5}] {printable(s['symbol']):<48} object={s['object']} "
              f"name={s['name']} pos={pos}")
    _line(f"livepatch relocation sections ({len(v['sections'])}):")
    for s in v["sections"]:
        _line(f"  {printable(s['section']):<40} -> {s['applies_to']}  {s['relocations']} "
              f"relocations, flags {s['flags']}")
    if v["problems"]:
        _line("the loader would reject or skip:")
        for p in v["problems"]:
            _line(f"  {p}")
    else:
        _line("all follow the loader's rules")


def _print_signature(sig: dict[str, Any] | None) -> None:
    if sig is None:
        _line("not signed")
        return
    _line(f"{'sig_id:':<16}{sig['id_type']}")
    for key in ("signer", "sig_key", "sig_hashalgo", "signature"):
        if key in sig:
            _line(f"{key + ':':<16}{sig[key]}")
    _line("(klpsym shows the signature; it does not verify it)")
