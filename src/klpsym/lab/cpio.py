"""Write initramfs archives: cpio "newc" (SVR4 without CRC), as the kernel unpacks them.

Written in Python so that device nodes and root ownership need no privileges
and archives are byte-for-byte reproducible (fixed mtime, inode numbers).
The kernel accepts several archives concatenated into one initrd
(Documentation/driver-api/early-userspace/buffer-format.rst), which lets a
cached base be reused with a small per-boot archive appended.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from klpsym.errors import LabError

_TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


class CpioWriter:
    """Accumulates entries; ``bytes()`` gives the archive with its trailer."""

    def __init__(self, first_inode: int = 1) -> None:
        self._parts: list[bytes] = []
        self._ino = first_inode
        self._dirs: set[str] = set()

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        encoded = name.encode() + b"\0"
        fields = (
            self._ino,
            mode,
            0,  # uid
            0,  # gid
            2 if stat.S_ISDIR(mode) else 1,
            0,  # mtime: reproducible
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(encoded),
            0,  # check
        )
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._parts += [header, encoded, _pad4(len(header) + len(encoded)), data, _pad4(len(data))]

    @staticmethod
    def _clean(name: str) -> str:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise LabError(f"bad guest path {name!r}: use a relative path without '..'")
        return str(path)

    def mkdir(self, name: str, mode: int = 0o755) -> None:
        """Add ``name`` and its missing parents as directories."""
        name = self._clean(name)
        parts = PurePosixPath(name).parts
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in self._dirs:
                self._dirs.add(sub)
                self._entry(sub, stat.S_IFDIR | mode)

    def _parent(self, name: str) -> None:
        parent = str(PurePosixPath(name).parent)
        if parent != ".":
            self.mkdir(parent)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = self._clean(name)
        self._parent(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = self._clean(name)
        self._parent(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = self._clean(name)
        self._parent(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def add_path(self, name: str, src: Path) -> None:
        """Copy a host file, or a directory tree, to ``name`` (symlinks kept as links)."""
        try:
            if src.is_symlink():
                self.symlink(name, os.readlink(src))
            elif src.is_dir():
                self.mkdir(name)
                for child in sorted(src.iterdir()):
                    self.add_path(f"{name}/{child.name}", child)
            else:
                mode = 0o755 if os.access(src, os.X_OK) else 0o644
                self.file(name, src.read_bytes(), mode)
        except OSError as exc:
            raise LabError(f"cannot read {src} for the guest: {exc.strerror}") from None

    def add_paths(self, entries: Iterable[tuple[str, Path]]) -> None:
        for name, src in entries:
            self.add_path(name, src)

    def __bytes__(self) -> bytes:
        saved_parts, saved_ino = list(self._parts), self._ino
        self._entry(_TRAILER, 0)
        out = b"".join(self._parts)
        self._parts, self._ino = saved_parts, saved_ino
        return out
