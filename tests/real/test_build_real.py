"""``klpsym build`` against Debian bookworm's real 6.1 headers (no boot).

Each test builds a copy of a fixture from tests/modules with the command line
exactly as a user would and checks kbuild's output, the exit status and the
.ko files with readelf."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from klpsym.kbuild import ChrootRunner
from klpsym.lab.build import runner
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms
from klpsym.module.ko import read_module
from klpsym.module.signature import MODULE_SIG_STRING
from process_support import naming, until

REPO = Path(__file__).resolve().parents[2]
MODULES = REPO / "tests/modules"
KLPSYM = [sys.executable, "-m", "klpsym.cli.main"]


@pytest.fixture(scope="module")
def kallsyms(bookworm: Kernel) -> Path:
    return capture_kallsyms(bookworm)


def copy(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(MODULES / name, dest)
    return dest


def klpsym_build(kernel: Kernel, kallsyms: Path, directory: Path,
                 *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KLPSYM, "build", str(directory), "--kernel-dir", str(kernel.kernel_dir),
         "--kallsyms", str(kallsyms), *extra],
        capture_output=True, text=True, timeout=600, check=False)


def symbols(ko: Path) -> dict[str, str]:
    """name -> section index column of readelf -s (UND, a number, or OS [0xff20])."""
    out = subprocess.run(["readelf", "-sW", str(ko)], capture_output=True, text=True,
                         check=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*\d+: \S+\s+\d+ \S+\s+\S+\s+\S+\s+(UND|OS \[0xff20\]|\S+) (\S+)$", line)
        if m:
            found[m.group(2)] = m.group(1)
    return found


def versions(ko: Path) -> str:
    return (ko.with_suffix(".mod.c")).read_text()


def test_single_and_composite(bookworm: Kernel, kallsyms: Path, tmp_path: Path) -> None:
    for name, ko_name, wanted in [
        ("call_func", "call_func.ko", {"kallsyms_lookup_name"}),
        ("two_files", "two_files.ko", {"kallsyms_lookup_name", "core_kernel_text",
                                        "kptr_restrict"}),
    ]:
        d = copy(name, tmp_path)
        proc = klpsym_build(bookworm, kallsyms, d)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "undefined!" not in proc.stdout + proc.stderr
        assert "WARNING: modpost" not in proc.stdout + proc.stderr
        assert "MODPOST" in proc.stdout and f"LD [M]  {d}/{ko_name}" in proc.stdout
        syms = symbols(d / ko_name)
        for n in wanted:
            assert syms.get(f".klp.sym.vmlinux.{n},0") == "OS [0xff20]", syms
            assert n not in syms
            # modpost took the name as a vmlinux export with CRC 0
            assert re.search(rf'\{{\s*0, "{n}" \}}', versions(d / ko_name))
        # piped: the table as plain columns (box tables are for terminals)
        row = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"{ko_name} "))
        assert all(n in row for n in wanted), proc.stdout
        assert syms.get("_printk") == "UND"  # exported: untouched


def test_two_modules_one_dir(bookworm: Kernel, kallsyms: Path, tmp_path: Path) -> None:
    d = copy("two_modules", tmp_path)
    proc = klpsym_build(bookworm, kallsyms, d)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "undefined!" not in proc.stdout + proc.stderr
    provider, user = symbols(d / "tm_provider.ko"), symbols(d / "tm_user.ko")
    assert provider[".klp.sym.vmlinux.kallsyms_lookup_name,0"] == "OS [0xff20]"
    assert user[".klp.sym.vmlinux.dmesg_restrict,0"] == "OS [0xff20]"
    # the sibling's export stays an ordinary dependency
    assert user["tm_provider_lookup"] == "UND"
    assert 'MODULE_INFO(depends, "tm_provider");' in versions(d / "tm_user.ko")
    # the dir's Module.symvers has the module's export only, not klpsym's names
    own = (d / "Module.symvers").read_text()
    assert "tm_provider_lookup" in own and "kallsyms_lookup_name" not in own


def test_missing_symbol_fails_like_modpost(bookworm: Kernel, kallsyms: Path,
                                           tmp_path: Path) -> None:
    d = copy("missing_sym", tmp_path)
    proc = klpsym_build(bookworm, kallsyms, d)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert ('ERROR: modpost: "klpsym_test_no_such_symbol" '
            f'[{d}/missing_sym.ko] undefined!') in proc.stderr
    # the symbol klpsym resolves is not reported
    assert "kallsyms_lookup_name" not in proc.stderr.replace(
        proc.stderr.strip().splitlines()[-1], "")
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("klpsym: error: missing_sym.ko: undefined symbol "
                           "klpsym_test_no_such_symbol is neither exported"), last
    assert not (d / "missing_sym.ko").exists()


def test_rebuild_is_idempotent(bookworm: Kernel, kallsyms: Path, tmp_path: Path) -> None:
    d = copy("call_func", tmp_path)
    assert klpsym_build(bookworm, kallsyms, d).returncode == 0
    first = (d / "call_func.ko").read_bytes()
    proc = klpsym_build(bookworm, kallsyms, d)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CC [M]" not in proc.stdout  # nothing recompiled
    assert (d / "call_func.ko").read_bytes() == first
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("call_func.ko "))
    assert "kallsyms_lookup_name" in row  # still in the table


def test_one_kbuild_run_and_a_no_change_rebuild_runs_no_modpost(
        bookworm: Kernel, kallsyms: Path, tmp_path: Path) -> None:
    """Issue 19: klpsym build runs make once (modpost waits for the names at
    klpsym's gate), and a rebuild where nothing changed runs no modpost and
    leaves the converted .ko as it was."""
    d = copy("two_modules", tmp_path)
    shim, log = tmp_path / "bin", tmp_path / "make.log"
    shim.mkdir()
    real_make = shutil.which("make")
    assert real_make is not None
    (shim / "make").write_text(  # logs the top-level make runs only
        f'#!/bin/sh\n[ -n "$MAKELEVEL" ] || echo "$*" >> {log}\nexec {real_make} "$@"\n')
    (shim / "make").chmod(0o755)
    env = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}")
    cmd = [*KLPSYM, "build", str(d), "--kernel-dir", str(bookworm.kernel_dir), "--kallsyms",
           str(kallsyms)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False,
                          env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = log.read_text().splitlines()
    assert len(runs) == 1 and runs[0].endswith(" modules"), runs
    assert proc.stdout.count("MODPOST") == 1
    built = {ko: (d / ko).read_bytes() for ko in ("tm_provider.ko", "tm_user.ko")}
    assert symbols(d / "tm_user.ko")[".klp.sym.vmlinux.dmesg_restrict,0"] == "OS [0xff20]"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False,
                          env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(log.read_text().splitlines()) == 2
    assert "MODPOST" not in proc.stdout and "CC [M]" not in proc.stdout
    assert {ko: (d / ko).read_bytes() for ko in built} == built
    assert any(ln.startswith("tm_user.ko ") and "dmesg_restrict" in ln
               for ln in proc.stdout.splitlines()), proc.stdout
    assert not (d / ".klpsym-modpost").exists()


def test_mo_refused_on_61(bookworm: Kernel, kallsyms: Path, tmp_path: Path) -> None:
    d = copy("call_func", tmp_path)
    proc = klpsym_build(bookworm, kallsyms, d, "--", f"MO={tmp_path}/out")
    assert proc.returncode == 2
    assert "has no MO=" in proc.stderr and "6.13" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not (d / "call_func.o").exists()


def test_make_snippet(bookworm: Kernel, kallsyms: Path, tmp_path: Path) -> None:
    """Plain `make` in a dir whose Makefile has the README's snippet."""
    d = copy("make_snippet", tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(
        ["make", "-C", str(d), f"KDIR={bookworm.kernel_dir}",
         f"KLPSYM={' '.join(KLPSYM)}", f"KLPSYM_FLAGS=--kallsyms {kallsyms}"],
        capture_output=True, text=True, timeout=600, check=False, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "undefined!" not in proc.stdout + proc.stderr
    syms = symbols(d / "snippet.ko")
    assert syms[".klp.sym.vmlinux.kallsyms_lookup_name,0"] == "OS [0xff20]"
    assert syms[".klp.sym.vmlinux.kptr_restrict,0"] == "OS [0xff20]"
    assert any(ln.startswith("snippet.ko ") for ln in proc.stdout.splitlines()), proc.stdout


def test_extra_symbols_replaced_by_the_makefile(bookworm: Kernel, kallsyms: Path,
                                                tmp_path: Path) -> None:
    """A Kbuild that sets KBUILD_EXTRA_SYMBOLS with ':=' drops the generated
    symvers (modpost then calls the unexported symbols undefined); klpsym's
    last line names the assignment and the fix.  With '+=' it builds."""
    d = copy("call_func", tmp_path)
    kbuild = d / "Kbuild"
    kbuild.write_text(kbuild.read_text() + "KBUILD_EXTRA_SYMBOLS := /dev/null\n")
    proc = klpsym_build(bookworm, kallsyms, d)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert 'ERROR: modpost: "kallsyms_lookup_name"' in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"klpsym: error: kbuild failed in {d} (make exit 2): Kbuild:2 "
                    "'KBUILD_EXTRA_SYMBOLS := /dev/null' replaces the KBUILD_EXTRA_SYMBOLS that "
                    "klpsym build passes in the environment (the symvers listing the unexported "
                    "symbols), so modpost called them undefined; write 'KBUILD_EXTRA_SYMBOLS +=' "
                    "instead"), last
    kbuild.write_text(kbuild.read_text().replace(":=", "+=").replace("obj-m +=", "obj-m :="))
    proc = klpsym_build(bookworm, kallsyms, d)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert symbols(d / "call_func.ko")[".klp.sym.vmlinux.kallsyms_lookup_name,0"] == "OS [0xff20]"


NS_SOURCE = """\
#include <linux/module.h>
#include <asm/tlbflush.h>
extern bool cpu_cache_has_invalidate_memregion(void);
@IMPORT@
static int __init ns_init(void)
{
	pr_info("ns %lx %d\\n", cr4_read_shadow(), cpu_cache_has_invalidate_memregion());
	return 0;
}
module_init(ns_init);
MODULE_LICENSE("GPL");
"""


@pytest.mark.parametrize("imported", [False, True])
def test_module_only_export_keeps_namespace_imports_strict(sid: Kernel, tmp_path: Path,
                                                           imported: bool) -> None:
    """sid (7.x): cr4_read_shadow is exported for kvm only, so klpsym build converts
    it and lets modpost pass it (KBUILD_NSDEPS); the same run must still refuse a
    missing MODULE_IMPORT_NS for an ordinary namespace (DEVMEM), as modpost would."""
    d = tmp_path / "ns"
    d.mkdir()
    (d / "Kbuild").write_text("obj-m := ns_mod.o\n")
    (d / "ns_mod.c").write_text(NS_SOURCE.replace(
        "@IMPORT@", 'MODULE_IMPORT_NS("DEVMEM");' if imported else ""))
    proc = subprocess.run([*KLPSYM, "lab", "build", "sid", str(d)], capture_output=True,
                          text=True, timeout=600, check=False)
    assert not (d / "modules.nsdeps").exists()
    if imported:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert symbols(d / "ns_mod.ko")[".klp.sym.vmlinux.cr4_read_shadow,0"] == "OS [0xff20]"
        assert symbols(d / "ns_mod.ko")["cpu_cache_has_invalidate_memregion"] == "UND"
        assert "note: cr4_read_shadow is exported for named modules only" in proc.stdout
    else:
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == (
            "klpsym: error: module ns_mod uses symbol cpu_cache_has_invalidate_memregion from "
            'namespace DEVMEM, but does not import it; add MODULE_IMPORT_NS("DEVMEM") to its '
            "source")
        assert not (d / "ns_mod.ko").exists()


def tree(directory: Path) -> dict[str, bytes | str]:
    """Every file (contents) and symlink (target) under ``directory``."""
    return {str(p.relative_to(directory)): (os.readlink(p) if p.is_symlink() else p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_symlink() or p.is_file()}


def test_mo_output_dir_on_7x(sid: Kernel, tmp_path: Path) -> None:
    """sid (7.x, kbuild with MO=): ``klpsym build --chroot ... -- MO=OUT`` of two
    modules in one dir, one using the other's export, signed.  kbuild writes
    everything into OUT (modules.order with relative entries, Module.symvers,
    the .ko files) and nothing into the source dir; klpsym converts, guards and
    signs the .ko files there."""
    where, kdir = runner(sid)
    assert isinstance(where, ChrootRunner)  # sid's gcc-16 is not on a bookworm host
    d, out = copy("two_modules", tmp_path), tmp_path / "build" / "out"
    key, cert = tmp_path / "key.pem", tmp_path / "cert.der"
    subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "1",
                    "-batch", "-x509", "-subj", "/CN=klpsym mo test/", "-newkey", "rsa:2048",
                    "-outform", "DER", "-out", str(cert), "-keyout", str(key)],
                   check=True, capture_output=True)
    proc = subprocess.run(
        [*KLPSYM, "build", "two_modules", "--chroot", str(where.root), "--kernel-dir", str(kdir),
         "--kallsyms", str(capture_kallsyms(sid)), "--sign-key", str(key), "--sign-cert",
         str(cert), "--", "MO=build/out"],  # relative: from the current dir, not KDIR
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "undefined!" not in proc.stdout + proc.stderr
    assert tree(d) == tree(MODULES / "two_modules")  # the sources, untouched, nothing added
    assert f"output in {out} (MO=)" in proc.stdout
    assert (out / "modules.order").read_text().split() == ["tm_provider.o", "tm_user.o"]
    exports = (out / "Module.symvers").read_text()
    assert "\ttm_provider_lookup\t" in exports and "kallsyms_lookup_name" not in exports
    for ko, wanted in (("tm_provider.ko", "kallsyms_lookup_name"),
                       ("tm_user.ko", "dmesg_restrict")):
        row = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"{ko} "))
        cells = row.split()  # module, converted, relocations, guard, signed
        assert wanted in cells[1] and cells[-2:] == ["add", "yes"], proc.stdout
        syms = symbols(out / ko)
        assert syms[f".klp.sym.vmlinux.{wanted},0"] == "OS [0xff20]" and wanted not in syms
        assert syms["klp_enable_patch"] == "UND"  # the guard
        assert (out / ko).read_bytes().endswith(MODULE_SIG_STRING)
        assert read_module(out / ko).modinfo.get("name") == ko.removesuffix(".ko")
    assert symbols(out / "tm_user.ko")["tm_provider_lookup"] == "UND"  # the sibling's export


def test_mo_module_only_export_leaves_no_nsdeps(sid: Kernel, tmp_path: Path) -> None:
    """With MO= modpost runs in OUT, so its modules.nsdeps (KBUILD_NSDEPS for an
    export for named modules only) lands there; klpsym removes it there."""
    d = tmp_path / "ns"
    d.mkdir()
    (d / "Kbuild").write_text("obj-m := ns_mod.o\n")
    (d / "ns_mod.c").write_text(NS_SOURCE.replace("@IMPORT@", 'MODULE_IMPORT_NS("DEVMEM");'))
    before = tree(d)
    out = tmp_path / "out"
    proc = subprocess.run([*KLPSYM, "lab", "build", "sid", str(d), "--", f"MO={out}"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "note: cr4_read_shadow is exported for named modules only" in proc.stdout
    assert tree(d) == before
    assert not (out / "modules.nsdeps").exists()
    assert symbols(out / "ns_mod.ko")[".klp.sym.vmlinux.cr4_read_shadow,0"] == "OS [0xff20]"


def test_sigterm_stops_the_build_and_its_make(bookworm: Kernel, kallsyms: Path,
                                              tmp_path: Path) -> None:
    """SIGTERM (timeout(1), a stopped DKMS run) while kbuild compiles: klpsym
    stops make and its commands and exits 143; nothing is left running (a
    make left behind would reach modpost, which would wait at the gate for
    good) and the gate is gone."""
    d = copy("two_files", tmp_path)
    proc = subprocess.Popen(
        [*KLPSYM, "build", str(d), "--kernel-dir", str(bookworm.kernel_dir),
         "--kallsyms", str(kallsyms)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(pid != proc.pid for pid in naming(f"M={d}")):
        assert proc.poll() is None and time.monotonic() < deadline, "make never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert err.strip().endswith("klpsym: interrupted; no file was left half-written")
    assert "Traceback" not in err
    assert until(lambda: not naming(d), 10), f"left running: {naming(d)}"
    assert not (d / ".klpsym-modpost").exists()
    assert not list(d.glob("*.ko"))
