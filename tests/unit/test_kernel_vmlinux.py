"""klpsym.kernel.vmlinux: nm's view of an ELF .symtab, and the kallsyms
table a vmlinux ends up with."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kallsyms_support import NM, mine, nm_lines
from klpsym.cli.main import message
from klpsym.elf import ElfFile
from klpsym.errors import KernelSourceError
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.system_map import read_system_map
from klpsym.kernel.version import KernelVersion
from klpsym.kernel.vmlinux import banner_version, kallsyms_from_vmlinux, nm_symbols
from vmlinux_builder import (
    SAMPLE_KALLSYMS_ALL,
    SAMPLE_KALLSYMS_TEXT,
    STB_GLOBAL,
    STT_FUNC,
    XSym,
    sample_image,
)

ALL = KernelConfig.from_text("CONFIG_KALLSYMS_ALL=y\nCONFIG_KALLSYMS_ABSOLUTE_PERCPU=y\n")
TEXT_ONLY = KernelConfig.from_text("CONFIG_KALLSYMS_ABSOLUTE_PERCPU=y\n")


def rows(t):  # type: ignore[no-untyped-def]
    return [(str(a), str(b)) for a, b in zip(t.types, t.names, strict=True)]


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    p = tmp_path / "vmlinux"
    p.write_bytes(sample_image().to_bytes())
    return p


@pytest.mark.skipif(NM is None, reason="binutils nm not installed")
def test_nm_view_matches_binutils(sample: Path) -> None:
    assert mine(sample) == nm_lines(sample)


@pytest.mark.skipif(NM is None or shutil.which("gcc") is None and shutil.which("gcc-12") is None,
                    reason="needs a C compiler and nm")
def test_nm_view_of_a_compiled_executable(tmp_path: Path) -> None:
    cc = shutil.which("gcc") or shutil.which("gcc-12")
    assert cc is not None
    (tmp_path / "a.c").write_text(
        "static int dup(int x) { return x + 1; }\nstatic int dupv = 3;\nint gdata = 5;\n"
        "int gbss;\nconst int gro = 7;\n__attribute__((weak)) int wfn(void) { return 1; }\n"
        "__attribute__((weak)) int wobj = 2;\nextern int uw(void) __attribute__((weak));\n"
        "int use_a(void) { return dup(dupv) + (uw ? uw() : 0); }\nvoid _start(void) {}\n")
    (tmp_path / "b.c").write_text(
        "static int dup(int x) { return x * 2; }\nstatic int dupv = 4;\n"
        "int use_b(void) { return dup(dupv); }\n")
    exe = tmp_path / "t"
    subprocess.run([cc, "-O0", "-nostdlib", "-static", "-o", str(exe), str(tmp_path / "a.c"),
                    str(tmp_path / "b.c")], check=True, capture_output=True, timeout=120)
    got = mine(exe)
    assert got == nm_lines(exe)
    assert sum(line.endswith(" t dup") for line in got) == 2


def test_kallsyms_from_sample_vmlinux(sample: Path) -> None:
    t = kallsyms_from_vmlinux(sample, ALL)
    assert rows(t) == SAMPLE_KALLSYMS_ALL
    assert [c.pos for c in t.candidates("dup")] == [1, 2, 3, 4, 5]
    assert t.has_addresses and t.source == str(sample)
    start = t.candidates("_stext")[0]
    assert start.address == 0xFFFFFFFF81000000
    assert rows(kallsyms_from_vmlinux(sample, TEXT_ONLY)) == SAMPLE_KALLSYMS_TEXT
    # the version comes from linux_banner unless given
    assert banner_version(ElfFile.from_path(sample, relocatable_only=False)) == \
        KernelVersion.parse("6.1.0-99-test")
    newer = kallsyms_from_vmlinux(sample, TEXT_ONLY, KernelVersion.parse("6.12.0"))
    assert "__start___tracepoints" in newer
    # before ~6.1 kallsyms read nm directly: __kstrtab_* were in kallsyms
    older = kallsyms_from_vmlinux(sample, ALL, KernelVersion.parse("5.10.0"))
    assert "__kstrtab_dup_export" in older
    assert "__kstrtab_dup_export" not in kallsyms_from_vmlinux(sample, ALL)


def test_vmlinux_and_system_map_agree(sample: Path, tmp_path: Path) -> None:
    a, t, n = nm_symbols(ElfFile.from_path(sample, relocatable_only=False))
    lines = [f"{x:016x} {y} {z}\n" for x, y, z in zip(a.tolist(), t.tolist(), n.tolist(),
                                                      strict=True)
             if y not in "aNUw" and not z.startswith(("$", ".L", "__crc_", "__kstrtab_"))]
    (tmp_path / "System.map").write_text("".join(lines))
    for cfg in (ALL, TEXT_ONLY):
        from_map = read_system_map(tmp_path / "System.map", config=cfg,
                                   version=KernelVersion.parse("6.1.0-99-test"))
        from_elf = kallsyms_from_vmlinux(sample, cfg)
        assert rows(from_map) == rows(from_elf)
        assert from_map.addresses.tolist() == from_elf.addresses.tolist()


def test_no_banner(tmp_path: Path) -> None:
    img = sample_image()
    img.symbols = [s for s in img.symbols if s.name != "linux_banner"]
    img.symbols.append(XSym("other", 0xFFFFFFFF81000010, ".text", STB_GLOBAL, STT_FUNC))
    p = tmp_path / "vmlinux"
    p.write_bytes(img.to_bytes())
    assert banner_version(ElfFile.from_path(p, relocatable_only=False)) is None
    t = kallsyms_from_vmlinux(p, ALL)  # rules of 6.1 assumed
    assert "other" in t and any("v6.1 assumed" in note for note in t.notes)


def test_bad_vmlinux(tmp_path: Path) -> None:
    p = tmp_path / "vmlinux"
    p.write_bytes(b"not an elf at all")
    with pytest.raises(KernelSourceError) as shown:
        kallsyms_from_vmlinux(p, ALL)
    assert re.search("--vmlinux needs an uncompressed vmlinux ELF", message(shown.value))
    with pytest.raises(KernelSourceError, match="cannot read|no such"):
        kallsyms_from_vmlinux(tmp_path / "missing", ALL)




