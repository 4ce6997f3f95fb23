"""The DKMS recipe (examples/dkms) through Debian's own dkms, for real.

As root, against the installed headers of exactly the bookworm kernel the lab
boots (scripts/bootstrap installs dkms and linux-headers-<release>; the host
runs another kernel, as on CI): ``dkms add``, ``dkms build -k RELEASE`` (whose
MAKE is ``klpsym build``), ``dkms install -k RELEASE``.  The installed module
under /lib/modules/RELEASE/updates/dkms must be converted, pass klpsym's
loader checks, carry dkms's signature over the converted bytes, and load in a
KASLR boot of that kernel, printing the addresses /proc/kallsyms gives in the
same boot.  Everything dkms added is removed afterwards (``dkms remove --all``
and the copy in /usr/src), so reruns start clean.

The kernel's symbols come from the System.map of its -dbg package, which the
lab unpacks into its cache (the package itself is not installed on the host);
dkms.conf passes it on through $KLPSYM_FLAGS.  Without it, the build fails with
klpsym's one-line error naming linux-image-RELEASE-dbg.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dkms_support import (
    EXAMPLE,
    MODULE,
    NAME,
    VERSION,
    boot_and_load,
    check_converted,
    check_loaded,
)

from klpsym.kernel.target import symbol_file_candidates
from klpsym.lab.debug import debug_files
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import BootError, BootResult
from klpsym.module.ko import read_module
from klpsym.module.signature import MODULE_SIG_STRING, split_signature

DKMS_TREE = Path("/var/lib/dkms")
MOK_CERT = DKMS_TREE / "mok.pub"  # dkms 3.0.10's default, generated on first use
DKMS_TIMEOUT = 600.0


@dataclass
class Run:
    kernel: Kernel
    unresolved: subprocess.CompletedProcess[str] | None  # build without a symbol source
    unresolved_log: str
    steps: dict[str, subprocess.CompletedProcess[str]]  # add, build, install
    installed: Path
    installed_bytes: bytes
    build_log: str
    boot: BootResult | None = None
    boot_error: BootError | None = None

    def ok(self, step: str) -> subprocess.CompletedProcess[str]:
        proc = self.steps.get(step)
        assert proc is not None, f"dkms {step} did not run (an earlier step failed)"
        assert proc.returncode == 0, f"dkms {step}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        return proc


def dkms(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dkms", *args], capture_output=True, text=True, env=env,
                          timeout=DKMS_TIMEOUT, check=False)


def remove_everything() -> None:
    """What dkms add/build/install left behind: the tree entry (and with it the
    installed module), and the source copy dkms add made in /usr/src."""
    if (DKMS_TREE / NAME).exists():
        dkms("remove", f"{NAME}/{VERSION}", "--all")
    shutil.rmtree(f"/usr/src/{NAME}-{VERSION}", ignore_errors=True)


def require_host(kernel: Kernel) -> None:
    """dkms, root, and the headers of exactly the lab's kernel (scripts/bootstrap)."""
    fix = "run scripts/bootstrap (as root)"
    assert os.geteuid() == 0, f"dkms needs root; {fix}"
    assert shutil.which("dkms"), f"dkms is not installed; {fix}"
    pkg = f"linux-headers-{kernel.release}"
    got = subprocess.run(["dpkg-query", "-W", "-f", "${Version} ${Status}", pkg],
                         capture_output=True, text=True, check=False).stdout
    assert got == f"{kernel.package_version} install ok installed", (
        f"{pkg} {kernel.package_version} (the kernel the lab boots) is not installed "
        f"(dpkg says {got!r}); {fix}")
    assert (Path("/lib/modules") / kernel.release / "build").is_dir()


@pytest.fixture(scope="module")
def host_lock() -> Iterator[None]:
    """dkms's tree and /lib/modules are the host's: two test sessions on one
    machine (several worktrees) take turns."""
    with open("/run/lock/klpsym-dkms-test.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def run(bookworm: Kernel, host_lock: None) -> Iterator[Run]:
    kernel = bookworm
    require_host(kernel)
    klpsym = Path(sys.executable).parent / "klpsym"
    assert klpsym.is_file(), f"{klpsym}: no klpsym console script; run scripts/bootstrap"
    system_map = debug_files(kernel).system_map
    release = kernel.release
    base = {k: v for k, v in os.environ.items() if k != "KLPSYM_FLAGS"}
    base["PATH"] = f"{klpsym.parent}:{base.get('PATH', '/usr/bin:/bin')}"
    installed = Path("/lib/modules") / release / "updates" / "dkms" / f"{MODULE}.ko"

    remove_everything()  # an interrupted earlier run's
    steps: dict[str, subprocess.CompletedProcess[str]] = {}
    unresolved, unresolved_log = None, ""
    try:
        steps["add"] = dkms("add", str(EXAMPLE))
        if steps["add"].returncode == 0:
            if not any(p.is_file() for _, p in symbol_file_candidates(release)):
                # What a dkms user sees for a kernel that is not running, without -dbg.
                unresolved = dkms("build", f"{NAME}/{VERSION}", "-k", release, env=base)
                log = DKMS_TREE / NAME / VERSION / "build" / "make.log"
                unresolved_log = log.read_text() if log.is_file() else ""
            env = dict(base, KLPSYM_FLAGS=f"--system-map {system_map}")
            steps["build"] = dkms("build", f"{NAME}/{VERSION}", "-k", release, env=env)
        if steps.get("build") and steps["build"].returncode == 0:
            steps["install"] = dkms("install", f"{NAME}/{VERSION}", "-k", release, env=base)
        logs = list((DKMS_TREE / NAME / VERSION / release).glob("*/log/make.log"))
        r = Run(kernel, unresolved, unresolved_log, steps, installed,
                installed.read_bytes() if installed.is_file() else b"",
                logs[0].read_text() if logs else "")
        if r.installed_bytes:
            try:
                r.boot = boot_and_load(kernel, installed)
            except BootError as exc:
                r.boot_error = exc
        yield r
    finally:
        remove_everything()
        assert not installed.exists(), f"dkms remove left {installed}"


def test_unresolved_build_names_the_dbg_package(run: Run) -> None:
    if run.unresolved is None:
        pytest.skip(f"host fact: a symbol file of {run.kernel.release} is installed on this "
                    "host, so klpsym finds it; the error case cannot happen here")
    release = run.kernel.release
    assert run.unresolved.returncode != 0, run.unresolved.stdout
    errors = [ln for ln in run.unresolved_log.splitlines() if ln.startswith("klpsym: error:")]
    assert len(errors) == 1, run.unresolved_log[-3000:]
    assert f"is for kernel {release} but this machine runs {os.uname().release}" in errors[0]
    assert f"install linux-image-{release}-dbg" in errors[0]


def test_dkms_build_runs_klpsym_build(run: Run) -> None:
    run.ok("add")
    out = run.ok("build").stdout
    assert "klpsym build . --kernel-dir /lib/modules/" in out, out
    release = run.kernel.release
    assert f"klpsym: built for {release} (symbols from System.map " in run.build_log
    row = next((ln for ln in run.build_log.splitlines() if ln.startswith(f"{MODULE}.ko ")), "")
    assert "kallsyms_lookup_name" in row and "kptr_restrict" in row, run.build_log[-2000:]
    assert "undefined!" not in run.build_log


def test_installed_module_is_converted_and_valid(run: Run) -> None:
    out = run.ok("install").stdout
    assert f"/lib/modules/{run.kernel.release}/updates/dkms" in out, out
    assert run.installed_bytes, f"{run.installed} was not installed"
    check_converted(run.installed, run.kernel.release)


def test_dkms_signature_covers_the_converted_module(run: Run, tmp_path: Path) -> None:
    """dkms signs after MAKE, so its signature is over klpsym's output; check it
    with openssl against dkms's own certificate."""
    run.ok("install")
    data = run.installed_bytes
    assert data.endswith(MODULE_SIG_STRING), "dkms did not sign the module"
    elf_view, sig = split_signature(data, str(run.installed))
    elf_part = bytes(elf_view)
    assert sig is not None and sig.id_type == 2  # PKEY_ID_PKCS7
    assert elf_part == read_module(run.installed).elf_bytes
    assert "Signing module" in run.steps["build"].stdout
    (tmp_path / "content").write_bytes(elf_part)
    (tmp_path / "sig.der").write_bytes(sig.trailer[:sig.sig_len])
    cert = subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(MOK_CERT),
                           "-out", str(tmp_path / "cert.pem")],
                          capture_output=True, text=True, check=False)
    assert cert.returncode == 0, cert.stderr

    def verify(content: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "cms", "-verify", "-binary", "-inform", "DER",
             "-in", str(tmp_path / "sig.der"), "-content", str(content),
             "-certfile", str(tmp_path / "cert.pem"), "-nointern", "-noverify",
             "-out", "/dev/null"],
            capture_output=True, text=True, check=False)

    good = verify(tmp_path / "content")
    assert good.returncode == 0, good.stderr
    (tmp_path / "tampered").write_bytes(elf_part[:-1] + bytes([elf_part[-1] ^ 1]))
    assert verify(tmp_path / "tampered").returncode != 0


def test_installed_module_loads_in_qemu(run: Run) -> None:
    run.ok("install")
    if run.boot_error is not None:
        pytest.fail(f"the guest did not finish: {run.boot_error}\n"
                    f"{run.boot_error.console_tail()}")
    assert run.boot is not None
    check_loaded(run.boot, run.kernel.release)
