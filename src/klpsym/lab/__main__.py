"""``python -m klpsym.lab``: a thin command line over the lab functions.

python -m klpsym.lab provision bookworm
python -m klpsym.lab build bookworm examples/foo --out /tmp/foo
python -m klpsym.lab boot bookworm --file x.ko --script 'insmod /lab/x.ko; dmesg | tail'
python -m klpsym.lab kallsyms bookworm
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from klpsym.errors import KlpsymError, LabError
from klpsym.lab.build import build_modules
from klpsym.lab.provision import Kernel, provision
from klpsym.lab.qemu import BOOT_TIMEOUT, BootError, boot, capture_kallsyms


def _kernel(args: argparse.Namespace) -> Kernel:
    return provision(args.suite, args.cache)


def _file_arg(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep:
        return Path(spec).name, Path(spec)
    return name, Path(path)


def cmd_provision(args: argparse.Namespace) -> int:
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


def cmd_build(args: argparse.Namespace) -> int:
    for ko in build_modules(_kernel(args), args.src, args.out, args.make_args):
        print(ko)
    return 0


def cmd_boot(args: argparse.Namespace) -> int:
    script = args.script
    if args.script_file is not None:
        script = args.script_file.read_text()
    if script is None:
        raise LabError("give the guest something to run: --script '...' or --script-file FILE")
    files = dict(_file_arg(spec) for spec in args.file)
    try:
        result = boot(
            _kernel(args), files, script, args.timeout, cmdline=args.append, modules=args.module,
            kaslr=args.kaslr,
        )
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


def cmd_kallsyms(args: argparse.Namespace) -> int:
    print(capture_kallsyms(_kernel(args), timeout=args.timeout))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m klpsym.lab",
        description="Provision Debian kernels, build modules for them, boot them in QEMU.",
    )
    p.add_argument("--cache", type=Path, default=None, help="cache dir ($KLPSYM_CACHE)")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("provision", help="download and unpack the suite's current kernel")
    sp.add_argument("suite", nargs="?", default="bookworm")
    sp.add_argument("--json", action="store_true", help="print the kernel's paths as JSON")
    sp.set_defaults(func=cmd_provision)

    sb = sub.add_parser("build", help="build the out-of-tree modules in SRC")
    sb.add_argument("suite")
    sb.add_argument("src", type=Path)
    sb.add_argument("--out", type=Path, default=None, help="copy SRC here and build there")
    sb.add_argument(
        "--make-arg", dest="make_args", action="append", default=[], metavar="ARG",
        help="extra make argument, e.g. V=1 (repeatable)",
    )  # fmt: skip
    sb.set_defaults(func=cmd_build)

    so = sub.add_parser("boot", help="boot the kernel and run a script as root")
    so.add_argument("suite", nargs="?", default="bookworm")
    so.add_argument(
        "--file", action="append", default=[], metavar="[NAME=]PATH",
        help="copy PATH to /lab/NAME in the guest (repeatable)",
    )  # fmt: skip
    so.add_argument(
        "--module", action="append", default=[], metavar="NAME",
        help="in-tree module to make modprobe-able, with its dependencies (repeatable)",
    )  # fmt: skip
    so.add_argument("--script", default=None, help="shell script to run in /lab")
    so.add_argument("--script-file", type=Path, default=None)
    so.add_argument("--append", action="append", default=[], help="extra kernel argument")
    so.add_argument("--timeout", type=float, default=BOOT_TIMEOUT)
    so.add_argument("--console", action="store_true", help="copy the kernel console to stderr")
    so.add_argument("--kaslr", action="store_true",
                    help="boot the bzImage so the kernel's address is randomised, as on real "
                         "machines (slower); by default the PVH boot runs at link-time addresses")
    so.set_defaults(func=cmd_boot)

    sk = sub.add_parser("kallsyms", help="capture the guest's /proc/kallsyms; print its path")
    sk.add_argument("suite", nargs="?", default="bookworm")
    sk.add_argument("--timeout", type=float, default=BOOT_TIMEOUT)
    sk.set_defaults(func=cmd_kallsyms)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except KlpsymError as exc:
        print(f"klpsym.lab: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
