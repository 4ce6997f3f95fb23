"""Helpers for the end-to-end tests: the cases, the guest script, its parser.

The session builds every test module (tests/modules/*) and the demo module
(examples/hello_klp) with the kernel's own kbuild, converts each with the
``klpsym convert`` command line exactly as a user would, then boots the
kernel ONCE (each TCG boot costs seconds) and loads every converted module,
plus the unconverted call_func.ko as the negative case.

Result channel format (one record a line, written by GUEST_SCRIPT's helpers):

    @@begin CASE                 a case starts (the kernel log was just cleared)
    @@kv KEY=VALUE               something the script measured (exit codes, sysctls)
    @@dmesg LINE                 the kernel log written while the case ran
    @@end CASE
    @@kallsyms LINE              /proc/kallsyms lines of the symbols the tests check

Modules print ``klptest TAG: key=value ...`` lines; ``CaseResult.records``
parses them.  Tests assert on values read back from the guest: addresses
against /proc/kallsyms of the same boot, sysctls as user space saw them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from klpsym.lab.build import build_modules
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import BootError, BootResult, boot

REPO = Path(__file__).resolve().parents[2]
MODULE_SOURCES = {
    "call_func": REPO / "tests/modules/call_func",
    "data_rw": REPO / "tests/modules/data_rw",
    "fn_pointers": REPO / "tests/modules/fn_pointers",
    "init_exit": REPO / "tests/modules/init_exit",
    "two_files": REPO / "tests/modules/two_files",
    "sympos": REPO / "tests/modules/sympos",
    "module_ns": REPO / "tests/modules/module_ns",
    "hello_klp": REPO / "examples/hello_klp",
    "ibt_ptrs": REPO / "tests/modules/ibt_ptrs",
}

# The suites every end-to-end case runs on (one boot per suite per test file).
SUITES = ("bookworm", "trixie", "sid")

# sympos.c references c_start: three static functions of that name in
# bookworm's, trixie's and sid's vmlinux (the tests count them in each
# kernel's kallsyms and need at least 2).  The 2nd is not the first match, so
# a converter that ignored POS would be caught.
SYMPOS_NAME = "c_start"
SYMPOS_POS = 2
EXTRA_CONVERT_ARGS: dict[str, list[str]] = {
    "sympos": ["--sympos", f"{SYMPOS_NAME}={SYMPOS_POS}"],
}

# The symbols each module references that some kernel does not export to it:
# not exported at all (on every kernel here), or exported for named modules
# only (7.x: kptr_restrict for printf_kunit, cr4_read_shadow for kvm), or, for
# module_ns, exported to everyone up to 6.x.  What a kernel converts is read
# from its own Module.symvers (converted_names()).
REFERENCES: dict[str, set[str]] = {
    "call_func": {"kallsyms_lookup_name"},
    "data_rw": {"dmesg_restrict"},
    "fn_pointers": {"bpf_get_current_pid_tgid", "bpf_get_current_comm", "bpf_ktime_get_ns"},
    "init_exit": {"kallsyms_lookup_name", "lookup_symbol_name"},
    "two_files": {"kallsyms_lookup_name", "core_kernel_text", "kptr_restrict"},
    "sympos": {SYMPOS_NAME},
    "module_ns": {"cr4_read_shadow"},
    "hello_klp": {"kallsyms_lookup_name"},
    "ibt_ptrs": {"kallsyms_lookup_name", "ipi_mb"},
}

# Symbols whose same-boot /proc/kallsyms lines the guest sends back.
KALLSYMS_NAMES = sorted(
    set().union(*REFERENCES.values())
    | {"init_task", "_printk", "jiffies", "_stext"}
)


def restricted(kdir: Path, name: str, module: str) -> bool | None:
    """From the kernel's Module.symvers, read here without klpsym: True when
    ``name`` is exported for named modules only (namespace ``module:A,B``)
    and ``module`` is not one of them, False when any module may use it, None
    when it is not exported at all."""
    for line in (kdir / "Module.symvers").read_text().splitlines():
        f = line.split("\t")
        if len(f) >= 4 and f[1] == name:
            ns = f[4] if len(f) > 4 else ""
            if not ns.startswith("module:"):
                return False
            return module not in ns.removeprefix("module:").replace("-", "_").split(",")
    return None


def converted_names(kdir: Path, module: str) -> set[str]:
    """The symbols of ``module`` that must be converted for this kernel: the
    references it does not export to the module."""
    return {n for n in REFERENCES[module] if restricted(kdir, n, module) is not False}


def restricted_names(kdir: Path, module: str) -> set[str]:
    """The references this kernel exports for other named modules only."""
    return {n for n in REFERENCES[module] if restricted(kdir, n, module)}

# klpsym's IBT thunks (klpsym.klp.ibt): on a CONFIG_X86_KERNEL_IBT=y kernel
# a module's &NAME of an unexported function is its thunk __klpsym_ibt_NAME.
IBT_THUNK_PREFIX = "__klpsym_ibt_"


def has_ibt(kernel: Kernel) -> bool:
    """The kernel is built with CONFIG_X86_KERNEL_IBT=y (its .config)."""
    return "CONFIG_X86_KERNEL_IBT=y" in kernel.config.read_text().splitlines()


def thunk_kv(name: str, module: str) -> str:
    """A guest script line: ``kv ibt_thunk_NAME ADDRESS``, the address of the
    loaded ``module``'s IBT thunk for NAME (empty when there is none)."""
    return (f"kv ibt_thunk_{name} \"$(grep ' {IBT_THUNK_PREFIX}{name}[[:space:]]\\[{module}\\]' "
            "/proc/kallsyms | cut -d' ' -f1)\"\n")


def function_pointer(kernel: Kernel, case: CaseResult, name: str, kernel_address: int) -> int:
    """What a module converted by default holds as &NAME of an unexported
    function: on an IBT kernel its own thunk (``thunk_kv`` recorded it),
    elsewhere the kernel's function, and no thunk."""
    thunk = case.kv.get(f"ibt_thunk_{name}")
    assert thunk is not None, f"the guest did not record the thunk of {name}: {case.log()}"
    if not has_ibt(kernel):
        assert thunk == "", (name, thunk)
        return kernel_address
    assert thunk, f"{kernel.release} has IBT but the module has no thunk for {name}"
    return int(thunk, 16)


CONVERT_TIMEOUT = 120.0
BOOT_TIMEOUT = 300.0


def klpsym(*args: str | Path, timeout: float = CONVERT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run the klpsym command line as a user would (this interpreter, the repo's package)."""
    return subprocess.run(
        [sys.executable, "-m", "klpsym.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def convert(name: str, ko: Path, dest: Path, *args: str | Path) -> Converted:
    """``klpsym convert KO -o DEST ARGS...``, with its outcome kept (failures too)."""
    start = time.monotonic()
    proc = klpsym("convert", ko, "-o", dest, *args)
    return Converted(
        name, ko, dest, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start
    )


@dataclass
class Converted:
    name: str
    original: Path
    output: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.output.is_file()

    def explain(self) -> str:
        return (
            f"klpsym convert {self.original.name} exited {self.returncode}:"
            f" {self.stderr.strip() or self.stdout.strip()[-500:]}"
        )


_RECORD = re.compile(r"klptest (\S+): (.*)$")


@dataclass
class CaseResult:
    """What the guest reported for one case."""

    name: str
    kv: dict[str, str] = field(default_factory=dict)
    dmesg: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # e.g. insmod's own error message

    def records(self, tag: str) -> list[dict[str, str]]:
        """The module's ``klptest TAG: k=v k=v`` lines from the kernel log, parsed."""
        out = []
        for line in self.dmesg:
            m = _RECORD.search(line)
            if m and m.group(1) == tag:
                out.append(dict(kv.split("=", 1) for kv in m.group(2).split() if "=" in kv))
        return out

    def record(self, tag: str, *keys: str, **match: str) -> dict[str, str]:
        """The one record of ``tag`` that has all ``keys`` and whose fields include ``match``."""
        found = [
            r
            for r in self.records(tag)
            if all(k in r for k in keys) and all(r.get(k) == v for k, v in match.items())
        ]
        assert len(found) == 1, (
            f"expected one 'klptest {tag}' line with {keys} {match}:\n{self.log()}"
        )
        return found[0]

    def log(self) -> str:
        return "\n".join(
            [f"kv: {self.kv}", *self.other, *self.dmesg]
            if self.kv or self.dmesg
            else ["(no output)"]
        )


def assert_steps_ok(steps: dict[str, subprocess.CompletedProcess[str]]) -> None:
    """Every host step before the boot (builds, conversions) succeeded."""
    for what, proc in steps.items():
        assert proc.returncode == 0, f"{what}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"


def finished_case(cases: dict[str, CaseResult], error: BootError | None, name: str,
                  detail: str = "") -> CaseResult:
    """The guest's result for case ``name``; fails the test if the boot did
    not finish or the guest sent nothing for it (``detail`` says more)."""
    if error is not None:
        pytest.fail(f"the guest did not finish: {error}\n{error.console_tail()}")
    assert name in cases, f"guest sent nothing for {name!r}{detail}"
    return cases[name]


def sole_address(kallsyms: dict[str, list[int]], name: str) -> int:
    """``name``'s address in the boot's kallsyms; it must have exactly one entry."""
    addrs = kallsyms.get(name, [])
    assert len(addrs) == 1, f"{name}: expected one vmlinux kallsyms entry, got {addrs}"
    return addrs[0]


@dataclass(repr=False)
class GuestRun:
    boot: BootResult | None
    error: BootError | None
    cases: dict[str, CaseResult]
    kallsyms: dict[str, list[int]]  # name -> vmlinux addresses, kallsyms order
    script: str

    def case(self, name: str) -> CaseResult:
        return finished_case(self.cases, self.error, name, f":\n{self.raw()}")

    def address(self, name: str) -> int:
        return sole_address(self.kallsyms, name)

    def check_addr(self, printed: str, name: str) -> None:
        """The module printed (%px) the address /proc/kallsyms gives ``name`` in this boot."""
        got, want = hex_addr(printed), self.address(name)
        assert got == want, f"{name}: module printed {got:#x}, /proc/kallsyms says {want:#x}"

    def assert_clean(self) -> None:
        """The boot finished, its script exited 0, and the kernel said nothing
        of a bug, an oops or a warning."""
        if self.error is not None:
            pytest.fail(f"the guest did not finish: {self.error}\n{self.error.console_tail()}")
        assert self.boot is not None
        assert self.boot.exit_status == 0, self.raw()
        for bad in ("BUG:", "Oops", "general protection", "Call Trace", "WARNING:"):
            assert bad not in self.boot.console, self.boot.console[-3000:]

    def __repr__(self) -> str:
        return f"<GuestRun cases={sorted(self.cases)} error={self.error}>"

    def raw(self) -> str:
        return self.boot.output[-3000:] if self.boot else "(no boot)"


def boot_guest(kernel: Kernel, files: dict[str, Path], script: str, *, kaslr: bool = True,
               **options: Any) -> GuestRun:
    """Boot ``kernel`` with ``script`` (and ``boot()``'s other ``options``)
    and parse what the guest sent; a boot that did not finish is kept as the
    run's error, for each test to report."""
    try:
        result = boot(kernel, files, script, timeout=BOOT_TIMEOUT, kaslr=kaslr, **options)
    except BootError as exc:
        return GuestRun(None, exc, {}, {}, script)
    cases, kallsyms = parse_output(result.output)
    return GuestRun(result, None, cases, kallsyms, script)


def parse_output(text: str) -> tuple[dict[str, CaseResult], dict[str, list[int]]]:
    cases: dict[str, CaseResult] = {}
    kallsyms: dict[str, list[int]] = {}
    current: CaseResult | None = None
    for line in text.splitlines():
        if line.startswith("@@begin "):
            current = cases.setdefault(line.split(None, 1)[1], CaseResult(line.split(None, 1)[1]))
        elif line.startswith("@@end "):
            current = None
        elif line.startswith("@@kallsyms "):
            fields = line.split()
            if len(fields) == 4:  # "@@kallsyms ADDR TYPE NAME": vmlinux (modules add [mod])
                kallsyms.setdefault(fields[3], []).append(int(fields[1], 16))
        elif current is None:
            continue
        elif line.startswith("@@kv "):
            key, _, value = line[5:].partition("=")
            current.kv[key] = value
        elif line.startswith("@@dmesg "):
            current.dmesg.append(line[8:])
        else:
            current.other.append(line)
    return cases, kallsyms


def hex_addr(value: str) -> int:
    """A %px value (16 hex digits, no 0x) as an int."""
    return int(value, 16)


# The guest script.  Each case clears the kernel log first, so the log lines
# that follow belong to that case.
GUEST_HELPERS = r"""
set -u
begin() { echo "@@begin $1"; dmesg -c >/dev/null; }
end() { dmesg | sed 's/^/@@dmesg /'; echo "@@end $1"; }
kv() { echo "@@kv $1=$2"; }
load() { insmod "$1"; kv insmod_rc $?; }
"""


def guest_script(present: set[str], sympos_positions: list[int] = [],  # noqa: B006
                 unconverted: list[str] = []) -> str:  # noqa: B006
    """The script for the one boot; ``present`` names the converted modules that exist.

    ``sympos_positions``: POS values for which /lab/klp/sympos.posN.ko exists
    (the same module converted with ``--sympos c_start=N``); each is loaded and
    unloaded in turn as case ``sympos_posN``.  ``unconverted``: modules whose
    unconverted /lab/orig/NAME.ko must be refused (case ``unconverted_NAME``),
    loaded before any converted module.
    """
    parts = [GUEST_HELPERS]

    def case(name: str, body: str) -> None:
        if name not in present:
            body = "kv skipped convert_failed"
        parts.append(f"begin {name}\n{body}\nend {name}\n")

    # Negative first: the unconverted module must be refused (and leaves
    # nothing loaded, so the converted call_func.ko can load next).
    for name in unconverted:
        parts.append(
            f"begin unconverted_{name}\nload /lab/orig/{name}.ko\n"
            f"kv loaded $(grep -c '^{name} ' /proc/modules)\nend unconverted_{name}\n"
        )
    case("call_func", "load /lab/klp/call_func.ko")
    case(
        "data_rw",
        "kv sysctl_before $(cat /proc/sys/kernel/dmesg_restrict)\n"
        "load /lab/klp/data_rw.ko\n"
        "kv sysctl_after $(cat /proc/sys/kernel/dmesg_restrict)",
    )
    case("fn_pointers", "load /lab/klp/fn_pointers.ko")
    case(
        "init_exit",
        "load /lab/klp/init_exit.ko\nrmmod init_exit; kv rmmod_rc $?\n"
        "kv loaded_after_rmmod $(grep -c '^init_exit ' /proc/modules)",
    )
    case(
        "two_files",
        "kv sysctl_kptr_restrict $(cat /proc/sys/kernel/kptr_restrict)\nload /lab/klp/two_files.ko",
    )
    case("sympos", "load /lab/klp/sympos.ko\nrmmod sympos; kv rmmod_rc $?")
    for pos in sympos_positions:
        parts.append(
            f"begin sympos_pos{pos}\nload /lab/klp/sympos.pos{pos}.ko\n"
            f"rmmod sympos; kv rmmod_rc $?\nend sympos_pos{pos}\n"
        )
    case("module_ns", "load /lab/klp/module_ns.ko")
    case("hello_klp", "load /lab/klp/hello_klp.ko")
    names = "|".join(re.escape(n) for n in KALLSYMS_NAMES)
    parts.append(f"grep -E ' ({names})$' /proc/kallsyms | sed 's/^/@@kallsyms /'\n")
    parts.append("begin final\nkv tainted $(cat /proc/sys/kernel/tainted)\nend final\n")
    return "".join(parts)


# ------------------------------------------------------------ klpsym.h's methods
# (tests/e2e/test_methods_qemu.py, test_guest_python_qemu.py)

METHOD_SOURCES = REPO / "tests/modules/methods"
MAP_COUNT = 123457  # written to /proc/sys/vm/max_map_count before each load


def build_method(kernel: Kernel, method: str, root: Path) -> list[Path]:
    """The test modules built with ``klpsym cflags --method METHOD``'s flags."""
    proc = klpsym("cflags", "--method", method)
    assert proc.returncode == 0, proc.stderr
    flags = proc.stdout.split()
    assert flags[0].startswith("-I") and len(flags) == 2, flags
    header = Path(flags[0][2:]) / "klpsym.h"
    assert header.is_file(), f"klpsym cflags points at {header}, which is missing"
    moddir = root / method
    shutil.copytree(METHOD_SOURCES, moddir)
    (moddir / "include").mkdir()
    shutil.copy(header, moddir / "include")
    return build_modules(kernel, moddir, None, [
        f"KLPSYM_TEST_METHOD={method}",
        f"KLPSYM_CFLAGS=-I$(src)/include {flags[1]}",
    ])


def check_loaded_method(result: CaseResult, kallsyms: dict[str, list[int]],
                        method: str) -> None:
    """tests/modules/methods' klpsym_METHOD.ko loaded, called its function,
    wrote the variable (user space saw it) and printed the addresses this
    boot's kallsyms gives (POS 2 of c_start, except kprobe)."""
    tag = f"klpsym_{method}"
    assert result.kv.get("insmod_rc") == "0", result.log()
    fn = result.record(tag, "fn", "pid_tgid")
    assert fn["match"] == "1", result.log()
    assert hex_addr(fn["fn"]) == kallsyms["bpf_get_current_pid_tgid"][0]
    var = result.record(tag, "var")
    assert hex_addr(var["var"]) == kallsyms["sysctl_max_map_count"][0]
    assert var["old"] == str(MAP_COUNT), result.log()
    assert var["new"] == str(MAP_COUNT + 1)
    assert result.kv["map_count_after"] == str(MAP_COUNT + 1), "user space saw no write"
    if method != "kprobe":
        c_start = result.record(tag, "c_start2")
        assert len(kallsyms["c_start"]) >= 2
        assert hex_addr(c_start["c_start2"]) == kallsyms["c_start"][1], "not POS 2"
