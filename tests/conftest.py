"""Shared pytest fixtures.

``bookworm``, ``trixie`` and ``sid`` provision the current kernel of that Debian
suite once per session (trixie and sid with a debootstrap build chroot)
(into ``$KLPSYM_CACHE`` or ``~/.cache/klpsym``; cheap once cached).  Tests that
use it are marked ``real`` or ``e2e``.
"""

from __future__ import annotations

from collections.abc import Callable

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


def pytest_configure(config: pytest.Config) -> None:
    # tests import the synthetic ELF builder as a plain module
    import os
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
