"""A cache of parsed symbol sources, and the name index they share.

Parsing a 100k-line kallsyms or a 30k-line Module.symvers costs a tenth of a
second in Python; a run that converts one module pays it every time.  So the
parsed tables (numpy arrays, see :class:`NameIndex` for the names) are stored
in one file per source under the cache directory and mapped back on the next
run, in about a millisecond.

* Where: ``$KLPSYM_SYMCACHE``, else ``$KLPSYM_CACHE/symcache``, else
  ``$XDG_CACHE_HOME/klpsym/symcache``, else ``~/.cache/klpsym/symcache``.
  ``KLPSYM_NO_CACHE=1`` (or ``--no-cache``) turns it off.
* Key: one entry per source path (its real path); the entry records the
  source's device, inode, size, mtime_ns and ctime_ns and is used only while
  they all match (ctime cannot be set back by a user, so any write to the
  source invalidates the entry).  ``/proc/kallsyms`` is keyed on the boot id
  and on whether addresses are shown to this reader.
* An entry is written atomically (temporary file, rename) with a checksum
  of its contents; one that is truncated, corrupt, of another format
  version or for another file is ignored and rebuilt.  A cache that cannot be
  written (read-only home) is skipped silently: it is an optimisation only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

# Where entries are and what keys them (re-exported: the sources key their
# entries with file_key).
from klpsym.kernel.cachekey import FORMAT, cache_dir
from klpsym.kernel.cachekey import HEAD as _HEAD
from klpsym.kernel.cachekey import MAGIC as _MAGIC
from klpsym.kernel.cachekey import entry_path as _entry
from klpsym.kernel.cachekey import file_key as file_key

_ALIGN = 64
_DTYPES = frozenset({"<u8", "<u4", "<i8", "|u1"})
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = np.uint64(0x100000001B3)
T = TypeVar("T")


# -- the name index -------------------------------------------------------------


def name_hashes(blob: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """64-bit FNV-1a of each name ``blob[starts[i]: starts[i] + lengths[i]]``,
    computed for all names at once (one pass per character position over the
    names that are that long)."""
    n = len(starts)
    out = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if not n:
        return out
    longest = int(lengths.max())
    # longest first; as 16-bit keys when they fit, which numpy's stable sort
    # sorts by radix
    keys = longest - lengths
    order = np.argsort(keys.astype(np.uint16) if longest < (1 << 16) else keys, kind="stable")
    ln, at = lengths[order], starts[order].astype(np.int64)
    h = out[order]
    asc = ln[::-1]  # ascending
    for k in range(longest):
        m = n - int(np.searchsorted(asc, k, side="right"))  # names longer than k
        hk = h[:m]
        np.bitwise_xor(hk, np.take(blob, at[:m]), out=hk)
        np.multiply(hk, _FNV_PRIME, out=hk)
        at[:m] += 1
    out[order] = h
    return out


def hashes_of(names: Sequence[str]) -> np.ndarray:
    """The :func:`name_hashes` of ``names``, in their order."""
    blob, starts = encode_names(names)
    return name_hashes(blob, starts[:-1], np.diff(starts) - 1)


def encode_names(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Names as one '\\n'-separated UTF-8 blob and n+1 start offsets (names
    hold no newline: every source is read line by line)."""
    text = "\n".join(names) + "\n" if names else ""
    blob = np.frombuffer(text.encode("utf-8", errors="surrogateescape"), dtype=np.uint8)
    ends = np.flatnonzero(blob == 10)
    if len(ends) != len(names):
        raise ValueError("a name with a newline cannot be indexed")
    starts = np.zeros(len(names) + 1, dtype=np.int64)
    starts[1:] = ends + 1
    return blob, starts


class NameIndex:
    """Row lookup by name over a table whose names are stored as a blob.

    ``blob`` holds the names separated by '\\n'; row i is
    ``blob[starts[i]: starts[i+1] - 1]``.  ``hashes`` are the rows' FNV-1a
    hashes sorted, ``order`` the rows in that order (ties by row), so a name
    is found with one binary search and checked against the blob.
    """

    def __init__(self, blob: np.ndarray, starts: np.ndarray, hashes: np.ndarray,
                 order: np.ndarray) -> None:
        self.blob, self.starts, self.hashes, self.order = blob, starts, hashes, order
        self._memo: dict[str, list[int]] = {}
        self._names: list[str] | None = None

    @classmethod
    def build(cls, names: Sequence[str]) -> NameIndex:
        return cls.from_blob(*encode_names(names))

    @classmethod
    def from_blob(cls, blob: np.ndarray, starts: np.ndarray) -> NameIndex:
        """The index of names already in a blob (as :func:`encode_names` makes)."""
        h = name_hashes(blob, starts[:-1], np.diff(starts) - 1)
        order = np.argsort(h, kind="stable").astype(np.uint32)
        return cls(blob, starts, h[order], order)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}blob": self.blob, f"{prefix}starts": self.starts,
                f"{prefix}hashes": self.hashes, f"{prefix}order": self.order}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> NameIndex:
        """From :meth:`arrays`; ValueError if they do not fit together."""
        blob, starts = arrays[f"{prefix}blob"], arrays[f"{prefix}starts"]
        hashes, order = arrays[f"{prefix}hashes"], arrays[f"{prefix}order"]
        n = len(starts) - 1
        if (n < 0 or len(hashes) != n or len(order) != n
                or (n and (int(starts[0]) != 0 or int(starts[-1]) != len(blob)
                           or bool(np.any(np.diff(starts) < 1))
                           or int(order.max()) >= n or bool(np.any(hashes[1:] < hashes[:-1]))))):
            raise ValueError("inconsistent name index")
        return cls(blob, starts, hashes, order)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def name(self, row: int) -> str:
        a, b = int(self.starts[row]), int(self.starts[row + 1]) - 1
        return self.blob[a:b].tobytes().decode("utf-8", errors="surrogateescape")

    def names(self) -> list[str]:
        """Every name, in row order."""
        if self._names is None:
            text = self.blob.tobytes().decode("utf-8", errors="surrogateescape")
            self._names = text.split("\n")[:-1]
        return self._names

    def rows(self, name: str) -> list[int]:
        """The rows called ``name``, ascending."""
        found = self._memo.get(name)
        if found is None:
            self.prefetch([name])
            found = self._memo[name]
        return found

    def prefetch(self, names: Sequence[str]) -> None:
        """Look up many names at once (vectorised); :meth:`rows` then costs a
        dict lookup."""
        todo = []
        for n in dict.fromkeys(names):
            if n in self._memo:
                continue
            if "\n" in n:  # the indexed names are lines' fields: never one of them
                self._memo[n] = []
            else:
                todo.append(n)
        if not todo:
            return
        qblob, qstarts = encode_names(todo)
        qh = name_hashes(qblob, qstarts[:-1], np.diff(qstarts) - 1)
        lo = np.searchsorted(self.hashes, qh, side="left").tolist()
        hi = np.searchsorted(self.hashes, qh, side="right").tolist()
        raw = self.blob
        for name, a, b in zip(todo, lo, hi, strict=True):
            if a == b:
                self._memo[name] = []
                continue
            want = name.encode("utf-8", errors="surrogateescape")
            rows = []
            for r in sorted(self.order[a:b].tolist()):
                s, e = int(self.starts[r]), int(self.starts[r + 1]) - 1
                if e - s == len(want) and raw[s:e].tobytes() == want:
                    rows.append(r)
            self._memo[name] = rows

    def duplicates(self) -> dict[str, list[int]]:
        """Every name on more than one row, with its rows."""
        h = self.hashes
        same = np.flatnonzero(h[1:] == h[:-1])
        out: dict[str, list[int]] = {}
        for r in sorted(set(self.order[np.concatenate([same, same + 1])].tolist())):
            name = self.name(r)
            if name not in out:
                rows = self.rows(name)
                if len(rows) > 1:
                    out[name] = rows
        return out


# -- the cache files ------------------------------------------------------------


def proc_kallsyms_key(path: Path) -> list[object] | None:
    """/proc/kallsyms is the same for a whole boot, but shows addresses only
    to some readers."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        with open(path, "rb") as f:
            first = f.readline().split()
    except OSError:
        return None
    shown = bool(first) and first[0].strip(b"0") != b""
    return ["boot", boot, shown, os.uname().release]


def load(kind: str, path: Path, key: Sequence[object]) -> tuple[dict[str, np.ndarray],
                                                                dict[str, object]] | None:
    """The arrays and metadata stored for ``path`` under ``key``, or None
    (no entry, another key, corrupt, caching off)."""
    entry = _entry(kind, path)
    if entry is None:
        return None
    try:
        raw = entry.read_bytes()
    except OSError:
        return None
    return _decode(raw, kind, os.path.realpath(path), list(key))


def _decode(raw: bytes, kind: str, real: str,
            key: list[object]) -> tuple[dict[str, np.ndarray], dict[str, object]] | None:
    if len(raw) < _HEAD.size:
        return None
    magic, hlen, _, check = _HEAD.unpack_from(raw)
    if magic != _MAGIC or _HEAD.size + hlen > len(raw) or len(raw) % 8:
        return None
    if _checksum(raw, _HEAD.size) != check:
        return None
    try:
        head = json.loads(raw[_HEAD.size: _HEAD.size + hlen])
        if (head["format"], head["kind"], head["path"], head["key"]) != (FORMAT, kind, real,
                                                                           key):
            return None
        arrays: dict[str, np.ndarray] = {}
        for name, (dtype, count, offset) in head["arrays"].items():
            if dtype not in _DTYPES:
                return None
            dt = np.dtype(dtype)
            if offset < 0 or count < 0 or offset + count * dt.itemsize > len(raw):
                return None
            a = np.frombuffer(raw, dtype=dt, count=count, offset=offset)
            arrays[name] = a
        meta = head["meta"]
        if not isinstance(meta, dict):
            return None
    except (ValueError, KeyError, TypeError):
        return None
    return arrays, meta


def _checksum(raw: bytes | memoryview, start: int) -> int:
    """The sum of the 64-bit words from ``start`` on, modulo 2**64: catches a
    torn or zeroed write and any single changed word, at memory speed (a
    CRC32 of a 5 MB entry would cost more than parsing most of it)."""
    words = np.frombuffer(raw, dtype="<u8", offset=start)
    return int(np.add.reduce(words, dtype=np.uint64)) if len(words) else 0


def store(kind: str, path: Path, key: Sequence[object], arrays: Mapping[str, np.ndarray],
          meta: Mapping[str, object]) -> None:
    """Write the entry for ``path`` (atomically; errors are ignored)."""
    entry = _entry(kind, path)
    if entry is None:
        return
    layout: dict[str, list[int | str]] = {}
    parts: list[memoryview] = []
    offset = 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        if a.dtype.str not in _DTYPES:
            raise ValueError(f"symcache: dtype {a.dtype.str} of {name} cannot be stored")
        layout[name] = [a.dtype.str, int(a.size), offset]
        data = a.view(np.uint8).reshape(-1).data if a.size else memoryview(b"")
        pad = -len(data) % _ALIGN
        parts += [data, memoryview(bytes(pad))]
        offset += len(data) + pad
    # The arrays start after the header, aligned: find a start that leaves
    # room for the header with the absolute offsets in it.
    start = _ALIGN
    while True:
        head = {"format": FORMAT, "kind": kind, "path": os.path.realpath(path),
                "key": list(key), "meta": dict(meta),
                "arrays": {k: [d, c, int(o) + start] for k, (d, c, o) in layout.items()}}
        hbytes = json.dumps(head, separators=(",", ":")).encode()
        if _HEAD.size + len(hbytes) <= start:
            break
        start += _ALIGN * (1 + (_HEAD.size + len(hbytes) - start) // _ALIGN)
    hbytes += b" " * (start - _HEAD.size - len(hbytes))
    # The checksum of the words after the fixed header, part by part (each
    # starts 8-aligned, the padding is zeros): no copy of the arrays joined
    # into one blob.
    total = _checksum(hbytes, 0)
    for part in parts:
        whole = len(part) // 8 * 8
        total += _checksum(part[:whole], 0)
        if whole < len(part):
            total += int.from_bytes(bytes(part[whole:]), "little")
    total %= 1 << 64
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(_HEAD.pack(_MAGIC, len(hbytes), 0, total))
            f.write(hbytes)
            for part in parts:
                f.write(part)
        os.replace(tmp, entry)
    except BaseException as e:  # an OSError, or an interrupt: no temporary file left
        try:
            tmp.unlink()
        except OSError:
            pass
        if not isinstance(e, OSError):
            raise


def cached(kind: str, path: Path, key: Sequence[object] | None, *, enabled: bool,
           parse: Callable[[], T],
           to_arrays: Callable[[T], tuple[dict[str, np.ndarray], dict[str, object]]],
           from_arrays: Callable[[dict[str, np.ndarray], dict[str, object]], T]) -> T:
    """The table for ``path``: ``from_arrays`` of the cache entry stored
    under ``key`` when there is one it accepts, else ``parse()``, stored
    with ``to_arrays`` for the next run."""
    if not enabled or key is None or cache_dir() is None:
        return parse()
    hit = load(kind, path, key)
    if hit is not None:
        try:
            return from_arrays(*hit)
        except (ValueError, KeyError, TypeError, IndexError):
            pass  # an entry that does not fit: rebuild it
    table = parse()
    try:
        arrays, meta = to_arrays(table)
    except ValueError:
        return table  # a table the cache cannot hold (a name with a newline): not stored
    store(kind, path, key, arrays, meta)
    return table
