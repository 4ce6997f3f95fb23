"""klpsym.fsutil: atomic replacement of an output file."""

from __future__ import annotations

import mmap
import os
import re
import stat
import time
from pathlib import Path

import pytest

from klpsym import fsutil
from klpsym.errors import KlpsymError
from klpsym.fsutil import TEMP_SUFFIX, AtomicOutput, atomic_write


@pytest.fixture(params=["O_TMPFILE", "named"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "named":  # as without O_TMPFILE support: a hidden named temp
        real = os.path.isdir
        monkeypatch.setattr(fsutil.os.path, "isdir",
                            lambda p: False if p == "/proc/self/fd" else real(p))
    return str(request.param)


def _synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record what os.fsync is called on: 'file' or 'dir'."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    return seen


def test_replaces_with_fsync_of_file_and_directory(tmp_path: Path, mode: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in.ko"
    src.write_bytes(b"old")
    src.chmod(0o640)
    dest = tmp_path / "out.ko"
    dest.write_bytes(b"previous")
    seen = _synced(monkeypatch)
    atomic_write(dest, b"new content", mode_from=src)
    assert dest.read_bytes() == b"new content"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert seen == ["file", "dir"]  # the data before the rename, the directory after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ko", "out.ko"]


def test_unnamed_until_committed(tmp_path: Path, mode: str) -> None:
    dest = tmp_path / "out.ko"
    with AtomicOutput(dest) as out:
        out.write(b"abc")
        out.write(memoryview(b"def"))
        assert bytes(out.map()) == b"abcdef"
        names = sorted(p.name for p in tmp_path.iterdir())
        if mode == "O_TMPFILE":
            assert names == []  # nothing visible while it is written
        else:
            assert len(names) == 1 and names[0].startswith(".out.ko.")
            assert names[0].endswith(TEMP_SUFFIX)
        assert not dest.exists()
        out.commit()
    assert dest.read_bytes() == b"abcdef"
    assert [p.name for p in tmp_path.iterdir()] == ["out.ko"]


def test_error_or_interrupt_leaves_nothing(tmp_path: Path, mode: str) -> None:
    dest = tmp_path / "out.ko"
    dest.write_bytes(b"keep me")
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), AtomicOutput(dest) as out:
            out.write(b"partial")
            raise exc
    with AtomicOutput(dest) as out:  # no commit: discarded
        out.write(b"never")
    assert dest.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["out.ko"]


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(KlpsymError, match="does not exist"):
        atomic_write(tmp_path / "no" / "out.ko", b"x")
    (tmp_path / "d").mkdir()
    with pytest.raises(KlpsymError, match="is a directory"):
        atomic_write(tmp_path / "d", b"x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anyway
            with pytest.raises(KlpsymError, match="cannot write"):
                atomic_write(ro / "out.ko", b"x")
    finally:
        ro.chmod(0o700)


def test_unnamed_file_that_cannot_be_linked_is_copied(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Where linkat() of /proc/self/fd/N is refused (a hidden /proc), the
    unnamed file is copied into a named temporary one and renamed."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(fsutil.os, "link", refuse)
    dest = tmp_path / "out.ko"
    data = bytes(range(256)) * 5000
    seen = _synced(monkeypatch)
    atomic_write(dest, data)
    assert dest.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["out.ko"]
    assert seen[-1] == "dir" and seen.count("file") >= 1


def test_background_fsync_is_done_before_the_name(tmp_path: Path, mode: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """sync_in_background(): commit() waits for that fsync (and fsyncs again
    what was written after it started) before the file gets its name."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        time.sleep(0.05)  # a slow disk: the caller goes on meanwhile
        real_fsync(fd)
        events.append(f"fsync {kind} {os.fstat(fd).st_size}" if kind == "file" else "fsync dir")

    def replace(a: object, b: object) -> None:
        events.append("rename")
        real_replace(a, b)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    monkeypatch.setattr(fsutil.os, "replace", replace)
    dest = tmp_path / "out.ko"
    with AtomicOutput(dest) as out:
        out.write(b"abc")
        out.sync_in_background()
        assert bytes(out.map()) == b"abc"  # read back while the fsync runs
        events.append("checked")
        out.commit()
    assert events == ["checked", "fsync file 3", "rename", "fsync dir"]
    events.clear()
    with AtomicOutput(dest) as out:
        out.write(b"abc")
        out.sync_in_background()
        out.write(b"def")  # e.g. a signature appended after the check
        out.commit()
    assert events == ["fsync file 6", "fsync file 6", "rename", "fsync dir"]
    assert dest.read_bytes() == b"abcdef"
    assert [p.name for p in tmp_path.iterdir()] == ["out.ko"]


def test_background_fsync_of_a_discarded_file_leaves_nothing(
        tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: (time.sleep(0.05), real_fsync(fd)))
    dest = tmp_path / "out.ko"
    dest.write_bytes(b"keep me")
    with pytest.raises(RuntimeError), AtomicOutput(dest) as out:
        out.write(b"partial")
        out.sync_in_background()
        raise RuntimeError("the check failed")
    assert dest.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["out.ko"]
    time.sleep(0.1)  # the fsync ends; still nothing
    assert [p.name for p in tmp_path.iterdir()] == ["out.ko"]


def test_background_fsync_error_is_reported(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fsutil.os, "fsync", fail)
    dest = tmp_path / "out.ko"
    with pytest.raises(KlpsymError, match="cannot write: Input/output error"), \
            AtomicOutput(dest) as out:
        out.write(b"abc")
        out.sync_in_background()
        out.commit()
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_map_file_maps_regular_files_and_reads_the_rest(tmp_path: Path) -> None:
    f = tmp_path / "m.ko"
    f.write_bytes(b"\x7fELF" + bytes(100))
    mapped = fsutil.map_file(f, "kernel module")
    assert isinstance(mapped, mmap.mmap) and bytes(mapped) == f.read_bytes()
    empty = tmp_path / "empty.ko"
    empty.write_bytes(b"")
    assert fsutil.map_file(empty, "kernel module") == b""
    proc = fsutil.map_file(Path("/proc/self/status"), "status")  # size 0, not mappable
    assert isinstance(proc, bytes) and b"Name:" in proc
    for path, message in ((tmp_path / "none.ko", "no such file (kernel module); fix it"),
                          (tmp_path, "is a directory, expected the kernel module file")):
        with pytest.raises(KlpsymError, match=re.escape(f"{path}: {message}")):
            fsutil.map_file(path, "kernel module", fix="fix it")
        with pytest.raises(KlpsymError, match=re.escape(f"{path}: {message}")):
            fsutil.read_file(path, "kernel module", fix="fix it")
