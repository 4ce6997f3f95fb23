"""What a user installs: the licence in the sdist and the wheel, complete
metadata, ``python -m klpsym``, ``--version`` naming the module reader,
bash completion and a man page generated from the parser."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from klpsym.cli.docgen import bash_completion, commands, man_page
from klpsym.cli.main import build_parser

ROOT = Path(__file__).parents[2]


def test_python_dash_m_klpsym() -> None:
    run = subprocess.run([sys.executable, "-m", "klpsym", "--help"], capture_output=True,
                         text=True, check=False, timeout=600)
    assert run.returncode == 0 and run.stdout.startswith("usage: klpsym ")
    run = subprocess.run([sys.executable, "-m", "klpsym", "frobnicate"], capture_output=True,
                         text=True, check=False, timeout=600)
    assert run.returncode == 2


def test_version_names_the_module_reader() -> None:
    from klpsym import __version__
    from klpsym.load.fastread import fast_facts

    run = subprocess.run([sys.executable, "-m", "klpsym", "--version"], capture_output=True,
                         text=True, check=True, timeout=600)
    lines = run.stdout.splitlines()
    assert lines[0] == f"klpsym {__version__}"
    assert lines[1] == f"module reader: Python ({fast_facts.__module__})"
    assert lines[2].startswith("Python 3.")


def _every_flag() -> dict[str, set[str]]:
    """Each command (nested: "lab build") and its option strings, read
    from the parser directly (not through docgen)."""
    import argparse

    out: dict[str, set[str]] = {}

    def walk(prefix: str, p: argparse.ArgumentParser) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    key = f"{prefix} {name}".strip()
                    out[key] = {s for b in sub._actions for s in b.option_strings}
                    walk(key, sub)

    walk("", build_parser())
    return out


def test_completion_and_man_page_cover_every_command_and_flag() -> None:
    flags = _every_flag()
    assert {c.name for c in commands(build_parser())} == set(flags)
    man = man_page(build_parser()).replace("\\-", "-").replace("\\fB", "").replace("\\fR", "")
    for command, opts in flags.items():
        assert re.search(rf"^\.SS {re.escape(command)}$", man, re.M), command
        section = man.split(f".SS {command}\n", 1)[1].split("\n.SS ", 1)[0]
        for flag in opts:
            assert re.search(rf"(^|, ){re.escape(flag)}\b", section, re.M), (command, flag)


def _complete(script: Path, words: list[str]) -> list[str]:
    """What bash completes for ``klpsym WORDS`` (the last word being typed)."""
    line = " ".join(shlex.quote(w) for w in ["klpsym", *words])
    code = (f"source {shlex.quote(str(script))}; COMP_WORDS=({line}); "
            f"COMP_CWORD={len(words)}; _klpsym; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    run = subprocess.run(["bash", "-c", code], capture_output=True, text=True, check=True,
                         timeout=600)
    return run.stdout.split()


def test_bash_completion_completes_every_command_and_flag(tmp_path: Path) -> None:
    script = tmp_path / "klpsym.bash"
    script.write_text(bash_completion(build_parser()))
    flags = _every_flag()
    top = {c for c in flags if " " not in c}
    assert set(_complete(script, [""])) >= top
    for command, opts in flags.items():
        words = command.split()
        assert set(_complete(script, [*words, "-"])) == opts, command
    assert _complete(script, ["build", "--method", ""]) == ["klp", "kallsyms", "kprobe", "auto"]
    (tmp_path / "hello.ko").write_bytes(b"")
    assert str(tmp_path / "hello.ko") in _complete(script, ["convert", str(tmp_path / "hel")])


@pytest.mark.parametrize(("kind", "name"), [("bash", "klpsym.bash-completion"),
                                            ("man", "klpsym.1")])
def test_committed_completion_and_man_page_are_current(kind: str, name: str) -> None:
    made = bash_completion(build_parser()) if kind == "bash" else man_page(build_parser()) + "\n"
    assert (ROOT / "contrib" / name).read_text() == made, (
        f"contrib/{name} is stale: python -m klpsym.cli.docgen {kind} > contrib/{name}")


def test_sdist_and_wheel_ship_the_licence_and_metadata(tmp_path: Path) -> None:
    """Built as pip would (setuptools >= 77, PEP 639: the test extra), from
    the files git tracks."""
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77: run scripts/bootstrap")
    tree = tmp_path / "tree"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for rel in listed:
        src = ROOT / rel
        if src.is_file():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes(src.read_bytes())
    out = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-c",
                            "import setuptools.build_meta as b, sys; "
                            "d = sys.argv[1]; b.build_sdist(d); b.build_wheel(d)",
                            str(out)],
                           cwd=tree, check=False,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    licence = (ROOT / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in licence and "Version 2, June 1991" in licence
    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as t:
        names = t.getnames()
        member = next(n for n in names if n.endswith("/LICENSE"))
        f = t.extractfile(member)
        assert f is not None and f.read().decode() == licence
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        lic = next(n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE"))
        assert z.read(lic).decode() == licence
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA")))
    text = meta.decode()
    assert "License-Expression: GPL-2.0-only" in text and "License-File: LICENSE" in text
    assert "Classifier: Operating System :: POSIX :: Linux" in text
    assert "Programming Language :: C" not in text  # pure Python since the C reader went
    assert wheel.name.endswith("-py3-none-any.whl")
    assert "Classifier: Topic :: System :: Operating System Kernels :: Linux" in text
    assert not re.search(r"^Project-URL:", text, re.M)  # none exist yet: none invented
