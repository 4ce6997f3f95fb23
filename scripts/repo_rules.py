#!/usr/bin/env python3
"""Rules of the repository that no linter knows, checked by scripts/test.

* Tests outside ``tests/unit`` never hold a Debian kernel ABI string as a
  literal (``6.1.0-57-amd64``, ``6.12.118+deb13-amd64``, ...): Debian's archive
  keeps only each suite's current kernel and moves every few weeks, so a test
  on a real kernel takes release, CRCs and addresses from the kernel the lab
  provisioned.  Unit tests run on synthetic data and may keep fixed values.
* Commit subjects since RULES_BASE are ``area: summary``, at most 72
  characters (the why and the figures go in the body).

Usage: scripts/repo_rules.py [--repo DIR]   (exit 1 and one line per breach)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

#: The last commit before the commit-subject rule (2026-12-04).
RULES_BASE = "67625ba"
SUBJECT_MAX = 72
SUBJECT = re.compile(r"^\w[\w./,+-]*(?: [\w./,+-]+)?: \S")
# Debian's kernel ABI names: 6.1.0-57-amd64 (and -cloud-amd64, -rt-amd64, ...),
# 6.12.118+deb13-amd64, 7.2.13+deb14-amd64, the packages' 6.1.192-3 is left
# alone (it is not unique to Debian's kernels).
ABI = re.compile(r"\b\d+\.\d+\.0-\d+-(?:cloud-|rt-)?(?:amd64|arm64|686|686-pae)\b"
                 r"|\b\d+\.\d+\.\d+\+deb\d+(?:-[a-z0-9]+)*")
SUFFIXES = {".py", ".sh", ".c", ".h", ""}


def abi_literals(tests: Path) -> list[str]:
    found = []
    for path in sorted(tests.rglob("*")):
        rel = path.relative_to(tests)
        if not path.is_file() or rel.parts[0] == "unit" or path.suffix not in SUFFIXES:
            continue
        if "modules" == rel.parts[0] and path.suffix not in {".py", ".sh"}:
            continue  # module sources
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            m = ABI.search(line)
            if m:
                found.append(f"{path}:{n}: Debian kernel ABI {m.group(0)!r} as a literal outside "
                             "tests/unit; take it from the provisioned kernel")
    return found


def bad_subjects(repo: Path, base: str = RULES_BASE) -> list[str]:
    try:
        out = subprocess.run(["git", "-C", str(repo), "log", "--no-merges", "--format=%h %s",
                              f"{base}..HEAD"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        return [f"cannot list the commits since {base}: {e}"]
    found = []
    for line in out.splitlines():
        sha, _, subject = line.partition(" ")
        if len(subject) > SUBJECT_MAX:
            found.append(f"commit {sha}: subject is {len(subject)} characters (at most "
                         f"{SUBJECT_MAX}): {subject[:60]}...")
        elif not SUBJECT.match(subject):
            found.append(f"commit {sha}: subject is not 'area: summary': {subject}")
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args()
    breaches = abi_literals(args.repo / "tests")
    if (args.repo / ".git").exists():
        breaches += bad_subjects(args.repo)
    for b in breaches:
        print(f"repo_rules: {b}", file=sys.stderr)
    print(f"repo_rules: {len(breaches)} breaches")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
