"""The target kernel's vermagic, and the loader's comparison with a module's.

include/linux/vermagic.h (v5.x .. v7.x)::

    VERMAGIC_STRING = UTS_RELEASE " " MODULE_VERMAGIC_SMP MODULE_VERMAGIC_PREEMPT
                      MODULE_VERMAGIC_MODULE_UNLOAD MODULE_VERMAGIC_MODVERSIONS
                      MODULE_ARCH_VERMAGIC MODULE_RANDSTRUCT

with ``"SMP "`` (CONFIG_SMP), ``"preempt "`` (CONFIG_PREEMPT_BUILD; plain
CONFIG_PREEMPT before PREEMPT_BUILD existed) or ``"preempt_rt "``
(CONFIG_PREEMPT_RT), ``"mod_unload "`` (CONFIG_MODULE_UNLOAD),
``"modversions "`` (CONFIG_MODVERSIONS), nothing for x86_64's
MODULE_ARCH_VERMAGIC (arch/x86/include/asm/vermagic.h: "X86_64 does not
define MODULE_PROC_FAMILY"), and ``"RANDSTRUCT_" RANDSTRUCT_HASHED_SEED`` when
structure layout randomisation is on (include/generated/randstruct_hash.h).

Which preempt word wins when both PREEMPT_BUILD and PREEMPT_RT are set moved
between releases (6.1 and 6.12 test PREEMPT_BUILD first, Debian sid's 7.2
PREEMPT_RT first), so both strings are accepted then.

The loader compares with same_magic() (kernel/module/version.c since 5.19,
kernel/module.c before): when the module has symbol versions
(``__versions``, or since 6.14 the extended ones) the release, i.e. the
first word, is skipped; CRCs check compatibility instead.
"""

from __future__ import annotations

from pathlib import Path

from klpsym.kernel.config import KernelConfig
from klpsym.kernel.version import KernelVersion


def expected_vermagic(version: KernelVersion, config: KernelConfig | None,
                      kernel_dir: Path | None = None) -> tuple[str, ...]:
    """The vermagic strings the target's loader accepts (usually one), or
    () when they cannot be known (no .config, another architecture, or a
    randstruct seed that is not in ``kernel_dir``)."""
    if config is None or not config.enabled("X86_64"):
        return ()
    smp = "SMP " if config.enabled("SMP") else ""
    preempt_build = (config.enabled("PREEMPT_BUILD") if "PREEMPT_BUILD" in config
                     else config.enabled("PREEMPT"))
    rt = config.enabled("PREEMPT_RT")
    preempts = ["preempt " if preempt_build else "preempt_rt " if rt else ""]
    if preempt_build and rt:
        preempts.append("preempt_rt ")
    unload = "mod_unload " if config.enabled("MODULE_UNLOAD") else ""
    modversions = "modversions " if config.enabled("MODVERSIONS") else ""
    randstruct = ""
    if (config.enabled("RANDSTRUCT") or config.enabled("RANDSTRUCT_FULL")
            or config.enabled("RANDSTRUCT_PERFORMANCE")
            or config.enabled("GCC_PLUGIN_RANDSTRUCT")):
        seed = _randstruct_seed(kernel_dir)
        if seed is None:
            return ()
        randstruct = f"RANDSTRUCT_{seed}"
    return tuple(f"{version.release} {smp}{p}{unload}{modversions}{randstruct}"
                 for p in preempts)


def _randstruct_seed(kernel_dir: Path | None) -> str | None:
    if kernel_dir is None:
        return None
    path = kernel_dir / "include" / "generated" / "randstruct_hash.h"
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[:2] == ["#define", "RANDSTRUCT_HASHED_SEED"]:
            return parts[2].strip('"')
    return None


def same_magic(module_magic: str, kernel_magic: str, has_crcs: bool) -> bool:
    """kernel/module/version.c same_magic(): with CRCs, compare from the first
    space on (the release may differ)."""
    if has_crcs:
        module_magic = module_magic[_first_space(module_magic):]
        kernel_magic = kernel_magic[_first_space(kernel_magic):]
    return module_magic == kernel_magic


def _first_space(text: str) -> int:
    """strcspn(text, " ")."""
    i = text.find(" ")
    return len(text) if i < 0 else i
