"""Provision a real Debian kernel (image + headers) into a cache directory.

Nothing is installed on the host: the packages are fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` (``klpsym.lab.apt``).
The current kernel of a suite is resolved through the flavour's metapackage
(``linux-image-amd64``), so the ABI (``6.1.0-NN``) is never hard-coded.  The
cache's layout is described in ``klpsym.lab.store``; each tree is built
whole or not at all (``klpsym.lab.staging``).

Debian's archive keeps only the current kernel of each suite and moves every
few weeks.  ``provision`` says when the kernel it chose is not the one the
cache already had (``say``), ``prune`` removes what the archive no longer
serves, and in strict mode (``$KLPSYM_LAB_STRICT=1``, as CI runs) a kernel
is never taken from the cache when apt cannot say that it is the current one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from klpsym.errors import LabError
from klpsym.lab._run import run
from klpsym.lab.apt import (
    APT_LISTS,
    HOST_APT,
    Apt,
    Resolved,
    download,
    host_codename,
    package_set,
    private_apt,
    resolve,
    update_host,
    update_private,
)
from klpsym.lab.chroot import (
    chroot_home,
    chroot_packages,
    chroots_dir,
    linked_kernels,
    remove_tree,
    with_chroot,
)
from klpsym.lab.staging import staged_dir
from klpsym.lab.store import (
    DEFAULT_FLAVOUR,
    LAYOUT,
    MANIFEST,
    Kernel,
    cached_kernels,
    default_cache_dir,
    home_name,
    kernel_from,
    kernels_dir,
    load,
    locked,
)
from klpsym.lab.tree import fix_tree
from klpsym.lab.vmlinux import extract_vmlinux, pvh_entry

__all__ = [
    "APT_LISTS",
    "LAYOUT",
    "Kernel",
    "Pruned",
    "default_cache_dir",
    "kernels_dir",
    "provision",
    "prune",
    "strict_default",
]

EXTRACT_TIMEOUT = 900.0
Say = Callable[[str], None]


def strict_default() -> bool:
    """``$KLPSYM_LAB_STRICT`` set to 1 (CI sets it): never fall back to the cache."""
    return os.environ.get("KLPSYM_LAB_STRICT", "") == "1"


def _check(kernel: Kernel) -> None:
    """Fail loudly if the unpacked tree lacks something the rest of klpsym relies on."""
    needed = [
        kernel.vmlinuz,
        kernel.vmlinux,
        kernel.config,
        kernel.system_map,
        kernel.modules_dir,
        kernel.kernel_dir / "Module.symvers",
        kernel.kernel_dir / ".config",
        kernel.kernel_dir / "include" / "config" / "kernel.release",
        kernel.kernel_dir / "scripts" / "mod" / "modpost",
    ]
    for path in needed:
        if not path.exists():
            raise LabError(f"provisioned kernel {kernel.release} lacks {path}")
    # uname -r is UTS_RELEASE; Debian's include/config/kernel.release holds the
    # upstream version ("6.1.192") instead, so it cannot serve as the check.
    uts = kernel.kernel_dir / "include" / "generated" / "utsrelease.h"
    try:
        uts_text = uts.read_text()
    except OSError:
        uts_text = ""
    if f'"{kernel.release}"' not in uts_text:
        raise LabError(f"{uts} does not name release {kernel.release}; package set mismatch?")
    if pvh_entry(kernel.vmlinux) is None:
        raise LabError(f"{kernel.vmlinux} has no PVH entry note; QEMU cannot boot it directly")



def _build(kernels: Path, debs: Path, suite: str, flavour: str, resolved: Resolved,
           apt: Apt) -> Kernel:
    release, version = resolved.release, resolved.version
    pkgs = package_set(release, version, apt)
    download(pkgs, debs, apt)
    home = kernels / home_name(release, version)
    with staged_dir(home) as tmp:
        root = tmp / "root"
        root.mkdir()
        for d in pkgs:
            run(
                ["dpkg-deb", "-x", d.path(debs), root],
                what=f"unpacking {d.filename}",
                timeout=EXTRACT_TIMEOUT,
                fix="apt-get install dpkg",
            )
        lib = root / "lib"
        if not lib.exists() and (root / "usr" / "lib").is_dir():
            # merged /usr (trixie on): modules are in usr/lib/modules; /lib -> usr/lib
            # as on the installed system, so modules_dir and depmod -b find them.
            lib.symlink_to("usr/lib")
        fix_tree(root)
        if shutil.which("depmod"):
            # Debian's postinst runs depmod; without modules.dep the guest's modprobe fails.
            run(["depmod", "-b", root, release], what="depmod", timeout=EXTRACT_TIMEOUT)
        extract_vmlinux(kernel_from(tmp, suite, release, version).vmlinuz, tmp / "vmlinux")
        _check(kernel_from(tmp, suite, release, version))
        manifest = {
            "suite": suite,
            "flavour": flavour,
            "release": release,
            "version": version,
            "packages": [
                {"package": d.package, "version": d.version, "sha256": d.sha256} for d in pkgs
            ],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    kernel = load(home)
    if kernel is None:
        raise LabError(f"provisioned kernel in {home} cannot be read back")
    return kernel


def _apt_for(cache: Path, suite: str) -> Apt:
    return HOST_APT if host_codename() == suite else private_apt(cache, suite)


def _current(cache: Path, suite: str, flavour: str, apt: Apt, refresh: bool,
             strict: bool) -> Resolved:
    """The archive's current kernel of ``suite`` (lists refreshed first when
    ``refresh``, or when a private suite's are missing or a day old; apt asked
    again, not the memo of its last answer, when ``refresh`` or ``strict``)."""
    if apt is HOST_APT:
        if refresh:
            update_host(apt)
    else:
        update_private(apt, suite, force=refresh)
    return resolve(cache, suite, flavour, apt, memo_ok=not (refresh or strict))


def provision(
    suite: str = "bookworm",
    cache_dir: Path | None = None,
    *,
    flavour: str = DEFAULT_FLAVOUR,
    chroot: bool | None = None,
    refresh: bool = False,
    strict: bool | None = None,
    say: Say | None = None,
) -> Kernel:
    """The current Debian ``suite`` kernel of ``flavour``, downloaded and unpacked once.

    ``flavour`` names the metapackage, ``linux-image-<flavour>``: ``amd64``, or
    another flavour of the suite such as ``cloud-amd64``.  A suite's kernels
    of every flavour live side by side in its cache directory.

    The host's apt answers for the host's own suite; any other suite is looked
    up through a private apt (sources, lists and cache under ``cache/apt/<suite>``,
    refreshed daily), so the host's apt configuration never changes.
    ``refresh`` fetches the lists first whatever their age (the host's with
    ``apt-get update``, as root).

    ``chroot`` (default: when ``suite`` is not the host's) also provides a build
    chroot of the suite: a minimal debootstrap with the compiler the headers call,
    make, libc6-dev and kbuild's libraries, cached in ``cache/chroots-v*/<suite>/``,
    with the kernel's headers inside (``Kernel.chroot``, ``Kernel.chroot_kernel_dir``).
    ``build_modules`` builds in it when the host lacks the suite's compiler.

    Idempotent: once a kernel is complete, later calls only re-resolve the current
    version (from a memo keyed on the apt lists) and return it.  ``say`` hears,
    in one line, about a kernel that is new to the cache (and which ones the
    cache holds besides), or one taken from the cache because apt could not
    answer.  That fallback is refused when ``strict`` (default:
    ``strict_default()``): a test run must not pass on a kernel the archive no
    longer serves.
    """
    cache = (cache_dir or default_cache_dir()).expanduser().resolve()
    kernels = kernels_dir(cache, suite)
    if chroot is None:
        chroot = host_codename() != suite
    if strict is None:
        strict = strict_default()
    apt = _apt_for(cache, suite)
    with locked(cache, suite):
        kernels.mkdir(parents=True, exist_ok=True)
        try:
            resolved = _current(cache, suite, flavour, apt, refresh, strict)
        except LabError as e:
            cached = cached_kernels(kernels, flavour)
            if not cached or strict:
                if not any(kernels.iterdir()):
                    kernels.rmdir()
                if cached:
                    raise LabError(
                        f"{e}; strict mode ($KLPSYM_LAB_STRICT=1) does not fall back to the"
                        f" cached {cached[0].label}, which the archive may no longer serve"
                    ) from None
                raise
            kernel = cached[0]
            if say:
                say(f"{suite}: apt could not say which kernel is current ({e});"
                    f" using the cached {kernel.label}")
        else:
            home = kernels / home_name(resolved.release, resolved.version)
            loaded = load(home)
            if loaded is None:
                others = [k.label for k in cached_kernels(kernels, flavour)]
                if say:
                    also = (f"; the cache also holds {', '.join(others)}, which the archive no"
                            f" longer serves as {suite}'s current kernel ('klpsym lab prune"
                            f" {suite}' removes it)" if others else "")
                    say(f"{suite}: provisioning {resolved.release} ({resolved.version}),"
                        f" the archive's current kernel{also}")
                loaded = _build(kernels, cache / "debs", suite, flavour, resolved, apt)
            kernel = loaded
        return with_chroot(cache, kernel, apt) if chroot else kernel


# ---------------------------------------------------------------- prune


@dataclass
class Pruned:
    """What ``prune`` removed (or would remove, with ``dry_run``), and what it kept."""

    kept: list[Kernel] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _prune_keeps(cache: Path, suite: str, flavour: str, out: Pruned) -> Kernel | None:
    """The kernel of ``suite`` and ``flavour`` that prune keeps (added to
    ``out.kept``): the archive's current one, or the newest cached one when
    apt cannot answer."""
    kernels = kernels_dir(cache, suite)
    cached = cached_kernels(kernels, flavour)
    name = suite if flavour == DEFAULT_FLAVOUR else f"{suite} {flavour}"
    keep: Kernel | None = None
    try:
        resolved = resolve(cache, suite, flavour, _apt_for(cache, suite))
    except LabError as e:
        if cached:
            keep = cached[0]
            out.notes.append(f"{name}: apt could not say which kernel is current"
                             f" ({e}); kept the newest cached, {keep.label}")
    else:
        keep = load(kernels / home_name(resolved.release, resolved.version))
        if keep is None:
            out.notes.append(f"{name}: the archive's current kernel, {resolved.release}"
                             f" ({resolved.version}), is not provisioned yet")
    if keep is not None:
        out.kept.append(keep)
    return keep


def _suites_in(cache: Path) -> list[str]:
    names = {p.name for d in cache.glob("kernels*") if d.is_dir() for p in d.iterdir()
             if p.is_dir()}
    names |= {p.name for d in cache.glob("chroots*") if d.is_dir() for p in d.iterdir()
              if p.is_dir()}
    return sorted(names)


def prune(
    suites: list[str] | None = None,
    cache_dir: Path | None = None,
    *,
    flavour: str = DEFAULT_FLAVOUR,
    dry_run: bool = False,
) -> Pruned:
    """Remove from the cache what the archive no longer serves: for each suite
    (default: every suite the cache has), every kernel but the archive's
    current one of each flavour the cache holds, ``flavour`` included (when
    apt cannot answer, the newest cached one is kept, and a note says so),
    kernel and chroot trees of older cache layouts, chroots the kept kernel
    (of ``flavour``) does not use, the kernels' copies inside the kept chroots,
    and the .debs no kept kernel names.  Each suite is pruned under its lock."""
    cache = (cache_dir or default_cache_dir()).expanduser().resolve()
    out = Pruned()
    chosen = suites if suites is not None else _suites_in(cache)

    def remove(path: Path, how: Callable[[Path], None] = remove_tree) -> None:
        out.removed.append(path)
        if not dry_run:
            how(path)

    for suite in chosen:
        with locked(cache, suite):
            kernels = kernels_dir(cache, suite)
            flavours = sorted({flavour} | {k.flavour for k in cached_kernels(kernels, None)})
            kept = [k for f in flavours if (k := _prune_keeps(cache, suite, f, out)) is not None]
            keep = next((k for k in kept if k.flavour == flavour), None)
            for home in sorted(kernels.glob("*")) if kernels.is_dir() else []:
                if home not in {k.home for k in kept}:
                    remove(home)
            for old in sorted(cache.glob(f"kernels*/{suite}")) + sorted(
                    cache.glob(f"chroots*/{suite}")):
                if old.parent.name not in (f"kernels-v{LAYOUT}", f"chroots-v{LAYOUT}"):
                    remove(old)
            packages = chroot_packages(keep, None) if keep is not None else None
            used = chroot_home(cache, suite, packages) if packages is not None else None
            chroots = chroots_dir(cache, suite)
            for home in sorted(chroots.glob("*")) if chroots.is_dir() else []:
                if home != used:
                    remove(home)
                    continue
                for linked in sorted(linked_kernels(home / "root").glob("*")):
                    if keep is None or linked.name != keep.home.name:
                        remove(linked)
    kept_debs = set()
    for kernels in cache.glob(f"kernels-v{LAYOUT}/*"):
        for kernel in cached_kernels(kernels, None):
            if kernel.home in out.removed:
                continue
            try:
                data = json.loads((kernel.home / MANIFEST).read_text())
                kept_debs |= {f"{p['package']}_{str(p['version']).split(':')[-1]}_"
                              for p in data["packages"]}
            except (OSError, ValueError, KeyError, TypeError):
                kept_debs = {""}  # a manifest we cannot read: keep every .deb
                break
    for deb in sorted((cache / "debs").glob("*.deb")):
        if not any(deb.name.startswith(prefix) for prefix in kept_debs):
            remove(deb, Path.unlink)
    return out
