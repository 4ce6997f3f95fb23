"""Kernel symbol sources: Module.symvers, kallsyms (/proc/kallsyms, System.map,
vmlinux .symtab), .config and the kernel version; :func:`discover` bundles
them as a :class:`TargetKernel`."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from klpsym.kernel.config import KernelConfig
    from klpsym.kernel.kallsyms import (
        AmbiguousSymbolError,
        Candidate,
        KallsymsTable,
        SymbolLookupError,
        SymbolNotFoundError,
        is_data,
        is_text,
    )
    from klpsym.kernel.proc_kallsyms import parse_proc_kallsyms, read_proc_kallsyms
    from klpsym.kernel.symvers import (
        Export,
        Symvers,
        module_name_matches,
        parse_symvers,
        read_symvers,
        read_symvers_files,
    )
    from klpsym.kernel.system_map import read_system_map
    from klpsym.kernel.target import TargetKernel, discover
    from klpsym.kernel.version import (
        KernelVersion,
        klp_sym_name_max,
        ksym_name_len,
        read_kernel_version,
        supports_klp_for_plain_modules,
    )
    from klpsym.kernel.vmlinux import kallsyms_from_vmlinux

# Where each name of the package lives.  They are imported when first asked
# for, not with the package: importing one submodule (klpsym.kernel.vmlinuz,
# whose decompression the command line starts before numpy is imported)
# must not import numpy and every symbol source with it.
_HOME = {
    "KernelConfig": "config",
    **dict.fromkeys(("AmbiguousSymbolError", "Candidate", "KallsymsTable", "SymbolLookupError",
                     "SymbolNotFoundError", "is_data", "is_text"), "kallsyms"),
    **dict.fromkeys(("parse_proc_kallsyms", "read_proc_kallsyms"), "proc_kallsyms"),
    **dict.fromkeys(("Export", "Symvers", "module_name_matches", "parse_symvers",
                     "read_symvers", "read_symvers_files"), "symvers"),
    "read_system_map": "system_map",
    **dict.fromkeys(("TargetKernel", "discover"), "target"),
    **dict.fromkeys(("KernelVersion", "klp_sym_name_max", "ksym_name_len",
                     "read_kernel_version", "supports_klp_for_plain_modules"), "version"),
    "kallsyms_from_vmlinux": "vmlinux",
}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"klpsym.kernel.{home}"), name)

__all__ = [
    "AmbiguousSymbolError",
    "Candidate",
    "Export",
    "KallsymsTable",
    "KernelConfig",
    "KernelVersion",
    "SymbolLookupError",
    "SymbolNotFoundError",
    "Symvers",
    "TargetKernel",
    "discover",
    "is_data",
    "is_text",
    "kallsyms_from_vmlinux",
    "klp_sym_name_max",
    "ksym_name_len",
    "module_name_matches",
    "parse_proc_kallsyms",
    "parse_symvers",
    "read_kernel_version",
    "read_proc_kallsyms",
    "read_symvers",
    "read_symvers_files",
    "read_system_map",
    "supports_klp_for_plain_modules",
]
