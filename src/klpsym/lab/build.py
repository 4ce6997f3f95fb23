"""Build out-of-tree modules against a provisioned kernel with its own kbuild.

make runs on this machine when it has the compiler the kernel's headers call
(bookworm's gcc-12 on a bookworm host), else in the suite's build chroot
(:func:`runner`), through klpsym.kbuild's runners: the same ones
``klpsym build`` uses, so both build the same way.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from klpsym.errors import KbuildError, LabError
from klpsym.kbuild.build import BuildResult, build
from klpsym.kbuild.runner import ChrootRunner, HostRunner, Runner, modules_in_order
from klpsym.kernel.target import discover
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms

BUILD_TIMEOUT = 900.0


class BuildError(LabError):
    """kbuild failed; ``log`` holds the tail of its output."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


def runner(kernel: Kernel) -> tuple[Runner, Path]:
    """Where make runs for ``kernel``, and the kernel dir to give it.

    This machine when it has ``kernel.compiler``; else the suite's chroot,
    with the headers' copy inside it (``Kernel.chroot_kernel_dir``)."""
    if shutil.which(kernel.compiler) is not None:
        if shutil.which("make") is None:
            raise LabError("'make' is missing; run scripts/bootstrap or 'apt-get install make'")
        return HostRunner(), kernel.kernel_dir
    if kernel.chroot is None:
        raise LabError(
            f"the {kernel.suite} kernel headers build with {kernel.compiler!r}, which is missing;"
            f" provision the kernel with chroot=True (a {kernel.suite} build chroot), or"
            f" run scripts/bootstrap or 'apt-get install {kernel.compiler} make'"
        )
    kdir = kernel.chroot / kernel.chroot_kernel_dir.relative_to("/")
    if not kdir.is_dir():
        raise LabError(f"{kdir} is missing; provision the {kernel.suite} kernel again")
    return ChrootRunner(kernel.chroot), kdir


def _first_error(log: str) -> str:
    for line in log.splitlines():
        if "error" in line.lower() and ("error:" in line or "Error" in line or "ERROR" in line):
            return line.strip()
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def build_modules(
    kernel: Kernel,
    src_dir: Path,
    out_dir: Path | None = None,
    extra_make_args: Sequence[str] = (),
    *,
    timeout: float = BUILD_TIMEOUT,
) -> list[Path]:
    """Run ``make -C KDIR M=<dir> modules`` and return the built .ko files,
    in modules.order order.

    ``KBUILD_MODPOST_WARN=1`` turns modpost's "undefined symbol" errors into
    warnings: references to unexported symbols are what ``klpsym convert``
    resolves afterwards.  With ``out_dir`` the source tree is copied there first
    and built in the copy, so ``src_dir`` stays clean.
    """
    src_dir = src_dir.resolve()
    if not src_dir.is_dir():
        raise LabError(f"module source directory {src_dir} does not exist")
    if out_dir is not None:
        out_dir = out_dir.resolve()
        if out_dir != src_dir:
            shutil.copytree(src_dir, out_dir, symlinks=True, dirs_exist_ok=True)
        moddir = out_dir
    else:
        moddir = src_dir
    if not ((moddir / "Kbuild").is_file() or (moddir / "Makefile").is_file()):
        raise LabError(f"{moddir} has neither a Kbuild nor a Makefile (expected 'obj-m := x.o')")
    where, kdir = runner(kernel)
    args = [
        "-C", str(where.guest_path(kdir)), f"M={where.guest_path(moddir)}",
        f"-j{os.cpu_count() or 1}", "KBUILD_MODPOST_WARN=1", *extra_make_args, "modules",
    ]  # fmt: skip
    try:
        proc = where.make(args, capture=True, timeout=timeout)
    except KbuildError as exc:
        raise LabError(f"building modules in {moddir}: {exc}") from None
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    if proc.returncode != 0:
        raise BuildError(f"building modules in {moddir} failed: {_first_error(proc.stdout)}", tail)
    try:
        objs = modules_in_order(moddir, where.host_path)
    except KbuildError as exc:
        raise BuildError(f"building modules in {moddir}: {exc}", tail) from None
    kos = [o.with_suffix(".ko") for o in objs]
    missing = [ko for ko in kos if not ko.is_file()]
    if missing:
        raise BuildError(f"building modules in {moddir} produced no {missing[0].name}", tail)
    return kos


def klpsym_build(kernel: Kernel, directory: Path, sympos: Mapping[str, int] | None = None,
                 make_args: Sequence[str] = (), symvers: Sequence[Path] = ()) -> BuildResult:
    """``klpsym build DIR`` for ``kernel``: its headers (the chroot's copy when make
    runs there), its kallsyms (captured from a boot, cached), make where
    :func:`runner` says.  The .ko files are converted in place in ``directory``."""
    where, kdir = runner(kernel)
    target = discover(kernel_dir=kdir, kallsyms=capture_kallsyms(kernel), symvers=symvers)
    return build(directory, target, sympos or {}, make_args, symvers, runner=where)
