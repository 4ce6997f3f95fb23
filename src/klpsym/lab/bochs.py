"""Boot a provisioned kernel in Bochs with a Tiger Lake CPU: where IBT is enforced.

QEMU does not emulate Indirect Branch Tracking (CET-IBT); Bochs 2.7 does, and
with ``cpu: model=tigerlake`` Debian's IBT kernels (6.12 on) print
``CET detected: Indirect Branch Tracking enabled`` and fault an indirect call
to a function without ENDBR64 (``Missing ENDBR: NAME``, arch/x86/kernel/cet.c).
That is what this harness is for: the same guest script, initramfs and result
channel as :func:`klpsym.lab.qemu.boot`, run where a missing ENDBR kills.

Facts of Debian bookworm's bochs 2.7 package this relies on (measured
2026-12-04, issue 16):

* no ``nogui`` display: ``display_library: rfb, options="timeout=0"`` runs
  headless (and needs the vgabios package's ROM);
* its debugger is compiled in, so it starts with ``-rc FILE`` holding
  ``continue``;
* it cannot boot a kernel directly: a ``grub-mkrescue`` ISO (grub-pc-bin,
  xorriso, mtools) holds the bzImage and the initramfs;
* tigerlake's XSAVE CPUID leaf is wrong: 6.12 warns and 7.x panics unless
  the kernel gets ``clearcpuid=xsaves,xsavec,pku,ospke`` (taint S);
* ``ips=25000000``, ``clock: sync=none`` and ``quiet`` boot to /init in
  about 30-40 s on this project's machines;
* it exits with status 1 when the guest powers off;
* its sound mixer thread aborts ("buffer overflow detected") on a machine
  without ALSA devices: ``sound: driver=dummy``.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from klpsym.errors import LabError
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import (
    BASE_CMDLINE,
    BootError,
    BootResult,
    _cache_dir,
    _crash_line,
    _overlay,
    _read,
    _tail,
    base_initramfs,
    exit_marker,
    script_result,
)
from klpsym.procutil import stop

BOCHS = "bochs"
BOOT_TIMEOUT = 600.0
DEFAULT_MEMORY_MB = 512
IPS = 25_000_000
# See the module docstring: without it 7.x panics on tigerlake's XSAVE leaf.
IBT_CMDLINE = ("clearcpuid=xsaves,xsavec,pku,ospke",)
_BIOS = Path("/usr/share/bochs/BIOS-bochs-latest")
_VGABIOS = (Path("/usr/share/vgabios/vgabios.bin"), Path("/usr/share/bochs/VGABIOS-lgpl-latest"))
# Lines after which the guest will not reach its script's end: Bochs then
# reboots (panic=-1) or spins, so the run is stopped rather than waited for.
_FATAL = ("---[ end Kernel panic", "Kernel panic - not syncing")

GRUB_CFG = """set timeout=0
set default=0
menuentry klpsym {
  linux /boot/vmlinuz @CMDLINE@
  initrd /boot/initrd
}
"""

BOCHSRC = """megs: @MEGS@
cpu: model=tigerlake, count=1, ips=@IPS@
clock: sync=none
romimage: file=@BIOS@
vgaromimage: file=@VGABIOS@
display_library: rfb, options="timeout=0"
sound: driver=dummy
ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14
ata0-master: type=cdrom, path=@ISO@, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=@CONSOLE@
com2: enabled=1, mode=file, dev=@RESULT@
mouse: enabled=0
log: @LOG@
panic: action=fatal
error: action=ignore
info: action=ignore
debug: action=ignore
"""


def tools() -> dict[str, str]:
    """The host programs a Bochs boot needs, found on PATH; LabError naming the
    packages to install when one is missing."""
    found: dict[str, str] = {}
    for prog, package in ((BOCHS, "bochs bochsbios"), ("grub-mkrescue", "grub-pc-bin"),
                          ("xorriso", "xorriso"), ("mformat", "mtools")):
        path = shutil.which(prog)
        if path is None:
            raise LabError(f"{prog} not found; run scripts/bootstrap or apt-get install {package}")
        found[prog] = path
    if not _BIOS.is_file():
        raise LabError(f"{_BIOS} is missing; apt-get install bochsbios")
    if not Path("/usr/lib/grub/i386-pc").is_dir():
        raise LabError("grub's i386-pc modules are missing; apt-get install grub-pc-bin")
    _vgabios()
    return found


def _vgabios() -> Path:
    for p in _VGABIOS:
        if p.is_file():
            return p
    raise LabError("no VGA BIOS for Bochs's display; apt-get install vgabios")


def _iso(grub_mkrescue: str, dest: Path, vmlinuz: Path, initrd: bytes,
         cmdline: Sequence[str]) -> None:
    root = dest.parent / "iso-root"
    (root / "boot" / "grub").mkdir(parents=True)
    shutil.copyfile(vmlinuz, root / "boot" / "vmlinuz")
    (root / "boot" / "initrd").write_bytes(initrd)
    (root / "boot" / "grub" / "grub.cfg").write_text(
        GRUB_CFG.replace("@CMDLINE@", " ".join(cmdline)))
    proc = subprocess.run(
        [grub_mkrescue, "-o", str(dest), str(root)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", check=False,
    )
    if proc.returncode != 0 or not dest.is_file():
        raise LabError(f"grub-mkrescue failed ({proc.returncode}): {_tail(proc.stderr, 2)}")


def boot(
    kernel: Kernel,
    files: Mapping[str, Path],
    script: str,
    timeout: float = BOOT_TIMEOUT,
    *,
    cmdline: Sequence[str] = (),
    memory_mb: int = DEFAULT_MEMORY_MB,
    modules: Sequence[str] = (),
    ips: int = IPS,
) -> BootResult:
    """Boot ``kernel`` in Bochs (Tiger Lake CPU: IBT), run ``script`` as
    :func:`klpsym.lab.qemu.boot` does, power off.

    Same guest (/init, busybox, /lab files, in-tree ``modules``) and result
    channel (ttyS1, exit marker with a nonce); the console (ttyS0) holds
    the kernel log.  The bzImage boots from a grub ISO, so KASLR is on as on
    real machines.  ``cmdline`` adds kernel arguments after
    :data:`IBT_CMDLINE`.  Raises BootError (console attached) when Bochs
    fails, on timeout, on a kernel panic, or if the guest stops before the
    script has finished.
    """
    progs = tools()
    base = base_initramfs(_cache_dir(kernel))
    nonce = secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="klpsym-bochs-") as tmpdir:
        tmp = Path(tmpdir)
        iso, rc, rcfile = tmp / "boot.iso", tmp / "bochsrc", tmp / "debugger.rc"
        console_log, result, log = tmp / "console.log", tmp / "result.bin", tmp / "bochs.log"
        initrd = base.read_bytes() + _overlay(files, script, nonce, kernel, modules)
        _iso(progs["grub-mkrescue"], iso, kernel.vmlinuz, initrd,
             (*BASE_CMDLINE, *IBT_CMDLINE, *cmdline))
        values = {"@MEGS@": str(memory_mb), "@IPS@": str(ips), "@BIOS@": str(_BIOS),
                  "@VGABIOS@": str(_vgabios()), "@ISO@": str(iso), "@CONSOLE@": str(console_log),
                  "@RESULT@": str(result), "@LOG@": str(log)}
        text = BOCHSRC
        for key, value in values.items():
            text = text.replace(key, value)
        rc.write_text(text)
        # The debugger is compiled into Debian's bochs: run, do not stop at its prompt.
        rcfile.write_text("continue\n")
        marker = exit_marker(nonce)
        start = time.monotonic()
        proc = subprocess.Popen(
            [progs[BOCHS], "-q", "-f", str(rc), "-rc", str(rcfile)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            cwd=tmp,
        )
        failure = ""
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                raw = result.read_bytes() if result.exists() else b""
                at = raw.rfind(marker)
                # done once the marker's line is whole; poweroff -f follows it
                if at >= 0 and b"\n" in raw[at + len(marker):]:
                    time.sleep(1.0)
                    break
                console = _read(console_log)
                if any(f in console for f in _FATAL):
                    failure = _crash_line(console)
                    break
                if time.monotonic() - start > timeout:
                    failure = f"timed out after {timeout:g} s; console ends: {_tail(console)}"
                    break
        finally:
            stop(proc)
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
        seconds = time.monotonic() - start
        console = _read(console_log)
        raw = result.read_bytes() if result.exists() else b""
        bochs_log = _read(log)
    if failure:
        raise BootError(f"{kernel.release} under Bochs: {failure}", console)
    done = script_result(raw, nonce, console, seconds)
    if done is None:
        why = _crash_line(console) if console.strip() else (
            f"bochs exited with {proc.returncode}: {_tail(stderr + bochs_log, 2)}")
        raise BootError(f"{kernel.release} stopped under Bochs before the script finished: {why}",
                        console)
    return done
