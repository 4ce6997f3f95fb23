"""klpsym addr, cflags and insmod on synthetic inputs: queries, POS, aliases,
hidden addresses, the parameters insmod gets, and every refusal."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest

from elfbuilder import SYNTH_RELEASE, simple_module
from klpsym.cli.main import main
from klpsym.cli.main import message as cli_message
from klpsym.errors import KernelSourceError, MethodError
from klpsym.kernel.kallsyms import KallsymsTable, SymbolLookupError
from klpsym.kernel.symbols import (
    Query,
    SymbolSource,
    first_name_at,
    hidden_addresses_fix,
    lookup,
    open_symbols,
    parse_query,
    require_addresses,
)
from klpsym.methods import cflags, include_dir, plan_insmod, run_insmod
from klpsym.methods.header import Method

RELEASE = SYNTH_RELEASE
ROWS = [
    (0xFFFFFFFF81000000, "T", "_stext"),
    (0xFFFFFFFF81100000, "t", "c_start"),
    (0xFFFFFFFF81172300, "T", "kallsyms_lookup_name"),
    (0xFFFFFFFF81200000, "t", "c_start"),
    (0xFFFFFFFF81300000, "t", "alias_first"),
    (0xFFFFFFFF81300000, "t", "alias_second"),
    (0xFFFFFFFF81400000, "t", "c_start"),
    (0xFFFFFFFF82000000, "D", "dmesg_restrict"),
]


def kallsyms_text(rows: list[tuple[int, str, str]], hidden: bool = False) -> str:
    return "".join(f"{0 if hidden else a:016x} {t} {n}\n" for a, t, n in rows)


@pytest.fixture()
def ksyms(tmp_path: Path) -> Path:
    p = tmp_path / "kallsyms"
    p.write_text(kallsyms_text(ROWS) + "ffffffffc0000000 t mod_fn\t[some_mod]\n")
    return p


def table() -> KallsymsTable:
    return KallsymsTable.from_rows(ROWS, "test")


def kallsyms_module(tmp_path: Path, symbols: list[str], method: str = "kallsyms",
                    name: str = "m.ko") -> Path:
    """A module whose .modinfo says what klpsym.h writes."""
    b = simple_module(unexported=(), exported=("_printk",))
    entries = [f"klpsym_method={method}"] if method else []
    entries += [f"klpsym_symbol={s}" for s in symbols]
    modinfo = next(s for s in b.sections if s.name == ".modinfo")
    modinfo.data += b"".join(e.encode() + b"\0" for e in entries)
    path = tmp_path / name
    path.write_bytes(b.build())
    return path


# -- queries and lookup ----------------------------------------------------------------


def test_parse_query() -> None:
    assert parse_query("c_start") == Query("c_start", None)
    assert parse_query("c_start,2") == Query("c_start", 2)
    for bad in ("c_start,", "c_start,x", "a b", ",2", ""):
        with pytest.raises(KernelSourceError, match="expected NAME or NAME,POS"):
            parse_query(bad)


def test_lookup_lists_every_entry_of_a_duplicated_name() -> None:
    found = lookup(table(), [Query("c_start", None), Query("kallsyms_lookup_name", None)])
    assert [(f.name, f.pos, f.count, f.address) for f in found] == [
        ("c_start", 1, 3, 0xFFFFFFFF81100000),
        ("c_start", 2, 3, 0xFFFFFFFF81200000),
        ("c_start", 3, 3, 0xFFFFFFFF81400000),
        ("kallsyms_lookup_name", 0, 1, 0xFFFFFFFF81172300),
    ]


def test_lookup_by_pos() -> None:
    (f,) = lookup(table(), [Query("c_start", 2)])
    assert (f.pos, f.address, f.type) == (2, 0xFFFFFFFF81200000, "t")
    (u,) = lookup(table(), [Query("kallsyms_lookup_name", 0)])
    assert u.pos == 0
    (u1,) = lookup(table(), [Query("kallsyms_lookup_name", 1)])
    assert u1.pos == 1 and u1.address == u.address


@pytest.mark.parametrize("query, message", [
    (Query("c_start", 0), r"c_start,0: c_start is not unique: 3 entries .* ask for c_start,POS"),
    (Query("c_start", 4), r"c_start,4: c_start has only 3 entries"),
    (Query("nope", None), r"nope: not in vmlinux's kallsyms"),
    (Query("nope", 1), r"nope: not in vmlinux's kallsyms"),
])
def test_lookup_refusals(query: Query, message: str) -> None:
    with pytest.raises(SymbolLookupError, match=message):
        lookup(table(), [query])


def test_first_name_at_follows_get_symbol_pos() -> None:
    t = table()
    (second,) = lookup(t, [Query("alias_second", 0)])
    (first,) = lookup(t, [Query("alias_first", 0)])
    assert first_name_at(t, second) == "alias_first"
    assert first_name_at(t, first) == "alias_first"


# -- sources and hidden addresses ----------------------------------------------------------


def test_open_symbols_sources(ksyms: Path, tmp_path: Path) -> None:
    src = open_symbols(kallsyms=ksyms)
    assert src.runtime and not src.is_proc and "mod_fn" not in src.table
    proc = open_symbols(proc_kallsyms=ksyms)
    assert proc.runtime and proc.description == str(ksyms)
    with pytest.raises(KernelSourceError) as shown:
        open_symbols(kallsyms=ksyms, vmlinux=ksyms)
    assert re.search("--kallsyms and --vmlinux both given", cli_message(shown.value))
    with pytest.raises(KernelSourceError) as shown:
        open_symbols(system_map=tmp_path / "nothing")
    assert re.search(r"no such file \(--system-map\)", cli_message(shown.value))


def test_hidden_addresses_are_refused_with_the_fix(tmp_path: Path) -> None:
    proc = tmp_path / "proc_kallsyms"
    proc.write_text(kallsyms_text(ROWS, hidden=True))
    src = open_symbols(proc_kallsyms=proc)
    assert not src.table.has_addresses
    with pytest.raises(KernelSourceError) as shown:
        require_addresses(SymbolSource(src.table, "/proc/kallsyms", True))
    assert re.search("every address is 0: .*--vmlinux/--system-map", cli_message(shown.value))
    with pytest.raises(KernelSourceError, match="copy /proc/kallsyms as root"):
        require_addresses(src)
    level = tmp_path / "kptr_restrict"
    level.write_text("2\n")
    assert "kernel.kptr_restrict=2 hides them even from root" in hidden_addresses_fix(level, 0)
    level.write_text("1\n")
    assert "run klpsym as root" in hidden_addresses_fix(level, 1000)
    assert "kptr_restrict=1" in hidden_addresses_fix(level, 1000)
    assert "CAP_SYSLOG" in hidden_addresses_fix(tmp_path / "missing", 0)


# -- klpsym addr -----------------------------------------------------------------------


def test_cli_addr_table_and_json(ksyms: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["addr", "c_start", "dmesg_restrict", "--kallsyms", str(ksyms)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "POS", "type", "address"]
    assert [ln.split() for ln in lines[1:]] == [
        ["c_start", "1", "t", "0xffffffff81100000"],
        ["c_start", "2", "t", "0xffffffff81200000"],
        ["c_start", "3", "t", "0xffffffff81400000"],
        ["dmesg_restrict", "0", "D", "0xffffffff82000000"],
    ]
    assert main(["addr", "c_start,3", "--json", "--kallsyms", str(ksyms)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runtime_addresses"] is True
    assert [(s["name"], s["pos"], s["count"], s["address"]) for s in out["symbols"]] == [
        ("c_start", 3, 3, "0xffffffff81400000")]  # a string: jq would round a number


def test_cli_addr_errors(ksyms: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["addr", "c_start,0", "--kallsyms", str(ksyms)]) == 2
    assert "klpsym: error: c_start,0: c_start is not unique" in capsys.readouterr().err
    hidden = tmp_path / "hidden"
    hidden.write_text(kallsyms_text(ROWS, hidden=True))
    assert main(["addr", "c_start", "--kallsyms", str(hidden)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("klpsym: error:") and "every address is 0" in err
    assert len(err.strip().splitlines()) == 1


# -- klpsym cflags -------------------------------------------------------------------------


def test_cflags(capsys: pytest.CaptureFixture[str]) -> None:
    assert (include_dir() / "klpsym.h").is_file()
    assert cflags() == [f"-I{include_dir()}"]
    assert cflags(Method.KPROBE)[1] == "-DKLPSYM_METHOD=KLPSYM_METHOD_KPROBE"
    assert main(["cflags", "--method", "kallsyms"]) == 0
    assert capsys.readouterr().out.split() == [
        f"-I{include_dir()}", "-DKLPSYM_METHOD=KLPSYM_METHOD_KALLSYMS"]
    assert main(["cflags", "--include-dir"]) == 0
    assert capsys.readouterr().out.strip() == str(include_dir())
    header = (include_dir() / "klpsym.h").read_text()
    for m in Method:  # the header and the Python enum agree on the values
        assert f"#define KLPSYM_METHOD_{m.name}\t{m.value}" in header


# -- klpsym insmod -------------------------------------------------------------------------


def source(ksyms: Path) -> SymbolSource:
    return open_symbols(kallsyms=ksyms)


def test_insmod_args_follow_declared_pos(ksyms: Path, tmp_path: Path) -> None:
    ko = kallsyms_module(tmp_path, ["kallsyms_lookup_name,0,func", "c_start,2,func",
                                    "dmesg_restrict,0,var"])
    plan = plan_insmod(ko, source(ksyms), user_args=["verbose=1"])
    assert plan.args == ["verbose=1", "kallsyms_lookup_name=0xffffffff81172300",
                         "c_start=0xffffffff81200000", "dmesg_restrict=0xffffffff82000000"]
    assert plan.command("insmod")[:2] == ["insmod", str(ko)]
    assert not plan.notes
    again = plan_insmod(ko, source(ksyms), {"c_start": 3})
    assert "c_start=0xffffffff81400000" in again.args


@pytest.mark.parametrize("symbols, kwargs, message", [
    (["c_start,0,func"], {}, r"c_start is ambiguous: 3 entries .*KLPSYM_FUNC_POS"),
    (["c_start,5,func"], {}, r"c_start,5: c_start has only 3 entries"),
    (["nope,0,var"], {}, r"nope: not in vmlinux's kallsyms"),
    (["alias_second,0,func"], {}, r"where kallsyms names alias_first first.*declare alias_first"),
    (["c_start,2,func"], {"sympos": {"other": 1}}, r"--sympos other: .* declares no symbol"),
    (["c_start,2,func"], {"user_args": ["c_start=0x1"]}, r"c_start is a symbol klpsym fills"),
    (["c_start"], {}, r"malformed klpsym_symbol='c_start'"),
    (["c_start,2,func", "c_start,1,func"], {}, r"c_start is declared twice"),
])
def test_insmod_refusals(ksyms: Path, tmp_path: Path, symbols: list[str],
                         kwargs: dict[str, object], message: str) -> None:
    ko = kallsyms_module(tmp_path, symbols)
    with pytest.raises(MethodError) as shown:
        plan_insmod(ko, source(ksyms), **kwargs)  # type: ignore[arg-type]
    assert re.search(message, cli_message(shown.value))


def test_insmod_other_methods_and_plain_modules(ksyms: Path, tmp_path: Path) -> None:
    kp = plan_insmod(kallsyms_module(tmp_path, ["c_start,0,func"], "kprobe"), source(ksyms))
    assert kp.args == [] and "looks them up itself" in kp.notes[0]
    plain = kallsyms_module(tmp_path, [], method="", name="plain.ko")
    with pytest.raises(MethodError, match="not built with klpsym.h"):
        plan_insmod(plain, source(ksyms))


def test_insmod_refuses_hidden_addresses(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.write_text(kallsyms_text(ROWS, hidden=True))
    ko = kallsyms_module(tmp_path, ["kallsyms_lookup_name,0,func"])
    with pytest.raises(KernelSourceError, match="every address is 0"):
        plan_insmod(ko, open_symbols(proc_kallsyms=hidden))


def test_run_insmod_passes_the_parameters(ksyms: Path, tmp_path: Path) -> None:
    ko = kallsyms_module(tmp_path, ["kallsyms_lookup_name,0,func"])
    fake = tmp_path / "fake-insmod"
    fake.write_text('#!/bin/sh\necho "$@"\nexit 3\n')
    fake.chmod(0o755)
    plan = plan_insmod(ko, source(ksyms), user_args=["x=1"])
    proc = run_insmod(plan, running_release=RELEASE, insmod=str(fake))
    assert proc.returncode == 3
    assert shlex.split(proc.stdout) == [str(ko), "x=1", "kallsyms_lookup_name=0xffffffff81172300"]
    with pytest.raises(MethodError, match=f"built for {RELEASE}, but this machine runs 9.9"):
        run_insmod(plan, running_release="9.9.9", insmod=str(fake))
    with pytest.raises(MethodError, match="not found"):
        run_insmod(plan, running_release=RELEASE, insmod=str(tmp_path / "no-insmod"))


def test_cli_insmod_print_args(ksyms: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    ko = kallsyms_module(tmp_path, ["c_start,2,func", "dmesg_restrict,0,var"])
    assert main(["insmod", str(ko), "debug=1", "--print-args", "--sympos", "c_start=1",
                 "--kallsyms", str(ksyms)]) == 0
    assert capsys.readouterr().out.split() == [
        "debug=1", "c_start=0xffffffff81100000", "dmesg_restrict=0xffffffff82000000"]
    # a real load only from this boot's /proc/kallsyms
    assert main(["insmod", str(ko), "--kallsyms", str(ksyms)]) == 2
    assert "other sources only with --print-args" in capsys.readouterr().err


def test_link_time_addresses_are_noted(tmp_path: Path) -> None:
    smap = tmp_path / "System.map"
    smap.write_text(kallsyms_text(ROWS))
    ko = kallsyms_module(tmp_path, ["kallsyms_lookup_name,0,func"])
    plan = plan_insmod(ko, open_symbols(system_map=smap))
    assert plan.args == ["kallsyms_lookup_name=0xffffffff81172300"]
    assert any("link-time addresses" in n and "nokaslr" in n for n in plan.notes)


def test_header_is_package_data() -> None:
    """pyproject ships include/*.h, so an installed klpsym has its header."""
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"include/*.h"' in text
    assert os.path.basename(include_dir()) == "include"


# -- klpsym build --method auto ------------------------------------------------------------


@pytest.mark.parametrize("release, config, method, why", [
    (RELEASE, "CONFIG_LIVEPATCH=y\nCONFIG_KPROBES=y\n", "klp", ">= 5.8 with CONFIG_LIVE"),
    (RELEASE, "CONFIG_KPROBES=y\n", "kprobe", "has no CONFIG_LIVEPATCH; CONFIG_KPROBES=y"),
    ("5.4.0-1-amd64", "CONFIG_LIVEPATCH=y\nCONFIG_KPROBES=y\n", "kprobe", "older than 5.8"),
    ("5.4.0-1-amd64", "CONFIG_LIVEPATCH=y\n", "kallsyms", "and no CONFIG_KPROBES"),
    (RELEASE, None, "kallsyms", "no .config"),
])
def test_auto_method(release: str, config: str | None, method: str, why: str) -> None:
    from klpsym.kbuild.methods import choose_method
    from klpsym.kernel.config import KernelConfig
    from klpsym.kernel.symvers import Symvers
    from klpsym.kernel.target import TargetKernel
    from klpsym.kernel.version import KernelVersion

    target = TargetKernel(KernelVersion.parse(release), Symvers(), "test",
                          config=None if config is None else KernelConfig.from_text(config))
    got, reason = choose_method("auto", target)
    assert got.label == method and why in reason, reason
    assert choose_method("kallsyms", target) == (Method.KALLSYMS, "asked for with --method")


def test_cflags_reads_the_method_klpsym_build_sets(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KLPSYM_METHOD", "kprobe")
    assert main(["cflags"]) == 0
    assert capsys.readouterr().out.split()[1] == "-DKLPSYM_METHOD=KLPSYM_METHOD_KPROBE"
    assert main(["cflags", "--method", "klp"]) == 0  # an explicit --method wins
    assert capsys.readouterr().out.split()[1] == "-DKLPSYM_METHOD=KLPSYM_METHOD_KLP"
    monkeypatch.delenv("KLPSYM_METHOD")
    assert main(["cflags"]) == 0
    assert capsys.readouterr().out.split() == [f"-I{include_dir()}"]
