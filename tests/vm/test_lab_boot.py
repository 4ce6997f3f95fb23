"""Booting the provisioned kernel in QEMU (TCG) and capturing its kallsyms."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import BootError, boot, capture_kallsyms


def test_boot_runs_script(bookworm: Kernel, tmp_path: Path) -> None:
    payload = tmp_path / "payload.txt"
    payload.write_bytes(b"hello from the host\n")
    result = boot(
        bookworm,
        {"payload.txt": payload},
        'uname -r; id -u; cat /lab/payload.txt; echo "to stderr" >&2; exit 7',
        timeout=120,
    )
    lines = result.output.splitlines()
    assert lines == [bookworm.release, "0", "hello from the host", "to stderr"]
    assert result.exit_status == 7
    assert "\r" not in result.output  # the result channel is raw: no CRLF
    assert "reboot: Power down" in result.console
    assert 0 < result.seconds < 120


def test_output_is_binary_safe(bookworm: Kernel) -> None:
    result = boot(bookworm, {}, "printf '\\000\\001\\377\\r\\n'; printf 'no newline'")
    assert result.output_bytes == b"\x00\x01\xff\r\nno newline"


def test_panic_is_a_boot_error(bookworm: Kernel) -> None:
    with pytest.raises(BootError, match="Kernel panic") as err:
        boot(bookworm, {}, "echo c > /proc/sysrq-trigger", timeout=120)
    assert "\n" not in str(err.value)
    assert "sysrq" in err.value.console


def test_timeout_is_a_boot_error(bookworm: Kernel) -> None:
    with pytest.raises(BootError, match="timed out after 3 s"):
        boot(bookworm, {}, "sleep 600", timeout=3)


def test_capture_kallsyms(bookworm: Kernel) -> None:
    path = capture_kallsyms(bookworm)
    assert path == bookworm.kallsyms_cache
    lines = path.read_text().splitlines()
    # Debian 6.1's vmlinux alone has ~94k symbols (no modules are loaded).
    assert len(lines) > 50_000
    pattern = re.compile(r"^[0-9a-f]{16} [A-Za-z] \S+$")
    assert all(pattern.match(line) for line in lines)
    stext = [line for line in lines if line.endswith(" _stext")]
    assert stext == ["ffffffff81000000 T _stext"]  # PVH boot: no KASLR, link-time addresses
    text_syms = [line for line in lines if line[17] in "Tt"]
    assert all(not line.startswith("0000000000000000") for line in text_syms)
    assert capture_kallsyms(bookworm) == path  # cached


def test_in_tree_modules_with_dependencies(bookworm: Kernel) -> None:
    # nf_conntrack needs nf_defrag_ipv4/6 and libcrc32c (modules.dep); libcrc32c in
    # turn needs a crc32c provider (modules.softdep), which the kernel requests itself.
    result = boot(bookworm, {}, "modprobe nf_conntrack && lsmod", modules=["nf-conntrack"])
    assert result.exit_status == 0, result.output
    loaded = {line.split()[0] for line in result.output.splitlines()[1:]}
    assert {"nf_conntrack", "nf_defrag_ipv4", "nf_defrag_ipv6", "libcrc32c"} <= loaded
