"""What every ``--json`` prints: one object with a ``schema`` version,
addresses and CRCs as hex strings, and on an error an ``error`` object.

Every key is documented in docs/json.md (a test holds the page to what the
commands print).  64-bit addresses are strings ("0xffffffff811723a0"):
as JSON numbers, jq and JavaScript read them as doubles and round them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from klpsym.kernel.target import TargetKernel

# Raised when a key changes meaning or is removed; new keys keep it.
SCHEMA = 1

# Keys whose integer values are addresses (any width), and CRCs (32 bits).
ADDRESS_KEYS = frozenset({"address", "entry", "value", "symbol_value"})
CRC_KEYS = frozenset({"crc", "exporter_crc"})


def hex_address(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def hex_crc(value: int | None) -> str | None:
    return None if value is None else f"0x{value:08x}"


def hexify(obj: Any) -> Any:
    """``obj`` with the integers under :data:`ADDRESS_KEYS` and
    :data:`CRC_KEYS` as hex strings, at any depth."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if isinstance(v, int) and not isinstance(v, bool):
                if k in CRC_KEYS:
                    v = hex_crc(v)
                elif k in ADDRESS_KEYS:
                    v = hex_address(v)
            else:
                v = hexify(v)
            out[k] = v
        return out
    if isinstance(obj, list | tuple):
        return [hexify(v) for v in obj]
    return obj


def document(body: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level object: ``schema`` first, then ``body`` (hexified)."""
    return {"schema": SCHEMA, **hexify(body)}


def dump(body: Mapping[str, Any], out: TextIO, *, indent: int | None = 2) -> None:
    json.dump(document(body), out, indent=indent)
    out.write("\n")


def error_document(message: str, exit_status: int = 2) -> dict[str, Any]:
    return {"schema": SCHEMA, "error": {"message": message, "exit": exit_status}}


def wants_json(argv: list[str] | tuple[str, ...]) -> bool:
    """Whether the command line asks for JSON (before a '--' that starts
    make's arguments)."""
    args = list(argv)
    if "--" in args:
        args = args[: args.index("--")]
    return "--json" in args


def target_json(target: TargetKernel) -> dict[str, Any]:
    """The target kernel as --json shows it (convert, build, check)."""
    path, source = target.kallsyms_path, target.kallsyms_source
    # kallsyms_source is "KIND PATH" for a file given or found, the bare
    # path for the running kernel's /proc/kallsyms
    kind = None if not source else (
        source[: -len(str(path)) - 1] if path is not None and source.endswith(f" {path}")
        else "kallsyms")
    return {"description": target.describe(), "release": target.release,
            "kernel_dir": None if target.kernel_dir is None else str(target.kernel_dir),
            "symvers": list(target.symvers.sources),
            "kallsyms": None if path is None else str(path), "kallsyms_format": kind,
            "notes": list(target.notes)}
