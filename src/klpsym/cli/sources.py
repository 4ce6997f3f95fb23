"""The symbol-source flags every command that targets a kernel takes."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a command runs: `klpsym --help` stays fast
    from klpsym.kernel.symbols import SymbolSource
    from klpsym.kernel.symvers import Symvers
    from klpsym.kernel.target import TargetKernel
    from klpsym.kernel.version import KernelVersion
    from klpsym.module.kallsyms import TargetModules

SOURCES_HELP = """\
target kernel (default: the running kernel):
  Module.symvers comes from --kernel-dir (default /lib/modules/$(uname -r)/build;
  --kernel-release R means /lib/modules/R/build); the kallsyms order from
  exactly one of --kallsyms, --system-map, --vmlinux, --image, by default
  /proc/kallsyms when the target is the running kernel, else the first that
  exists of the debug package's /usr/lib/debug/boot/System.map-R,
  /usr/lib/debug/boot/vmlinux-R, /usr/lib/debug/lib/modules/R/vmlinux, a
  real /boot/System.map-R (Debian's is a placeholder), and the kernel's own
  image /boot/vmlinuz-R or /usr/lib/modules/R/vmlinuz (x86-64). The "target"
  line names the source used.  A symbol source that lacks vmlinux exports
  listed in the Module.symvers is refused as another kernel's (or
  truncated); --no-symbol-check takes it anyway."""


def add_source_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target kernel")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--kernel-dir", metavar="KDIR", type=Path,
                       help="the target kernel's build/headers dir (Module.symvers, .config, "
                            "release); default /lib/modules/$(uname -r)/build")
    which.add_argument("--kernel-release", metavar="RELEASE",
                       help="the target kernel by its 'uname -r', when its headers are "
                            "installed: same as --kernel-dir /lib/modules/RELEASE/build")
    one = g.add_mutually_exclusive_group()
    one.add_argument("--kallsyms", metavar="FILE", type=Path,
                     help="a copy of the target's /proc/kallsyms (read as non-root is fine: "
                          "only the order matters)")
    one.add_argument("--system-map", metavar="FILE", type=Path,
                     help="the target's System.map (Debian: from the linux-image-*-dbg package)")
    one.add_argument("--vmlinux", metavar="FILE", type=Path,
                     help="the target's vmlinux with its symbol table")
    one.add_argument("--image", metavar="FILE", type=Path,
                     help="the target's kernel image (/boot/vmlinuz-R, bzImage, or a vmlinux "
                          "without symbol table): its own kallsyms tables")
    g.add_argument("--symvers", metavar="FILE", type=Path, action="append", default=[],
                   help="extra Module.symvers of other out-of-tree modules whose exports this "
                        "module uses (repeatable)")
    g.add_argument("--no-symbol-check", action="store_true",
                   help="use the kallsyms/System.map/vmlinux even when vmlinux exports of the "
                        "target's Module.symvers are missing from it (by default it is then "
                        "refused as another kernel's, or truncated)")
    g.add_argument("--no-cache", action="store_true",
                   help="parse Module.symvers and kallsyms afresh instead of using the parsed "
                        "copies kept in ~/.cache/klpsym/symcache (also: KLPSYM_NO_CACHE=1)")
    g.add_argument("--config", metavar="FILE", type=Path,
                   help="the target's .config (default: KDIR/.config, else "
                        "/boot/config-$(uname -r))")


def target_from_args(args: argparse.Namespace) -> TargetKernel:
    from klpsym.kernel.target import discover

    return discover(
        kernel_dir=args.kernel_dir, kernel_release=args.kernel_release, kallsyms=args.kallsyms,
        system_map=args.system_map,
        vmlinux=args.vmlinux, symvers=tuple(args.symvers), config=args.config,
        image=args.image, cache=not args.no_cache, check_symbols=not args.no_symbol_check,
    )


LIVEPATCH_HELP = """\
livepatch modules (MODULE_INFO(livepatch, "Y")):
  may also reference unexported symbols of the modules they patch: give each
  with --target-module (its .ko, or its name, found in the target's
  /lib/modules/R tree; a KLP_MODULE_RELOC(OBJ) annotation finds OBJ by name).
  A name must be in one object only and unique there, else choose with
  klpsym.h's KLP_MODULE_RELOC(OBJ)/KLP_SYMPOS(NAME, POS) or --sympos
  OBJ:NAME=POS (POS counts in the module's symbol table order)."""


def add_target_module_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-module", metavar="PATH.ko|NAME", action="append", default=[],
                   help="a module a livepatch module patches, whose unexported symbols it "
                        "references (its .ko, or its name in the target kernel's module "
                        "tree; repeatable)")


def targets_from_args(args: argparse.Namespace, target: TargetKernel) -> TargetModules:
    from klpsym.module.kallsyms import TargetModules

    config = target.config
    return TargetModules(
        args.target_module, target.release, target.kernel_dir,
        kallsyms_all=config is None or config.enabled("CONFIG_KALLSYMS_ALL"),
        module_unload=config is None or config.enabled("CONFIG_MODULE_UNLOAD"))


SYMBOL_SOURCE_HELP = """\
symbol source (default: /proc/kallsyms of the running kernel, this boot's addresses):
  --kallsyms takes a saved copy; --system-map, --vmlinux and --image give
  link-time addresses, which a running kernel shifts by its KASLR offset."""


def add_symbol_source_flags(p: argparse.ArgumentParser) -> None:
    """Only a kallsyms source (no Module.symvers): for addr and insmod."""
    g = p.add_argument_group("symbol source")
    one = g.add_mutually_exclusive_group()
    one.add_argument("--kallsyms", metavar="FILE", type=Path,
                     help="a copy of the target's /proc/kallsyms, read as root")
    one.add_argument("--system-map", metavar="FILE", type=Path,
                     help="the target's System.map (link-time addresses)")
    one.add_argument("--vmlinux", metavar="FILE", type=Path,
                     help="the target's vmlinux with its symbol table (link-time addresses, "
                          "and source files)")
    one.add_argument("--image", metavar="FILE", type=Path,
                     help="the target's kernel image, e.g. /boot/vmlinuz-R (link-time "
                          "addresses from its own kallsyms tables)")
    g.add_argument("--kernel-dir", metavar="KDIR", type=Path,
                   help="the target's headers dir: its release and .config refine the "
                        "--system-map/--vmlinux rules")
    g.add_argument("--config", metavar="FILE", type=Path,
                   help="the target's .config (CONFIG_KALLSYMS_ALL) for --system-map/--vmlinux")
    g.add_argument("--no-symbol-check", action="store_true",
                   help="with --kernel-dir, use the symbol source even when vmlinux exports of "
                        "its Module.symvers are missing from it")


@contextlib.contextmanager
def _decompressing_ahead(image: Path) -> Iterator[bool]:
    """While the block runs, ``image`` is being decompressed in a thread
    (kernel.vmlinuz.prefetch), started before the block's imports (numpy's
    and the readers', a fifth of a first run) and its reading of the
    target's release, unless the symbol cache holds the image's kallsyms
    (the block then reads no image).  Yields whether the thread runs.  No
    thread is left running after it."""
    from klpsym.kernel import cachekey, vmlinuz

    if not cachekey.has_image_entry(image):
        vmlinuz.prefetch(image)
    try:
        yield vmlinuz.prefetching(image)
    finally:
        vmlinuz.cancel_prefetches()


def _symvers_meanwhile(path: Path) -> Symvers | None:
    """The target's Module.symvers, read while its image decompresses
    (the main thread would only wait; ~35 ms the first time); None when it
    cannot be read: it is then read again where it was before, so that its
    error still comes after the image's."""
    from klpsym.errors import KlpsymError
    from klpsym.kernel.symvers import read_symvers

    try:
        return read_symvers(path)
    except KlpsymError:
        return None


def symbols_from_args(args: argparse.Namespace) -> SymbolSource:
    """The symbol source; with --kernel-dir, held to that kernel's exports
    as convert's is (:func:`klpsym.kernel.target.check_symbol_source`)."""
    image = getattr(args, "image", None)
    own = None if args.kernel_dir is None else Path(args.kernel_dir) / "Module.symvers"
    check = own is not None and own.is_file() and not args.no_symbol_check
    early = None
    version: KernelVersion | None = None
    if image is not None:
        with _decompressing_ahead(image) as ahead:
            from klpsym.kernel.version import read_kernel_version

            if args.kernel_dir is not None:
                version = read_kernel_version(args.kernel_dir)
            from klpsym.kernel.image import read_image
            from klpsym.kernel.symbols import SymbolSource

            if ahead and check and own is not None:
                early = _symvers_meanwhile(own)
            source = SymbolSource(read_image(image, version), f"image {image}", False)
    else:
        from klpsym.kernel.symbols import open_symbols

        source = open_symbols(args.kallsyms, args.system_map, args.vmlinux,
                              kernel_dir=args.kernel_dir, config=args.config)
    if check and own is not None:
        from klpsym.errors import KernelSourceError
        from klpsym.kernel.config import KernelConfig
        from klpsym.kernel.symvers import read_symvers
        from klpsym.kernel.target import check_symbol_source
        from klpsym.kernel.version import read_kernel_version

        symvers = early if early is not None else read_symvers(own)
        release = (version or read_kernel_version(args.kernel_dir)).release
        named = (args.kallsyms or args.system_map or args.vmlinux or image
                 or source.description)
        try:
            # Without a .config the check allows the fewest missing exports
            # (a kernel without CONFIG_KALLSYMS_ALL is allowed more), so a
            # source that passes it passes with the .config too: the .config
            # is read (~25 ms the first time) only for one that does not.
            check_symbol_source(source.table, symvers, release, None, named)
        except KernelSourceError:
            cfg_path = args.config or Path(args.kernel_dir) / ".config"
            if not Path(cfg_path).is_file():
                raise
            check_symbol_source(source.table, symvers, release,
                                KernelConfig.from_path(cfg_path), named)
    return source
