"""klpsym.kernel.target.discover: defaults, symbol sources, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from klpsym.cli.main import message
from klpsym.errors import KernelSourceError
from klpsym.kernel.target import TargetKernel, discover
from vmlinux_builder import sample_image

SYMVERS = (
    "0x4c9d28b0\tphys_base\tvmlinux\tEXPORT_SYMBOL\t\n"
    "0x12345678\tinit_uts_ns\tvmlinux\tEXPORT_SYMBOL_GPL\t\n"
)
KALLSYMS = (
    "ffffffff81000000 T _stext\n"
    "ffffffff81001000 t helper\n"
    "ffffffff81002000 t helper\n"
    "ffffffff81003000 T phys_base\n"
)
RELEASE = "6.1.0-99-test"


def make_kdir(root: Path, release: str = RELEASE, *, symvers: bool = True,
              config: bool = True) -> Path:
    kdir = root / "build"
    (kdir / "include" / "generated").mkdir(parents=True)
    (kdir / "include" / "generated" / "utsrelease.h").write_text(
        f'#define UTS_RELEASE "{release}"\n')
    if symvers:
        (kdir / "Module.symvers").write_text(SYMVERS)
    if config:
        (kdir / ".config").write_text("CONFIG_KALLSYMS_ALL=y\nCONFIG_LIVEPATCH=y\n")
    return kdir


def host(tmp_path: Path, **kw: object) -> dict[str, object]:
    """discover() arguments that describe a fake host running RELEASE."""
    proc = tmp_path / "proc_kallsyms"
    proc.write_text(KALLSYMS)
    (tmp_path / "boot").mkdir(exist_ok=True)
    args: dict[str, object] = {"running_release": RELEASE, "proc_kallsyms": proc,
                               "boot_dir": tmp_path / "boot",
                               "modules_root": tmp_path / "lib_modules"}
    args.update(kw)
    return args


def test_running_kernel_defaults(tmp_path: Path) -> None:
    mod_build = tmp_path / "lib_modules" / RELEASE
    mod_build.mkdir(parents=True)
    make_kdir(mod_build)
    t = discover(**host(tmp_path))  # type: ignore[arg-type]
    assert isinstance(t, TargetKernel)
    assert t.release == RELEASE and t.version.as_tuple == (6, 1, 0)
    assert t.kernel_dir == mod_build / "build"
    assert t.symvers.exported_by_vmlinux("phys_base")
    assert t.config is not None and t.config.enabled("KALLSYMS_ALL")
    assert t.livepatch_enabled is True and t.ksym_name_len == 512
    assert t.supports_klp_for_plain_modules
    assert t.kallsyms_source == str(tmp_path / "proc_kallsyms")
    assert t._kallsyms is None  # lazy
    assert t.kallsyms.count("helper") == 2
    assert t.kallsyms is t.kallsyms
    assert RELEASE in t.describe()


def test_other_kernel_needs_a_symbol_source(tmp_path: Path) -> None:
    kdir = make_kdir(tmp_path, "6.12.48+deb13-amd64")
    with pytest.raises(KernelSourceError) as exc:
        discover(kdir, **host(tmp_path))  # type: ignore[arg-type]
    msg = message(exc.value)
    assert msg.startswith(f"{kdir}: is for kernel 6.12.48+deb13-amd64 but this machine runs "
                          f"{RELEASE}")
    assert "--kallsyms" in msg and "--system-map" in msg and "--vmlinux" in msg
    copy = tmp_path / "target_kallsyms"
    copy.write_text(KALLSYMS.replace("helper", "other_helper"))
    t = discover(kdir, kallsyms=copy, **host(tmp_path))  # type: ignore[arg-type]
    assert t.release == "6.12.48+deb13-amd64"
    assert t.kallsyms.count("other_helper") == 2 and "helper" not in t.kallsyms


def test_system_map_and_vmlinux_sources(tmp_path: Path) -> None:
    kdir = make_kdir(tmp_path)
    smap = tmp_path / "System.map"
    smap.write_text("ffffffff81000000 T _stext\nffffffff81000010 t helper\n"
                    "ffffffff81000020 t helper\nffffffff81001000 T _etext\n")
    t = discover(kdir, system_map=smap, **host(tmp_path, running_release="other"))  # type: ignore[arg-type]
    assert t.kallsyms.count("helper") == 2 and t.kallsyms_source == f"System.map {smap}"
    stub = tmp_path / "System.map-stub"
    stub.write_text("ffffffffffffffff B The real System.map is in the "
                    "linux-image-<version>-dbg package\n")
    with pytest.raises(KernelSourceError, match="Debian's placeholder"):  # at discover time
        discover(kdir, system_map=stub, **host(tmp_path))  # type: ignore[arg-type]
    vml = tmp_path / "vmlinux"
    vml.write_bytes(sample_image(RELEASE).to_bytes())
    t = discover(kdir, vmlinux=vml, **host(tmp_path))  # type: ignore[arg-type]
    assert t.kallsyms.count("dup") == 5
    wrong = tmp_path / "vmlinux-other"
    wrong.write_bytes(sample_image("6.1.0-98-other").to_bytes())
    with pytest.raises(KernelSourceError, match=rf"vmlinux is 6\.1\.0-98-other, but the target "
                                                 rf"kernel is {RELEASE}"):
        discover(kdir, vmlinux=wrong, **host(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(KernelSourceError) as shown:
        discover(kdir, kallsyms=smap, vmlinux=vml, **host(tmp_path))  # type: ignore[arg-type]
    assert re.search("--kallsyms and --vmlinux both given", message(shown.value))
    with pytest.raises(KernelSourceError) as shown:
        discover(kdir, system_map=tmp_path / "nope", **host(tmp_path))  # type: ignore[arg-type]
    assert re.search(r"nope: no such file \(--system-map\)", message(shown.value))



OTHER = "6.1.0-98-other"
STUB = "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"
SMAP = ("ffffffff81000000 T _stext\nffffffff81000010 t helper\n"
        "ffffffff81000020 t helper\nffffffff81001000 T _etext\n")


def test_installed_symbol_files_for_another_kernel(tmp_path: Path) -> None:
    """Target not running, no flag: the debug package's files, then a real
    /boot/System.map; else one error naming the -dbg package."""
    kdir = make_kdir(tmp_path, OTHER)
    debug = tmp_path / "debug"
    args = host(tmp_path, debug_dir=debug)
    boot_map = tmp_path / "boot" / f"System.map-{OTHER}"
    dbg_map = debug / "boot" / f"System.map-{OTHER}"
    dbg_vmlinux = debug / "boot" / f"vmlinux-{OTHER}"
    fedora_vmlinux = debug / "lib" / "modules" / OTHER / "vmlinux"

    def fails() -> str:
        with pytest.raises(KernelSourceError) as exc:
            discover(kdir, **args)  # type: ignore[arg-type]
        assert "\n" not in str(exc.value)
        return message(exc.value)

    msg = fails()
    assert msg.startswith(f"{kdir}: is for kernel {OTHER} but this machine runs {RELEASE}")
    assert f"install linux-image-{OTHER}-dbg" in msg and "\n" not in msg
    for path in (dbg_map, dbg_vmlinux, fedora_vmlinux, boot_map):
        assert str(path) in msg
    assert "--kallsyms" in msg and "--system-map" in msg and "--vmlinux" in msg

    boot_map.write_text(STUB)  # Debian's placeholder is not a source
    assert f"linux-image-{OTHER}-dbg" in fails()

    boot_map.write_text(SMAP)  # a real one (Fedora, Ubuntu)
    t = discover(kdir, **args)  # type: ignore[arg-type]
    assert t.kallsyms_source == f"System.map {boot_map}" and t.kallsyms.count("helper") == 2
    assert f"{OTHER} is not the running kernel: symbols from {boot_map}" in t.notes

    fedora_vmlinux.parent.mkdir(parents=True)
    fedora_vmlinux.write_bytes(sample_image(OTHER).to_bytes())
    t = discover(kdir, **args)  # type: ignore[arg-type]
    assert t.kallsyms_source == f"vmlinux {fedora_vmlinux}" and t.kallsyms.count("dup") == 5

    dbg_vmlinux.parent.mkdir(parents=True)
    dbg_vmlinux.write_bytes(sample_image("6.1.0-97-wrong").to_bytes())
    assert "vmlinux is 6.1.0-97-wrong, but the target kernel is " + OTHER in fails()
    dbg_vmlinux.write_bytes(sample_image(OTHER).to_bytes())
    assert discover(kdir, **args).kallsyms_source == f"vmlinux {dbg_vmlinux}"  # type: ignore[arg-type]

    dbg_map.write_text(SMAP.replace("helper", "dbg_helper"))
    t = discover(kdir, **args)  # type: ignore[arg-type]
    assert t.kallsyms_source == f"System.map {dbg_map}" and t.kallsyms.count("dbg_helper") == 2

    # a flag still wins, and the running kernel still uses /proc/kallsyms
    copy = tmp_path / "copy"
    copy.write_text(KALLSYMS)
    assert discover(kdir, kallsyms=copy, **args).kallsyms_source == f"kallsyms {copy}"  # type: ignore[arg-type]
    t = discover(kdir, **host(tmp_path, debug_dir=debug, running_release=OTHER))  # type: ignore[arg-type]
    assert t.kallsyms_source == str(tmp_path / "proc_kallsyms") and not t.notes


def test_kernel_release_names_the_headers(tmp_path: Path) -> None:
    root = tmp_path / "lib_modules"
    args = host(tmp_path, debug_dir=tmp_path / "debug")
    with pytest.raises(KernelSourceError) as exc:
        discover(kernel_release=OTHER, **args)  # type: ignore[arg-type]
    assert message(exc.value) == (f"{root / OTHER / 'build'}: no headers for kernel {OTHER} "
                              f"(--kernel-release); install linux-headers-{OTHER} or pass "
                              "--kernel-dir")
    (root / OTHER).mkdir(parents=True)
    kdir = make_kdir(root / OTHER, OTHER)
    smap = tmp_path / "System.map"
    smap.write_text(SMAP)
    t = discover(kernel_release=OTHER, system_map=smap, **args)  # type: ignore[arg-type]
    assert t.kernel_dir == kdir and t.release == OTHER
    with pytest.raises(KernelSourceError, match=f"linux-image-{OTHER}-dbg"):
        discover(kernel_release=OTHER, **args)  # type: ignore[arg-type]
    (root / "6.1.0-97-x").mkdir()
    make_kdir(root / "6.1.0-97-x", OTHER)
    with pytest.raises(KernelSourceError, match=f"headers of kernel {OTHER}, not 6.1.0-97-x"):
        discover(kernel_release="6.1.0-97-x", system_map=smap, **args)  # type: ignore[arg-type]
    with pytest.raises(KernelSourceError, match="both given; pass one"):
        discover(kdir, kernel_release=OTHER, **args)  # type: ignore[arg-type]
    with pytest.raises(KernelSourceError, match="not a kernel release"):
        discover(kernel_release="../x", **args)  # type: ignore[arg-type]

def test_symvers_handling(tmp_path: Path) -> None:
    kdir = make_kdir(tmp_path, symvers=False)
    with pytest.raises(KernelSourceError) as exc:
        discover(kdir, **host(tmp_path))  # type: ignore[arg-type]
    assert message(exc.value) == (f"{kdir / 'Module.symvers'}: no Module.symvers in {kdir}; "
                                  f"install linux-headers-{RELEASE} or pass --symvers")
    extra = tmp_path / "dep.symvers"
    extra.write_text("0x1\tdep_fn\t/src/dep/dep\tEXPORT_SYMBOL_GPL\t\n")
    with pytest.raises(KernelSourceError, match="no export of vmlinux in it"):
        discover(kdir, symvers=[extra], **host(tmp_path))  # type: ignore[arg-type]
    (kdir / "Module.symvers").write_text(SYMVERS)
    t = discover(kdir, symvers=[extra], **host(tmp_path))  # type: ignore[arg-type]
    assert t.symvers.get("dep_fn") is not None and t.symvers.exported_by_vmlinux("phys_base")
    assert len(t.symvers.sources) == 2
    with pytest.raises(KernelSourceError) as shown:
        discover(kdir, symvers=[tmp_path / "missing.symvers"], **host(tmp_path))  # type: ignore[arg-type]
    assert re.search(r"missing\.symvers: no such file \(--symvers\)", message(shown.value))


def test_config_handling(tmp_path: Path) -> None:
    kdir = make_kdir(tmp_path, config=False)
    t = discover(kdir, **host(tmp_path))  # type: ignore[arg-type]
    assert t.config is None and t.livepatch_enabled is None
    assert any("no .config found" in n for n in t.notes)
    boot_cfg = tmp_path / "boot" / f"config-{RELEASE}"
    boot_cfg.write_text("# CONFIG_LIVEPATCH is not set\n")
    t = discover(kdir, **host(tmp_path))  # type: ignore[arg-type]
    assert t.config is not None and t.livepatch_enabled is False
    explicit = tmp_path / "my.config"
    explicit.write_text("CONFIG_LIVEPATCH=y\n")
    assert discover(kdir, config=explicit, **host(tmp_path)).livepatch_enabled  # type: ignore[arg-type]
    with pytest.raises(KernelSourceError, match=r"nope\.config: no such file"):
        discover(kdir, config=tmp_path / "nope.config", **host(tmp_path))  # type: ignore[arg-type]


def test_missing_directories(tmp_path: Path) -> None:
    with pytest.raises(KernelSourceError) as exc:
        discover(**host(tmp_path))  # type: ignore[arg-type]
    assert message(exc.value) == (f"{tmp_path / 'lib_modules' / RELEASE / 'build'}: no headers for "
                              f"the running kernel {RELEASE}; install linux-headers-{RELEASE} or "
                              "pass --kernel-dir")
    with pytest.raises(KernelSourceError) as shown:
        discover(tmp_path / "nowhere", **host(tmp_path))  # type: ignore[arg-type]
    assert re.search(r"no such directory \(--kernel-dir\)", message(shown.value))
    with pytest.raises(KernelSourceError, match="not a configured kernel build"):
        discover(tmp_path, **host(tmp_path))  # type: ignore[arg-type]
    # no headers, but --symvers: the running kernel's release is used
    extra = tmp_path / "vmlinux.symvers"
    extra.write_text(SYMVERS)
    t = discover(symvers=[extra], **host(tmp_path))  # type: ignore[arg-type]
    assert t.kernel_dir is None and t.release == RELEASE and t.kallsyms.count("helper") == 2


# -- the symbol source is held to the target's exports -------------------------------


def _exports_kdir(tmp_path: Path, n: int, kallsyms_all: bool = True) -> Path:
    kdir = make_kdir(tmp_path)
    (kdir / "Module.symvers").write_text("".join(
        f"0x{i:08x}\texp_{i}\tvmlinux\tEXPORT_SYMBOL\t\n" for i in range(n))
        + "0x00000001\tmod_only\tsome_module\tEXPORT_SYMBOL\t\n")
    if not kallsyms_all:
        (kdir / ".config").write_text("CONFIG_LIVEPATCH=y\n")
    return kdir


def _kallsyms_with(tmp_path: Path, names: list[str]) -> Path:
    path = tmp_path / "kallsyms-copy"
    path.write_text("".join(f"ffffffff81{i:06x} T {n}\n" for i, n in enumerate(names)))
    return path


@pytest.mark.parametrize("cache", [True, False])
def test_symbol_source_of_another_kernel_is_refused(tmp_path: Path, cache: bool) -> None:
    kdir = _exports_kdir(tmp_path, 200)
    right = _kallsyms_with(tmp_path, ["_stext"] + [f"exp_{i}" for i in range(200)])
    t = discover(kdir, kallsyms=right, running_release="0.0.0-not-it", cache=cache)
    assert len(t.kallsyms) == 201  # module-only exports are not looked for
    # another kernel's: 40 of the 200 exports absent (the module's export is not counted)
    wrong = _kallsyms_with(tmp_path, ["_stext"] + [f"exp_{i}" for i in range(40, 200)])
    if cache:  # the checked read below is then the symbol cache's (its name index)
        _ = discover(kdir, kallsyms=wrong, running_release="x", check_symbols=False).kallsyms
    t = discover(kdir, kallsyms=wrong, running_release="0.0.0-not-it", cache=cache)
    with pytest.raises(KernelSourceError) as e:
        _ = t.kallsyms
    msg = str(e.value)
    assert msg.startswith(f"{wrong}: 40 of the 200 vmlinux exports of {RELEASE} ")
    assert "(exp_0, exp_1, exp_2, ...)" in msg and msg.endswith("(check_symbols=)")
    from klpsym.cli.main import option

    assert e.value.render(option).endswith("turn this check off (--no-symbol-check)")
    assert "\n" not in msg
    again = discover(kdir, kallsyms=wrong, running_release="0.0.0-not-it", cache=cache,
                     check_symbols=False)
    assert len(again.kallsyms) == 161


def test_symbol_source_check_slack_and_kallsyms_all(tmp_path: Path) -> None:
    # a few missing (hand-made, filtered tables) pass: at most 10, or 1%
    kdir = _exports_kdir(tmp_path / "a", 2000)
    few = _kallsyms_with(tmp_path, [f"exp_{i}" for i in range(20, 2000)])
    assert len(discover(kdir, kallsyms=few, running_release="x").kallsyms) == 1980
    more = _kallsyms_with(tmp_path, [f"exp_{i}" for i in range(21, 2000)])
    with pytest.raises(KernelSourceError, match="21 of the 2,000 vmlinux exports"):
        _ = discover(kdir, kallsyms=more, running_release="x").kallsyms
    # without CONFIG_KALLSYMS_ALL kallsyms has no data symbols, exported or not:
    # only a source lacking most exports is refused
    kdir = _exports_kdir(tmp_path / "b", 2000, kallsyms_all=False)
    half = _kallsyms_with(tmp_path, [f"exp_{i}" for i in range(1000, 2000)])
    assert len(discover(kdir, kallsyms=half, running_release="x").kallsyms) == 1000
    cut = _kallsyms_with(tmp_path, [f"exp_{i}" for i in range(1001, 2000)])
    with pytest.raises(KernelSourceError, match="1,001 of the 2,000"):
        _ = discover(kdir, kallsyms=cut, running_release="x").kallsyms


def test_cli_symbol_source_check_reads_the_config_only_when_needed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """addr/insmod/kallsyms --kernel-dir: a source that passes the strictest
    check is taken without reading the .config; one that does not is judged
    with the .config (no CONFIG_KALLSYMS_ALL: half may be missing)."""
    import argparse

    from klpsym.cli.sources import symbols_from_args
    from klpsym.kernel.config import KernelConfig

    kdir = _exports_kdir(tmp_path / "k", 2000, kallsyms_all=False)
    read: list[Path] = []
    real = KernelConfig.from_path.__func__  # type: ignore[attr-defined]

    def from_path(cls: type[KernelConfig], path: Path, **kw: object) -> KernelConfig:
        read.append(Path(path))
        return real(cls, path, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(KernelConfig, "from_path", classmethod(from_path))

    def args(kallsyms: Path) -> argparse.Namespace:
        return argparse.Namespace(kallsyms=kallsyms, system_map=None, vmlinux=None,
                                  image=None, kernel_dir=kdir, config=None,
                                  no_symbol_check=False)

    whole = _kallsyms_with(tmp_path, [f"exp_{i}" for i in range(2000)])
    assert len(symbols_from_args(args(whole)).table) == 2000 and read == []
    half = _kallsyms_with(tmp_path, [f"exp_{i}" for i in range(1000, 2000)])
    assert len(symbols_from_args(args(half)).table) == 1000
    assert read == [kdir / ".config"]
    cut = _kallsyms_with(tmp_path, [f"exp_{i}" for i in range(1001, 2000)])
    with pytest.raises(KernelSourceError, match="1,001 of the 2,000"):
        symbols_from_args(args(cut))
    (kdir / ".config").unlink()  # no .config: the strict check's verdict
    half = _kallsyms_with(tmp_path, [f"exp_{i}" for i in range(1000, 2000)])
    with pytest.raises(KernelSourceError, match="1,000 of the 2,000"):
        symbols_from_args(args(half))
