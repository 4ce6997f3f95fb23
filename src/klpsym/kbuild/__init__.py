"""Build external modules with the target kernel's kbuild, keeping modpost
strict, and convert the results (``klpsym build``).

The names below are imported on first use: ``klpsym build`` starts make
(klpsym.kbuild.make) before it imports numpy and the kernel tables that
klpsym.kbuild.build needs.  (The build function is
klpsym.kbuild.build.build: ``klpsym.kbuild.build`` is that module.)"""

from __future__ import annotations

import importlib

# Not typing's: klpsym.kbuild.early runs before anything else is imported.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from klpsym.kbuild.build import BuildResult, BuiltModule, extra_symvers_text
    from klpsym.kbuild.runner import ChrootRunner, HostRunner, Runner, modules_in_order

_WHERE = {"BuildResult": "build", "BuiltModule": "build",
          "extra_symvers_text": "build", "ChrootRunner": "runner", "HostRunner": "runner",
          "Runner": "runner", "modules_in_order": "runner"}

__all__ = ["BuildResult", "BuiltModule", "ChrootRunner", "HostRunner", "Runner",
           "extra_symvers_text", "modules_in_order"]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'klpsym.kbuild' has no attribute {name!r}")
    return getattr(importlib.import_module(f"klpsym.kbuild.{where}"), name)
