"""klpsym.fsutil: atomic replacement of an output file."""

from __future__ import annotations

import os
import stat
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
