"""IBT thunks, proven where it matters (issue 16).

``ibt_ptrs.ko`` (tests/modules/ibt_ptrs) takes the address of the unexported
``kallsyms_lookup_name`` -- sealed on IBT kernels -- in a .rodata table, a
.data slot, __initdata, code (mov $imm32 and a RIP-relative lea), uses it
from __exit, and hands ``ipi_mb`` to smp_call_function_single(); it calls
through each and prints what it called, its first bytes and the result.

* QEMU (no IBT emulation), every suite: converted by default, the module
  works; on an IBT target (trixie, sid) every pointer it holds is inside
  its own thunk section and starts with ENDBR64; on bookworm (no
  CONFIG_X86_KERNEL_IBT) klpsym adds no thunk and the pointers are the
  kernel's own.
* Bochs (Tiger Lake: IBT enforced), trixie and sid, ONE boot each with
  ``ibt=warn`` (a missing ENDBR warns instead of killing the boot): the
  thunked module and the e2e modules that take addresses (fn_pointers,
  call_func, sympos, hello_klp, ...) never print ``Missing ENDBR``; the
  kernel's kallsyms_lookup_name starts with the IBT poison (sealed); and the
  same module converted with ``--no-ibt-thunks`` prints ``Missing ENDBR:
  kallsyms_lookup_name`` for each of its indirect calls.
* Bochs, trixie and sid, a second boot: a livepatch (tests/modules/lpc_ibt)
  calls its target module's static ``homonym`` -- sealed when lpc_target
  loads -- through a pointer: through the thunk no ``Missing ENDBR``, with
  ``--no-ibt-thunks`` once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from e2e_support import (
    EXTRA_CONVERT_ARGS,
    GUEST_HELPERS,
    CaseResult,
    Converted,
    convert,
    has_ibt,
    hex_addr,
    parse_output,
)

from klpsym.lab.bochs import boot as bochs_boot
from klpsym.lab.build import build_modules
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import BootError, boot
from klpsym.methods.header import include_dir

REPO = Path(__file__).resolve().parents[2]

ENDBR64 = "f30f1efa"
FN = "kallsyms_lookup_name"
THUNK_SECTION = ".text.klpsym_ibt"
# every way ibt_ptrs.ko calls through a pointer (exit: on rmmod)
INDIRECT = ("rodata", "data", "initdata", "code", "lea", "exit")
BOCHS_TIMEOUT = 900.0
# e2e modules that take unexported functions' addresses (or call them):
# loaded in the Bochs boot too, none may fault there.
IBT_RELEVANT = ("call_func", "fn_pointers", "init_exit", "two_files", "sympos", "hello_klp")


@pytest.fixture(scope="session")
def ibt_variants(kernel: Kernel, built: dict[str, Path], kallsyms_file: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, Converted]:
    """ibt_ptrs.ko converted by default (thunks) and with --no-ibt-thunks."""
    root = tmp_path_factory.mktemp(f"ibt-{kernel.suite}")
    args = ("--kernel-dir", kernel.kernel_dir, "--kallsyms", kallsyms_file)
    return {
        "thunk": convert("ibt_thunk", built["ibt_ptrs"], root / "thunk.ko", *args),
        "nothunk": convert("ibt_nothunk", built["ibt_ptrs"], root / "nothunk.ko", *args,
                           "--no-ibt-thunks"),
    }


def ibt_case(name: str, ko: str) -> str:
    """Load, read the thunk section's address, unload: one case."""
    return (f"begin {name}\nload {ko}\n"
            f"kv thunks \"$(cat /sys/module/ibt_ptrs/sections/{THUNK_SECTION} 2>/dev/null)\"\n"
            "rmmod ibt_ptrs; kv rmmod_rc $?\n"
            f"end {name}\n")


def check_thunked(case: CaseResult, thunked: bool) -> None:
    """Every pointer the module called through gave the right result; with
    thunks, each is inside the module's thunk section and starts with ENDBR64."""
    assert case.kv.get("insmod_rc") == "0" and case.kv.get("rmmod_rc") == "0", case.log()
    direct = case.record("ibt_ptrs", how="direct")
    kernel_fn = hex_addr(direct["kernel_fn"])
    assert case.record("ibt_ptrs", result="OK")
    for how in (*INDIRECT, "callback"):
        rec = case.record("ibt_ptrs", how=how)
        assert rec["match"] == "1", rec
        fn = hex_addr(rec["fn"])
        if thunked:
            start = int(case.kv["thunks"], 16)
            assert start <= fn < start + 64, (how, rec, case.kv)
            assert rec["head"] == ENDBR64, rec
        elif how != "callback":
            assert fn == kernel_fn, rec


def test_ibt_thunks_in_qemu(kernel: Kernel, ibt_variants: dict[str, Converted]) -> None:
    """Every suite: the default conversion works; thunks exactly where the
    target has IBT."""
    conv = ibt_variants["thunk"]
    assert conv.ok, conv.explain()
    ibt = has_ibt(kernel)
    assert ("IBT thunk __klpsym_ibt_" + FN in conv.stdout) == ibt, conv.stdout
    if ibt:
        assert "__klpsym_ibt_ipi_mb" in conv.stdout, conv.stdout
    script = GUEST_HELPERS + ibt_case("thunk", "/lab/thunk.ko")
    try:
        result = boot(kernel, {"thunk.ko": conv.output}, script, kaslr=True, timeout=300)
    except BootError as exc:
        pytest.fail(f"the guest did not finish: {exc}\n{exc.console_tail()}")
    cases, _ = parse_output(result.output)
    case = cases["thunk"]
    check_thunked(case, thunked=ibt)
    if not ibt:
        assert case.kv["thunks"] == "", case.kv  # no thunk section at all


def test_ibt_enforced_in_bochs(kernel: Kernel, ibt_variants: dict[str, Converted],
                               built: dict[str, Path], kallsyms_file: Path,
                               tmp_path: Path) -> None:
    """trixie, sid: one Bochs boot (IBT enforced) with the thunked module,
    the e2e modules that take addresses, and the --no-ibt-thunks control."""
    if not has_ibt(kernel):
        pytest.skip(f"kernel fact: {kernel.release} has no CONFIG_X86_KERNEL_IBT")
    for conv in ibt_variants.values():
        assert conv.ok, conv.explain()
    nothunk = ibt_variants["nothunk"]
    assert f"WARNING: no IBT thunks (--no-ibt-thunks): the module takes the address of {FN}" \
        in nothunk.stdout, nothunk.stdout
    files = {"thunk.ko": ibt_variants["thunk"].output, "nothunk.ko": nothunk.output}
    # quiet: the boot's info lines are in dmesg, not on the console
    parts = [GUEST_HELPERS,
             "echo \"@@cet $(dmesg | grep -c 'CET detected: Indirect Branch Tracking enabled')\"\n",
             ibt_case("thunk", "/lab/thunk.ko")]
    # converted by default here (the e2e session converts them --no-ibt-thunks)
    converted = {n: convert(n, built[n], tmp_path / f"{n}.ko", "--kernel-dir", kernel.kernel_dir,
                            "--kallsyms", kallsyms_file, *EXTRA_CONVERT_ARGS.get(n, []))
                 for n in IBT_RELEVANT}
    relevant = [n for n in IBT_RELEVANT if converted[n].ok]
    assert relevant == list(IBT_RELEVANT), [converted[n].explain() for n in IBT_RELEVANT]
    assert any("IBT thunk" in converted[n].stdout for n in relevant)
    for name in relevant:
        files[f"{name}.ko"] = converted[name].output
        mod = built[name].stem.replace("-", "_")
        parts.append(f"begin {name}\nload /lab/{name}.ko\nrmmod {mod}; kv rmmod_rc $?\n"
                     f"end {name}\n")
    parts.append(ibt_case("control", "/lab/nothunk.ko"))
    try:
        result = bochs_boot(kernel, files, "".join(parts), timeout=BOCHS_TIMEOUT,
                            cmdline=("ibt=warn",))
    except BootError as exc:
        pytest.fail(f"the Bochs guest did not finish: {exc}\n{exc.console_tail()}")
    print(f"Bochs boot of {kernel.release}: {result.seconds:.0f} s")
    assert "@@cet 1" in result.output.splitlines(), result.output[:2000]
    cases, _ = parse_output(result.output)
    thunk = cases["thunk"]
    assert not [ln for ln in thunk.dmesg if "Missing ENDBR" in ln], thunk.log()
    check_thunked(thunk, thunked=True)
    # the kernel's own function has lost its ENDBR64 (sealed at boot)
    assert thunk.record("ibt_ptrs", how="direct")["kernel_head"] != ENDBR64
    for name in relevant:
        case = cases[name]
        assert case.kv.get("insmod_rc") == "0", case.log()
        assert not [ln for ln in case.dmesg if "Missing ENDBR" in ln], case.log()
        assert any("klptest" in ln for ln in case.dmesg), case.log()
        if name == "hello_klp":
            # the demo compares its &kallsyms_lookup_name with the kernel's:
            # pointer identity, which the thunk changes (README, IBT)
            rec = case.record("hello", "kallsyms_lookup_name")
            assert rec["by_link"] != rec["kallsyms_lookup_name"], rec
            # ... and the pointer leads there through the thunk
            assert rec["leads_to"] == rec["kallsyms_lookup_name"], rec
            jiffies = case.record("hello", "jiffies_by_name")
            assert jiffies["jiffies_by_name"] == jiffies["jiffies_by_link"], jiffies
        assert not [ln for ln in case.dmesg if "result=MISMATCH" in ln], case.log()
    control = cases["control"]
    missing = [ln for ln in control.dmesg if f"Missing ENDBR: {FN}+0x0/" in ln]
    assert len(missing) == len(INDIRECT), control.log()
    check_thunked(control, thunked=False)


def build_livepatch_pair(kernel: Kernel, root: Path) -> dict[str, Path]:
    """tests/modules/lpc_target and the livepatch lpc_ibt built with the
    kernel's kbuild, unconverted; and lpc_ibt again as ``lpc_ibt_ctl`` (the
    same source under another module name, so that the --no-ibt-thunks
    control loads beside it).  klpsym.h goes beside the source with the
    flags ``klpsym cflags --method klp`` gives (no klpsym in the chroot)."""
    shutil.copytree(REPO / "tests/modules/lpc_target", root / "lpc_target")
    out = {"lpc_target": build_modules(kernel, root / "lpc_target")[0]}
    for name in ("lpc_ibt", "lpc_ibt_ctl"):
        d = root / name
        d.mkdir()
        (d / f"{name}.c").write_text((REPO / "tests/modules/lpc_ibt/lpc_ibt.c").read_text())
        shutil.copy(include_dir() / "klpsym.h", d)
        (d / "Kbuild").write_text(f"obj-m := {name}.o\n"
                                  "ccflags-y += -I$(src) -DKLPSYM_METHOD=KLPSYM_METHOD_KLP\n")
        (out[name],) = build_modules(kernel, d)
    return out


def test_livepatch_target_module_thunk_in_bochs(kernel: Kernel, kallsyms_file: Path,
                                                tmp_path: Path) -> None:
    """trixie, sid: one Bochs boot (IBT enforced, ``ibt=warn``).  lpc_target
    seals its static homonym at load (its .ibt_endbr_seal); the livepatch
    lpc_ibt, converted by default, calls it through a pointer once the patch
    is enabled: through klpsym's thunk, no ``Missing ENDBR``.  The same
    livepatch converted with --no-ibt-thunks (lpc_ibt_ctl) is the control:
    ``Missing ENDBR: homonym`` once."""
    if not has_ibt(kernel):
        pytest.skip(f"kernel fact: {kernel.release} has no CONFIG_X86_KERNEL_IBT")
    kos = build_livepatch_pair(kernel, tmp_path)
    args = ("--kernel-dir", kernel.kernel_dir, "--kallsyms", kallsyms_file,
            "--target-module", kos["lpc_target"])
    thunk = convert("lpc_ibt", kos["lpc_ibt"], tmp_path / "lpc_ibt.klp.ko", *args)
    control = convert("lpc_ibt_ctl", kos["lpc_ibt_ctl"], tmp_path / "lpc_ibt_ctl.klp.ko", *args,
                      "--no-ibt-thunks")
    assert thunk.ok, thunk.explain()
    assert control.ok, control.explain()
    assert "IBT thunk __klpsym_ibt_homonym" in thunk.stdout, thunk.stdout
    assert "jmp lpc_target:homonym" in thunk.stdout, thunk.stdout
    assert "the module takes the address of lpc_target:homonym (sealed" in control.stdout, \
        control.stdout
    files = {"lpc_target.ko": kos["lpc_target"], "lpc_ibt.ko": thunk.output,
             "lpc_ibt_ctl.ko": control.output}
    script = (GUEST_HELPERS
              + "echo \"@@cet $(dmesg | grep -c 'CET detected: Indirect Branch Tracking "
                "enabled')\"\n"
              + "begin target\nload /lab/lpc_target.ko\nend target\n"
              + "begin thunk\nload /lab/lpc_ibt.ko\n"
                f"kv thunks \"$(cat /sys/module/lpc_ibt/sections/{THUNK_SECTION})\"\n"
                "kv enabled \"$(cat /sys/kernel/livepatch/lpc_ibt/enabled)\"\nend thunk\n"
              + "begin control\nload /lab/lpc_ibt_ctl.ko\nend control\n")
    try:
        result = bochs_boot(kernel, files, script, timeout=BOCHS_TIMEOUT, cmdline=("ibt=warn",))
    except BootError as exc:
        pytest.fail(f"the Bochs guest did not finish: {exc}\n{exc.console_tail()}")
    print(f"Bochs boot of {kernel.release}: {result.seconds:.0f} s")
    assert "@@cet 1" in result.output.splitlines(), result.output[:2000]
    cases, _ = parse_output(result.output)
    assert cases["target"].kv.get("insmod_rc") == "0", cases["target"].log()
    case = cases["thunk"]
    assert case.kv.get("insmod_rc") == "0" and case.kv.get("enabled") == "1", case.log()
    assert not [ln for ln in case.dmesg if "Missing ENDBR" in ln], case.log()
    rec = case.record("lpc_ibt", "via_ptr")
    assert rec["via_ptr"] == str(0xB0), rec  # lpc_b.c's homonym returns lpc_data
    start = int(case.kv["thunks"], 16)
    assert start <= hex_addr(rec["ptr"]) < start + 16, (rec, case.kv)
    ctl = cases["control"]
    assert ctl.kv.get("insmod_rc") == "0", ctl.log()
    missing = [ln for ln in ctl.dmesg if "Missing ENDBR: homonym+0x0/" in ln]
    assert len(missing) == 1, ctl.log()
    assert ctl.record("lpc_ibt", "via_ptr")["via_ptr"] == str(0xB0), ctl.log()
