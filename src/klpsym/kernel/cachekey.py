"""Where the symbol cache (:mod:`klpsym.kernel.symcache`) keeps the entry of
a source and what keys it, and whether an entry for a key is there: without
numpy, so that the command line can ask before numpy is imported (whether to
start decompressing a kernel image ahead, :func:`klpsym.kernel.vmlinuz.prefetch`)."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

from klpsym.cachepath import symcache_dir

FORMAT = 1
MAGIC = b"KLPSYMC\0"
HEAD = struct.Struct("<8sIIQ")  # magic, header length, 0, checksum of everything after


def cache_dir() -> Path | None:
    """The cache directory, or None when caching is turned off."""
    found = symcache_dir()
    return None if found is None else Path(found)


def file_key(path: Path) -> list[object] | None:
    """What identifies this version of a source file, or None if it cannot
    be keyed (missing file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def image_key(path: Path, release: str | None) -> list[object] | None:
    """The key of a kernel image's kallsyms: the file and the target's
    release (kernel.image.read_image)."""
    key = file_key(path)
    return None if key is None else key + [release if release is not None else ""]


def entry_path(kind: str, path: Path) -> Path | None:
    d = cache_dir()
    if d is None:
        return None
    real = os.path.realpath(path).encode("utf-8", "surrogateescape")
    # Two checksums name the entry (hashlib would cost more to import than
    # this whole lookup); the entry records the real path and is only used
    # for it, so a clash costs a rebuild, never a wrong table.
    digest = f"{zlib.crc32(real):08x}{zlib.adler32(real):08x}"
    return d / f"{kind}-{digest}.klpc"


def has_image_entry(path: Path) -> bool:
    """Whether the cache holds the kallsyms of the kernel image at ``path``
    as it is now (:func:`image_key`), for whichever target release: the
    command line asks before it has read the target's release, to start
    decompressing the image ahead.  By the entry's header alone (its
    checksum and release are checked when it is loaded: a damaged entry
    is rebuilt then)."""
    entry = entry_path("image", path)
    key = file_key(path)
    if entry is None or key is None:
        return False
    try:
        with open(entry, "rb") as f:
            fixed = f.read(HEAD.size)
            if len(fixed) < HEAD.size:
                return False
            magic, hlen, _, _ = HEAD.unpack(fixed)
            if magic != MAGIC or hlen > 1 << 20:
                return False
            head = json.loads(f.read(hlen))
        return bool((head["format"], head["kind"], head["path"], head["key"][:-1])
                    == (FORMAT, "image", os.path.realpath(path), key))
    except (OSError, ValueError, KeyError, TypeError):
        return False
