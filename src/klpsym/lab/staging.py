"""Building a cache directory so that it is there whole or not at all.

Every tree the lab keeps (a provisioned kernel, a build chroot, a kernel's
headers linked into a chroot) is built in a hidden ``.tmp-*`` directory beside
its final place, marked complete last, and renamed into place; a failure or an
interrupt removes the temporary directory, and what an earlier crash left is
removed by the next builder (callers hold the lock that serialises builders).
A reader trusts a tree only when it has the marker (``is_complete``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from klpsym.fsutil import fsync_dir

MARKER = "complete"


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def is_complete(tree: Path) -> bool:
    return (tree / MARKER).is_file()


def completed_at(tree: Path) -> float:
    """When ``tree`` was completed (its marker's mtime)."""
    return (tree / MARKER).stat().st_mtime


@contextmanager
def staged_dir(dest: Path, remove: Callable[[Path], None] = _rmtree) -> Iterator[Path]:
    """A fresh hidden directory beside ``dest`` to build it in.  When the block
    ends normally the directory gets the completion marker, its contents and
    its parent are fsync'ed, and it is renamed to ``dest`` (replacing an
    incomplete ``dest``); on any exception it is removed.  ``remove`` deletes a
    tree (a chroot needs its mounts undone first)."""
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(".tmp-*"):  # an interrupted run's
        remove(stale)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
    try:
        yield tmp
        os.sync()  # the tree's files, many and written by other programs (dpkg-deb, cp)
        (tmp / MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
        if dest.exists() or dest.is_symlink():
            remove(dest)
        os.rename(tmp, dest)
        fsync_dir(parent)
    except BaseException:
        remove(tmp)
        raise
