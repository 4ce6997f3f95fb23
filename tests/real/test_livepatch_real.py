"""A livepatch module built against Debian's real headers (no boot;
bookworm with gcc 12, trixie with gcc 14 in its chroot): ``klpsym build
--target-module`` on tests/modules/lpc_patch, which uses statics of
tests/modules/lpc_target through klpsym.h's KLP_MODULE_RELOC/KLP_SYMPOS.
The proof that such a module works in QEMU is tests/vm's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from klpsym.elf import ElfFile
from klpsym.elf.constants import SHN
from klpsym.errors import ModuleError
from klpsym.kbuild import ChrootRunner
from klpsym.lab.build import runner
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms
from klpsym.methods.header import include_dir
from klpsym.module.kallsyms import TargetModules

REPO = Path(__file__).resolve().parents[2]
KLPSYM = [sys.executable, "-m", "klpsym.cli.main"]
MAKE_KLPSYM = f"KLPSYM={sys.executable} -m klpsym.cli.main"


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KLPSYM, *map(str, args)], capture_output=True, text=True,
                          timeout=600, check=False, cwd=cwd)


class Built(NamedTuple):
    kernel: Kernel
    kallsyms: Path
    target: Path  # lpc_target.ko
    patch: Path  # lpc_patch.ko, converted


#: bookworm builds with the host's gcc 12, trixie in its chroot with gcc 14.
@pytest.fixture(scope="module", params=["bookworm", "trixie"])
def built(request: pytest.FixtureRequest, kernel_of: Callable[[str], Kernel],
          tmp_path_factory: pytest.TempPathFactory) -> Built:
    kernel = kernel_of(request.param)
    where, kdir = runner(kernel)
    kallsyms = capture_kallsyms(kernel)
    tmp = tmp_path_factory.mktemp(f"lpc-{kernel.suite}")
    for name in ("lpc_target", "lpc_patch"):
        shutil.copytree(REPO / "tests/modules" / name, tmp / name)
    chroot: tuple[str | Path, ...] = ()
    make: tuple[str, ...] = ("--", MAKE_KLPSYM)
    if isinstance(where, ChrootRunner):
        # klpsym itself does not run in the chroot: klpsym.h goes beside
        # the source, and the flags `klpsym cflags --method klp` would give.
        chroot = ("--chroot", where.root)
        shutil.copy(include_dir() / "klpsym.h", tmp / "lpc_patch")
        kbuild = tmp / "lpc_patch" / "Kbuild"
        kbuild.write_text(kbuild.read_text().replace(
            "$(shell $(KLPSYM) cflags --method klp)",
            "-I$(src) -DKLPSYM_METHOD=KLPSYM_METHOD_KLP"))
        make = ()
    source = ("--kernel-dir", kdir, "--kallsyms", kallsyms, *chroot)
    proc = run("build", "lpc_target", *source, cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    target = tmp / "lpc_target" / "lpc_target.ko"
    proc = run("build", "lpc_patch", *source, "--target-module", target, *make, cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "undefined!" not in proc.stdout + proc.stderr
    return Built(kernel, kallsyms, target, tmp / "lpc_patch" / "lpc_patch.ko")


def test_build_converts_module_objects_and_drops_annotations(built: Built) -> None:
    ko = built.patch
    elf = ElfFile.from_path(ko)
    st = elf.symtab
    names = st.names()
    klp = {names[i] for i in st.special(SHN.LIVEPATCH).tolist()}
    assert klp == {".klp.sym.lpc_target.homonym,2", ".klp.sym.lpc_target.lpc_data,0",
                   ".klp.sym.vmlinux.kallsyms_lookup_name,0"}, klp
    sections = [s.name for s in elf.sections]
    assert ".klp.rela.lpc_target..text" in sections
    assert ".klp.rela.vmlinux..text" in sections
    assert not [s for s in sections if "module_relocs" in s]
    assert "lpc_target_relocs" not in names


def test_the_annotation_section_is_exact_before_conversion(built: Built) -> None:
    """klpsym.h's KLP_MODULE_RELOC with the kernel's headers and gcc: the
    object file (before conversion) has the section by its exact name, one
    12-byte entry with POS 2, kept although static and unused."""
    ko = built.patch
    obj = ElfFile.from_path(ko.with_suffix(".o"))
    sec = obj.section_by_name(".klp.module_relocs.lpc_target")
    assert sec is not None and sec.size == 12
    assert bytes(sec.content())[8:12] == (2).to_bytes(4, "little")


def test_inspect_and_check_accept_the_livepatch(built: Built) -> None:
    ko = built.patch
    proc = run("inspect", ko, "--klp")
    assert proc.returncode == 0, proc.stderr
    assert "a livepatch module" in proc.stdout and "objects: lpc_target, vmlinux" in proc.stdout
    assert "all follow the loader's rules" in proc.stdout
    proc = run("check", ko, "--kernel-dir", built.kernel.kernel_dir, "--kallsyms",
               built.kallsyms)
    assert "needs target module lpc_target" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("suite", ["bookworm", "trixie", "sid"])
def test_target_module_by_name_in_the_kernel_tree(kernel_of: Callable[[str], Kernel],
                                                  suite: str) -> None:
    """--target-module NAME finds the module in the provisioned kernel's
    /lib/modules/R tree (Debian's are .ko.xz since trixie) and reads its
    symbol table in file order: ext4's kallsyms has ext4_fill_super."""
    kernel = kernel_of(suite)
    (ext4,) = TargetModules(["ext4"], kernel.release, kernel.kernel_dir).given
    assert ext4.name == "ext4" and ext4.path.is_relative_to(kernel.root)
    assert ext4.path.name in ("ext4.ko", "ext4.ko.xz", "ext4.ko.zst")
    (cand,) = ext4.candidates("ext4_fill_super")
    assert ext4.kind(cand) == "text" and bool(ext4.core[cand.index])
    with pytest.raises(ModuleError, match="has no module of that name"):
        _ = TargetModules(["no_such_module"], kernel.release, kernel.kernel_dir).given
