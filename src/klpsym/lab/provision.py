"""Provision a real Debian kernel (image + headers) into a cache directory.

Nothing is installed on the host: the packages are fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x``.  The current kernel of
a suite is resolved through the flavour's metapackage (``linux-image-amd64``),
so the ABI (``6.1.0-NN``) is never hard-coded.

Cache layout (``default_cache_dir()``, i.e. ``$KLPSYM_CACHE`` or
``~/.cache/klpsym``)::

    debs/<package>_<version>_<arch>.deb        verified against apt's SHA256
    resolved-<suite>-<flavour>.json            last resolution, keyed on apt's lists
    locks/<suite>.lock                         held while provisioning the suite
    apt/<suite>/                               a private apt (other suites than the host's)
    kernels-v<LAYOUT>/<suite>/<release>_<version>/   one provisioned kernel ("home")
        root/                                  the packages, dpkg-deb -x'ed
        vmlinux                                uncompressed, for the PVH boot
        kernel.json                            the Kernel fields (relative paths)
        complete                               marker: written last
        kallsyms                               captured by qemu.capture_kallsyms
    chroots-v<LAYOUT>/<suite>/<key>/root/      a build chroot (debootstrap)

A kernel directory is built under ``kernels-v<LAYOUT>/<suite>/.tmp-*`` and
renamed into place once complete, so a crash never leaves a half tree that
looks finished.  ``LAYOUT`` is in the names of the kernel and chroot dirs:
bump it whenever what a tree holds or how it is made changes, so that trees
made by an older klpsym are rebuilt beside the old ones instead of reused
(the old ones are left alone: other checkouts may still use them; delete
them by hand).  Layout 1 had no version in the names (``kernels/``,
``chroots/``).  Two processes provisioning the same suite at once are
serialised by ``locks/<suite>.lock`` (flock): the second finds the first's
tree complete and reuses it.
The unpacked headers refer to ``/usr/src/...`` absolutely; those references
are rewritten so the tree works where it is (see ``_fix_tree``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from klpsym.errors import LabError
from klpsym.lab._run import run
from klpsym.lab.vmlinux import extract_vmlinux, pvh_entry

APT_TIMEOUT = 120.0
DOWNLOAD_TIMEOUT = 1800.0
EXTRACT_TIMEOUT = 900.0
DEBOOTSTRAP_TIMEOUT = 1800.0
APT_LISTS = Path("/var/lib/apt/lists")
DEBIAN_MIRROR = "http://deb.debian.org/debian"  # $KLPSYM_DEBIAN_MIRROR overrides
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"  # $KLPSYM_DEBIAN_SECURITY_MIRROR
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PRIVATE_LISTS_MAX_AGE = 24 * 3600.0  # seconds before a private suite's lists are refetched
_ROLLING = ("sid", "unstable", "experimental")  # no -updates / -security suites
_CHROOT_KERNELS = "klpsym/kernels"  # inside a chroot: hard-linked copies of kernel trees
_MARKER = "complete"
_MANIFEST = "kernel.json"
#: Version of the kernel and chroot trees' layout (see the module docstring).
#: 2: kbuild runs in the chroot through klpsym.kbuild.ChrootRunner (bind mounts
#: under /klpsym/host), and trees are provisioned under per-suite locks.
LAYOUT = 2


@dataclass(frozen=True)
class Kernel:
    """One provisioned Debian kernel: everything needed to build for it and boot it."""

    suite: str  # "bookworm"
    release: str  # "6.1.0-56-amd64" (uname -r)
    package_version: str  # "6.1.192-2"
    root: Path  # the extracted packages
    kernel_dir: Path  # headers build dir: KDIR / `klpsym convert --kernel-dir`
    vmlinuz: Path
    vmlinux: Path  # uncompressed, for the PVH boot
    config: Path  # boot/config-<release>
    system_map: Path  # Debian's one-line stub
    modules_dir: Path  # <root>/lib/modules/<release>
    home: Path  # this kernel's cache directory (root, vmlinux, kallsyms live here)
    compiler: str  # the C compiler the headers call, e.g. "gcc-12"
    # A debootstrap of the suite with its compiler and the headers inside (see
    # chroot_kernel_dir), for suites other than the host's; None for the host's.
    chroot: Path | None = None

    @property
    def kallsyms_cache(self) -> Path:
        """Where ``capture_kallsyms`` stores the guest's /proc/kallsyms."""
        return self.home / "kallsyms"

    @property
    def chroot_kernel_dir(self) -> Path:
        """``kernel_dir`` as seen inside ``chroot`` (an absolute path in the chroot)."""
        return Path("/") / _CHROOT_KERNELS / self.home.name / self.kernel_dir.relative_to(self.root)


def default_cache_dir() -> Path:
    """``$KLPSYM_CACHE`` if set, else ``~/.cache/klpsym``."""
    env = os.environ.get("KLPSYM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "klpsym"


# ---------------------------------------------------------------- apt queries


def _paragraphs(text: str) -> list[dict[str, str]]:
    """Parse deb822 text (``apt-cache show``) into field dicts."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if cur:
                out.append(cur)
            cur, key = {}, ""
        elif line[0] in " \t" and key:
            cur[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            cur[key] = value.strip()
    if cur:
        out.append(cur)
    return out


@dataclass(frozen=True)
class Apt:
    """Which apt answers the queries: the host's (no options) or a private one.

    A private apt has its own sources list, lists and cache under the klpsym
    cache (``apt/<suite>/``), passed as ``-o`` options on every call, so other
    Debian suites are reachable without touching the host's apt configuration.
    """

    options: tuple[str, ...] = ()
    lists: Path = APT_LISTS
    stamp: Path = APT_LISTS  # its mtime changes whenever the lists are replaced

    def fix(self) -> str:
        if not self.options:
            return "run 'apt-get update' (the host's apt lists may be missing or stale)"
        return f"delete {self.stamp} to refresh the private apt lists"


HOST_APT = Apt()


def _apt_show(specs: Sequence[str], apt: Apt = HOST_APT) -> dict[str, dict[str, str]]:
    """``apt-cache show --no-all-versions`` for ``specs``, keyed by package name."""
    proc = run(
        ["apt-cache", *apt.options, "show", "--no-all-versions", *specs],
        what=f"looking up {', '.join(specs)}",
        timeout=APT_TIMEOUT,
        fix=apt.fix(),
    )
    return {p["Package"]: p for p in _paragraphs(proc.stdout) if "Package" in p}


def _depends(field: str) -> list[tuple[str, str | None, str | None]]:
    """(name, relation, version) for each first alternative of a Depends field."""
    deps: list[tuple[str, str | None, str | None]] = []
    for item in field.split(","):
        first = item.split("|")[0].strip()
        m = re.fullmatch(r"([^\s(:]+)(?::\S+)?\s*(?:\(\s*([<>=]+)\s*([^)\s]+)\s*\))?", first)
        if m:
            deps.append((m.group(1), m.group(2), m.group(3)))
    return deps


def _host_codename() -> str | None:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    m = re.search(r"^VERSION_CODENAME=\"?([^\"\n]*)\"?$", text, re.MULTILINE)
    return m.group(1) if m and m.group(1) else None


def _lists_stamp(apt: Apt) -> float | None:
    """Changes whenever 'apt-get update' replaces a list: keys the resolution cache."""
    try:
        return apt.stamp.stat().st_mtime
    except OSError:
        return None


def _mirror() -> str:
    return os.environ.get("KLPSYM_DEBIAN_MIRROR", DEBIAN_MIRROR).rstrip("/")


def _security_mirror() -> str:
    return os.environ.get("KLPSYM_DEBIAN_SECURITY_MIRROR", DEBIAN_SECURITY_MIRROR).rstrip("/")


def _private_apt(cache: Path, suite: str) -> Apt:
    """The private apt of ``suite`` under ``cache/apt/<suite>`` (lists not fetched yet)."""
    base = cache / "apt" / suite
    lists = base / "lists"
    options = (
        "-o", f"Dir::Etc::SourceList={base / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={lists}",
        "-o", f"Dir::Cache={base / 'cache'}",
        "-o", "Dir::State::status=/dev/null",  # nothing is installed from it
        "-o", "APT::Architecture=amd64",
        "-o", "APT::Architectures::=amd64",
        # The signatures are still checked; only the Release files' expiry is not
        # (sid's lapses between mirror pushes, and a cached suite must stay usable).
        "-o", "Acquire::Check-Valid-Until=false",
    )  # fmt: skip
    return Apt(options=options, lists=lists, stamp=base / "updated")


def _sources_list(suite: str) -> str:
    signed = f"[signed-by={DEBIAN_KEYRING}]"
    lines = [f"deb {signed} {_mirror()} {suite} main"]
    if suite not in _ROLLING:
        lines += [
            f"deb {signed} {_mirror()} {suite}-updates main",
            f"deb {signed} {_security_mirror()} {suite}-security main",
        ]
    return "".join(line + "\n" for line in lines)


def _update_private(apt: Apt, suite: str) -> None:
    """Fetch the private lists when missing or older than PRIVATE_LISTS_MAX_AGE."""
    stamp = _lists_stamp(apt)
    if stamp is not None and time.time() - stamp < PRIVATE_LISTS_MAX_AGE:
        return
    base = apt.stamp.parent
    for sub in (apt.lists / "partial", base / "cache" / "archives" / "partial"):
        sub.mkdir(parents=True, exist_ok=True)
    (base / "sources.list").write_text(_sources_list(suite))
    cmd = ["apt-get", *apt.options, "-q", "update"]
    if os.geteuid() == 0:
        cmd[1:1] = ["-o", "APT::Sandbox::User=root"]
    run(
        cmd,
        what=f"cannot provision Debian {suite!r}: apt-get update of its private lists in {base}",
        timeout=DOWNLOAD_TIMEOUT,
        fix=f"check the suite name and that {_mirror()} is reachable",
    )
    apt.stamp.write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))


@dataclass(frozen=True)
class _Resolved:
    release: str
    version: str


def _resolve(cache: Path, suite: str, flavour: str, apt: Apt = HOST_APT) -> _Resolved:
    """The current kernel of the metapackage ``linux-image-<flavour>`` (cached per apt lists)."""
    memo = cache / f"resolved-{suite}-{flavour}.json"
    stamp = _lists_stamp(apt)
    try:
        data = json.loads(memo.read_text())
        if stamp is not None and data.get("lists_stamp") == stamp:
            return _Resolved(str(data["release"]), str(data["version"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    meta = f"linux-image-{flavour}"
    shown = _apt_show([meta], apt)
    if meta not in shown:
        raise LabError(f"apt knows no package {meta!r} in {suite}; {apt.fix()}")
    for name, rel, ver in _depends(shown[meta].get("Depends", "")):
        if name.startswith("linux-image-") and rel == "=" and ver:
            resolved = _Resolved(name.removeprefix("linux-image-"), ver)
            break
    else:
        raise LabError(f"cannot find the kernel image {meta} depends on; {apt.fix()}")
    tmp = memo.with_name(memo.name + ".part")
    tmp.write_text(
        json.dumps({"lists_stamp": stamp, "release": resolved.release, "version": resolved.version})
    )
    os.replace(tmp, memo)
    return resolved


@dataclass(frozen=True)
class _Deb:
    package: str
    version: str
    sha256: str
    filename: str  # basename of the pool file

    def path(self, debs: Path) -> Path:
        return debs / self.filename


def _deb(fields: dict[str, str]) -> _Deb:
    return _Deb(
        package=fields["Package"],
        version=fields["Version"],
        sha256=fields.get("SHA256", ""),
        filename=Path(fields.get("Filename", "")).name
        or f"{fields['Package']}_{fields['Version']}_{fields.get('Architecture', 'all')}.deb",
    )


def _package_set(release: str, version: str, apt: Apt = HOST_APT) -> list[_Deb]:
    """The packages of one kernel: image, flavour and common headers, kbuild, and
    whatever else of the same build they pull in at exactly ``version``.

    Since 7.x the image package is itself a shell that depends on
    ``linux-binary-*``, ``linux-modules-*`` and ``linux-base-*`` of the same version.
    """
    image, headers = f"linux-image-{release}", f"linux-headers-{release}"
    shown = _apt_show([f"{image}={version}", f"{headers}={version}"], apt)
    for name in (image, headers):
        if name not in shown:
            raise LabError(f"apt has no {name} version {version}; {apt.fix()}")
    order = [image, headers]
    todo = [image, headers]
    while todo:
        wanted = []
        for pkg in todo:
            for name, rel, ver in _depends(shown[pkg].get("Depends", "")):
                # Same source package, same version (kbuild is ">=" or unversioned
                # in Depends, but the matching version is what built these headers).
                same_build = rel == "=" and ver == version
                if name.startswith("linux-") and name not in order and (
                    same_build or name.startswith(("linux-headers-", "linux-kbuild-"))
                ):
                    order.append(name)
                    wanted.append(name)
        if wanted:
            shown.update(_apt_show([f"{name}={version}" for name in wanted], apt))
            missing = [n for n in wanted if n not in shown]
            if missing:
                raise LabError(
                    f"apt has no {', '.join(missing)} version {version}; {apt.fix()}"
                )
        todo = wanted
    return [_deb(shown[n]) for n in order]


def _build_depends(release: str, version: str, compiler: str, apt: Apt) -> list[str]:
    """What building modules needs besides the kernel's own packages: the
    non-kernel Depends of its headers and kbuild (the compiler, kbuild's libraries),
    make, libc6-dev, and the package named like the compiler the headers call."""
    names = [f"linux-headers-{release}"]
    shown = _apt_show([f"{names[0]}={version}", compiler], apt)
    if names[0] not in shown:
        raise LabError(f"apt has no {names[0]} version {version}; {apt.fix()}")
    kbuild = [
        n for n, _r, _v in _depends(shown[names[0]].get("Depends", ""))
        if n.startswith("linux-kbuild-")
    ]  # fmt: skip
    shown.update(_apt_show([f"{n}={version}" for n in kbuild], apt))
    deps = {"make", "libc6-dev"}
    if compiler in shown:
        deps.add(compiler)
    for name in [*names, *kbuild]:
        if name in shown:
            deps.update(
                n for n, _r, _v in _depends(shown[name].get("Depends", ""))
                if not n.startswith("linux-")
            )  # fmt: skip
    return sorted(deps)


# ---------------------------------------------------------------- downloads


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(deb: _Deb, debs: Path) -> bool:
    path = deb.path(debs)
    return path.is_file() and (not deb.sha256 or _sha256(path) == deb.sha256)


def _download(pkgs: Sequence[_Deb], debs: Path, apt: Apt = HOST_APT) -> None:
    """Fetch the packages not yet cached (apt-get download checks the archive signature)."""
    todo = [d for d in pkgs if not _verified(d, debs)]
    if not todo:
        return
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=debs) as tmp:
        cmd = ["apt-get", *apt.options, "download", "-q"]
        if os.geteuid() == 0:
            # Downloading into a root-owned directory: skip the _apt sandbox warning.
            cmd += ["-o", "APT::Sandbox::User=root"]
        cmd += [f"{d.package}={d.version}" for d in todo]
        run(
            cmd,
            what="downloading " + ", ".join(d.package for d in todo),
            timeout=DOWNLOAD_TIMEOUT,
            cwd=Path(tmp),
            fix=f"check that the host reaches its Debian mirror; {apt.fix()}",
        )
        for d in todo:
            got = Path(tmp) / d.filename
            if not got.is_file():
                cands = sorted(Path(tmp).glob(f"{d.package}_*.deb"))
                if len(cands) != 1:
                    raise LabError(f"apt-get download did not produce {d.filename}")
                got = cands[0]
            if d.sha256 and _sha256(got) != d.sha256:
                raise LabError(f"{got.name}: SHA256 differs from apt's index; {apt.fix()}")
            os.replace(got, d.path(debs))


# ---------------------------------------------------------------- the tree


def _fix_tree(root: Path) -> None:
    """Make the unpacked packages work where they are instead of under /.

    Debian's headers assume installation in /: ``lib/modules/<r>/build`` and
    ``source`` are absolute symlinks to /usr/src/linux-headers-*, and the
    flavour's Makefile starts with ``include /usr/src/linux-headers-<abi>-common/
    Makefile``.  Absolute symlinks that point inside the tree become relative;
    the include becomes relative to the Makefile itself, so the cache can move.
    7.x's flavour Makefile also sets ``KBUILD_OUTPUT=/usr/src/<itself>``, made
    relative the same way.  (The ``scripts`` and ``tools`` links to linux-kbuild
    are already relative.)
    """
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = Path(dirpath) / name
            if not link.is_symlink():
                continue
            target = os.readlink(link)
            if not target.startswith("/"):
                continue
            inside = root / target.lstrip("/")
            if inside.exists() or inside.is_symlink():
                link.unlink()
                link.symlink_to(os.path.relpath(inside, link.parent))
    src = root / "usr" / "src"
    pattern = re.compile(r"^([ \t]*-?include[ \t]+)/usr/src/([^/\s]+)/(\S+)[ \t]*$", re.MULTILINE)
    for makefile in src.glob("linux-headers-*/Makefile"):
        text = makefile.read_text()

        def _rel(m: re.Match[str]) -> str:
            if not (src / m.group(2)).is_dir():
                return m.group(0)
            here = "$(dir $(lastword $(MAKEFILE_LIST)))"
            return f"{m.group(1)}$(abspath {here}../{m.group(2)}/{m.group(3)})"

        fixed = pattern.sub(_rel, text)
        # 7.x: the flavour's Makefile sets KBUILD_OUTPUT=/usr/src/<itself>; make it the
        # Makefile's own directory, evaluated at once (MAKEFILE_LIST grows later).
        own = re.escape(makefile.parent.name)
        fixed = re.sub(
            rf"^KBUILD_OUTPUT[ \t]*:?=[ \t]*/usr/src/{own}/?[ \t]*$",
            "KBUILD_OUTPUT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))",
            fixed,
            flags=re.MULTILINE,
        )
        if fixed != text:
            makefile.write_text(fixed)


def _compiler(kernel_dir: Path) -> str:
    """The C compiler the headers call: Debian sets ``CC`` in ``.kernelvariables``
    (included by the top Makefile), e.g. ``CC = ... $(CROSS_COMPILE)gcc-12``."""
    try:
        text = (kernel_dir / ".kernelvariables").read_text()
    except OSError:
        return "gcc"
    m = re.search(r"^CC[ \t]*:?=.*?(\S+)[ \t]*$", text, re.MULTILINE)
    if not m:
        return "gcc"
    return m.group(1).replace("$(CROSS_COMPILE)", "")


def _kernel_from(home: Path, suite: str, release: str, version: str) -> Kernel:
    root = home / "root"
    kernel_dir = root / "usr" / "src" / f"linux-headers-{release}"
    modules_dir = root / "lib" / "modules" / release

    def boot_file(name: str) -> Path:
        # /boot/<name>-<release> up to 6.x; since 7.x only /usr/lib/modules/<release>/<name>
        # (the postinst copies it to /boot).
        in_boot = root / "boot" / f"{name}-{release}"
        in_modules = modules_dir / name
        return in_modules if not in_boot.exists() and in_modules.exists() else in_boot

    return Kernel(
        suite=suite,
        release=release,
        package_version=version,
        root=root,
        kernel_dir=kernel_dir,
        vmlinuz=boot_file("vmlinuz"),
        vmlinux=home / "vmlinux",
        config=boot_file("config"),
        system_map=boot_file("System.map"),
        modules_dir=modules_dir,
        home=home,
        compiler=_compiler(kernel_dir),
    )


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


def _home_name(release: str, version: str) -> str:
    return f"{release}_{version.replace(':', '%3a')}"


def kernels_dir(cache: Path, suite: str) -> Path:
    """Where ``suite``'s kernels of the current LAYOUT live."""
    return cache / f"kernels-v{LAYOUT}" / suite


@contextmanager
def _locked(cache: Path, suite: str) -> Iterator[None]:
    """Exclusive per suite, across processes (several test sessions share a cache)."""
    locks = cache / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f"{suite}.lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _load(home: Path) -> Kernel | None:
    if not (home / _MARKER).is_file():
        return None
    try:
        data = json.loads((home / _MANIFEST).read_text())
        return _kernel_from(home, str(data["suite"]), str(data["release"]), str(data["version"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _newest_cached(kernels: Path) -> Kernel | None:
    homes = [h for h in kernels.glob("*") if (h / _MARKER).is_file()]
    for home in sorted(homes, key=lambda h: (h / _MARKER).stat().st_mtime, reverse=True):
        kernel = _load(home)
        if kernel is not None:
            return kernel
    return None


def _build(
    kernels: Path, debs: Path, suite: str, release: str, version: str, apt: Apt = HOST_APT
) -> Kernel:
    pkgs = _package_set(release, version, apt)
    _download(pkgs, debs, apt)
    for stale in kernels.glob(".tmp-*"):  # leftovers of an interrupted run (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=kernels))
    try:
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
        _fix_tree(root)
        if shutil.which("depmod"):
            # Debian's postinst runs depmod; without modules.dep the guest's modprobe fails.
            run(["depmod", "-b", root, release], what="depmod", timeout=EXTRACT_TIMEOUT)
        extract_vmlinux(_kernel_from(tmp, suite, release, version).vmlinuz, tmp / "vmlinux")
        _check(_kernel_from(tmp, suite, release, version))
        manifest = {
            "suite": suite,
            "release": release,
            "version": version,
            "packages": [
                {"package": d.package, "version": d.version, "sha256": d.sha256} for d in pkgs
            ],
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        (tmp / _MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
        home = kernels / _home_name(release, version)
        if home.exists():  # an incomplete earlier attempt without the marker
            shutil.rmtree(home)
        os.rename(tmp, home)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kernel = _load(home)
    if kernel is None:
        raise LabError(f"provisioned kernel in {home} cannot be read back")
    return kernel


# ---------------------------------------------------------------- build chroots


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (debootstrap mounts /proc, /sys in its target)."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    prefix = str(path)
    points = [ln.split()[1].replace("\\040", " ") for ln in lines if len(ln.split()) > 1]
    return [m for m in points if m == prefix or m.startswith(prefix + "/")]


def _remove_tree(path: Path) -> None:
    """rmtree that first unmounts what an interrupted debootstrap left mounted inside."""
    for mount in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], timeout=60, check=False, capture_output=True)
    if _mounts_under(path):
        raise LabError(f"{path} still has mounts inside; unmount them, then delete it")
    shutil.rmtree(path, ignore_errors=True)


def _chroot_home(cache: Path, suite: str, packages: Sequence[str]) -> Path:
    key = hashlib.sha256(" ".join([suite, *sorted(packages)]).encode()).hexdigest()[:12]
    return cache / f"chroots-v{LAYOUT}" / suite / key


def _debootstrap(home: Path, suite: str, packages: Sequence[str]) -> None:
    """``debootstrap --variant=minbase`` of ``suite`` with ``packages`` into ``home``,
    built beside it and renamed into place once complete."""
    if (home / _MARKER).is_file():
        return
    if shutil.which("debootstrap") is None:
        raise LabError(
            f"building for Debian {suite} needs a {suite} chroot, and debootstrap is missing;"
            " run scripts/bootstrap or 'apt-get install debootstrap'"
        )
    if os.geteuid() != 0:
        raise LabError(f"creating the {suite} build chroot needs root (debootstrap); run as root")
    home.parent.mkdir(parents=True, exist_ok=True)
    for stale in home.parent.glob(".tmp-*"):  # an interrupted run's (we hold the lock)
        _remove_tree(stale)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=home.parent))
    try:
        run(
            [
                "debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
                f"--keyring={DEBIAN_KEYRING}", suite, tmp / "root", _mirror(),
            ],  # fmt: skip
            what=f"debootstrap of the {suite} build chroot",
            timeout=DEBOOTSTRAP_TIMEOUT,
            fix=f"see {tmp}/root/debootstrap/debootstrap.log; check that {_mirror()} is reachable",
        )
        run(["chroot", tmp / "root", "apt-get", "clean"], what="apt-get clean", timeout=APT_TIMEOUT)
        (tmp / "packages").write_text("".join(p + "\n" for p in packages))
        (tmp / _MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
        if home.exists():
            _remove_tree(home)
        os.rename(tmp, home)
    except BaseException:
        _remove_tree(tmp)
        raise


def _link_kernel(chroot: Path, kernel: Kernel) -> None:
    """Make the kernel's headers visible in ``chroot`` at ``kernel.chroot_kernel_dir``:
    a hard-linked copy of the kernel's usr/ (headers + kbuild, linked relatively)."""
    dest = chroot / _CHROOT_KERNELS / kernel.home.name
    if (dest / _MARKER).is_file():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        # usr/src holds the headers, usr/lib/linux-kbuild-* the tools they link to.
        parts = [kernel.root / "usr" / "src", *(kernel.root / "usr" / "lib").glob("linux-kbuild-*")]
        for part in parts:
            dest_part = tmp / part.relative_to(kernel.root)
            dest_part.parent.mkdir(parents=True, exist_ok=True)
            try:
                run(["cp", "-al", part, dest_part], what="linking the headers",
                    timeout=EXTRACT_TIMEOUT)
            except LabError:  # another file system: copy instead
                shutil.rmtree(dest_part, ignore_errors=True)
                run(["cp", "-a", part, dest_part],
                    what=f"copying the {kernel.release} headers into {chroot}",
                    timeout=EXTRACT_TIMEOUT)
        (tmp / _MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _with_chroot(cache: Path, kernel: Kernel, apt: Apt) -> Kernel:
    """``kernel`` with its suite's build chroot, created (once) if needed."""
    manifest = kernel.home / _MANIFEST
    data = json.loads(manifest.read_text())
    packages = data.get("build_depends")
    if not isinstance(packages, list):
        packages = _build_depends(kernel.release, kernel.package_version, kernel.compiler, apt)
        data["build_depends"] = packages
        tmp = manifest.with_name(manifest.name + ".part")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, manifest)
    home = _chroot_home(cache, kernel.suite, packages)
    _debootstrap(home, kernel.suite, packages)
    root = home / "root"
    if not (root / "usr" / "bin" / kernel.compiler).exists():
        raise LabError(
            f"the {kernel.suite} chroot {root} has no {kernel.compiler}; delete {home} and retry"
        )
    with_chroot = dataclasses.replace(kernel, chroot=root)
    _link_kernel(root, with_chroot)
    return with_chroot


def provision(
    suite: str = "bookworm",
    cache_dir: Path | None = None,
    *,
    flavour: str = "amd64",
    chroot: bool | None = None,
) -> Kernel:
    """The current Debian ``suite`` kernel of ``flavour``, downloaded and unpacked once.

    The host's apt answers for the host's own suite; any other suite is looked
    up through a private apt (sources, lists and cache under ``cache/apt/<suite>``,
    refreshed daily), so the host's apt configuration never changes.

    ``chroot`` (default: when ``suite`` is not the host's) also provides a build
    chroot of the suite: a minimal debootstrap with the compiler the headers call,
    make, libc6-dev and kbuild's libraries, cached in ``cache/chroots/<suite>/``,
    with the kernel's headers inside (``Kernel.chroot``, ``Kernel.chroot_kernel_dir``).
    ``build_modules`` builds in it when the host lacks the suite's compiler.

    Idempotent: once a kernel is complete, later calls only re-resolve the current
    version (from a memo keyed on the apt lists) and return it.  When apt cannot
    answer, the newest kernel already in the cache for that suite is returned,
    if there is one.
    """
    cache = (cache_dir or default_cache_dir()).expanduser().resolve()
    kernels = kernels_dir(cache, suite)
    host = _host_codename()
    if chroot is None:
        chroot = host != suite
    apt = HOST_APT if host == suite else _private_apt(cache, suite)
    with _locked(cache, suite):
        kernels.mkdir(parents=True, exist_ok=True)
        try:
            if apt is not HOST_APT:
                _update_private(apt, suite)
            resolved = _resolve(cache, suite, flavour, apt)
        except LabError:
            cached = _newest_cached(kernels)
            if cached is None:
                if not any(kernels.iterdir()):
                    kernels.rmdir()
                raise
            kernel = cached
        else:
            home = kernels / _home_name(resolved.release, resolved.version)
            loaded = _load(home)
            kernel = loaded or _build(
                kernels, cache / "debs", suite, resolved.release, resolved.version, apt
            )
        return _with_chroot(cache, kernel, apt) if chroot else kernel
