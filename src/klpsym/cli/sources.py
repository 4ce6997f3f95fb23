"""The symbol-source flags every command that targets a kernel takes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from klpsym.kernel.target import TargetKernel

SOURCES_HELP = """\
target kernel (default: the running kernel):
  Module.symvers comes from --kernel-dir (default /lib/modules/$(uname -r)/build);
  the kallsyms order from exactly one of --kallsyms, --system-map, --vmlinux
  (default /proc/kallsyms when the target is the running kernel)."""


def add_source_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target kernel")
    g.add_argument("--kernel-dir", metavar="KDIR", type=Path,
                   help="the target kernel's build/headers dir (Module.symvers, .config, "
                        "release); default /lib/modules/$(uname -r)/build")
    one = g.add_mutually_exclusive_group()
    one.add_argument("--kallsyms", metavar="FILE", type=Path,
                     help="a copy of the target's /proc/kallsyms (read as non-root is fine: "
                          "only the order matters)")
    one.add_argument("--system-map", metavar="FILE", type=Path,
                     help="the target's System.map (Debian: from the linux-image-*-dbg package)")
    one.add_argument("--vmlinux", metavar="FILE", type=Path,
                     help="the target's vmlinux with its symbol table")
    g.add_argument("--symvers", metavar="FILE", type=Path, action="append", default=[],
                   help="extra Module.symvers of other out-of-tree modules whose exports this "
                        "module uses (repeatable)")
    g.add_argument("--no-cache", action="store_true",
                   help="parse Module.symvers and kallsyms afresh instead of using the parsed "
                        "copies kept in ~/.cache/klpsym/symcache (also: KLPSYM_NO_CACHE=1)")
    g.add_argument("--config", metavar="FILE", type=Path,
                   help="the target's .config (default: KDIR/.config, else "
                        "/boot/config-$(uname -r))")


def target_from_args(args: argparse.Namespace) -> TargetKernel:
    from klpsym.kernel.target import discover

    return discover(
        kernel_dir=args.kernel_dir, kallsyms=args.kallsyms, system_map=args.system_map,
        vmlinux=args.vmlinux, symvers=tuple(args.symvers), config=args.config,
        cache=not args.no_cache,
    )
