"""klpsym.kernel.config and klpsym.kernel.version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from klpsym.cli.main import message
from klpsym.errors import KernelSourceError, KlpsymError
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.version import (
    KernelVersion,
    kallsyms_input_is_mksysmap,
    kallsyms_keeps_start_stop,
    klp_sym_name_max,
    ksym_name_len,
    read_kernel_version,
    supports_klp_for_plain_modules,
)

CONFIG = """\
#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 6.1.192 Kernel Configuration
#
CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
CONFIG_LOCALVERSION=""
# CONFIG_LOCALVERSION_AUTO is not set
CONFIG_BUILD_SALT="6.1.0-56-amd64"
CONFIG_KALLSYMS=y
CONFIG_KALLSYMS_ALL=y
CONFIG_LIVEPATCH=y
CONFIG_EXT4_FS=m
CONFIG_NR_CPUS=8192
CONFIG_PHYSICAL_START=0x1000000
CONFIG_ESCAPED="a \\"quoted\\" \\\\ path"

# CONFIG_KALLSYMS_ABSOLUTE_PERCPU is not set
"""


def test_config_values() -> None:
    c = KernelConfig.from_text(CONFIG, "test.config")
    assert c.get("CONFIG_KALLSYMS_ALL") == "y"
    assert c.get("KALLSYMS_ALL") == "y"  # prefix optional
    assert c.enabled("LIVEPATCH") and c.builtin("LIVEPATCH") and not c.modular("LIVEPATCH")
    assert c.enabled("EXT4_FS") and c.modular("EXT4_FS") and not c.builtin("EXT4_FS")
    assert not c.enabled("KALLSYMS_ABSOLUTE_PERCPU")
    assert c.get("KALLSYMS_ABSOLUTE_PERCPU") is None
    assert c.get("NOT_MENTIONED") is None and not c.enabled("NOT_MENTIONED")
    assert c.get("LOCALVERSION") == ""
    assert c.get("BUILD_SALT") == "6.1.0-56-amd64"
    assert c.get("CC_VERSION_TEXT") == "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
    assert c.get("ESCAPED") == 'a "quoted" \\ path'
    assert c.get_int("NR_CPUS") == 8192
    assert c.get_int("PHYSICAL_START") == 0x1000000
    assert c.get_int("NOT_MENTIONED") is None
    assert "KALLSYMS" in c and "KALLSYMS_ABSOLUTE_PERCPU" not in c
    assert not c.enabled("LOCALVERSION_AUTO")


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(KernelSourceError, match=r"^x\.config:3: not a \.config line"):
        KernelConfig.from_text("CONFIG_A=y\n\nthis is junk\n", "x.config")
    with pytest.raises(KernelSourceError, match=r"x\.config:1: unterminated string"):
        KernelConfig.from_text('CONFIG_A="open\n', "x.config")
    with pytest.raises(KernelSourceError, match="is not a number"):
        KernelConfig.from_text("CONFIG_A=y\n").get_int("A")
    missing = tmp_path / "nope" / ".config"
    with pytest.raises(KernelSourceError) as shown:
        KernelConfig.from_path(missing)
    assert re.search(rf"^{missing}: no such file.*--config", message(shown.value))
    binary = tmp_path / "bin.config"
    binary.write_bytes(b"\x7fELF\0\0\0")
    with pytest.raises(KernelSourceError, match="binary file"):
        KernelConfig.from_path(binary)
    assert issubclass(KernelSourceError, KlpsymError)


@pytest.mark.parametrize(("release", "numbers"), [
    ("6.1.0-56-amd64", (6, 1, 0)),
    ("6.12.48+deb13-amd64", (6, 12, 48)),
    ("7.0.1-amd64", (7, 0, 1)),
    ("5.8.0", (5, 8, 0)),
    ("5.10", (5, 10, 0)),
    ("6.18.44-fc-v769", (6, 18, 44)),
    ("4.19.0-27-cloud-amd64\n", (4, 19, 0)),
])
def test_version_parse(release: str, numbers: tuple[int, int, int]) -> None:
    v = KernelVersion.parse(release)
    assert v.as_tuple == numbers
    assert v.release == release.strip()
    assert str(v) == release.strip()


def test_version_compare() -> None:
    v = KernelVersion.parse("6.1.0-56-amd64")
    assert v >= (6, 1) and v == (6, 1, 0) and v < (6, 2) and v > (5, 19, 99)
    assert KernelVersion.parse("6.12.48+deb13-amd64") > v
    assert KernelVersion.parse("6.1.0-a") == KernelVersion.parse("6.1.0-b")
    assert len({KernelVersion.parse("6.1.0-a"), KernelVersion.parse("6.1.0-b")}) == 1
    with pytest.raises(KernelSourceError, match="does not start with MAJOR.MINOR"):
        KernelVersion.parse("linux-6.1")


def test_version_rules() -> None:
    p = KernelVersion.parse
    assert ksym_name_len(p("6.0.19")) == 128
    assert ksym_name_len(p("6.1.0-56-amd64")) == 512
    assert ksym_name_len(p("7.0.1-amd64")) == 512
    assert klp_sym_name_max(p("6.1.0")) == 511
    assert klp_sym_name_max(p("5.10.0")) == 127
    assert not supports_klp_for_plain_modules(p("5.7.19"))
    assert supports_klp_for_plain_modules(p("5.8.0"))
    assert supports_klp_for_plain_modules(p("6.12.48+deb13-amd64"))
    assert not kallsyms_keeps_start_stop(p("6.9.12")) and kallsyms_keeps_start_stop(p("6.10"))
    assert not kallsyms_input_is_mksysmap(p("6.0")) and kallsyms_input_is_mksysmap(p("6.1"))


def _kdir(tmp_path: Path, *, uts: str | None, release_file: str | None,
          version_h: str | None) -> Path:
    kdir = tmp_path / "kdir"
    (kdir / "include" / "generated" / "uapi" / "linux").mkdir(parents=True)
    (kdir / "include" / "config").mkdir(parents=True)
    if uts is not None:
        (kdir / "include" / "generated" / "utsrelease.h").write_text(
            f'#define UTS_RELEASE "{uts}"\n')
    if release_file is not None:
        (kdir / "include" / "config" / "kernel.release").write_text(release_file + "\n")
    if version_h is not None:
        (kdir / "include" / "generated" / "uapi" / "linux" / "version.h").write_text(version_h)
    return kdir


DEBIAN_VERSION_H = """\
#define LINUX_VERSION_CODE 393664
#define KERNEL_VERSION(a,b,c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))
#define LINUX_VERSION_MAJOR 6
#define LINUX_VERSION_PATCHLEVEL 1
#define LINUX_VERSION_SUBLEVEL 192
"""


def test_read_kernel_version_debian_layout(tmp_path: Path) -> None:
    # Debian's headers: kernel.release holds the upstream version, UTS_RELEASE uname -r
    kdir = _kdir(tmp_path, uts="6.1.0-56-amd64", release_file="6.1.192",
                 version_h=DEBIAN_VERSION_H)
    v = read_kernel_version(kdir)
    assert v.release == "6.1.0-56-amd64"
    assert v.as_tuple == (6, 1, 192)


def test_read_kernel_version_fallbacks(tmp_path: Path) -> None:
    kdir = _kdir(tmp_path, uts=None, release_file="5.10.0-custom", version_h=None)
    assert read_kernel_version(kdir).as_tuple == (5, 10, 0)
    (kdir / "include" / "generated" / "uapi" / "linux" / "version.h").write_text(
        "#define LINUX_VERSION_CODE 330299\n")  # 5.10.59
    assert read_kernel_version(kdir).as_tuple == (5, 10, 59)


def test_read_kernel_version_missing(tmp_path: Path) -> None:
    with pytest.raises(KernelSourceError, match="not a configured kernel build or headers"):
        read_kernel_version(tmp_path)


