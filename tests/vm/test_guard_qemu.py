"""End to end for the load-time guard and signing, on each Debian suite the lab
provisions (bookworm 6.1 with basic modversions, trixie 6.12 with basic
modversions, sid 7.x without modversions), one KASLR boot per suite.

call_func.ko is built with the suite's kbuild and converted by the CLI into:

* ``guarded.ko``: the default conversion (guard on, unsigned);
* ``signed.ko``: the same, signed with a key the test generates;
* ``built.ko``: ``klpsym build --sign-key ...`` of the same source (make on
  this machine for bookworm, ``--chroot`` the suite's build chroot for trixie
  and sid, whose gcc-14/gcc-16 a bookworm host lacks);
* ``garbled.ko``: signed.ko with the first byte of its PKCS#7 blob changed;
* ``swapped.ko``: guarded.ko with the guard's name changed to a symbol no
  kernel exports, standing in for a kernel without CONFIG_LIVEPATCH (the lab
  has none): the loader must refuse it, which shows that it resolves the
  guard although no relocation uses it.

The guest loads each and reports what the module printed and the kernel log;
then it turns module.sig_enforce on (it can only be turned on at run time) and
tries signed.ko and guarded.ko again, so the kernel names its reason for
each: "module with unavailable key" for ours and "unsigned module".

What the boot proves about signing: module_sig_check() (kernel/module/
signing.c) parses an appended signature whenever there is one, and an
unparseable one fails the load even unenforced (garbled.ko), so signed.ko
loading shows the kernel read our trailer and PKCS#7 message and looked its
key up.  It cannot show that the signature verifies: sign-file signs without
signed attributes (no messageDigest), so the digest is only checked with the
key, which a test key is not in the kernel's keyring for; the host-side test
checks instead that the signature covers exactly the converted bytes.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import (
    GUEST_HELPERS,
    REPO,
    CaseResult,
    GuestRun,
    assert_steps_ok,
    boot_guest,
    function_pointer,
    hex_addr,
    klpsym,
    thunk_kv,
)

from klpsym.elf import ElfFile
from klpsym.kbuild import ChrootRunner
from klpsym.kernel.symvers import read_symvers
from klpsym.lab.build import build_modules, runner
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms
from klpsym.module.ko import read_module
from klpsym.module.signature import MODULE_SIG_STRING, PkeyIdType, split_signature
from klpsym.module.versions import read_versions

SUITES = ["bookworm", "trixie", "sid"]
GUARD = "klp_enable_patch"
SWAPPED = "klp_enable_patcX"  # same length; no kernel exports it
SIGNER = "klpsym e2e key"
MODULE = REPO / "tests/modules/call_func"


@dataclass
class SuiteRun:
    kernel: Kernel
    files: dict[str, Path]
    steps: dict[str, subprocess.CompletedProcess[str]]
    guest: GuestRun | None = None  # None: a step failed, nothing was booted

    def check_steps(self) -> None:
        assert_steps_ok(self.steps)

    def booted(self) -> GuestRun:
        self.check_steps()
        assert self.guest is not None
        return self.guest

    def case(self, name: str) -> CaseResult:
        return self.booted().case(name)

    def addr(self, name: str) -> int:
        return self.booted().address(name)


def make_key(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "key.pem", directory / "cert.der"
    subprocess.run(
        ["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "1", "-batch",
         "-x509", "-subj", f"/CN={SIGNER}/", "-newkey", "rsa:2048", "-outform", "DER",
         "-out", str(cert), "-keyout", str(key)],
        check=True, capture_output=True)
    return key, cert


def replace_once(data: bytes, old: bytes, new: bytes, count: int) -> bytes:
    assert data.count(old) == count, (old, data.count(old))
    return data.replace(old, new)


def guest_script() -> str:
    parts = [GUEST_HELPERS]

    def loads(name: str) -> None:
        parts.append(f"begin {name}\nload /lab/{name}.ko\n"
                     + thunk_kv("kallsyms_lookup_name", "call_func")
                     + f"rmmod call_func; kv rmmod_rc $?\nend {name}\n")

    def refused(name: str) -> None:
        parts.append(f"begin {name}\nload /lab/{name}.ko\n"
                     f"kv loaded $(grep -c '^call_func ' /proc/modules)\n"
                     f"rmmod call_func 2>/dev/null\nend {name}\n")

    loads("guarded")
    loads("signed")
    loads("built")
    refused("garbled")
    refused("swapped")
    parts.append(
        "begin enforce\necho 1 > /sys/module/module/parameters/sig_enforce\n"
        "kv sig_enforce $(cat /sys/module/module/parameters/sig_enforce)\n"
        "insmod /lab/signed.ko; kv signed_rc $?\n"
        "insmod /lab/guarded.ko; kv unsigned_rc $?\n"
        "kv loaded $(grep -c '^call_func ' /proc/modules)\nend enforce\n"
        "grep -E ' (kallsyms_lookup_name|init_task|_printk)$' /proc/kallsyms "
        "| sed 's/^/@@kallsyms /'\n")
    return "".join(parts)


@pytest.fixture(scope="module", params=SUITES)
def run(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuiteRun]:
    kernel: Kernel = request.getfixturevalue(request.param)
    root = tmp_path_factory.mktemp(f"guard_{kernel.suite}")
    kallsyms = capture_kallsyms(kernel)
    key, cert = make_key(root)
    [ko] = build_modules(kernel, MODULE, root / "src")
    common = ["--kernel-dir", kernel.kernel_dir, "--kallsyms", kallsyms]
    files = {n: root / f"{n}.ko" for n in ("guarded", "signed", "garbled", "swapped")}
    steps = {
        "convert": klpsym("convert", ko, "-o", files["guarded"], *common),
        "convert --sign-key": klpsym("convert", ko, "-o", files["signed"], *common,
                                     "--sign-key", key, "--sign-cert", cert),
    }
    # klpsym build runs make with the headers' compiler: here when this
    # machine has it, else in the suite's build chroot (trixie's gcc-14,
    # sid's gcc-16), given the chroot's copy of the headers.
    where, kdir = runner(kernel)
    chroot = ["--chroot", where.root] if isinstance(where, ChrootRunner) else []
    shutil.copytree(MODULE, root / "build")
    steps["klpsym build --sign-key"] = klpsym(
        "build", root / "build", *chroot, "--kernel-dir", kdir, "--kallsyms", kallsyms,
        "--sign-key", key, "--sign-cert", cert, timeout=600)
    files["built"] = root / "build" / "call_func.ko"
    result = SuiteRun(kernel, files, steps)
    if any(p.returncode for p in steps.values()):
        yield result
        return
    versions = 2 if read_versions(read_module(files["guarded"]).elf).entries else 1
    signed = bytearray(files["signed"].read_bytes())
    elf_part, sig = split_signature(bytes(signed), "signed.ko")
    assert sig is not None and signed[len(elf_part)] == 0x30  # DER SEQUENCE
    signed[len(elf_part)] = 0x31
    files["garbled"].write_bytes(bytes(signed))
    files["swapped"].write_bytes(replace_once(
        files["guarded"].read_bytes(), GUARD.encode() + b"\0", SWAPPED.encode() + b"\0",
        versions))
    result.guest = boot_guest(kernel, {f"{n}.ko": p for n, p in files.items()}, guest_script())
    yield result


# ------------------------------------------------------------------ before the boot


def test_guard_and_its_version_match_the_kernel(run: SuiteRun) -> None:
    """The guard is an undefined GLOBAL klp_enable_patch; under modversions
    (bookworm, trixie) __versions has it with Module.symvers' CRC, as kmod's
    own reader sees it; sid (no CONFIG_MODVERSIONS) has no version table."""
    run.check_steps()
    want = read_symvers(run.kernel.kernel_dir / "Module.symvers").get(GUARD)
    assert want is not None and want.from_vmlinux
    for name in ("guarded", "signed", "built"):
        m = read_module(run.files[name])
        st = m.elf.symtab
        i = st.names().index(GUARD)
        assert int(st.section_ref[i]) == 0 and st.binds[i] == 1, name
        dump = subprocess.run(["modprobe", "--dump-modversions", str(run.files[name])],
                              capture_output=True, text=True, check=False).stdout
        mine = [ln for ln in dump.splitlines() if ln.endswith(f"\t{GUARD}")]
        if want.crc is None:
            assert run.kernel.suite == "sid" and not dump.strip(), dump
            assert read_versions(m.elf).entries == ()
        else:
            assert mine == [f"0x{want.crc:08x}\t{GUARD}"], dump
            assert read_versions(m.elf).crc(GUARD) == want.crc


def test_signature_parses_and_modinfo_names_the_signer(run: SuiteRun) -> None:
    run.check_steps()
    for name in ("signed", "built"):
        data = run.files[name].read_bytes()
        assert data.endswith(MODULE_SIG_STRING)
        elf_part, sig = split_signature(data, name)
        assert sig is not None and sig.id_type == PkeyIdType.PKCS7
        ElfFile.from_bytes(elf_part)
        info = subprocess.run(["modinfo", "-F", "signer", str(run.files[name])],
                              capture_output=True, text=True, check=True).stdout
        assert info.strip() == SIGNER
    # signing changed nothing but the appended signature
    unsigned = run.files["guarded"].read_bytes()
    assert split_signature(run.files["signed"].read_bytes(), "signed")[0] == unsigned


# ------------------------------------------------------------------ in the guest


@pytest.mark.parametrize("name", ["guarded", "signed", "built"])
def test_guarded_module_loads_and_resolves(run: SuiteRun, name: str) -> None:
    case = run.case(name)
    assert case.kv.get("insmod_rc") == "0", case.log()
    assert case.kv.get("rmmod_rc") == "0", case.log()
    for sym in ("init_task", "_printk"):
        rec = case.record("call_func", name=sym)
        assert hex_addr(rec["got"]) == run.addr(sym) and rec["match"] == "1", rec
    fn = case.record("call_func", "fn")
    want = function_pointer(run.kernel, case, "kallsyms_lookup_name",
                            run.addr("kallsyms_lookup_name"))
    assert hex_addr(fn["fn"]) == want, fn
    assert case.record("call_func", result="OK")
    log = "\n".join(case.dmesg)
    for bad in ("no symbol version", "disagrees about version", "Unknown symbol"):
        assert bad not in log, case.log()


def test_unparseable_signature_is_refused_even_unenforced(run: SuiteRun) -> None:
    """The kernel parses an appended signature whenever there is one: so
    signed.ko loading means ours parsed."""
    case = run.case("garbled")
    assert case.kv.get("insmod_rc") != "0" and case.kv.get("loaded") == "0", case.log()
    assert any("Bad message" in ln for ln in case.other), case.log()  # -EBADMSG
    assert not case.records("call_func"), case.log()


def test_guard_is_resolved_though_no_relocation_uses_it(run: SuiteRun) -> None:
    case = run.case("swapped")
    assert case.kv.get("insmod_rc") != "0" and case.kv.get("loaded") == "0", case.log()
    assert any(f"Unknown symbol {SWAPPED}" in ln for ln in case.dmesg), case.log()
    assert not case.records("call_func"), case.log()


def test_enforcing_kernel_names_why(run: SuiteRun) -> None:
    case = run.case("enforce")
    assert case.kv.get("sig_enforce") == "Y", case.log()
    assert case.kv.get("signed_rc") != "0" and case.kv.get("unsigned_rc") != "0", case.log()
    assert case.kv.get("loaded") == "0", case.log()
    log = "\n".join(case.dmesg)
    assert "Loading of module with unavailable key is rejected" in log, case.log()
    assert "Loading of unsigned module is rejected" in log, case.log()


def test_boot_is_clean(run: SuiteRun) -> None:
    run.case("enforce")
    run.booted().assert_clean()
