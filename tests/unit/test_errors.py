"""The two error channels: bad input (a KlpsymError: one line, exit 2, the
inputs it names shown as the command line's options) and klpsym's own bugs
(an InternalError: one line saying so, exit 70, a traceback only when asked)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from elfbuilder import SYNTH_RELEASE, simple_module
from klpsym.cli.main import EXIT_BUG, EXIT_ERROR, main, message
from klpsym.elf import ElfFile
from klpsym.errors import InternalError, KernelSourceError, KlpsymError, param
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.kernel.symvers import Export, Symvers
from klpsym.kernel.target import TargetKernel
from klpsym.kernel.version import KernelVersion


def _target() -> TargetKernel:
    symvers = Symvers({n: Export(n, None, "vmlinux", "EXPORT_SYMBOL_GPL", "")
                       for n in ("_printk", "klp_enable_patch")}, sources=["test"])
    return TargetKernel(
        version=KernelVersion.parse(SYNTH_RELEASE), symvers=symvers,
        kallsyms_source="test kallsyms",
        config=KernelConfig.from_text("CONFIG_LIVEPATCH=y\nCONFIG_KALLSYMS_ALL=y\n"),
        _kallsyms=KallsymsTable.from_rows([(0xFFFFFFFF81000000, "T", "_stext"),
                                           (0xFFFFFFFF81172300, "t", "show_state")], "test"),
    )


def test_an_internal_error_is_not_bad_input() -> None:
    # Code that turns bad input into a verdict or exit 2 catches KlpsymError:
    # a bug must get through it.
    assert not issubclass(InternalError, KlpsymError)
    assert EXIT_BUG not in (0, 1, EXIT_ERROR)


def _failing_self_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes]:
    """A convert whose check of its own output finds a changed relocation."""
    monkeypatch.setattr("klpsym.cli.convert.target_from_args", lambda args: _target())
    monkeypatch.setattr("klpsym.klp.convert.relocation_changes",
                        lambda before, after: [".text: a relocation moved"])
    src = tmp_path / "m.ko"
    data = simple_module(("show_state",)).build()
    src.write_bytes(data)
    return src, data


def test_a_failed_self_check_is_reported_as_a_bug(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KLPSYM_DEBUG", raising=False)
    src, data = _failing_self_check(tmp_path, monkeypatch)
    out = tmp_path / "out.ko"
    assert main(["convert", str(src), "-o", str(out)]) == EXIT_BUG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"klpsym: internal error: {src}: the converted module failed "
                          "validation (.text: a relocation moved); nothing was written")
    assert "a bug in klpsym" in err and "please report it" in err and "KLPSYM_DEBUG=1" in err
    assert not out.exists() and src.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["m.ko"]  # no temporary file left


def test_klpsym_debug_adds_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPSYM_DEBUG", "1")
    src, _ = _failing_self_check(tmp_path, monkeypatch)
    assert main(["convert", str(src), "--in-place"]) == EXIT_BUG
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("Traceback") and "check_output" in "\n".join(err)
    assert err[-1].startswith("klpsym: internal error: ")


def test_overlapping_writer_output_is_an_internal_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    elf = ElfFile.from_bytes(simple_module(("show_state",)).build())
    monkeypatch.setattr("klpsym.elf.writer.layout",
                        lambda elf: ([(0, b"ab"), (1, b"cd")], 3))
    with pytest.raises(InternalError, match="overlapping output at 0x1"):
        elf.write_to(io.BytesIO())


def test_lower_layers_name_inputs_the_cli_names_options() -> None:
    e = KernelSourceError(f"m: no such file ({param('system_map')}); or pass {param('kernel_dir')}")
    assert str(e) == "m: no such file (system_map=); or pass kernel_dir="
    assert message(e) == "m: no such file (--system-map); or pass --kernel-dir"
    assert "--" not in str(KernelSourceError(f"pass {param('kallsyms')}"))


def test_the_cli_shows_its_option_for_a_lower_layer_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "System.map"
    assert main(["addr", "--system-map", str(missing), "schedule"]) == EXIT_ERROR
    assert capsys.readouterr().err == f"klpsym: error: {missing}: no such file (--system-map)\n"


def test_the_fuzzer_counts_an_internal_error_as_a_finding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """By klpsym's exit code for a bug, not by the words of the line."""
    from tests.unit.fuzz.harness import Fuzzer

    fz = Fuzzer(tmp_path, seed=0, real=False, targets=["convert"])
    monkeypatch.setattr("klpsym.klp.convert.relocation_changes",
                        lambda before, after: ["a relocation moved"])
    found = [f for data in fz.seeds[:12] for f in fz.check(data)]
    assert found and {f.kind for f in found} == {"internal-error"}
    assert all("klpsym: internal error: " in f.detail for f in found)
