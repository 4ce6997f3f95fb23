"""klpsym run INSIDE the booted kernel, with the running kernel's defaults.

Every other end-to-end test runs klpsym on the host against a kallsyms
captured from an earlier boot.  Here the guest gets a Python of its own
(klpsym.lab.guestpy: this venv's interpreter, its libraries, a pruned
standard library, numpy and klpsym, about 85 MB) and /lib/modules/$(uname
-r)/build holding what linux-headers gives klpsym (Module.symvers, .config,
the release), and does what a user does on the target machine:

* ``klpsym convert klpsym_klp.ko -o ...`` with no --kernel-dir or
  --kallsyms (discover(): uname -r, /lib/modules/R/build, /proc/kallsyms),
  after the unconverted module was refused; then insmod of the output;
* ``klpsym check`` of the converted module (and of the unconverted one);
* ``klpsym insmod klpsym_kallsyms.ko``: this boot's /proc/kallsyms, the
  real (busybox) insmod.

On a KASLR boot of each suite, where the kernel must have moved (so
addresses from anywhere but this boot's /proc/kallsyms would be refused by
the kallsyms-method module), and a PVH boot of bookworm (link-time
addresses).  Every address a module prints is compared with
/proc/kallsyms read in the same boot.  numpy needs x86-64-v2, so the guest
CPU is ``-cpu max`` (QEMU's default qemu64 would die on an illegal
instruction).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import (
    GUEST_HELPERS,
    MAP_COUNT,
    GuestRun,
    boot_guest,
    build_method,
    check_loaded_method,
)

from klpsym.lab.guestpy import GUEST_SETUP, GuestPython, guest_python
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms

SUITES = ["bookworm", "trixie", "sid"]
NAMES = ["bpf_get_current_pid_tgid", "sysctl_max_map_count", "c_start", "_stext"]
# What linux-headers-R gives klpsym in /lib/modules/R/build (if the kernel has it).
HEADER_FILES = [".config", "Module.symvers", "include/generated/utsrelease.h",
                "include/generated/uapi/linux/version.h", "include/config/kernel.release"]
MEMORY_MB = 1024  # the initrd (~90 MB) twice, in the archive and unpacked, and Python
CONVERTED = "/tmp/klpsym_klp.ko"


def guest_script() -> str:
    names = "|".join(re.escape(n) for n in NAMES)
    return GUEST_SETUP + GUEST_HELPERS + f"""
# ttyS1 is a terminal, where klpsym check draws rich tables: read plain text
run() {{ "$@" >/tmp/out 2>&1; kv rc $?; cat /tmp/out; }}
release=$(uname -r)
mkdir -p /lib/modules/$release
ln -s /lab/kbuild /lib/modules/$release/build

begin unconverted
load /lab/klpsym_klp.ko
kv loaded $(grep -c '^klpsym_klp ' /proc/modules)
end unconverted

begin check_unconverted
run klpsym check /lab/klpsym_klp.ko
end check_unconverted

begin convert
run klpsym convert /lab/klpsym_klp.ko -o {CONVERTED} --sympos c_start=2 --no-ibt-thunks
end convert

begin check
run klpsym check {CONVERTED}
end check

begin klp
echo {MAP_COUNT} > /proc/sys/vm/max_map_count
load {CONVERTED}
kv map_count_after $(cat /proc/sys/vm/max_map_count)
end klp

begin kallsyms
echo {MAP_COUNT} > /proc/sys/vm/max_map_count
run klpsym insmod /lab/klpsym_kallsyms.ko
kv map_count_after $(cat /proc/sys/vm/max_map_count)
kv loaded $(grep -c '^klpsym_kallsyms ' /proc/modules)
end kallsyms
grep -E ' ({names})$' /proc/kallsyms | sed 's/^/@@kallsyms /'
"""


@dataclass
class InGuest:
    kernel: Kernel
    python: GuestPython
    captured_stext: list[int]  # _stext in the captured (PVH) kallsyms
    boots: dict[str, GuestRun]  # "pvh" (bookworm only), "kaslr"


# Every suite gets the KASLR boot; the PVH one (link-time addresses, as the
# captured kallsyms) only bookworm, which keeps the file near 80 s in CI.
PVH_SUITES = {"bookworm"}


def do_boot(kernel: Kernel, files: dict[str, Path], *, kaslr: bool) -> GuestRun:
    return boot_guest(kernel, files, guest_script(), kaslr=kaslr, memory_mb=MEMORY_MB,
                      qemu_args=["-cpu", "max"])


@pytest.fixture(scope="module", params=SUITES)
def guest(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> InGuest:
    """Build klpsym_klp.ko and klpsym_kallsyms.ko (neither converted), boot
    with the guest Python and the kernel's header files (KASLR, and PVH)."""
    kernel: Kernel = request.getfixturevalue(request.param)
    captured = capture_kallsyms(kernel)
    stext = [int(ln.split()[0], 16) for ln in captured.read_text().splitlines()
             if ln.endswith(" _stext")]
    root = tmp_path_factory.mktemp(f"guestpy-{request.param}")
    files: dict[str, Path] = {}
    for method in ("klp", "kallsyms"):
        for ko in build_method(kernel, method, root):
            if ko.name.startswith("klpsym_"):
                files[ko.name] = ko
    assert sorted(files) == ["klpsym_kallsyms.ko", "klpsym_klp.ko"], files
    for rel in HEADER_FILES:
        if (kernel.kernel_dir / rel).is_file():
            files[f"kbuild/{rel}"] = kernel.kernel_dir / rel
    python = guest_python()
    files.update(python.files())
    boots = {"kaslr": do_boot(kernel, files, kaslr=True)}
    if kernel.suite in PVH_SUITES:
        boots["pvh"] = do_boot(kernel, files, kaslr=False)
    return InGuest(kernel, python, stext, boots)


def test_kaslr_boot_moved_the_kernel(guest: InGuest) -> None:
    """The KASLR boot runs elsewhere than the captured kallsyms say (and the
    PVH boot where they say): only that boot's kallsyms gives right answers."""
    kaslr = guest.boots["kaslr"]
    kaslr.case("kallsyms")
    if "pvh" in guest.boots:
        pvh = guest.boots["pvh"]
        assert pvh.case("kallsyms") and pvh.kallsyms["_stext"] == guest.captured_stext
    assert len(kaslr.kallsyms["_stext"]) == 1
    if kaslr.kallsyms["_stext"] == guest.captured_stext:
        pytest.skip("boot fact: KASLR chose the link-time address this time (about 1 boot in 500)")


def test_unconverted_module_is_refused(guest: InGuest) -> None:
    """Without klpsym, the klp-method module cannot load: its symbols are unexported."""
    for b in guest.boots.values():
        result = b.case("unconverted")
        assert result.kv["insmod_rc"] != "0" and result.kv["loaded"] == "0", result.log()
        assert any("Unknown symbol" in ln for ln in result.dmesg), result.log()
        check = b.case("check_unconverted")
        assert check.kv["rc"] == "1", check.log()
        assert any(ln.endswith("(klpsym_klp): fails") for ln in check.other), check.log()


def test_convert_with_the_running_kernels_defaults(guest: InGuest) -> None:
    """``klpsym convert`` without --kernel-dir or --kallsyms finds the running
    kernel's headers and /proc/kallsyms, and the output loads and works."""
    release = guest.kernel.release
    for b in guest.boots.values():
        conv = b.case("convert")
        assert conv.kv["rc"] == "0", conv.log()
        assert (f"target {release}, headers /lib/modules/{release}/build, exports from "
                f"/lib/modules/{release}/build/Module.symvers, symbols from /proc/kallsyms"
                in conv.other), conv.log()
        assert f"/lab/klpsym_klp.ko -> {CONVERTED}: converted 3 symbols (bpf_get_current_" \
            "pid_tgid, c_start,2, sysctl_max_map_count), moved 7 relocations into 1 " \
            ".klp.rela.vmlinux section" in conv.other, conv.log()
        check_loaded_method(b.case("klp"), b.kallsyms, "klp")


def test_check_says_the_converted_module_loads(guest: InGuest) -> None:
    """``klpsym check`` with the defaults: the running kernel's headers and kallsyms."""
    release = guest.kernel.release
    for b in guest.boots.values():
        check = b.case("check")
        assert check.kv["rc"] == "0", check.log()
        assert check.other[0] == (
            f"target {release}, headers /lib/modules/{release}/build, exports from "
            f"/lib/modules/{release}/build/Module.symvers, symbols from /proc/kallsyms"), \
            check.log()
        assert f"{CONVERTED} (klpsym_klp): loads" in check.other, check.log()
        rows = [ln.split() for ln in check.other]
        assert ["c_start", "livepatch", "vmlinux", "POS=2", "yes"] in rows, check.log()


def test_klpsym_insmod_passes_this_boots_addresses(guest: InGuest) -> None:
    """``klpsym insmod`` runs busybox's insmod with NAME=0xADDR from this
    boot's /proc/kallsyms; the module checks each, then uses them."""
    for b in guest.boots.values():
        result = b.case("kallsyms")
        assert result.kv["loaded"] == "1", result.log()
        result.kv["insmod_rc"] = result.kv["rc"]
        check_loaded_method(result, b.kallsyms, "kallsyms")
        (cmd,) = [ln for ln in result.other if ln.startswith("klpsym: insmod ")]
        args = dict(a.split("=", 1) for a in cmd.split()[3:])
        for name, pos in (("bpf_get_current_pid_tgid", 0), ("sysctl_max_map_count", 0),
                          ("c_start", 1)):
            assert int(args[name], 16) == b.kallsyms[name][pos], cmd
