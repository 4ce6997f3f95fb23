"""Build external modules with the target kernel's kbuild, keeping modpost
strict, and convert the results (``klpsym build``)."""

from klpsym.kbuild.build import (
    BuildResult,
    BuiltModule,
    build,
    extra_symvers_text,
)
from klpsym.kbuild.runner import ChrootRunner, HostRunner, Runner, modules_in_order

__all__ = ["BuildResult", "BuiltModule", "ChrootRunner", "HostRunner", "Runner", "build",
           "extra_symvers_text", "modules_in_order"]
