"""A symbol source of another Debian kernel is refused: its kallsyms lacks
hundreds of the target's vmlinux exports; the target's own lacks none."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from elfbuilder import simple_module
from klpsym.errors import KernelSourceError
from klpsym.kernel.proc_kallsyms import read_proc_kallsyms
from klpsym.kernel.symcache import hashes_of
from klpsym.kernel.symvers import read_symvers
from klpsym.kernel.target import discover
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms

pytestmark = pytest.mark.real


@pytest.mark.parametrize("suite", ["bookworm", "trixie", "sid"])
def test_own_kallsyms_has_every_vmlinux_export(suite: str,
                                               request: pytest.FixtureRequest) -> None:
    kernel: Kernel = request.getfixturevalue(suite)
    t = discover(kernel.kernel_dir, kallsyms=capture_kallsyms(kernel),
                 running_release="0.0.0-not-it")
    missing, total, _ = t.symvers.vmlinux_exports_missing(
        np.sort(hashes_of(t.kallsyms.names.tolist())))
    assert missing == 0 and total > 5000


@pytest.mark.parametrize("other", ["trixie", "sid"])
def test_another_kernels_kallsyms_is_refused(bookworm: Kernel, other: str,
                                             request: pytest.FixtureRequest) -> None:
    wrong: Kernel = request.getfixturevalue(other)
    path = capture_kallsyms(wrong)
    # the figure the refusal must give, counted here with plain Python sets
    exports = {e.name for e in read_symvers(bookworm.kernel_dir / "Module.symvers")
               if e.from_vmlinux}
    names = set(read_proc_kallsyms(path, cache=False).names.tolist())
    missing = len(exports - names)
    assert missing > 0.01 * len(exports)
    t = discover(bookworm.kernel_dir, kallsyms=path, running_release="0.0.0-not-it")
    with pytest.raises(KernelSourceError) as e:
        _ = t.kallsyms
    assert str(e.value).startswith(
        f"{path}: {missing:,} of the {len(exports):,} vmlinux exports of {bookworm.release} ")
    # cheap: the check over the cached columns, against reading the table
    t = discover(bookworm.kernel_dir, kallsyms=path, running_release="0.0.0-not-it",
                 check_symbols=False)
    start = time.perf_counter()
    table = t.kallsyms
    read = time.perf_counter() - start
    from klpsym.kernel.target import check_symbol_source

    start = time.perf_counter()
    with pytest.raises(KernelSourceError):
        check_symbol_source(table, t.symvers, t.release, t.config, path)
    checked = time.perf_counter() - start
    assert checked < max(0.01, read)


def test_convert_refuses_another_kernels_kallsyms(bookworm: Kernel, trixie: Kernel,
                                                   tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a module that needs the kallsyms: kallsyms_lookup_name is not exported since 5.7
    module = tmp_path / "m.ko"
    module.write_bytes(simple_module(release=bookworm.release).build())
    run = subprocess.run(
        [sys.executable, "-m", "klpsym.cli.main", "convert", str(module), "-o",
         str(tmp_path / "out.ko"), "--kernel-dir", str(bookworm.kernel_dir),
         "--kallsyms", str(capture_kallsyms(trixie))],
        capture_output=True, text=True, check=False)
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and "vmlinux exports of" in lines[0]
    assert "--no-symbol-check" in lines[0] and not (tmp_path / "out.ko").exists()


@pytest.mark.parametrize("suite", ["bookworm", "trixie", "sid"])
def test_sympos_examples_name_a_duplicated_symbol(suite: str,
                                                  request: pytest.FixtureRequest) -> None:
    """The --sympos NAME=N examples of the help texts and the README name a
    symbol that has at least N entries in each lab kernel's kallsyms."""
    import re
    from pathlib import Path

    from klpsym.cli import convert, insmod

    kernel: Kernel = request.getfixturevalue(suite)
    table = read_proc_kallsyms(capture_kallsyms(kernel))
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    examples = re.findall(r"--sympos ([A-Za-z_]\w*)=(\d+)",
                          convert.EPILOG + insmod.EPILOG + readme)
    assert examples
    for name, pos in examples:
        assert table.count(name) >= int(pos), (name, pos, table.count(name))


def test_addr_with_kernel_dir_checks_the_source(bookworm: Kernel, trixie: Kernel) -> None:
    def addr(kallsyms: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "klpsym", "addr", "c_start", "--kallsyms",
                               str(kallsyms), "--kernel-dir", str(bookworm.kernel_dir), *extra],
                              capture_output=True, text=True, check=False, timeout=600)

    assert addr(capture_kallsyms(bookworm)).returncode == 0
    wrong = addr(capture_kallsyms(trixie))
    assert wrong.returncode == 2 and "vmlinux exports of" in wrong.stderr
    assert wrong.stderr.count("\n") == 1
    assert addr(capture_kallsyms(trixie), "--no-symbol-check").returncode == 0
