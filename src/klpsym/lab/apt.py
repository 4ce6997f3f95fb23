"""What Debian's archive serves, through apt: the current kernel of a suite,
the packages of one kernel, and downloading them.

The host's apt answers for the host's own suite; any other suite goes through
a private apt whose sources, lists and cache live under the klpsym cache
(``apt/<suite>/``), so the host's apt configuration never changes.  Nothing is
installed: packages are fetched with ``apt-get download`` (which checks the
archive's signature) and verified against apt's SHA256.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from klpsym.errors import LabError
from klpsym.fsutil import atomic_write
from klpsym.lab._run import run

APT_TIMEOUT = 120.0
DOWNLOAD_TIMEOUT = 1800.0
APT_LISTS = Path("/var/lib/apt/lists")
DEBIAN_MIRROR = "http://deb.debian.org/debian"  # $KLPSYM_DEBIAN_MIRROR overrides
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"  # $KLPSYM_DEBIAN_SECURITY_MIRROR
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PRIVATE_LISTS_MAX_AGE = 24 * 3600.0  # seconds before a private suite's lists are refetched
_ROLLING = ("sid", "unstable", "experimental")  # no -updates / -security suites


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


def apt_show(specs: Sequence[str], apt: Apt = HOST_APT) -> dict[str, dict[str, str]]:
    """``apt-cache show --no-all-versions`` for ``specs``, keyed by package name."""
    proc = run(
        ["apt-cache", *apt.options, "show", "--no-all-versions", *specs],
        what=f"looking up {', '.join(specs)}",
        timeout=APT_TIMEOUT,
        fix=apt.fix(),
    )
    return {p["Package"]: p for p in _paragraphs(proc.stdout) if "Package" in p}


def depends(field: str) -> list[tuple[str, str | None, str | None]]:
    """(name, relation, version) for each first alternative of a Depends field."""
    deps: list[tuple[str, str | None, str | None]] = []
    for item in field.split(","):
        first = item.split("|")[0].strip()
        m = re.fullmatch(r"([^\s(:]+)(?::\S+)?\s*(?:\(\s*([<>=]+)\s*([^)\s]+)\s*\))?", first)
        if m:
            deps.append((m.group(1), m.group(2), m.group(3)))
    return deps


def host_codename() -> str | None:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    m = re.search(r"^VERSION_CODENAME=\"?([^\"\n]*)\"?$", text, re.MULTILINE)
    return m.group(1) if m and m.group(1) else None


def lists_stamp(apt: Apt) -> float | None:
    """Changes whenever 'apt-get update' replaces a list: keys the resolution cache."""
    try:
        return apt.stamp.stat().st_mtime
    except OSError:
        return None


def mirror() -> str:
    return os.environ.get("KLPSYM_DEBIAN_MIRROR", DEBIAN_MIRROR).rstrip("/")


def _security_mirror() -> str:
    return os.environ.get("KLPSYM_DEBIAN_SECURITY_MIRROR", DEBIAN_SECURITY_MIRROR).rstrip("/")


def private_apt(cache: Path, suite: str) -> Apt:
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
    lines = [f"deb {signed} {mirror()} {suite} main"]
    if suite not in _ROLLING:
        lines += [
            f"deb {signed} {mirror()} {suite}-updates main",
            f"deb {signed} {_security_mirror()} {suite}-security main",
        ]
    return "".join(line + "\n" for line in lines)


def update_private(apt: Apt, suite: str, *, force: bool = False) -> None:
    """Fetch the private lists when missing, older than PRIVATE_LISTS_MAX_AGE, or ``force``."""
    stamp = lists_stamp(apt)
    if not force and stamp is not None and time.time() - stamp < PRIVATE_LISTS_MAX_AGE:
        return
    base = apt.stamp.parent
    for sub in (apt.lists / "partial", base / "cache" / "archives" / "partial"):
        sub.mkdir(parents=True, exist_ok=True)
    atomic_write(base / "sources.list", _sources_list(suite).encode())
    cmd = ["apt-get", *apt.options, "-q", "update"]
    if os.geteuid() == 0:
        cmd[1:1] = ["-o", "APT::Sandbox::User=root"]
    run(
        cmd,
        what=f"cannot provision Debian {suite!r}: apt-get update of its private lists in {base}",
        timeout=DOWNLOAD_TIMEOUT,
        fix=f"check the suite name and that {mirror()} is reachable",
    )
    atomic_write(apt.stamp, time.strftime("%Y-%m-%dT%H:%M:%S%z\n").encode())


@dataclass(frozen=True)
class Resolved:
    release: str
    version: str


def resolve(cache: Path, suite: str, flavour: str, apt: Apt = HOST_APT, *,
            memo_ok: bool = True) -> Resolved:
    """The current kernel of the metapackage ``linux-image-<flavour>``.  The
    answer is kept in a memo keyed on the apt lists' stamp and reused while
    ``memo_ok`` and the stamp is unchanged; with ``memo_ok=False`` apt is asked
    (an ``apt-get update`` that finds nothing new leaves the stamp as it was, so
    only asking apt proves the answer is today's)."""
    memo = cache / f"resolved-{suite}-{flavour}.json"
    stamp = lists_stamp(apt)
    try:
        data = json.loads(memo.read_text())
        if memo_ok and stamp is not None and data.get("lists_stamp") == stamp:
            return Resolved(str(data["release"]), str(data["version"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    meta = f"linux-image-{flavour}"
    shown = apt_show([meta], apt)
    if meta not in shown:
        raise LabError(f"apt knows no package {meta!r} in {suite}; {apt.fix()}")
    for name, rel, ver in depends(shown[meta].get("Depends", "")):
        if name.startswith("linux-image-") and rel == "=" and ver:
            resolved = Resolved(name.removeprefix("linux-image-"), ver)
            break
    else:
        raise LabError(f"cannot find the kernel image {meta} depends on; {apt.fix()}")
    memo_data = {"lists_stamp": stamp, "release": resolved.release, "version": resolved.version}
    atomic_write(memo, json.dumps(memo_data).encode())
    return resolved


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    sha256: str
    filename: str  # basename of the pool file

    def path(self, debs: Path) -> Path:
        return debs / self.filename


def deb_from(fields: dict[str, str]) -> Deb:
    return Deb(
        package=fields["Package"],
        version=fields["Version"],
        sha256=fields.get("SHA256", ""),
        filename=Path(fields.get("Filename", "")).name
        or f"{fields['Package']}_{fields['Version']}_{fields.get('Architecture', 'all')}.deb",
    )


def package_set(release: str, version: str, apt: Apt = HOST_APT) -> list[Deb]:
    """The packages of one kernel: image, flavour and common headers, kbuild, and
    whatever else of the same build they pull in at exactly ``version``.

    Since 7.x the image package is itself a shell that depends on
    ``linux-binary-*``, ``linux-modules-*`` and ``linux-base-*`` of the same version.
    """
    image, headers = f"linux-image-{release}", f"linux-headers-{release}"
    shown = apt_show([f"{image}={version}", f"{headers}={version}"], apt)
    for name in (image, headers):
        if name not in shown:
            raise LabError(f"apt has no {name} version {version}; {apt.fix()}")
    order = [image, headers]
    todo = [image, headers]
    while todo:
        wanted = []
        for pkg in todo:
            for name, rel, ver in depends(shown[pkg].get("Depends", "")):
                # Same source package, same version (kbuild is ">=" or unversioned
                # in Depends, but the matching version is what built these headers).
                same_build = rel == "=" and ver == version
                if name.startswith("linux-") and name not in order and (
                    same_build or name.startswith(("linux-headers-", "linux-kbuild-"))
                ):
                    order.append(name)
                    wanted.append(name)
        if wanted:
            shown.update(apt_show([f"{name}={version}" for name in wanted], apt))
            missing = [n for n in wanted if n not in shown]
            if missing:
                raise LabError(
                    f"apt has no {', '.join(missing)} version {version}; {apt.fix()}"
                )
        todo = wanted
    return [deb_from(shown[n]) for n in order]


def build_depends(release: str, version: str, compiler: str, apt: Apt) -> list[str]:
    """What building modules needs besides the kernel's own packages: the
    non-kernel Depends of its headers and kbuild (the compiler, kbuild's libraries),
    make, libc6-dev, and the package named like the compiler the headers call."""
    names = [f"linux-headers-{release}"]
    shown = apt_show([f"{names[0]}={version}", compiler], apt)
    if names[0] not in shown:
        raise LabError(f"apt has no {names[0]} version {version}; {apt.fix()}")
    kbuild = [
        n for n, _r, _v in depends(shown[names[0]].get("Depends", ""))
        if n.startswith("linux-kbuild-")
    ]  # fmt: skip
    shown.update(apt_show([f"{n}={version}" for n in kbuild], apt))
    deps = {"make", "libc6-dev"}
    if compiler in shown:
        deps.add(compiler)
    for name in [*names, *kbuild]:
        if name in shown:
            deps.update(
                n for n, _r, _v in depends(shown[name].get("Depends", ""))
                if not n.startswith("linux-")
            )  # fmt: skip
    return sorted(deps)




def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(deb: Deb, debs: Path) -> bool:
    path = deb.path(debs)
    return path.is_file() and (not deb.sha256 or _sha256(path) == deb.sha256)


def download(pkgs: Sequence[Deb], debs: Path, apt: Apt = HOST_APT) -> None:
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


def update_host(apt: Apt = HOST_APT) -> None:
    """``apt-get update`` of the host's own lists (root only: it writes /var/lib/apt)."""
    if os.geteuid() != 0:
        raise LabError("refreshing the host's apt lists needs root; run 'apt-get update' as root")
    run(["apt-get", "-q", "update"], what="apt-get update of the host's lists",
        timeout=DOWNLOAD_TIMEOUT, fix=apt.fix())
