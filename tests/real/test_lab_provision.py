"""Provisioning a real Debian kernel and building a module against it."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from klpsym.errors import LabError
from klpsym.lab.build import BuildError, build_modules
from klpsym.lab.provision import Kernel, provision
from klpsym.lab.vmlinux import pvh_entry

HELLO = """\
#include <linux/module.h>
extern unsigned long kallsyms_lookup_name(const char *name);
static int __init hello_init(void)
{
	pr_info("hello %lx\\n", kallsyms_lookup_name("jiffies"));
	return 0;
}
static void __exit hello_exit(void) {}
module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
"""


def test_provision_is_idempotent(bookworm: Kernel) -> None:
    start = time.monotonic()
    again = provision("bookworm", bookworm.home.parent.parent.parent)
    assert time.monotonic() - start < 2.0
    assert again == bookworm


def test_tree_layout(bookworm: Kernel) -> None:
    k = bookworm
    assert k.suite == "bookworm"
    assert k.release.endswith("-amd64")
    assert k.package_version.startswith(k.release.split("-")[0].rsplit(".", 1)[0])
    for path in (k.vmlinuz, k.vmlinux, k.config, k.system_map):
        assert path.is_file(), path
    assert (k.kernel_dir / "Module.symvers").stat().st_size > 100_000
    assert (k.kernel_dir / ".config").is_file()
    assert (k.kernel_dir / "include" / "config" / "kernel.release").is_file()
    assert (k.modules_dir / "modules.dep").is_file()
    assert any(k.modules_dir.joinpath("kernel").rglob("*.ko"))
    # No symlink in the tree may point outside it (Debian's are absolute to /usr/src).
    for link in (
        k.modules_dir / "build",
        k.modules_dir / "source",
        k.kernel_dir / "scripts",
        k.kernel_dir / "tools",
    ):
        assert link.is_symlink() and not str(link.readlink()).startswith("/")
        assert link.resolve().is_dir()
        assert link.resolve().is_relative_to(k.root)
    assert "/usr/src" not in (k.kernel_dir / "Makefile").read_text()


def test_vmlinux_is_elf_with_pvh_note(bookworm: Kernel) -> None:
    with bookworm.vmlinux.open("rb") as f:
        assert f.read(4) == b"\x7fELF"
    entry = pvh_entry(bookworm.vmlinux)
    assert entry is not None and 0 < entry < 1 << 32  # a physical 32-bit entry


def test_unknown_suite_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="cannot provision Debian 'no-such-suite'"):
        provision("no-such-suite", tmp_path)


def test_build_module(bookworm: Kernel, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.c").write_text(HELLO)
    (src / "Kbuild").write_text("obj-m := hello.o\n")
    kos = build_modules(bookworm, src, tmp_path / "out")
    assert kos == [tmp_path / "out" / "hello.ko"]
    assert kos[0].read_bytes()[:4] == b"\x7fELF"
    assert sorted(p.name for p in src.iterdir()) == ["Kbuild", "hello.c"]  # source stays clean
    assert f"vermagic={bookworm.release} ".encode() in kos[0].read_bytes()


def test_build_error_is_one_line(bookworm: Kernel, tmp_path: Path) -> None:
    (tmp_path / "bad.c").write_text("int x = ;\n")
    (tmp_path / "Kbuild").write_text("obj-m := bad.o\n")
    with pytest.raises(BuildError) as err:
        build_modules(bookworm, tmp_path)
    assert "\n" not in str(err.value)
    assert "bad.c:1" in str(err.value) and "error" in str(err.value)
    assert "Error" in err.value.log


def kernel_debs(kernel: Kernel) -> dict[str, Path]:
    """The cached .deb of each of ``kernel``'s packages (its manifest names them),
    whatever other suites or older kernels the shared debs dir holds."""
    real_debs = kernel.home.parent.parent.parent / "debs"
    out = {}
    for pkg in json.loads((kernel.home / "kernel.json").read_text())["packages"]:
        version = pkg["version"].split(":")[-1]  # pool file names drop the epoch
        (out[pkg["package"]],) = real_debs.glob(f"{pkg['package']}_{version}_*.deb")
    return out


def test_failed_provision_leaves_nothing_and_retries(
    bookworm: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash mid-way leaves no kernel behind; a corrupt cached .deb is fetched again."""
    # (not "import klpsym.lab.provision as prov": klpsym.lab re-exports the
    # function provision, which shadows the submodule of the same name)
    prov = importlib.import_module("klpsym.lab.provision")

    # Exactly this kernel's packages; its flavour's headers are the one corrupted.
    debs = tmp_path / "debs"
    debs.mkdir()
    corrupt = None
    for package, deb in kernel_debs(bookworm).items():
        if package == f"linux-headers-{bookworm.release}":
            corrupt = debs / deb.name
            corrupt.write_bytes(b"truncated")  # must be noticed and re-fetched
        else:
            (debs / deb.name).symlink_to(deb)
    assert corrupt is not None

    def boom(vmlinuz: Path, dest: Path) -> Path:
        raise LabError("injected failure")

    monkeypatch.setattr(prov, "extract_vmlinux", boom)
    with pytest.raises(LabError, match="injected failure"):
        provision("bookworm", tmp_path)
    assert corrupt.stat().st_size > 100_000  # re-downloaded and verified
    assert list(prov.kernels_dir(tmp_path, "bookworm").iterdir()) == []  # no half tree, no .tmp

    monkeypatch.undo()
    again = provision("bookworm", tmp_path)
    assert (again.release, again.package_version) == (bookworm.release, bookworm.package_version)
    assert again.home.parent == prov.kernels_dir(tmp_path.resolve(), "bookworm")


def test_two_processes_provisioning_at_once_build_one_tree(bookworm: Kernel,
                                                           tmp_path: Path) -> None:
    """Several test sessions share a cache: two provisions of the same suite
    started together must not both build (the second would replace the first's
    tree under its feet).  The per-suite lock makes the second wait and reuse."""
    prov = importlib.import_module("klpsym.lab.provision")
    debs = tmp_path / "debs"
    debs.mkdir()
    for deb in (bookworm.home.parent.parent.parent / "debs").glob("*.deb"):
        (debs / deb.name).symlink_to(deb)  # no download: only the unpack races
    code = ("import os, sys; from klpsym.lab.provision import provision; "
            "from pathlib import Path; k = provision('bookworm', Path(sys.argv[1]), chroot=False); "
            "print(k.home, os.stat(k.home).st_ino, (k.home / 'complete').read_text().strip())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert outs[0][0] == outs[1][0]  # same tree, same inode, same completion stamp
    kernels = prov.kernels_dir(tmp_path.resolve(), "bookworm")
    assert [h.name for h in kernels.iterdir()] == [bookworm.home.name]  # no .tmp-* left
    assert (tmp_path / "locks" / "bookworm.lock").is_file()


def test_archive_move_is_said_followed_and_pruned(
    bookworm: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache holds an older kernel of the suite (as after Debian's archive
    moved on): provisioning says which kernel it chose and which older one the
    cache holds, builds the archive's current one, and says nothing the second
    time; prune removes the older kernel, trees of an older layout and .debs no
    kept kernel needs; when apt cannot answer, a cached kernel is used only
    outside strict mode, and said."""
    prov = importlib.import_module("klpsym.lab.provision")
    debs = tmp_path / "debs"
    debs.mkdir()
    for deb in kernel_debs(bookworm).values():
        (debs / deb.name).symlink_to(deb)
    linked = sorted(p.name for p in debs.iterdir())
    stray_deb = debs / "linux-image-older_1_amd64.deb"
    stray_deb.write_bytes(b"older")
    # An older kernel of the suite, complete as far as the cache can tell.
    old_release, old_version = f"older-{bookworm.release}", "0~older"
    old = prov.kernels_dir(tmp_path.resolve(), "bookworm") / f"{old_release}_{old_version}"
    (old / "root").mkdir(parents=True)
    (old / "kernel.json").write_text(json.dumps(
        {"suite": "bookworm", "release": old_release, "version": old_version, "packages": []}))
    (old / "complete").write_text("then\n")
    layout1 = tmp_path / "kernels" / "bookworm" / "x"
    layout1.mkdir(parents=True)

    said: list[str] = []
    kernel = provision("bookworm", tmp_path, chroot=False, say=said.append)
    assert (kernel.release, kernel.package_version) == (bookworm.release, bookworm.package_version)
    (line,) = said
    assert line.startswith(f"bookworm: provisioning {bookworm.release} "
                           f"({bookworm.package_version}), the archive's current kernel"), line
    assert f"the cache also holds {old_release} ({old_version})" in line
    assert "'klpsym lab prune bookworm'" in line
    said.clear()
    assert provision("bookworm", tmp_path, chroot=False, say=said.append) == kernel
    assert said == []

    dry = prov.prune(["bookworm"], tmp_path, dry_run=True)
    assert set(dry.removed) == {old, layout1.parent, stray_deb.resolve()}, dry.removed
    assert old.is_dir() and stray_deb.exists()
    pruned = prov.prune(["bookworm"], tmp_path)
    assert [k.home for k in pruned.kept] == [kernel.home] and pruned.notes == []
    assert not old.exists() and not layout1.parent.exists() and not stray_deb.exists()
    assert sorted(p.name for p in debs.iterdir()) == linked
    assert kernel.home.is_dir() and (kernel.home / "complete").is_file()

    # The memo of apt's last answer names the older kernel (as it did before
    # the archive moved, while an apt-get update that found nothing new left
    # the lists' stamp as it was): strict mode asks apt, and gets today's.
    memo = tmp_path.resolve() / "resolved-bookworm-amd64.json"
    data = json.loads(memo.read_text())
    memo.write_text(json.dumps({**data, "release": old_release, "version": old_version}))
    (old / "root").mkdir(parents=True)
    (old / "kernel.json").write_text(json.dumps(
        {"suite": "bookworm", "release": old_release, "version": old_version, "packages": []}))
    (old / "complete").write_text("then\n")
    assert provision("bookworm", tmp_path, chroot=False, strict=False).release == old_release
    assert provision("bookworm", tmp_path, chroot=False, strict=True) == kernel

    def apt_down(*args: object, **kwargs: object) -> object:
        raise LabError("apt is down")

    monkeypatch.setattr(prov, "_current", apt_down)
    shutil.rmtree(old)
    assert provision("bookworm", tmp_path, chroot=False, strict=False, say=said.append) == kernel
    assert said == [f"bookworm: apt could not say which kernel is current (apt is down);"
                    f" using the cached {kernel.label}"]
    with pytest.raises(LabError, match=r"apt is down; strict mode \(\$KLPSYM_LAB_STRICT=1\) "
                                       r"does not fall back"):
        provision("bookworm", tmp_path, chroot=False, strict=True)
