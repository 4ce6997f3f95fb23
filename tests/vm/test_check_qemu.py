"""``klpsym check`` against reality: its verdict on each module equals what
insmod does in the booted kernel, and the lines it says the kernel will log
for the failure are in that boot's dmesg (so they name the same symbol).

The modules: tests/modules/check_* as built (they load), call_func before
and after ``klpsym convert``, missing_sym, and copies of the built modules
with one thing changed (tests/modvariants.py): a __versions CRC, the
vermagic's configuration words, the vermagic's release only (loads: with
CRCs the loader skips the release), the licence (Proprietary: loads, unless
it uses a GPL-only export), no import_ns, __versions renamed away (loads
through CONFIG_MODULE_FORCE_LOAD, tainted).  One boot loads them all.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from e2e_support import BOOT_TIMEOUT, REPO, klpsym

from klpsym.lab.build import build_modules
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import boot
from klpsym.module.ko import read_module
from klpsym.module.versions import VersionsFormat, read_versions

sys.path.insert(0, str(REPO / "tests"))
from modvariants import rename_section, set_crc, set_modinfo  # noqa: E402

SOURCES = ("check_plain", "check_gpl", "check_ns", "missing_sym", "call_func")

# file -> (loads?, the symbols the kernel's failure names)
EXPECTED: dict[str, tuple[bool, set[str]]] = {
    "check_plain.ko": (True, set()),
    "check_gpl.ko": (True, set()),
    "check_ns.ko": (True, set()),
    "call_func_klp.ko": (True, set()),
    "plain_release.ko": (True, set()),
    "plain_proprietary.ko": (True, set()),
    "plain_noversions.ko": (True, set()),
    "call_func.ko": (False, {"kallsyms_lookup_name"}),
    "missing_sym.ko": (False, {"kallsyms_lookup_name", "klpsym_test_no_such_symbol"}),
    "gpl_proprietary.ko": (False, {"ktime_get"}),
    "ns_missing.ko": (False, {"crypto_cipher_setkey"}),
    "plain_crc.ko": (False, {"_printk"}),
    "plain_vermagic.ko": (False, set()),
}

# Variants that only exist where the kernel has CONFIG_MODVERSIONS (sid's 7.x
# has none: no __versions to break or remove).
NEEDS_VERSIONS = {"plain_crc.ko", "plain_noversions.ko"}


def expected(has_versions: bool) -> dict[str, tuple[bool, set[str]]]:
    """EXPECTED for a kernel with or without CONFIG_MODVERSIONS.  Without CRCs
    the loader compares the whole vermagic, release included
    (kernel/module/main.c check_modinfo(): same_magic() skips the release only
    when the module has __versions), so plain_release fails there."""
    if has_versions:
        return EXPECTED
    out = {k: v for k, v in EXPECTED.items() if k not in NEEDS_VERSIONS}
    out["plain_release.ko"] = (False, set())
    return out


_UNKNOWN = re.compile(r": Unknown symbol (\S+) \(err -?\d+\)$")
_STAMP = re.compile(r"^\[\s*\d+\.\d+\] ")


@pytest.fixture(scope="module")
def modules(kernel: Kernel, kallsyms_file: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("check")
    built: dict[str, Path] = {}
    for name in SOURCES:
        (ko,) = build_modules(kernel, REPO / "tests/modules" / name, root / "src" / name)
        built[name] = ko
    out = root / "modules"
    out.mkdir()
    files = {name: out / ko.name for name, ko in built.items()}
    for name, ko in built.items():
        files[name].write_bytes(ko.read_bytes())
    plain, release = built["check_plain"], kernel.release
    has_versions = read_versions(read_module(plain).elf).format != VersionsFormat.NONE
    if has_versions:
        set_crc(plain, out / "plain_crc.ko", "_printk", 0x12345678)
    set_modinfo(plain, out / "plain_vermagic.ko",
                vermagic=f"{release} SMP mod_unload modversions ")
    set_modinfo(plain, out / "plain_release.ko",
                vermagic=f"{release}-not-this-one SMP preempt mod_unload modversions ")
    set_modinfo(plain, out / "plain_proprietary.ko", license="Proprietary")
    if has_versions:
        rename_section(plain, out / "plain_noversions.ko", "__versions", "__versionz")
    set_modinfo(built["check_gpl"], out / "gpl_proprietary.ko", license="Proprietary")
    set_modinfo(built["check_ns"], out / "ns_missing.ko", import_ns=None)
    proc = klpsym("convert", built["call_func"], "-o", out / "call_func_klp.ko",
                  "--kernel-dir", kernel.kernel_dir, "--kallsyms", kallsyms_file)
    assert proc.returncode == 0, proc.stderr
    found = {p.name: p for p in out.glob("*.ko")}
    assert set(found) == set(expected(has_versions)), sorted(found)
    return found


@pytest.fixture(scope="module")
def verdicts(modules: dict[str, Path], kernel: Kernel, kallsyms_file: Path
             ) -> dict[str, dict[str, object]]:
    """``klpsym check DIR --json`` on all of them at once, as a user would."""
    directory = next(iter(modules.values())).parent
    proc = klpsym("check", directory, "--kernel-dir", kernel.kernel_dir,
                  "--kallsyms", kallsyms_file, "--json")
    assert proc.returncode == 1, f"exit {proc.returncode}: {proc.stderr}"
    report = json.loads(proc.stdout)
    return {Path(str(m["path"])).name: m for m in report["modules"]}


@pytest.fixture(scope="module")
def insmod(modules: dict[str, Path], verdicts: dict[str, dict[str, object]], kernel: Kernel
           ) -> dict[str, tuple[int, list[str]]]:
    """One boot: each module inserted (and removed again if it loaded);
    file -> (insmod's exit status, the kernel log lines it caused)."""
    parts = []
    for name in sorted(modules):
        modname = verdicts[name]["name"]
        parts.append(
            f'echo "@@begin {name}"; dmesg -c >/dev/null; insmod /lab/{name}; echo "@@rc $?"; '
            f'dmesg | sed "s/^/@@dmesg /"; grep -q "^{modname} " /proc/modules && '
            f'rmmod {modname}; echo "@@end"\n')
    result = boot(kernel, modules, "".join(parts), timeout=BOOT_TIMEOUT, kaslr=True)
    cases: dict[str, tuple[int, list[str]]] = {}
    current, rc, lines = "", -1, []
    for line in result.output.splitlines():
        if line.startswith("@@begin "):
            current, rc, lines = line.split(None, 1)[1], -1, []
        elif line.startswith("@@rc "):
            rc = int(line.split()[1])
        elif line.startswith("@@dmesg "):
            lines.append(_STAMP.sub("", line[len("@@dmesg "):]))
        elif line == "@@end":
            cases[current] = (rc, lines)
    assert set(cases) == set(modules), f"guest reported {sorted(cases)}:\n{result.output[-2000:]}"
    return cases


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_check_agrees_with_insmod(name: str, modules: dict[str, Path],
                                  verdicts: dict[str, dict[str, object]],
                                  insmod: dict[str, tuple[int, list[str]]]) -> None:
    has_versions = "plain_crc.ko" in modules
    if name not in expected(has_versions):
        pytest.skip(f"kernel fact: {name}: the kernel has no CONFIG_MODVERSIONS")
    loads, symbols = expected(has_versions)[name]
    v = verdicts[name]
    rc, dmesg = insmod[name]
    # reality is what we built it to be ...
    assert (rc == 0) == loads, f"insmod {name} exited {rc}:\n" + "\n".join(dmesg)
    # ... and check says the same
    assert v["would_load"] == loads, f"check says {v['verdict']} for {name}: {v['problems']}"
    named = {m.group(1) for line in dmesg if (m := _UNKNOWN.search(line))}
    assert named == symbols, dmesg
    problems = v["problems"]
    assert isinstance(problems, list)
    fatal = [p for p in problems if p["fatal"]]
    assert {p["symbol"] for p in fatal if p["symbol"]} == symbols
    # every line check says the kernel logs for a failure is in this boot's log
    for p in fatal:
        for line in p["kernel"]:
            assert line in dmesg, f"{name}: check predicted {line!r}; the kernel logged:\n" + \
                "\n".join(dmesg)
    if not loads:
        assert fatal and any(p["kernel"] for p in fatal), problems
