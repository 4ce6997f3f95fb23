"""Signing converted modules with Debian bookworm's real scripts/sign-file
(from linux-kbuild-6.1, through the headers' scripts/ link), with a key and
certificate each test session generates, as certs/Makefile does.

The modules are synthetic (tests/elfbuilder.py) with bookworm's release in
their vermagic, so the target is the real headers dir and a real kallsyms."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from elfbuilder import simple_module
from klpsym.elf import ElfFile
from klpsym.errors import SignError
from klpsym.kernel.target import TargetKernel, discover
from klpsym.klp.convert import convert_file
from klpsym.klp.sign import resolve_signer
from klpsym.klp.validate import loader_problems
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms
from klpsym.module.ko import read_module
from klpsym.module.signature import MODULE_SIG_STRING, PkeyIdType, split_signature

KLPSYM = [sys.executable, "-m", "klpsym.cli.main"]
SIGNER = "klpsym test signing key"


def make_key(directory: Path, cn: str = SIGNER, outform: str = "PEM") -> tuple[Path, Path]:
    """A throwaway RSA key and self-signed certificate (certs/Makefile's recipe)."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "signing_key.pem", directory / f"signing_cert.{outform.lower()}"
    subprocess.run(
        ["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "1", "-batch",
         "-x509", "-subj", f"/CN={cn}/", "-newkey", "rsa:2048", "-outform", outform,
         "-out", str(cert), "-keyout", str(key)],
        check=True, capture_output=True)
    return key, cert


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing; run scripts/bootstrap")
    return make_key(tmp_path_factory.mktemp("key"))


@pytest.fixture(scope="module")
def kallsyms(bookworm: Kernel) -> Path:
    return capture_kallsyms(bookworm)


@pytest.fixture(scope="module")
def target(bookworm: Kernel, kallsyms: Path) -> TargetKernel:
    return discover(kernel_dir=bookworm.kernel_dir, kallsyms=kallsyms)


def modinfo(path: Path) -> dict[str, str]:
    out = subprocess.run(["modinfo", str(path)], capture_output=True, text=True,
                         check=True).stdout
    fields: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("\t"):
            fields.setdefault(key.strip(), value.strip())
    return fields


def check_signed(path: Path, unsigned: bytes) -> None:
    """The appended signature parses, covers exactly the unsigned bytes, and
    kmod reads its signer and hash; the ELF part still passes the loader rules."""
    data = path.read_bytes()
    assert data.endswith(MODULE_SIG_STRING)
    elf_part, sig = split_signature(data, str(path))
    assert sig is not None and sig.id_type == PkeyIdType.PKCS7
    assert elf_part == unsigned
    info = modinfo(path)
    assert info["signer"] == SIGNER
    assert info["sig_hashalgo"] == "sha256"  # bookworm's CONFIG_MODULE_SIG_HASH
    assert info["sig_id"] == "PKCS#7"
    assert loader_problems(ElfFile.from_bytes(elf_part), 511) == []


def test_convert_signs_the_output(tmp_path: Path, target: TargetKernel,
                                  keypair: tuple[Path, Path]) -> None:
    src = tmp_path / "m.ko"
    src.write_bytes(simple_module(release=target.version.release).build())
    plain = convert_file(src, target, {}, output=tmp_path / "plain.ko")
    assert plain.signed_with is None  # Debian's headers have no key of their own
    signer, notes = resolve_signer(target, *keypair)
    assert signer is not None and signer.hash == "sha256" and notes == []
    assert signer.sign_file.resolve().parent.parent.name == "linux-kbuild-6.1"
    res = convert_file(src, target, {}, output=tmp_path / "signed.ko", signer=signer)
    assert res.signed_with is signer and res.guard.adds
    check_signed(tmp_path / "signed.ko", (tmp_path / "plain.ko").read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ko", "plain.ko", "signed.ko"]


def test_module_with_nothing_to_convert_is_signed_as_is(tmp_path: Path, target: TargetKernel,
                                                      keypair: tuple[Path, Path]) -> None:
    src = tmp_path / "m.ko"
    src.write_bytes(simple_module((), ("_printk",), release=target.version.release).build())
    signer, _ = resolve_signer(target, *keypair)
    res = convert_file(src, target, {}, output=tmp_path / "out.ko", signer=signer)
    assert not res.plan.to_convert and not res.guard.adds and res.signed_with is signer
    check_signed(tmp_path / "out.ko", src.read_bytes())


def test_signed_input_is_signed_again(tmp_path: Path, target: TargetKernel,
                                      keypair: tuple[Path, Path]) -> None:
    other_key = make_key(tmp_path / "other", "someone else")
    signer_other, _ = resolve_signer(target, *other_key)
    assert signer_other is not None
    src = tmp_path / "m.ko"
    unsigned = simple_module(release=target.version.release).build()
    src.write_bytes(signer_other.sign(unsigned, "m.ko"))
    assert modinfo(src)["signer"] == "someone else"
    signer, _ = resolve_signer(target, *keypair)
    res = convert_file(src, target, {}, in_place=True, signer=signer)
    assert any("signature was removed" in n and "signed again with" in n
               for n in res.plan.notes)
    m = read_module(src)
    assert m.signature is not None
    check_signed(src, m.elf_bytes)
    # unchanged and signed: converting again keeps the file as it is
    before = src.read_bytes()
    again = convert_file(src, target, {}, in_place=True, signer=signer)
    assert not again.written and src.read_bytes() == before


def test_der_certificate_and_the_build_dir_key(tmp_path: Path, bookworm: Kernel,
                                               kallsyms: Path) -> None:
    """A build dir with its own key (CONFIG_MODULE_SIG_KEY and
    certs/signing_key.x509, here DER as kbuild writes it) signs without flags."""
    kdir = tmp_path / "kdir"
    kdir.mkdir()
    for entry in bookworm.kernel_dir.iterdir():
        if entry.name != ".config":
            (kdir / entry.name).symlink_to(entry)
    config = (bookworm.kernel_dir / ".config").read_text()
    assert 'CONFIG_MODULE_SIG_KEY="output/signing_key.pem"' in config  # Debian's, absent
    (kdir / ".config").write_text(config.replace(
        'CONFIG_MODULE_SIG_KEY="output/signing_key.pem"',
        'CONFIG_MODULE_SIG_KEY="certs/signing_key.pem"'))
    t = discover(kernel_dir=kdir, kallsyms=kallsyms)
    assert resolve_signer(t) == (None, [])  # no key file yet
    key, der = make_key(kdir / "certs", outform="DER")
    assert resolve_signer(t)[1] and resolve_signer(t)[0] is None  # key, but no .x509 yet
    der.rename(kdir / "certs" / "signing_key.x509")
    signer, notes = resolve_signer(t)
    assert signer is not None and notes == []
    assert signer.key == str(key) and "CONFIG_MODULE_SIG_KEY" in signer.origin
    src = tmp_path / "m.ko"
    src.write_bytes(simple_module(release=bookworm.release).build())
    proc = subprocess.run([*KLPSYM, "convert", str(src), "-o", str(tmp_path / "out.ko"),
                           "--kernel-dir", str(kdir), "--kallsyms", str(kallsyms)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"signed with {key}" in proc.stdout
    assert modinfo(tmp_path / "out.ko")["signer"] == SIGNER


@pytest.mark.parametrize("flags, message", [
    (["--sign-key", "KEY"], "--sign-key and --sign-cert go together"),
    (["--sign-cert", "CERT"], "--sign-key and --sign-cert go together"),
    (["--sign-key", "nokey.pem", "--sign-cert", "CERT"], r"nokey.pem: no such file \(--sign-key\)"),
    (["--sign-key", "BAD", "--sign-cert", "CERT"],
     "signing with .*BAD failed: .*DECODER routines::unsupported"),
    (["--sign-key", "CERT", "--sign-cert", "KEY"], "signing with .* failed: "),
])
def test_cli_signing_errors_are_one_line(tmp_path: Path, bookworm: Kernel, kallsyms: Path,
                                         keypair: tuple[Path, Path], flags: list[str],
                                         message: str) -> None:
    import re

    (tmp_path / "BAD").write_text("not a key\n")
    subst = {"KEY": str(keypair[0]), "CERT": str(keypair[1]), "BAD": str(tmp_path / "BAD")}
    src = tmp_path / "m.ko"
    src.write_bytes(simple_module(release=bookworm.release).build())
    proc = subprocess.run([*KLPSYM, "convert", str(src), "-o", str(tmp_path / "out.ko"),
                           "--kernel-dir", str(bookworm.kernel_dir), "--kallsyms", str(kallsyms),
                           *(subst.get(f, f) for f in flags)],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("klpsym: error: "), proc.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out.ko").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.ko")]


def test_sign_file_that_does_not_sign(tmp_path: Path, target: TargetKernel,
                                      keypair: tuple[Path, Path]) -> None:
    """A sign-file that exits 0 without appending a signature is caught."""
    import dataclasses

    fake = tmp_path / "sign-file"
    fake.write_text('#!/bin/sh\ncp "$4" "$5"\n')
    os.chmod(fake, 0o755)
    signer, _ = resolve_signer(target, *keypair)
    assert signer is not None
    with pytest.raises(SignError, match="did not append a PKCS#7 module signature"):
        dataclasses.replace(signer, sign_file=fake).sign(b"\x7fELF...", "m.ko")
