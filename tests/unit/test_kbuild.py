"""klpsym.kbuild pieces that need no kernel: the generated symvers, modules.order,
make argument checks, KBUILD_EXTRA_SYMBOLS plumbing, the CLI's '--' split."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from klpsym.cli.main import build_parser
from klpsym.errors import KbuildError, KlpsymError
from klpsym.kbuild import extra_symvers_text, modules_in_order
from klpsym.kbuild.build import (
    _exported_names,
    _extra_symbols,
    check_make_args,
    extra_symbols_assignment,
    modpost_names,
    output_dir,
)
from klpsym.kernel.symvers import Symvers, parse_symvers
from klpsym.kernel.target import TargetKernel
from klpsym.kernel.version import KernelVersion


def test_extra_symvers_reads_back_as_gpl_vmlinux_exports() -> None:
    text = extra_symvers_text(["kptr_restrict", "kallsyms_lookup_name"])
    assert text.splitlines() == [
        "0x00000000\tkallsyms_lookup_name\tvmlinux\tEXPORT_SYMBOL_GPL\t",
        "0x00000000\tkptr_restrict\tvmlinux\tEXPORT_SYMBOL_GPL\t",
    ]
    sv = parse_symvers(text, "gen")
    for name in ("kallsyms_lookup_name", "kptr_restrict"):
        e = sv.get(name)
        assert e is not None and e.from_vmlinux and e.gpl_only and e.namespace == ""
    assert extra_symvers_text([]) == ""


@pytest.mark.parametrize("name, names", [
    ("count.4", ("count.4", "count")),  # gcc's renamed static: modpost looks up "count"
    ("x.12.34", ("x.12.34", "x")),  # digits up to another dot
    ("param_set_uint.0", ("param_set_uint.0", "param_set_uint")),
    ("foo.constprop.0", ("foo.constprop.0",)),  # no digits right after the first dot
    ("foo.12abc", ("foo.12abc",)),  # digits not up to a dot or the end
    ("foo.", ("foo.",)),
    (".hidden.1", (".hidden.1",)),  # nothing before the dot: remove_dot's "n &&"
    ("kallsyms_lookup_name", ("kallsyms_lookup_name",)),
])
def test_modpost_names_follow_remove_dot(name: str, names: tuple[str, ...]) -> None:
    """The generated symvers holds each name as modpost's remove_dot() may
    see the module's reference: a livepatch's count.N is "count" to 6.1's
    modpost, which otherwise fails with '"count" [M.ko] undefined!'."""
    assert modpost_names(name) == names


def test_modules_in_order_layouts(tmp_path: Path) -> None:
    (tmp_path / "modules.order").write_text(
        f"{tmp_path}/a.ko\nsub/b.o\nkernel/c.ko\n{tmp_path}/a.ko\n")
    assert modules_in_order(tmp_path) == [tmp_path / "a.o", tmp_path / "sub/b.o",
                                          tmp_path / "c.o"]


def test_modules_in_order_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(KbuildError, match="no modules.order"):
        modules_in_order(tmp_path)
    (tmp_path / "modules.order").write_text("")
    with pytest.raises(KbuildError, match="lists no module"):
        modules_in_order(tmp_path)


def _target(release: str) -> TargetKernel:
    return TargetKernel(KernelVersion.parse(release), Symvers(), "test")


@pytest.mark.parametrize("arg", ["M=/x", "SUBDIRS=/x", "KBUILD_EXTMOD=/x"])
def test_make_args_cannot_move_the_module_dir(arg: str) -> None:
    with pytest.raises(KbuildError, match="DIR argument"):
        check_make_args([arg], _target("6.1.0-56-amd64"))


@pytest.mark.parametrize("release", ["6.1.0-56-amd64", "6.12.48+deb13-amd64", "6.12.99"])
def test_mo_is_refused_before_613_and_the_release_is_named(release: str) -> None:
    with pytest.raises(KbuildError, match=rf"{re.escape(release)}'s kbuild has no MO= .*6\.13"):
        check_make_args(["MO=/out"], _target(release))


@pytest.mark.parametrize("release", ["6.13.0", "7.2.13+deb14-amd64"])
def test_mo_is_accepted_from_613(release: str) -> None:
    check_make_args(["MO=/out", "V=1"], _target(release))
    with pytest.raises(KbuildError, match="as MO=DIR"):
        check_make_args(["KBUILD_EXTMOD_OUTPUT=/out"], _target(release))


def test_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, t = tmp_path / "src", _target("7.2.13+deb14-amd64")
    src.mkdir()
    monkeypatch.chdir(tmp_path)
    # relative to the current dir (not KDIR, make's -C), created; the last MO= wins
    args, out = output_dir(["MO=/nowhere", "V=1", "MO=build/o"], src, t, {})
    assert args == ["V=1"] and out == tmp_path / "build/o" and out.is_dir()
    # none, empty, or the source dir itself: kbuild writes into the source dir
    assert output_dir(["V=1"], src, t, {}) == (["V=1"], None)
    assert output_dir(["MO="], src, t, {}) == ([], None)
    assert output_dir([f"MO={src}/"], src, t, {}) == ([], None)
    # kbuild's environment variable, which 6.13+ reads when MO= is absent
    assert output_dir([], src, t, {"KBUILD_EXTMOD_OUTPUT": "env"}) == ([], tmp_path / "env")
    assert output_dir([], src, _target("6.12.48+deb13-amd64"),
                      {"KBUILD_EXTMOD_OUTPUT": "env"}) == ([], None)
    (tmp_path / "file").write_text("")
    with pytest.raises(KbuildError, match="is not a directory"):
        output_dir(["MO=file"], src, t, {})
    (src / "modules.order").write_text("m.o\n")
    with pytest.raises(KbuildError, match=r"earlier build .*modules\.order.* clean"):
        output_dir(["MO=build/o"], src, t, {})


def test_modpost_warn_is_refused() -> None:
    with pytest.raises(KbuildError, match="strict"):
        check_make_args(["KBUILD_MODPOST_WARN=1"], _target("6.1.0"))
    check_make_args(["V=1", "-j3", "EXTRA_CFLAGS=-DX=1"], _target("6.1.0"))


def test_extra_symbols_go_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBUILD_EXTRA_SYMBOLS", "/a/Module.symvers")
    args, env = _extra_symbols(["V=1"], [Path("/g/klpsym.symvers")])
    assert args == ["V=1"]
    assert env["KBUILD_EXTRA_SYMBOLS"] == "/a/Module.symvers /g/klpsym.symvers"
    monkeypatch.delenv("KBUILD_EXTRA_SYMBOLS")
    _, env = _extra_symbols([], [Path("/b"), Path("/g")])
    assert env["KBUILD_EXTRA_SYMBOLS"] == "/b /g"


def test_extra_symbols_extend_a_command_line_value() -> None:
    args, env = _extra_symbols(["KBUILD_EXTRA_SYMBOLS=/u/Module.symvers"], [Path("/g")])
    assert args == ["KBUILD_EXTRA_SYMBOLS=/u/Module.symvers /g"]


def test_exported_names() -> None:
    assert _exported_names(["__ksymtab_foo", "__export_symbol_bar", "baz", "__kstrtab_foo"]) \
        == {"foo", "bar"}


@pytest.mark.parametrize(("argv", "directory", "make_args"), [
    (["build"], ".", []),
    (["build", "d"], "d", []),
    (["build", "--", "V=1"], ".", ["V=1"]),
    (["build", "d", "--kallsyms", "k", "--", "V=1", "--", "-j2"], "d", ["V=1", "--", "-j2"]),
])
def test_cli_make_args_after_dashdash(argv: list[str], directory: str,
                                      make_args: list[str]) -> None:
    ns = build_parser().parse_args(argv)
    assert ns.directory == Path(directory) and ns.make_args == make_args


@pytest.mark.parametrize(("text", "line"), [
    ("obj-m := m.o\nKBUILD_EXTRA_SYMBOLS := /x/Module.symvers\n", 2),
    ("obj-m := m.o\nKBUILD_EXTRA_SYMBOLS=/x\n", 2),
    ("export KBUILD_EXTRA_SYMBOLS = /x\n", 1),
    ("override KBUILD_EXTRA_SYMBOLS ::= /x\n", 1),
    ("\tKBUILD_EXTRA_SYMBOLS != echo /x\n", 1),
    ("obj-m := m.o\nKBUILD_EXTRA_SYMBOLS += /x\n", None),
    ("KBUILD_EXTRA_SYMBOLS ?= /x\n", None),
    ("# KBUILD_EXTRA_SYMBOLS := /x\nMY_KBUILD_EXTRA_SYMBOLS := /x\n", None),
])
def test_extra_symbols_assignment(tmp_path: Path, text: str, line: int | None) -> None:
    (tmp_path / "Makefile").write_text(text)
    found = extra_symbols_assignment(tmp_path)
    if line is None:
        assert found is None
    else:
        assert found is not None and found[:2] == (tmp_path / "Makefile", line)
        assert found[2] == text.splitlines()[line - 1].strip()


def test_extra_symbols_assignment_reads_kbuild_first(tmp_path: Path) -> None:
    # modpost includes Kbuild when there is one, and then never the Makefile
    (tmp_path / "Makefile").write_text("KBUILD_EXTRA_SYMBOLS := /x\n")
    (tmp_path / "Kbuild").write_text("obj-m := m.o\n")
    assert extra_symbols_assignment(tmp_path) is None
    (tmp_path / "Kbuild").write_text("obj-m := m.o\nKBUILD_EXTRA_SYMBOLS := /y\n")
    assert extra_symbols_assignment(tmp_path) == (tmp_path / "Kbuild", 2,
                                                  "KBUILD_EXTRA_SYMBOLS := /y")


def test_cli_kernel_dir_or_release(capsys: pytest.CaptureFixture[str]) -> None:
    ns = build_parser().parse_args(["build", "--kernel-release", "6.1.0-56-amd64"])
    assert ns.kernel_release == "6.1.0-56-amd64" and ns.kernel_dir is None
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["convert", "m.ko", "--in-place", "--kernel-dir", "k",
                                   "--kernel-release", "r"])
    assert exc.value.code == 2
    assert "--kernel-release: not allowed with argument --kernel-dir" in capsys.readouterr().err


def test_chroot_runner_maps_paths_both_ways(tmp_path: Path) -> None:
    from klpsym.kbuild import ChrootRunner

    root = tmp_path / "root"
    (root / "usr/src/kdir").mkdir(parents=True)
    mod = tmp_path / "mod"
    mod.mkdir()
    r = ChrootRunner(root)
    assert r.guest_path(root / "usr/src/kdir") == Path("/usr/src/kdir")  # inside: prefix off
    guest = r.guest_path(mod)
    assert guest == Path("/klpsym/host") / mod.relative_to("/")  # outside: bind-mounted
    assert r.host_path(guest / "x.ko") == mod / "x.ko"
    assert r.host_path(Path("/usr/src/kdir/Makefile")) == root / "usr/src/kdir/Makefile"
    assert r.host_path(Path("x.o")) == Path("x.o")
    gen = tmp_path / "gen" / "klpsym.symvers"
    gen.parent.mkdir()
    gen.write_text("")
    assert r.guest_path(gen) == Path("/klpsym/host") / gen.relative_to("/")
    assert r._binds == [mod, gen.parent]  # files are shared through their directory
    (tmp_path / "modules.order").write_text(f"{guest}/x.ko\n")
    assert modules_in_order(tmp_path, r.host_path) == [mod / "x.o"]


def test_chroot_runner_needs_a_directory(tmp_path: Path) -> None:
    from klpsym.kbuild import ChrootRunner

    with pytest.raises(KbuildError, match="no such directory"):
        ChrootRunner(tmp_path / "nope")


def test_cli_build_method_choices_match_the_library() -> None:
    """cli/build.py spells the --method choices out (so building the parser
    imports no numpy); they must be the library's."""
    from klpsym.cli import build as cli_build
    from klpsym.kbuild.methods import AUTO
    from klpsym.methods.header import METHODS

    assert cli_build.AUTO == AUTO and cli_build.METHODS == METHODS


@pytest.mark.parametrize(("make", "said"), [
    (None, "no such directory"),
    ("", "has neither a Kbuild nor a Makefile"),
])
def test_cli_build_module_dir_is_checked_before_the_kernel(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str | None, said: str) -> None:
    """A wrong module dir is said first, not the missing headers of a kernel
    that was not even needed yet."""
    from klpsym.cli.main import main

    mod = tmp_path / "mod"
    if make is not None:
        mod.mkdir()
    rc = main(["build", str(mod), "--kernel-dir", str(tmp_path / "no-such-kdir")])
    err = capsys.readouterr().err
    assert rc == 2 and said in err and "no-such-kdir" not in err, err


def test_target_exports_with_the_siblings_answers_as_merge() -> None:
    from klpsym.kbuild.build import _WithSiblings

    base = parse_symvers("0x1\ta\tvmlinux\tEXPORT_SYMBOL\t\n"
                         "0x2\tb\tvmlinux\tEXPORT_SYMBOL_GPL\tNS\n", "kernel")
    own = parse_symvers("0x3\tc\t/m/prov\tEXPORT_SYMBOL_GPL\t\n", "own")
    both, merged = _WithSiblings(base, own), base.merge(own)
    both.prefetch(["a", "c", "x"])
    for name in ("a", "b", "c", "x"):
        assert both.get(name) == merged.get(name)
        assert (name in both) == (name in merged)
    assert both.fields() == merged.fields() and both.exports == merged.exports
    assert len(both) == 3 and both.source == merged.source
    clash = parse_symvers("0x4\ta\t/m/other\tEXPORT_SYMBOL\t\n", "own")
    with pytest.raises(KlpsymError, match="a is exported by /m/other"):
        _WithSiblings(base, clash)
