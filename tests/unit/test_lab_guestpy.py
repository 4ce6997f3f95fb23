"""klpsym.lab.guestpy: which files the guest's Python is made of."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from klpsym.errors import LabError
from klpsym.lab import guestpy
from klpsym.lab.guestpy import (
    GUEST_SETUP,
    LOADER,
    PACKAGES,
    GuestPython,
    guest_python,
    package_files,
    parse_ldd,
    prune,
    stdlib_files,
)

SO = ".cpython-311-x86_64-linux-gnu.so"


def _tree(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x = 1\n")


def test_stdlib_selection(tmp_path: Path) -> None:
    kept = ["os.py", "json/__init__.py", "encodings/utf_8.py", "ctypes/util.py",
            "importlib/metadata/__init__.py", "LICENSE.txt",
            f"lib-dynload/_json{SO}", f"lib-dynload/_ctypes{SO}", f"lib-dynload/zlib{SO}"]
    dropped = ["test/test_os.py", "idlelib/idle.py", "tkinter/__init__.py",
               "turtledemo/__main__.py", "turtle.py", "ensurepip/__init__.py",
               "lib2to3/main.py", "pydoc_data/topics.py", "site-packages/foo/__init__.py",
               "distutils/core.py", "unittest/case.py", "ctypes/test/test_abi.py",
               "sqlite3/test/x.py", "__pycache__/os.cpython-311.pyc",
               "json/__pycache__/__init__.cpython-311.opt-1.pyc",
               "config-3.11-x86_64-linux-gnu/libpython3.11.a", "lib2to3/Grammar.txt",
               "README.txt", f"lib-dynload/_testcapi{SO}", f"lib-dynload/_tkinter{SO}",
               f"lib-dynload/_ssl{SO}", f"lib-dynload/_hashlib{SO}",
               f"lib-dynload/_ctypes_test{SO}", f"lib-dynload/xxlimited{SO}"]
    _tree(tmp_path, kept + dropped)
    assert sorted(map(str, stdlib_files(tmp_path))) == sorted(kept)


def test_numpy_selection(tmp_path: Path) -> None:
    kept = ["__init__.py", "version.py", f"_core/_multiarray_umath{SO}",
            "_core/multiarray.py", f"linalg/_umath_linalg{SO}", "_typing/_array_like.py"]
    dropped = ["__init__.pyi", "_core/tests/test_api.py", "lib/tests/data/x.npy",
               "f2py/__init__.py", "typing/__init__.py", "_pyinstaller/hook-numpy.py",
               f"_core/_simd{SO}", f"_core/_multiarray_tests{SO}", "_core/include/numpy/x.h",
               "_core/lib/libnpymath.a", "random/lib/libnpyrandom.a", "random/c_distributions.pxd",
               "__pycache__/version.cpython-311.pyc", "testing/__init__.py",
               "testing/_private/utils.py"]
    _tree(tmp_path, kept + dropped)
    assert sorted(map(str, package_files(tmp_path, PACKAGES["numpy"]))) == sorted(kept)


def test_zstandard_keeps_the_c_backend_only(tmp_path: Path) -> None:
    _tree(tmp_path, ["__init__.py", "__init__.pyi", f"backend_c{SO}", f"_cffi{SO}",
                     "backend_cffi.py", "py.typed"])
    assert sorted(map(str, package_files(tmp_path, PACKAGES["zstandard"]))) == [
        "__init__.py", f"backend_c{SO}", "py.typed"]


def test_parse_ldd() -> None:
    text = """\
\tlinux-vdso.so.1 (0x00007ffc1b5f2000)
\tlibpython3.11.so.1.0 => /opt/py/lib/libpython3.11.so.1.0 (0x00007f4506400000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f450621e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f4506b49000)
\tlibgone.so.1 => not found
"""
    assert parse_ldd(text) == {
        "libpython3.11.so.1.0": Path("/opt/py/lib/libpython3.11.so.1.0"),
        "libc.so.6": Path("/lib/x86_64-linux-gnu/libc.so.6"),
        LOADER: Path("/lib64/ld-linux-x86-64.so.2"),
    }


def test_needed_libraries_refuses_a_missing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 0, "\tlibgone.so.1 => not found\n", "")

    monkeypatch.setattr(guestpy.subprocess, "run", fake_run)
    with pytest.raises(LabError, match=r"libgone\.so\.1.*cannot ship"):
        guestpy.needed_libraries([Path("/bin/true")])


def test_guest_layout() -> None:
    gp = GuestPython(Path("/c/base-1"), Path("/c/klpsym-2"))
    assert gp.files() == {"py": Path("/c/base-1"), "py/site": Path("/c/klpsym-2")}
    assert f"exec /lab/py/lib/{LOADER} --library-path /lab/py/lib" in GUEST_SETUP
    assert "PYTHONPATH=/lab/py/site:/lab/py/deps" in GUEST_SETUP


def test_assembled_for_this_interpreter(tmp_path: Path) -> None:
    """The real assembly (validated by running it on the host), then cached."""
    gp = guest_python(tmp_path)
    lib = gp.base / "lib"
    assert (lib / LOADER).is_file() and (lib / "libc.so.6").is_file()
    assert not list(gp.base.rglob("test_*.py"))
    assert (gp.site / "klpsym" / "cli" / "__pycache__").is_dir()
    pycs = list((gp.site / "klpsym").rglob("*.pyc"))
    assert pycs and all(p.read_bytes()[4:8] == b"\x01\0\0\0" for p in pycs)  # unchecked hash
    assert 30e6 < gp.size() < 150e6
    assert guest_python(tmp_path) == gp


def test_prune_keeps_the_newest_trees_of_each_kind(tmp_path: Path) -> None:
    """Old trees go (a ~2 MB site tree per klpsym change, ~85 MB per base),
    the newest few stay (another run may be booting with one), and so do
    the ones in use and other processes' temporary trees."""
    for i in range(12):
        for kind in ("klpsym", "base"):
            d = tmp_path / f"{kind}-{i:016x}"
            d.mkdir()
            os.utime(d, (1000 + i, 1000 + i))
    (tmp_path / "klpsym-ffff.abc123").mkdir()  # being assembled by another process
    in_use = {tmp_path / f"klpsym-{0:016x}", tmp_path / f"base-{0:016x}"}
    removed = prune(tmp_path, keep=in_use)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([f"klpsym-{i:016x}" for i in (0, 5, 6, 7, 8, 9, 10, 11)]
                          + [f"base-{i:016x}" for i in (0, 11)] + ["klpsym-ffff.abc123"])
    assert len(removed) == 24 - 10
