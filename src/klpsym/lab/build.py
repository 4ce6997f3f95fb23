"""Build out-of-tree modules against a provisioned kernel with its own kbuild."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from klpsym.errors import LabError
from klpsym.lab.provision import Kernel

BUILD_TIMEOUT = 900.0


class BuildError(LabError):
    """kbuild failed; ``log`` holds the tail of its output."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


def _modules_from_order(moddir: Path, guest_dir: Path | None = None) -> list[Path]:
    """The .ko files kbuild produced, in ``modules.order`` order (6.1 lists ``x.o``).

    Absolute entries under ``guest_dir`` (how make saw ``moddir``) are mapped back."""
    order = moddir / "modules.order"
    found: list[Path] = []
    try:
        lines = order.read_text().split()
    except OSError:
        lines = []
    for entry in lines:
        rel = entry.removeprefix("kernel/")
        if guest_dir is not None and Path(rel).is_relative_to(guest_dir) and rel.startswith("/"):
            rel = str(Path(rel).relative_to(guest_dir))
        path = Path(rel) if os.path.isabs(rel) else moddir / rel
        ko = path.with_suffix(".ko")
        if ko.is_file() and ko not in found:
            found.append(ko)
    return found


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
    """Run ``make -C kernel.kernel_dir M=<dir> modules`` and return the built .ko files.

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
    if shutil.which(kernel.compiler) is None and kernel.chroot is not None:
        return _build_in_chroot(kernel, kernel.chroot, moddir, extra_make_args, timeout)
    if shutil.which(kernel.compiler) is None:
        raise LabError(
            f"the {kernel.suite} kernel headers build with {kernel.compiler!r}, which is missing;"
            f" provision the kernel with chroot=True (a {kernel.suite} build chroot), or"
            f" run scripts/bootstrap or 'apt-get install {kernel.compiler} make'"
        )
    if shutil.which("make") is None:
        raise LabError("'make' is missing; run scripts/bootstrap or 'apt-get install make'")
    return _make(["make", "-C", str(kernel.kernel_dir), f"M={moddir}"], moddir, moddir,
                 extra_make_args, timeout, env=None)


def _build_in_chroot(
    kernel: Kernel, chroot: Path, moddir: Path, extra_make_args: Sequence[str], timeout: float
) -> list[Path]:
    """Build a copy of ``moddir`` inside the suite's chroot, with the suite's compiler
    and the headers linked there; copy the results back into ``moddir``."""
    for tool, package in (("chroot", "coreutils"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            raise LabError(f"{tool!r} is missing; apt-get install {package}")
    if os.geteuid() != 0:
        raise LabError(f"building for {kernel.suite} runs make in its chroot, which needs root")
    kdir = chroot / kernel.chroot_kernel_dir.relative_to("/")
    if not kdir.is_dir():
        raise LabError(f"{kdir} is missing; provision the {kernel.suite} kernel again")
    builds = chroot / "klpsym" / "build"
    builds.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="m-", dir=builds) as tmp:
        inside = Path(tmp) / moddir.name
        shutil.copytree(moddir, inside, symlinks=True)
        guest = Path("/") / inside.relative_to(chroot)
        # objtool reads /proc: a private mount and pid namespace gets its own /proc,
        # which disappears with the namespace (nothing to unmount, even after a kill).
        cmd = [
            "unshare", "--fork", "--pid", f"--mount-proc={chroot / 'proc'}",
            "chroot", str(chroot), "make", "-C", str(kernel.chroot_kernel_dir), f"M={guest}",
        ]  # fmt: skip
        # A clean environment: nothing of the host's PATH (venvs, ...) leaks in.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8"}
        try:
            kos = _make(cmd, inside, guest, extra_make_args, timeout, env=env)
        except LabError as exc:  # name the caller's directory, not the chroot's copy
            log = exc.log if isinstance(exc, BuildError) else ""
            raise BuildError(str(exc).replace(str(inside), str(moddir)), log) from None
        finally:
            shutil.copytree(inside, moddir, symlinks=True, dirs_exist_ok=True)
        return [moddir / ko.relative_to(inside) for ko in kos]


def _make(
    cmd: list[str],
    moddir: Path,
    guest_dir: Path,
    extra_make_args: Sequence[str],
    timeout: float,
    *,
    env: dict[str, str] | None,
) -> list[Path]:
    """Run kbuild (``cmd`` up to M=), return the .ko files in ``moddir``; make sees
    the module directory as ``guest_dir`` (different inside a chroot)."""
    cmd = [
        *cmd,
        f"-j{os.cpu_count() or 1}",
        "KBUILD_MODPOST_WARN=1",
        *extra_make_args,
        "modules",
    ]
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"building modules in {moddir} timed out after {timeout:g} s") from None
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    if proc.returncode != 0:
        raise BuildError(f"building modules in {moddir} failed: {_first_error(proc.stdout)}", tail)
    kos = _modules_from_order(moddir, guest_dir) or sorted(moddir.rglob("*.ko"))
    if not kos:
        raise BuildError(f"building modules in {moddir} produced no .ko (is obj-m set?)", tail)
    return kos
