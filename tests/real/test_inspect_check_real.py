"""inspect and check on Debian's own modules: readelf's and modinfo's view
of the same files, Module.symvers for the exports, modinfo's depends for
check's dependencies.  Bookworm (6.1, .ko) always; trixie (6.12) and sid
(7.x, .ko.xz, __kflagstab) when the lab has them cached already."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from inspect_support import compare_with_readelf
from klpsym.cli.main import main
from klpsym.kernel.symvers import read_symvers
from klpsym.kernel.target import discover
from klpsym.lab.provision import Kernel
from klpsym.load.batch import gather_facts
from klpsym.load.check import Verdict, check_modules
from klpsym.module.exports import read_exports
from klpsym.module.ko import read_module


def _modules(root: Path) -> list[Path]:
    mods = sorted(p for pat in ("*.ko", "*.ko.xz", "*.ko.zst") for p in root.rglob(pat))
    assert len(mods) > 3000, f"expected Debian's 4000+ modules under {root}"
    return mods


def _inspect(*args: str) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["inspect", *args]) == 0
    return buf.getvalue()


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils missing")
def test_tables_equal_readelf(bookworm: Kernel) -> None:
    sample = _modules(bookworm.modules_dir)[::40]
    problems = []
    for p in sample:
        texts = {v: _inspect(str(p), f"--{v}") for v in ("sections", "symbols", "relocs")}
        problems += compare_with_readelf(p, texts)
    assert not problems, problems[:5]


MODINFO_KEYS = ("license", "vermagic", "name", "depends", "intree", "retpoline", "srcversion",
                "alias", "firmware", "softdep", "import_ns", "author")


@pytest.mark.skipif(shutil.which("modinfo") is None, reason="kmod missing")
def test_modinfo_equals_kmod(bookworm: Kernel) -> None:
    for p in _modules(bookworm.modules_dir)[::80]:
        m = read_module(p)
        for key in MODINFO_KEYS:
            kmod = _modinfo(p, "-F", key).splitlines()
            assert [v.strip() for v in m.modinfo.get_all(key)] == [v.strip() for v in kmod], \
                (p, key)
        sig = _inspect(str(p), "--signature")
        for key in ("signer", "sig_key", "sig_hashalgo"):
            assert f"{key + ':':<16}{_modinfo(p, '-F', key).strip()}" in sig, (p, key)


def _modinfo(p: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["modinfo", *args, str(p)], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("suite", ["bookworm", "trixie", "sid"])
def test_exports_equal_module_symvers(suite: str, kernel_of: Callable[[str], Kernel]) -> None:
    root = kernel_of(suite).root
    (symvers_path,) = root.glob("usr/src/linux-headers-*-amd64/Module.symvers")
    symvers = read_symvers(symvers_path)
    by_module: dict[str, dict[str, tuple[str, str, int | None]]] = {}
    for e in symvers:
        if not e.from_vmlinux:
            by_module.setdefault(e.module.rsplit("/", 1)[-1].replace("-", "_"), {})[e.name] = (
                e.export_type, e.namespace, e.crc)
    mods = _modules(root / "lib" / "modules")
    step = 1 if suite == "bookworm" else 5  # xz costs time
    checked = 0
    for p in mods[::step]:
        m = read_module(p)
        got = {e.name: (e.export_type, e.namespace, e.crc) for e in read_exports(m.elf)}
        assert got == by_module.get(m.name, {}), p
        checked += len(got)
    assert checked > 2000


def test_check_every_bookworm_module(bookworm: Kernel) -> None:
    """Debian's own modules all load, after exactly the modules modpost
    recorded in their .modinfo depends."""
    target = discover(kernel_dir=bookworm.kernel_dir, require_kallsyms=False)
    mods = _modules(bookworm.modules_dir)
    verdicts = check_modules(gather_facts(mods), target)
    assert {v.verdict for v in verdicts} <= {Verdict.LOADS, Verdict.LOADS_AFTER}, [
        (v.path, v.fatal) for v in verdicts if not v.would_load][:3]
    for p, v in zip(mods, verdicts, strict=True):
        want = {d for d in (read_module(p).modinfo.get("depends") or "").split(",") if d}
        assert {d.replace("-", "_") for d in v.depends} == {d.replace("-", "_") for d in want}, p


@pytest.mark.parametrize("suite", ["bookworm", "trixie", "sid"])
def test_fast_reader_equals_general_reader(suite: str, kernel_of: Callable[[str], Kernel]) -> None:
    """check reads modules through load.fastread's fast reader: on Debian's
    own modules (.ko; .ko.xz with extended modversions and __kflagstab on
    sid) it must read every one, and read what the general ELF reader reads."""
    from klpsym.load.facts import module_facts
    from klpsym.load.fastread import fast_facts
    from klpsym.module.compression import decompress

    root = kernel_of(suite).root
    mods = _modules(root / "lib" / "modules")
    for p in mods[::1 if suite == "bookworm" else 4]:
        data, compression = decompress(p.read_bytes(), str(p))
        # the fast reader reads it, and reads what the general one reads
        fast = fast_facts(data, p, compression.value)
        assert fast is not None, p
        assert fast == module_facts(p) == module_facts(p, fast=False), p


@pytest.mark.parametrize("crcs", ["as built", "every 97th changed"])
def test_parallel_check_equals_serial_general_reader(crcs: str, bookworm: Kernel,
                                                     tmp_path: Path) -> None:
    """What `klpsym check --json` prints for every bookworm module (fast
    reader, two processes, JSON made in the workers) equals the serial check
    of the general ELF reader's facts -- also against a Module.symvers whose
    CRCs disagree with many modules, so that thousands fail, many of them
    only because a module they need fails."""
    from klpsym.cli.check import json_module
    from klpsym.load.batch import check_paths
    from klpsym.load.facts import module_facts

    kdir = bookworm.kernel_dir
    if crcs != "as built":
        kdir = tmp_path / "kdir"
        kdir.mkdir()
        for entry in bookworm.kernel_dir.iterdir():
            if entry.name != "Module.symvers":
                (kdir / entry.name).symlink_to(entry)
        lines = (bookworm.kernel_dir / "Module.symvers").read_text().splitlines(keepends=True)
        for i in range(0, len(lines), 97):
            crc, rest = lines[i].split("\t", 1)
            lines[i] = f"0x{int(crc, 16) ^ 1:08x}\t{rest}"
        (kdir / "Module.symvers").write_text("".join(lines))
    target = discover(kernel_dir=kdir, require_kallsyms=False)
    mods = _modules(bookworm.modules_dir)
    serial = check_modules([module_facts(p, fast=False) for p in mods], target)
    parallel = check_paths(mods, target, 2, symbols=False, render=json_module)
    assert parallel.rendered == [json_module(v) for v in serial]
    failed = [v for v in serial if not v.would_load]
    if crcs == "as built":
        assert not failed
    else:
        assert len(failed) > 1000
        assert sum(any(p.stage.value == "dependency" for p in v.problems) for v in failed) > 100
