"""The .modinfo section: NUL-separated ``key=value`` strings (MODULE_INFO,
MODULE_LICENSE, vermagic, name, depends, ...), as modinfo(8) reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from klpsym.elf.constants import SHT

if TYPE_CHECKING:  # the ELF model is the caller's; annotations only
    from klpsym.elf import ElfFile

MODINFO_SECTION = ".modinfo"


@dataclass(frozen=True)
class ModInfo:
    entries: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        for k, v in self.entries:
            if k == key:
                return v
        return None

    def get_all(self, key: str) -> list[str]:
        return [v for k, v in self.entries if k == key]

    @property
    def license(self) -> str | None:
        return self.get("license")

    @property
    def vermagic(self) -> str | None:
        return self.get("vermagic")

    @property
    def vermagic_release(self) -> str | None:
        """The kernel release the module was built for (first vermagic word)."""
        vm = self.vermagic
        return vm.split()[0] if vm and vm.split() else None

    @property
    def name(self) -> str | None:
        return self.get("name")


def read_modinfo(elf: ElfFile) -> ModInfo:
    sec = elf.section_by_name(MODINFO_SECTION)
    if sec is None or sec.type == SHT.NOBITS:
        return ModInfo(())
    entries = []
    for raw in bytes(sec.content()).split(b"\0"):
        if not raw:
            continue
        text = raw.decode("utf-8", errors="replace")
        key, sep, value = text.partition("=")
        if sep:
            entries.append((key, value))
    return ModInfo(tuple(entries))
