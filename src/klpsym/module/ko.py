"""A kernel module file: its ELF object, .modinfo and appended signature.

``.ko.xz``, ``.ko.zst`` and ``.ko.gz`` are read transparently
(:mod:`klpsym.module.compression`); ``Module.data`` is then the
decompressed module, and ``Module.compression`` says what the file was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from klpsym.elf import ElfFile
from klpsym.elf.file import Buffer
from klpsym.errors import ModuleError
from klpsym.fsutil import map_file, read_file
from klpsym.module.compression import Compression, decompress
from klpsym.module.modinfo import ModInfo, read_modinfo
from klpsym.module.signature import Signature, split_signature


@dataclass
class Module:
    path: Path
    data: Buffer  # the whole module (decompressed), signature included; maybe mapped
    elf: ElfFile  # parsed from the ELF part (without the signature)
    signature: Signature | None
    modinfo: ModInfo
    compression: Compression = Compression.NONE

    @property
    def compressed(self) -> bool:
        return self.compression != Compression.NONE

    @property
    def elf_bytes(self) -> Buffer:
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


def read_module(path: Path | str, *, mapped: bool = False) -> Module:
    """The module at ``path``.  ``mapped``: map the file instead of reading
    it (see :func:`klpsym.fsutil.map_file`; for a large module read once,
    and not truncated while in use)."""
    path = Path(path)
    raw = (map_file if mapped else read_file)(path, "kernel module", ModuleError, regular=True)
    return module_from_bytes(raw, path)


def module_from_bytes(raw: Buffer, path: Path) -> Module:
    """A module from the bytes of its file (compressed or not)."""
    data, compression = decompress(raw, str(path))
    elf_part, sig = split_signature(data, str(path))
    elf = ElfFile.from_bytes(elf_part, str(path))
    return Module(path=path, data=data, elf=elf, signature=sig, modinfo=read_modinfo(elf),
                  compression=compression)


def require_kernel_module(module: Module) -> None:
    """Refuse an object file that is not a kernel module: without a
    .modinfo section (kbuild's modpost step adds it, with the vermagic the
    loader checks) it is a plain ``gcc -c`` object or a partial link, which
    the kernel would not load."""
    if module.elf.section_by_name(".modinfo") is None:
        raise ModuleError(
            f"{module.path}: not a kernel module (no .modinfo section: a plain object file, "
            "not linked by kbuild's modpost); convert the .ko that 'make -C KDIR M=...' builds"
        )
