"""--json: one object per run with a schema version, addresses and CRCs as
hex strings, an error object on failure, and every key documented in
docs/json.md (this test runs each command and holds the page to it)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_check import kmod
from test_check import target as check_target
from test_guard import crc_target, with_versions

from elfbuilder import simple_module
from klpsym.cli.jsonout import SCHEMA
from klpsym.cli.main import main

DOC = Path(__file__).parents[2] / "docs" / "json.md"
# maps whose keys are data (section names), not names of fields
FREE_FORM = frozenset({"relocations"})


def keys_of(obj: Any, out: set[str] | None = None) -> set[str]:
    out = set() if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.add(k)
            if not (k in FREE_FORM and isinstance(v, dict)):
                keys_of(v, out)
    elif isinstance(obj, list):
        for v in obj:
            keys_of(v, out)
    return out


def _section(title: str) -> str:
    text = DOC.read_text()
    m = re.search(rf"^## (klpsym )?{title}\b[^\n]*\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m is not None, f"docs/json.md has no section for {title}"
    return m.group(2)


def documented(command: str) -> set[str]:
    """The `key`s named in the page's section for ``command`` (and in the
    target section, for the commands that print a target)."""
    text = _section(command) + (_section("target") if command in ("convert", "build", "check")
                                else "")
    return set(re.findall(r"`([a-z_]+)`", text))


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    main(argv)
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert doc["schema"] == SCHEMA and next(iter(doc)) == "schema"
    return doc


def hex_values(doc: Any, keys: tuple[str, ...]) -> list[Any]:
    found: list[Any] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k in keys and v is not None and not isinstance(v, dict | list):
                found.append(v)
            found += hex_values(v, keys)
    elif isinstance(doc, list):
        for v in doc:
            found += hex_values(v, keys)
    return found


def test_every_printed_key_is_documented(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import klpsym.cli.check as cli_check
    import klpsym.cli.convert as cli_convert

    monkeypatch.setattr(cli_convert, "target_from_args", lambda args: crc_target())
    monkeypatch.setattr(cli_check, "target_for_check", lambda args: check_target())
    src = tmp_path / "m.ko"
    src.write_bytes(with_versions(simple_module(("kallsyms_lookup_name",))).build())
    seen: dict[str, set[str]] = {}
    conv = run_json(["convert", str(src), "-o", str(tmp_path / "out.ko"), "--json"], capsys)
    dry = run_json(["convert", str(src), "--dry-run", "--json"], capsys)
    seen["convert"] = keys_of(conv) | keys_of(dry)
    good = tmp_path / "good.ko"
    good.write_bytes(kmod(exports=("my_export",)).build())
    bad = tmp_path / "bad.ko"
    bad.write_bytes(kmod(("nothing_here",)).build())
    checked = run_json(["check", str(good), str(bad), "--json"], capsys)
    seen["check"] = keys_of(checked)
    crcs = hex_values(checked, ("crc", "exporter_crc"))
    assert crcs and all(re.fullmatch(r"0x[0-9a-f]{8}", v) for v in crcs)
    seen["inspect"] = set()
    for ko in (tmp_path / "out.ko", good):
        for flags in (["--header", "--sections", "--symbols", "--relocs", "--modinfo",
                       "--exports", "--versions", "--klp", "--signature"],
                      ["--strings", ".modinfo"], []):
            seen["inspect"] |= keys_of(run_json(["inspect", str(ko), *flags, "--json"], capsys))
    ksyms = tmp_path / "kallsyms"
    ksyms.write_text("ffffffff81000000 T _stext\nffffffff81100000 t c_start\n")
    seen["addr"] = keys_of(run_json(["addr", "c_start", "--kallsyms", str(ksyms), "--json"],
                                    capsys))
    seen["kallsyms"] = keys_of(run_json(["kallsyms", "--kallsyms", str(ksyms), "--json"],
                                        capsys))
    seen["error"] = keys_of(run_json(["convert", str(tmp_path / "nope.ko"), "--dry-run",
                                      "--json"], capsys))
    for command, keys in seen.items():
        missing = keys - documented(command)
        assert not missing, f"docs/json.md does not document {command}'s {sorted(missing)}"
    # addresses and CRCs are hex strings (jq and JavaScript round 64-bit numbers)
    for doc in (conv, dry):
        values = hex_values(doc, ("address", "crc", "exporter_crc", "value", "entry"))
        assert values and all(isinstance(v, str) and v.startswith("0x") for v in values)
    assert conv["guard"]["crc"] == f"0x{crc_target().symvers.get('klp_enable_patch').crc:08x}"  # type: ignore[union-attr]


def test_build_json_keys_are_documented() -> None:
    """build --json's keys, from its to_json over a result (kbuild itself
    runs in tests/kbuild)."""
    import ast

    import klpsym.cli.build as cli_build

    tree = ast.parse(Path(cli_build.__file__).read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "to_json")
    keys = {k.value for d in ast.walk(fn) if isinstance(d, ast.Dict)
            for k in d.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    assert keys and not keys - documented("build"), sorted(keys - documented("build"))


def test_error_under_json_is_an_object_on_stdout(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "nope.ko"), "--json"]) == 2
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc == {"schema": SCHEMA, "error": {"message": f"{tmp_path / 'nope.ko'}: no such "
                                                          "file (kernel module)", "exit": 2}}
    assert captured.err.startswith("klpsym: error: ")
    assert main(["inspect", str(tmp_path / "nope.ko")]) == 2
    assert capsys.readouterr().out == ""  # without --json: stderr only


def test_target_kallsyms_is_a_path(tmp_path: Path) -> None:
    from klpsym.cli.jsonout import target_json
    from klpsym.kernel.target import discover

    kdir = tmp_path / "build"
    (kdir / "include" / "generated").mkdir(parents=True)
    (kdir / "include" / "generated" / "utsrelease.h").write_text(
        '#define UTS_RELEASE "6.1.0-99-test"\n')
    (kdir / "Module.symvers").write_text("0x4c9d28b0\tphys_base\tvmlinux\tEXPORT_SYMBOL\t\n")
    ks = tmp_path / "kallsyms copy"
    ks.write_text("ffffffff81003000 T phys_base\n")
    t = discover(kdir, kallsyms=ks, running_release="other")
    doc = target_json(t)
    assert doc["kallsyms"] == str(ks) and doc["kallsyms_format"] == "kallsyms"
    assert doc["release"] == t.release and doc["symvers"] == [str(kdir / "Module.symvers")]
