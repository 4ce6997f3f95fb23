"""The lab's second flavour of a suite (manifest, cache, prune's choice) and
its machine to install kernel packages in (klpsym.lab.machine), on
synthetic cache trees: no apt, no root."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from klpsym.errors import LabError
from klpsym.lab.machine import enter_command, foreign_depends, kernel_debs, upper
from klpsym.lab.staging import MARKER
from klpsym.lab.store import DEFAULT_FLAVOUR, MANIFEST, Kernel, cached_kernels, load


def _home(kernels: Path, release: str, flavour: str | None, age: float = 0.0) -> Path:
    home = kernels / f"{release}_1.0-1"
    (home / "root").mkdir(parents=True)
    data: dict[str, object] = {"suite": "bookworm", "release": release, "version": "1.0-1",
                               "packages": [{"package": f"linux-image-{release}",
                                             "version": "1.0-1", "sha256": ""},
                                            {"package": "linux-kbuild-9.9",
                                             "version": "1:1.0-1", "sha256": ""}]}
    if flavour is not None:
        data["flavour"] = flavour
    (home / MANIFEST).write_text(json.dumps(data))
    (home / MARKER).write_text("done\n")
    stamp = time.time() - age
    os.utime(home / MARKER, (stamp, stamp))
    return home


def test_manifest_names_the_flavour_and_old_ones_are_amd64(tmp_path: Path) -> None:
    old = load(_home(tmp_path, "9.9.0-1-amd64", None))
    cloud = load(_home(tmp_path, "9.9.0-1-cloud-amd64", "cloud-amd64"))
    assert old is not None and old.flavour == DEFAULT_FLAVOUR == "amd64"
    assert cloud is not None and cloud.flavour == "cloud-amd64"


def test_cached_kernels_keep_flavours_apart(tmp_path: Path) -> None:
    """A suite's kernels of several flavours share its directory: the
    fallback to a cached kernel must not take another flavour's (the
    newest here), and prune (flavour None) sees them all."""
    _home(tmp_path, "9.9.0-1-amd64", "amd64", age=100)
    _home(tmp_path, "9.9.0-2-amd64", None, age=50)
    _home(tmp_path, "9.9.0-2-cloud-amd64", "cloud-amd64", age=10)
    labels = [k.release for k in cached_kernels(tmp_path)]
    assert labels == ["9.9.0-2-amd64", "9.9.0-1-amd64"]
    assert [k.release for k in cached_kernels(tmp_path, "cloud-amd64")] == [
        "9.9.0-2-cloud-amd64"]
    assert [k.release for k in cached_kernels(tmp_path, None)] == [
        "9.9.0-2-cloud-amd64", "9.9.0-2-amd64", "9.9.0-1-amd64"]


def test_foreign_depends_are_what_the_set_does_not_bring() -> None:
    shown = {
        "linux-image-R": {"Depends": "kmod, linux-base (>= 4.3~), initramfs-tools "
                                     "(>= 0.120+deb8u2) | linux-initramfs-tool"},
        "linux-headers-R": {"Depends": "linux-headers-C (= 1), linux-kbuild-9 (>= 1), "
                                       "linux-compiler-gcc-12-x86"},
        "linux-headers-C": {},
        "linux-kbuild-9": {"Depends": "libc6 (>= 2.34), libelf1 (>= 0.142), kmod"},
    }
    assert foreign_depends(shown, set(shown)) == [
        "initramfs-tools", "kmod", "libc6", "libelf1", "linux-base",
        "linux-compiler-gcc-12-x86"]


def test_kernel_debs_are_the_manifests_packages(tmp_path: Path) -> None:
    home = _home(tmp_path / "kernels", "9.9.0-1-cloud-amd64", "cloud-amd64")
    kernel = load(home)
    assert isinstance(kernel, Kernel)
    debs = tmp_path / "debs"
    debs.mkdir()
    image = debs / "linux-image-9.9.0-1-cloud-amd64_1.0-1_amd64.deb"
    kbuild = debs / "linux-kbuild-9.9_1.0-1_amd64.deb"  # the epoch is not in the name
    for deb in (image, kbuild, debs / "linux-image-9.9.0-1-amd64_1.0-1_amd64.deb"):
        deb.write_bytes(b"!<arch>\n")
    assert kernel_debs(kernel, tmp_path) == [image, kbuild]
    kbuild.unlink()
    with pytest.raises(LabError, match=r"has 0 files of linux-kbuild-9\.9 1:1\.0-1; provision"):
        kernel_debs(kernel, tmp_path)


def test_enter_command_runs_the_script_in_an_overlay(tmp_path: Path) -> None:
    cmd = enter_command(tmp_path / "root", tmp_path / "s", "echo hi")
    assert cmd[:4] == ["unshare", "--mount", "--propagation", "private"]
    script, args = cmd[6], cmd[7:]
    assert args == ["enter", str(tmp_path / "root"), str(upper(tmp_path / "s")),
                    str(tmp_path / "s" / "work"), str(tmp_path / "s" / "merged"), "echo hi"]
    assert 'mount -t overlay klpsym-machine -o "lowerdir=$L,upperdir=$U,workdir=$W" "$M"' \
        in script
    assert 'cp -a "$L/." "$U/"' in script  # without overlayfs: a copy, in the upper dir
    assert script.rstrip().endswith('exec chroot "$M" /bin/sh -c "$5"')


@pytest.mark.parametrize("bad", ["a,b", "a:b"])
def test_enter_command_refuses_paths_overlayfs_cannot_take(tmp_path: Path, bad: str) -> None:
    with pytest.raises(LabError, match="overlayfs cannot take a path with"):
        enter_command(tmp_path / bad, tmp_path / "s", "true")


def test_prune_keeps_the_current_kernel_of_each_flavour(tmp_path: Path) -> None:
    """prune asks which kernel is current per flavour the cache holds: the
    cloud flavour's current kernel stays, each flavour's older one goes.
    (apt is not asked: resolve's memo of today's lists answers.)"""
    from klpsym.lab.provision import prune
    from klpsym.lab.store import kernels_dir

    suite = "nosuchsuite"  # not the host's: a private apt, whose stamp is ours
    kernels = kernels_dir(tmp_path, suite)
    for release in ("9.9.0-1-amd64", "9.9.0-2-amd64"):
        _home(kernels, release, "amd64")
    for release in ("9.9.0-1-cloud-amd64", "9.9.0-2-cloud-amd64"):
        _home(kernels, release, "cloud-amd64")
    stamp = tmp_path / "apt" / suite / "updated"
    stamp.parent.mkdir(parents=True)
    stamp.write_text("now\n")
    for flavour in ("amd64", "cloud-amd64"):
        memo = {"lists_stamp": stamp.stat().st_mtime, "release": f"9.9.0-2-{flavour}",
                "version": "1.0-1"}
        (tmp_path / f"resolved-{suite}-{flavour}.json").write_text(json.dumps(memo))
    out = prune([suite], tmp_path)
    assert sorted(k.release for k in out.kept) == ["9.9.0-2-amd64", "9.9.0-2-cloud-amd64"]
    assert sorted(p.name for p in out.removed) == [
        "9.9.0-1-amd64_1.0-1", "9.9.0-1-cloud-amd64_1.0-1"]
    assert sorted(p.name for p in kernels.iterdir()) == [
        "9.9.0-2-amd64_1.0-1", "9.9.0-2-cloud-amd64_1.0-1"]
