"""``klpsym kallsyms``: what klpsym believes the target kernel's kallsyms holds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klpsym.cli.sources import SYMBOL_SOURCE_HELP, add_symbol_source_flags, symbols_from_args

if TYPE_CHECKING:  # imported when the command runs: `klpsym --help` stays fast
    from klpsym.kernel.kallsyms import KallsymsTable

EPILOG = SYMBOL_SOURCE_HELP + """
  --kernel-release R (or --kernel-dir KDIR) with no source flag takes the
  source convert and build would take for that kernel: /proc/kallsyms when it
  is the running kernel, else the debug package's System.map or vmlinux, a
  real /boot/System.map-R, then its image /boot/vmlinuz-R or
  /usr/lib/modules/R/vmlinuz.

Prints vmlinux's entries in /proc/kallsyms format (ADDRESS TYPE NAME, in
kallsyms order: the order POS counts in); the source goes to stderr.

examples:
  klpsym kallsyms --image /boot/vmlinuz-$(uname -r) | grep ' kallsyms_lookup_name$'
  klpsym kallsyms --kernel-release 6.1.0-57-amd64 > /tmp/kallsyms-6.1
  klpsym kallsyms --json --image vmlinuz | jq '.symbols | length'

exit status: 0, or 2 when the source cannot be read (one line on stderr)."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "kallsyms", help="print the target kernel's kallsyms as klpsym reads it",
        description="Print vmlinux's kallsyms from any symbol source, in /proc/kallsyms "
                    "format (or JSON).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true",
                   help="print a JSON object: source, runtime_addresses, symbols")
    p.add_argument("--kernel-release", metavar="RELEASE",
                   help="the target kernel by its 'uname -r' (its headers must be installed); "
                        "without a source flag, its default symbol source is used")
    p.add_argument("--no-cache", action="store_true",
                   help="read the source afresh instead of the symbol cache")
    add_symbol_source_flags(p)
    p.set_defaults(run=run)


def _source(args: argparse.Namespace) -> tuple[KallsymsTable, str, bool]:
    """(table, description, runtime addresses)."""
    explicit = args.kallsyms or args.system_map or args.vmlinux or args.image
    if explicit is None and (args.kernel_release is not None or args.kernel_dir is not None):
        from klpsym.kernel.proc_kallsyms import PROC_KALLSYMS
        from klpsym.kernel.target import discover

        target = discover(kernel_dir=args.kernel_dir, kernel_release=args.kernel_release,
                          config=args.config, cache=not args.no_cache)
        source = target.kallsyms_source
        runtime = source == PROC_KALLSYMS or source.startswith("kallsyms ")
        return target.kallsyms, source, runtime
    if args.kernel_release is not None:
        args.kernel_dir = Path("/lib/modules") / args.kernel_release / "build"
    if args.no_cache:
        import os

        os.environ["KLPSYM_NO_CACHE"] = "1"
    found = symbols_from_args(args)
    return found.table, found.description, found.runtime


def run(args: argparse.Namespace) -> int:
    table, source, runtime = _source(args)
    out = sys.stdout
    if args.json:
        names = table.names.tolist()
        types = table.types.tolist()
        addrs = table.addresses.tolist()
        from klpsym.cli.jsonout import SCHEMA

        # addresses as hex strings, as every --json (docs/json.md); made
        # here, not through jsonout.hexify: a kernel has ~200k of them
        json.dump({"schema": SCHEMA, "source": source, "runtime_addresses": runtime,
                   "has_addresses": table.has_addresses, "notes": list(table.notes),
                   "count": len(table),
                   "symbols": [{"address": f"{a:#x}", "type": t, "name": n}
                               for a, t, n in zip(addrs, types, names, strict=True)]},
                  out, separators=(",", ":"))
        out.write("\n")
        return 0
    print(f"klpsym: {len(table)} vmlinux symbols from {source}"
          + ("" if runtime else " (link-time addresses)"), file=sys.stderr)
    write_kallsyms(table, out)
    return 0


def write_kallsyms(table: KallsymsTable, out: Any, chunk: int = 1 << 14) -> None:
    """``table`` in /proc/kallsyms format (s_show(): ``%px %c %s``), built
    with numpy from the table's arrays a chunk of lines at a time: no
    Python string per symbol."""
    import numpy as np

    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)  # the 16 nibbles, high first
    arrays, _ = table.to_arrays()
    addrs = arrays["addresses"].astype(np.uint64)
    codes = arrays["types"]
    blob, starts = arrays["names_blob"], arrays["names_starts"].astype(np.int64)
    sink = out.buffer if hasattr(out, "buffer") else None
    head = np.arange(19, dtype=np.int64)
    for c in range(0, len(addrs), chunk):
        e = min(c + chunk, len(addrs))
        names = blob[starts[c]: starts[e]]  # each name with its newline
        k = e - c
        # each line's first 19 bytes: the address in hex, ' ', the type, ' '
        fixed = np.empty((k, 19), dtype=np.uint8)
        np.take(hexdigits, ((addrs[c:e, None] >> shifts) & np.uint64(15)).astype(np.intp),
                out=fixed[:, :16])
        fixed[:, 16] = 32
        fixed[:, 17] = codes[c:e]
        fixed[:, 18] = 32
        line0 = starts[c:e] - starts[c] + 19 * np.arange(k, dtype=np.int64)
        at = (line0[:, None] + head).reshape(-1)
        buf = np.empty(19 * k + len(names), dtype=np.uint8)
        buf[at] = fixed.reshape(-1)
        rest = np.ones(len(buf), dtype=bool)
        rest[at] = False
        buf[rest] = names
        if sink is not None:
            out.flush()
            sink.write(buf.data)
        else:
            out.write(buf.tobytes().decode("utf-8", "surrogateescape"))
    if sink is not None:
        sink.flush()
