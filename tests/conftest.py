"""Shared pytest fixtures, and the tiers.

The tests are tiered by where they can run, one folder each, and each test
gets its folder's marker (so ``-m "not vm"`` works anywhere):

- ``tests/unit``: synthetic inputs only; no network, no root, no lab cache
  (a bare ``pytest`` runs this tier: pyproject.toml's testpaths);
- ``tests/real``: Debian's real kernel files, provisioned by klpsym.lab into
  its cache (downloads on first use; trixie and sid need root for their
  debootstrap build chroots), and the kallsyms the lab captures from one
  boot of each kernel (cached with it);
- ``tests/vm``: boots those kernels in QEMU to load modules and see them work;
- ``tests/host``: changes the host as root (dkms, /lib/modules).

``bookworm``, ``trixie`` and ``sid`` provision the current kernel of that Debian
suite once per session (trixie and sid with a debootstrap build chroot)
(into ``$KLPSYM_CACHE`` or ``~/.cache/klpsym``; cheap once cached).  Tests that
use it are marked ``real`` or ``e2e``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from klpsym.lab.provision import Kernel, provision

#: ``kernel_of("trixie")``: a suite's kernel by name, for tests parametrised
#: over suites.  It goes through the suite's session fixture, so the kernel is
#: provisioned when first asked for, in whatever order pytest runs the tests
#: (never skipped because another test had not provisioned it yet).
KernelOf = Callable[[str], Kernel]
SUITES = ("bookworm", "trixie", "sid")


@pytest.fixture(scope="session")
def bookworm() -> Kernel:
    """The current Debian bookworm amd64 kernel, provisioned into the cache."""
    return provision("bookworm")


@pytest.fixture(scope="session")
def trixie() -> Kernel:
    """The current Debian trixie (6.12) kernel, with its build chroot (gcc-14)."""
    return provision("trixie")


@pytest.fixture(scope="session")
def sid() -> Kernel:
    """The current Debian sid (7.x) kernel, with its build chroot (gcc-16)."""
    return provision("sid")


@pytest.fixture(scope="session")
def kernel_of(request: pytest.FixtureRequest) -> KernelOf:
    def get(suite: str) -> Kernel:
        if suite not in SUITES:
            raise ValueError(f"no fixture for suite {suite!r}; the suites are {SUITES}")
        kernel: Kernel = request.getfixturevalue(suite)
        return kernel

    return get


TIERS = ("unit", "real", "vm", "host")
LAB_FIXTURES = {"bookworm", "trixie", "sid", "kernel_of", "kernel"}
_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            tier = item.path.resolve().relative_to(_TESTS).parts[0]
        except ValueError:
            continue
        if tier not in TIERS:
            folders = ", ".join(f"tests/{t}/" for t in TIERS)
            raise pytest.UsageError(f"{item.nodeid}: a test belongs in one of {folders}")
        lab = sorted(LAB_FIXTURES & set(getattr(item, "fixturenames", ())))
        if tier == "unit" and lab:
            raise pytest.UsageError(f"{item.nodeid}: uses the lab's {', '.join(lab)}; a test on "
                                    "real kernels belongs in tests/real/ or tests/vm/")
        item.add_marker(tier)


_TIER_SECONDS = pytest.StashKey[dict[str, float]]()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each tier's time (setup, call and teardown of its tests, session
    fixtures included where they ran), for the summary README's table quotes."""
    tier = next((t for t in TIERS if report.nodeid.startswith(f"tests/{t}/")), None)
    if tier is not None and _CONFIG is not None:
        times = _CONFIG.stash.setdefault(_TIER_SECONDS, {})
        times[tier] = times.get(tier, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    times = config.stash.get(_TIER_SECONDS, {})
    if times:
        terminalreporter.write_line("tier times: " + ", ".join(
            f"{t} {times[t]:.0f} s" for t in TIERS if t in times))


#: What a test may skip for on CI: a fact of the kernel under test, of one boot
#: (KASLR), or of the host, which no setup step of the suite changes.  Any other
#: skip (a tool missing, a suite not provisioned) is a hole on CI: it fails there.
FACTS = ("kernel fact: ", "boot fact: ", "host fact: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not reason.removeprefix("Skipped: ").startswith(FACTS):
        report.outcome = "failed"
        report.longrepr = (f"skipped on CI for a reason the suite can fix ({reason}); only "
                           f"facts of a kernel, a boot or the host ({', '.join(FACTS)}) may skip")


_CONFIG: pytest.Config | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _CONFIG
    _CONFIG = config
    # tests import the synthetic ELF builder as a plain module
    import sys
    import tempfile
    from pathlib import Path

    here = str(Path(__file__).parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    # The symbol cache of this test run (inherited by the klpsym subprocesses
    # tests start), not the user's ~/.cache/klpsym/symcache.
    if "KLPSYM_SYMCACHE" not in os.environ:
        os.environ["KLPSYM_SYMCACHE"] = tempfile.mkdtemp(prefix="klpsym-test-symcache-")
        config.stash[_SYMCACHE] = os.environ["KLPSYM_SYMCACHE"]


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    made = config.stash.get(_SYMCACHE, None)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)


_SYMCACHE = pytest.StashKey[str]()
