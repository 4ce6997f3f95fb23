# The compiled module reader (_cfacts.c); klpsym/load/facts.py is its only user.
from os import PathLike
from typing import Any

from _typeshed import ReadableBuffer

KSYMTABS: dict[str, tuple[bool, str]]

def scan(data: ReadableBuffer, handled: bytes, /) -> tuple[Any, ...] | None: ...
def scan_path(path: str | bytes | PathLike[str], handled: bytes, /) -> tuple[Any, ...] | None: ...
