"""klpsym.kernel.kallsyms: /proc/kallsyms and System.map readers, POS rules."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kallsyms_support import ALL, TEXT_ONLY, host_kallsyms_readable, rows, sample_system_map
from klpsym.cli.main import message
from klpsym.errors import KernelSourceError, KlpsymError
from klpsym.kernel.kallsyms import (
    AmbiguousSymbolError,
    KallsymsTable,
    SymbolLookupError,
    SymbolNotFoundError,
    is_data,
    is_text,
)
from klpsym.kernel.proc_kallsyms import (
    _parse_lines,
    _read_canonical,
    parse_proc_kallsyms,
    read_proc_kallsyms,
)
from klpsym.kernel.system_map import read_system_map
from klpsym.kernel.version import KernelVersion
from vmlinux_builder import (
    SAMPLE_KALLSYMS_ALL,
    SAMPLE_KALLSYMS_TEXT,
)

PROC = """\
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81001000 t init_once
ffffffff81002000 T schedule
ffffffff81003000 t init_once
ffffffff81004000 t zero_addr_later
ffffffff81005000 t init_once
ffffffffc0a00000 t init_once\t[ext4]
ffffffffc0a01000 T ext4_only\t[ext4]
ffffffffc0b00000 t bpf_prog_6deef7357e7b4530_sd_fw_egress\t[bpf]
ffffffffc0c00000 t ftrace_trampoline\t[__builtin__ftrace]
"""

V61 = KernelVersion.parse("6.1.0-56-amd64")


# -- /proc/kallsyms ---------------------------------------------------------------


def test_proc_keeps_vmlinux_only_in_order() -> None:
    t = parse_proc_kallsyms(PROC, "kallsyms")
    assert len(t) == 7
    assert [str(n) for n in t.names] == [
        "_stext", "_text", "init_once", "schedule", "init_once", "zero_addr_later", "init_once"]
    assert t.has_addresses and t.addresses.dtype == np.uint64
    assert int(t.addresses[3]) == 0xFFFFFFFF81002000
    assert "ext4_only" not in t and "ftrace_trampoline" not in t and "schedule" in t
    assert t.count("init_once") == 3 and t.count("nope") == 0
    assert t.duplicated_names() == {"init_once": 3}
    assert list(t)[3] == (0xFFFFFFFF81002000, "T", "schedule")


def test_candidates_and_resolve() -> None:
    t = parse_proc_kallsyms(PROC, "kallsyms")
    cands = t.candidates("init_once")
    assert [(c.pos, c.type, c.address, c.index) for c in cands] == [
        (1, "t", 0xFFFFFFFF81001000, 2), (2, "t", 0xFFFFFFFF81003000, 4),
        (3, "t", 0xFFFFFFFF81005000, 6)]
    assert t.resolve("schedule") == (0, t.candidates("schedule")[0])
    assert t.sympos("schedule") == 0
    assert t.resolve("schedule", 1)[0] == 1  # POS 1 of a unique name is also accepted
    assert t.resolve("init_once", 2) == (2, cands[1])
    assert t.resolve("init_once", 3)[1].address == 0xFFFFFFFF81005000
    with pytest.raises(AmbiguousSymbolError) as exc:
        t.resolve("init_once")
    msg = message(exc.value)
    assert "\n" not in str(exc.value)
    assert msg == ("symbol init_once is ambiguous: 3 entries in kallsyms (POS 1: t "
                   "0xffffffff81001000, POS 2: t 0xffffffff81003000, POS 3: t 0xffffffff81005000)"
                   "; choose one with --sympos init_once=POS")
    assert exc.value.candidates == tuple(cands) and exc.value.name == "init_once"
    with pytest.raises(AmbiguousSymbolError):
        t.sympos("init_once")
    with pytest.raises(SymbolNotFoundError, match="init_once=4: init_once occurs only 3 times"):
        t.resolve("init_once", 4)
    with pytest.raises(SymbolNotFoundError, match="schedule=2: schedule occurs only once"):
        t.resolve("schedule", 2)
    with pytest.raises(SymbolNotFoundError, match="symbol ext4_only is not in vmlinux's"):
        t.resolve("ext4_only")
    with pytest.raises(SymbolLookupError, match="POS must be 0 or more"):
        t.resolve("schedule", -1)
    assert issubclass(AmbiguousSymbolError, KlpsymError)
    assert issubclass(SymbolNotFoundError, KernelSourceError)


def test_address_zero_is_not_found() -> None:
    t = parse_proc_kallsyms("0000000000000000 A fixed_percpu_data\n"
                            "ffffffff81000000 T _stext\n", "k")
    with pytest.raises(SymbolNotFoundError, match="address 0"):
        t.resolve("fixed_percpu_data")


def test_hidden_addresses_keep_order() -> None:
    hidden = "\n".join("0" * 16 + line[16:] for line in PROC.splitlines())
    t = parse_proc_kallsyms(hidden, "kallsyms (non-root)")
    assert not t.has_addresses and t.notes and "order is kept" in t.notes[0]
    assert [c.address for c in t.candidates("init_once")] == [None, None, None]
    assert [c.index for c in t.candidates("init_once")] == [2, 4, 6]
    assert t.resolve("init_once", 2)[0] == 2 and t.resolve("schedule")[0] == 0
    assert "address unknown" in str(pytest.raises(AmbiguousSymbolError, t.resolve,
                                                  "init_once").value)


@pytest.mark.parametrize(("text", "line", "what"), [
    ("ffffffff81000000 T a\nffffffff81000001 T\n", 2, "not a kallsyms line"),
    ("ffffffff81000000 T a\nzzzz T b\n", 2, "address 'zzzz' is not a 64-bit hex"),
    ("ffffffff81000000 T a\n1ffffffff81000001 T b\n", 2, "address '1f+81000001' is not"),
    ("ffffffff81000000 TT a\n", 1, "type 'TT' is not one letter"),
    ("ffffffff81000000 T a\tjunk\n", 1, "not a kallsyms line"),
    ("ffffffff81000000 T a b c d\n", 1, "not a kallsyms line"),
    ("ffffffffc0000000 t m\t[mod]\n\nffffffff81000000 T a extra\n", 3, "not a kallsyms line"),
])
def test_proc_malformed(text: str, line: int, what: str) -> None:
    with pytest.raises(KernelSourceError, match=rf"^bad:{line}: {what}"):
        parse_proc_kallsyms(text, "bad")


def same_tables(a: KallsymsTable, b: KallsymsTable) -> None:
    assert list(a.names) == list(b.names) and list(a.types) == list(b.types)
    assert a.addresses.tolist() == b.addresses.tolist()
    assert (a.has_addresses, a.notes, a.source) == (b.has_addresses, b.notes, b.source)
    for name in set(b.names):
        assert a.candidates(name) == b.candidates(name), name


HIDDEN = "\n".join("0" * 16 + line[16:] for line in PROC.splitlines()) + "\n"


@pytest.mark.parametrize("text", [
    PROC,
    PROC.rstrip("\n"),  # no newline at the end
    HIDDEN,
    PROC.replace("ffffffff8100", "FFFFFFFF8100"),
    "ffffffff81000000 T a\n",
    "ffffffffc0000000 t m\t[]\nffffffff81000000 t x~!{}\n",  # an empty tag; odd names
])
def test_canonical_reader_equals_the_line_parser(text: str) -> None:
    """/proc/kallsyms as the kernel prints it is read from the bytes with
    numpy (no Python string per line); the result is the line parser's."""
    fast = _read_canonical(text.encode(), "k")
    assert fast is not None and fast._nidx is not None
    same_tables(fast, _parse_lines(text, "k"))
    same_tables(parse_proc_kallsyms(text, "k"), fast)
    same_tables(parse_proc_kallsyms(text.encode(), "k"), fast)


@pytest.mark.parametrize("text", [
    PROC.replace("\n", "\r\n"),
    "ffffffff T a\n",  # a 32-bit kernel's addresses
    "ffffffff81000000  T a\n",
    "ffffffff81000000 T a \n",
    "ffffffff81000000 T a\n\nffffffff81000001 T b\n",
    "ffffffff81000000 T caf\xe9\n",
    "ffffffff81000000 T a\x01b\n",
    "ffffffff81000000 T a\tjunk\n",
    "ffffffff81000000 T a\t[m]\t[n]\n",
    "ffffffff81000000 T a\t[mod\n",
    "ffffffff8100000g T a\n",
    "0xffffffff810000 T a\n",
    "ffffffffc0000000 t m\t[mod]\n",  # no vmlinux line
    "",
])
def test_canonical_reader_leaves_other_texts_to_the_line_parser(text: str) -> None:
    """Anything else (other whitespace, widths, bytes; errors) goes to the
    line parser, which reads it or names the bad line as before."""
    raw = text.encode("utf-8", errors="surrogateescape")
    assert _read_canonical(raw, "k") is None
    try:
        slow = _parse_lines(text, "k")
    except KernelSourceError as e:
        with pytest.raises(KernelSourceError, match=re.escape(str(e))):
            parse_proc_kallsyms(raw, "k")
    else:
        same_tables(parse_proc_kallsyms(raw, "k"), slow)


def test_proc_empty_and_missing(tmp_path: Path) -> None:
    with pytest.raises(KernelSourceError, match="no vmlinux symbols"):
        parse_proc_kallsyms("", "empty")
    with pytest.raises(KernelSourceError, match="no vmlinux symbols"):
        parse_proc_kallsyms("ffffffffc0000000 t m\t[mod]\n", "mods")
    with pytest.raises(KernelSourceError) as shown:
        read_proc_kallsyms(tmp_path / "kallsyms")
    assert re.search(r"no such file \(kallsyms\); pass --kallsyms", message(shown.value))
    (tmp_path / "k").write_text(PROC)
    assert len(read_proc_kallsyms(tmp_path / "k")) == 7


def test_type_letters() -> None:
    assert all(is_text(c) for c in "tTwW") and not any(is_data(c) for c in "tTwW")
    assert all(is_data(c) for c in "dDbBrRA") and not any(is_text(c) for c in "dDbBrRA")
    t = KallsymsTable.from_rows([(0xFFFFFFFF81000000, "T", "f"), (0xFFFFFFFF82000000, "d", "v")],
                                "rows")
    assert is_text(t.candidates("f")[0]) and is_data(t.candidates("v")[0])
    assert t.has_addresses and len(t) == 2


def _big_kallsyms(n: int) -> str:
    rng = np.random.default_rng(1)
    names = [f"sym_{i}" if i % 50 else f"dup_{(i // 50) % 1000}" for i in range(n)]
    addrs = np.sort(rng.integers(0xFFFFFFFF81000000, 0xFFFFFFFF83000000, n, dtype=np.uint64))
    types = rng.choice(list("tTdDbBrR"), n)
    lines = [f"{a:016x} {t} {s}" for a, t, s in zip(addrs.tolist(), types, names, strict=True)]
    lines += [f"ffffffffc0{i:06x} t mod_sym_{i}\t[some_mod]" for i in range(2000)]
    return "\n".join(lines) + "\n"


def test_proc_large(tmp_path: Path) -> None:
    # Speed is measured by benchmarks/, not asserted here.
    path = tmp_path / "kallsyms"
    path.write_text(_big_kallsyms(200_000))
    t = read_proc_kallsyms(path)
    assert len(t) == 200_000 and t.count("dup_7") == 4




@pytest.mark.skipif(not host_kallsyms_readable(),
                    reason="host fact: no /proc/kallsyms with addresses")
def test_host_proc_kallsyms_root_and_nobody(tmp_path: Path) -> None:
    """The running kernel's kallsyms, as root and as user nobody (addresses
    hidden): same names in the same order, so every POS is the same."""
    root = read_proc_kallsyms("/proc/kallsyms")
    assert len(root) > 10_000 and root.has_addresses
    assert "_stext" in root
    zeroed = tmp_path / "zeroed"
    zeroed.write_text("".join("0" * 16 + ln[16:] + "\n"
                              for ln in Path("/proc/kallsyms").read_text().splitlines()))
    views = [("zeroed copy", read_proc_kallsyms(zeroed))]
    setpriv = shutil.which("setpriv")
    if os.geteuid() == 0 and setpriv:
        out = subprocess.run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "cat",
             "/proc/kallsyms"], capture_output=True, check=True, timeout=60).stdout
        nobody = tmp_path / "nobody"
        nobody.write_bytes(out)
        views.append(("as nobody", read_proc_kallsyms(nobody)))
    for label, view in views:
        assert not view.has_addresses, label
        assert len(view) == len(root), label
        assert list(view.names) == list(root.names), label
        for name in list(root.duplicated_names())[:200]:
            assert [c.index for c in view.candidates(name)] == \
                   [c.index for c in root.candidates(name)], (label, name)


# -- System.map -------------------------------------------------------------------

DEBIAN_STUB = "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"


def test_debian_stub(tmp_path: Path) -> None:
    p = tmp_path / "System.map-6.1.0-56-amd64"
    p.write_text(DEBIAN_STUB)
    with pytest.raises(KernelSourceError) as exc:
        read_system_map(p)
    msg = message(exc.value)
    assert msg.startswith(f"{p}: is Debian's placeholder")
    assert "--kallsyms" in msg and "-dbg" in msg and "--vmlinux" in msg
    assert "\n" not in str(exc.value)




def test_system_map_kallsyms_rules(tmp_path: Path) -> None:
    sysmap = sample_system_map(tmp_path)
    t = read_system_map(sysmap, config=ALL, version=V61)
    assert rows(t) == SAMPLE_KALLSYMS_ALL
    assert not t.notes
    # POS of "dup": the kernel counts in kallsyms order, data and init text included
    assert [(c.pos, c.type) for c in t.candidates("dup")] == [
        (1, "t"), (2, "t"), (3, "t"), (4, "d"), (5, "t")]
    assert "kallsyms_offsets" not in t and "__kcfi_typeid_foo" not in t
    assert "x" * 600 not in t  # >= KSYM_NAME_LEN
    text = read_system_map(sysmap, config=TEXT_ONLY, version=V61)
    assert rows(text) == SAMPLE_KALLSYMS_TEXT
    assert [c.pos for c in text.candidates("dup")] == [1, 2, 3, 4]
    with pytest.raises(SymbolNotFoundError):
        text.resolve("global_var")  # data: not in kallsyms without KALLSYMS_ALL
    # since v6.10 __start_*/__stop_* are kept without KALLSYMS_ALL
    newer = read_system_map(sysmap, config=TEXT_ONLY, version=KernelVersion.parse("6.12.48"))
    assert ("R", "__start___tracepoints") in rows(newer)
    assert rows(newer).index(("R", "__start___tracepoints")) == rows(newer).index(
        ("T", "_etext")) + 1
    # no config: KALLSYMS_ALL assumed, and said
    guessed = read_system_map(sysmap)
    assert rows(guessed) == SAMPLE_KALLSYMS_ALL
    assert any("CONFIG_KALLSYMS_ALL=y" in n for n in guessed.notes)
    # KSYM_NAME_LEN 128 before 6.1
    long_name = "y" * 200
    sysmap.write_text(sysmap.read_text() + f"ffffffff81000800 t {long_name}\n")
    assert long_name in read_system_map(sysmap, config=ALL, version=V61)
    assert long_name not in read_system_map(sysmap, config=ALL,
                                            version=KernelVersion.parse("5.10.0"))


@pytest.mark.parametrize(("text", "line", "what"), [
    ("ffffffff81000000 T _stext\nffffffff81000000 T\n", 2, "not a System.map line"),
    ("ffffffff81000000 T _stext\n\nffffffff8100000g T x\n", 3, "address 'ffffffff8100000g'"),
    ("ffffffff81000000 T a\tb\n", 1, "not a System.map line"),
])
def test_system_map_malformed(tmp_path: Path, text: str, line: int, what: str) -> None:
    p = tmp_path / "System.map"
    p.write_text(text)
    with pytest.raises(KernelSourceError, match=rf"^{p}:{line}: {what}"):
        read_system_map(p, config=ALL, version=V61)


def test_system_map_nothing_left(tmp_path: Path) -> None:
    p = tmp_path / "System.map"
    p.write_text("0000000000001234 A __crc_x\n")
    with pytest.raises(KernelSourceError, match="no symbol is left"):
        read_system_map(p, config=ALL, version=V61)


# -- against the real scripts/kallsyms (Debian's linux-kbuild) ---------------------










# 7.2-style kallsyms: a variable labelled T, a per-cpu variable D at a real address.
KALLSYMS_72 = [
    (0xFFFFFFFF81000000, "T", "_stext"),
    (0xFFFFFFFF814E20C0, "T", "kallsyms_lookup_name"),
    (0xFFFFFFFF822CA8E0, "T", "_etext"),
    (0xFFFFFFFF832828FC, "T", "dmesg_restrict"),
    (0xFFFFFFFF83E3E280, "D", "runqueues"),
    (0xFFFFFFFF84000000, "T", "_sinittext"),
    (0xFFFFFFFF84001000, "t", "some_init"),
    (0xFFFFFFFF84100000, "T", "_einittext"),
]


def test_kind_follows_the_address_not_the_letter() -> None:
    t = KallsymsTable.from_rows(KALLSYMS_72, "7.2")
    kind = {n: t.kind(t.candidates(n)[0]) for _a, _t, n in KALLSYMS_72}
    assert kind["dmesg_restrict"] == "data" and kind["runqueues"] == "data"
    assert kind["kallsyms_lookup_name"] == "text" and kind["some_init"] == "text"
    assert t.text_ranges() == [(0xFFFFFFFF81000000, 0xFFFFFFFF822CA8E0),
                               (0xFFFFFFFF84000000, 0xFFFFFFFF84100000)]


def test_kind_without_addresses_needs_trusted_letters() -> None:
    hidden = KallsymsTable.from_rows([(0, ty, n) for _a, ty, n in KALLSYMS_72], "hidden")
    var = hidden.candidates("dmesg_restrict")[0]
    assert hidden.kind(var, letters_tell_data=False) == ""  # 7.x: T says nothing
    assert hidden.kind(var, letters_tell_data=True) == "text"  # what the letter claims
    assert hidden.kind(hidden.candidates("runqueues")[0]) == "data"


def test_letters_are_trusted_up_to_612() -> None:
    from klpsym.kernel.version import KernelVersion, kallsyms_letters_tell_data

    assert kallsyms_letters_tell_data(KernelVersion.parse("6.1.0-56-amd64"))
    assert kallsyms_letters_tell_data(KernelVersion.parse("6.12.117+deb13-amd64"))
    assert not kallsyms_letters_tell_data(KernelVersion.parse("7.2.13+deb14-amd64"))


def test_canonical_reader_differential_on_mutated_texts() -> None:
    """Mutated kallsyms texts (bytes flipped, whitespace and newlines put
    in, lines cut): whenever the bytes reader takes a text, its table is the
    line parser's; whatever it declines, the line parser reads or refuses
    as before (parse_proc_kallsyms falls back to it)."""
    import random

    base = (PROC + HIDDEN.replace("_stext", "hidden_stext")).encode()
    rng = random.Random(20261122)
    alphabet = b" \t\n\r[]0fF:xT~\x7f\x80\x00"
    taken = 0
    for _ in range(3000):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(raw))
            op = rng.randrange(4)
            if op == 0:
                raw[i] = rng.choice(alphabet)
            elif op == 1:
                raw.insert(i, rng.choice(alphabet))
            elif op == 2:
                del raw[i]
            else:
                raw[i] = rng.randrange(0x21, 0x7F)
        fast = _read_canonical(bytes(raw), "m")
        try:
            slow = _parse_lines(bytes(raw).decode("utf-8", errors="surrogateescape"), "m")
        except KernelSourceError:
            assert fast is None, bytes(raw)
            continue
        if fast is not None:
            taken += 1
            same_tables(fast, slow)
    assert taken > 300  # most single printable changes keep the layout
