"""A kernel's ``.config`` (Kconfig output).

Lines are ``CONFIG_X=y``, ``CONFIG_X=m``, ``CONFIG_X="string"``,
``CONFIG_X=123`` / ``0x10``, and ``# CONFIG_X is not set``; any other
``#`` line is a comment.  The same format is used by
``include/config/auto.conf`` and Debian's ``/boot/config-<release>``.
"""

from __future__ import annotations

import re
from pathlib import Path

from klpsym.errors import KernelSourceError
from klpsym.kernel._io import line_error, read_text

_NOT_SET = re.compile(r"#\s*([A-Za-z0-9_]+) is not set\s*")
_PREFIX = "CONFIG_"


class KernelConfig:
    """Parsed ``.config``.  Names may be given with or without ``CONFIG_``."""

    def __init__(self, values: dict[str, str | None], source: str = "<config>") -> None:
        # name without CONFIG_ -> value (strings unquoted), None = "is not set"
        self._values = values
        self.source = source

    # -- construction ----------------------------------------------------

    @classmethod
    def from_path(cls, path: Path | str) -> KernelConfig:
        text = read_text(
            path, "kernel .config",
            "pass --config, or use the kernel's /boot/config-<release>",
        )
        return cls.from_text(text, str(path))

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
        return self._values.get(_strip(name))

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
