"""The ELF layer: byte layouts, reader and writer for ELF64 relocatable
objects of either byte order (kernel modules)."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from klpsym.elf.file import ElfFile, Section, StringTable, SymbolTable

__all__ = ["ElfFile", "Section", "StringTable", "SymbolTable"]


def __getattr__(name: str) -> object:
    # The reader and writer are imported when first asked for, not with the
    # package: klpsym.elf.constants and layout are what `klpsym check` of a
    # directory of modules needs (its fast reader reads the files).
    if name in __all__:
        from klpsym.elf import file

        return getattr(file, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
