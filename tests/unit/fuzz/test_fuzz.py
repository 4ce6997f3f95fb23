"""The fuzzer's regression corpus, and a short fuzz pass (the long runs are
``python -m tests.unit.fuzz.run --inputs N``; see harness.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.unit.fuzz.harness import CORPUS, Fuzzer

CASES = sorted(CORPUS.glob("*.ko"))
REPLAYS = 12


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Fuzzer:
    fz = Fuzzer(tmp_path_factory.mktemp("fuzz"), seed=int(os.environ.get("KLPSYM_FUZZ_SEED", "0")),
                real=False)
    return fz


def test_corpus_is_there() -> None:
    assert len(CASES) >= 2


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus(fuzzer: Fuzzer, case: Path) -> None:
    """Inputs that once crashed klpsym or made it write a bad output: every
    target once, then the one named by the file's prefix (reader-,
    convert-, inspect-, check-, facts-) in its modes picked at random a
    dozen times, check with its directory read each time."""
    data = case.read_bytes()
    findings = fuzzer.check(data)
    target = case.name.split("-")[0]
    assert target in fuzzer.targets, f"{case.name}: name it after its target"
    rate = fuzzer.batch_rate
    fuzzer.batch_rate = 1.0
    try:
        for _ in range(REPLAYS):
            findings += fuzzer.check(data, only=target)
    finally:
        fuzzer.batch_rate = rate
    assert not findings, "\n\n".join(f"{f.target} {f.kind}: {f.detail}" for f in findings)


def test_made_up_kernels_reach_deep(fuzzer: Fuzzer) -> None:
    """The unmutated seeds get past the target kernel's checks: most convert
    (exit 0), and check finds some that load.  (A made-up kernel klpsym
    refuses would leave every input at the same error, testing nothing.)"""
    from tests.unit.fuzz.harness import run_main

    src = fuzzer.work / "seed.ko"
    converted = loads = 0
    for data in fuzzer.seeds:
        src.write_bytes(data)
        rc, _, _ = run_main(["convert", str(src), "--kernel-dir", str(fuzzer.kdir),
                             "--kallsyms", str(fuzzer.kallsyms), "--dry-run"])
        converted += rc == 0
        rc, _, _ = run_main(["check", str(src), "--kernel-dir", str(fuzzer.check_kdir),
                             "--kallsyms", str(fuzzer.kallsyms)])
        loads += rc == 0
    assert converted >= 0.8 * len(fuzzer.seeds) and loads >= 2, (converted, loads)


def test_short_fuzz_pass(fuzzer: Fuzzer) -> None:
    """A few thousand mutated modules through every target: no finding."""
    n = int(os.environ.get("KLPSYM_FUZZ_INPUTS", "1500"))
    findings = [f for data in fuzzer.inputs(n) for f in fuzzer.check(data)]
    assert fuzzer.count >= n
    assert not findings, "\n\n".join(f"{f.target} {f.kind}: {f.detail}" for f in findings[:3])
