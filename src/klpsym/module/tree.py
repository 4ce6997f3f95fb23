"""A target kernel's module tree (``/lib/modules/<release>``), and a module
found in it by name.

A livepatch's target module may be given by name (``--target-module
ext4``); its ``.ko`` (compressed or not, as Debian ships them) is then
looked up in the target's tree: the directory its headers hang from
(``/lib/modules/<release>/build`` is a link into the headers package), the
tree of the root the headers were unpacked into (a provisioned lab
kernel; ``lib/modules`` or ``usr/lib/modules``), then
``/lib/modules/<release>`` and ``/usr/lib/modules/<release>``.
"""

from __future__ import annotations

from pathlib import Path

from klpsym.errors import ModuleError, param
from klpsym.module.compression import COMPRESSED_SUFFIXES


def module_roots(release: str, kernel_dir: Path | None) -> list[Path]:
    """The directories that may be ``release``'s module tree, best first."""
    roots: list[Path] = []
    if kernel_dir is not None:
        if kernel_dir.name == "build":
            roots.append(kernel_dir.parent)
        for p in kernel_dir.resolve().parents:
            # Debian ships modules under /usr/lib/modules since trixie
            # (merged /usr); an unpacked package tree has no /lib link.
            roots += [p / "lib" / "modules" / release, p / "usr" / "lib" / "modules" / release]
    roots += [Path("/lib/modules") / release, Path("/usr/lib/modules") / release]
    out: list[Path] = []
    for r in roots:
        if r not in out and (r / "kernel").is_dir():
            out.append(r)
    return out


def module_key(name: str) -> str:
    """A module name as the kernel compares it ('-' and '_' are one)."""
    return name.replace("-", "_")


def find_module(name: str, release: str, kernel_dir: Path | None) -> Path:
    """The ``.ko`` of module ``name`` in ``release``'s module tree."""
    roots = module_roots(release, kernel_dir)
    if not roots:
        raise ModuleError(
            f"{param('target_module')} {name}: no module tree for kernel {release} "
            f"(/lib/modules/{release}/kernel); give the module's file, "
            f"{param('target_module')} PATH.ko")
    key = module_key(name)
    names = {key + ".ko" + suffix for suffix in ("", *COMPRESSED_SUFFIXES)}
    for root in roots:
        dep = root / "modules.dep"
        if dep.is_file():
            for line in dep.read_text(errors="replace").splitlines():
                path = line.partition(":")[0].strip()
                if module_key(path.rpartition("/")[2]) in names and (root / path).is_file():
                    return root / path
        for found in sorted(root.rglob("*.ko*")):
            if module_key(found.name) in names:
                return found
    raise ModuleError(
        f"{param('target_module')} {name}: kernel {release} has no module of that name "
        f"(looked in {', '.join(str(r) for r in roots)}); check the name, or give the "
        f"module's file, {param('target_module')} PATH.ko")
