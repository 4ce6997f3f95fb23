"""The three methods of klpsym.h, proven in QEMU on each suite's kernel.

tests/modules/methods is built once per method (klp, kallsyms, kprobe) from
the SAME sources, with the flags ``klpsym cflags --method M`` prints (its
header copied next to the sources, so the trixie/sid builds in their chroot
find it too).  Two modules per method:

* ``klpsym_<m>.ko`` calls the unexported bpf_get_current_pid_tgid(), reads
  and writes the unexported sysctl_max_map_count (the guest sets it to a
  distinctive value first and reads it back after), and prints the address
  of the 2nd of the three static ``c_start`` functions (not kprobe, which
  cannot choose a POS);
* ``sealed_<m>.ko`` calls kallsyms_lookup_name(), which IBT kernels seal.
  Whether it is sealed is read here from the vmlinux's .ibt_endbr_seal list
  (objtool's list of the ENDBRs the kernel poisons at boot), not assumed:
  sealed, the kallsyms and kprobe variants must refuse to load and klp must
  work; not sealed (6.1 has no IBT), all three must work.

How method 1 (kallsyms parameters) is proven without Python in the guest:
the guest's /proc/kallsyms is captured from a PVH boot, which has no KASLR,
so every PVH boot of that kernel has the same addresses.  ``klpsym insmod
--print-args --kallsyms CAPTURE`` -- klpsym's own code, the same that
``klpsym insmod`` runs before insmod -- computes the parameters on the host;
a second PVH boot loads the module with them, and the module checks each
address against its kernel's kallsyms before using it.  The same parameters
given to a KASLR boot must be refused as stale, which shows the check bites.
Every address the modules print is compared with /proc/kallsyms of the boot
that printed it.

IBT itself is not emulated by QEMU (TCG): no #CP would fire.  The sealing is
real (the kernel poisons the ENDBRs whatever the CPU), so the refusals are.
"""

from __future__ import annotations

import re
import shlex
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from e2e_support import (
    BOOT_TIMEOUT,
    GUEST_HELPERS,
    MAP_COUNT,
    CaseResult,
    build_method,
    check_loaded_method,
    hex_addr,
    klpsym,
    parse_output,
)

from klpsym.elf import ElfFile
from klpsym.kernel.config import KernelConfig
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import BootError, boot, capture_kallsyms

SUITES = ["bookworm", "trixie", "sid"]
METHODS = ["klp", "kallsyms", "kprobe"]
# gen_endbr_poison() (arch/x86/include/asm/ibt.h): 6.1 .. 6.12, then 7.x
ENDBR_POISONS = {"001f0f66", "d6401f0f"}
NAMES = ["bpf_get_current_pid_tgid", "sysctl_max_map_count", "c_start",
         "kallsyms_lookup_name", "init_task", "_stext"]


@dataclass
class MethodsRun:
    kernel: Kernel
    sealed: bool  # kallsyms_lookup_name is on the kernel's seal list
    kos: dict[str, Path] = field(default_factory=dict)  # "klpsym_kallsyms" -> .ko
    args: dict[str, list[str]] = field(default_factory=dict)  # kallsyms-method parameters
    pvh: tuple[dict[str, CaseResult], dict[str, list[int]]] | None = None
    kaslr: tuple[dict[str, CaseResult], dict[str, list[int]]] | None = None
    kaslr_moved: bool = True


def sealed_addresses(vmlinux: Path) -> set[int]:
    """The function addresses whose ENDBR the kernel poisons at boot: the
    .ibt_endbr_seal section holds s32 offsets relative to each entry
    (apply_seal_endbr(): addr = (void *)s + *s).  Empty without IBT."""
    elf = ElfFile.from_path(vmlinux, relocatable_only=False)
    sec = elf.section_by_name(".ibt_endbr_seal")
    if sec is None:
        return set()
    data = bytes(sec.content())
    return {sec.addr + i + struct.unpack_from("<i", data, i)[0] for i in range(0, len(data), 4)}


def kallsyms_of(path: Path, name: str) -> list[int]:
    return [int(ln.split()[0], 16) for ln in path.read_text().splitlines()
            if ln.split()[2:] == [name]]


def guest_script(run: MethodsRun, *, kaslr: bool) -> str:
    parts = [GUEST_HELPERS]

    def case(name: str, ko: str, args: list[str] | None = None) -> None:
        parts.append(
            f"begin {name}\necho {MAP_COUNT} > /proc/sys/vm/max_map_count\n"
            f"insmod /lab/{ko}.ko {shlex.join(args or [])}; kv insmod_rc $?\n"
            "kv map_count_after $(cat /proc/sys/vm/max_map_count)\n"
            f"kv loaded $(grep -c '^{ko} ' /proc/modules)\nend {name}\n")

    if kaslr:
        case("kallsyms_stale", "klpsym_kallsyms", run.args["klpsym_kallsyms"])
        case("kprobe", "klpsym_kprobe")
        case("klp", "klpsym_klp")
    else:
        case("kallsyms_missing", "klpsym_kallsyms")
        for m in METHODS:
            case(m, f"klpsym_{m}", run.args.get(f"klpsym_{m}"))
            case(f"sealed_{m}", f"sealed_{m}", run.args.get(f"sealed_{m}"))
    names = "|".join(re.escape(n) for n in NAMES)
    parts.append(f"grep -E ' ({names})$' /proc/kallsyms | sed 's/^/@@kallsyms /'\n")
    return "".join(parts)


def do_boot(run: MethodsRun, *, kaslr: bool) -> tuple[dict[str, CaseResult],
                                                      dict[str, list[int]]]:
    files = {ko.name: ko for ko in run.kos.values()}
    try:
        result = boot(run.kernel, files, guest_script(run, kaslr=kaslr),
                      timeout=BOOT_TIMEOUT, kaslr=kaslr)
    except BootError as exc:
        pytest.fail(f"the guest did not finish: {exc}\n{exc.console_tail()}")
    return parse_output(result.output)


@pytest.fixture(scope="module", params=SUITES)
def methods(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> MethodsRun:
    """Build, convert/compute, and boot twice (PVH, then KASLR) per suite."""
    kernel: Kernel = request.getfixturevalue(request.param)
    captured = capture_kallsyms(kernel)
    ibt = KernelConfig.from_path(kernel.config).enabled("X86_KERNEL_IBT")
    seal = sealed_addresses(kernel.vmlinux) if ibt else set()
    (klns,) = kallsyms_of(captured, "kallsyms_lookup_name")
    run = MethodsRun(kernel, klns in seal)
    root = tmp_path_factory.mktemp(f"methods-{request.param}")
    for method in METHODS:
        for ko in build_method(kernel, method, root):
            run.kos[ko.name.removesuffix(".ko")] = ko
    assert sorted(run.kos) == sorted(f"{p}_{m}" for p in ("klpsym", "sealed") for m in METHODS)
    for name in ("klpsym_klp", "sealed_klp"):
        extra = ["--sympos", "c_start=2"] if name == "klpsym_klp" else []
        # --no-ibt-thunks: the module prints the kernel's own addresses, which
        # the checks compare (QEMU does not enforce IBT; see test_ibt_vm.py)
        extra.append("--no-ibt-thunks")
        proc = klpsym("convert", run.kos[name], "--in-place", "--kernel-dir", kernel.kernel_dir,
                      "--kallsyms", captured, *extra)
        assert proc.returncode == 0, proc.stderr
    for name in ("klpsym_kallsyms", "sealed_kallsyms"):
        proc = klpsym("insmod", run.kos[name], "--print-args", "--kallsyms", captured)
        assert proc.returncode == 0, proc.stderr
        run.args[name] = shlex.split(proc.stdout)
    run.pvh = do_boot(run, kaslr=False)
    run.kaslr = do_boot(run, kaslr=True)
    run.kaslr_moved = run.kaslr[1]["_stext"] != kallsyms_of(captured, "_stext")
    return run


def case(boot: tuple[dict[str, CaseResult], dict[str, list[int]]] | None,
         name: str) -> CaseResult:
    assert boot is not None
    assert name in boot[0], f"guest sent nothing for {name}: {sorted(boot[0])}"
    return boot[0][name]


@pytest.mark.parametrize("method", METHODS)
def test_method_calls_function_and_reads_variable(methods: MethodsRun, method: str) -> None:
    """Each method: the right function result, the right variable, written back."""
    assert methods.pvh is not None
    check_loaded_method(case(methods.pvh, method), methods.pvh[1], method)


def test_kprobe_lookup_avoids_sealed_kallsyms_lookup_name(methods: MethodsRun) -> None:
    """kprobe method: kallsyms_lookup_name is called only if not sealed;
    otherwise bpf_kallsyms_lookup_name (address-taken, keeps its ENDBR)."""
    result = case(methods.pvh, "kprobe")
    via = ("bpf_kallsyms_lookup_name (kprobe)" if methods.sealed
           else "kallsyms_lookup_name (kprobe)")
    found = [ln for ln in result.dmesg if "klpsym: bpf_get_current_pid_tgid found by" in ln]
    assert found and found[0].endswith(via), result.log()


def test_kallsyms_method_refuses_missing_parameters(methods: MethodsRun) -> None:
    result = case(methods.pvh, "kallsyms_missing")
    assert result.kv["insmod_rc"] != "0" and result.kv["loaded"] == "0", result.log()
    for name in ("bpf_get_current_pid_tgid", "sysctl_max_map_count", "c_start"):
        assert any(f"klpsym: {name}: no address given" in ln for ln in result.dmesg), \
            result.log()
    assert result.kv["map_count_after"] == str(MAP_COUNT)


def test_kallsyms_method_refuses_stale_addresses_after_kaslr(methods: MethodsRun) -> None:
    """The PVH boot's addresses, given to a KASLR boot: refused, not used."""
    if not methods.kaslr_moved:
        pytest.skip("boot fact: KASLR chose the link-time address this time (about 1 boot in 500)")
    result = case(methods.kaslr, "kallsyms_stale")
    assert result.kv["insmod_rc"] != "0" and result.kv["loaded"] == "0", result.log()
    assert any("stale address from another boot?" in ln for ln in result.dmesg), result.log()
    assert result.kv["map_count_after"] == str(MAP_COUNT)


@pytest.mark.parametrize("method", ["kprobe", "klp"])
def test_methods_follow_kaslr(methods: MethodsRun, method: str) -> None:
    """kprobe (looked up in the guest) and klp (resolved by the loader) need
    no addresses from the host: they work in a KASLR boot too."""
    assert methods.kaslr is not None
    check_loaded_method(case(methods.kaslr, method), methods.kaslr[1], method)


@pytest.mark.parametrize("method", METHODS)
def test_sealed_function(methods: MethodsRun, method: str) -> None:
    """kallsyms_lookup_name: callable through a pointer only where it is not
    sealed; klp calls it directly everywhere."""
    assert methods.pvh is not None
    result = case(methods.pvh, f"sealed_{method}")
    if methods.sealed and method != "klp":
        assert result.kv["insmod_rc"] != "0" and result.kv["loaded"] == "0", result.log()
        refusal = [ln for ln in result.dmesg if "cannot be called through a pointer" in ln]
        assert refusal, result.log()
        insn = re.search(r"starts with ([0-9a-f]{8}),", refusal[0])
        assert insn and insn.group(1) in ENDBR_POISONS, refusal[0]
        return
    assert result.kv["insmod_rc"] == "0", result.log()
    rec = result.record(f"sealed_{method}", "got")
    assert rec["match"] == "1", result.log()
    assert hex_addr(rec["got"]) == methods.pvh[1]["init_task"][0]
