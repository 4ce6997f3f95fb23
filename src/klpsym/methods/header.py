"""Where klpsym.h is, and the flags that select a method."""

from __future__ import annotations

import enum
from pathlib import Path

from klpsym.errors import KlpsymError

HEADER = "klpsym.h"


class Method(enum.IntEnum):
    """KLPSYM_METHOD values in klpsym.h."""

    KLP = 1
    KALLSYMS = 2
    KPROBE = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Method:
        try:
            return cls[text.upper()]
        except KeyError:
            raise KlpsymError(
                f"unknown method {text!r}; choose one of {', '.join(METHODS)}") from None


METHODS = tuple(m.label for m in Method)


def include_dir() -> Path:
    """The directory holding klpsym.h (package data, installed with klpsym)."""
    d = Path(__file__).resolve().parent.parent / "include"
    if not (d / HEADER).is_file():
        raise KlpsymError(f"{d / HEADER} is missing: the klpsym installation is incomplete; "
                          "reinstall klpsym")
    return d


def cflags(method: Method | None = None) -> list[str]:
    """Compiler flags for a module's Kbuild: ``-I`` for klpsym.h, and the
    method's ``-DKLPSYM_METHOD=...`` when one is given."""
    flags = [f"-I{include_dir()}"]
    if method is not None:
        flags.append(f"-DKLPSYM_METHOD=KLPSYM_METHOD_{method.name}")
    return flags
