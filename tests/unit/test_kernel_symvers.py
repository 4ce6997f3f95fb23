"""klpsym.kernel.symvers: every Module.symvers layout, module-only exports,
merging, and errors that name file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from klpsym.errors import KernelSourceError
from klpsym.kernel.symvers import (
    LAYOUT_NAMESPACE_LAST,
    LAYOUT_NAMESPACE_THIRD,
    LAYOUT_NO_NAMESPACE,
    Symvers,
    module_name_matches,
    parse_symvers,
    read_symvers,
    read_symvers_files,
)

# < v5.4: crc name module export
OLD = (
    "0x1b7a5e3c\tprintk\tvmlinux\tEXPORT_SYMBOL\n"
    "0x0b3a6b23\tkvm_vcpu_kick\tarch/x86/kvm/kvm\tEXPORT_SYMBOL_GPL\n"
)
# v5.4-v5.5: crc name namespace module export (namespace field always there)
V54 = (
    "0x1b7a5e3c\tprintk\t\tvmlinux\tEXPORT_SYMBOL\n"
    "0xe1cc2a05\tusb_stor_suspend\tUSB_STORAGE\tdrivers/usb/storage/usb-storage\t"
    "EXPORT_SYMBOL_GPL\n"
)
# v5.6+: crc name module export namespace (empty namespace: trailing tab)
V56 = (
    "0x4c9d28b0\tphys_base\tvmlinux\tEXPORT_SYMBOL\t\n"
    "0x039823de\tinit_uts_ns\tvmlinux\tEXPORT_SYMBOL_GPL\t\n"
    "0xe1cc2a05\tusb_stor_suspend\tdrivers/usb/storage/usb-storage\tEXPORT_SYMBOL_GPL"
    "\tUSB_STORAGE\n"
    "0x00000000\tno_crc_sym\tvmlinux\tEXPORT_SYMBOL\t\n"
    "0x12345678\tpreempt_notifier_inc\tvmlinux\tEXPORT_SYMBOL_GPL\tmodule:kvm,kvm-*\n"
    "0x22222222\tfilemap_fdatawrite_kick_nr\tvmlinux\tEXPORT_SYMBOL_GPL\tmodule:btrfs\n"
)


def test_old_layout() -> None:
    s = parse_symvers(OLD, "old.symvers")
    assert s.layouts == {LAYOUT_NO_NAMESPACE}
    e = s.get("printk")
    assert e is not None and e.crc == 0x1B7A5E3C and e.module == "vmlinux"
    assert e.export_type == "EXPORT_SYMBOL" and e.namespace == "" and not e.gpl_only
    assert s.is_gpl_only("kvm_vcpu_kick") and not s.exported_by_vmlinux("kvm_vcpu_kick")
    assert s.exported_by_vmlinux("printk")
    assert e.origin == "old.symvers:1"


def test_v54_layout_namespace_third() -> None:
    s = parse_symvers(V54)
    assert s.layouts == {LAYOUT_NAMESPACE_THIRD}
    assert s.exports["printk"].namespace == ""
    usb = s.exports["usb_stor_suspend"]
    assert usb.namespace == "USB_STORAGE" and usb.module == "drivers/usb/storage/usb-storage"
    assert usb.import_namespace == "USB_STORAGE" and usb.gpl_only


def test_v56_layout_namespace_last() -> None:
    s = parse_symvers(V56)
    assert s.layouts == {LAYOUT_NAMESPACE_LAST}
    assert len(s) == 6
    assert s.exports["phys_base"].namespace == "" and s.exports["phys_base"].crc == 0x4C9D28B0
    assert s.exports["usb_stor_suspend"].namespace == "USB_STORAGE"
    assert s.exports["no_crc_sym"].crc is None  # modversions off / no CRC
    assert s.is_gpl_only("init_uts_ns") and not s.is_gpl_only("phys_base")
    assert not s.is_gpl_only("not_exported") and not s.exported_by_vmlinux("not_exported")
    assert "phys_base" in s and "not_exported" not in s


def test_layouts_mixed_per_line() -> None:
    # the layout is recognised on each line (several files merged by hand, CRLF, ...)
    text = OLD.replace("\n", "\r\n") + V54.splitlines()[1] + "\n" + V56.splitlines()[0] + "\n"
    s = parse_symvers(text)
    assert s.layouts == {LAYOUT_NO_NAMESPACE, LAYOUT_NAMESPACE_THIRD, LAYOUT_NAMESPACE_LAST}
    assert s.exports["usb_stor_suspend"].namespace == "USB_STORAGE"
    assert s.exports["printk"].module == "vmlinux"


def test_space_separated_fallback() -> None:
    s = parse_symvers("0x1 foo vmlinux EXPORT_SYMBOL_GPL\n0x2 bar vmlinux EXPORT_SYMBOL NS\n")
    assert s.exports["foo"].gpl_only and s.exports["bar"].namespace == "NS"


def test_module_only_exports() -> None:
    s = parse_symvers(V56)
    e = s.exports["preempt_notifier_inc"]
    assert e.module_only and e.allowed_modules == ("kvm", "kvm-*")
    assert e.import_namespace is None  # module: namespaces cannot be imported
    assert s.visible_to("preempt_notifier_inc", "kvm")
    assert s.visible_to("preempt_notifier_inc", "kvm_intel")  # tail glob, '-' == '_'
    assert s.visible_to("preempt_notifier_inc", "kvm-amd")
    assert not s.visible_to("preempt_notifier_inc", "kvmx")
    assert not s.visible_to("preempt_notifier_inc", "my_module")
    assert s.visible_to("filemap_fdatawrite_kick_nr", "btrfs")
    assert not s.visible_to("filemap_fdatawrite_kick_nr", "btrfs2")
    assert s.visible_to("phys_base", "anything")
    assert not s.visible_to("not_exported", "anything")


@pytest.mark.parametrize(("patterns", "name", "ok"), [
    ("kvm", "kvm", True),
    ("kvm", "kvm_intel", False),
    ("kvm-*", "kvm_amd", True),
    ("kvm-*", "kvm", False),
    ("xe-vfio-pci", "xe_vfio_pci", True),  # KBUILD_MODNAME has '_' for '-'
    ("xe_vfio_pci", "xe-vfio-pci", True),
    ("a,b,c*", "cde", True),
    ("a,,b", "b", True),
    ("*", "whatever", True),
    ("", "x", False),
])
def test_module_name_matches(patterns: str, name: str, ok: bool) -> None:
    assert module_name_matches(patterns, name) is ok


def test_merge() -> None:
    a = parse_symvers(V56, "vmlinux.symvers")
    b = parse_symvers("0x1\tmy_helper\t/src/dep/dep\tEXPORT_SYMBOL_GPL\t\n", "dep.symvers")
    m = a.merge(b)
    assert len(m) == len(a) + 1 and m.sources == ("vmlinux.symvers", "dep.symvers")
    assert Symvers.merge(a, b).exports == m.exports  # usable unbound too
    assert m.get("my_helper") is not None and not m.exported_by_vmlinux("my_helper")
    assert "vmlinux.symvers + dep.symvers" in m.source
    assert a.merge(a).exports == a.exports  # the same export twice is fine
    clash = parse_symvers("0x1\tphys_base\tother/mod\tEXPORT_SYMBOL\t\n", "clash.symvers")
    with pytest.raises(KernelSourceError, match=r"^clash\.symvers:1: phys_base is exported by "
                                                 r"other/mod, but vmlinux\.symvers:1"):
        a.merge(clash)


@pytest.mark.parametrize(("text", "line", "what"), [
    ("0x1\tfoo\tvmlinux\tEXPORT_SYMBOL\t\nnot a symvers line\n", 2, "not a Module.symvers line"),
    ("0x1\tfoo\tvmlinux\n", 1, "not a Module.symvers line"),  # pre-2.6.18, no export type
    ("0xZZ\tfoo\tvmlinux\tEXPORT_SYMBOL\t\n", 1, "CRC '0xZZ' is not hexadecimal"),
    ("0x1\t\tvmlinux\tEXPORT_SYMBOL\t\n", 1, "empty or malformed"),
    ("0x1\tfoo\tvmlinux\tEXPORT_SOMETHING\t\n", 1, "not a Module.symvers line"),
    ("0x1\tfoo\tvmlinux\tEXPORT_SYMBOL\t\t\t\n", 1, "not a Module.symvers line"),
    ("0x1\tfoo\ta\tEXPORT_SYMBOL\t\n0x2\tfoo\tb\tEXPORT_SYMBOL\t\n", 2, "foo exported again"),
])
def test_malformed_lines(text: str, line: int, what: str) -> None:
    with pytest.raises(KernelSourceError, match=rf"^bad\.symvers:{line}: {what}"):
        parse_symvers(text, "bad.symvers")


def test_files(tmp_path: Path) -> None:
    missing = tmp_path / "Module.symvers"
    with pytest.raises(KernelSourceError, match=r"no such file \(Module\.symvers\); install "
                                                r"the kernel's headers package"):
        read_symvers(missing)
    (tmp_path / "a.symvers").write_text(V56)
    (tmp_path / "b.symvers").write_text("0x1\tdep_fn\tdep\tEXPORT_SYMBOL\t\n")
    s = read_symvers_files([tmp_path / "a.symvers", tmp_path / "b.symvers"])
    assert len(s) == 7 and s.get("dep_fn") is not None
    assert s.exports["dep_fn"].origin == f"{tmp_path / 'b.symvers'}:1"
    (tmp_path / "empty.symvers").write_text("")
    assert len(read_symvers(tmp_path / "empty.symvers")) == 0




def _columns(s: Symvers) -> tuple[dict[str, list[object]], dict[str, object]]:
    arrays, meta = s.to_arrays()
    return {k: v.tolist() for k, v in arrays.items()}, meta


def _line_parsed(text: str, source: str) -> Symvers:
    from klpsym.kernel import symvers

    saved = symvers._parse_modpost_output
    symvers._parse_modpost_output = lambda t, s: None  # type: ignore[assignment]
    try:
        return parse_symvers(text, source)
    finally:
        symvers._parse_modpost_output = saved


def test_modpost_output_read_whole_same_as_line_by_line() -> None:
    """A file exactly as modpost writes it is read in one pass (regular
    expression and numpy); the columns, codes and layouts are those the line
    parser gives, and any other file goes to the line parser."""
    from klpsym.kernel.symvers import _parse_modpost_output

    lines = [f"0x{(i * 2654435761) % (1 << 32):08x}\tsym_{i}\t"
             f"{'vmlinux' if i % 3 else f'drivers/m{i % 7}'}\t"
             f"EXPORT_SYMBOL{'_GPL' if i % 2 else ''}\t{'NS_' + str(i % 5) if i % 4 == 0 else ''}"
             for i in range(3000)]
    text = V56 + "0xABCDEF01\tUpper_Hex\tvmlinux\tEXPORT_SYMBOL\t\n" + "\n".join(lines) + "\n"
    fast = _parse_modpost_output(text, "m.symvers")
    assert fast is not None and len(fast) == V56.count("\n") + 1 + 3000
    assert _columns(fast) == _columns(_line_parsed(text, "m.symvers"))
    assert fast.exports == _line_parsed(text, "m.symvers").exports
    assert fast.get("Upper_Hex").crc == 0xABCDEF01  # type: ignore[union-attr]
    assert fast.get("no_crc_sym").crc is None  # type: ignore[union-attr]
    for other in (V56 + "\n" + V56.replace("\tvmlinux", "\tvmlinux2"),  # a blank line
                  V56.replace("\n", "\r\n"), OLD, V54,
                  V56 + "0x1\tshort_crc\tvmlinux\tEXPORT_SYMBOL\t\n",
                  V56 + "0x00000001\tphys_base\tvmlinux\tEXPORT_SYMBOL_GPL\t\n",  # again
                  V56 + "0x00000001\twith space\tvmlinux\tEXPORT_SYMBOL\t\n",
                  V56 + "0x00000001\tx\tvmlinux\tEXPORT_UNUSED_SYMBOL\t\n", "",
                  V56 + "0x00000001\tx\tvmlinux\tEXPORT_SYMBOL\t",  # no last newline
                  V56 + "0x00000001\tx\t\tEXPORT_SYMBOL\t\n",  # no module
                  V56 + "0x00000001\tx\tvmlinux\tEXPORT_SYMBOL\tNS x\n",
                  V56 + "0x00000001\tx\tvmlinux\tEXPORT_SYMBOL_GPX\t\n",
                  V56 + "0x0000000g\tx\tvmlinux\tEXPORT_SYMBOL\t\n",
                  V56 + "0y00000001\tx\tvmlinux\tEXPORT_SYMBOL\t\n",
                  V56 + "0x00000001\tx\tvmlinux\tEXPORT_SYMBOL\t\t\n",
                  V56 + "0x00000001\tx\u00e9\tvmlinux\tEXPORT_SYMBOL\t\n"):
        assert _parse_modpost_output(other, "o.symvers") is None
    again = V56 + "0x00000001\tphys_base\tvmlinux\tEXPORT_SYMBOL_GPL\t\n"
    assert parse_symvers(again, "a.symvers").get("phys_base").crc == 1  # type: ignore[union-attr]
