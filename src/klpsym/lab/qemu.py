"""Boot a provisioned kernel in QEMU (TCG), run a shell script in it, collect the output.

The uncompressed vmlinux is booted through its PVH entry with qboot as the
firmware: no bzImage decompressor, no option ROM dance, so reaching /init takes
about a second even without KVM (never used: KVM hangs on the machines this
runs on).  The guest userland is busybox-static in an initramfs.

Serial ports: ttyS0 is the kernel console (``BootResult.console``); ttyS1 is
the result channel, switched to raw mode so that bytes pass unchanged
(``BootResult.output_bytes``): the script's stdout and stderr go there,
followed by an exit marker carrying a per-boot nonce, from which the exit
status is read.

The initrd is a cached base archive (busybox, a few directories and device
nodes) with a small archive appended per boot: /init, the script and the
caller's files under /lab.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from klpsym.errors import LabError
from klpsym.fsutil import atomic_write
from klpsym.lab.cpio import CpioWriter
from klpsym.lab.provision import Kernel

QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 180.0
DEFAULT_MEMORY_MB = 512
# quiet: the console only carries warnings and worse, which keeps the serial
# port (slow under TCG) out of the boot's critical path.  cryptomgr.notests
# skips the crypto self-tests; panic=-1 + QEMU's -no-reboot turn a panic into
# an immediate exit instead of a hang.
BASE_CMDLINE = ("console=ttyS0", "quiet", "cryptomgr.notests", "panic=-1")
_BASE_FORMAT = 2  # bump when the base archive's content changes
_FIRMWARE_DIRS = (
    Path("/usr/share/qemu"),
    Path("/usr/share/seabios"),
    Path("/usr/local/share/qemu"),
)

INIT = """#!/bin/sh
export PATH=/sbin:/bin HOME=/root
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
stty -F /dev/ttyS1 raw -echo
cd /lab
/bin/sh /lab/.script </dev/null >/dev/ttyS1 2>&1
rc=$?
printf '\\nklpsym-lab-exit %s %d\\n' @NONCE@ "$rc" >/dev/ttyS1
poweroff -f
"""


@dataclass(frozen=True)
class BootResult:
    """What one boot produced."""

    console: str  # everything on ttyS0 (kernel log)
    output: str  # what the script wrote to the result channel (ttyS1), decoded
    seconds: float  # wall time of the QEMU run
    exit_status: int = 0  # the script's exit status
    output_bytes: bytes = b""  # ``output`` as raw bytes (binary-safe)


class BootError(LabError):
    """A boot did not run the script to its end; ``console`` holds the kernel log."""

    def __init__(self, message: str, console: str) -> None:
        super().__init__(message)
        self.console = console

    def console_tail(self, lines: int = 30) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


def _cache_dir(kernel: Kernel) -> Path:
    # home = <cache>/kernels/<suite>/<release>_<version>
    return kernel.home.parent.parent.parent


def _is_static(path: Path) -> bool:
    """True for an ELF64 executable without a program interpreter (PT_INTERP)."""
    from klpsym.elf.segments import has_interpreter, read_program_headers

    with path.open("rb") as f:
        found = read_program_headers(f)
    return found is not None and not has_interpreter(found)


def _busybox() -> Path:
    found = shutil.which("busybox")
    for cand in (found, "/bin/busybox", "/usr/bin/busybox"):
        if cand and Path(cand).is_file() and _is_static(Path(cand)):
            return Path(cand)
    raise LabError("no statically linked busybox found; apt-get install busybox-static")


def _qemu() -> str:
    found = shutil.which(QEMU)
    if found is None:
        raise LabError(
            f"{QEMU} not found; run scripts/bootstrap or apt-get install qemu-system-x86"
        )
    return found


def _qboot() -> Path | None:
    for d in _FIRMWARE_DIRS:
        if (d / "qboot.rom").is_file():
            return d / "qboot.rom"
    return None


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def base_initramfs(cache_dir: Path) -> Path:
    """The cached base archive: busybox-static, the directory skeleton, console nodes."""
    busybox = _busybox()
    blob = busybox.read_bytes()
    key = hashlib.sha256(blob + b"%d" % _BASE_FORMAT).hexdigest()[:16]
    path = cache_dir / "initramfs" / f"base-{key}.cpio"
    if path.is_file():
        return path
    w = CpioWriter()
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "lab", "run", "mnt"):
        w.mkdir(d)
    w.file("bin/busybox", blob, 0o755)
    w.symlink("bin/sh", "busybox")
    # The kernel's request_module() runs /sbin/modprobe (modprobe_path).
    w.symlink("sbin/modprobe", "/bin/busybox")
    # /init's stdio before devtmpfs is mounted (init/main.c opens /dev/console).
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3, 0o666)
    w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    w.file("etc/group", b"root:x:0:\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, bytes(w))
    return path


def _modname(name: str) -> str:
    """Module name as the kernel compares it: no directory, no .ko, '-' equals '_'."""
    base = name.rsplit("/", 1)[-1]
    for suffix in (".xz", ".zst", ".gz", ".ko"):
        base = base.removesuffix(suffix)
    return base.replace("-", "_")


def _read_modfile(kernel: Kernel, name: str) -> list[str]:
    path = kernel.modules_dir / name
    try:
        return path.read_text().splitlines()
    except OSError:
        raise LabError(f"{path} is missing; re-provision with kmod (depmod) installed") from None


def kernel_module_closure(kernel: Kernel, names: Sequence[str]) -> dict[str, list[str]]:
    """The in-tree modules ``names`` and everything they need, per depmod's files.

    Follows modules.dep, plus the "pre:" soft dependencies of modules.softdep
    (resolved by name or through modules.alias: ``libcrc32c`` needs a ``crc32c``
    provider, loaded by the kernel's request_module()).  Maps each module's path
    (relative to ``kernel.modules_dir``) to its hard dependencies.
    """
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in _read_modfile(kernel, "modules.dep"):
        path, _, rest = line.partition(":")
        if path:
            deps[path] = rest.split()
            by_name[_modname(path)] = path
    aliases: dict[str, list[str]] = {}
    for line in _read_modfile(kernel, "modules.alias"):
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias":
            aliases.setdefault(parts[1], []).append(parts[2])
    soft: dict[str, list[str]] = {}
    for line in _read_modfile(kernel, "modules.softdep"):
        parts = line.split()
        if len(parts) > 2 and parts[0] == "softdep":
            pre: list[str] = []
            section = ""
            for token in parts[2:]:
                if token.endswith(":"):
                    section = token
                elif section == "pre:":
                    pre.append(token)
            soft[_modname(parts[1])] = pre

    def providers(name: str) -> list[str]:
        if _modname(name) in by_name:
            return [by_name[_modname(name)]]
        return [by_name[_modname(m)] for m in aliases.get(name, []) if _modname(m) in by_name]

    todo: list[str] = []
    for name in names:
        found = providers(name)
        if not found:
            raise LabError(f"{kernel.release} has no in-tree module {name!r} (see modules.dep)")
        todo += found
    closure: dict[str, list[str]] = {}
    while todo:
        path = todo.pop()
        if path in closure:
            continue
        closure[path] = deps.get(path, [])
        todo.extend(closure[path])
        for wanted in soft.get(_modname(path), []):
            todo.extend(providers(wanted))
    return closure


def _module_files(w: CpioWriter, kernel: Kernel, names: Sequence[str]) -> None:
    """Add the closure of ``names`` and filtered depmod files for busybox modprobe."""
    closure = kernel_module_closure(kernel, names)
    included = {_modname(p) for p in closure}
    moddir = f"lib/modules/{kernel.release}"
    for path in sorted(closure):
        w.add_path(f"{moddir}/{path}", kernel.modules_dir / path)
    dep = "".join(f"{p}:{''.join(' ' + d for d in ds)}\n" for p, ds in closure.items())
    w.file(f"{moddir}/modules.dep", dep.encode())
    alias = [
        line
        for line in _read_modfile(kernel, "modules.alias")
        if line.startswith("alias ") and _modname(line.rsplit(" ", 1)[-1]) in included
    ]
    w.file(f"{moddir}/modules.alias", "".join(ln + "\n" for ln in alias).encode())
    for extra in ("modules.builtin", "modules.order"):
        w.add_path(f"{moddir}/{extra}", kernel.modules_dir / extra)


def _overlay(
    files: Mapping[str, Path], script: str, nonce: str, kernel: Kernel, modules: Sequence[str]
) -> bytes:
    w = CpioWriter(first_inode=1 << 20)
    w.file("init", INIT.replace("@NONCE@", nonce).encode(), 0o755)
    if modules:
        _module_files(w, kernel, modules)
    w.mkdir("lab")
    w.file("lab/.script", script.encode(), 0o755)
    for name, src in files.items():
        src = Path(src)
        if not src.exists():
            raise LabError(f"file {src} for the guest does not exist")
        w.add_path(f"lab/{name}", src)
    return bytes(w)


def _tail(text: str, lines: int = 3) -> str:
    keep = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(keep[-lines:]) if keep else "empty console"


def _crash_line(console: str) -> str:
    """The most telling console line after a failed boot (panic, oops, BUG...)."""
    for pat in (r"Kernel panic - not syncing.*", r"BUG: .*", r"Oops: .*", r"general protection.*"):
        m = re.search(pat, console)
        if m:
            return m.group(0).strip()
    return _tail(console)


def boot(
    kernel: Kernel,
    files: Mapping[str, Path],
    script: str,
    timeout: float = BOOT_TIMEOUT,
    *,
    cmdline: Sequence[str] = (),
    memory_mb: int = DEFAULT_MEMORY_MB,
    modules: Sequence[str] = (),
    qemu_args: Sequence[str] = (),
    kaslr: bool = False,
) -> BootResult:
    """Boot ``kernel``, run ``script`` with /bin/sh as root in /lab, power off.

    ``files`` are copied to /lab/<name> in the guest (directories recursively).
    ``modules`` names in-tree modules (e.g. ``"nf_conntrack"``) to put, with their
    dependencies, under /lib/modules/<release> so ``modprobe`` finds them.
    ``cmdline`` adds kernel arguments, ``qemu_args`` QEMU options (e.g. ``-cpu max``).
    ``kaslr`` boots the compressed bzImage (vmlinuz) instead of the PVH entry
    of the uncompressed vmlinux: the decompressor randomises the kernel's
    address, as on real machines (about 2 s slower under TCG).  The PVH boot
    has no KASLR, so the kernel runs at its link-time addresses.
    Before the script runs, /proc, /sys and /dev (devtmpfs) are mounted and
    busybox's applets are on PATH.  The script's stdout and stderr come back
    as ``BootResult.output``; a nonzero exit status is returned, not raised.
    Raises BootError (a LabError, console attached) when QEMU is missing or
    fails, on timeout, or if the guest stops before the script has finished
    (a kernel panic, say).
    """
    qemu = _qemu()
    base = base_initramfs(_cache_dir(kernel))
    nonce = secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="klpsym-boot-") as tmpdir:
        tmp = Path(tmpdir)
        initrd, console_log, result = tmp / "initrd.cpio", tmp / "console.log", tmp / "result.bin"
        with initrd.open("wb") as f:
            f.write(base.read_bytes())
            f.write(_overlay(files, script, nonce, kernel, modules))
        cmd = [
            qemu,
            "-nodefaults",
            "-no-user-config",
            "-display", "none",
            "-accel", "tcg",
            "-machine", "pc",
            "-smp", "1",
            "-m", str(memory_mb),
            "-kernel", str(kernel.vmlinuz if kaslr else kernel.vmlinux),
            "-initrd", str(initrd),
            "-append", " ".join((*BASE_CMDLINE, *cmdline)),
            "-serial", f"file:{console_log}",
            "-serial", f"file:{result}",
            "-no-reboot",
            *qemu_args,
        ]  # fmt: skip
        qboot = _qboot()
        if qboot is not None:
            cmd[1:1] = ["-bios", str(qboot)]
        start = time.monotonic()
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            console = _read(console_log)
            raise BootError(
                f"booting {kernel.release} timed out after {timeout:g} s;"
                f" console ends: {_tail(console)}",
                console,
            ) from None
        seconds = time.monotonic() - start
        console = _read(console_log)
        raw = result.read_bytes() if result.exists() else b""
    if proc.returncode != 0:
        raise BootError(f"{QEMU} exited with {proc.returncode}: {_tail(proc.stderr, 1)}", console)
    done = script_result(raw, nonce, console, seconds)
    if done is None:
        raise BootError(
            f"{kernel.release} stopped before the script finished: {_crash_line(console)}",
            console,
        )
    return done


def exit_marker(nonce: str) -> bytes:
    """What /init writes on the result port (ttyS1) after the script's
    output: ``\\nklpsym-lab-exit NONCE STATUS\\n`` (the script cannot fake it)."""
    return f"\nklpsym-lab-exit {nonce} ".encode()


def script_result(raw: bytes, nonce: str, console: str, seconds: float) -> BootResult | None:
    """The script's output and exit status from the result port's bytes,
    or None when the guest stopped before the script finished."""
    marker = exit_marker(nonce)
    pos = raw.rfind(marker)
    if pos < 0:
        return None
    status_text = raw[pos + len(marker) :].split(b"\n", 1)[0]
    out = raw[:pos]
    return BootResult(
        console=console,
        output=out.decode(errors="replace"),
        seconds=seconds,
        exit_status=int(status_text or b"0"),
        output_bytes=out,
    )


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace").replace("\r\n", "\n")
    except OSError:
        return ""


# ------------------------------------------------------------------ kallsyms

_KALLSYMS_LINE = re.compile(rb"^[0-9a-f]{16} [A-Za-z] \S+(\t\[\S+\])?$")
MIN_KALLSYMS_LINES = 10_000


def capture_kallsyms(kernel: Kernel, *, timeout: float = BOOT_TIMEOUT) -> Path:
    """The guest's /proc/kallsyms, read as root, cached as ``kernel.kallsyms_cache``.

    Boots once (later calls return the cached file).  The text (~4 MB) is
    gzipped in the guest and sent raw over the result channel (raw tty mode
    keeps bytes intact; gzip's CRC checks them).  PVH boots skip KASLR, so the
    addresses are the link-time ones of ``kernel.vmlinux``.
    """
    dest = kernel.kallsyms_cache
    if dest.is_file():
        return dest
    with _flock(kernel.home / ".kallsyms.lock"):
        if dest.is_file():
            return dest
        result = boot(kernel, {}, "gzip -c /proc/kallsyms", timeout=timeout)
        if result.exit_status != 0:
            raise LabError(
                f"reading /proc/kallsyms in {kernel.release} failed: {_tail(result.output, 1)}"
            )
        try:
            text = gzip.decompress(result.output_bytes)
        except (OSError, EOFError, zlib.error) as exc:
            raise LabError(f"kallsyms from {kernel.release} arrived corrupted: {exc}") from None
        lines = text.splitlines()
        bad = [ln for ln in lines[:1000] if not _KALLSYMS_LINE.match(ln)]
        if bad:
            raise LabError(f"kallsyms from {kernel.release} has a malformed line {bad[0][:80]!r}")
        if len(lines) < MIN_KALLSYMS_LINES:
            raise LabError(f"kallsyms from {kernel.release} has only {len(lines)} lines")
        if not any(ln.endswith(b" _stext") and not ln.startswith(b"0" * 16) for ln in lines):
            raise LabError(f"kallsyms from {kernel.release} has no _stext address (kptr_restrict?)")
        atomic_write(dest, text)
    return dest
