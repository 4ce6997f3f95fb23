"""Sign a converted module with the target kernel's ``scripts/sign-file``.

Converting changes the module's bytes, so an appended signature no longer
matches them and is dropped (see :mod:`klpsym.module.signature`).  When a
key is available the output is signed again, as kbuild's ``modules_install``
would (scripts/Makefile.modinst, v6.1 .. v7.x)::

    scripts/sign-file $(CONFIG_MODULE_SIG_HASH) KEY certs/signing_key.x509 MODULE

The key is ``--sign-key KEY --sign-cert CERT`` when given, else the kernel
build dir's own: CONFIG_MODULE_SIG_KEY (a path relative to the build dir, or
a ``pkcs11:`` URI, passed on as kbuild does) with ``certs/signing_key.x509``,
when both exist.  Distribution headers (Debian's linux-headers-*) ship
neither, so nothing is signed there unless the flags are given.

sign-file is run on a private copy with an explicit destination (its fifth
argument) and the result is checked and then written into place atomically by
the caller, so a failure leaves nothing half-signed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from klpsym.errors import SignError, param
from klpsym.kernel.target import TargetKernel
from klpsym.module.signature import PkeyIdType, split_signature

if TYPE_CHECKING:
    import subprocess

DEFAULT_CERT = Path("certs/signing_key.x509")
DEFAULT_HASH = "sha256"  # Kconfig's default for MODULE_SIG_HASH (MODULE_SIG_SHA256)
SIGN_TIMEOUT = 300.0


@dataclass(frozen=True)
class Signer:
    sign_file: Path
    hash: str
    key: str  # a file name, or a pkcs11: URI
    cert: Path
    origin: str  # where the key came from, for messages

    def describe(self) -> str:
        return f"{self.key} ({self.hash}, {self.origin})"

    def sign(self, elf_bytes: bytes, name: str) -> bytes:
        """``elf_bytes`` with a signature appended by sign-file."""
        import subprocess  # here: convert imports this module, and most runs sign nothing
        import tempfile

        with tempfile.TemporaryDirectory(prefix="klpsym-sign-") as tmp:
            src, dest = Path(tmp) / "module.ko", Path(tmp) / "module.signed.ko"
            src.write_bytes(elf_bytes)
            cmd = [str(self.sign_file), self.hash, self.key, str(self.cert), str(src), str(dest)]
            try:
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                      text=True, errors="replace", timeout=SIGN_TIMEOUT,
                                      check=False)
            except OSError as e:
                raise SignError(f"{self.sign_file}: cannot run it ({e.strerror}); it is built "
                                "for the target kernel's system: sign on that system, or "
                                "rebuild the kernel's scripts (make scripts)") from None
            except subprocess.TimeoutExpired:
                raise SignError(f"{name}: {self.sign_file} did not finish in "
                                f"{SIGN_TIMEOUT:g} s (a pkcs11 token waiting for its PIN? "
                                "set KBUILD_SIGN_PIN)") from None
            if proc.returncode != 0 or not dest.is_file():
                raise SignError(f"{name}: signing with {self.key} failed: {_reason(proc)}")
            signed = dest.read_bytes()
        elf_part, sig = split_signature(signed, name)
        if sig is None or elf_part != elf_bytes or sig.id_type != PkeyIdType.PKCS7:
            raise SignError(f"{name}: {self.sign_file} did not append a PKCS#7 module "
                            "signature to the module; is it the kernel's scripts/sign-file?")
        return signed


def _reason(proc: subprocess.CompletedProcess[str]) -> str:
    """sign-file's own last word (``sign-file: FILE[: errno text]``), with the
    OpenSSL reason it printed before it (``- SSL error:CODE:LIB::REASON: ...``)."""
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    mine = [ln for ln in lines if ln.startswith("sign-file:")]
    text = (mine or lines or [f"exit status {proc.returncode}"])[-1].removeprefix("sign-file: ")
    ssl = [m.group(1) for ln in lines if (m := _SSL_ERROR.search(ln))]
    if ssl:
        text += f": {ssl[-1]} (is the key a PEM private key and the certificate its X.509 " \
                "certificate?)"
    return text


_SSL_ERROR = re.compile(r"SSL error:[0-9A-Fa-f]+:([^:]+::[^:]+)")


def resolve_signer(target: TargetKernel, key: Path | None = None,
                   cert: Path | None = None) -> tuple[Signer | None, list[str]]:
    """The signer for ``target``: from ``key`` and ``cert`` (both or neither),
    else the build dir's configured key, else None; and notes to show."""
    notes: list[str] = []
    if (key is None) != (cert is None):
        raise SignError(f"{param('key')} and {param('cert')} go together: give the private key "
                        "and its X.509 certificate, or neither")
    cfg = target.config
    kdir = target.kernel_dir
    hash_algo = (cfg.get("MODULE_SIG_HASH") if cfg is not None else None) or DEFAULT_HASH
    if key is not None and cert is not None:
        for path, name in ((key, "key"), (cert, "cert")):
            if not path.is_file():
                raise SignError(f"{path}: no such file ({param(name)})")
        sign_file = _sign_file(kdir, required=True)
        assert sign_file is not None
        if cfg is None:
            notes.append(f"target .config unknown: signed with {DEFAULT_HASH}")
        elif not cfg.enabled("MODULE_SIG"):
            notes.append(f"kernel {target.release} has no CONFIG_MODULE_SIG: its loader ignores "
                         "the signature")
        return Signer(sign_file, hash_algo, str(key), cert, "--sign-key"), notes
    if cfg is None or kdir is None or not cfg.enabled("MODULE_SIG"):
        return None, notes
    configured = cfg.get("MODULE_SIG_KEY")
    if not configured:
        return None, notes
    if configured.startswith("pkcs11:"):
        key_name = configured
    else:
        path = Path(configured)
        path = path if path.is_absolute() else kdir / path
        if not path.is_file():
            return None, notes  # distribution headers: no key, nothing to sign with
        key_name = str(path)
    cert_path = kdir / DEFAULT_CERT
    if not cert_path.is_file():
        notes.append(f"not signed: {key_name} (CONFIG_MODULE_SIG_KEY) exists but {cert_path} "
                     "does not; pass --sign-key and --sign-cert")
        return None, notes
    sign_file = _sign_file(kdir, required=False)
    if sign_file is None:
        notes.append(f"not signed: the kernel has a signing key but no {kdir / 'scripts'}"
                     "/sign-file; run 'make scripts' there")
        return None, notes
    return Signer(sign_file, hash_algo, key_name, cert_path,
                  f"CONFIG_MODULE_SIG_KEY of {kdir}"), notes


def _sign_file(kdir: Path | None, required: bool) -> Path | None:
    if kdir is None:
        if required:
            raise SignError("signing needs the kernel's scripts/sign-file: pass the kernel's "
                            f"build/headers dir with {param('kernel_dir')}")
        return None
    path = kdir / "scripts" / "sign-file"
    if path.is_file() and os.access(path, os.X_OK):
        return path
    if required:
        raise SignError(f"{path}: no such program; install the kernel's kbuild package "
                        "(Debian: linux-kbuild-*) or run 'make scripts' in the kernel build dir")
    return None
