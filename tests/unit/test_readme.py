"""README.md against the parser: each synopsis names exactly the flags its
command has, and every example command line parses, so they cannot drift."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from klpsym.cli.main import build_parser

README = Path(__file__).parents[2] / "README.md"


def _blocks() -> list[list[str]]:
    return [b.splitlines() for b in re.findall(r"^```[a-z]*\n(.*?)^```", README.read_text(),
                                                re.S | re.M)]


def _synopses() -> dict[str, str]:
    """command -> its synopsis (a code block starting 'klpsym COMMAND ' whose
    next lines are continuation lines)."""
    out = {}
    for block in _blocks():
        if (len(block) > 1 and block[0].startswith("klpsym ")
                and all(line.startswith(" ") for line in block[1:])):
            out[block[0].split()[1]] = " ".join(block)
    return out


def _flags(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {s for a in sub._actions for s in a.option_strings} - {"-h", "--help"}


@pytest.mark.parametrize("command", ["convert", "build", "check", "inspect"])
def test_synopsis_names_every_flag(command: str) -> None:
    synopsis = _synopses().get(command)
    assert synopsis is not None, f"README has no synopsis of klpsym {command}"
    named = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", synopsis))
    parser = _flags(command)
    # a flag and its long form: the synopsis names one of them
    aliases = {"-o": "--output", "-j": "--jobs", "-v": "--verbose"}
    named |= {aliases[f] for f in named if f in aliases}
    named |= {k for k, v in aliases.items() if v in named}
    assert named - parser == set(), f"{command}: the README names flags it does not have"
    assert parser - named == set(), f"{command}: the README's synopsis misses them"


def _examples() -> list[list[str]]:
    """Every command line in the README's code blocks (not the synopses)."""
    synopses = set(_synopses().values())
    out = []
    for block in _blocks():
        if " ".join(block) in synopses:
            continue
        text = "\n".join(block).replace("\\\n", " ")
        for line in text.splitlines():
            line = re.sub(r"^\$ |^sudo ", "", line.strip())
            if not line.startswith("klpsym ") or "=" in line.split()[0]:
                continue
            words = shlex.split(line, comments=True)
            out.append(words[1:])
    return out


def test_every_example_parses() -> None:
    examples = _examples()
    assert len(examples) >= 10
    for argv in examples:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                build_parser().parse_args(argv)
            except SystemExit as e:
                pytest.fail(f"README example klpsym {shlex.join(argv)}: {err.getvalue()} ({e})")
