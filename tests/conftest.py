"""Shared pytest fixtures.

``bookworm`` provisions the current Debian bookworm kernel once per session
(into ``$KLPSYM_CACHE`` or ``~/.cache/klpsym``; cheap once cached).  Tests that
use it are marked ``real`` or ``e2e``.
"""

from __future__ import annotations

import pytest

from klpsym.lab.provision import Kernel, provision


@pytest.fixture(scope="session")
def bookworm() -> Kernel:
    """The current Debian bookworm amd64 kernel, provisioned into the cache."""
    return provision("bookworm")


def pytest_configure(config: pytest.Config) -> None:
    # tests import the synthetic ELF builder as a plain module
    import sys
    from pathlib import Path

    here = str(Path(__file__).parent)
    if here not in sys.path:
        sys.path.insert(0, here)
