"""Provision a real Debian kernel (image + headers) into a cache directory.

Nothing is installed on the host: the packages are fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x``.  The current kernel of
a suite is resolved through the flavour's metapackage (``linux-image-amd64``),
so the ABI (``6.1.0-NN``) is never hard-coded.

Cache layout (``default_cache_dir()``, i.e. ``$KLPSYM_CACHE`` or
``~/.cache/klpsym``)::

    debs/<package>_<version>_<arch>.deb        verified against apt's SHA256
    resolved-<suite>-<flavour>.json            last resolution, keyed on apt's lists
    kernels/<suite>/<release>_<version>/       one provisioned kernel ("home")
        root/                                  the packages, dpkg-deb -x'ed
        vmlinux                                uncompressed, for the PVH boot
        kernel.json                            the Kernel fields (relative paths)
        complete                               marker: written last
        kallsyms                               captured by qemu.capture_kallsyms

A kernel directory is built under ``kernels/<suite>/.tmp-*`` and renamed into
place once complete, so a crash never leaves a half tree that looks finished.
The unpacked headers refer to ``/usr/src/...`` absolutely; those references
are rewritten so the tree works where it is (see ``_fix_tree``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
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
APT_LISTS = Path("/var/lib/apt/lists")
_MARKER = "complete"
_MANIFEST = "kernel.json"


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

    @property
    def kallsyms_cache(self) -> Path:
        """Where ``capture_kallsyms`` stores the guest's /proc/kallsyms."""
        return self.home / "kallsyms"


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


def _apt_show(specs: Sequence[str]) -> dict[str, dict[str, str]]:
    """``apt-cache show --no-all-versions`` for ``specs``, keyed by package name."""
    proc = run(
        ["apt-cache", "show", "--no-all-versions", *specs],
        what=f"looking up {', '.join(specs)}",
        timeout=APT_TIMEOUT,
        fix="run 'apt-get update' (the host's apt lists may be missing or stale)",
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


def _lists_stamp() -> float | None:
    """Changes whenever 'apt-get update' replaces a list: keys the resolution cache."""
    try:
        return APT_LISTS.stat().st_mtime
    except OSError:
        return None


@dataclass(frozen=True)
class _Resolved:
    release: str
    version: str


def _resolve(cache: Path, suite: str, flavour: str) -> _Resolved:
    """The current kernel of the metapackage ``linux-image-<flavour>`` (cached per apt lists)."""
    memo = cache / f"resolved-{suite}-{flavour}.json"
    stamp = _lists_stamp()
    try:
        data = json.loads(memo.read_text())
        if stamp is not None and data.get("lists_stamp") == stamp:
            return _Resolved(str(data["release"]), str(data["version"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    meta = f"linux-image-{flavour}"
    shown = _apt_show([meta])
    if meta not in shown:
        raise LabError(f"apt knows no package {meta!r}; run 'apt-get update'")
    for name, rel, ver in _depends(shown[meta].get("Depends", "")):
        if name.startswith("linux-image-") and rel == "=" and ver:
            resolved = _Resolved(name.removeprefix("linux-image-"), ver)
            break
    else:
        raise LabError(f"cannot find the kernel image {meta} depends on; run 'apt-get update'")
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


def _package_set(release: str, version: str) -> list[_Deb]:
    """The image, flavour headers, common headers and kbuild packages of one kernel."""
    image, headers = f"linux-image-{release}", f"linux-headers-{release}"
    shown = _apt_show([f"{image}={version}", f"{headers}={version}"])
    for name in (image, headers):
        if name not in shown:
            raise LabError(f"apt has no {name} version {version}; run 'apt-get update'")
    extra = [
        name
        for name, _rel, _ver in _depends(shown[headers].get("Depends", ""))
        if name.startswith(("linux-headers-", "linux-kbuild-"))
    ]
    # Same source package, same version (kbuild is ">=" in Depends, but the matching
    # version is what Debian built these headers with).
    shown.update(_apt_show([f"{name}={version}" for name in extra]))
    missing = [n for n in extra if n not in shown]
    if missing:
        raise LabError(f"apt has no {', '.join(missing)} version {version}; run 'apt-get update'")
    return [_deb(shown[n]) for n in (image, headers, *extra)]


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


def _download(pkgs: Sequence[_Deb], debs: Path) -> None:
    """Fetch the packages not yet cached (apt-get download checks the archive signature)."""
    todo = [d for d in pkgs if not _verified(d, debs)]
    if not todo:
        return
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=debs) as tmp:
        cmd = ["apt-get", "download", "-q"]
        if os.geteuid() == 0:
            # Downloading into a root-owned directory: skip the _apt sandbox warning.
            cmd += ["-o", "APT::Sandbox::User=root"]
        cmd += [f"{d.package}={d.version}" for d in todo]
        run(
            cmd,
            what="downloading " + ", ".join(d.package for d in todo),
            timeout=DOWNLOAD_TIMEOUT,
            cwd=Path(tmp),
            fix="check that the host reaches its Debian mirror and run 'apt-get update'",
        )
        for d in todo:
            got = Path(tmp) / d.filename
            if not got.is_file():
                cands = sorted(Path(tmp).glob(f"{d.package}_*.deb"))
                if len(cands) != 1:
                    raise LabError(f"apt-get download did not produce {d.filename}")
                got = cands[0]
            if d.sha256 and _sha256(got) != d.sha256:
                raise LabError(f"{got.name}: SHA256 differs from apt's index; run 'apt-get update'")
            os.replace(got, d.path(debs))


# ---------------------------------------------------------------- the tree


def _fix_tree(root: Path) -> None:
    """Make the unpacked packages work where they are instead of under /.

    Debian's headers assume installation in /: ``lib/modules/<r>/build`` and
    ``source`` are absolute symlinks to /usr/src/linux-headers-*, and the
    flavour's Makefile starts with ``include /usr/src/linux-headers-<abi>-common/
    Makefile``.  Absolute symlinks that point inside the tree become relative;
    the include becomes relative to the Makefile itself, so the cache can move.
    (The ``scripts`` and ``tools`` links to linux-kbuild are already relative.)
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
    return Kernel(
        suite=suite,
        release=release,
        package_version=version,
        root=root,
        kernel_dir=kernel_dir,
        vmlinuz=root / "boot" / f"vmlinuz-{release}",
        vmlinux=home / "vmlinux",
        config=root / "boot" / f"config-{release}",
        system_map=root / "boot" / f"System.map-{release}",
        modules_dir=root / "lib" / "modules" / release,
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


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as f:
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


def _build(kernels: Path, debs: Path, suite: str, release: str, version: str) -> Kernel:
    pkgs = _package_set(release, version)
    _download(pkgs, debs)
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
        _fix_tree(root)
        if shutil.which("depmod"):
            # Debian's postinst runs depmod; without modules.dep the guest's modprobe fails.
            run(["depmod", "-b", root, release], what="depmod", timeout=EXTRACT_TIMEOUT)
        extract_vmlinux(root / "boot" / f"vmlinuz-{release}", tmp / "vmlinux")
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


def provision(
    suite: str = "bookworm", cache_dir: Path | None = None, *, flavour: str = "amd64"
) -> Kernel:
    """The current Debian ``suite`` kernel of ``flavour``, downloaded and unpacked once.

    Idempotent: once a kernel is complete, later calls only re-resolve the current
    version (from a memo keyed on the host's apt lists) and return it.  When apt
    cannot answer (no lists, other suite than the host's), the newest kernel
    already in the cache for that suite is returned, if there is one.
    """
    cache = (cache_dir or default_cache_dir()).expanduser().resolve()
    kernels = cache / "kernels" / suite
    host = _host_codename()
    with _locked(cache):
        kernels.mkdir(parents=True, exist_ok=True)
        if host != suite:
            cached = _newest_cached(kernels)
            if cached is not None:
                return cached
            raise LabError(
                f"cannot provision Debian {suite!r}: this host's apt tracks {host or 'no suite'!r};"
                f" run on a {suite} host or use suite {host!r}"
            )
        try:
            resolved = _resolve(cache, suite, flavour)
        except LabError:
            cached = _newest_cached(kernels)
            if cached is not None:
                return cached
            raise
        home = kernels / _home_name(resolved.release, resolved.version)
        kernel = _load(home)
        if kernel is not None:
            return kernel
        return _build(kernels, cache / "debs", suite, resolved.release, resolved.version)
