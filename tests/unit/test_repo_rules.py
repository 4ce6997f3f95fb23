"""scripts/repo_rules.py: the repository rules scripts/test enforces can fail."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "repo_rules.py"


def rules() -> ModuleType:
    spec = importlib.util.spec_from_file_location("repo_rules", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_abi_literal_outside_unit_is_a_breach(tmp_path: Path) -> None:
    r = rules()
    for tier in ("unit", "real", "vm"):
        (tmp_path / tier).mkdir()
    (tmp_path / "unit" / "test_a.py").write_text('RELEASE = "6.1.0-56-amd64"\n')
    (tmp_path / "real" / "test_b.py").write_text('ok = f"{kernel.release}"\n')
    assert r.abi_literals(tmp_path) == []
    for text in ('x = "6.1.0-57-amd64"\n', 'x = "6.12.118+deb13-amd64"\n',
                 "# 7.2.13+deb14-cloud-amd64\n", 'x = "6.1.0-57-rt-amd64"\n'):
        (tmp_path / "vm" / "test_c.py").write_text(text)
        (found,) = r.abi_literals(tmp_path)
        assert found.startswith(f"{tmp_path}/vm/test_c.py:1: Debian kernel ABI"), found


def test_commit_subjects(tmp_path: Path) -> None:
    r = rules()

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "base")
    base = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    for subject in ("lab: prune old kernels", "tests/real: take the release from the kernel",
                    "README: the tiers",
                    "kallsyms, symvers: one reader"):
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
            "-m", subject)
    assert r.bad_subjects(tmp_path, base) == []
    for subject in ("fix things", "lab: " + "x" * 70):
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
            "-m", subject)
    found = r.bad_subjects(tmp_path, base)
    assert len(found) == 2 and "at most 72" in found[0] and "'area: summary'" in found[1], found
