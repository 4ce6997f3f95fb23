"""What klpsym reads and writes cannot hurt the user: the input is never
overwritten without --in-place, only regular files are read as modules
(instantly refused otherwise), and a plain object is not "converted"."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elfbuilder import STB_GLOBAL, STT_FUNC, ElfBuilder, simple_module
from klpsym.cli.main import main

KDIR_FLAGS = ["--kernel-dir", "/nonexistent-kdir"]  # never reached: the input is refused first


def _module(tmp_path: Path, name: str = "m.ko") -> Path:
    p = tmp_path / name
    p.write_bytes(simple_module().build())
    return p


@pytest.mark.parametrize("spelling", ["same", "dotted", "hardlink", "symlink"])
def test_output_naming_the_input_is_refused(tmp_path: Path, spelling: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = _module(tmp_path)
    before = src.read_bytes()
    out = {"same": src, "dotted": tmp_path / "." / "m.ko", "hardlink": tmp_path / "h.ko",
           "symlink": tmp_path / "s.ko"}[spelling]
    if spelling == "hardlink":
        os.link(src, out)
    elif spelling == "symlink":
        out.symlink_to(src)
    assert main(["convert", str(src), "-o", str(out), *KDIR_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "is the input module" in err and "--in-place" in err and err.count("\n") == 1
    assert src.read_bytes() == before


def test_output_dash_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = _module(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["convert", str(src), "-o", "-", *KDIR_FLAGS]) == 2
    assert "not to stdout" in capsys.readouterr().err
    assert not (tmp_path / "-").exists()


def _fifo(tmp_path: Path) -> Path:
    p = tmp_path / "fifo.ko"
    os.mkfifo(p)
    return p


@pytest.mark.parametrize("command", [["inspect"], ["convert", "--dry-run"], ["check"],
                                     ["insmod", "--print-args"]])
@pytest.mark.parametrize("what", ["/dev/zero", "fifo", "directory"])
def test_only_regular_files_are_read_as_modules(tmp_path: Path, command: list[str],
                                                what: str) -> None:
    path = {"/dev/zero": Path("/dev/zero"), "fifo": _fifo(tmp_path) if what == "fifo" else None,
            "directory": tmp_path / "dir.ko"}[what]
    if what == "directory":
        (tmp_path / "dir.ko").mkdir()
        if command == ["check"]:  # check searches directories: an empty one is the error
            pass
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "klpsym.cli.main", command[0], str(path),
                          *command[1:]], capture_output=True, text=True, timeout=60,
                         check=False)
    assert time.monotonic() - start < 30
    assert run.returncode == 2, run
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and str(path) in lines[0], run.stderr
    if what != "directory":
        assert "not a regular file" in lines[0]


def test_a_plain_object_is_not_converted(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    b = ElfBuilder()  # what `gcc -c` makes: no .modinfo, no .gnu.linkonce.this_module
    text = b.text(16)
    b.symbol("f", text, STB_GLOBAL, STT_FUNC, 0, 16)
    obj = tmp_path / "plain.o"
    obj.write_bytes(b.build())
    assert main(["convert", str(obj), "-o", str(tmp_path / "out.ko"), *KDIR_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "not a kernel module (no .modinfo section" in err and err.count("\n") == 1
    assert not (tmp_path / "out.ko").exists()
