"""Compressed modules: ``.ko.xz``, ``.ko.zst``, ``.ko.gz``.

Distributions ship all three (Debian since trixie and Fedora/Arch .xz or
.zst, some .gz); kmod and the kernel's own in-kernel decompression
(CONFIG_MODULE_DECOMPRESS, kernel/module/decompress.c, since v5.17) accept
them.  The format is recognised by its magic bytes, as kmod does, not by the
file name.  xz and gzip come from the standard library; zstd from
``compression.zstd`` on Python >= 3.14, else the ``zstandard`` package (a
dependency of klpsym).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any, overload

from klpsym.errors import ModuleError

if TYPE_CHECKING:
    from klpsym.elf.file import Buffer


class Compression(StrEnum):
    NONE = "none"
    XZ = "xz"
    ZSTD = "zstd"
    GZIP = "gzip"

    @property
    def suffix(self) -> str:
        return {"none": "", "xz": ".xz", "zstd": ".zst", "gzip": ".gz"}[self.value]


COMPRESSED_SUFFIXES = (".xz", ".zst", ".gz")

_MAGIC = (
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (b"\x1f\x8b", Compression.GZIP),
)


def detect(data: bytes) -> Compression:
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return Compression.NONE


@overload
def decompress(data: bytes, name: str) -> tuple[bytes, Compression]: ...
@overload
def decompress(data: Buffer, name: str) -> tuple[Buffer, Compression]: ...
def decompress(data: Buffer, name: str) -> tuple[Buffer, Compression]:
    """The module bytes inside ``data`` and the format they were in
    (``data`` itself when it is not compressed)."""
    kind = detect(bytes(data[:8]))
    if kind == Compression.NONE:
        return data, kind
    import gzip  # here: most modules are read uncompressed
    import lzma
    import zlib

    packed = bytes(data)
    try:
        if kind == Compression.XZ:
            return lzma.decompress(packed, format=lzma.FORMAT_XZ), kind
        if kind == Compression.GZIP:
            return gzip.decompress(packed), kind
        return _zstd_decompress(packed), kind
    except (lzma.LZMAError, OSError, EOFError, zlib.error) as e:
        raise ModuleError(f"{name}: corrupt {kind.value} data ({e}); the compressed module is "
                          "truncated or damaged") from None


def _zstd_module() -> Any:
    try:  # Python >= 3.14 (PEP 784)
        import compression.zstd as stdlib_zstd  # type: ignore[import-not-found]

        return stdlib_zstd
    except ImportError:
        pass
    try:
        import zstandard

        return zstandard
    except ImportError:
        return None


def _zstd_decompress(data: bytes) -> bytes:
    mod = _zstd_module()
    if mod is None:
        raise ModuleError("reading a .zst module needs the 'zstandard' Python package "
                          "(pip install zstandard), or Python >= 3.14")
    if hasattr(mod, "ZstdDecompressor") and hasattr(mod, "ZstdError"):  # zstandard
        try:
            # Frames written by the kernel's `zstd` do not always record the
            # content size, so decompress as a stream.
            out: bytes = mod.ZstdDecompressor().decompressobj().decompress(data)
            return out
        except mod.ZstdError as e:
            raise OSError(str(e)) from None
    try:
        result: bytes = mod.decompress(data)
        return result
    except mod.ZstdError as e:
        raise OSError(str(e)) from None
