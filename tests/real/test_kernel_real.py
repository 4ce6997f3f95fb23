"""The kernel layer against Debian's real files (the lab's provisioned bookworm):
its config and version, System.map stub, scripts/kallsyms, Module.symvers,
the target as discovered from real headers, vmlinux read by nm."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kallsyms_asm import decode_kallsyms_asm
from kallsyms_support import (
    ALL,
    NM,
    TEXT_ONLY,
    host_kallsyms_readable,
    mine,
    nm_lines,
    rows,
    sample_system_map,
)
from klpsym.errors import KernelSourceError
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.proc_kallsyms import read_proc_kallsyms
from klpsym.kernel.symvers import (
    LAYOUT_NAMESPACE_LAST,
    read_symvers,
)
from klpsym.kernel.system_map import read_system_map
from klpsym.kernel.target import discover
from klpsym.kernel.version import (
    KernelVersion,
    ksym_name_len,
    read_kernel_version,
    supports_klp_for_plain_modules,
)
from klpsym.kernel.vmlinux import kallsyms_from_vmlinux


def test_real_debian_config_and_version(bookworm) -> None:  # type: ignore[no-untyped-def]
    v = read_kernel_version(bookworm.kernel_dir)
    assert v.release == bookworm.release
    assert (v.major, v.minor) == (6, 1) and v.patch > 0  # the real sublevel, not the ABI's 0
    assert ksym_name_len(v) == 512 and supports_klp_for_plain_modules(v)
    for path in (bookworm.config, bookworm.kernel_dir / ".config"):
        c = KernelConfig.from_path(path)
        assert c.enabled("LIVEPATCH") and c.enabled("KALLSYMS_ALL")
        assert c.enabled("KALLSYMS_ABSOLUTE_PERCPU") and c.enabled("MODVERSIONS")
        assert c.get("LOCALVERSION") == ""


def test_real_debian_system_map_is_the_stub(bookworm) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KernelSourceError, match="Debian's placeholder"):
        read_system_map(bookworm.system_map)


def _run_real_kallsyms(binary: Path, sysmap: Path, all_symbols: bool) -> list[tuple[str, str]]:
    args = [str(binary)] + (["--all-symbols"] if all_symbols else []) + [
        "--absolute-percpu", "--base-relative", str(sysmap)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=300).stdout
    return decode_kallsyms_asm(out)


@pytest.mark.parametrize("all_symbols", [True, False])
def test_matches_real_scripts_kallsyms(bookworm, tmp_path: Path,  # type: ignore[no-untyped-def]
                                       all_symbols: bool) -> None:
    """Debian's own scripts/kallsyms binary (linux-kbuild-6.1, the headers'
    scripts/) and klpsym's emulation order the same input the same way: the
    tricky sample, and the host's whole kallsyms re-sorted like nm -n."""
    binary = bookworm.kernel_dir / "scripts" / "kallsyms"
    assert binary.is_file(), binary
    cfg = ALL if all_symbols else TEXT_ONLY
    version = KernelVersion.parse(bookworm.release)
    sysmap = sample_system_map(tmp_path)
    assert rows(read_system_map(sysmap, config=cfg, version=version)) == \
        _run_real_kallsyms(binary, sysmap, all_symbols)
    if host_kallsyms_readable():
        host = read_proc_kallsyms("/proc/kallsyms")
        order = np.lexsort((np.argsort(np.argsort(host.names, kind="stable")), host.addresses))
        pseudo = tmp_path / "pseudo.map"
        pseudo.write_text("".join(f"{int(host.addresses[i]):016x} {host.types[i]} "
                                  f"{host.names[i]}\n" for i in order.tolist()))
        assert rows(read_system_map(pseudo, config=cfg, version=version)) == \
            _run_real_kallsyms(binary, pseudo, all_symbols)


def test_real_debian_module_symvers(bookworm) -> None:  # type: ignore[no-untyped-def]
    s = read_symvers(bookworm.kernel_dir / "Module.symvers")
    assert s.layouts == {LAYOUT_NAMESPACE_LAST}  # 6.1
    assert len(s) > 20000
    n_vmlinux = sum(e.from_vmlinux for e in s)
    assert 5000 < n_vmlinux < len(s)
    assert s.exported_by_vmlinux("_printk") and not s.is_gpl_only("_printk")
    assert s.is_gpl_only("init_uts_ns")
    assert all(e.crc is not None for e in s)  # Debian builds with CONFIG_MODVERSIONS
    assert not s.is_exported("kallsyms_lookup_name")  # unexported since 5.7
    namespaced = [e for e in s if e.namespace]
    assert namespaced and all(not e.module_only for e in namespaced)  # no module: in 6.1
    assert any(e.namespace == "CRYPTO_INTERNAL" for e in namespaced)


def test_real_bookworm(bookworm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # not the host's kernel: a symbol source is required (none installed in tmp_path)
    with pytest.raises(KernelSourceError, match="wrong kernel's"):
        discover(bookworm.kernel_dir, running_release="0.0.0-not-it", boot_dir=tmp_path,
                 debug_dir=tmp_path)
    # Debian's System.map is the stub
    with pytest.raises(KernelSourceError, match="Debian's placeholder"):
        discover(bookworm.kernel_dir, system_map=bookworm.system_map,
                 running_release="0.0.0-not-it")
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffffffff81000000 T _stext\nffffffff81000010 T kallsyms_lookup_name\n")
    # a two-line kallsyms lacks nearly all of bookworm's vmlinux exports:
    # refused when read, unless the check is turned off
    with pytest.raises(KernelSourceError, match="vmlinux exports .* are missing"):
        _ = discover(bookworm.kernel_dir, kallsyms=kallsyms,
                     running_release="0.0.0-not-it").kallsyms
    t = discover(bookworm.kernel_dir, kallsyms=kallsyms, running_release="0.0.0-not-it",
                 check_symbols=False)
    assert t.release == bookworm.release and t.version.patch > 0
    assert t.config is not None and t.livepatch_enabled
    assert t.symvers.exported_by_vmlinux("_printk") and len(t.symvers) > 20000
    assert t.kallsyms.resolve("kallsyms_lookup_name")[0] == 0


def test_stripped_vmlinux(bookworm) -> None:  # type: ignore[no-untyped-def]
    # the lab's vmlinux is cut out of vmlinuz: no .symtab
    with pytest.raises(KernelSourceError, match=r"no \.symtab.*linux-image-<release>-dbg"):
        kallsyms_from_vmlinux(bookworm.vmlinux, None)


@pytest.mark.skipif(NM is None, reason="binutils nm not installed")
def test_nm_view_of_debian_modules(bookworm) -> None:  # type: ignore[no-untyped-def]
    """Letters and order of binutils nm on real kernel objects (.ko: every
    section kind the kernel uses, ksymtab, percpu, init, debug...)."""
    kos = sorted(bookworm.modules_dir.rglob("*.ko"))
    assert len(kos) > 1000
    for ko in random.Random(7).sample(kos, 40):
        assert mine(ko) == nm_lines(ko), ko


