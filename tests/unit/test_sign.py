"""klp.sign without a real kernel: which key is used, and the one-line errors.
(Signing with the real scripts/sign-file: tests/real/test_sign_real.py.)"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
from test_convert import target

from klpsym.cli.main import message
from klpsym.errors import SignError
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.target import TargetKernel
from klpsym.klp.sign import resolve_signer


def kdir_target(tmp_path: Path, config: str | None, sign_file: str | None = None
                ) -> TargetKernel:
    kdir = tmp_path / "kdir"
    (kdir / "scripts").mkdir(parents=True)
    if sign_file is not None:
        path = kdir / "scripts" / "sign-file"
        path.write_text(sign_file)
        os.chmod(path, 0o755)
    return dataclasses.replace(
        target(), kernel_dir=kdir,
        config=None if config is None else KernelConfig.from_text(config, "kdir/.config"))


def files(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    key.write_text("k")
    cert.write_text("c")
    return key, cert


def test_key_and_cert_go_together(tmp_path: Path) -> None:
    key, cert = files(tmp_path)
    t = kdir_target(tmp_path, "CONFIG_MODULE_SIG=y\n", "#!/bin/sh\n")
    with pytest.raises(SignError, match="go together"):
        resolve_signer(t, key, None)
    with pytest.raises(SignError, match="go together"):
        resolve_signer(t, None, cert)


def test_flags_need_the_kernels_sign_file(tmp_path: Path) -> None:
    key, cert = files(tmp_path)
    with pytest.raises(SignError, match="scripts/sign-file: no such program.*linux-kbuild"):
        resolve_signer(kdir_target(tmp_path, "CONFIG_MODULE_SIG=y\n"), key, cert)
    with pytest.raises(SignError) as shown:
        resolve_signer(target(), key, cert)  # no kernel dir at all
    assert re.search("pass the kernel's build/headers dir with --kernel-dir", message(shown.value))


def test_hash_and_notes_follow_the_config(tmp_path: Path) -> None:
    key, cert = files(tmp_path)
    t = kdir_target(tmp_path, 'CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_HASH="sha512"\n',
                    "#!/bin/sh\n")
    signer, notes = resolve_signer(t, key, cert)
    assert signer is not None and signer.hash == "sha512" and notes == []
    signer, notes = resolve_signer(dataclasses.replace(t, config=None), key, cert)
    assert signer is not None and signer.hash == "sha256" and "unknown" in notes[0]
    signer, notes = resolve_signer(
        dataclasses.replace(t, config=KernelConfig.from_text("# CONFIG_MODULE_SIG is not set\n")),
        key, cert)
    assert signer is not None and "ignores the signature" in notes[0]


@pytest.mark.parametrize("config", [
    None,
    "# CONFIG_MODULE_SIG is not set\n",
    'CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_KEY="output/signing_key.pem"\n',  # Debian's
])
def test_no_key_no_signing(tmp_path: Path, config: str | None) -> None:
    assert resolve_signer(kdir_target(tmp_path, config, "#!/bin/sh\n")) == (None, [])


def test_configured_key_without_sign_file_is_a_note(tmp_path: Path) -> None:
    t = kdir_target(tmp_path, 'CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_KEY="certs/k.pem"\n')
    assert t.kernel_dir is not None
    (t.kernel_dir / "certs").mkdir()
    (t.kernel_dir / "certs" / "k.pem").write_text("k")
    signer, notes = resolve_signer(t)
    assert signer is None and "signing_key.x509" in notes[0]
    (t.kernel_dir / "certs" / "signing_key.x509").write_text("c")
    signer, notes = resolve_signer(t)
    assert signer is None and "make scripts" in notes[0]


def test_sign_file_failure_is_one_line(tmp_path: Path) -> None:
    key, cert = files(tmp_path)
    t = kdir_target(tmp_path, "CONFIG_MODULE_SIG=y\n",
                    "#!/bin/sh\necho 'At main.c:1:' >&2\n"
                    "echo '- SSL error:1E08010C:DECODER routines::unsupported: x.c:1' >&2\n"
                    "echo \"sign-file: $2\" >&2\nexit 1\n")
    signer, _ = resolve_signer(t, key, cert)
    assert signer is not None
    with pytest.raises(SignError) as exc:
        signer.sign(b"\x7fELF", "out.ko")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"out.ko: signing with {key} failed: {key}: DECODER routines::"
                          "unsupported")
