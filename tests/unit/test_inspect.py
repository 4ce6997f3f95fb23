"""klpsym inspect on synthetic modules, cross-checked against readelf."""

from __future__ import annotations

import lzma
import re
import shutil
from pathlib import Path

import pytest

from elfbuilder import simple_module
from inspect_support import compare_with_readelf, klpsym_json, klpsym_out
from klpsym.cli.main import main, message

needs_readelf = pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils missing")


def _module(tmp_path: Path) -> Path:
    p = tmp_path / "m.ko"
    p.write_bytes(simple_module(unexported=("kallsyms_lookup_name",)).build())
    return p


@needs_readelf
def test_tables_equal_readelf(tmp_path: Path) -> None:
    p = _module(tmp_path)
    texts = {v: klpsym_out("inspect", p, f"--{v}") for v in ("sections", "symbols", "relocs")}
    assert compare_with_readelf(p, texts) == []


def test_summary_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _module(tmp_path)
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "license:     GPL" in out and "kallsyms_lookup_name" in out
    data = klpsym_json("inspect", p, "--modinfo", "--exports", "--versions", "--klp",
                       "--signature", "--strings", ".modinfo", "--relocs", ".text")
    assert data["signature"] is None
    assert {"key": "license", "value": "GPL"} in data["modinfo"]  # type: ignore[operator]
    relocs = data["relocations"]
    assert isinstance(relocs, list) and [r["section"] for r in relocs] == [".rela.text"]
    assert data["klp"] == {"symbols": [], "sections": [], "problems": [], "livepatch": False,
                           "objects": [], "annotations": []}


def test_compressed_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _module(tmp_path)
    xz = tmp_path / "m.ko.xz"
    xz.write_bytes(lzma.compress(p.read_bytes()))
    assert klpsym_json("inspect", xz)["summary"]["compression"] == "xz"  # type: ignore[index]
    assert main(["inspect", str(p), "--strings", ".nope"]) == 2
    assert "no section '.nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.ko.xz"
    bad.write_bytes(lzma.compress(b"x")[:10])
    assert main(["inspect", str(bad)]) == 2
    assert "corrupt xz data" in capsys.readouterr().err


def test_convert_of_a_compressed_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    """-o writes an uncompressed .ko and says so; --in-place and a compressed
    output name are refused, nothing written."""
    from test_convert import target

    from klpsym.klp.convert import convert_file

    xz = tmp_path / "m.ko.xz"
    xz.write_bytes(lzma.compress(_module(tmp_path).read_bytes()))
    before = xz.read_bytes()
    result = convert_file(xz, target(), {}, output=tmp_path / "out.ko")
    assert result.written and (tmp_path / "out.ko").read_bytes()[:4] == b"\x7fELF"
    assert any("xz-compressed" in n for n in result.plan.notes)
    from klpsym.errors import ConvertError

    with pytest.raises(ConvertError) as shown:
        convert_file(xz, target(), {}, in_place=True)
    assert re.search("--in-place would replace it", message(shown.value))
    with pytest.raises(ConvertError, match="writes uncompressed modules"):
        convert_file(xz, target(), {}, output=tmp_path / "out.ko.xz")
    assert xz.read_bytes() == before and not (tmp_path / "out.ko.xz").exists()


def _strict_stdout_run(argv: list[str], tty: bool = False) -> tuple[int, str]:
    """main(argv) with a standard output that, like a terminal's or a pipe's,
    takes UTF-8 strictly (a lone surrogate fails)."""
    import contextlib
    import io

    class Out(io.TextIOWrapper):
        def isatty(self) -> bool:
            return tty

    raw = io.BytesIO()
    out = Out(raw, encoding="utf-8", errors="strict")
    with contextlib.redirect_stdout(out):
        rc = main(argv)
        out.flush()
    return rc, raw.getvalue().decode()


def test_names_from_the_file_are_printed_escaped(tmp_path: Path) -> None:
    """A symbol name with a newline and an undecodable byte (fuzz findings:
    UnicodeEncodeError on stdout, or a name split over two lines) is printed
    escaped, on one line, by every view; JSON keeps it."""
    p = tmp_path / "m.ko"
    p.write_bytes(simple_module(unexported=("kallsyms_lookup_name",)).build()
                  .replace(b"kallsyms_lookup_name", b"kallsyms_lookup\n\xffame"))
    for view in ([], ["--symbols"], ["--relocs"], ["--strings", ".strtab"]):
        rc, out = _strict_stdout_run(["inspect", str(p), *view])
        assert rc == 0, view
        assert all(line.replace("\t", " ").isprintable() for line in out.split("\n")), out
        assert "kallsyms_lookup\\x0a" in out, view
    symbols = klpsym_json("inspect", p, "--symbols")["symbols"]
    assert any(s["name"].startswith("kallsyms_lookup\n") for s in symbols)  # type: ignore[attr-defined]


def test_escaped_names_keep_their_columns(tmp_path: Path) -> None:
    """A name padded to a column is escaped before it is padded: the rows of
    the section table stay as wide as each other, and the modinfo values
    start in one column."""
    p = tmp_path / "m.ko"
    p.write_bytes(simple_module().build().replace(b".data\0", b".d\nta\0")
                  .replace(b"license=", b"lic\x01nse="))
    rc, out = _strict_stdout_run(["inspect", str(p), "--sections"])
    assert rc == 0
    rows = [line for line in out.split("\n") if line.startswith("  [") and "[Nr]" not in line]
    assert any(".d\\x0ata " in row for row in rows), out
    assert len({len(row) for row in rows}) == 1, out
    rc, out = _strict_stdout_run(["inspect", str(p), "--modinfo"])
    assert rc == 0
    starts = {len(line) - len(line[16:].lstrip()) for line in out.split("\n") if line}
    assert "lic\\x01nse:" in out and starts == {16}, out


@pytest.mark.parametrize("with_digest", [True, False])
def test_signature_without_encrypted_digest(tmp_path: Path, with_digest: bool) -> None:
    """A PKCS#7 SignerInfo without its encryptedDigest OCTET STRING (fuzz
    finding: StopIteration out of the parser) is reported as unparsable."""
    import struct

    from klpsym.module.signature import MODULE_SIG_STRING

    def tlv(tag: int, content: bytes) -> bytes:
        return bytes([tag, len(content)]) + content

    signed_data = tlv(0x06, bytes.fromhex("2a864886f70d010702"))
    sha256 = tlv(0x30, tlv(0x06, bytes.fromhex("608648016503040201")))
    info = tlv(0x30, tlv(0x02, b"\x01") + tlv(0x80, b"\x12\x34") + sha256 + tlv(0x30, b"")
               + (tlv(0x04, b"\xab\xcd") if with_digest else b""))
    signed = tlv(0x30, tlv(0x02, b"\x01") + tlv(0x31, b"") + tlv(0x30, signed_data)
                 + tlv(0x31, info))
    blob = tlv(0x30, signed_data + tlv(0xA0, signed))
    p = tmp_path / "m.ko"
    p.write_bytes(_module(tmp_path).read_bytes() + blob + bytes([0, 0, 2, 0, 0, 0, 0, 0])
                  + struct.pack(">I", len(blob)) + MODULE_SIG_STRING)
    sig = klpsym_json("inspect", p, "--signature")["signature"]
    assert isinstance(sig, dict)
    if with_digest:
        assert sig["signature"] == "AB:CD" and sig["sig_key"] == "12:34"
    else:
        assert sig["error"] == "the PKCS#7 signature could not be parsed"
