"""``klpsym addr``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from klpsym.cli.sources import SYMBOL_SOURCE_HELP, add_symbol_source_flags, symbols_from_args

if TYPE_CHECKING:  # imported when the command runs: `klpsym --help` stays fast
    from klpsym.kernel.symbols import Found

EPILOG = SYMBOL_SOURCE_HELP + """

A name alone lists every kallsyms entry of it (POS 1..N when it is
duplicated, 0 when unique); NAME,POS gives one.  POS counts entries in
kallsyms order, as livepatch, 'klpsym convert --sympos' and klpsym.h's
KLPSYM_*_POS do.  With --vmlinux each entry also gets its compilation unit
(static symbols) and, for functions, file:line (needs binutils' addr2line
and a vmlinux with debug info, e.g. Debian's linux-image-*-dbg).

examples:
  sudo klpsym addr kallsyms_lookup_name dmesg_restrict
  sudo klpsym addr c_start                       # every c_start, with its POS
  sudo klpsym addr c_start,2 --json
  klpsym addr c_start --vmlinux /usr/lib/debug/boot/vmlinux-$(uname -r)

exit status: 0 every name found, 2 a name is missing, ambiguous with ,0,
or the source shows no addresses (one line on stderr says why and the fix)."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "addr", help="print kernel symbols' addresses (every entry of a duplicated name)",
        description="Print the address of each kernel symbol in the target kernel's kallsyms, "
                    "with its POS and type.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", metavar="NAME[,POS]", nargs="+",
                   help="a symbol name, optionally with the POS of one of its entries")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    add_symbol_source_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from klpsym.kernel.symbols import lookup, parse_query, require_addresses, with_sources

    queries = [parse_query(n) for n in args.names]
    source = symbols_from_args(args)
    require_addresses(source)
    found = lookup(source.table, queries)
    if source.vmlinux is not None:
        found = with_sources(found, source.vmlinux)
    if args.json:
        from klpsym.cli.jsonout import dump

        dump({"source": source.description, "runtime_addresses": source.runtime,
              "symbols": [to_json(f) for f in found]}, sys.stdout)
        return 0
    with_files = source.vmlinux is not None
    rows = [["name", "POS", "type", "address"] + (["unit", "source"] if with_files else [])]
    for f in found:
        row = [f.name, str(f.pos), f.type, f"{f.address:#018x}" if f.address else "-"]
        if with_files:
            row += [f.unit or "-", f.source or "-"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if not source.runtime:
        print(f"note: link-time addresses from {source.description}; a running kernel adds "
              "its KASLR offset")
    return 0


def to_json(f: Found) -> dict[str, Any]:
    return {"name": f.name, "pos": f.pos, "count": f.count, "type": f.type,
            "address": f.address or None,
            "unit": f.unit, "source": f.source}
