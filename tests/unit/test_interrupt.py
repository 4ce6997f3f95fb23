"""Writes are atomic: ``klpsym convert`` of a large module interrupted by
SIGINT or SIGKILL at several moments, before and during the write, leaves the
input intact, and at the output path either nothing (or, in place, the
input) or the complete converted module; never a partial file, and no
temporary file in the directory (the output is written to an unnamed
O_TMPFILE file, see klpsym.fsutil)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigobject import big_module, big_module_names, write_target
from klpsym.fsutil import TEMP_SUFFIX

RELOCS = 1_000_000  # ~32 MB: the write and its checks take a while


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | bytes | float]:
    d = tmp_path_factory.mktemp("interrupt")
    kdir, ks = write_target(d, big_module_names())
    src = d / "big.ko"
    src.write_bytes(big_module(RELOCS))
    ref = d / "ref.ko"
    start = time.monotonic()
    subprocess.run(_cmd(src, ["-o", str(ref)], kdir, ks), check=True, capture_output=True)
    return {"dir": d, "kdir": kdir, "ks": ks, "src": src, "ref": ref.read_bytes(),
            "seconds": time.monotonic() - start}


def _cmd(src: Path, out: list[str], kdir: Path, ks: Path) -> list[str]:
    return [sys.executable, "-m", "klpsym.cli.main", "convert", str(src), *out,
            "--kernel-dir", str(kdir), "--kallsyms", str(ks)]


def _temp_open(pid: int, directory: Path) -> bool:
    """Whether the process has its output's temporary file open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        # O_TMPFILE: "/dir/#1234 (deleted)"; a named temporary: ".x.ko.1a2b.klpsym-tmp"
        if target.startswith(str(directory)) and ("(deleted)" in target or
                                                   target.endswith(TEMP_SUFFIX)):
            return True
    return False


def _interrupt(setup: dict[str, Path | bytes | float], sig: int, moment: str,
               in_place: bool) -> tuple[int, str]:
    d = setup["dir"]
    assert isinstance(d, Path)
    work = d / f"w-{sig}-{moment}-{in_place}"
    work.mkdir()
    src = work / "big.ko"
    src.write_bytes((d / "big.ko").read_bytes())
    out = src if in_place else work / "out.ko"
    kdir, ks = setup["kdir"], setup["ks"]
    assert isinstance(kdir, Path) and isinstance(ks, Path)
    p = subprocess.Popen(_cmd(src, ["--in-place"] if in_place else ["-o", str(out)], kdir, ks),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    total = float(setup["seconds"])  # type: ignore[arg-type]
    if moment == "writing":  # as soon as the temporary output is open
        deadline = time.monotonic() + 10 * total + 30
        while p.poll() is None and not _temp_open(p.pid, work):
            assert time.monotonic() < deadline, "never saw the temporary output"
        time.sleep(0.005)
    else:
        time.sleep({"early": 0.1, "half": 0.5 * total, "late": 0.85 * total}[moment])
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=60 + 10 * total)
    return p.returncode, stderr


@pytest.mark.parametrize("in_place", [False, True], ids=["output", "in-place"])
@pytest.mark.parametrize("moment", ["early", "half", "writing", "late"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_convert_leaves_old_or_new_file(setup: dict[str, Path | bytes | float],
                                                     sig: int, moment: str,
                                                     in_place: bool) -> None:
    code, stderr = _interrupt(setup, sig, moment, in_place)
    d = setup["dir"]
    assert isinstance(d, Path)
    work = d / f"w-{sig}-{moment}-{in_place}"
    src, out = work / "big.ko", work / "out.ko"
    original = (d / "big.ko").read_bytes()
    converted = setup["ref"]
    # A SIGINT during the interpreter's own start-up (under load, 0.1 s can be
    # before `python -m` has imported runpy and klpsym's packages) is CPython's
    # traceback, before klpsym's first line ran; the files must still be intact.
    klpsym_frames = re.findall(r'File "[^"]*/klpsym/([^"]*)", line \d+, in (\S+)', stderr)
    before_klpsym = "KeyboardInterrupt" in stderr and all(
        where == "<module>" and path in ("__init__.py", "cli/__init__.py")
        for path, where in klpsym_frames)
    assert before_klpsym or "Traceback" not in stderr
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL or (code == 0 and moment != "writing")
    else:
        # -SIGINT: it came before the interpreter set up its handler
        assert code in (130, 0, -signal.SIGINT) or before_klpsym and code == 1, stderr
        if code == 130:
            assert stderr.strip() == "klpsym: interrupted; no file was left half-written"
    if in_place:
        after = src.read_bytes()
        assert after in (original, converted), "the module was left half-written"
        if code != 0:
            assert after == original or moment in ("late", "writing")
    else:
        assert hashlib.sha256(src.read_bytes()).digest() == hashlib.sha256(original).digest()
        if out.exists():
            assert out.read_bytes() == converted, "a partial output"
        if code not in (0,):
            assert not out.exists() or moment in ("late", "writing")
    leftovers = sorted(p.name for p in work.iterdir() if p.name not in ("big.ko", "out.ko"))
    if sig == signal.SIGKILL and not _has_o_tmpfile(work):
        # documented: without O_TMPFILE a kill -9 may leave the hidden temporary
        leftovers = [n for n in leftovers if not n.endswith(TEMP_SUFFIX)]
    assert leftovers == [], f"left in the directory: {leftovers}"


def _has_o_tmpfile(directory: Path) -> bool:
    try:
        os.close(os.open(directory, os.O_RDWR | os.O_TMPFILE, 0o600))
    except OSError:
        return False
    return os.path.isdir("/proc/self/fd")
