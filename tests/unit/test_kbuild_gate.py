"""klpsym.kbuild.gate: modpost's -i files read through the gate, by a
stand-in for modpost that reads them as 6.1's read_text_file() does (open,
fstat, read st_size bytes), in command-line order or last first."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from klpsym.kbuild.gate import GATE_DIR, ModpostGate

# modpost's read_dump() of each -i file in turn: what it read from each.
READER = r"""
import json, os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    data = b""
    while len(data) < size:
        data += os.read(fd, size - len(data))
    os.close(fd)
    print(json.dumps(data.decode()))
"""


def read_like_modpost(files: list[Path]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", READER, *map(str, files)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("last_first", [False, True])
def test_modpost_reads_what_produce_wrote(tmp_path: Path, last_first: bool) -> None:
    calls: list[int] = []

    def produce() -> str:
        calls.append(1)
        return "0x00000000\tfoo\tvmlinux\tEXPORT_SYMBOL_GPL\t\n"

    with ModpostGate(tmp_path, produce) as gate:
        files = gate.files[::-1] if last_first else gate.files
        got = read_like_modpost(files)
        assert gate.opened
    assert got == ["", "", "0x00000000\tfoo\tvmlinux\tEXPORT_SYMBOL_GPL\t\n", "", ""]
    assert calls == [1]
    assert not (tmp_path / GATE_DIR).exists()


def test_modpost_waits_for_produce(tmp_path: Path) -> None:
    """The symvers is complete before modpost reads it, however long
    produce() takes."""
    release = threading.Event()

    def produce() -> str:
        release.wait(30)
        return "late\n"

    with ModpostGate(tmp_path, produce) as gate:
        reader = subprocess.Popen([sys.executable, "-c", READER, *map(str, gate.files)],
                                  stdout=subprocess.PIPE, text=True)
        with pytest.raises(subprocess.TimeoutExpired):
            reader.wait(0.5)  # held at the gate
        release.set()
        out, _ = reader.communicate(timeout=60)
    assert [json.loads(line) for line in out.splitlines()] == ["", "", "late\n", "", ""]


def test_no_modpost_run_closes_without_produce(tmp_path: Path) -> None:
    """make ended without modpost (nothing changed, a compile error): close()
    releases the waiting threads and removes the dir; produce never runs."""
    def produce() -> str:
        raise AssertionError("produce ran")

    gate = ModpostGate(tmp_path, produce).__enter__()
    threads = list(gate._threads)
    gate.close()
    assert not any(t.is_alive() for t in threads)
    assert not gate.opened and gate.error is None
    assert not (tmp_path / GATE_DIR).exists()


def test_a_failing_produce_gives_modpost_an_empty_file(tmp_path: Path) -> None:
    def produce() -> str:
        raise ValueError("no")

    with ModpostGate(tmp_path, produce) as gate:
        assert read_like_modpost(gate.files) == ["", "", "", "", ""]
    assert isinstance(gate.error, ValueError)


def test_a_killed_runs_leftovers_are_replaced(tmp_path: Path) -> None:
    (tmp_path / GATE_DIR).mkdir()
    (tmp_path / GATE_DIR / "begin").write_text("stale")
    with ModpostGate(tmp_path, lambda: "x\n") as gate:
        assert gate.begin.is_fifo() and gate.end.is_fifo()
        assert gate.symvers.read_text() == ""
        assert read_like_modpost(gate.files)[2] == "x\n"


FAKE_KBUILD = """\
modules:
\t@for f in $$KBUILD_EXTRA_SYMBOLS; do cat $$f; done > $(M)/modpost-read
"""


def fake_kernel(tmp_path: Path, release: str = "6.1.0-test") -> tuple[Path, Path]:
    """A kbuild dir whose 'make modules' reads KBUILD_EXTRA_SYMBOLS as
    modpost does (in order, to the end), and a module dir."""
    kdir, mod = tmp_path / "kdir", tmp_path / "mod"
    (kdir / "include/generated").mkdir(parents=True)
    (kdir / "include/generated/utsrelease.h").write_text(f'#define UTS_RELEASE "{release}"\n')
    (kdir / "Makefile").write_text(FAKE_KBUILD)
    mod.mkdir()
    (mod / "Kbuild").write_text("obj-m := m.o\n")
    return kdir, mod


def test_started_early_make_reads_the_symvers_through_the_gate(tmp_path: Path) -> None:
    from klpsym.kbuild.make import start_early

    kdir, mod = fake_kernel(tmp_path)
    run = start_early(mod, kdir, None, [], [], {"KLPSYM_METHOD": "klp"})
    assert run is not None and not run.nsdeps and run.output is None
    run.attach(lambda: "0x00000000\tfoo\tvmlinux\tEXPORT_SYMBOL_GPL\t\n")
    assert run.wait() == 0 and run.gated
    assert (mod / "modpost-read").read_text() == "0x00000000\tfoo\tvmlinux\tEXPORT_SYMBOL_GPL\t\n"
    assert not (mod / GATE_DIR).exists()


def test_no_early_start_when_the_arguments_need_the_kernel_tables(tmp_path: Path) -> None:
    """start_early leaves every mistake to the full path (which says it
    before make runs): nothing is started."""
    from klpsym.kbuild.make import start_early

    kdir, mod = fake_kernel(tmp_path, "6.1.0-test")
    assert start_early(mod, kdir, None, ["M=/elsewhere"], [], {}) is None
    assert start_early(mod, kdir, None, ["MO=/out"], [], {}) is None  # no MO= before 6.13
    assert start_early(mod, tmp_path / "nokdir", None, [], [], {}) is None
    assert start_early(tmp_path / "nomod", kdir, None, [], [], {}) is None
    assert start_early(mod, kdir, "6.2.0-other", [], [], {}) is None
    assert start_early(mod, kdir, None, [], [tmp_path / "missing.symvers"], {}) is None
    assert not (mod / GATE_DIR).exists() and not (mod / "modpost-read").exists()


def test_early_release_reads_as_read_kernel_version(tmp_path: Path) -> None:
    from klpsym.kbuild.make import _release
    from klpsym.kernel.version import read_kernel_version

    kdir, _ = fake_kernel(tmp_path, "7.2.13+deb14-amd64")
    full = read_kernel_version(kdir)
    assert _release(kdir) == ((full.major, full.minor, 0), full.release)
    (kdir / "include/generated/utsrelease.h").unlink()
    (kdir / "include/config").mkdir()
    (kdir / "include/config/kernel.release").write_text("6.13.2\n")
    full = read_kernel_version(kdir)
    assert _release(kdir) == ((full.major, full.minor, 0), full.release) == ((6, 13, 0),
                                                                              "6.13.2")


def test_stamp_holds_while_inputs_and_outputs_stay(tmp_path: Path) -> None:
    """kbuild.stamp: the recorded report comes back for the same command
    line and files, and not once any of them changed."""
    import os

    from klpsym.kbuild import stamp

    objdir, kallsyms = tmp_path / "m", tmp_path / "kallsyms"
    objdir.mkdir()
    kallsyms.write_text("ffffffff81000000 T _stext\n")
    (objdir / "modules.order").write_text("a.o\nb.o\n")
    for name in ("a.ko", "b.ko", "Module.symvers"):
        (objdir / name).write_bytes(b"x")
    argv = ["build", str(objdir), "--kallsyms", str(kallsyms)]
    key = stamp.inputs(argv, [kallsyms, None])
    assert stamp.recorded_report(objdir, key) is None  # nothing recorded yet
    stamp.save(objdir, key, "the report\n")
    assert stamp.recorded_report(objdir, stamp.inputs(argv, [kallsyms])) == "the report\n"
    assert stamp.recorded_report(objdir, stamp.inputs([*argv, "--no-guard"], [kallsyms])) is None
    (objdir / "b.ko").write_bytes(b"y")  # relinked by kbuild
    assert stamp.recorded_report(objdir, key) is None
    stamp.save(objdir, key, "again\n")
    assert stamp.recorded_report(objdir, key) == "again\n"
    os.utime(kallsyms, ns=(1, 1))  # another kallsyms copy
    assert stamp.recorded_report(objdir, stamp.inputs(argv, [kallsyms])) is None
    (objdir / "a.ko").unlink()
    stamp.save(objdir, key, "no")  # not recorded; the old record no longer holds
    assert stamp.recorded_report(objdir, key) is None


def test_stamp_guesses_whether_make_will_build(tmp_path: Path) -> None:
    import os

    from klpsym.kbuild import stamp

    d = tmp_path / "m"
    (d / "src").mkdir(parents=True)
    (d / "src/a.c").write_text("int a;\n")
    (d / "Kbuild").write_text("obj-m := a.o\n")
    (d / "modules.order").write_text("a.o\n")
    (d / "a.ko").write_bytes(b"x")
    (d / "Module.symvers").write_bytes(b"")
    key = stamp.inputs(["build"], [])
    assert not stamp.likely_current(d, d, key)  # no record yet
    stamp.save(d, key, "r\n")
    old = os.stat(d / stamp.STAMP).st_mtime_ns - 10**9
    for f in (d / "src/a.c", d / "Kbuild"):
        os.utime(f, ns=(old, old))
    assert stamp.likely_current(d, d, key)
    os.utime(d / "src/a.c", ns=(old + 2 * 10**9, old + 2 * 10**9))  # edited since
    assert not stamp.likely_current(d, d, key)
