"""Appended module signatures (scripts/sign-file, kernel/module/signing.c).

A signed module is ``ELF bytes + signature + struct module_signature +
"~Module signature appended~\\n"``.  ``struct module_signature``
(include/linux/module_signature.h) is 12 bytes: algo, hash, id_type,
signer_len, key_id_len (u8 each), 3 bytes of padding, sig_len (__be32).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from klpsym.errors import ModuleError

if TYPE_CHECKING:
    from klpsym.elf.file import Buffer

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


def split_signature(data: Buffer, name: str) -> tuple[Buffer, Signature | None]:
    """Split a module file into its ELF part (a view of ``data``, not a
    copy) and its appended signature."""
    if len(data) < len(MODULE_SIG_STRING) or \
            bytes(data[len(data) - len(MODULE_SIG_STRING):]) != MODULE_SIG_STRING:
        return data, None
    end = len(data) - len(MODULE_SIG_STRING)
    if end < _SIG_INFO_SIZE:
        raise ModuleError(f"{name}: truncated module signature")
    info = bytes(data[end - _SIG_INFO_SIZE: end])
    sig_len = int.from_bytes(info[8:12], "big")
    start = end - _SIG_INFO_SIZE - sig_len
    if sig_len == 0 or start < 0:
        raise ModuleError(
            f"{name}: corrupt module signature (length {sig_len} in a {len(data)}-byte file)"
        )
    sig = Signature(id_type=info[2], sig_len=sig_len, trailer=bytes(data[start:]))
    return memoryview(data)[:start], sig


# -- describing a signature, as kmod's modinfo does -------------------------

#: OIDs of the digests sign-file uses (RFC 5754, RFC 8702, FIPS 202 / NIST CSOR).
_DIGESTS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.8": "sha3-256",
    "2.16.840.1.101.3.4.2.9": "sha3-384",
    "2.16.840.1.101.3.4.2.10": "sha3-512",
}
_COMMON_NAME = "2.5.4.3"
_ORGANIZATION = "2.5.4.10"


def describe_signature(sig: Signature) -> dict[str, object]:
    """What kmod's modinfo shows of a signature (sig_id, signer, sig_key,
    sig_hashalgo, signature), read from the PKCS#7 SignedData that
    scripts/sign-file appends.  Nothing here verifies it."""
    out: dict[str, object] = {
        "id_type": {0: "PGP", 1: "X509", 2: "PKCS#7"}.get(sig.id_type, str(sig.id_type)),
        "length": sig.sig_len,
    }
    if sig.id_type != PkeyIdType.PKCS7:
        return out
    blob = sig.trailer[: sig.sig_len]
    try:
        out.update(_pkcs7(blob))
    except (IndexError, ValueError):
        out["error"] = "the PKCS#7 signature could not be parsed"
    return out


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at pos."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if not 0 < n <= 4:
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos: pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("DER element runs past the end")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, s, e = _der(data, pos)
        out.append((tag, s, e))
        pos = e
    return out


def _oid(raw: bytes) -> str:
    parts = [raw[0] // 40, raw[0] % 40]
    value = 0
    for b in raw[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _hex(raw: bytes, width: int = 0) -> str:
    return ":".join(f"{b:02X}" for b in raw)


def _pkcs7(data: bytes) -> dict[str, object]:
    # ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT SignedData }
    _, s, e = _der(data, 0)
    content_type, explicit = _children(data, s, e)[:2]
    _, s, e = _der(data, explicit[1])
    # SignedData ::= SEQUENCE { version, digestAlgorithms SET, contentInfo,
    #                [0] certificates OPTIONAL, [1] crls OPTIONAL, signerInfos SET }
    signed = _children(data, s, e)
    signer_infos = signed[-1]
    first = _children(data, signer_infos[1], signer_infos[2])[0]
    # SignerInfo ::= SEQUENCE { version, issuerAndSerialNumber | [0] subjectKeyId,
    #                digestAlgorithm, [0] authAttrs OPTIONAL, digestEncryptionAlgorithm,
    #                encryptedDigest OCTET STRING, ... }
    fields = _children(data, first[1], first[2])
    sid, digest_alg = fields[1], fields[2]
    encrypted = next((f for f in fields[3:] if f[0] == 0x04), None)
    if encrypted is None:
        raise ValueError("no encryptedDigest in the SignerInfo")
    out: dict[str, object] = {}
    if sid[0] == 0x30:  # issuerAndSerialNumber
        issuer, serial = _children(data, sid[1], sid[2])[:2]
        out["signer"] = _name(data, issuer)
        out["sig_key"] = _hex(data[serial[1]: serial[2]])
    else:  # [0] subjectKeyIdentifier
        out["sig_key"] = _hex(data[sid[1]: sid[2]])
    alg = _children(data, digest_alg[1], digest_alg[2])[0]
    oid = _oid(data[alg[1]: alg[2]])
    out["sig_hashalgo"] = _DIGESTS.get(oid, oid)
    out["signature"] = _hex(data[encrypted[1]: encrypted[2]])
    del content_type
    return out


def _name(data: bytes, name: tuple[int, int, int]) -> str:
    """The CN of an X.501 Name (else its O), as kmod prints the signer."""
    found: dict[str, str] = {}
    for rdn in _children(data, name[1], name[2]):  # SET OF AttributeTypeAndValue
        for atv in _children(data, rdn[1], rdn[2]):
            oid_el, value = _children(data, atv[1], atv[2])[:2]
            found[_oid(data[oid_el[1]: oid_el[2]])] = data[value[1]: value[2]].decode(
                "utf-8", "replace")
    return found.get(_COMMON_NAME) or found.get(_ORGANIZATION) or ""
