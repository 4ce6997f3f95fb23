"""Session fixtures for the end-to-end tests: build, convert, boot once.

See e2e_support.py for the cases, the guest script and its result format.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import (
    BOOT_TIMEOUT,
    EXTRA_CONVERT_ARGS,
    MODULE_SOURCES,
    SYMPOS_NAME,
    Converted,
    GuestRun,
    convert,
    guest_script,
    parse_output,
)

from klpsym.lab.build import build_modules
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import BootError, boot, capture_kallsyms


@pytest.fixture(scope="session")
def kernel(bookworm: Kernel) -> Kernel:
    return bookworm


@pytest.fixture(scope="session")
def kallsyms_file(kernel: Kernel) -> Path:
    """/proc/kallsyms of the target, captured from a boot of the same kernel."""
    return capture_kallsyms(kernel)


@pytest.fixture(scope="session")
def built(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every module built with the kernel's kbuild (unconverted .ko files)."""
    root = tmp_path_factory.mktemp("build")
    kos: dict[str, Path] = {}
    for name, src in MODULE_SOURCES.items():
        found = build_modules(kernel, src, root / name)
        assert len(found) == 1, f"{src} built {found}"
        kos[name] = found[0]
    return kos


@pytest.fixture(scope="session")
def converted(
    kernel: Kernel,
    built: dict[str, Path],
    kallsyms_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Converted]:
    """Each module run through ``klpsym convert`` (results kept, failures too)."""
    root = tmp_path_factory.mktemp("klp")
    out: dict[str, Converted] = {}
    for name, ko in built.items():
        out[name] = convert(
            name, ko, root / ko.name,
            "--kernel-dir", kernel.kernel_dir, "--kallsyms", kallsyms_file,
            *EXTRA_CONVERT_ARGS.get(name, []),
        )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def sympos_variants(
    kernel: Kernel,
    built: dict[str, Path],
    kallsyms_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[int, Converted]:
    """sympos.ko converted once for EVERY position of its name in the captured kallsyms."""
    count = sum(
        1 for ln in kallsyms_file.read_text().splitlines() if ln.split()[2:] == [SYMPOS_NAME]
    )
    root = tmp_path_factory.mktemp("sympos")
    out: dict[int, Converted] = {}
    for pos in range(1, count + 1):
        out[pos] = convert(
            f"sympos_pos{pos}", built["sympos"], root / f"sympos.pos{pos}.ko",
            "--kernel-dir", kernel.kernel_dir, "--kallsyms", kallsyms_file,
            "--sympos", f"{SYMPOS_NAME}={pos}",
        )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def guest(
    kernel: Kernel,
    built: dict[str, Path],
    converted: dict[str, Converted],
    sympos_variants: dict[int, Converted],
) -> Iterator[GuestRun]:
    """ONE boot that loads every converted module (and the unconverted call_func.ko)."""
    files = {"orig/call_func.ko": built["call_func"]}
    present = set()
    for name, conv in converted.items():
        if conv.ok:
            files[f"klp/{conv.output.name}"] = conv.output
            present.add(name)
    positions = []
    for pos, conv in sympos_variants.items():
        if conv.ok:
            files[f"klp/{conv.output.name}"] = conv.output
            positions.append(pos)
    script = guest_script(present, positions)
    try:
        result = boot(
            kernel, files, script, timeout=BOOT_TIMEOUT, kaslr=True
        )
    except BootError as exc:
        yield GuestRun(None, exc, {}, {}, script)
        return
    cases, kallsyms = parse_output(result.output)
    yield GuestRun(result, None, cases, kallsyms, script)
