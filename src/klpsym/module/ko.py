"""A kernel module file: its ELF object, .modinfo and appended signature."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from klpsym.elf import ElfFile
from klpsym.errors import ModuleError
from klpsym.fsutil import read_file
from klpsym.module.modinfo import ModInfo, read_modinfo
from klpsym.module.signature import Signature, split_signature


@dataclass
class Module:
    path: Path
    data: bytes  # the whole file as read
    elf: ElfFile  # parsed from the ELF part (without the signature)
    signature: Signature | None
    modinfo: ModInfo

    @property
    def elf_bytes(self) -> bytes | memoryview:
        """The ELF part of the file (a view, not a copy, when signed)."""
        if self.signature is None:
            return self.data
        return memoryview(self.data)[: len(self.data) - self.signature.size]

    @property
    def name(self) -> str:
        """The module name the kernel will use (modinfo ``name``, else the
        file name with '-' as '_', as kbuild does)."""
        n = self.modinfo.name
        if n:
            return n
        stem = self.path.name.split(".")[0]
        return stem.replace("-", "_")


def read_module(path: Path | str) -> Module:
    path = Path(path)
    data = read_file(path, "kernel module", ModuleError)
    if path.suffix in (".xz", ".zst", ".gz"):
        raise ModuleError(f"{path}: compressed modules are not supported yet; decompress it first "
                          f"(e.g. `xz -dk` / `zstd -d` / `gunzip -k`)")
    elf_part, sig = split_signature(data, str(path))
    elf = ElfFile.from_bytes(elf_part, str(path))
    return Module(path=path, data=data, elf=elf, signature=sig, modinfo=read_modinfo(elf))
