"""The target kernel: its release, .config, exports and kallsyms, together.

:func:`discover` defaults to the running kernel (``uname -r``):

* kernel_dir: ``/lib/modules/<release>/build`` (the headers package);
* Module.symvers: ``<kernel_dir>/Module.symvers``, plus any ``--symvers``;
* config: ``<kernel_dir>/.config``, else ``/boot/config-<release>``;
* symbols: ``/proc/kallsyms`` -- only when the target *is* the running
  kernel; for another kernel one of ``--kallsyms``, ``--system-map`` or
  ``--vmlinux`` is required, never the host's kallsyms.

Version-dependent rules follow the target (its headers' utsrelease.h),
never the host.  Every problem is one KernelSourceError line naming the file
and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from klpsym.errors import KernelSourceError
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import (
    PROC_KALLSYMS,
    KallsymsTable,
    read_proc_kallsyms,
    read_system_map,
    reject_debian_stub,
)
from klpsym.kernel.symvers import Symvers, read_symvers
from klpsym.kernel.version import (
    KernelVersion,
    ksym_name_len,
    read_kernel_version,
    supports_klp_for_plain_modules,
)
from klpsym.kernel.vmlinux import banner_version, kallsyms_from_vmlinux, open_vmlinux


@dataclass
class TargetKernel:
    """Everything klpsym needs to know about the kernel a module is for."""

    version: KernelVersion
    symvers: Symvers
    kallsyms_source: str  # "/proc/kallsyms", "System.map PATH", "vmlinux PATH"
    kernel_dir: Path | None = None
    config: KernelConfig | None = None
    notes: list[str] = field(default_factory=list)
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
                    f"no kallsyms source for {self.release}; pass --kallsyms, --system-map "
                    "or --vmlinux"
                )
            self._kallsyms = self._load_kallsyms()
        return self._kallsyms

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
        return (f"{self.release}{kdir}, exports from {self.symvers.source}, "
                f"symbols from {self.kallsyms_source}")


def host_release() -> str:
    return os.uname().release


def discover(kernel_dir: Path | str | None = None, kallsyms: Path | str | None = None,
             system_map: Path | str | None = None, vmlinux: Path | str | None = None,
             symvers: Iterable[Path | str] = (), config: Path | str | None = None, *,
             cache: bool = True,
             running_release: str | None = None,
             proc_kallsyms: Path | str = PROC_KALLSYMS,
             boot_dir: Path | str = "/boot",
             modules_root: Path | str = "/lib/modules") -> TargetKernel:
    """Find the target kernel's files (see the module docstring).

    ``cache`` False reads Module.symvers and kallsyms without the symbol
    cache (:mod:`klpsym.kernel.symcache`).  ``running_release``,
    ``proc_kallsyms``, ``boot_dir`` and ``modules_root`` describe the host;
    they exist for tests and are rarely passed.
    """
    host = running_release if running_release is not None else host_release()
    extra_symvers = [Path(p) for p in symvers]
    notes: list[str] = []

    # -- kernel directory and version ------------------------------------------
    kdir: Path | None
    if kernel_dir is not None:
        kdir = Path(kernel_dir)
        if not kdir.is_dir():
            raise KernelSourceError(
                f"{kdir}: no such directory (--kernel-dir); pass the kernel's build or "
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
                f"linux-headers-{host} or pass --kernel-dir"
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
                "or pass --symvers"
            )
    for p in extra_symvers:
        if not p.is_file():
            raise KernelSourceError(f"{p}: no such file (--symvers)")
        parts.append(read_symvers(p, cache=cache))
    merged = Symvers().merge(*parts)
    if not merged.has_vmlinux_exports():
        raise KernelSourceError(
            f"{merged.source}: no export of vmlinux in it; pass vmlinux's Module.symvers "
            f"(from linux-headers-{version.release}) with --symvers"
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
             (("--kallsyms", kallsyms), ("--system-map", system_map), ("--vmlinux", vmlinux))
             if v is not None]
    if len(given) > 1:
        raise KernelSourceError(
            f"{' and '.join(k for k, _ in given)} both given; pass one symbol source"
        )
    load: Callable[[], KallsymsTable]
    if given:
        flag, path = given[0]
        if not path.is_file():
            raise KernelSourceError(f"{path}: no such file ({flag})")
        if flag == "--kallsyms":
            source = f"kallsyms {path}"

            def load() -> KallsymsTable:
                return read_proc_kallsyms(path, cache=cache)
        elif flag == "--system-map":
            source = f"System.map {path}"
            with open(path, "rb") as f:
                reject_debian_stub(f.read(1024).decode("utf-8", "replace"), str(path))

            def load() -> KallsymsTable:
                return read_system_map(path, config=cfg, version=version)
        else:
            source = f"vmlinux {path}"
            _check_vmlinux_release(path, version)

            def load() -> KallsymsTable:
                return kallsyms_from_vmlinux(path, cfg, version)
    elif is_host:
        source = str(proc_kallsyms)

        def load() -> KallsymsTable:
            return read_proc_kallsyms(proc_kallsyms, cache=cache)
    else:
        raise KernelSourceError(
            f"{kdir}: is for kernel {version.release} but this machine runs {host}, so its "
            "/proc/kallsyms is the wrong kernel's; pass --kallsyms (a copy of the target's "
            "/proc/kallsyms), --system-map or --vmlinux"
        )
    return TargetKernel(version=version, symvers=merged, kallsyms_source=source,
                        kernel_dir=kdir, config=cfg, notes=notes, _load_kallsyms=load)


def _check_vmlinux_release(path: Path, version: KernelVersion) -> None:
    found = banner_version(open_vmlinux(path))
    if found is not None and found.release != version.release:
        raise KernelSourceError(
            f"{path}: vmlinux is {found.release}, but the target kernel is {version.release}; "
            "pass the vmlinux of the same build"
        )

