"""``klpsym lab``: Debian kernels to build for and boot in QEMU, for trying a
module on a kernel this machine does not run."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from klpsym.errors import LabError

SUITES_HELP = """\
SUITE is a Debian suite: bookworm (6.1), trixie (6.12), sid (7.x), or another
one apt knows.  Its current kernel (through linux-image-amd64), headers and
kbuild are downloaded with apt into the cache ($KLPSYM_CACHE, default
~/.cache/klpsym) and unpacked there; nothing is installed on this machine and
its apt configuration is not touched (other suites go through a private apt
under the cache).  For a suite whose compiler this machine lacks (trixie:
gcc-14, sid: gcc-16) a debootstrap of the suite is kept in the cache and make
runs inside it (root needed).  Everything is done once and reused."""

EPILOG = SUITES_HELP + """

examples:
  klpsym lab provision trixie              # kernel + headers + build chroot, cached
  klpsym lab build trixie my_module/       # klpsym build for that kernel, in its chroot
  klpsym lab run trixie my_module/my.ko    # boot it in QEMU, insmod, show the kernel log
  klpsym lab run sid a.ko b.ko --kaslr     # b after a; the kernel at a random address
  klpsym lab kallsyms sid                  # its /proc/kallsyms, for klpsym convert

Run 'klpsym lab COMMAND --help' for each command's options."""


# klpsym.lab.qemu.BOOT_TIMEOUT, without importing the lab to build the parser
# (a test keeps them equal).
BOOT_TIMEOUT = 180.0


def _suite(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", metavar="SUITE", help="Debian suite: bookworm, trixie, sid, ...")


def register(sub: Any) -> None:
    from klpsym.cli import build as build_cli

    fmt = argparse.RawDescriptionHelpFormatter
    lab: argparse.ArgumentParser = sub.add_parser(
        "lab", help="provision Debian kernels, build for them, load modules in QEMU",
        description="Try a module on other kernels: provision a Debian suite's kernel into a\n"
                    "cache, build a module for it with klpsym build, boot it in QEMU (software\n"
                    "emulation, a few seconds) and load the module.",
        epilog=EPILOG, formatter_class=fmt)
    lab.add_argument("--cache", type=Path, default=None, metavar="DIR",
                     help="cache dir (default $KLPSYM_CACHE, else ~/.cache/klpsym)")
    labsub = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)

    p = labsub.add_parser(
        "provision", help="fetch the suite's kernel, headers and build chroot into the cache",
        description="Fetch SUITE's current kernel and headers (and, when this machine lacks "
                    "its compiler, a build chroot) into the cache; print where they are.  "
                    "Idempotent: a second run only checks apt for a newer kernel.",
        epilog=SUITES_HELP + """

Debian's archive keeps only the current kernel of each suite and moves every
few weeks.  When the kernel chosen is new to the cache, a line on stderr says
so and names the older ones the cache holds ('klpsym lab prune' removes them).
With $KLPSYM_LAB_STRICT=1 (as CI runs), a failure to ask apt is an error,
never a fall-back to a cached kernel the archive may no longer serve.

examples:
  klpsym lab provision bookworm
  klpsym lab provision trixie --refresh    # fetch the apt lists first, whatever their age
  klpsym lab provision sid --json | jq -r .kernel_dir      # KDIR for klpsym convert""",
        formatter_class=fmt)
    _suite(p)
    p.add_argument("--json", action="store_true", help="print the kernel's paths as JSON")
    p.add_argument("--refresh", action="store_true",
                   help="fetch the suite's apt lists first (the host's suite: apt-get update, "
                        "as root); by default a private suite's lists are refetched daily")
    p.set_defaults(run=run_provision)

    p = labsub.add_parser(
        "prune", help="remove kernels and chroots the archive no longer serves from the cache",
        description="For each SUITE (default: every suite in the cache) keep the archive's "
                    "current kernel and the build chroot it uses, and remove the rest: older "
                    "kernels, trees of older cache layouts, unused chroots, and the .deb files "
                    "no kept kernel needs.  When apt cannot answer, the newest cached kernel "
                    "is kept.",
        epilog="""examples:
  klpsym lab prune --dry-run               # what would go, and how much
  klpsym lab prune bookworm""",
        formatter_class=fmt)
    p.add_argument("suites", metavar="SUITE", nargs="*", help="Debian suites (default: all)")
    p.add_argument("--dry-run", "-n", action="store_true", help="say what would be removed")
    p.set_defaults(run=run_prune)

    p = labsub.add_parser(
        "kallsyms", help="boot the suite's kernel once and keep its /proc/kallsyms",
        description="Boot SUITE's kernel in QEMU once, save its /proc/kallsyms (read as root) "
                    "in the cache and print the file's path (later calls just print it).",
        epilog="""examples:
  klpsym lab kallsyms trixie
  klpsym convert my.ko -o my.klp.ko \\
      --kernel-dir "$(klpsym lab provision trixie --json | jq -r .kernel_dir)" \\
      --kallsyms "$(klpsym lab kallsyms trixie)\"""",
        formatter_class=fmt)
    _suite(p)
    p.add_argument("--timeout", type=float, default=BOOT_TIMEOUT, help="boot timeout (s)")
    p.set_defaults(run=run_kallsyms)

    p = labsub.add_parser(
        "build", help="klpsym build for the suite's kernel (in its chroot when needed)",
        usage="klpsym lab build SUITE [DIR] [options] [-- MAKE_ARG...]",
        description="'klpsym build' against SUITE's kernel: its headers, its Module.symvers, "
                    "its kallsyms (captured from a boot), its compiler.  The converted .ko files "
                    "are left in DIR (or MO=OUTDIR), as with klpsym build.",
        epilog="""examples:
  klpsym lab build sid                     # the module in .
  klpsym lab build trixie src/ -- V=1      # make arguments after --
  klpsym lab build sid src/ -- MO=out/     # objects and .ko files in out/ (>= 6.13)
  klpsym lab build sid src/ && klpsym lab run sid src/my.ko

exit status: 0 built and converted, 2 refused or kbuild failed.""",
        formatter_class=fmt)
    _suite(p)
    p.add_argument("directory", metavar="DIR", type=Path, nargs="?", default=Path("."),
                   help="the module's source dir, with its Kbuild or Makefile (default: .)")
    p.add_argument("--sympos", metavar="NAME=N", action="append", default=[],
                   help="which of several same-name kallsyms entries to use (repeatable)")
    p.add_argument("--symvers", metavar="FILE", type=Path, action="append", default=[],
                   help="Module.symvers of other out-of-tree modules this one uses (repeatable)")
    p.set_defaults(run=run_build, make_args=[])
    p.__class__ = build_cli._MakeArgsParser

    p = labsub.add_parser(
        "make", help="plain kbuild for the suite's kernel (modpost only warns), no conversion",
        usage="klpsym lab make SUITE DIR [--out OUT] [-- MAKE_ARG...]",
        description="Run 'make -C KDIR M=DIR modules KBUILD_MODPOST_WARN=1' for SUITE's kernel "
                    "(in its chroot when needed) and print the .ko files, unconverted: for "
                    "'klpsym convert' afterwards.",
        epilog="""examples:
  klpsym lab make trixie src/ --out /tmp/build     # builds a copy, src/ stays clean
  # 7.x: let modpost pass module-only exports too (klpsym convert handles them)
  klpsym lab make sid src/ -- KBUILD_NSDEPS=1""",
        formatter_class=fmt)
    _suite(p)
    p.add_argument("directory", metavar="DIR", type=Path)
    p.add_argument("--out", type=Path, default=None, help="copy DIR here and build there")
    p.set_defaults(run=run_make, make_args=[])
    p.__class__ = build_cli._MakeArgsParser

    p = labsub.add_parser(
        "run", help="boot the suite's kernel, insmod modules in order, show the kernel log",
        description="Boot SUITE's kernel in QEMU (one boot), insmod each MODULE.ko in the "
                    "order given and print, for each, insmod's result and the kernel log lines "
                    "it produced.",
        epilog="""examples:
  klpsym lab run trixie hello.ko
  klpsym lab run sid provider.ko user.ko --kaslr

exit status: 0 every module loaded, 1 a module did not load, 2 bad input or
the boot failed.""",
        formatter_class=fmt)
    _suite(p)
    p.add_argument("modules", metavar="MODULE.ko", type=Path, nargs="+")
    p.add_argument("--kaslr", action="store_true",
                   help="boot the bzImage so the kernel's address is randomised, as on real "
                        "machines (slower); by default the kernel runs at its link-time address")
    p.add_argument("--timeout", type=float, default=BOOT_TIMEOUT, help="boot timeout (s)")
    p.add_argument("--console", action="store_true", help="copy the kernel console to stderr")
    p.set_defaults(run=run_run)

    p = labsub.add_parser(
        "boot", help="boot the suite's kernel and run a shell script in it",
        description="Boot SUITE's kernel in QEMU with a busybox initramfs, copy files to /lab, "
                    "run a script there as root, print its output and exit with its status.",
        epilog="""examples:
  klpsym lab boot sid --script 'uname -r'
  klpsym lab boot bookworm --kaslr --file my.ko --script 'insmod /lab/my.ko; dmesg | tail'""",
        formatter_class=fmt)
    _suite(p)
    p.add_argument("--file", action="append", default=[], metavar="[NAME=]PATH",
                   help="copy PATH to /lab/NAME in the guest (repeatable)")
    p.add_argument("--module", action="append", default=[], metavar="NAME",
                   help="in-tree module to make modprobe-able, with its dependencies "
                        "(repeatable)")
    p.add_argument("--script", default=None, help="shell script to run in /lab")
    p.add_argument("--script-file", type=Path, default=None)
    p.add_argument("--append", action="append", default=[], help="extra kernel argument")
    p.add_argument("--timeout", type=float, default=BOOT_TIMEOUT)
    p.add_argument("--console", action="store_true", help="copy the kernel console to stderr")
    p.add_argument("--kaslr", action="store_true",
                   help="boot the bzImage so the kernel's address is randomised")
    p.set_defaults(run=run_boot)


# ------------------------------------------------------------------ commands


def _say(line: str) -> None:
    print(f"klpsym lab: {line}", file=sys.stderr, flush=True)


def _kernel(args: argparse.Namespace) -> Any:
    from klpsym.lab.provision import provision

    return provision(args.suite, args.cache, refresh=getattr(args, "refresh", False), say=_say)


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    seen: set[int] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino not in seen:  # hard links (a chroot's copy of the headers) once
                seen.add(st.st_ino)
                total += st.st_size
    return total


def run_prune(args: argparse.Namespace) -> int:
    from klpsym.lab.provision import prune

    pruned = prune(args.suites or None, args.cache, dry_run=args.dry_run)
    for kernel in pruned.kept:
        print(f"kept     {kernel.suite} {kernel.label}  {kernel.home}")
    verb = "would remove" if args.dry_run else "removed"
    total = 0
    for path in pruned.removed:
        size = _size(path) if args.dry_run else 0
        total += size
        print(f"{verb}  {path}" + (f"  ({size / 2**20:.0f} MiB)" if args.dry_run else ""))
    for note in pruned.notes:
        print(f"note: {note}")
    if not pruned.removed:
        print("nothing to remove")
    elif args.dry_run:
        print(f"{len(pruned.removed)} paths, {total / 2**20:.0f} MiB")
    return 0


def run_provision(args: argparse.Namespace) -> int:
    k = _kernel(args)
    fields = {
        "suite": k.suite,
        "release": k.release,
        "package_version": k.package_version,
        "kernel_dir": str(k.kernel_dir),
        "vmlinux": str(k.vmlinux),
        "vmlinuz": str(k.vmlinuz),
        "config": str(k.config),
        "system_map": str(k.system_map),
        "modules_dir": str(k.modules_dir),
        "root": str(k.root),
        "home": str(k.home),
        "compiler": k.compiler,
        "chroot": str(k.chroot or ""),
        "chroot_kernel_dir": str(k.chroot_kernel_dir) if k.chroot else "",
    }
    if args.json:
        print(json.dumps(fields, indent=2))
    else:
        width = max(map(len, fields))
        for key, value in fields.items():
            print(f"{key:<{width}}  {value}")
    return 0


def run_kallsyms(args: argparse.Namespace) -> int:
    from klpsym.lab.qemu import capture_kallsyms

    print(capture_kallsyms(_kernel(args), timeout=args.timeout))
    return 0


def run_build(args: argparse.Namespace) -> int:
    from klpsym.cli.build import print_table
    from klpsym.klp.plan import parse_sympos
    from klpsym.lab.build import klpsym_build

    sympos = parse_sympos(args.sympos)
    result = klpsym_build(_kernel(args), args.directory, sympos, args.make_args,
                          tuple(args.symvers))
    print_table(result)
    return 0


def run_make(args: argparse.Namespace) -> int:
    from klpsym.lab.build import build_modules

    for ko in build_modules(_kernel(args), args.directory, args.out, args.make_args):
        print(ko)
    return 0


def run_run(args: argparse.Namespace) -> int:
    from klpsym.lab.insmod import load_modules
    from klpsym.lab.qemu import BootError

    kernel = _kernel(args)
    try:
        result = load_modules(kernel, args.modules, kaslr=args.kaslr, timeout=args.timeout)
    except BootError as exc:
        if args.console:
            sys.stderr.write(exc.console)
        raise
    if args.console:
        sys.stderr.write(result.boot.console)
    print(f"{kernel.suite}: {kernel.release}{' (KASLR)' if args.kaslr else ''}, "
          f"boot {result.boot.seconds:.1f} s")
    for load in result.loads:
        if load.status is None:
            verdict = "not reached"
        elif load.ok:
            verdict = "loaded"
        else:
            verdict = f"FAILED (insmod exit {load.status})"
        print(f"insmod {load.path}: {verdict}")
        for line in load.output:
            print(f"  insmod: {line}")
        for line in load.log:
            print(f"  kernel: {line}")
    return 0 if result.ok else 1


def run_boot(args: argparse.Namespace) -> int:
    from klpsym.lab.qemu import BootError, boot

    script = args.script
    if args.script_file is not None:
        try:
            script = args.script_file.read_text()
        except OSError as e:
            raise LabError(f"{args.script_file}: cannot read the script ({e.strerror})") from None
    if script is None:
        raise LabError("give the guest something to run: --script '...' or --script-file FILE")
    files = {}
    for spec in args.file:
        name, sep, path = spec.partition("=")
        files[name if sep else Path(spec).name] = Path(path if sep else spec)
    try:
        result = boot(_kernel(args), files, script, args.timeout, cmdline=args.append,
                      modules=args.module, kaslr=args.kaslr)
    except BootError as exc:
        if args.console:
            sys.stderr.write(exc.console)
        raise
    if args.console:
        sys.stderr.write(result.console)
    sys.stdout.write(result.output)
    sys.stdout.flush()
    print(f"[boot: {result.seconds:.1f} s, exit status {result.exit_status}]", file=sys.stderr)
    return result.exit_status
