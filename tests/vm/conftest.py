"""Session fixtures for the end-to-end tests: build, convert, boot once per suite.

``kernel`` is parametrised over SUITES (bookworm 6.1, trixie 6.12, sid 7.x):
pytest runs every test of a suite before switching to the next, so each
session fixture below is built once per suite.  Each suite's modules are
built with that suite's own headers and compiler (trixie and sid in their
debootstrap chroot), converted against a kallsyms captured from a boot of the
same kernel, and loaded in ONE KASLR boot of it.

See e2e_support.py for the cases, the guest script and its result format.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import (
    EXTRA_CONVERT_ARGS,
    MODULE_SOURCES,
    SUITES,
    SYMPOS_NAME,
    Converted,
    GuestRun,
    boot_guest,
    convert,
    guest_script,
    restricted_names,
)

from klpsym.lab.build import build_modules
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import capture_kallsyms


@pytest.fixture(scope="session", params=SUITES)
def kernel(request: pytest.FixtureRequest) -> Kernel:
    """bookworm, trixie, sid in turn (the session fixtures of tests/conftest.py)."""
    k: Kernel = request.getfixturevalue(request.param)
    return k


@pytest.fixture(scope="session")
def kallsyms_file(kernel: Kernel) -> Path:
    """/proc/kallsyms of the target, captured from a boot of the same kernel."""
    return capture_kallsyms(kernel)


@pytest.fixture(scope="session")
def built(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every module built with the kernel's kbuild (unconverted .ko files)."""
    root = tmp_path_factory.mktemp(f"build-{kernel.suite}")
    kos: dict[str, Path] = {}
    for name, src in MODULE_SOURCES.items():
        # An export for named modules only (7.x) fails modpost even with
        # KBUILD_MODPOST_WARN; KBUILD_NSDEPS makes it a warning (see kbuild.build).
        nsdeps = bool(restricted_names(kernel.kernel_dir, name))
        found = build_modules(kernel, src, root / name, ["KBUILD_NSDEPS=1"] if nsdeps else [])
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
    """Each module run through ``klpsym convert`` (results kept, failures too).

    With ``--no-ibt-thunks``: these cases check that what a module holds is
    the kernel's own address (QEMU does not enforce IBT, so that is safe);
    test_ibt_vm.py converts them by default (thunks on IBT kernels) and runs
    them where IBT is enforced."""
    root = tmp_path_factory.mktemp(f"klp-{kernel.suite}")
    out: dict[str, Converted] = {}
    for name, ko in built.items():
        out[name] = convert(
            name, ko, root / ko.name,
            "--kernel-dir", kernel.kernel_dir, "--kallsyms", kallsyms_file,
            "--no-ibt-thunks", *EXTRA_CONVERT_ARGS.get(name, []),
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
    root = tmp_path_factory.mktemp(f"sympos-{kernel.suite}")
    out: dict[int, Converted] = {}
    for pos in range(1, count + 1):
        out[pos] = convert(
            f"sympos_pos{pos}", built["sympos"], root / f"sympos.pos{pos}.ko",
            "--kernel-dir", kernel.kernel_dir, "--kallsyms", kallsyms_file,
            "--sympos", f"{SYMPOS_NAME}={pos}", "--no-ibt-thunks",
        )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def guest(
    kernel: Kernel,
    built: dict[str, Path],
    converted: dict[str, Converted],
    sympos_variants: dict[int, Converted],
) -> Iterator[GuestRun]:
    """ONE boot that loads every converted module (and, first, the unconverted
    call_func.ko, and module_ns.ko where its symbol is restricted to named modules)."""
    unconverted = ["call_func"] + (
        ["module_ns"] if restricted_names(kernel.kernel_dir, "module_ns") else []
    )
    files = {f"orig/{name}.ko": built[name] for name in unconverted}
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
    yield boot_guest(kernel, files, guest_script(present, positions, unconverted))
