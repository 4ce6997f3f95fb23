"""The seal list of Debian's IBT kernels (klp.ibt.sealed_addresses), read from
the vmlinux the lab extracts from each bzImage, against the kallsyms the lab
captured from a boot of it (PVH: link-time addresses)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from klpsym.errors import ConvertError
from klpsym.klp.ibt import is_sealed, sealed_addresses
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms


def addresses(kernel: Kernel, names: set[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in capture_kallsyms(kernel).read_text().splitlines():
        f = line.split()
        if len(f) == 3 and f[2] in names:
            assert f[2] not in out, f"{f[2]} is not unique in {kernel.release}"
            out[f[2]] = int(f[0], 16)
    assert set(out) == names, out
    return out


@pytest.mark.parametrize("suite", ["trixie", "sid"])
def test_ibt_kernels_seal_kallsyms_lookup_name(suite: str,
                                                kernel_of: Callable[[str], Kernel]) -> None:
    """kallsyms_lookup_name (unexported, its address never taken in vmlinux)
    is sealed; the BPF helpers (address-taken in bpf_func_proto) and ipi_mb
    (handed to smp_call_function_many by membarrier) are not."""
    kernel = kernel_of(suite)
    config = kernel.config.read_text().splitlines()
    assert "CONFIG_X86_KERNEL_IBT=y" in config
    sealed = sealed_addresses(kernel.vmlinux)
    assert len(sealed) > 1000
    addr = addresses(kernel, {"kallsyms_lookup_name", "bpf_get_current_pid_tgid", "ipi_mb"})
    assert is_sealed(sealed, addr["kallsyms_lookup_name"])
    assert not is_sealed(sealed, addr["bpf_get_current_pid_tgid"])
    assert not is_sealed(sealed, addr["ipi_mb"])
    assert not is_sealed(sealed, addr["kallsyms_lookup_name"] + 4)


def test_bookworm_has_no_seal_list(bookworm: Kernel) -> None:
    assert "CONFIG_X86_KERNEL_IBT=y" not in bookworm.config.read_text().splitlines()
    with pytest.raises(ConvertError, match="without CONFIG_X86_KERNEL_IBT"):
        sealed_addresses(bookworm.vmlinux)
