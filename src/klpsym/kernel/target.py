"""The target kernel: its release, .config, exports and kallsyms, together.

:func:`discover` defaults to the running kernel (``uname -r``):

* kernel_dir: ``/lib/modules/<release>/build`` (the headers package);
* Module.symvers: ``<kernel_dir>/Module.symvers``, plus any ``--symvers``;
* config: ``<kernel_dir>/.config``, else ``/boot/config-<release>``;
* ``kernel_release`` (``--kernel-release``) names the target by its
  ``uname -r`` instead: kernel_dir is then ``/lib/modules/<release>/build``;
* symbols: ``--kallsyms``, ``--system-map``, ``--vmlinux`` or ``--image``
  when given; else ``/proc/kallsyms`` when the target *is* the running
  kernel; else (never the host's kallsyms) the first of
  :func:`symbol_file_candidates` that exists: the debug package's System.map
  or vmlinux under ``/usr/lib/debug`` (Debian's
  ``linux-image-<release>-dbg``), then a real ``/boot/System.map-<release>``
  (Debian's is a stub), then the kernel's own image, ``/boot/vmlinuz-<release>``
  or ``/usr/lib/modules/<release>/vmlinuz`` (:mod:`klpsym.kernel.image`).
  This is how a build for another installed kernel (DKMS after a kernel
  upgrade) finds its symbols.

Version-dependent rules follow the target (its headers' utsrelease.h),
never the host.  Every problem is one KernelSourceError line naming the file
and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from klpsym.errors import KernelSourceError, param
from klpsym.fsutil import not_a_file
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.kernel.proc_kallsyms import PROC_KALLSYMS, read_proc_kallsyms
from klpsym.kernel.symcache import NameIndex, hashes_of
from klpsym.kernel.symvers import Symvers, read_symvers
from klpsym.kernel.system_map import is_debian_stub, read_system_map, reject_debian_stub
from klpsym.kernel.version import (
    KernelVersion,
    ksym_name_len,
    read_kernel_version,
    supports_klp_for_plain_modules,
)


@dataclass
class TargetKernel:
    """Everything klpsym needs to know about the kernel a module is for."""

    version: KernelVersion
    symvers: Symvers
    kallsyms_source: str  # "/proc/kallsyms", "System.map PATH", "vmlinux PATH"
    kernel_dir: Path | None = None
    config: KernelConfig | None = None
    notes: list[str] = field(default_factory=list)
    # The symbol file itself (None: no source, or one not read from a file),
    # and whether it is held to the target's exports when read
    # (:func:`check_symbol_source`; --no-symbol-check turns it off).
    kallsyms_path: Path | None = None
    check_symbols: bool = True
    _load_kallsyms: Callable[[], KallsymsTable] | None = field(default=None, repr=False)
    _kallsyms: KallsymsTable | None = field(default=None, repr=False)

    @property
    def release(self) -> str:
        return self.version.release

    @property
    def kallsyms(self) -> KallsymsTable:
        """vmlinux's kallsyms, read on first use."""
        if self._kallsyms is None:
            if self._load_kallsyms is None:
                raise KernelSourceError(
                    f"no kallsyms source for {self.release}; pass {param('kallsyms')}, "
                    f"{param('system_map')} or {param('vmlinux')}"
                )
            table = self._load_kallsyms()
            if self.check_symbols:
                check_symbol_source(table, self.symvers, self.release, self.config,
                                    self.kallsyms_path or self.kallsyms_source)
            self._kallsyms = table
        return self._kallsyms

    @property
    def has_kallsyms(self) -> bool:
        return self._kallsyms is not None or self._load_kallsyms is not None

    @property
    def ksym_name_len(self) -> int:
        return ksym_name_len(self.version)

    @property
    def supports_klp_for_plain_modules(self) -> bool:
        return supports_klp_for_plain_modules(self.version)

    @property
    def livepatch_enabled(self) -> bool | None:
        """CONFIG_LIVEPATCH, or None when the .config is unknown.  Without it
        the module loader does not apply .klp.rela sections."""
        return None if self.config is None else self.config.enabled("LIVEPATCH")

    def describe(self) -> str:
        kdir = f", headers {self.kernel_dir}" if self.kernel_dir else ""
        syms = (f"symbols from {self.kallsyms_source}" if self.kallsyms_source
                else "no kallsyms source")
        return f"{self.release}{kdir}, exports from {self.symvers.source}, {syms}"


# How many of vmlinux's exports a symbol source may lack and still be taken
# for the target's.  The right file lacks none (bookworm 6.1, trixie 6.12,
# sid 7.2: 0 of ~10.5k); another kernel's lacks hundreds (bookworm's
# Module.symvers against trixie's kallsyms: 461 of 10,503, sid's: 851).
# The slack is for hand-made and filtered tables.  Without
# CONFIG_KALLSYMS_ALL a kallsyms has no data symbols, exported or not
# (kernel/kallsyms.c, scripts/kallsyms.c): only a source missing most of
# the exports (a truncated copy) is refused then.
MISSING_EXPORTS_SLACK = 10
MISSING_EXPORTS_FRACTION = 0.01
MISSING_EXPORTS_FRACTION_NO_DATA = 0.5
NO_SYMBOL_CHECK = param("check_symbols")  # --no-symbol-check on the command line


def _sorted_name_hashes(table: KallsymsTable) -> np.ndarray:
    """The sorted name hashes of ``table``: those of its cached name index
    when it was read from the symbol cache, else made (~20 ms for 200k)."""
    index = getattr(table, "_nidx", None)
    if isinstance(index, NameIndex):
        return index.hashes
    return np.sort(hashes_of(table.names.tolist()))


def check_symbol_source(table: KallsymsTable, symvers: Symvers, release: str,
                        config: KernelConfig | None, source: Path | str) -> None:
    """Refuse a symbol source that is not the target's: one that lacks
    vmlinux exports the target's Module.symvers lists (another kernel's, a
    truncated copy).  A wrong source would give each converted symbol its
    position (POS) in another kernel, which can bind a duplicated name to
    the wrong function at load time."""
    missing, total, some = symvers.vmlinux_exports_missing(_sorted_name_hashes(table))
    no_data = config is not None and not config.enabled("KALLSYMS_ALL")
    allowed = max(MISSING_EXPORTS_SLACK, int(total * (
        MISSING_EXPORTS_FRACTION_NO_DATA if no_data else MISSING_EXPORTS_FRACTION)))
    if missing <= allowed:
        return
    example = ", ".join(some) + (", ..." if missing > len(some) else "")
    raise KernelSourceError(
        f"{source}: {missing:,} of the {total:,} vmlinux exports of {release} "
        f"({symvers.source}) are missing from it ({example}): it is another kernel's or "
        f"truncated; pass the symbols of {release} itself, or turn this check off "
        f"({NO_SYMBOL_CHECK})"
    )


# Where distributions install debug symbols (Debian's linux-image-<release>-dbg).
DEBUG_DIR = Path("/usr/lib/debug")


def host_release() -> str:
    return os.uname().release


def symbol_file_candidates(release: str, *, debug_dir: Path | str = DEBUG_DIR,
                           boot_dir: Path | str = "/boot",
                           modules_root: Path | str = "/lib/modules") -> list[tuple[str, Path]]:
    """Where a kernel's symbols may be installed besides /proc/kallsyms, as
    (the parameter it would be given as, path) in the order tried: the debug
    package's System.map (Debian's
    ``linux-image-<release>-dbg``: /usr/lib/debug/boot/System.map-<release>),
    its vmlinux (Debian, Ubuntu: /usr/lib/debug/boot/vmlinux-<release>;
    Fedora's kernel-debuginfo: /usr/lib/debug/lib/modules/<release>/vmlinux),
    then /boot/System.map-<release> (real on Fedora and Ubuntu; on Debian a
    stub, which the caller skips), then the kernel image itself:
    /boot/vmlinuz-<release>, <modules_root>/<release>/vmlinuz (where newer
    Debian and Fedora install it; /usr/lib/modules too when modules_root is
    the default /lib/modules).  The image comes last: a symbol file is read
    in a fraction of the time, and the image needs a known kallsyms layout."""
    debug = Path(debug_dir)
    out = [("system_map", debug / "boot" / f"System.map-{release}"),
           ("vmlinux", debug / "boot" / f"vmlinux-{release}"),
           ("vmlinux", debug / "lib" / "modules" / release / "vmlinux"),
           ("system_map", Path(boot_dir) / f"System.map-{release}"),
           ("image", Path(boot_dir) / f"vmlinuz-{release}"),
           ("image", Path(modules_root) / release / "vmlinuz")]
    if str(modules_root) == "/lib/modules":
        out.append(("image", Path("/usr/lib/modules") / release / "vmlinuz"))
    return out


def _installed_symbol_file(release: str, debug_dir: Path | str, boot_dir: Path | str,
                           modules_root: Path | str = "/lib/modules") -> tuple[str, Path] | None:
    """The first of :func:`symbol_file_candidates` that is a readable file and,
    for a System.map, not Debian's placeholder."""
    for flag, path in symbol_file_candidates(release, debug_dir=debug_dir, boot_dir=boot_dir,
                                             modules_root=modules_root):
        if not path.is_file():
            continue
        try:
            with open(path, "rb") as f:
                head = f.read(1024).decode("utf-8", "replace")
        except OSError:
            continue  # e.g. Ubuntu's /boot/System.map-* is root-only
        if flag == "system_map" and is_debian_stub(head):
            continue
        return flag, path
    return None


def discover(kernel_dir: Path | str | None = None, kallsyms: Path | str | None = None,
             system_map: Path | str | None = None, vmlinux: Path | str | None = None,
             symvers: Iterable[Path | str] = (), config: Path | str | None = None, *,
             image: Path | str | None = None,
             kernel_release: str | None = None,
             cache: bool = True,
             running_release: str | None = None,
             proc_kallsyms: Path | str = PROC_KALLSYMS,
             boot_dir: Path | str = "/boot",
             modules_root: Path | str = "/lib/modules",
             debug_dir: Path | str = DEBUG_DIR, require_kallsyms: bool = True,
             check_symbols: bool = True) -> TargetKernel:
    """Find the target kernel's files (see the module docstring).

    With ``require_kallsyms=False`` (``klpsym check``) a target that is not
    the running kernel may come without a kallsyms source; using
    ``TargetKernel.kallsyms`` then raises.  ``check_symbols`` False takes
    the symbol source without :func:`check_symbol_source`.  ``cache`` False reads
    Module.symvers, .config and kallsyms without the symbol cache
    (:mod:`klpsym.kernel.symcache`).

    ``running_release``, ``proc_kallsyms``, ``boot_dir``, ``modules_root`` and
    ``debug_dir`` describe the host; they exist for tests and are rarely passed.
    """
    host = running_release if running_release is not None else host_release()
    extra_symvers = [Path(p) for p in symvers]
    notes: list[str] = []

    # -- kernel directory and version ------------------------------------------
    kdir: Path | None
    if kernel_release is not None:
        if kernel_dir is not None:
            raise KernelSourceError(
                f"{param('kernel_dir')} {kernel_dir} and {param('kernel_release')} "
                f"{kernel_release} both given; pass one (the release's headers are "
                "/lib/modules/<release>/build)"
            )
        if not kernel_release or "/" in kernel_release:
            raise KernelSourceError(
                f"{param('kernel_release')} {kernel_release!r}: not a kernel release; pass what "
                "'uname -r' prints on that kernel, e.g. 6.1.0-56-amd64"
            )
        kdir = Path(modules_root) / kernel_release / "build"
        if not kdir.is_dir():
            raise KernelSourceError(
                f"{kdir}: no headers for kernel {kernel_release} ({param('kernel_release')}); "
                f"install linux-headers-{kernel_release} or pass {param('kernel_dir')}"
            )
        version = read_kernel_version(kdir)
        if version.release != kernel_release:
            raise KernelSourceError(
                f"{kdir}: headers of kernel {version.release}, not {kernel_release} "
                f"({param('kernel_release')}); reinstall linux-headers-{kernel_release}"
            )
    elif kernel_dir is not None:
        kdir = Path(kernel_dir)
        if not kdir.is_dir():
            raise KernelSourceError(
                f"{kdir}: no such directory ({param('kernel_dir')}); pass the kernel's build or "
                "headers directory (/lib/modules/<release>/build)"
            )
        version = read_kernel_version(kdir)
    else:
        kdir = Path(modules_root) / host / "build"
        if kdir.is_dir():
            version = read_kernel_version(kdir)
        elif extra_symvers:
            notes.append(f"{kdir} does not exist: release taken from the running kernel")
            version = KernelVersion.parse(host)
            kdir = None
        else:
            raise KernelSourceError(
                f"{kdir}: no headers for the running kernel {host}; install "
                f"linux-headers-{host} or pass {param('kernel_dir')}"
            )
    is_host = version.release == host

    # -- Module.symvers -------------------------------------------------------------
    parts: list[Symvers] = []
    if kdir is not None:
        own = kdir / "Module.symvers"
        if own.is_file():
            parts.append(read_symvers(own, cache=cache))
        elif not extra_symvers:
            raise KernelSourceError(
                f"{own}: no Module.symvers in {kdir}; install linux-headers-{version.release} "
                f"or pass {param('symvers')}"
            )
    for p in extra_symvers:
        if not p.is_file():
            raise KernelSourceError(not_a_file(p, param("symvers")))
        parts.append(read_symvers(p, cache=cache))
    merged = Symvers().merge(*parts)
    if not merged.has_vmlinux_exports():
        raise KernelSourceError(
            f"{merged.source}: no export of vmlinux in it; pass vmlinux's Module.symvers "
            f"(from linux-headers-{version.release}) with {param('symvers')}"
        )

    # -- .config ---------------------------------------------------------------------
    cfg: KernelConfig | None = None
    if config is not None:
        cfg = KernelConfig.from_path(config, cache=cache)
    else:
        for cand in ([kdir / ".config"] if kdir is not None else []) + [
                Path(boot_dir) / f"config-{version.release}"]:
            if cand.is_file():
                cfg = KernelConfig.from_path(cand, cache=cache)
                break
        else:
            notes.append(f"no .config found for {version.release} (looked in the kernel "
                         f"directory and {boot_dir}); pass --config for exact kallsyms rules")

    # -- kallsyms source ------------------------------------------------------------
    given = [(k, Path(v)) for k, v in
             (("kallsyms", kallsyms), ("system_map", system_map), ("vmlinux", vmlinux),
              ("image", image))
             if v is not None]
    if len(given) > 1:
        raise KernelSourceError(
            f"{' and '.join(param(k) for k, _ in given)} both given; pass one symbol source"
        )
    if given:
        flag, path = given[0]
        if not path.is_file():
            raise KernelSourceError(not_a_file(path, param(flag)))
    elif is_host:
        flag, path = "", Path(proc_kallsyms)
    else:
        found = _installed_symbol_file(version.release, debug_dir, boot_dir, modules_root)
        if found is None and not require_kallsyms:
            return TargetKernel(version=version, symvers=merged, kallsyms_source="",
                                kernel_dir=kdir, config=cfg, notes=notes)
        if found is None:
            looked = ", ".join(str(p) for _, p in symbol_file_candidates(
                version.release, debug_dir=debug_dir, boot_dir=boot_dir,
                modules_root=modules_root))
            raise KernelSourceError(
                f"{kdir}: is for kernel {version.release} but this machine runs {host}, so its "
                "/proc/kallsyms is the wrong kernel's, and no symbol file of "
                f"{version.release} is installed (looked for {looked}); install "
                f"linux-image-{version.release}-dbg (Debian), or pass {param('kallsyms')} (a copy "
                f"of the target's /proc/kallsyms), {param('system_map')}, {param('vmlinux')} or "
                f"{param('image')}"
            )
        flag, path = found
        notes.append(f"{version.release} is not the running kernel: symbols from {path}"
                     + (" (its own image: no debug package installed)" if flag == "image"
                        else ""))
    source, load = _symbol_source(flag, path, cfg, version, cache)
    return TargetKernel(version=version, symvers=merged, kallsyms_source=source,
                        kernel_dir=kdir, config=cfg, notes=notes, kallsyms_path=path,
                        check_symbols=check_symbols, _load_kallsyms=load)


def _symbol_source(flag: str, path: Path, cfg: KernelConfig | None, version: KernelVersion,
                   cache: bool = True) -> tuple[str, Callable[[], KallsymsTable]]:
    """The kallsyms_source text and loader for one symbol file; ``flag`` is
    the parameter it came as, or "" for the running kernel's /proc/kallsyms.
    The cheap checks (placeholder System.map, vmlinux of another release)
    run now, the reading later."""
    if flag == "":
        return str(path), lambda: read_proc_kallsyms(path, cache=cache)
    if flag == "kallsyms":
        return f"kallsyms {path}", lambda: read_proc_kallsyms(path, cache=cache)
    if flag == "system_map":
        with open(path, "rb") as f:
            reject_debian_stub(f.read(1024).decode("utf-8", "replace"), str(path))
        return (f"System.map {path}",
                lambda: read_system_map(path, config=cfg, version=version))
    if flag == "image":
        from klpsym.kernel.image import read_image

        return f"image {path}", lambda: read_image(path, version, cache=cache)
    from klpsym.kernel.vmlinux import kallsyms_from_vmlinux  # reads ELF: klpsym.elf

    _check_vmlinux_release(path, version)
    return f"vmlinux {path}", lambda: kallsyms_from_vmlinux(path, cfg, version)


def _check_vmlinux_release(path: Path, version: KernelVersion) -> None:
    from klpsym.kernel.vmlinux import banner_version, open_vmlinux

    found = banner_version(open_vmlinux(path))
    if found is not None and found.release != version.release:
        raise KernelSourceError(
            f"{path}: vmlinux is {found.release}, but the target kernel is {version.release}; "
            "pass the vmlinux of the same build"
        )

