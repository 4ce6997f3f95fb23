"""The ELF layer: byte layouts, reader and writer for ELF64 relocatable
objects of either byte order (kernel modules)."""

from klpsym.elf.file import ElfFile, Section, StringTable, SymbolTable

__all__ = ["ElfFile", "Section", "StringTable", "SymbolTable"]
