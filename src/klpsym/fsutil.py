"""Atomic file replacement: write a temporary file in the destination's
directory, fsync it, then rename it over the destination.  A reader (or an
interrupted run) sees the old file or the new one, never a partial one."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from klpsym.errors import KlpsymError


def read_file(path: Path, what: str, error: type[KlpsymError] = KlpsymError,
              fix: str = "") -> bytes:
    """The whole of a file, or one ``error`` line naming the file, its role
    (``what``: "kernel module", "Module.symvers") and, for a missing file,
    the ``fix``."""
    hint = f"; {fix}" if fix else ""
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected the {what} file") from None
    except PermissionError:
        raise error(f"{path}: permission denied reading the {what} file{hint}") from None
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise error(f"{path}: no such file ({what}){hint}") from None
        raise error(f"{path}: cannot read the {what} file: {e.strerror}") from None


def atomic_write(dest: Path, data: bytes, mode_from: Path | None = None) -> None:
    dest = Path(dest)
    directory = dest.parent if str(dest.parent) else Path(".")
    if not directory.is_dir():
        raise KlpsymError(f"{dest}: directory {directory} does not exist")
    if dest.is_dir():
        raise KlpsymError(f"{dest}: is a directory; give a file name for the output")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{dest.name}.", suffix=".tmp")
    except OSError as e:
        raise KlpsymError(f"{dest}: cannot write in {directory}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        mode = 0o644
        if mode_from is not None:
            try:
                mode = os.stat(mode_from).st_mode & 0o7777
            except OSError:
                pass
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except OSError as e:
        os.unlink(tmp)
        raise KlpsymError(f"{dest}: cannot write: {e.strerror}") from None
    except BaseException:
        os.unlink(tmp)
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
