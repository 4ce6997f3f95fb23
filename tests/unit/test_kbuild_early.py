"""klpsym.kbuild.early: the make the last run with the same command line
started, started again before the arguments are parsed, and adopted by
KbuildRun.start only when it is the run the parsed arguments start."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_kbuild_gate import fake_kernel

from klpsym.kbuild import early
from klpsym.kbuild.gate import GATE_DIR
from klpsym.kbuild.make import KbuildRun, start_early
from process_support import naming, until

SYMVERS = "0x00000000\tfoo\tvmlinux\tEXPORT_SYMBOL_GPL\t\n"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KLPSYM_SYMCACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KLPSYM_NO_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(early, "_program", None)
    monkeypatch.setattr(early, "_pending", None)
    yield
    early.abandon()


def _build(mod: Path, kdir: Path, env: dict[str, str] | None = None) -> KbuildRun:
    """What ``klpsym build`` does: start make early and record it."""
    run = start_early(mod, kdir, None, [], [], env or {"KLPSYM_METHOD": "klp"})
    assert run is not None and run.command is not None
    early.remember(*run.command, run.gate.dir, [])
    return run


def _finish(run: KbuildRun, mod: Path) -> None:
    run.attach(lambda: SYMVERS)
    assert run.wait() == 0 and run.gated
    assert (mod / "modpost-read").read_text() == SYMVERS
    assert not (mod / GATE_DIR).exists()


def test_the_same_command_line_starts_make_before_it_is_parsed(tmp_path: Path) -> None:
    kdir, mod = fake_kernel(tmp_path)
    argv = ["build", str(mod), "--kernel-dir", str(kdir)]
    early.replay(argv)  # no record yet: nothing started
    assert early._pending is None
    _finish(_build(mod, kdir), mod)
    (mod / "modpost-read").unlink()

    early.replay(argv)  # the next run: make starts at once
    pending = early._pending
    assert pending is not None and (mod / GATE_DIR / "begin").is_fifo()
    run = _build(mod, kdir)
    assert run._proc is pending.proc and early._pending is None  # adopted, not started again
    _finish(run, mod)


def test_a_started_make_that_is_not_the_parsed_one_is_stopped(tmp_path: Path) -> None:
    kdir, mod = fake_kernel(tmp_path)
    argv = ["build", str(mod), "--kernel-dir", str(kdir)]
    early.replay(argv)
    _finish(_build(mod, kdir), mod)
    early.replay(argv)
    pending = early._pending
    assert pending is not None
    # The arguments now mean another make (here: another environment for it).
    run = _build(mod, kdir, {"KLPSYM_METHOD": "klp", "OTHER": "1"})
    assert pending.proc.poll() is not None and run._proc is not pending.proc
    _finish(run, mod)


def test_nothing_is_started_for_another_command_line_dir_or_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kdir, mod = fake_kernel(tmp_path)
    argv = ["build", str(mod), "--kernel-dir", str(kdir)]
    early.replay(argv)
    _finish(_build(mod, kdir), mod)
    early.replay([*argv, "--no-guard"])
    assert early._pending is None
    monkeypatch.setenv("SOMETHING_ELSE", "1")
    early.replay(argv)
    assert early._pending is None
    monkeypatch.delenv("SOMETHING_ELSE")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    early.replay(argv)
    assert early._pending is None
    monkeypatch.chdir(tmp_path)
    early.replay(argv)
    assert early._pending is not None  # the same again: started
    early.abandon()
    assert not (mod / GATE_DIR).exists()


def test_a_named_file_gone_starts_nothing(tmp_path: Path) -> None:
    kdir, mod = fake_kernel(tmp_path)
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("")
    argv = ["build", str(mod), "--kallsyms", str(kallsyms)]
    early.replay(argv)
    run = start_early(mod, kdir, None, [], [], {})
    assert run is not None and run.command is not None
    early.remember(*run.command, run.gate.dir, [kallsyms])
    _finish(run, mod)
    kallsyms.unlink()
    early.replay(argv)
    assert early._pending is None and not (mod / GATE_DIR).exists()


@pytest.mark.parametrize("content", [b"", b"garbage", b"3\0a\0", b"1\0x\0" * 7, b"\xff\0"])
def test_an_unreadable_record_starts_nothing(tmp_path: Path, content: bytes) -> None:
    kdir, mod = fake_kernel(tmp_path)
    argv = ["build", str(mod)]
    early.replay(argv)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / early.RECORDS).write_bytes(content)
    early.replay(argv)
    assert early._pending is None
    _finish(_build(mod, kdir), mod)  # and the record is written anew
    early.replay(argv)
    assert early._pending is not None


def test_no_record_outside_the_program_or_without_a_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kdir, mod = fake_kernel(tmp_path)
    _finish(_build(mod, kdir), mod)  # replay() never ran: not the program
    assert not (tmp_path / "cache" / early.RECORDS).exists()
    monkeypatch.setenv("KLPSYM_NO_CACHE", "1")
    early.replay(["build", str(mod)])
    _finish(_build(mod, kdir), mod)
    assert not (tmp_path / "cache").exists()


def test_records_keep_the_last_builds(tmp_path: Path) -> None:
    kdir, mod = fake_kernel(tmp_path)
    for i in range(early.KEEP + 2):
        early.replay(["build", str(mod), f"--n={i}"])
        _finish(_build(mod, kdir), mod)
    records = early._read(str(tmp_path / "cache" / early.RECORDS))
    assert [r[0][-1] for r in records] == [f"--n={i}" for i in
                                           reversed(range(2, early.KEEP + 2))]


def test_a_record_runs_only_make_and_empties_only_a_gate_dir(tmp_path: Path) -> None:
    """A record klpsym did not write (another program's, a corrupt one)
    starts nothing and removes nothing."""
    kdir, mod = fake_kernel(tmp_path)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "file").write_text("x")
    argv = ["build", str(mod)]
    early.replay(argv)
    assert early._program is not None
    gate = str(mod / GATE_DIR)
    for make, gate_dir in ((["touch", str(tmp_path / "ran")], gate),
                           (["make", "-C", str(kdir), "modules"], str(keep))):
        early._write(str(tmp_path / "cache" / early.RECORDS),
                     [[early._program, make, [], [gate_dir], []]])
        early.replay(argv)
        assert early._pending is None
    assert (keep / "file").read_text() == "x" and not (tmp_path / "ran").exists()


def test_a_current_dir_that_is_gone_starts_and_records_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kdir, mod = fake_kernel(tmp_path)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    early.replay(["build", str(mod)])
    assert early._program is None and early._pending is None
    _finish(_build(mod, kdir), mod)
    assert not (tmp_path / "cache" / early.RECORDS).exists()


# kbuild's recipes trap SIGTERM to delete their target (delete-on-interrupt in
# scripts/Kbuild.include, 6.1 to 7.x); the shell runs the trap only once the
# command it waits for has ended, which for modpost at the gate is never.
TRAPPING_KBUILD = """\
modules:
\t@trap 'rm -f $(M)/modpost-read; trap - TERM; kill -s TERM $$$$' TERM; \\
\tfor f in $$KBUILD_EXTRA_SYMBOLS; do cat $$f; done > $(M)/modpost-read
"""


def test_stopping_make_lets_go_of_a_reader_waiting_at_the_gate(tmp_path: Path) -> None:
    """A make that is stopped while its modpost (here cat) waits at the gate
    ends at once, and leaves no process behind blocked on a removed pipe."""
    kdir, mod = fake_kernel(tmp_path)
    (kdir / "Makefile").write_text(TRAPPING_KBUILD)
    argv = ["build", str(mod)]
    early.replay(argv)
    _finish(_build(mod, kdir), mod)
    early.replay(argv)  # make starts again, and nobody serves the gate
    gate = mod / GATE_DIR
    reader = gate / "begin"
    assert until(lambda: any(c.startswith("cat ") for c in naming(reader).values()),
                 10), "make never reached the gate"
    start = time.monotonic()
    early.abandon()
    assert time.monotonic() - start < 5
    assert until(lambda: not naming(gate), 5), f"left running: {naming(gate)}"
    assert not gate.exists() and not (mod / "modpost-read").exists()


def test_removing_the_gate_strands_no_reader(tmp_path: Path) -> None:
    """A process that opened a gate pipe for reading, or waits to (a
    command whose make was stopped before anyone served the gate), ends
    when the gate is removed, with nothing read."""
    import subprocess

    gate = tmp_path / GATE_DIR
    early.make_gate(str(gate))
    readers = [subprocess.Popen(["cat", str(gate / name)], stdout=subprocess.PIPE)
               for name in ("begin", "end")]
    assert until(lambda: all(_waiting_in_open(r.pid) for r in readers), 10)
    early.remove_gate(str(gate))
    try:
        for r in readers:
            out, _ = r.communicate(timeout=5)
            assert r.returncode == 0 and out == b""
    finally:
        for r in readers:
            r.kill()
            r.wait()
    assert not gate.exists()


def _waiting_in_open(pid: int) -> bool:
    """Whether process ``pid`` waits in open(2) for a FIFO's other end."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read() == "wait_for_partner"
    except OSError:
        return False
