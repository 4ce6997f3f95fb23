"""Reading files with one-line errors, and atomic file replacement.

An output is written to a temporary file in the destination's directory,
fsync'ed, then renamed over the destination, and the directory is fsync'ed:
a reader (or an interrupted run) sees the old file or the new one, never a
partial one.

Where the kernel and file system allow it (Linux >= 3.11, ext4, xfs, btrfs,
tmpfs, ...) the temporary file is opened with ``O_TMPFILE``: it has no name
while it is written and checked, so even a SIGKILL or a power cut during the
write leaves nothing behind.  It gets a hidden name
(``.NAME.XXXXXXXX.klpsym-tmp``) only for the instant between ``linkat()`` and
``rename()``.  Elsewhere the temporary file is created under that hidden name
from the start; SIGINT/SIGTERM and errors remove it, but a SIGKILL during the
write leaves it in the directory (it is never at the output path).
"""

from __future__ import annotations

import errno
import mmap
import os
import signal
import stat
import threading
from pathlib import Path
from types import TracebackType

from klpsym.errors import KlpsymError

TEMP_SUFFIX = ".klpsym-tmp"


def read_file(path: Path, what: str, error: type[KlpsymError] = KlpsymError,
              fix: str = "", *, regular: bool = False) -> bytes:
    """The whole of a file, or one ``error`` line naming the file, its role
    (``what``: "kernel module", "Module.symvers") and, for a missing file,
    the ``fix``.  ``regular``: refuse anything but a regular file (see
    :func:`open_regular`)."""
    if not regular:
        try:
            return path.read_bytes()
        except OSError as e:
            raise _read_error(e, path, what, error, fix) from None
    fd = open_regular(path, what, error, fix)
    try:
        with os.fdopen(fd, "rb") as f:
            return f.read()
    except OSError as e:
        raise _read_error(e, path, what, error, fix) from None


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: Path, what: str, error: type[KlpsymError] = KlpsymError,
                 fix: str = "") -> int:
    """A read-only descriptor of ``path`` if it is a regular file, else one
    ``error`` line.  Opened without blocking, so that a FIFO is refused at
    once instead of waiting for a writer, and checked before anything is
    read (``/dev/zero`` would be read until memory runs out)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise _read_error(e, path, what, error, fix) from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        os.close(fd)
        raise _read_error(e, path, what, error, fix) from None
    if stat.S_ISREG(mode):
        os.set_blocking(fd, True)
        return fd
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise error(f"{path}: is a directory, expected the {what} file")
    kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
    raise error(f"{path}: is {kind}, not a regular file; give the {what} file itself")


def map_file(path: Path, what: str, error: type[KlpsymError] = KlpsymError,
             fix: str = "", *, regular: bool = False) -> mmap.mmap | bytes:
    """The whole of a file, mapped read-only instead of read where it can be
    (a non-empty regular file): a 20 MB module costs ~10 ms to read into
    memory, and its mapping ~1 ms, paid only for the pages used.  Errors as
    :func:`read_file`'s, ``regular`` too.  The file must not be truncated
    while the map is in use (a write that replaces it by rename, as
    klpsym's own, is fine)."""
    if regular:
        fd = open_regular(path, what, error, fix)
    else:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise _read_error(e, path, what, error, fix) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_size > 0:
            try:
                return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                pass  # a file system that cannot map it: read it
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError as e:
        raise _read_error(e, path, what, error, fix) from None
    finally:
        os.close(fd)


def not_a_file(path: Path, given_as: str) -> str:
    """Why ``path`` (an input given as ``given_as``: a
    :func:`klpsym.errors.param` reference) is not a file to read: a
    directory, something else, or nothing."""
    if path.is_dir():
        return f"{path}: is a directory ({given_as}); pass the file itself"
    if path.exists():
        return f"{path}: not a regular file ({given_as}); pass the file itself"
    return f"{path}: no such file ({given_as})"


def _read_error(e: OSError, path: Path, what: str, error: type[KlpsymError],
                fix: str) -> KlpsymError:
    hint = f"; {fix}" if fix else ""
    if isinstance(e, IsADirectoryError):
        return error(f"{path}: is a directory, expected the {what} file")
    if isinstance(e, PermissionError):
        return error(f"{path}: permission denied reading the {what} file{hint}")
    if e.errno == errno.ENOENT:
        return error(f"{path}: no such file ({what}){hint}")
    return error(f"{path}: cannot read the {what} file: {e.strerror}")


def _temp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{os.urandom(4).hex()}{TEMP_SUFFIX}")


class AtomicOutput:
    """A file that appears at ``dest`` complete or not at all.

    Use as a context manager: write with :meth:`write`, optionally read back
    what was written with :meth:`map` (to check it before it is published),
    then :meth:`commit`.  Leaving the block without a commit (an exception,
    KeyboardInterrupt) discards the file; ``dest`` is untouched.
    """

    def __init__(self, dest: Path | str, mode_from: Path | None = None) -> None:
        self.dest = Path(dest)
        self.mode_from = mode_from
        self.directory = self.dest.parent if str(self.dest.parent) else Path(".")
        self._fd = -1
        self._named: Path | None = None  # the temp file's name, when it has one
        self.committed = False
        # The fsync started by sync_in_background(): its thread and the error
        # it met, if any; and whether anything was written since it started.
        self._sync: tuple[threading.Thread, list[OSError]] | None = None
        self._written_since_sync = False

    # -- opening ---------------------------------------------------------------

    def __enter__(self) -> AtomicOutput:
        dest, directory = self.dest, self.directory
        if not directory.is_dir():
            raise KlpsymError(f"{dest}: directory {directory} does not exist")
        if dest.is_dir():
            raise KlpsymError(f"{dest}: is a directory; give a file name for the output")
        if not os.path.isdir("/proc/self/fd"):  # needed to give the file a name
            self._open_named()
            return self
        try:
            self._fd = os.open(directory, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise KlpsymError(f"{dest}: cannot write in {directory}: {e.strerror}") from None
            self._open_named()  # no O_TMPFILE here (old kernel, file system without it)
        return self

    def _open_named(self) -> None:
        for _ in range(100):
            name = _temp_name(self.dest)
            try:
                self._fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                   0o600)
            except FileExistsError:
                continue
            except OSError as e:
                raise KlpsymError(
                    f"{self.dest}: cannot write in {self.directory}: {e.strerror}") from None
            self._named = name
            return
        raise KlpsymError(f"{self.dest}: cannot create a temporary file in {self.directory}")

    # -- writing ---------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview | object) -> None:
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
        self._written_since_sync = True
        try:
            while len(view):
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            raise KlpsymError(f"{self.dest}: cannot write: {e.strerror}") from None

    def map(self) -> mmap.mmap | bytes:
        """What was written so far, read-only (mapped, not copied)."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return b""
        return mmap.mmap(self._fd, size, access=mmap.ACCESS_READ)

    def sync_in_background(self) -> None:
        """Start the fsync of what was written so far in a thread, so that it
        overlaps what the caller does next (checking the output through
        :meth:`map`).  :meth:`commit` waits for it, and fsyncs again if more
        was written since, before the file is given its name; a file that is
        discarded is never named, whether or not this fsync has finished."""
        if self._sync is not None:
            return
        fd = os.dup(self._fd)  # the thread's own: discard() may close ours meanwhile
        errors: list[OSError] = []

        def run() -> None:
            try:
                os.fsync(fd)
            except OSError as e:
                errors.append(e)
            finally:
                os.close(fd)

        thread = threading.Thread(target=run, name="klpsym-fsync", daemon=True)
        thread.start()
        self._sync = (thread, errors)
        self._written_since_sync = False

    def _wait_for_sync(self) -> None:
        """fsync the file: wait for the background fsync, or do it now."""
        if self._sync is None:
            os.fsync(self._fd)
            return
        thread, errors = self._sync
        self._sync = None
        thread.join()
        if errors:
            raise errors[0]
        if self._written_since_sync:
            os.fsync(self._fd)

    # -- publishing ------------------------------------------------------------

    def commit(self) -> None:
        """fsync the file (or wait for :meth:`sync_in_background`), give it
        its mode, put it at ``dest`` (atomically), fsync the directory.
        SIGINT/SIGTERM wait until this is done."""
        mode = 0o644
        if self.mode_from is not None:
            try:
                mode = os.stat(self.mode_from).st_mode & 0o7777
            except OSError:
                pass
        main = threading.current_thread() is threading.main_thread()
        blocked = {signal.SIGINT, signal.SIGTERM}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked) if main else None
        try:
            try:
                self._wait_for_sync()
                os.fchmod(self._fd, mode)
                if self._named is None:
                    try:
                        self._named = self._link_tmpfile()
                    except OSError:  # /proc hidden or linkat refused: copy it instead
                        self._copy_to_named(mode)
                assert self._named is not None
                os.replace(self._named, self.dest)
            except OSError as e:
                raise KlpsymError(f"{self.dest}: cannot write: {e.strerror}") from None
            self._named = None
            self.committed = True
            fsync_dir(self.directory)
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _link_tmpfile(self) -> Path:
        """Give the O_TMPFILE file a (hidden, temporary) name."""
        # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N (open(2): O_TMPFILE).
        # os.link() calls plain link(), which does not follow that magic link,
        # unless a dir fd is given: the directory's (the source is absolute).
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for _ in range(100):
                name = _temp_name(self.dest)
                try:
                    os.link(f"/proc/self/fd/{self._fd}", name.name, src_dir_fd=dfd,
                            dst_dir_fd=dfd, follow_symlinks=True)
                except FileExistsError:
                    continue
                return name
        finally:
            os.close(dfd)
        raise OSError(errno.EEXIST, "no free temporary name")

    def _copy_to_named(self, mode: int) -> None:
        """Copy the unnamed file into a named temporary one (fsync'ed) and
        continue with that."""
        unnamed = self._fd
        self._open_named()
        try:
            size = os.fstat(unnamed).st_size
            done = 0
            while done < size:
                n = os.sendfile(self._fd, unnamed, done, size - done)
                if n == 0:
                    raise OSError(errno.EIO, "short copy")
                done += n
            os.fsync(self._fd)
            os.fchmod(self._fd, mode)
        finally:
            os.close(unnamed)

    def discard(self) -> None:
        if self._named is not None:
            try:
                os.unlink(self._named)
            except OSError:
                pass
            self._named = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.discard()


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so that a rename or a new name in it is durable (best effort)."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def atomic_write(dest: Path, data: bytes | bytearray | memoryview | mmap.mmap,
                 mode_from: Path | None = None) -> None:
    """Replace ``dest`` with ``data`` atomically (see the module docstring)."""
    with AtomicOutput(dest, mode_from) as out:
        out.write(data)
        out.commit()
