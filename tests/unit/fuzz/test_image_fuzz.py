"""A short pass of the kernel image fuzzer (long runs:
``python -m tests.unit.fuzz.image_fuzz --inputs N --seed S``)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.unit.fuzz.image_fuzz import run


def test_image_fuzz_short_pass(tmp_path: Path) -> None:
    seed = int(os.environ.get("KLPSYM_FUZZ_SEED", "0"))
    findings = run(120, seed, tmp_path)
    assert not findings, "\n".join(findings)
