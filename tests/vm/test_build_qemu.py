"""End to end for ``klpsym build``, on each suite (bookworm, trixie, sid; see
conftest.py): modules built by ``klpsym build`` (the two_modules dir:
tm_provider.ko and tm_user.ko; module_ns.ko) and by plain ``make`` through the
README's Makefile snippet (snippet.ko) are loaded in ONE KASLR boot per
suite; what they print is checked against /proc/kallsyms of the same boot.
On kernels with kbuild's MO= (6.13+: sid) the composite two_files.ko is built
with ``-- MO=OUTDIR`` and loaded from OUTDIR too; older ones must refuse MO=.

Where this machine has the suite's compiler (bookworm) ``klpsym build
--kernel-dir`` runs make here; elsewhere ``klpsym lab build SUITE`` and, for
the snippet, ``klpsym build --chroot`` run it in the suite's chroot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import (
    GUEST_HELPERS,
    CaseResult,
    GuestRun,
    assert_steps_ok,
    boot_guest,
    function_pointer,
    hex_addr,
    restricted,
    thunk_kv,
)

from klpsym.kbuild import ChrootRunner
from klpsym.kbuild.build import MO_SINCE
from klpsym.kernel.version import KernelVersion
from klpsym.lab.build import runner
from klpsym.lab.provision import Kernel

REPO = Path(__file__).resolve().parents[2]
KLPSYM = [sys.executable, "-m", "klpsym.cli.main"]
NAMES = ("kallsyms_lookup_name", "dmesg_restrict", "kptr_restrict", "cr4_read_shadow", "_stext",
         "_printk")
TWO_FILES = REPO / "tests/modules/two_files"


@dataclass
class Run:
    built: dict[str, subprocess.CompletedProcess[str]]
    mo: subprocess.CompletedProcess[str]  # the MO= build (refused before 6.13)
    mo_dirs: tuple[Path, Path]  # its source dir and OUTDIR
    guest: GuestRun | None = None  # None: a build failed, nothing was booted

    def booted(self) -> GuestRun:
        assert_steps_ok(self.built)
        assert self.guest is not None
        return self.guest

    def case(self, name: str) -> CaseResult:
        return self.booted().case(name)

    def addr(self, name: str) -> int:
        return self.booted().address(name)


def has_mo(kernel: Kernel) -> bool:
    return KernelVersion.parse(kernel.release) >= MO_SINCE


def klpsym_build(kernel: Kernel, kallsyms_file: Path, directory: Path, *make_args: str,
                 ) -> subprocess.CompletedProcess[str]:
    """``klpsym build`` here when this machine has the suite's compiler, else
    ``klpsym lab build SUITE`` (make in the suite's chroot)."""
    where, kdir = runner(kernel)
    if isinstance(where, ChrootRunner):
        cmd = [*KLPSYM, "lab", "build", kernel.suite, str(directory)]
    else:
        cmd = [*KLPSYM, "build", str(directory), "--kernel-dir", str(kdir),
               "--kallsyms", str(kallsyms_file)]
    if make_args:
        cmd += ["--", *make_args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def run(kernel: Kernel, kallsyms_file: Path, tmp_path_factory: pytest.TempPathFactory,
        ) -> Iterator[Run]:
    root = tmp_path_factory.mktemp(f"klpsym_build-{kernel.suite}")
    two, snip, ns = root / "two_modules", root / "make_snippet", root / "module_ns"
    shutil.copytree(REPO / "tests/modules/two_modules", two)
    shutil.copytree(REPO / "tests/modules/make_snippet", snip)
    shutil.copytree(REPO / "tests/modules/module_ns", ns)
    mo_src, mo_out = root / "two_files", root / "two_files.out"
    shutil.copytree(TWO_FILES, mo_src)
    where, kdir = runner(kernel)
    flags = f"--kallsyms {kallsyms_file}"
    if isinstance(where, ChrootRunner):
        flags += f" --chroot {where.root}"
    built = {
        "klpsym build two_modules": klpsym_build(kernel, kallsyms_file, two),
        "klpsym build module_ns": klpsym_build(kernel, kallsyms_file, ns),
        "make (snippet)": subprocess.run(
            ["make", "-C", str(snip), f"KDIR={kdir}", f"KLPSYM={' '.join(KLPSYM)}",
             f"KLPSYM_FLAGS={flags}"],
            capture_output=True, text=True, timeout=600, check=False,
            env=dict(os.environ, PYTHONPATH=str(REPO / "src"))),
    }
    mo = klpsym_build(kernel, kallsyms_file, mo_src, f"MO={mo_out}")
    if has_mo(kernel):
        built["klpsym build two_files -- MO="] = mo
    if any(p.returncode for p in built.values()):
        yield Run(built, mo, (mo_src, mo_out))
        return
    files = {"tm_provider.ko": two / "tm_provider.ko", "tm_user.ko": two / "tm_user.ko",
             "snippet.ko": snip / "snippet.ko", "module_ns.ko": ns / "module_ns.ko"}
    if has_mo(kernel):
        files["two_files.ko"] = mo_out / "two_files.ko"
    script = GUEST_HELPERS + (
        "begin two_modules\ninsmod /lab/tm_provider.ko; kv provider_rc $?\n"
        + thunk_kv("kallsyms_lookup_name", "tm_provider") +
        "load /lab/tm_user.ko\nkv sysctl_dmesg_restrict $(cat /proc/sys/kernel/dmesg_restrict)\n"
        "end two_modules\n"
        "begin snippet\nload /lab/snippet.ko\n" + thunk_kv("kallsyms_lookup_name", "snippet") +
        "kv sysctl_kptr_restrict $(cat /proc/sys/kernel/kptr_restrict)\nend snippet\n"
        "begin module_ns\nload /lab/module_ns.ko\n" + thunk_kv("cr4_read_shadow", "module_ns") +
        "end module_ns\n"
        f"grep -E ' ({'|'.join(NAMES)})$' /proc/kallsyms | sed 's/^/@@kallsyms /'\n"
    )
    if has_mo(kernel):
        script += ("begin two_files\nload /lab/two_files.ko\n"
                   "kv sysctl_kptr_restrict $(cat /proc/sys/kernel/kptr_restrict)\n"
                   "end two_files\n")
    yield Run(built, mo, (mo_src, mo_out), boot_guest(kernel, files, script))


def test_klpsym_build_two_modules(kernel: Kernel, run: Run) -> None:
    case = run.case("two_modules")
    assert case.kv.get("provider_rc") == "0", case.log()
    assert case.kv.get("insmod_rc") == "0", case.log()  # tm_user, after tm_provider
    prov = case.record("tm_provider", "fn")
    want = function_pointer(kernel, case, "kallsyms_lookup_name", run.addr("kallsyms_lookup_name"))
    assert hex_addr(prov["fn"]) == want, prov
    user = case.record("tm_user", "addr", "got")
    want = run.addr("dmesg_restrict")
    assert hex_addr(user["addr"]) == want and hex_addr(user["got"]) == want, user
    assert user["match"] == "1" and user["value"] == case.kv["sysctl_dmesg_restrict"], user


def test_make_snippet_module(kernel: Kernel, run: Run) -> None:
    case = run.case("snippet")
    assert case.kv.get("insmod_rc") == "0", case.log()
    rec = case.record("snippet", "addr", "got", "fn")
    want = run.addr("kptr_restrict")
    assert hex_addr(rec["addr"]) == want and hex_addr(rec["got"]) == want, rec
    want = function_pointer(kernel, case, "kallsyms_lookup_name", run.addr("kallsyms_lookup_name"))
    assert hex_addr(rec["fn"]) == want, rec
    assert rec["match"] == "1" and rec["value"] == case.kv["sysctl_kptr_restrict"], rec


def test_module_only_export(kernel: Kernel, run: Run) -> None:
    """cr4_read_shadow: klpsym build converts it where the kernel exports it for
    kvm only (sid's 7.x), and leaves it an ordinary import where it does not."""
    case = run.case("module_ns")
    assert case.kv.get("insmod_rc") == "0", case.log()
    rec = case.record("module_ns", "fn", "shadow", "cr4")
    if restricted(kernel.kernel_dir, "cr4_read_shadow", "module_ns"):
        want = function_pointer(kernel, case, "cr4_read_shadow", run.addr("cr4_read_shadow"))
    else:  # an ordinary import: the kernel's own address
        want = run.addr("cr4_read_shadow")
    assert hex_addr(rec["fn"]) == want, rec
    assert rec["match"] == "1" and rec["pae"] == "1", rec
    out = run.built["klpsym build module_ns"].stdout
    row = next(ln for ln in out.splitlines() if ln.startswith("module_ns.ko "))
    if restricted(kernel.kernel_dir, "cr4_read_shadow", "module_ns"):
        assert "cr4_read_shadow" in row, out
        assert "note: cr4_read_shadow is exported for named modules only" in out, out
    else:
        assert "cr4_read_shadow" not in row, out


def test_separate_output_dir(kernel: Kernel, run: Run) -> None:
    """``-- MO=OUTDIR``: on 6.13+ (sid) the composite two_files.ko is built in
    OUTDIR, the sources stay as they were, and the converted .ko loads and
    resolves kallsyms_lookup_name, core_kernel_text and kptr_restrict in a
    KASLR boot; older kbuilds have no MO=, and klpsym build says so."""
    src, out = run.mo_dirs
    if not has_mo(kernel):
        assert run.mo.returncode == 2, run.mo.stdout + run.mo.stderr
        assert f"kernel {kernel.release}'s kbuild has no MO=" in run.mo.stderr, run.mo.stderr
        assert not out.exists()
    else:
        case = run.case("two_files")
        assert case.kv.get("insmod_rc") == "0", case.log()
        row = next(ln for ln in run.mo.stdout.splitlines() if ln.startswith("two_files.ko "))
        for name in ("kallsyms_lookup_name", "core_kernel_text", "kptr_restrict"):
            assert name in row, run.mo.stdout
        a = case.record("two_files", part="a")
        assert hex_addr(a["got"]) == hex_addr(a["want"]) == run.addr("_printk"), a
        assert a["match"] == "1", a
        b = case.record("two_files", part="b")
        assert hex_addr(b["addr"]) == run.addr("kptr_restrict"), b
        assert b["kptr_restrict"] == case.kv["sysctl_kptr_restrict"], b
        assert b["core_text_printk"] == "1" and b["core_text_module"] == "0", b
        assert (out / "modules.order").read_text().split() == ["two_files.o"]
    # the sources: nothing built, nothing added
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in TWO_FILES.iterdir())
    for p in TWO_FILES.iterdir():
        assert (src / p.name).read_bytes() == p.read_bytes(), p.name


def test_boot_is_clean(run: Run) -> None:
    run.case("snippet")
    run.booted().assert_clean()
