"""--vmlinux against reality: kallsyms rebuilt from Debian's debug vmlinux
must equal the /proc/kallsyms of the same kernel, booted."""

from __future__ import annotations

import pytest

from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import read_proc_kallsyms
from klpsym.kernel.vmlinux import kallsyms_from_vmlinux
from klpsym.lab.debug import debug_vmlinux
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms

pytestmark = pytest.mark.e2e  # boots the kernel (once, cached) for its kallsyms


def test_vmlinux_kallsyms_equal_the_booted_kernels(bookworm: Kernel) -> None:
    booted = read_proc_kallsyms(capture_kallsyms(bookworm))
    config = KernelConfig.from_path(bookworm.config)
    rebuilt = kallsyms_from_vmlinux(debug_vmlinux(bookworm), config)
    assert len(booted) > 50_000
    assert list(rebuilt.names) == list(booted.names)
    assert list(rebuilt.types) == list(booted.types)
    # The PVH boot has no KASLR: link-time addresses are the run-time ones.
    assert (rebuilt.addresses == booted.addresses).all()
    dups = booted.duplicated_names()
    assert len(dups) > 500
    for name in dups:
        assert [c.pos for c in rebuilt.candidates(name)] == [c.pos for c in booted.candidates(name)]
