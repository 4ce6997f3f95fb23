"""--vmlinux and --system-map against reality: the kallsyms rebuilt from
Debian's debug vmlinux and from its real System.map must equal the
/proc/kallsyms of the same kernel, booted."""

from __future__ import annotations

import pytest

from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.kernel.proc_kallsyms import _parse_lines, _read_canonical, read_proc_kallsyms
from klpsym.kernel.system_map import read_system_map
from klpsym.kernel.version import KernelVersion
from klpsym.kernel.vmlinux import kallsyms_from_vmlinux
from klpsym.lab.debug import debug_files
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms


def _same(rebuilt: KallsymsTable, booted: KallsymsTable) -> None:
    assert list(rebuilt.names) == list(booted.names)
    assert list(rebuilt.types) == list(booted.types)
    # The PVH boot has no KASLR: link-time addresses are the run-time ones.
    assert (rebuilt.addresses == booted.addresses).all()
    dups = booted.duplicated_names()
    assert len(dups) > 500
    for name in dups:
        assert [c.pos for c in rebuilt.candidates(name)] == [c.pos for c in booted.candidates(name)]


def test_vmlinux_and_system_map_equal_the_booted_kernels_kallsyms(bookworm: Kernel) -> None:
    booted = read_proc_kallsyms(capture_kallsyms(bookworm))
    assert len(booted) > 50_000
    config = KernelConfig.from_path(bookworm.config)
    dbg = debug_files(bookworm)
    _same(kallsyms_from_vmlinux(dbg.vmlinux, config), booted)
    _same(read_system_map(dbg.system_map, config=config,
                          version=KernelVersion.parse(bookworm.release)), booted)


@pytest.mark.parametrize("suite", ["bookworm", "trixie", "sid"])
def test_booted_kallsyms_read_from_the_bytes_equal_the_line_parser(
        suite: str, request: pytest.FixtureRequest) -> None:
    """The numpy reader of /proc/kallsyms takes each real kernel's text
    (6.1, 6.12, 7.x as booted) and gives the line parser's table."""
    kernel: Kernel = request.getfixturevalue(suite)
    path = capture_kallsyms(kernel)
    raw = path.read_bytes()
    fast = _read_canonical(raw, str(path))
    assert fast is not None, "the booted kernel's text is not in the layout read from bytes"
    slow = _parse_lines(raw.decode(), str(path))
    assert len(fast) == len(slow) > 50_000
    assert fast.addresses.tolist() == slow.addresses.tolist()
    assert list(fast.types) == list(slow.types) and list(fast.names) == list(slow.names)
    assert (fast.has_addresses, fast.notes) == (slow.has_addresses, slow.notes)
    dups = slow.duplicated_names()
    assert dups and fast.duplicated_names() == dups
    for name in list(dups)[:200]:
        assert fast.candidates(name) == slow.candidates(name), name
