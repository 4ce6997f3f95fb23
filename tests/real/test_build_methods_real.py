"""``klpsym build --method`` against Debian bookworm's real 6.1 headers (no
boot; tests/e2e/test_methods_qemu.py loads the methods in QEMU).

tests/modules/method_build says ``ccflags-y += $(shell $(KLPSYM) cflags)``:
the method comes from klpsym build, through make's environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from klpsym.elf import ElfFile
from klpsym.elf.constants import SHN
from klpsym.kbuild import ChrootRunner
from klpsym.lab.build import runner
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms
from klpsym.module.modinfo import read_modinfo

REPO = Path(__file__).resolve().parents[2]
KLPSYM = [sys.executable, "-m", "klpsym.cli.main"]
MAKE_KLPSYM = f"KLPSYM={sys.executable} -m klpsym.cli.main"


@pytest.fixture(scope="module")
def kallsyms(bookworm: Kernel) -> Path:
    return capture_kallsyms(bookworm)


def build(kernel: Kernel, kallsyms: Path, tmp_path: Path, *extra: str,
          config: Path | None = None) -> tuple[subprocess.CompletedProcess[str], Path]:
    src = tmp_path / "method_build"
    shutil.copytree(REPO / "tests/modules/method_build", src)
    cfg = ["--config", str(config)] if config else []
    proc = subprocess.run(
        [*KLPSYM, "build", str(src), "--kernel-dir", str(kernel.kernel_dir),
         "--kallsyms", str(kallsyms), *cfg, *extra, "--", MAKE_KLPSYM],
        capture_output=True, text=True, timeout=600, check=False)
    return proc, src / "mb.ko"


def undefined_and_livepatch(ko: Path) -> tuple[set[str], set[str]]:
    st = ElfFile.from_path(ko).symtab
    names = st.names()
    und = {names[i] for i in st.undefined().tolist()}
    klp = {names[i] for i in st.special(SHN.LIVEPATCH).tolist()}
    return und, klp


def test_klp_method_converts(bookworm: Kernel, kallsyms: Path, tmp_path: Path) -> None:
    proc, ko = build(bookworm, kallsyms, tmp_path, "--method", "klp")
    assert proc.returncode == 0, proc.stderr
    assert read_modinfo(ElfFile.from_path(ko)).get("klpsym_method") == "klp"
    und, klp = undefined_and_livepatch(ko)
    assert {".klp.sym.vmlinux.kallsyms_lookup_name,0",
            ".klp.sym.vmlinux.dmesg_restrict,0"} <= klp, klp
    assert "kallsyms_lookup_name" not in und


@pytest.mark.parametrize("method", ["kallsyms", "kprobe"])
def test_other_methods_build_strict_and_convert_nothing(bookworm: Kernel, kallsyms: Path,
                                                        tmp_path: Path, method: str) -> None:
    proc, ko = build(bookworm, kallsyms, tmp_path, "--method", method)
    assert proc.returncode == 0, proc.stderr
    assert f"method {method}: asked for with --method" in proc.stdout
    info = read_modinfo(ElfFile.from_path(ko))
    assert info.get("klpsym_method") == method
    assert sorted(info.get_all("klpsym_symbol")) == ["dmesg_restrict,0,var",
                                                     "kallsyms_lookup_name,0,func"]
    und, klp = undefined_and_livepatch(ko)
    assert not klp and not {"kallsyms_lookup_name", "dmesg_restrict"} & und, und
    assert ("register_kprobe" in und) == (method == "kprobe")
    assert "sprint_symbol" in und  # the address check against the kernel's kallsyms
    if method == "kallsyms":
        assert "klpsym insmod" in proc.stdout


def test_auto_picks_klp_and_says_why(bookworm: Kernel, kallsyms: Path, tmp_path: Path) -> None:
    proc, ko = build(bookworm, kallsyms, tmp_path, "--method", "auto")
    assert proc.returncode == 0, proc.stderr
    assert f"method klp: {bookworm.release} is >= 5.8 with CONFIG_LIVEPATCH=y" in proc.stdout
    assert read_modinfo(ElfFile.from_path(ko)).get("klpsym_method") == "klp"


def test_auto_without_livepatch_picks_kprobe(bookworm: Kernel, kallsyms: Path,
                                             tmp_path: Path) -> None:
    config = tmp_path / "config-no-livepatch"
    text = bookworm.config.read_text()
    assert "CONFIG_LIVEPATCH=y" in text
    config.write_text(text.replace("CONFIG_LIVEPATCH=y", "# CONFIG_LIVEPATCH is not set"))
    proc, ko = build(bookworm, kallsyms, tmp_path, "--method", "auto", config=config)
    assert proc.returncode == 0, proc.stderr
    assert f"method kprobe: {bookworm.release} has no CONFIG_LIVEPATCH; CONFIG_KPROBES=y" \
        in proc.stdout
    assert read_modinfo(ElfFile.from_path(ko)).get("klpsym_method") == "kprobe"


def test_sympos_is_refused_outside_klp(bookworm: Kernel, kallsyms: Path, tmp_path: Path) -> None:
    proc, _ = build(bookworm, kallsyms, tmp_path, "--method", "kallsyms",
                    "--sympos", "kallsyms_lookup_name=1")
    assert proc.returncode == 2
    assert "--sympos is for the klp method" in proc.stderr


def test_kprobe_method_with_mo_on_7x(sid: Kernel, tmp_path: Path) -> None:
    """sid (7.x): ``--method kprobe -- MO=OUT`` in the suite's chroot: the .ko
    files are read from OUT (where kbuild put modules.order) and the sources
    stay clean.  klpsym.h is copied next to the sources, as the chroot cannot
    run the host's ``klpsym cflags``."""
    where, kdir = runner(sid)
    assert isinstance(where, ChrootRunner)
    flags = subprocess.run([*KLPSYM, "cflags", "--method", "kprobe"], capture_output=True,
                           text=True, check=True).stdout.split()
    src, out = tmp_path / "methods", tmp_path / "out"
    shutil.copytree(REPO / "tests/modules/methods", src)
    (src / "include").mkdir()
    shutil.copy(Path(flags[0][2:]) / "klpsym.h", src / "include")
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    proc = subprocess.run(
        [*KLPSYM, "build", str(src), "--chroot", str(where.root), "--kernel-dir", str(kdir),
         "--kallsyms", str(capture_kallsyms(sid)), "--method", "kprobe", "--",
         f"MO={out}", "KLPSYM_TEST_METHOD=kprobe", f"KLPSYM_CFLAGS=-I$(src)/include {flags[1]}"],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before
    for name in ("klpsym_kprobe", "sealed_kprobe"):
        assert f"  {out}/{name}.ko: " in proc.stdout, proc.stdout
        info = read_modinfo(ElfFile.from_path(out / f"{name}.ko"))
        assert info.get("klpsym_method") == "kprobe"
