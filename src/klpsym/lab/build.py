"""Build out-of-tree modules against a provisioned kernel with its own kbuild."""

from __future__ import annotations

import os
import shutil
import subprocess
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


def _modules_from_order(moddir: Path) -> list[Path]:
    """The .ko files kbuild produced, in ``modules.order`` order (6.1 lists ``x.o``)."""
    order = moddir / "modules.order"
    found: list[Path] = []
    try:
        lines = order.read_text().split()
    except OSError:
        lines = []
    for entry in lines:
        rel = entry.removeprefix("kernel/")
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
    if shutil.which(kernel.compiler) is None:
        raise LabError(
            f"the {kernel.suite} kernel headers build with {kernel.compiler!r}, which is missing;"
            f" run scripts/bootstrap or 'apt-get install {kernel.compiler} make'"
        )
    if shutil.which("make") is None:
        raise LabError("'make' is missing; run scripts/bootstrap or 'apt-get install make'")
    cmd = [
        "make",
        "-C",
        str(kernel.kernel_dir),
        f"M={moddir}",
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
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"building modules in {moddir} timed out after {timeout:g} s") from None
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    if proc.returncode != 0:
        raise BuildError(f"building modules in {moddir} failed: {_first_error(proc.stdout)}", tail)
    kos = _modules_from_order(moddir) or sorted(moddir.rglob("*.ko"))
    if not kos:
        raise BuildError(f"building modules in {moddir} produced no .ko (is obj-m set?)", tail)
    return kos
