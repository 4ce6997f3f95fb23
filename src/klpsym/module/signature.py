"""Appended module signatures (scripts/sign-file, kernel/module/signing.c).

A signed module is ``ELF bytes + signature + struct module_signature +
"~Module signature appended~\\n"``.  ``struct module_signature``
(include/linux/module_signature.h) is 12 bytes: algo, hash, id_type,
signer_len, key_id_len (u8 each), 3 bytes of padding, sig_len (__be32).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from klpsym.errors import ModuleError

MODULE_SIG_STRING = b"~Module signature appended~\n"
_SIG_INFO_SIZE = 12


class PkeyIdType(IntEnum):
    PGP = 0
    X509 = 1
    PKCS7 = 2


@dataclass(frozen=True)
class Signature:
    id_type: int
    sig_len: int
    trailer: bytes  # signature + module_signature + magic, exactly as appended

    @property
    def size(self) -> int:
        return len(self.trailer)


def split_signature(data: bytes, name: str) -> tuple[bytes | memoryview, Signature | None]:
    """Split a module file into its ELF part (a view of ``data``, not a
    copy) and its appended signature."""
    if not data.endswith(MODULE_SIG_STRING):
        return data, None
    end = len(data) - len(MODULE_SIG_STRING)
    if end < _SIG_INFO_SIZE:
        raise ModuleError(f"{name}: truncated module signature")
    info = data[end - _SIG_INFO_SIZE: end]
    sig_len = int.from_bytes(info[8:12], "big")
    start = end - _SIG_INFO_SIZE - sig_len
    if sig_len == 0 or start < 0:
        raise ModuleError(
            f"{name}: corrupt module signature (length {sig_len} in a {len(data)}-byte file)"
        )
    sig = Signature(id_type=info[2], sig_len=sig_len, trailer=data[start:])
    return memoryview(data)[:start], sig
