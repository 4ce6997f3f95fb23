"""Module.symvers: the symbols a kernel (and its modules) export.

modpost writes one line per export, fields separated by tabs.  Three layouts
exist since symbol namespaces were added; the one in use is recognised on
each line from where the EXPORT_SYMBOL* word is:

* ``crc name module export`` -- before v5.4 (no namespaces).
* ``crc name namespace module export`` -- v5.4 and v5.5 (commit cb9b55d21fe0
  "modpost: add support for symbol namespaces"); the namespace field is
  always there, empty when the export has none.
* ``crc name module export namespace`` -- since v5.6: commit 5190044c2965
  ("modpost: move the namespace field in Module.symvers last", Jessica Yu),
  merged through "Kbuild fixes for v5.6 (3rd)" and tagged for stable, so
  later 5.4.y/5.5.y releases write this layout too.  (Verified from the
  patch thread and that pull request; not v5.9/5.10.)  The namespace is empty
  for most exports, so the line ends with a tab.

The CRC is ``0x00000000`` when CONFIG_MODVERSIONS is off (or the symbol has
no CRC); it is read as ``crc=None``.

Exports for named modules only (v6.16+): ``EXPORT_SYMBOL_GPL_FOR_MODULES``,
renamed ``EXPORT_SYMBOL_FOR_MODULES`` in v6.17 (include/linux/export.h:
``__EXPORT_SYMBOL(sym, "GPL", "module:" mods)``), put the export in the
namespace ``module:PATTERN[,PATTERN...]``.  kernel/module/main.c
(module_match(), since commit 092a4f5985f2 "module: Add module specific
symbol namespace support" and its follow-ups) lets a module use it when its
name matches one of the comma separated patterns; a pattern may end in ``*``
(tail glob, the only wildcard), and ``-`` and ``_`` compare equal (module
names are KBUILD_MODNAME, dashes turned into underscores).  Such a namespace
cannot be imported with MODULE_IMPORT_NS.  To every other module the symbol
is unexported.  (A July 2025 proposal also restricted these exports to
in-tree modules; whether that was merged is not verified, so it is not
modelled here.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from klpsym.errors import KernelSourceError, param
from klpsym.kernel import symcache
from klpsym.kernel._io import line_error, read_text
from klpsym.kernel.symcache import NameIndex

#: The export-type words modpost has written (export_str() in
#: scripts/mod/modpost.c; the UNUSED and GPL_FUTURE kinds were removed in 5.13).
EXPORT_TYPES = frozenset({
    "EXPORT_SYMBOL",
    "EXPORT_SYMBOL_GPL",
    "EXPORT_SYMBOL_GPL_FUTURE",
    "EXPORT_UNUSED_SYMBOL",
    "EXPORT_UNUSED_SYMBOL_GPL",
})
GPL_ONLY_TYPES = frozenset({"EXPORT_SYMBOL_GPL", "EXPORT_UNUSED_SYMBOL_GPL"})

MODULE_NS_PREFIX = "module:"
_SPACE = re.compile(r"\s")

#: Layout names, as recorded in :attr:`Symvers.layouts`.
LAYOUT_NO_NAMESPACE = "crc name module export (<5.4)"
LAYOUT_NAMESPACE_THIRD = "crc name namespace module export (5.4-5.5)"
LAYOUT_NAMESPACE_LAST = "crc name module export namespace (5.6+)"


@dataclass(frozen=True, slots=True)
class Export:
    """One exported symbol."""

    name: str
    crc: int | None  # None: 0x00000000, i.e. no CRC (modversions off)
    module: str  # "vmlinux" or the module's path without .ko ("fs/ext4/ext4")
    export_type: str  # "EXPORT_SYMBOL", "EXPORT_SYMBOL_GPL", ...
    namespace: str = ""  # "" when none; "module:kvm,kvm-*" for module-only exports
    origin: str = ""  # "path:line" it was read from

    @property
    def gpl_only(self) -> bool:
        return self.export_type in GPL_ONLY_TYPES

    @property
    def from_vmlinux(self) -> bool:
        return self.module == "vmlinux"

    @property
    def module_only(self) -> bool:
        """Exported for named modules only (EXPORT_SYMBOL_FOR_MODULES)."""
        return self.namespace.startswith(MODULE_NS_PREFIX)

    @property
    def allowed_modules(self) -> tuple[str, ...]:
        """The module name patterns of a module-only export, else ()."""
        if not self.module_only:
            return ()
        return tuple(p for p in self.namespace[len(MODULE_NS_PREFIX):].split(",") if p)

    @property
    def import_namespace(self) -> str | None:
        """The namespace a user must MODULE_IMPORT_NS(), if any (module-only
        namespaces are implicit and cannot be imported)."""
        if not self.namespace or self.module_only:
            return None
        return self.namespace

    def visible_to(self, module_name: str) -> bool:
        """Whether a module called ``module_name`` may link against this
        export (namespace imports aside)."""
        if not self.module_only:
            return True
        return module_name_matches(self.namespace[len(MODULE_NS_PREFIX):], module_name)


def module_name_matches(patterns: str, module_name: str) -> bool:
    """kernel/module/main.c module_match(): ``patterns`` is a comma separated
    list; a pattern ending in ``*`` matches by prefix; ``-`` equals ``_``."""
    name = module_name.replace("-", "_")
    for pat in patterns.split(","):
        if not pat:
            continue
        pat = pat.replace("-", "_")
        if pat.endswith("*"):
            if name.startswith(pat[:-1]):
                return True
        elif name == pat:
            return True
    return False


#: An export without its name and origin (Symvers.fields): module,
#: export_type, namespace, crc -- as in :class:`Export`.
ExportFields = tuple[str, str, str, int | None]


class Symvers:
    """The exports of one or more Module.symvers files, by name.

    One read from the symbol cache (:mod:`klpsym.kernel.symcache`) keeps
    them as columns and makes an :class:`Export` only for the names asked
    (``exports``, iteration and merging with another file make them all).
    """

    def __init__(self, exports: dict[str, Export] | None = None,
                 sources: Iterable[str] = (), layouts: Iterable[str] = ()) -> None:
        self._exports: dict[str, Export] | None = dict(exports or {})
        self._cols: _Columns | None = None
        self._fields: dict[str, ExportFields] | None = None
        self.sources: tuple[str, ...] = tuple(sources)
        self.layouts: frozenset[str] = frozenset(layouts)

    @property
    def exports(self) -> dict[str, Export]:
        if self._exports is None:
            assert self._cols is not None
            self._exports = self._cols.materialize()
        return self._exports

    # -- the cached form ---------------------------------------------------------

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """The exports as columns and metadata (for the symbol cache; one
        source only)."""
        if self._exports is None and self._cols is not None:
            cols = self._cols
            return cols.arrays, {"modules": cols.modules, "types": cols.types,
                                 "namespaces": cols.namespaces, "layouts": sorted(self.layouts)}
        exports = list(self.exports.values())
        codes: dict[str, dict[str, int]] = {"modules": {}, "types": {}, "namespaces": {}}

        def code(kind: str, value: str) -> int:
            table = codes[kind]
            return table.setdefault(value, len(table))

        n = len(exports)
        lines = np.fromiter((int(e.origin.rpartition(":")[2] or 0) for e in exports),
                            dtype="<u4", count=n)
        arrays = {
            "crc": np.fromiter((e.crc or 0 for e in exports), dtype="<u8", count=n),
            "module": np.fromiter((code("modules", e.module) for e in exports), dtype="<u4",
                                  count=n),
            "type": np.fromiter((code("types", e.export_type) for e in exports), dtype="|u1",
                                count=n),
            "namespace": np.fromiter((code("namespaces", e.namespace) for e in exports),
                                     dtype="<u4", count=n),
            "line": lines,
            **NameIndex.build([e.name for e in exports]).arrays("names_"),
        }
        meta: dict[str, object] = {k: list(v) for k, v in codes.items()}
        meta["layouts"] = sorted(self.layouts)
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, object],
                    source: str) -> Symvers:
        cols = _Columns(arrays, meta, source)
        layouts = meta["layouts"]
        if not isinstance(layouts, list):
            raise TypeError("layouts")
        s = cls(None, [source], (str(x) for x in layouts))
        s._exports, s._cols = None, cols
        return s

    def prefetch(self, names: Sequence[str]) -> None:
        """Look many names up at once; later :meth:`get` calls are cheap."""
        if self._exports is None and self._cols is not None:
            self._cols.index.prefetch(names)

    # -- queries -------------------------------------------------------------------

    def __len__(self) -> int:
        if self._exports is None and self._cols is not None:
            return len(self._cols.index)
        return len(self.exports)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[Export]:
        return iter(self.exports.values())

    def __repr__(self) -> str:
        return f"<Symvers {len(self)} exports from {', '.join(self.sources) or '-'}>"

    def get(self, name: str) -> Export | None:
        if self._exports is None and self._cols is not None:
            return self._cols.get(name)
        return self.exports.get(name)

    def fields(self) -> dict[str, ExportFields]:
        """Every export as (module, export_type, namespace, crc), by name:
        what :attr:`exports` holds, without an :class:`Export` object each
        (made in ~5 ms from the symbol cache, against ~30 ms for
        ``exports``: for `klpsym check` of many modules).  Made once."""
        if self._fields is None:
            if self._exports is None and self._cols is not None:
                self._fields = self._cols.fields()
            else:
                self._fields = {n: (e.module, e.export_type, e.namespace, e.crc)
                                for n, e in self.exports.items()}
        return self._fields

    def has_vmlinux_exports(self) -> bool:
        if self._exports is None and self._cols is not None:
            return self._cols.has_module("vmlinux")
        return any(e.from_vmlinux for e in self.exports.values())

    def vmlinux_exports_missing(self, present: np.ndarray) -> tuple[int, int, list[str]]:
        """How many of vmlinux's exports are not among ``present`` (the
        sorted 64-bit name hashes of a symbol source, see
        :func:`klpsym.kernel.symcache.hashes_of`): (missing, vmlinux
        exports, the first few missing names).  Set operations over the
        cached hash columns: ~1 ms for a distribution kernel's 10k exports."""
        if self._exports is None and self._cols is not None:
            cols = self._cols
            if "vmlinux" not in cols.modules:
                return 0, 0, []
            code = cols.modules.index("vmlinux")
            idx = cols.index
            rows = idx.order[cols.module[idx.order] == code]  # vmlinux rows, by hash
            hashes = idx.hashes[cols.module[idx.order] == code]

            def name(row: int) -> str:
                return idx.name(row)
        else:
            names = [e.name for e in self.exports.values() if e.from_vmlinux]
            hashes = symcache.hashes_of(names)
            rows = np.arange(len(names))

            def name(row: int) -> str:
                return names[row]
        pos = np.searchsorted(present, hashes)
        found = np.zeros(len(hashes), dtype=bool)
        inside = pos < len(present)
        found[inside] = present[pos[inside]] == hashes[inside]
        missing = np.sort(rows[~found])
        return int(len(missing)), int(len(hashes)), [name(int(r)) for r in missing[:3]]

    @property
    def source(self) -> str:
        return " + ".join(self.sources) if self.sources else "<no Module.symvers>"

    def is_exported(self, name: str) -> bool:
        return self.get(name) is not None

    def is_gpl_only(self, name: str) -> bool:
        """True if ``name`` is exported GPL-only (False if not exported)."""
        e = self.get(name)
        return e is not None and e.gpl_only

    def exported_by_vmlinux(self, name: str) -> bool:
        e = self.get(name)
        return e is not None and e.from_vmlinux

    def visible_to(self, name: str, module_name: str) -> bool:
        """Whether a module called ``module_name`` may use the export ``name``:
        False when it is not exported at all, or exported only for other
        modules (EXPORT_SYMBOL_FOR_MODULES)."""
        e = self.exports.get(name)
        return e is not None and e.visible_to(module_name)

    def merge(self, *others: Symvers) -> Symvers:
        """A new Symvers with the exports of ``self`` and ``others``.

        ``Symvers.merge(a, b, c)`` works too.  The same name exported by two
        different modules is an error (the kernel would refuse to load the
        second exporter); the same export read twice is kept once.
        """
        if not self.sources and not self.exports and len(others) == 1:
            other = others[0]  # nothing to merge with: share, do not copy
            s = Symvers(None, other.sources, other.layouts)
            s._exports, s._cols = other._exports, other._cols
            return s
        exports = dict(self.exports)
        sources = list(self.sources)
        layouts = set(self.layouts)
        for other in others:
            for name, e in other.exports.items():
                prev = exports.get(name)
                if prev is not None and prev.module != e.module:
                    raise KernelSourceError(
                        f"{e.origin or other.source}: {name} is exported by {e.module}, but "
                        f"{prev.origin or 'an earlier Module.symvers'} has it exported by "
                        f"{prev.module}; a symbol can be exported once (drop one "
                        f"{param('symvers')})"
                    )
                exports[name] = e
            sources.extend(s for s in other.sources if s not in sources)
            layouts |= other.layouts
        return Symvers(exports, sources, layouts)


class _Columns:
    """One Module.symvers as columns (see :meth:`Symvers.to_arrays`)."""

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, object],
                 source: str) -> None:
        self.index = NameIndex.from_arrays(arrays, "names_")
        n = len(self.index)
        self.crc, self.module = arrays["crc"], arrays["module"]
        self.type, self.namespace, self.line = arrays["type"], arrays["namespace"], arrays["line"]
        if any(len(a) != n for a in (self.crc, self.module, self.type, self.namespace,
                                     self.line)):
            raise ValueError("symbol cache entry with columns of different lengths")
        lists = []
        for key, col in (("modules", self.module), ("types", self.type),
                         ("namespaces", self.namespace)):
            values = meta[key]
            if not isinstance(values, list) or (n and int(col.max()) >= len(values)):
                raise ValueError(f"symbol cache entry with a bad {key} table")
            lists.append([str(v) for v in values])
        self.modules, self.types, self.namespaces = lists
        self.arrays = arrays
        self.source = source
        self._made: dict[int, Export] = {}

    def export(self, row: int) -> Export:
        e = self._made.get(row)
        if e is None:
            e = Export(self.index.name(row), int(self.crc[row]) or None,
                       self.modules[int(self.module[row])], self.types[int(self.type[row])],
                       self.namespaces[int(self.namespace[row])],
                       f"{self.source}:{int(self.line[row])}")
            self._made[row] = e
        return e

    def get(self, name: str) -> Export | None:
        rows = self.index.rows(name)
        return self.export(rows[-1]) if rows else None

    def has_module(self, module: str) -> bool:
        return module in self.modules

    def fields(self) -> dict[str, ExportFields]:
        modules, types, namespaces = self.modules, self.types, self.namespaces
        return dict(zip(self.index.names(), zip(
            [modules[i] for i in self.module.tolist()], [types[i] for i in self.type.tolist()],
            [namespaces[i] for i in self.namespace.tolist()],
            [c or None for c in self.crc.tolist()], strict=True), strict=True))

    def materialize(self) -> dict[str, Export]:
        names = self.index.names()
        crc, mod, typ, ns, line = (a.tolist() for a in (self.crc, self.module, self.type,
                                                        self.namespace, self.line))
        modules, types, namespaces, source = self.modules, self.types, self.namespaces, \
            self.source
        return {
            names[i]: Export(names[i], crc[i] or None, modules[mod[i]], types[typ[i]],
                             namespaces[ns[i]], f"{source}:{line[i]}")
            for i in range(len(names))
        }


def read_symvers(path: Path | str, *, cache: bool = True) -> Symvers:
    """Parse one Module.symvers (any layout since v2.6.18).  The parsed
    exports are kept in the symbol cache unless ``cache`` is False."""
    p = Path(path)
    source = str(path)

    def parse() -> Symvers:
        text = read_text(
            p, "Module.symvers",
            "install the kernel's headers package (linux-headers-<release>) or pass "
            f"{param('symvers')}",
        )
        return parse_symvers(text, source)

    def from_arrays(arrays: dict[str, np.ndarray], meta: dict[str, object]) -> Symvers:
        return Symvers.from_arrays(arrays, meta, source)

    return symcache.cached("symvers", p, symcache.file_key(p), enabled=cache, parse=parse,
                           to_arrays=Symvers.to_arrays, from_arrays=from_arrays)


def read_symvers_files(paths: Iterable[Path | str], *, cache: bool = True) -> Symvers:
    """Parse and merge several Module.symvers files, first one first."""
    result = Symvers()
    for p in paths:
        result = result.merge(read_symvers(p, cache=cache))
    return result


# Hex digit values by byte; 255: not a hex digit.
_HEX_DIGIT = np.full(256, 255, dtype=np.uint8)
_HEX_DIGIT[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16)
_HEX_DIGIT[np.frombuffer(b"ABCDEF", dtype=np.uint8)] = np.arange(10, 16)
_EXPORT_SYMBOL = np.frombuffer(b"EXPORT_SYMBOL", dtype=np.uint8)
_GPL = np.frombuffer(b"_GPL", dtype=np.uint8)


def parse_symvers(text: str, source: str = "<Module.symvers>") -> Symvers:
    """One Module.symvers, straight into columns (as the symbol cache keeps
    them): no :class:`Export` per line, which for a kernel's ~25k exports
    held ~10 MB of small objects through a first convert.  A file exactly
    as modpost writes it is read by one regular expression and numpy
    (:func:`_parse_modpost_output`); anything else line by line."""
    fast = _parse_modpost_output(text, source)
    if fast is not None:
        return fast
    names: list[str] = []
    crcs: list[int] = []
    modules: list[int] = []
    types: list[int] = []
    namespaces: list[int] = []
    lines: list[int] = []
    row_of: dict[str, int] = {}
    codes: dict[str, dict[str, int]] = {"modules": {}, "types": {}, "namespaces": {}}
    module_codes, type_codes, ns_codes = codes["modules"], codes["types"], codes["namespaces"]
    layouts: set[str] = set()
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) == 1:  # hand-made file with spaces instead of tabs
            fields = line.split()
        name, crc, module, export, namespace, layout = _parse_line(fields, source, lineno, line)
        m = module_codes.setdefault(module, len(module_codes))
        t = type_codes.setdefault(export, len(type_codes))
        ns = ns_codes.setdefault(namespace, len(ns_codes))
        row = row_of.get(name)
        if row is None:
            row_of[name] = len(names)
            names.append(name)
            crcs.append(crc)
            modules.append(m)
            types.append(t)
            namespaces.append(ns)
            lines.append(lineno)
        else:  # read again: the later line counts, in the first one's place
            if modules[row] != m:
                first = list(module_codes)[modules[row]]  # codes count up in insertion order
                raise line_error(source, lineno, f"{name} exported again (first by "
                                 f"{first} at {source}:{lines[row]})", line)
            crcs[row], types[row], namespaces[row], lines[row] = crc, t, ns, lineno
        layouts.add(layout)
    arrays = {
        "crc": np.array(crcs, dtype="<u8"), "module": np.array(modules, dtype="<u4"),
        "type": np.array(types, dtype="|u1"), "namespace": np.array(namespaces, dtype="<u4"),
        "line": np.array(lines, dtype="<u4"), **NameIndex.build(names).arrays("names_"),
    }
    meta: dict[str, object] = {k: list(v) for k, v in codes.items()}
    meta["layouts"] = sorted(layouts)
    return Symvers.from_arrays(arrays, meta, source)


def _parse_modpost_output(text: str, source: str) -> Symvers | None:
    """:func:`parse_symvers` of a file exactly as modpost writes it (5.6+
    layout, write_dump() in scripts/mod/modpost.c: ``0x%08x`` CRC, name,
    module, EXPORT_SYMBOL or EXPORT_SYMBOL_GPL, namespace; ASCII, every line
    ending in a newline, no name twice), read with numpy over its bytes; or
    None for any other file, which the line parser then reads (and says
    what is wrong).  The same columns as the line parser's: codes in order
    of first use, line numbers from 1.  A distribution kernel's ~25k lines:
    ~10 ms instead of ~100 ms."""
    if not text or not text.isascii() or not text.endswith("\n") or "\r" in text \
            or "\0" in text:
        return None
    raw = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)
    n = len(ends)
    all_tabs = np.flatnonzero(raw == 9)
    if len(all_tabs) != 4 * n:
        return None
    tabs = all_tabs.reshape(n, 4)
    begins = np.zeros(n, dtype=np.int64)
    begins[1:] = ends[:-1] + 1
    # Four tabs in every line (there are 4n in all): fields f0..f4.
    if bool(np.any(tabs[:, 0] != begins + 10)) or bool(np.any(tabs[:, 3] >= ends)):
        return None
    lo = np.column_stack((begins, tabs + 1))  # f0..f4 start
    hi = np.column_stack((tabs, ends))  # f0..f4 end
    size = hi - lo
    # f0: "0x" and 8 hex digits
    crc_text = raw[begins[:, None] + np.arange(10)]
    digits = _HEX_DIGIT[crc_text[:, 2:]]
    if bool(np.any(crc_text[:, 0] != 0x30)) or bool(np.any(crc_text[:, 1] != 0x78)) \
            or bool(np.any(digits == 255)):
        return None
    crc = np.zeros(n, dtype="<u8")
    for k in range(8):
        crc = (crc << np.uint64(4)) | digits[:, k].astype(np.uint64)
    # f1 (name): printable ASCII, no space (the names blob's only bytes
    # under 0x21 are the n newlines); f1 and f2 not empty
    if bool(np.any(size[:, 1] < 1)) or bool(np.any(size[:, 2] < 1)):
        return None
    names_blob, names_starts = _fields(raw, lo[:, 1], size[:, 1])
    if int(np.count_nonzero(names_blob < 0x21)) != n or int(names_blob.max()) > 0x7E:
        return None
    # f3: EXPORT_SYMBOL or EXPORT_SYMBOL_GPL
    gpl = size[:, 3] == 17
    if bool(np.any((size[:, 3] != 13) & ~gpl)) \
            or not bool(np.array_equal(raw[lo[:, 3, None] + np.arange(13)],
                                       np.broadcast_to(_EXPORT_SYMBOL, (n, 13)))) \
            or not bool(np.all(raw[lo[gpl, 3, None] + np.arange(13, 17)] == _GPL)):
        return None
    index = NameIndex.from_blob(names_blob, names_starts)
    if bool(np.any(index.hashes[1:] == index.hashes[:-1])):
        return None  # a name read again: the line parser decides which counts
    arrays: dict[str, np.ndarray] = {"crc": crc}
    meta: dict[str, object] = {}
    # f3 is one of two texts, told by its size
    kinds = ["EXPORT_SYMBOL_GPL", "EXPORT_SYMBOL"] if bool(gpl[0]) \
        else ["EXPORT_SYMBOL", "EXPORT_SYMBOL_GPL"]
    arrays["type"] = (gpl != gpl[0]).astype("|u1")
    meta["types"] = kinds if bool(np.any(gpl != gpl[0])) else kinds[:1]
    for key, kind, f in (("module", "modules", 2), ("namespace", "namespaces", 4)):
        found = _codes(raw, text, lo[:, f], size[:, f])
        if found is None:
            return None
        arrays[key], meta[kind] = found[0].astype("<u4"), found[1]
    namespaces = meta["namespaces"]
    assert isinstance(namespaces, list)
    if not all(ns.isprintable() and " " not in ns for ns in namespaces):
        return None  # f4 (namespace): printable ASCII, no space
    arrays["line"] = np.arange(1, n + 1, dtype="<u4")
    arrays.update(index.arrays("names_"))
    meta["layouts"] = [LAYOUT_NAMESPACE_LAST]
    return Symvers.from_arrays(arrays, meta, source)


def _fields(raw: np.ndarray, start: np.ndarray, size: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """The fields ``raw[start[i]: start[i] + size[i]]``, each followed in
    ``raw`` by a separator, as one '\\n'-separated blob and its n+1 start
    offsets (as :func:`klpsym.kernel.symcache.encode_names` makes them):
    the bytes of each field and its separator, kept by a mask."""
    edges = np.zeros(len(raw) + 1, dtype=np.int8)
    edges[start] = 1
    edges[start + size + 1] -= 1
    keep = np.cumsum(edges[:-1], dtype=np.int8).view(bool)
    blob = raw[keep]
    starts = np.zeros(len(start) + 1, dtype=np.int64)
    np.cumsum(size + 1, out=starts[1:])
    blob[starts[1:] - 1] = 10
    return blob, starts


def _codes(raw: np.ndarray, text: str, start: np.ndarray, size: np.ndarray
           ) -> tuple[np.ndarray, list[str]] | None:
    """Each row's code for its field ``text[start: start + size]`` and the
    fields' texts in order of first use (as the line parser numbers them),
    through the fields' hashes; None if two different texts share one
    (checked: as many distinct texts as distinct hashes)."""
    h = symcache.name_hashes(raw, start, size)
    # Rows grouped by hash (np.unique would import numpy.ma: ~20 ms)
    by_hash = np.argsort(h, kind="stable")
    sorted_h = h[by_hash]
    new = np.ones(len(h), dtype=bool)
    new[1:] = sorted_h[1:] != sorted_h[:-1]
    first = by_hash[new]  # each hash's first row (the sort is stable)
    group = np.empty(len(h), dtype=np.int64)
    group[by_hash] = np.cumsum(new) - 1
    some = np.flatnonzero(size)  # the empty text has one hash, made of nothing
    starts, ends = start[some].tolist(), (start + size)[some].tolist()
    if len({text[a:b] for a, b in zip(starts, ends, strict=True)}) \
            != len(set(group[some].tolist())):
        return None
    order = np.argsort(first, kind="stable")  # codes by first use
    rank = np.empty(len(first), dtype=np.int64)
    rank[order] = np.arange(len(first))
    texts = [text[int(start[r]): int(start[r] + size[r])] for r in first[order].tolist()]
    return rank[group], texts


def _parse_line(fields: list[str], source: str, lineno: int,
                line: str) -> tuple[str, int, str, str, str, str]:
    """(name, crc, module, export type, namespace, layout) of one line."""
    n = len(fields)
    if n == 5 and fields[3] in EXPORT_TYPES:
        crc_s, name, module, export, namespace = fields
        layout = LAYOUT_NAMESPACE_LAST
    elif n == 5 and fields[4] in EXPORT_TYPES:
        crc_s, name, namespace, module, export = fields
        layout = LAYOUT_NAMESPACE_THIRD
    elif n == 4 and fields[3] in EXPORT_TYPES:
        crc_s, name, module, export = fields
        namespace = ""
        layout = LAYOUT_NO_NAMESPACE
    else:
        raise line_error(
            source, lineno,
            "not a Module.symvers line (expected CRC<tab>NAME<tab>MODULE<tab>EXPORT_SYMBOL*"
            "[<tab>NAMESPACE])", line,
        )
    try:
        crc = int(crc_s, 16)
    except ValueError:
        raise line_error(source, lineno, f"CRC {crc_s!r} is not hexadecimal", line) from None
    if not name or not module or _SPACE.search(name):
        raise line_error(source, lineno, "empty or malformed symbol or module name", line)
    return name, crc, module, export, namespace.strip(), layout
