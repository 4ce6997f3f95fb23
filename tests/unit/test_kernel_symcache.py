"""The symbol-source cache: a second read gives the same tables from the
cache; a changed, corrupt or foreign entry is rebuilt; it can be turned off."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from klpsym.errors import KernelSourceError
from klpsym.kernel import proc_kallsyms as kallsyms
from klpsym.kernel import symcache, symvers
from klpsym.kernel.proc_kallsyms import read_proc_kallsyms
from klpsym.kernel.symcache import NameIndex, name_hashes
from klpsym.kernel.symvers import Symvers, read_symvers

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81001000 t init_once
ffffffff81002000 T schedule
ffffffff81003000 t init_once
ffffffff81004000 D jiffies
ffffffff81005000 t init_once
ffffffff81006000 t caf\xe9_\xff
ffffffffc0a00000 t init_once\t[ext4]
"""
SYMVERS = (
    "0x4c9d28b0\tphys_base\tvmlinux\tEXPORT_SYMBOL\t\n"
    "0x00000000\tno_crc_sym\tvmlinux\tEXPORT_SYMBOL\t\n"
    "0xe1cc2a05\tusb_stor_suspend\tdrivers/usb/storage/usb-storage\tEXPORT_SYMBOL_GPL"
    "\tUSB_STORAGE\n"
    "0x12345678\tpreempt_notifier_inc\tvmlinux\tEXPORT_SYMBOL_GPL\tmodule:kvm,kvm-*\n"
    "0x4c9d28b0\tphys_base\tvmlinux\tEXPORT_SYMBOL\t\n"  # the same export again
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "symcache"
    monkeypatch.setenv("KLPSYM_SYMCACHE", str(d))
    monkeypatch.delenv("KLPSYM_NO_CACHE", raising=False)
    return d


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return path


def _entries(d: Path) -> list[Path]:
    return sorted(d.glob("*.klpc")) if d.is_dir() else []


def test_name_index_finds_every_name_and_only_those() -> None:
    names = ["a", "b", "a", "", "long_" * 40, "caf\xe9", "b", "a"]
    idx = NameIndex.build(names)
    assert idx.rows("a") == [0, 2, 7] and idx.rows("b") == [1, 6] and idx.rows("") == [3]
    assert idx.rows("long_" * 40) == [4] and idx.rows("caf\xe9") == [5]
    assert idx.rows("c") == [] and idx.rows("a ") == [] and idx.rows("long_") == []
    idx.prefetch(["a\nb", "b", "\n"])  # a name from a corrupt module may hold anything
    assert idx.rows("a\nb") == [] and idx.rows("\n") == [] and idx.rows("b") == [1, 6]
    assert idx.names() == names and idx.name(5) == "caf\xe9"
    assert idx.duplicates() == {"a": [0, 2, 7], "b": [1, 6]}


def test_name_index_survives_hash_collisions(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every name in one hash bucket: lookups must still compare the names.
    def constant(blob: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return np.zeros(len(starts), dtype=np.uint64)

    monkeypatch.setattr(symcache, "name_hashes", constant)
    forced = NameIndex.build(["x", "y", "x", "zz"])
    assert forced.rows("x") == [0, 2] and forced.rows("zz") == [3] and forced.rows("q") == []
    assert forced.duplicates() == {"x": [0, 2]}


def test_hash_is_fnv1a() -> None:
    def fnv(b: bytes) -> int:
        h = 0xCBF29CE484222325
        for c in b:
            h = ((h ^ c) * 0x100000001B3) % 2**64
        return h

    words = [b"", b"a", b"schedule", b"x" * 300]
    blob = np.frombuffer(b"".join(words), dtype=np.uint8)
    lengths = np.array([len(w) for w in words])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    assert name_hashes(blob, starts, lengths).tolist() == [fnv(w) for w in words]


def _no_parse(*args: object) -> None:
    raise AssertionError("parsed again, not read from the cache")


def test_kallsyms_second_read_comes_from_the_cache(tmp_path: Path, cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "kallsyms", KALLSYMS)
    read_proc_kallsyms(path)  # fills the cache
    assert len(_entries(cache)) == 1
    fresh = read_proc_kallsyms(path, cache=False)  # parsed (line by line: a non-ASCII name)
    assert fresh._nidx is None
    monkeypatch.setattr(kallsyms, "parse_proc_kallsyms", _no_parse)
    again = read_proc_kallsyms(path)
    assert again._nidx is not None
    for t in (fresh, again):
        assert t.source == str(path) and t.has_addresses
    assert list(again.names) == list(fresh.names) and list(again.types) == list(fresh.types)
    assert again.addresses.tolist() == fresh.addresses.tolist()
    for name in ("init_once", "schedule", "jiffies", "caf\xe9_\xff", "nope", "_stext"):
        assert again.candidates(name) == fresh.candidates(name), name
        assert (name in again) == (name in fresh)
    assert again.duplicated_names() == fresh.duplicated_names() == {"init_once": 3}
    assert again.resolve("init_once", 2) == fresh.resolve("init_once", 2)
    assert list(again) == list(fresh)
    assert again.text_ranges() == fresh.text_ranges()
    for name in set(fresh.names):
        for a, b in zip(again.candidates(name), fresh.candidates(name), strict=True):
            assert again.kind(a) == fresh.kind(b), name


def test_hidden_addresses_and_notes_are_kept(tmp_path: Path, cache: Path) -> None:
    path = _write(tmp_path / "kallsyms", "0000000000000000 T a\n0000000000000000 t b\n")
    fresh, again = read_proc_kallsyms(path), read_proc_kallsyms(path)
    assert again._nidx is not None
    assert not again.has_addresses and again.notes == fresh.notes and again.notes
    assert again.candidates("a")[0].address is None


def test_symvers_second_read_comes_from_the_cache(tmp_path: Path, cache: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "Module.symvers", SYMVERS)
    read_symvers(path)  # fills the cache
    assert len(_entries(cache)) == 1
    fresh = read_symvers(path, cache=False)
    monkeypatch.setattr(symvers, "parse_symvers", _no_parse)
    again = read_symvers(path)
    assert len(again) == len(fresh) == 4
    for name in ("phys_base", "no_crc_sym", "usb_stor_suspend", "preempt_notifier_inc", "x"):
        assert again.get(name) == fresh.get(name), name
        assert (name in again) == (name in fresh)
    assert again.get("phys_base").origin == f"{path}:5"  # type: ignore[union-attr]
    assert again.get("no_crc_sym").crc is None  # type: ignore[union-attr]
    assert not again.visible_to("preempt_notifier_inc", "mine")
    assert again.visible_to("preempt_notifier_inc", "kvm_amd")
    assert again.layouts == fresh.layouts and again.sources == fresh.sources
    assert again.has_vmlinux_exports() and fresh.has_vmlinux_exports()
    assert again.exports == fresh.exports and list(again.exports) == list(fresh.exports)


def test_symvers_merge_of_cached_tables(tmp_path: Path, cache: Path) -> None:
    a = _write(tmp_path / "a.symvers", SYMVERS)
    b = _write(tmp_path / "b.symvers", "0x1\tdep_fn\tdep\tEXPORT_SYMBOL\t\n")
    clash = _write(tmp_path / "c.symvers", "0x1\tphys_base\tother\tEXPORT_SYMBOL\t\n")
    for _ in range(2):  # fresh, then cached
        merged = read_symvers(a).merge(read_symvers(b))
        assert len(merged) == 5 and merged.get("dep_fn") is not None
        with pytest.raises(KernelSourceError, match=r"phys_base is exported by other"):
            read_symvers(a).merge(read_symvers(clash))


def test_changed_source_is_read_again(tmp_path: Path, cache: Path) -> None:
    path = _write(tmp_path / "kallsyms", KALLSYMS)
    assert "jiffies" in read_proc_kallsyms(path)
    _write(path, KALLSYMS.replace("jiffies", "jiffies_64"))  # same size, new ctime
    t = read_proc_kallsyms(path)
    assert "jiffies" not in t and "jiffies_64" in t
    assert len(_entries(cache)) == 1  # one entry per source path, replaced


@pytest.mark.parametrize("damage", ["truncate", "flip", "zero", "garbage", "empty"])
def test_corrupt_entry_is_rebuilt(tmp_path: Path, cache: Path, damage: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "Module.symvers", SYMVERS)
    parsed = []
    parse = symvers.parse_symvers

    def counted(text: str, source: str) -> Symvers:
        parsed.append(source)
        return parse(text, source)

    monkeypatch.setattr(symvers, "parse_symvers", counted)
    read_symvers(path)
    (entry,) = _entries(cache)
    raw = bytearray(entry.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw[-70] ^= 0x40
    elif damage == "zero":
        raw[len(raw) // 2:] = bytes(len(raw) - len(raw) // 2)
    elif damage == "garbage":
        raw = bytearray(os.urandom(len(raw)))
    else:
        raw = bytearray()
    entry.write_bytes(bytes(raw))
    s = read_symvers(path)
    assert len(parsed) == 2  # parsed afresh ...
    assert s.get("usb_stor_suspend") is not None and len(s) == 4
    assert read_symvers(path).get("usb_stor_suspend") == s.get("usb_stor_suspend")
    assert len(parsed) == 2  # ... and the entry was rewritten


def test_entry_of_another_file_is_not_used(tmp_path: Path, cache: Path) -> None:
    one = _write(tmp_path / "one", KALLSYMS)
    two = _write(tmp_path / "two", "ffffffff81000000 T only_in_two\n")
    read_proc_kallsyms(one)
    (entry,) = _entries(cache)
    # Put one's entry where two's would be: it names another path, so unused.
    two_entry = symcache._entry("kallsyms", two)
    assert two_entry is not None
    entry.rename(two_entry)
    assert list(read_proc_kallsyms(two).names) == ["only_in_two"]


def test_consistent_but_wrong_arrays_are_rejected(tmp_path: Path, cache: Path) -> None:
    path = _write(tmp_path / "kallsyms", KALLSYMS)
    t = read_proc_kallsyms(path)
    arrays, meta = t.to_arrays()
    arrays["names_order"] = arrays["names_order"] + 100  # rows out of range
    key = symcache.file_key(path)
    assert key is not None
    symcache.store("kallsyms", path, key, arrays, meta)
    again = read_proc_kallsyms(path)
    assert again._nidx is None and again.count("init_once") == 3


def test_cache_can_be_turned_off(tmp_path: Path, cache: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "kallsyms", KALLSYMS)
    read_proc_kallsyms(path, cache=False)
    assert not _entries(cache)
    monkeypatch.setenv("KLPSYM_NO_CACHE", "1")
    read_proc_kallsyms(path)
    read_symvers(_write(tmp_path / "Module.symvers", SYMVERS))
    assert not _entries(cache)


def test_unwritable_cache_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = _write(tmp_path / "not_a_dir", "")
    monkeypatch.setenv("KLPSYM_SYMCACHE", str(blocker / "symcache"))
    path = _write(tmp_path / "kallsyms", KALLSYMS)
    assert read_proc_kallsyms(path).count("init_once") == 3
    assert read_proc_kallsyms(path).count("init_once") == 3


def test_cache_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("KLPSYM_SYMCACHE", "KLPSYM_CACHE", "XDG_CACHE_HOME", "KLPSYM_NO_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert symcache.cache_dir() == tmp_path / ".cache" / "klpsym" / "symcache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert symcache.cache_dir() == tmp_path / "x" / "klpsym" / "symcache"
    monkeypatch.setenv("KLPSYM_CACHE", str(tmp_path / "k"))
    assert symcache.cache_dir() == tmp_path / "k" / "symcache"
    monkeypatch.setenv("KLPSYM_NO_CACHE", "0")
    assert symcache.cache_dir() is not None
    monkeypatch.setenv("KLPSYM_NO_CACHE", "1")
    assert symcache.cache_dir() is None


def test_config_second_read_comes_from_the_cache(tmp_path: Path, cache: Path) -> None:
    from klpsym.kernel.config import KernelConfig

    path = _write(tmp_path / ".config",
                  "CONFIG_LIVEPATCH=y\n# CONFIG_KALLSYMS_ALL is not set\n"
                  'CONFIG_LOCALVERSION="-x \\"q\\""\nCONFIG_HZ=250\nCONFIG_M=m\n'
                  "CONFIG_LIVEPATCH=m\n")
    fresh, again = KernelConfig.from_path(path), KernelConfig.from_path(path)
    assert again._names is not None and fresh._names is None
    for name in ("LIVEPATCH", "CONFIG_KALLSYMS_ALL", "LOCALVERSION", "HZ", "M", "NOPE", ""):
        assert again.get(name) == fresh.get(name), name
    assert again.get("LIVEPATCH") == "m" and again.get("LOCALVERSION") == '-x "q"'
    assert not again.enabled("KALLSYMS_ALL") and again.get_int("HZ") == 250
    assert len(again) == len(fresh) == 4 and "M" in again and "KALLSYMS_ALL" not in again
    assert again._all() == fresh._all()


def test_proc_kallsyms_is_keyed_on_the_boot(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = Path("/proc/kallsyms")
    key = symcache.proc_kallsyms_key(proc)
    if key is None or not proc.is_file():
        pytest.skip("host fact: no /proc/kallsyms")
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert key[:2] == ["boot", boot] and isinstance(key[2], bool)
    fresh = read_proc_kallsyms()
    if not len(_entries(cache)):
        pytest.skip("host fact: /proc/kallsyms not cacheable here")
    monkeypatch.setattr(kallsyms, "parse_proc_kallsyms", _no_parse)
    again = read_proc_kallsyms()  # from the cache
    assert again.source == "/proc/kallsyms" and len(again) == len(fresh)
    assert again.has_addresses == fresh.has_addresses
    assert again.candidates("_stext") == fresh.candidates("_stext")


def test_interrupted_store_leaves_no_temporary_file(tmp_path: Path, cache: Path) -> None:
    """The entry is written part by part; an interrupt between two parts
    removes the temporary file and goes on up."""
    arrays = {"a": np.arange(1000, dtype="<u8"), "b": np.arange(7, dtype="|u1")}
    src = tmp_path / "source"
    src.write_text("x")
    key = symcache.file_key(src)
    assert key is not None
    symcache.store("t", src, key, arrays, {"m": 1})
    hit = symcache.load("t", src, key)
    assert hit is not None and hit[1] == {"m": 1}
    assert hit[0]["a"].tolist() == list(range(1000)) and hit[0]["b"].tolist() == list(range(7))
    real_open = open
    writes = []

    class Interrupting:
        def __init__(self, f: object) -> None:
            self.f = f

        def __enter__(self) -> Interrupting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()  # type: ignore[attr-defined]

        def write(self, data: object) -> int:
            writes.append(data)
            if len(writes) == 3:
                raise KeyboardInterrupt
            return self.f.write(data)  # type: ignore[attr-defined, no-any-return]

    def fake_open(path: object, mode: str = "r", *a: object, **k: object) -> object:
        f = real_open(path, mode, *a, **k)  # type: ignore[call-overload]
        return Interrupting(f) if "w" in mode else f

    import builtins

    builtins.open = fake_open  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            symcache.store("t", src, key, {"a": np.arange(5, dtype="<u8")}, {"m": 2})
    finally:
        builtins.open = real_open
    assert [p.name for p in cache.iterdir() if p.name.endswith(".tmp")] == []
    hit = symcache.load("t", src, key)  # the old entry is still there
    assert hit is not None and hit[1] == {"m": 1}
