"""The fuzzer's regression corpus, and a short fuzz pass (the long runs are
``python -m tests.fuzz.run --inputs N``; see harness.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.fuzz.harness import CORPUS, Fuzzer

CASES = sorted(CORPUS.glob("*.ko"))


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Fuzzer:
    fz = Fuzzer(tmp_path_factory.mktemp("fuzz"), seed=int(os.environ.get("KLPSYM_FUZZ_SEED", "0")))
    return fz


def test_corpus_is_there() -> None:
    assert len(CASES) >= 2


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus(fuzzer: Fuzzer, case: Path) -> None:
    """Inputs that once crashed klpsym or made it write a bad output."""
    findings = fuzzer.check(case.read_bytes())
    assert not findings, "\n\n".join(f"{f.target} {f.kind}: {f.detail}" for f in findings)


def test_short_fuzz_pass(fuzzer: Fuzzer) -> None:
    """A few thousand mutated modules through every target: no finding."""
    n = int(os.environ.get("KLPSYM_FUZZ_INPUTS", "1500"))
    findings = [f for data in fuzzer.inputs(n) for f in fuzzer.check(data)]
    assert fuzzer.count >= n
    assert not findings, "\n\n".join(f"{f.target} {f.kind}: {f.detail}" for f in findings[:3])
