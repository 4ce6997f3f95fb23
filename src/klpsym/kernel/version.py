"""The target kernel's version, and the rules that depend on it.

The release string is what ``uname -r`` prints and what vermagic carries
(``6.1.0-56-amd64``, ``6.12.48+deb13-amd64``, ``7.0.1-amd64``, ``5.8.0``).
Read from a kernel build/headers directory it comes from
``include/generated/utsrelease.h`` (UTS_RELEASE, the string the kernel was
built with) before ``include/config/kernel.release``: Debian's headers
packages ship a kernel.release holding the *upstream* version (``6.1.192`` in
linux-headers-6.1.0-56-amd64) while UTS_RELEASE is ``6.1.0-56-amd64``.
Debian's ABI names also hide the real sublevel (``6.1.0-56`` is 6.1.192), so
when ``include/generated/uapi/linux/version.h`` is there its
LINUX_VERSION_SUBLEVEL (or LINUX_VERSION_CODE) supplies ``patch``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering
from pathlib import Path

from klpsym.errors import KernelSourceError
from klpsym.kernel._io import read_text

_RELEASE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


@total_ordering
@dataclass(frozen=True, eq=False)
class KernelVersion:
    """``major.minor.patch`` plus the full release string.

    Ordering and equality compare (major, minor, patch) only; a plain tuple
    compares too: ``version >= (6, 1)``.
    """

    major: int
    minor: int
    patch: int
    release: str

    @classmethod
    def parse(cls, release: str) -> KernelVersion:
        rel = release.strip()
        m = _RELEASE.match(rel)
        if not m:
            raise KernelSourceError(
                f"kernel release {release!r} does not start with MAJOR.MINOR "
                "(expected something like 6.1.0-56-amd64)"
            )
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), rel)

    @property
    def as_tuple(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def _key(self, other: object) -> tuple[int, ...] | None:
        if isinstance(other, KernelVersion):
            return other.as_tuple
        if isinstance(other, tuple) and all(isinstance(x, int) for x in other):
            return tuple(other) + (0,) * (3 - len(other))
        return None

    def __eq__(self, other: object) -> bool:
        k = self._key(other)
        return NotImplemented if k is None else self.as_tuple == k

    def __lt__(self, other: object) -> bool:
        k = self._key(other)
        return NotImplemented if k is None else self.as_tuple < k

    def __hash__(self) -> int:
        return hash(self.as_tuple)

    def __str__(self) -> str:
        return self.release

    def short(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def read_kernel_version(kernel_dir: Path | str) -> KernelVersion:
    """The version of the kernel whose build (or headers) directory this is."""
    kdir = Path(kernel_dir)
    uts = kdir / "include" / "generated" / "utsrelease.h"
    rel_file = kdir / "include" / "config" / "kernel.release"
    release: str | None = None
    if uts.is_file():
        m = re.search(r'#define\s+UTS_RELEASE\s+"([^"]*)"', read_text(uts, "utsrelease.h"))
        if m:
            release = m.group(1)
    if release is None and rel_file.is_file():
        release = read_text(rel_file, "kernel.release").strip() or None
    if release is None:
        raise KernelSourceError(
            f"{kdir}: no include/generated/utsrelease.h or include/config/kernel.release; "
            "not a configured kernel build or headers directory (install "
            "linux-headers-<release>, or run 'make modules_prepare' in the kernel tree)"
        )
    version = KernelVersion.parse(release)
    sub = _sublevel(kdir, version)
    if sub is not None and sub != version.patch:
        version = KernelVersion(version.major, version.minor, sub, version.release)
    return version


def _sublevel(kdir: Path, version: KernelVersion) -> int | None:
    vh = kdir / "include" / "generated" / "uapi" / "linux" / "version.h"
    if not vh.is_file():
        return None
    text = read_text(vh, "version.h")
    fields = dict(re.findall(r"#define\s+(LINUX_VERSION_\w+)\s+(\d+)", text))
    if "LINUX_VERSION_MAJOR" in fields:
        major, minor = int(fields["LINUX_VERSION_MAJOR"]), int(fields["LINUX_VERSION_PATCHLEVEL"])
        sub = int(fields.get("LINUX_VERSION_SUBLEVEL", "-1"))
    elif "LINUX_VERSION_CODE" in fields:
        code = int(fields["LINUX_VERSION_CODE"])
        major, minor, sub = code >> 16, (code >> 8) & 0xFF, code & 0xFF
        if sub == 255:  # KERNEL_VERSION() clamps the sublevel at 255
            return None
    else:
        return None
    if (major, minor) != (version.major, version.minor) or sub < 0:
        return None
    return sub


# -- rules that depend on the version ------------------------------------------

#: include/linux/module.h: MODULE_NAME_LEN is 64 - sizeof(unsigned long),
#: 56 on 64-bit: struct module's name and struct modversion_info's.
MODULE_NAME_LEN = 56
#: livepatch parses the object name with ``%55[^.]`` (kernel/livepatch/core.c;
#: the BUILD_BUG_ON in klp_resolve_symbols() pins it to MODULE_NAME_LEN - 1).
KLP_OBJNAME_MAX = MODULE_NAME_LEN - 1
#: The largest KSYM_NAME_LEN (v6.1+, see :func:`ksym_name_len`), and before.
KSYM_NAME_LEN = 512
KSYM_NAME_LEN_BEFORE_6_1 = 128
#: The widest klp symbol NAME any loader parses (``%511[^,]``, v6.1+); a
#: target's own width is :func:`klp_sym_name_max`.
KLP_SYM_NAME_WIDEST = KSYM_NAME_LEN - 1


def ksym_name_len(version: KernelVersion) -> int:
    """KSYM_NAME_LEN of the target: 512 since v6.1, 128 before.

    Commit b8a94bfb3395 ("kallsyms: increase maximum kernel symbol length to
    512"), merged for v6.1 (verified: it is the mainline id named in later
    Fixes: tags with "Cc: stable # v6.1+"; Debian's 6.1.192 source has
    KSYM_NAME_LEN 512 and livepatch parses ``%511[^,]``).  scripts/kallsyms
    drops longer names (``strlen(name) >= KSYM_NAME_LEN``), so they are never
    in kallsyms.
    """
    return KSYM_NAME_LEN if version >= (6, 1) else KSYM_NAME_LEN_BEFORE_6_1


def klp_sym_name_max(version: KernelVersion) -> int:
    """Longest NAME livepatch can parse from ``.klp.sym.OBJ.NAME,POS``: the
    sscanf width in klp_resolve_symbols() is KSYM_NAME_LEN - 1."""
    return ksym_name_len(version) - 1


def supports_klp_for_plain_modules(version: KernelVersion) -> bool:
    """Whether the module loader itself applies ``.klp.rela.vmlinux.*``
    sections at load time: since v5.8, commit 7c8e2bdd5f0d ("livepatch: Apply
    vmlinux-specific KLP relocations early"; the id is the one named by the
    v5.8-cycle Fixes: tags, and kpatch-build enables the feature for
    Linux >= 5.8).  Before that, KLP relocations were applied only when the
    module registered itself as a livepatch (klp_enable_patch)."""
    return version >= (5, 8)


def kallsyms_keeps_start_stop(version: KernelVersion) -> bool:
    """scripts/kallsyms keeps ``__start_*``/``__stop_*`` symbols even without
    CONFIG_KALLSYMS_ALL since v6.10 (memory allocation profiling series,
    "scripts/kallsyms: Always include __start and __stop symbols"; the version
    is from the series' merge window and the host's 6.18 /proc/kallsyms, the
    commit id is not verified).  Not in Debian's 6.1.192 source."""
    return version >= (6, 10)


def kallsyms_input_is_mksysmap(version: KernelVersion) -> bool:
    """Since about v6.1 ("kbuild: reuse mksysmap output for kallsyms",
    Masahiro Yamada; present in Debian's 6.1.192 link-vmlinux.sh, exact merge
    version not verified) scripts/kallsyms reads the mksysmap output, so the
    symbols mksysmap drops (``__kstrtab_*``, ``__kstrtabns_*``, ``L0``, ``w``)
    are not in kallsyms either.  Before, it read ``nm -n vmlinux`` and did
    its own, smaller, filtering."""
    return version >= (6, 1)


def kallsyms_letters_tell_data(version: KernelVersion) -> bool:
    """Whether /proc/kallsyms type letters tell data from text (nm's meaning:
    d/D b/B r/R data, t/T text).  Verified true for Debian's 6.1.192 and
    6.12.117 (dmesg_restrict, jiffies, init_task are ``D``); false for
    Debian's 7.2.13, whose /proc/kallsyms shows those variables as ``T``
    (and per-cpu ones as ``D`` at real addresses instead of ``A``).  The
    commit that changed it between 6.12 and 7.2 is not identified, so only
    the verified versions are trusted: up to 6.12.  Where the letters are not
    trusted, klpsym decides from the address instead
    (:meth:`klpsym.kernel.kallsyms.KallsymsTable.kind`)."""
    return version < (6, 13)
