"""klpsym.kernel.kallsyms: /proc/kallsyms and System.map readers, POS rules."""

from __future__ import annotations

from klpsym.kernel.proc_kallsyms import read_proc_kallsyms


def test_real_guest_kallsyms(bookworm) -> None:  # type: ignore[no-untyped-def]
    """The booted bookworm kernel's /proc/kallsyms (captured by the lab)."""
    from klpsym.kernel.symvers import read_symvers
    from klpsym.lab.qemu import capture_kallsyms

    t = read_proc_kallsyms(capture_kallsyms(bookworm))
    assert len(t) > 50_000 and t.has_addresses
    assert t.resolve("kallsyms_lookup_name")[0] == 0
    dups = t.duplicated_names()
    assert len(dups) > 100
    name = max(dups, key=lambda k: dups[k])
    cands = t.candidates(name)
    assert [c.pos for c in cands] == list(range(1, len(cands) + 1))
    assert all(a.address is not None and b.address is not None and a.address <= b.address
               for a, b in zip(cands, cands[1:], strict=False))
    # CONFIG_KALLSYMS_ALL=y: every vmlinux export is in kallsyms
    symvers = read_symvers(bookworm.kernel_dir / "Module.symvers")
    missing = [e.name for e in symvers if e.from_vmlinux and e.name not in t]
    assert not missing, missing[:10]


