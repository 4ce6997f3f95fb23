"""End to end: build real modules, convert them with the CLI, load them in QEMU.

One boot serves every test below that takes the ``guest`` fixture (see
conftest.py).  Each test asserts on what came back from the guest: the
module's own printout, cross-checked against /proc/kallsyms and /proc/sys
as read in the same boot.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from e2e_support import (
    REFERENCES,
    SYMPOS_NAME,
    SYMPOS_POS,
    CaseResult,
    Converted,
    GuestRun,
    converted_names,
    hex_addr,
    klpsym,
    restricted,
)

from klpsym.lab.provision import Kernel

SHN_LIVEPATCH = 0xFF20


def loaded(guest: GuestRun, name: str, converted: dict[str, Converted]) -> CaseResult:
    """The guest's result for ``name``, after checking that its conversion worked and insmod did."""
    conv = converted[name]
    assert conv.ok, conv.explain()
    case = guest.case(name)
    assert case.kv.get("insmod_rc") == "0", f"insmod {name}.ko failed:\n{case.log()}"
    return case


# ------------------------------------------------------------------ static checks


def _readelf(ko: Path, *flags: str) -> str:
    return subprocess.run(
        ["readelf", "-W", *flags, str(ko)], capture_output=True, text=True, check=True
    ).stdout


def rela_users(ko: Path, names: set[str]) -> dict[str, dict[str, int]]:
    """symbol -> {relocation section: count}, for the symbols in ``names`` (readelf -r)."""
    users: dict[str, dict[str, int]] = {}
    section = ""
    for line in _readelf(ko, "-r").splitlines():
        m = re.match(r"Relocation section '([^']+)'", line)
        if m:
            section = m.group(1)
            continue
        f = line.split()
        if len(f) >= 5 and f[2].startswith("R_X86_64_") and f[4] in names:
            per = users.setdefault(f[4], {})
            per[section] = per.get(section, 0) + 1
    return users


def test_modules_reference_what_they_claim(built: dict[str, Path]) -> None:
    """Guard on the test modules themselves: the compiler emitted the shapes we test."""
    for name, names in REFERENCES.items():
        users = rela_users(built[name], names)
        assert set(users) == names, f"{name}.ko: unexported references {users}"
    fp = rela_users(built["fn_pointers"], REFERENCES["fn_pointers"])
    assert fp["bpf_get_current_pid_tgid"] == {".rela.data": 1}
    assert fp["bpf_get_current_comm"] == {".rela.rodata": 1}
    assert fp["bpf_ktime_get_ns"] == {".rela.rodata": 1}
    ie = rela_users(built["init_exit"], REFERENCES["init_exit"])
    assert set(ie["kallsyms_lookup_name"]) == {".rela.init.text"}
    assert set(ie["lookup_symbol_name"]) == {".rela.exit.text"}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_converted_elf(name: str, kernel: Kernel, built: dict[str, Path],
                       converted: dict[str, Converted]) -> None:
    """Every relocation against an unexported symbol moved to .klp.rela.vmlinux.<target>,
    against a .klp.sym.vmlinux.NAME,POS symbol in SHN_LIVEPATCH (checked with readelf);
    symbols this kernel exports to the module stay ordinary imports."""
    conv = converted[name]
    assert conv.ok, conv.explain()
    names = converted_names(kernel.kernel_dir, name)
    kept = REFERENCES[name] - names
    if kept:
        assert rela_users(conv.output, kept) == rela_users(built[name], kept)
        syms = _readelf(conv.output, "-s")
        assert all(any(ln.split()[-1:] == [k] and " UND " in ln for ln in syms.splitlines())
                   for k in kept), kept
    if not names:
        assert ".klp." not in _readelf(conv.output, "-S")
        return
    before = rela_users(built[name], names)
    pos = {n: (SYMPOS_POS if n == SYMPOS_NAME else 0) for n in names}
    klp_names = {f".klp.sym.vmlinux.{n},{pos[n]}": n for n in names}
    after = rela_users(conv.output, set(klp_names) | names)
    for plain in names:
        assert plain not in after, f"{plain} still relocated through {after.get(plain)}"
    moved = {
        klp_names[k]: {
            ".rela" + sec.removeprefix(".klp.rela.vmlinux."): count for sec, count in v.items()
        }
        for k, v in after.items()
    }
    assert moved == before
    for sec in {s for v in after.values() for s in v}:
        assert sec.startswith(".klp.rela.vmlinux."), sec

    # Symbols: .klp.sym.vmlinux.NAME,POS with st_shndx SHN_LIVEPATCH, none left undefined.
    syms = _readelf(conv.output, "-s")
    for klp_name in klp_names:
        lines = [ln for ln in syms.splitlines() if ln.split() and ln.split()[-1] == klp_name]
        assert lines, f"no symbol {klp_name} in {conv.output.name}"
        assert all(f"{SHN_LIVEPATCH:#x}" in ln.lower() for ln in lines), lines
    und = {ln.split()[-1] for ln in syms.splitlines() if " UND " in ln and ln.split()[-1] != "UND"}
    assert not und & names

    # Sections: SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH (readelf flags A, I, o).
    flags = {}
    for line in _readelf(conv.output, "-S").splitlines():
        m = re.search(r"\]\s+(\.klp\.rela\.vmlinux\.\S+)\s+RELA\s+(?:\S+\s+){4}(\S+)", line)
        if m:
            flags[m.group(1)] = m.group(2)
    assert set(flags) == {sec for v in after.values() for sec in v}, flags
    for sec, flg in flags.items():
        assert set("AIo") <= set(flg), (sec, flg)


def test_versions_follow_the_targets_modversions(
    kernel: Kernel, converted: dict[str, Converted]
) -> None:
    """sid's 7.x is built without CONFIG_MODVERSIONS: its modules have no
    __versions section, and klpsym must not need one (they load below)."""
    modversions = "CONFIG_MODVERSIONS=y" in (kernel.kernel_dir / ".config").read_text().split()
    for name, conv in converted.items():
        assert conv.ok, conv.explain()
        has = "__versions" in _readelf(conv.output, "-S")
        assert has == modversions, (name, kernel.release, has)


def test_sympos_without_sympos_is_refused(
    kernel: Kernel, built: dict[str, Path], kallsyms_file: Path, tmp_path: Path
) -> None:
    """No boot needed: an ambiguous name is refused with exit 2, naming the candidates."""
    out = tmp_path / "sympos.ko"
    proc = klpsym(
        "convert", built["sympos"], "-o", out,
        "--kernel-dir", kernel.kernel_dir, "--kallsyms", kallsyms_file,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("klpsym: error: "), proc.stderr
    assert SYMPOS_NAME in lines[0] and "--sympos" in lines[0]
    # every same-name kallsyms entry is listed, by address
    wanted = [
        int(ln.split()[0], 16)
        for ln in kallsyms_file.read_text().splitlines()
        if ln.split()[2:] == [SYMPOS_NAME]
    ]
    assert len(wanted) >= 2, f"{SYMPOS_NAME} is no longer ambiguous in this kernel: pick another"
    listed = {int(h, 16) for h in re.findall(r"0x[0-9a-fA-F]+", lines[0])}
    assert set(wanted) <= listed, lines[0]
    assert not out.exists()


def test_data_and_text_follow_the_address(
    kernel: Kernel, built: dict[str, Path], kallsyms_file: Path, tmp_path: Path
) -> None:
    """Without CONFIG_KALLSYMS_ALL kallsyms has no variables, so klpsym refuses a
    data symbol: dmesg_restrict must count as data on every kernel, whatever
    letter its kallsyms shows (7.x shows T), and kallsyms_lookup_name as text."""
    config = tmp_path / "config"
    config.write_text("".join(
        ln + "\n" for ln in (kernel.kernel_dir / ".config").read_text().splitlines()
        if not ln.startswith("CONFIG_KALLSYMS_ALL=")) + "# CONFIG_KALLSYMS_ALL is not set\n")
    args = ("--kernel-dir", kernel.kernel_dir, "--kallsyms", kallsyms_file, "--config", config)
    data = klpsym("convert", built["data_rw"], "-o", tmp_path / "d.ko", *args)
    assert data.returncode == 2, data.stdout + data.stderr
    assert "dmesg_restrict is a data symbol" in data.stderr and "CONFIG_KALLSYMS_ALL" in data.stderr
    text = klpsym("convert", built["call_func"], "-o", tmp_path / "t.ko", *args)
    assert text.returncode == 0, text.stderr
    letter = {ln.split()[2]: ln.split()[1] for ln in kallsyms_file.read_text().splitlines()
              if ln.endswith((" dmesg_restrict", " kallsyms_lookup_name"))}
    print(f"{kernel.release}: kallsyms letters {letter}")


# ------------------------------------------------------------------ in the guest


def test_boot_is_clean(guest: GuestRun) -> None:
    guest.assert_clean()
    assert guest.boot is not None
    print(f"boot: {guest.boot.seconds:.1f} s")


def test_kaslr_moved_the_kernel(guest: GuestRun, kallsyms_file: Path) -> None:
    """The guest kernel is NOT where the converter's kallsyms file says it is, so the
    address checks below prove resolution at load time, not values baked in by klpsym."""
    captured: dict[str, list[int]] = {}
    for line in kallsyms_file.read_text().splitlines():
        f = line.split()
        if len(f) == 3 and f[2] in guest.kallsyms:
            captured.setdefault(f[2], []).append(int(f[0], 16))
    if guest.address("_stext") == captured["_stext"][0]:
        pytest.skip("boot fact: KASLR picked the link-time address this boot (about 1 boot in 500)")
    offset = guest.address("_stext") - captured["_stext"][0]
    assert offset % 0x200000 == 0, f"{offset:#x} is not a 2 MiB-aligned KASLR offset"
    # every symbol the tests check moved by that offset
    for name, addrs in guest.kallsyms.items():
        assert [a - offset for a in addrs] == captured[name], name


def test_unconverted_module_is_refused(guest: GuestRun) -> None:
    case = guest.case("unconverted_call_func")
    assert case.kv.get("insmod_rc") not in (None, "0"), case.log()
    assert case.kv.get("loaded") == "0", case.log()
    assert any("call_func: Unknown symbol kallsyms_lookup_name" in ln for ln in case.dmesg), (
        case.log()
    )


def test_module_only_export_is_refused_unconverted(kernel: Kernel, guest: GuestRun) -> None:
    """7.x: the loader refuses an export for named modules to any other module
    (verify_namespace_is_imported()), so module_ns.ko as built cannot load."""
    if not restricted(kernel.kernel_dir, "cr4_read_shadow", "module_ns"):
        pytest.skip(f"kernel fact: {kernel.release} exports cr4_read_shadow to every module")
    case = guest.case("unconverted_module_ns")
    assert case.kv.get("insmod_rc") not in (None, "0"), case.log()
    assert case.kv.get("loaded") == "0", case.log()
    assert any("module_ns: module uses symbol (cr4_read_shadow) from namespace module:" in ln
               for ln in case.dmesg), case.log()


def test_module_ns(kernel: Kernel, guest: GuestRun, converted: dict[str, Converted]) -> None:
    """cr4_read_shadow: converted where the kernel restricts it to named modules
    (sid's 7.x: module:kvm,...), an ordinary import where it does not (6.1, 6.12);
    the module calls it and checks the answer against CR4 read directly."""
    conv = converted["module_ns"]
    if restricted(kernel.kernel_dir, "cr4_read_shadow", "module_ns"):
        assert "converted 1 symbol (cr4_read_shadow)" in conv.stdout, conv.stdout
    else:
        assert "cr4_read_shadow" not in conv.stdout, conv.stdout
    case = loaded(guest, "module_ns", converted)
    rec = case.record("module_ns", "fn", "shadow", "cr4")
    guest.check_addr(rec["fn"], "cr4_read_shadow")
    assert rec["match"] == "1" and rec["pae"] == "1", rec


def test_call_func(guest: GuestRun, converted: dict[str, Converted]) -> None:
    case = loaded(guest, "call_func", converted)
    for name in ("init_task", "_printk"):
        rec = case.record("call_func", name=name)
        guest.check_addr(rec["got"], name)
        assert rec["got"] == rec["want"] and rec["match"] == "1", rec
    fn = case.record("call_func", "fn")
    guest.check_addr(fn["fn"], "kallsyms_lookup_name")
    assert case.record("call_func", result="OK")


def test_data_rw(guest: GuestRun, converted: dict[str, Converted]) -> None:
    case = loaded(guest, "data_rw", converted)
    rec = case.record("data_rw", "old", "new")
    before, after = int(case.kv["sysctl_before"]), int(case.kv["sysctl_after"])
    guest.check_addr(rec["addr"], "dmesg_restrict")
    assert int(rec["old"]) == before  # the module read what user space saw
    assert int(rec["new"]) == 1 - before
    assert int(rec["readback"]) == int(rec["new"])
    assert after == int(rec["new"])  # user space sees the module's write


def test_fn_pointers(guest: GuestRun, converted: dict[str, Converted]) -> None:
    case = loaded(guest, "fn_pointers", converted)
    data = case.record("fn_pointers", slot="data")
    guest.check_addr(data["fn"], "bpf_get_current_pid_tgid")
    assert data["got"] == data["want"] and data["match"] == "1", data
    assert int(data["got"]) >> 32 > 1  # a real tgid (insmod), not 0 or init's 1
    comm = case.record("fn_pointers", slot="rodata.comm")
    guest.check_addr(comm["fn"], "bpf_get_current_comm")
    assert comm["ret"] == "0" and comm["comm"] == "insmod" and comm["match"] == "1", comm
    kt = case.record("fn_pointers", slot="rodata.ktime")
    guest.check_addr(kt["fn"], "bpf_ktime_get_ns")
    assert 0 < int(kt["t0"]) <= int(kt["got"]) <= int(kt["t1"]), kt
    assert case.record("fn_pointers", result="OK")


def test_init_exit(guest: GuestRun, converted: dict[str, Converted]) -> None:
    case = loaded(guest, "init_exit", converted)
    assert case.kv.get("rmmod_rc") == "0", case.log()
    assert case.kv.get("loaded_after_rmmod") == "0", case.log()
    init = case.record("init_exit", phase="init")
    guest.check_addr(init["got"], "init_task")
    assert init["got"] == init["want"], init
    assert init["match"] == "1"
    exit_ = case.record("init_exit", phase="exit")
    assert exit_["ret"] == "0" and exit_["name"] == "init_task" and exit_["match"] == "1", exit_


def test_two_files(guest: GuestRun, converted: dict[str, Converted]) -> None:
    case = loaded(guest, "two_files", converted)
    a = case.record("two_files", part="a")
    guest.check_addr(a["got"], "_printk")
    assert a["got"] == a["want"], a
    b = case.record("two_files", part="b")
    guest.check_addr(b["addr"], "kptr_restrict")
    assert b["kptr_restrict"] == case.kv["sysctl_kptr_restrict"]
    assert b["core_text_printk"] == "1" and b["core_text_module"] == "0", b


def test_sympos(guest: GuestRun, converted: dict[str, Converted]) -> None:
    case = loaded(guest, "sympos", converted)
    rec = case.record("sympos", name=SYMPOS_NAME)
    same_boot = guest.kallsyms.get(SYMPOS_NAME, [])
    assert len(same_boot) >= SYMPOS_POS, same_boot
    listing = [f"{a:#x}" for a in same_boot]
    assert hex_addr(rec["addr"]) == same_boot[SYMPOS_POS - 1], (rec, listing)
    assert hex_addr(rec["addr"]) != same_boot[0]


def test_sympos_every_position(guest: GuestRun, sympos_variants: dict[int, Converted]) -> None:
    """The same module converted with --sympos c_start=N for each N gets the N-th entry."""
    same_boot = guest.kallsyms.get(SYMPOS_NAME, [])
    assert len(sympos_variants) == len(same_boot) >= 2, (sorted(sympos_variants), same_boot)
    for pos, conv in sorted(sympos_variants.items()):
        assert conv.ok, conv.explain()
        case = guest.case(f"sympos_pos{pos}")
        assert case.kv.get("insmod_rc") == "0" and case.kv.get("rmmod_rc") == "0", case.log()
        rec = case.record("sympos", name=SYMPOS_NAME)
        assert hex_addr(rec["addr"]) == same_boot[pos - 1], (pos, rec, [hex(a) for a in same_boot])


def test_hello_klp_demo(guest: GuestRun, converted: dict[str, Converted]) -> None:
    case = loaded(guest, "hello_klp", converted)
    j = case.record("hello", "jiffies_by_name")
    guest.check_addr(j["jiffies_by_name"], "jiffies")
    assert j["jiffies_by_name"] == j["jiffies_by_link"], j
    k = case.record("hello", "kallsyms_lookup_name")
    guest.check_addr(k["kallsyms_lookup_name"], "kallsyms_lookup_name")
    assert k["kallsyms_lookup_name"] == k["by_link"] == k["leads_to"]
    assert case.record("hello", result="OK")
