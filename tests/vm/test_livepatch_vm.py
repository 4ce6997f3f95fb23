"""End to end for livepatch modules (issue 18): hand-written livepatches
that use unexported symbols of vmlinux and of a target module, converted by
klpsym and run in ONE KASLR boot per suite (bookworm, trixie, sid).

tests/modules/lp_target is the target module (two files; values in its
lpt.h).  Two livepatches patch its lpt_report_get(), which runs when user
space reads /sys/module/lp_target/parameters/report, and answer with what
they see, one ``klptest LP: sym=NAME ... addr=%px value=N`` line each:

* lp_a (make, then ``klpsym convert --target-module lp_target.ko``): the
  first of lp_target's homonym statics through a KLP_MODULE_RELOC/KLP_SYMPOS
  annotation, lp_target's printk_time (vmlinux has one too), gcc's
  ``count.N``, lp_target's data through pointers in its own .data, .rodata and
  .data..read_mostly and from .text; vmlinux's sysctl_max_map_count (.text and
  .data), kallsyms_lookup_name() and the static key sched_schedstats through
  static_branch_unlikely().  It also replaces vmlinux's cmdline_proc_show()
  (the samples/livepatch kind of patch): /proc/cmdline changes, and comes
  back when the patch is disabled.
* lp_b (``klpsym build --target-module ... --sympos OBJ:NAME=N``): the
  second homonyms and vmlinux's printk_time.  (Built to read ``count.N``
  too, klpsym build fails today: test_klpsym_build_gcc_renamed_static.)

Each runs twice: with lp_target loaded first, and loaded before lp_target
(late module patching: the kernel applies the .klp.rela.lp_target.*
sections in klp_module_coming).  Each time the patch is then disabled
(``enabled`` 0, transition over), and both modules are removed.

The truth: addresses from the same boot's /proc/kallsyms (lp_target's
entries in their order, which is what POS counts), the values and addresses
lp_target prints about itself at init, the constants of lpt.h and lp_a.c,
and /proc/sys, /sys/module/printk as user space reads them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import GUEST_HELPERS, CaseResult, Converted, GuestRun, boot_guest, convert, klpsym

from klpsym.kbuild import ChrootRunner
from klpsym.lab.build import BuildError, build_modules, runner
from klpsym.lab.provision import Kernel

REPO = Path(__file__).resolve().parents[2]
MODULES = REPO / "tests/modules"
TARGET = "lp_target"
# The name vmlinux and lp_target both have (a static bool of kernel/printk,
# /sys/module/printk/parameters/time); test_names_exist_in_vmlinux checks it.
SHARED_NAME = "printk_time"
# vmlinux symbols whose same-boot /proc/kallsyms lines the guest sends back
VMLINUX_NAMES = ("sysctl_max_map_count", "sched_schedstats", "_stext", SHARED_NAME,
                 "cmdline_proc_show")
LP_B_SYMPOS = ("lp_target:lpt_homonym=2", "lp_target:lpt_homonym_fn=2",
               f"vmlinux:{SHARED_NAME}=1")
TRANSITION_WAIT = 300  # tenths of a second the guest waits for a klp transition
MAP_COUNT = 123457  # written to /proc/sys/vm/max_map_count first: lp_a must read it


def lpt_constants() -> dict[str, int]:
    """The ``#define LPT_NAME 0x...`` values of lp_target's lpt.h."""
    text = (MODULES / TARGET / "lpt.h").read_text()
    return {m[1]: int(m[2], 0) for m in re.finditer(r"#define\s+(LPT_\w+)\s+(\w+)", text)}


def lp_a_cmdline() -> str:
    m = re.search(r'#define LP_A_CMDLINE "([^"]+)"', (MODULES / "lp_a/lp_a.c").read_text())
    assert m, "lp_a.c has no LP_A_CMDLINE"
    return m[1]


def elf_symbols(ko: Path) -> list[tuple[str, str, str, str]]:
    """(name, type, bind, section index) of each symbol, in symbol table order (readelf)."""
    out = subprocess.run(["readelf", "-sW", str(ko)], capture_output=True, text=True,
                         check=True).stdout
    rows = []
    for line in out.splitlines():
        f = line.split()
        if len(f) == 8 and f[0].endswith(":") and f[0][:-1].isdigit():
            rows.append((f[7], f[3], f[4], f[6]))
    return rows


def section_names(ko: Path) -> dict[str, str]:
    """section index -> name (readelf -S)."""
    out = subprocess.run(["readelf", "-SW", str(ko)], capture_output=True, text=True,
                         check=True).stdout
    return {m[1]: m[2] for m in re.finditer(r"^\s*\[\s*(\d+)\]\s+(\S+)", out, re.M)}


def rela_sections(ko: Path) -> dict[str, set[str]]:
    """relocation section -> names of the symbols its entries use (readelf -r)."""
    out = subprocess.run(["readelf", "-rW", str(ko)], capture_output=True, text=True,
                         check=True).stdout
    users: dict[str, set[str]] = {}
    section = ""
    for line in out.splitlines():
        m = re.match(r"Relocation section '([^']+)'", line)
        if m:
            section = m[1]
            users[section] = set()
            continue
        f = line.split()
        if len(f) >= 5 and f[2].startswith("R_X86_64_"):
            users[section].add(f[4])
    return users


def renamed_count(target_ko: Path) -> str:
    """gcc's name for lpt_counter()'s function-local static ``count``: count.N."""
    names = [n for n, typ, bind, _ in elf_symbols(target_ko)
             if re.fullmatch(r"count\.\d+", n) and typ == "OBJECT" and bind == "LOCAL"]
    assert len(names) == 1, f"{target_ko.name}: expected one count.N, got {names}"
    return names[0]


def klpsym_include(dest: Path) -> list[str]:
    """klpsym.h copied into ``dest``/include (the chroot sees the module dir,
    not this checkout), and the flags ``klpsym cflags`` gives, pointed there."""
    proc = klpsym("cflags", "--method", "klp")
    assert proc.returncode == 0, proc.stderr
    flags = proc.stdout.split()
    assert flags[0].startswith("-I"), flags
    (dest / "include").mkdir(exist_ok=True)
    shutil.copy(Path(flags[0][2:]) / "klpsym.h", dest / "include")
    return ["-I$(src)/include", *flags[1:]]


# ------------------------------------------------------------------ the guest

WAIT_HELPERS = rf"""
lp_wait() {{  # $1: patch; waits for its transition to end, records its state
  i=0
  while [ "$(cat /sys/kernel/livepatch/$1/transition 2>/dev/null)" = 1 ] &&
        [ $i -lt {TRANSITION_WAIT} ]; do
    sleep 0.1; i=$((i+1))
  done
  kv ${{2:-}}transition "$(cat /sys/kernel/livepatch/$1/transition 2>/dev/null || echo gone)"
  kv ${{2:-}}enabled "$(cat /sys/kernel/livepatch/$1/enabled 2>/dev/null || echo gone)"
}}
lp_gone() {{  # $1: patch; waits until the kernel has freed it (its sysfs dir goes)
  i=0
  while [ -d /sys/kernel/livepatch/$1 ] && [ $i -lt {TRANSITION_WAIT} ]; do
    sleep 0.1; i=$((i+1))
  done
  kv gone "$([ -d /sys/kernel/livepatch/$1 ] && echo 0 || echo 1)"
}}
report() {{
  cat /sys/module/{TARGET}/parameters/report >/tmp/report; rc=$?
  sed 's/^/@@report /' /tmp/report; kv report_rc $rc
}}
modsyms() {{ grep '\[{TARGET}\]' /proc/kallsyms | sed 's/^/@@modsym /'; }}
schedstats() {{
  echo $1 > /proc/sys/kernel/sched_schedstats
  kv schedstats "$(cat /proc/sys/kernel/sched_schedstats)"
}}
"""


def scenario(lp: str, late: bool) -> str:
    """Guest script for one livepatch, with lp_target loaded first (or after: ``late``)."""
    name = f"{lp}_{'late' if late else 'present'}"
    target = f"insmod /lab/{TARGET}.ko; kv target_rc $?\nmodsyms\n"
    if not late:  # the original lpt_report_get(), before the patch
        target += f"kv report_before \"$(cat /sys/module/{TARGET}/parameters/report)\"\n"
    patch = (f"kv cmdline_before \"$(cat /proc/cmdline)\"\n"
             f"insmod /lab/{lp}.ko; kv lp_rc $?\nlp_wait {lp}\n"
             f"kv cmdline \"$(cat /proc/cmdline)\"\n")
    parts = [f"begin {name}_load\n" + (patch if late else target + patch) + f"end {name}_load\n"]
    if late:  # klp_module_coming applies lp's .klp.rela.lp_target.* now
        parts.append(f"begin {name}_target\n{target}end {name}_target\n")
    for value in (0, 1):
        parts.append(f"begin {name}_report{value}\nschedstats {value}\nreport\n"
                     f"kv max_map_count \"$(cat /proc/sys/vm/max_map_count)\"\n"
                     f"kv printk_time \"$(cat /sys/module/printk/parameters/time)\"\n"
                     f"end {name}_report{value}\n")
    parts.append(
        f"begin {name}_disable\nschedstats 0\n"
        f"echo 0 > /sys/kernel/livepatch/{lp}/enabled; kv disable_rc $?\n"
        f"lp_wait {lp} after_\nlp_gone {lp}\n"
        f"kv report_after \"$(cat /sys/module/{TARGET}/parameters/report)\"\n"
        f"kv cmdline_after \"$(cat /proc/cmdline)\"\n"
        f"rmmod {lp}; kv rmmod_lp_rc $?\nrmmod {TARGET}; kv rmmod_target_rc $?\n"
        f"kv loaded \"$(grep -cE '^({lp}|{TARGET}) ' /proc/modules)\"\n"
        f"end {name}_disable\n")
    return "".join(parts)


def guest_script(lps: list[str]) -> str:
    parts = [GUEST_HELPERS, WAIT_HELPERS, f"echo {MAP_COUNT} > /proc/sys/vm/max_map_count\n"]
    for lp in lps:
        parts += [scenario(lp, late=False), scenario(lp, late=True)]
    names = "|".join(re.escape(n) for n in VMLINUX_NAMES)
    parts.append(f"grep -E ' ({names})$' /proc/kallsyms | sed 's/^/@@kallsyms /'\n")
    parts.append("begin final\nkv tainted $(cat /proc/sys/kernel/tainted)\nend final\n")
    return "".join(parts)


# ------------------------------------------------------------------ the run


@dataclass
class Run:
    kernel: Kernel
    target_ko: Path
    count_name: str
    lp_a_built: Path  # lp_a.ko as make left it
    lp_a: Converted  # klpsym convert's
    lp_b_build: subprocess.CompletedProcess[str]  # klpsym build's
    lp_b_ko: Path
    guest: GuestRun | None = None

    def ready(self) -> dict[str, Path]:
        """The livepatches klpsym made: name -> converted .ko."""
        out = {}
        if self.lp_a.ok:
            out["lp_a"] = self.lp_a.output
        if self.lp_b_build.returncode == 0:
            out["lp_b"] = self.lp_b_ko
        return out

    def booted(self, lp: str | None = None) -> GuestRun:
        """The boot, after checking that klpsym made ``lp`` (which it ran)."""
        if lp == "lp_a":
            assert self.lp_a.ok, self.lp_a.explain()
        if lp == "lp_b":
            assert self.lp_b_build.returncode == 0, (
                f"klpsym build lp_b exited {self.lp_b_build.returncode}:\n"
                f"{self.lp_b_build.stdout[-2000:]}{self.lp_b_build.stderr[-2000:]}")
        assert self.guest is not None, "nothing to boot: klpsym made no livepatch"
        return self.guest


def livepatch_config(kernel: Kernel) -> None:
    """Skip, as a fact of this kernel, when it cannot load livepatches."""
    config = kernel.config.read_text().splitlines()
    if "CONFIG_LIVEPATCH=y" not in config:
        pytest.skip(f"kernel fact: {kernel.release} is built without CONFIG_LIVEPATCH")


def build_lp_b(kernel: Kernel, kallsyms_file: Path, target_ko: Path, dest: Path,
               count: str) -> subprocess.CompletedProcess[str]:
    """``klpsym build`` of a copy of lp_b in ``dest`` with LP_B_SYMPOS and
    ``-- LPT_COUNT_SYM=count``: lp_b reads lp_target's count.N too."""
    shutil.copytree(MODULES / "lp_b", dest)
    where, kdir = runner(kernel)
    cmd = [sys.executable, "-m", "klpsym.cli.main", "build", str(dest),
           "--kernel-dir", str(kdir), "--kallsyms", str(kallsyms_file),
           "--target-module", str(target_ko)]
    if isinstance(where, ChrootRunner):
        cmd += ["--chroot", str(where.root)]
    for pos in LP_B_SYMPOS:
        cmd += ["--sympos", pos]
    cmd += ["--", f"LPT_COUNT_SYM={count}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def run(kernel: Kernel, kallsyms_file: Path, tmp_path_factory: pytest.TempPathFactory,
        ) -> Iterator[Run]:
    livepatch_config(kernel)
    root = tmp_path_factory.mktemp(f"livepatch-{kernel.suite}")
    try:
        (target_ko,) = build_modules(kernel, MODULES / TARGET, root / TARGET)
    except BuildError as exc:
        pytest.fail(f"{exc}\n{exc.log}")
    count = renamed_count(target_ko)

    # lp_a: plain make (unexported names stay undefined), then klpsym convert.
    lp_a_dir = root / "lp_a"
    shutil.copytree(MODULES / "lp_a", lp_a_dir)
    cflags = klpsym_include(lp_a_dir)
    try:
        (lp_a_ko,) = build_modules(kernel, lp_a_dir, None, [
            f"LPT_COUNT_SYM={count}", f"KLPSYM_CFLAGS={' '.join(cflags)}"])
    except BuildError as exc:
        pytest.fail(f"{exc}\n{exc.log}")
    lp_a = convert("lp_a", lp_a_ko, root / "lp_a.klp.ko", "--kernel-dir", kernel.kernel_dir,
                   "--kallsyms", kallsyms_file, "--target-module", target_ko)

    # lp_b: klpsym build, positions from the command line.
    lp_b_dir = root / "lp_b"
    lp_b = build_lp_b(kernel, kallsyms_file, target_ko, lp_b_dir, count)

    result = Run(kernel, target_ko, count, lp_a_ko, lp_a, lp_b, lp_b_dir / "lp_b.ko")
    ready = result.ready()
    if not ready:
        yield result
        return
    files = {f"{TARGET}.ko": target_ko, **{f"{lp}.ko": ko for lp, ko in ready.items()}}
    result.guest = boot_guest(kernel, files, guest_script(sorted(ready)))
    if result.guest.boot is not None:
        print(f"{kernel.suite}: boot {result.guest.boot.seconds:.1f} s")
    yield result


# ------------------------------------------------------------------ parsing


def lines_with(case: CaseResult, prefix: str) -> list[str]:
    return [ln[len(prefix):] for ln in case.other if ln.startswith(prefix)]


def module_symbols(case: CaseResult) -> dict[str, list[int]]:
    """lp_target's /proc/kallsyms entries in this case: name -> addresses, in order."""
    out: dict[str, list[int]] = {}
    for line in lines_with(case, "@@modsym "):
        f = line.split()
        assert len(f) == 4 and f[3] == f"[{TARGET}]", line
        out.setdefault(f[2], []).append(int(f[0], 16))
    assert out, f"no {TARGET} symbols in /proc/kallsyms:\n{case.log()}"
    return out


def report_records(case: CaseResult, lp: str) -> dict[tuple[str, str], dict[str, str]]:
    """The ``klptest LP: sym=NAME via=HOW ...`` lines user space read: (sym, via) -> fields."""
    assert case.kv.get("report_rc") == "0", case.log()
    out: dict[tuple[str, str], dict[str, str]] = {}
    for line in lines_with(case, "@@report "):
        m = re.fullmatch(rf"klptest {lp}: (.*)", line.strip())
        assert m, f"not {lp}'s report line: {line!r}\n{case.log()}"
        rec = dict(kv.split("=", 1) for kv in m[1].split())
        key = (rec["sym"], rec["via"])
        assert key not in out, line
        out[key] = rec
    assert out, f"{lp} reported nothing:\n{case.log()}"
    return out


def target_report(case: CaseResult) -> dict[tuple[str, str], tuple[int, int]]:
    """What lp_target printed about itself at init: (sym, file) -> (address, value)."""
    out = {}
    for rec in case.records(TARGET):
        if "file" in rec and "addr" in rec:
            out[(rec["sym"], rec["file"])] = (int(rec["addr"], 16), int(rec["value"], 0))
    assert out, f"{TARGET} printed nothing:\n{case.log()}"
    return out


Records = dict[tuple[str, str], dict[str, str]]
Truth = dict[tuple[str, str], tuple[int, int]]


def check_lp_target_values(rep: Records, syms: dict[str, list[int]], truth: Truth,
                           count_name: str, count_value: int, pos: int) -> None:
    """The livepatch's view of lp_target's statics equals the kallsyms entries
    of this load of lp_target, and what lp_target printed of itself."""
    c = lpt_constants()
    file = {1: "main", 2: "aux"}[pos]
    # the homonyms: POS counts lp_target's kallsyms entries of the name, in order
    assert len(syms["lpt_homonym"]) == 2 and len(syms["lpt_homonym_fn"]) == 2, syms
    h = rep[("lpt_homonym", "text")]
    assert int(h["addr"], 16) == syms["lpt_homonym"][pos - 1], (h, syms["lpt_homonym"])
    assert truth[("lpt_homonym", file)] == (syms["lpt_homonym"][pos - 1], int(h["value"], 0)), (
        truth, h)
    assert int(h["value"], 0) == c[f"LPT_HOMONYM_{file.upper()}"], h
    fn = rep[("lpt_homonym_fn", "call")]
    assert int(fn["value"], 0) == c[f"LPT_HOMONYM_FN_{file.upper()}"], fn
    assert truth[("lpt_homonym_fn", file)] == (syms["lpt_homonym_fn"][pos - 1],
                                               int(fn["value"], 0)), truth
    # count.N: gcc's name, unique in lp_target
    cnt = rep[("count", "text")]
    assert syms.get(count_name) is not None and len(syms[count_name]) == 1, (count_name, syms)
    assert int(cnt["addr"], 16) == syms[count_name][0] == truth[("count", "main")][0], cnt
    assert int(cnt["value"], 0) == count_value, (cnt, count_value)


# ------------------------------------------------------------------ static checks


def test_names_exist_in_vmlinux(kernel: Kernel, kallsyms_file: Path) -> None:
    """The name lp_target shares with vmlinux is in this kernel's kallsyms
    (else the test would no longer test a shared name: pick another)."""
    livepatch_config(kernel)
    text = kallsyms_file.read_text()
    for name in (SHARED_NAME, "sched_schedstats", "cmdline_proc_show", "sysctl_max_map_count"):
        assert len(re.findall(rf" {re.escape(name)}$", text, re.M)) == 1, (
            f"{kernel.release}: {name} is not once in vmlinux's kallsyms")


def test_modules_have_the_shapes_tested(run: Run) -> None:
    """Guard on the test modules: lp_target has its statics where claimed
    (homonyms, count.N, .data/.rodata/.data..read_mostly), and the unconverted
    lp_a references them from the sections the test claims."""
    secs = section_names(run.target_ko)
    where: dict[str, list[str]] = {}
    for name, _, bind, ndx in elf_symbols(run.target_ko):
        if bind == "LOCAL" and ndx.isdigit():
            where.setdefault(name, []).append(secs[ndx])
    assert where["lpt_homonym"] == [".data", ".data"], where
    assert where["lpt_homonym_fn"] == [".text", ".text"], where
    assert where["lpt_data"] == [".data"] and where[SHARED_NAME] == [".data"], where
    assert where["lpt_ro"] == [".rodata"] and where["lpt_rm"] == [".data..read_mostly"], where
    assert where[run.count_name] == [".data"], where
    rela = rela_sections(run.lp_a_built)
    assert {"lpt_data", "sysctl_max_map_count"} <= rela[".rela.data"], rela[".rela.data"]
    assert "lpt_ro" in rela[".rela.rodata"], rela[".rela.rodata"]
    assert "lpt_rm" in rela[".rela.data..read_mostly"], rela
    assert "sched_schedstats" in rela[".rela__jump_table"], rela
    assert {"lpt_homonym", "lpt_homonym_fn", SHARED_NAME, run.count_name, "lpt_data", "lpt_ro",
            "lpt_rm", "sysctl_max_map_count", "kallsyms_lookup_name",
            "sched_schedstats"} <= rela[".rela.text"], rela[".rela.text"]


def test_converted_lp_a(run: Run) -> None:
    """klpsym convert put lp_target's statics in .klp.rela.lp_target.<section>
    and vmlinux's in .klp.rela.vmlinux.<section> (the kernel refuses a
    vmlinux symbol in a module's klp section), POS from the annotation, and
    dropped the annotation section."""
    assert run.lp_a.ok, run.lp_a.explain()
    rela = rela_sections(run.lp_a.output)
    t = ".klp.sym.lp_target."
    v = ".klp.sym.vmlinux."
    assert {f"{t}lpt_homonym,1", f"{t}lpt_homonym_fn,1", f"{t}{SHARED_NAME},0",
            f"{t}{run.count_name},0", f"{t}lpt_data,0", f"{t}lpt_ro,0",
            f"{t}lpt_rm,0"} <= rela[".klp.rela.lp_target..text"], rela
    assert {f"{v}sysctl_max_map_count,0", f"{v}kallsyms_lookup_name,0",
            f"{v}sched_schedstats,0"} <= rela[".klp.rela.vmlinux..text"], rela
    assert rela[".klp.rela.lp_target..data"] == {f"{t}lpt_data,0"}, rela
    assert rela[".klp.rela.vmlinux..data"] == {f"{v}sysctl_max_map_count,0"}, rela
    assert rela[".klp.rela.lp_target..rodata"] == {f"{t}lpt_ro,0"}, rela
    assert rela[".klp.rela.lp_target..data..read_mostly"] == {f"{t}lpt_rm,0"}, rela
    assert rela[".klp.rela.vmlinux.__jump_table"] == {f"{v}sched_schedstats,0"}, rela
    for sec, names in rela.items():
        if sec.startswith(".klp.rela.lp_target."):
            assert all(n.startswith(t) for n in names), (sec, names)
        assert not any(n.startswith(".klp.sym.") for n in names) or sec.startswith(".klp.rela."), (
            sec, names)
    assert not any(".klp.module_relocs" in s for s in section_names(run.lp_a.output).values())


def test_built_lp_b(run: Run) -> None:
    """klpsym build made lp_b.ko with the positions its --sympos chose: the
    second homonyms in lp_target, printk_time in vmlinux; and gcc's count.N,
    which modpost looks up as "count" (klpsym.kbuild.build.modpost_names)."""
    run.booted("lp_b")
    rela = rela_sections(run.lp_b_ko)
    t = ".klp.sym.lp_target."
    assert rela[".klp.rela.lp_target..text"] == {
        f"{t}lpt_homonym,2", f"{t}lpt_homonym_fn,2", f"{t}{run.count_name},0"}, rela
    assert rela[".klp.rela.vmlinux..text"] == {f".klp.sym.vmlinux.{SHARED_NAME},1"}, rela


def test_ambiguous_names_are_refused(run: Run, kernel: Kernel, kallsyms_file: Path,
                                     tmp_path: Path) -> None:
    """lp_b built by plain make and converted without its --sympos: its names
    that are in two places (lp_target's homonyms; printk_time in vmlinux and
    in lp_target) are refused with exit 2, one line, and no output file."""
    try:
        (ko,) = build_modules(kernel, MODULES / "lp_b", tmp_path / "lp_b",
                              [f"LPT_COUNT_SYM={run.count_name}"])
    except BuildError as exc:
        pytest.fail(f"{exc}\n{exc.log}")
    out = tmp_path / "lp_b.klp.ko"
    base = ("convert", ko, "-o", out, "--kernel-dir", kernel.kernel_dir,
            "--kallsyms", kallsyms_file, "--target-module", run.target_ko)
    proc = klpsym(*base)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("klpsym: error: "), proc.stderr
    assert any(n in lines[0] for n in ("lpt_homonym", SHARED_NAME)), lines[0]
    assert not out.exists()
    # each choice alone is not enough either
    for pos in LP_B_SYMPOS:
        rest = [a for p in LP_B_SYMPOS if p != pos for a in ("--sympos", p)]
        proc = klpsym(*base, *rest)
        name = pos.split(":", 1)[1].split("=", 1)[0]
        assert proc.returncode == 2, (pos, proc.stdout + proc.stderr)
        assert re.search(rf"\b{name}\b", proc.stderr), (pos, proc.stderr)
        assert not out.exists()
    proc = klpsym(*base, *(a for p in LP_B_SYMPOS for a in ("--sympos", p)))
    assert proc.returncode == 0, proc.stderr
    assert ".klp.sym.lp_target.lpt_homonym,2" in rela_sections(out)[".klp.rela.lp_target..text"]


# ------------------------------------------------------------------ in the guest


def loaded_patch(guest: GuestRun, lp: str, late: bool) -> tuple[CaseResult, CaseResult]:
    """The load case (and, when ``late``, the case that loads lp_target)."""
    name = f"{lp}_{'late' if late else 'present'}"
    load = guest.case(f"{name}_load")
    assert load.kv.get("lp_rc") == "0", f"insmod {lp}.ko failed:\n{load.log()}"
    assert load.kv.get("transition") == "0" and load.kv.get("enabled") == "1", load.log()
    if not late:
        assert load.kv.get("target_rc") == "0", load.log()
        assert load.kv["report_before"].startswith(f"{TARGET} original count="), load.log()
        return load, load
    target = guest.case(f"{name}_target")
    assert target.kv.get("target_rc") == "0", f"{TARGET} refused after {lp}:\n{target.log()}"
    return load, target


def count_truth(target_case: CaseResult) -> int:
    """The last value of lp_target's count that lp_target printed (the
    livepatches read it and never change it)."""
    before = target_case.kv.get("report_before", "")
    m = re.fullmatch(rf"{TARGET} original count=(\d+)", before)
    if m:
        return int(m[1])
    values = [int(r["value"]) for r in target_case.records(TARGET) if r.get("sym") == "count"]
    assert values, target_case.log()
    return values[-1]


@pytest.mark.parametrize("late", [False, True], ids=["target_present", "late_module_patching"])
def test_lp_a(run: Run, late: bool) -> None:
    guest = run.booted("lp_a")
    c = lpt_constants()
    load, target = loaded_patch(guest, "lp_a", late)
    syms = module_symbols(target)
    truth = target_report(target)
    name = f"lp_a_{'late' if late else 'present'}"
    # the real function patch: /proc/cmdline
    assert load.kv["cmdline"] == lp_a_cmdline() != load.kv["cmdline_before"], load.log()
    for value in (0, 1):
        case = guest.case(f"{name}_report{value}")
        rep = report_records(case, "lp_a")
        check_lp_target_values(rep, syms, truth, run.count_name, count_truth(target), pos=1)
        shared = rep[(SHARED_NAME, "text")]
        assert int(shared["addr"], 16) == syms[SHARED_NAME][0] == truth[(SHARED_NAME, "main")][0]
        assert int(shared["value"], 0) == c["LPT_PRINTK_TIME"], shared
        assert int(shared["addr"], 16) != guest.address(SHARED_NAME), "vmlinux's, not lp_target's"
        for sym, via in (("lpt_data", "data"), ("lpt_ro", "rodata"), ("lpt_rm", "read_mostly")):
            want = (syms[sym][0], c[f"LPT_{sym.removeprefix('lpt_').upper()}"])
            assert truth[(sym, "main")] == want, (sym, truth)
            for how in ("text", via):
                rec = rep[(sym, how)]
                assert (int(rec["addr"], 16), int(rec["value"], 0)) == want, (sym, how, rec)
        for how in ("text", "data"):
            rec = rep[("sysctl_max_map_count", how)]
            guest.check_addr(rec["addr"], "sysctl_max_map_count")
            assert rec["value"] == case.kv["max_map_count"] == str(MAP_COUNT), (rec, case.kv)
        stext = rep[("kallsyms_lookup_name", "call")]
        guest.check_addr(stext["stext"], "_stext")
        key = rep[("sched_schedstats", "jump_table")]
        guest.check_addr(key["addr"], "sched_schedstats")
        assert case.kv["schedstats"] == str(value), case.log()
        assert key["enabled"] == key["branch"] == str(value), (value, key)
    check_disabled(guest, f"{name}_disable", "lp_a", cmdline=load.kv["cmdline_before"])


@pytest.mark.parametrize("late", [False, True], ids=["target_present", "late_module_patching"])
def test_lp_b(run: Run, late: bool) -> None:
    guest = run.booted("lp_b")
    _, target = loaded_patch(guest, "lp_b", late)
    syms = module_symbols(target)
    truth = target_report(target)
    name = f"lp_b_{'late' if late else 'present'}"
    for value in (0, 1):
        case = guest.case(f"{name}_report{value}")
        rep = report_records(case, "lp_b")
        check_lp_target_values(rep, syms, truth, run.count_name, count_truth(target), pos=2)
        shared = rep[(SHARED_NAME, "text")]
        guest.check_addr(shared["addr"], SHARED_NAME)
        assert shared["value"] == {"Y": "1", "N": "0"}[case.kv["printk_time"]], (shared, case.kv)
    check_disabled(guest, f"{name}_disable", "lp_b", cmdline=None)


def check_disabled(guest: GuestRun, case_name: str, lp: str, cmdline: str | None) -> None:
    """echo 0 > enabled: the transition ends, the kernel frees the patch, the
    original functions answer again, and both modules unload."""
    case = guest.case(case_name)
    assert case.kv.get("disable_rc") == "0", case.log()
    assert case.kv.get("after_transition") in ("0", "gone"), case.log()
    assert case.kv.get("gone") == "1", f"/sys/kernel/livepatch/{lp} stayed:\n{case.log()}"
    assert case.kv["report_after"].startswith(f"{TARGET} original count="), case.log()
    if cmdline is not None:
        assert case.kv["cmdline_after"] == cmdline, case.log()
    assert case.kv.get("rmmod_lp_rc") == "0", case.log()
    assert case.kv.get("rmmod_target_rc") == "0", case.log()
    assert case.kv.get("loaded") == "0", case.log()


def test_boot_is_clean(run: Run) -> None:
    guest = run.booted()
    guest.assert_clean()
    # K: a livepatch was loaded (TAINT_LIVEPATCH, bit 15)
    assert int(guest.case("final").kv["tainted"]) & (1 << 15), guest.case("final").log()
    assert guest.boot is not None
    print(f"{run.kernel.suite}: boot {guest.boot.seconds:.1f} s")
