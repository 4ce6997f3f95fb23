"""A kernel's ``.config`` (Kconfig output).

Lines are ``CONFIG_X=y``, ``CONFIG_X=m``, ``CONFIG_X="string"``,
``CONFIG_X=123`` / ``0x10``, and ``# CONFIG_X is not set``; any other
``#`` line is a comment.  The same format is used by
``include/config/auto.conf`` and Debian's ``/boot/config-<release>``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from klpsym.errors import KernelSourceError, param
from klpsym.kernel import symcache
from klpsym.kernel._io import line_error, read_text
from klpsym.kernel.symcache import NameIndex

_NOT_SET = re.compile(r"#\s*([A-Za-z0-9_]+) is not set\s*")
_PREFIX = "CONFIG_"


class KernelConfig:
    """Parsed ``.config``.  Names may be given with or without ``CONFIG_``."""

    def __init__(self, values: dict[str, str | None], source: str = "<config>") -> None:
        # name without CONFIG_ -> value (strings unquoted), None = "is not set"
        self._values: dict[str, str | None] | None = values
        self._names: NameIndex | None = None  # or, from the symbol cache, columns:
        self._vblob = self._vstarts = self._set = np.zeros(0, dtype=np.uint8)
        self.source = source

    # -- construction ----------------------------------------------------

    @classmethod
    def from_path(cls, path: Path | str, *, cache: bool = True) -> KernelConfig:
        """Read a .config; the parsed values are kept in the symbol cache
        (:mod:`klpsym.kernel.symcache`) unless ``cache`` is False."""
        p, source = Path(path), str(path)

        def parse() -> KernelConfig:
            text = read_text(
                p, "kernel .config",
                f"pass {param('config')}, or use the kernel's /boot/config-<release>",
            )
            return cls.from_text(text, source)

        def from_arrays(arrays: dict[str, np.ndarray], meta: dict[str, object]) -> KernelConfig:
            return cls._from_arrays(arrays, source)

        return symcache.cached("config", p, symcache.file_key(p), enabled=cache, parse=parse,
                               to_arrays=KernelConfig.to_arrays, from_arrays=from_arrays)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        values = self._all()
        names = list(values)
        vblob, vstarts = symcache.encode_names([v or "" for v in values.values()])
        is_set = np.array([v is not None for v in values.values()], dtype=np.uint8)
        return ({**NameIndex.build(names).arrays("names_"), "values_blob": vblob,
                 "values_starts": vstarts, "set": is_set}, {})

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray], source: str) -> KernelConfig:
        names = NameIndex.from_arrays(arrays, "names_")
        vblob, vstarts, is_set = arrays["values_blob"], arrays["values_starts"], arrays["set"]
        n = len(names)
        if len(is_set) != n or len(vstarts) != n + 1 or (n and int(vstarts[-1]) != len(vblob)):
            raise ValueError("symbol cache entry with columns of different lengths")
        c = cls({}, source)
        c._values, c._names = None, names
        c._vblob, c._vstarts, c._set = vblob, vstarts, is_set
        return c

    def _all(self) -> dict[str, str | None]:
        if self._values is None:
            assert self._names is not None
            self._values = {n: self._value_at(i) for i, n in enumerate(self._names.names())}
        return self._values

    def _value_at(self, row: int) -> str | None:
        if not self._set[row]:
            return None
        a, b = int(self._vstarts[row]), int(self._vstarts[row + 1]) - 1
        return self._vblob[a:b].tobytes().decode("utf-8", errors="surrogateescape")

    @classmethod
    def from_text(cls, text: str, source: str = "<config>") -> KernelConfig:
        values: dict[str, str | None] = {}
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line:
                continue
            if line[0] == "#":
                if line.endswith(" is not set"):
                    m = _NOT_SET.fullmatch(line)
                    if m:
                        values[_strip(m.group(1))] = None
                continue
            # NAME=value with NAME of [A-Za-z0-9_]+ (string methods: a regex
            # per line costs more than the rest of the parse)
            name, sep, value = line.partition("=")
            if not sep or not name.isascii() or not name.replace("_", "a").isalnum():
                raise line_error(source, lineno, "not a .config line (CONFIG_NAME=value)", raw)
            values[_strip(name)] = value if value[:1] != '"' else \
                _value(value, source, lineno, raw)
        return cls(values, source)

    # -- queries -----------------------------------------------------------

    def get(self, name: str) -> str | None:
        """The value (``"y"``, ``"m"``, the unquoted string, the number as
        written), or None when the option is not set or absent."""
        if self._values is None and self._names is not None:
            rows = self._names.rows(_strip(name))
            return self._value_at(rows[-1]) if rows else None
        return self._all().get(_strip(name))

    def enabled(self, name: str) -> bool:
        """True for ``=y`` and ``=m``."""
        return self.get(name) in ("y", "m")

    def builtin(self, name: str) -> bool:
        return self.get(name) == "y"

    def modular(self, name: str) -> bool:
        return self.get(name) == "m"

    def get_int(self, name: str) -> int | None:
        v = self.get(name)
        if v is None:
            return None
        try:
            return int(v, 0)
        except ValueError:
            raise KernelSourceError(
                f"{self.source}: CONFIG_{_strip(name)}={v} is not a number"
            ) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __len__(self) -> int:
        if self._values is None:
            return int(np.count_nonzero(self._set))
        return sum(1 for v in self._values.values() if v is not None)

    def __repr__(self) -> str:
        return f"<KernelConfig {self.source}: {len(self)} options set>"


def _strip(name: str) -> str:
    return name.removeprefix(_PREFIX)


def _value(v: str, source: str, lineno: int, raw: str) -> str:
    v = v.strip()
    if not v.startswith('"'):
        return v
    if len(v) < 2 or not v.endswith('"'):
        raise line_error(source, lineno, "unterminated string value", raw)
    body = v[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):  # Kconfig escapes only \" and \\
            out.append(body[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)
