"""scripts/kallsyms emulated: the symbols ``nm -n`` lists (a System.map,
vmlinux's .symtab) turned into vmlinux's kallsyms, in its order, so their
POS match the running kernel's.

kallsyms is not System.map: scripts/kallsyms (v6.1, used by Debian bookworm)
reads the mksysmap output and drops more (``is_ignored_symbol()``:
kallsyms_* tables, absolute symbols, some arch stubs; ``symbol_valid()``:
without CONFIG_KALLSYMS_ALL everything outside [_stext, _etext] and
[_sinittext, _einittext]; names of KSYM_NAME_LEN or more), relabels per-cpu
symbols as ``A`` (CONFIG_KALLSYMS_ABSOLUTE_PERCPU) and sorts by address with
its own tie-breaks (``compare_symbols()``).  :func:`kallsyms_from_nm` applies
the same rules (for :mod:`klpsym.kernel.system_map` and
:mod:`klpsym.kernel.vmlinux`).
"""

from __future__ import annotations

import numpy as np

from klpsym.errors import KernelSourceError
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import KallsymsTable
from klpsym.kernel.version import KernelVersion, kallsyms_keeps_start_stop, ksym_name_len

# is_ignored_symbol() of scripts/kallsyms.c (v6.1.192, plus the "$", ".L" and
# "__crc_" prefixes it had before mksysmap took them over; harmless to keep).
_IGNORED_NAMES = frozenset({
    "kallsyms_addresses", "kallsyms_offsets", "kallsyms_relative_base",
    "kallsyms_num_syms", "kallsyms_names", "kallsyms_markers",
    "kallsyms_token_table", "kallsyms_token_index", "kallsyms_seqs_of_names",
    "_SDA_BASE_", "_SDA2_BASE_",
})
_IGNORED_PREFIXES = (
    "$", ".L", "__crc_",
    "__efistub_", "__kvm_nvhe_$", "__kvm_nvhe_.L", "__AArch64ADRPThunk_",
    "__ARMV5PILongThunk_", "__ARMV7PILongThunk_", "__ThumbV7PILongThunk_",
    "__LA25Thunk_", "__microLA25Thunk_", "__kcfi_typeid_",
)
_IGNORED_SUFFIXES = ("_from_arm", "_from_thumb", "_veneer")
_IGNORED_MATCHES = (".long_branch.", ".plt_branch.")
_KEPT_ABSOLUTE = frozenset({
    "__kernel_syscall_via_break", "__kernel_syscall_via_epc", "__kernel_sigtramp", "__gp",
})


def _ignored(name: str, type_: str) -> bool:
    if type_ in "UuNn":
        return True
    if type_ in "Aa" and name not in _KEPT_ABSOLUTE:
        return True
    return (
        name in _IGNORED_NAMES
        or name.startswith(_IGNORED_PREFIXES)
        or name.endswith(_IGNORED_SUFFIXES)
        or any(m in name for m in _IGNORED_MATCHES)
    )


def _linker_provided(name: str) -> bool:
    """may_be_linker_script_provide_symbol() of scripts/kallsyms.c."""
    if len(name) < 8 or not name.startswith("__"):
        return False
    return (name.startswith(("__start_", "__stop_", "__end_"))
            or name.endswith(("_start", "_end")))


def kallsyms_from_nm(addresses: np.ndarray, types: np.ndarray, names: np.ndarray,
                     source: str, *, config: KernelConfig | None,
                     version: KernelVersion | None) -> KallsymsTable:
    """Apply scripts/kallsyms to ``nm -n``-ordered symbols (after mksysmap):
    read_symbol() filters, shrink_table(), make_percpus_absolute(),
    sort_symbols()."""
    notes: list[str] = []
    if version is None:
        version = KernelVersion(6, 1, 0, "6.1 (assumed)")
        notes.append("kernel version unknown: kallsyms rules of v6.1 assumed")
    if config is None:
        all_symbols, absolute_percpu = True, True
        notes.append("no .config: CONFIG_KALLSYMS_ALL=y and CONFIG_KALLSYMS_ABSOLUTE_PERCPU=y "
                     "assumed (as in distribution kernels)")
    else:
        all_symbols = config.enabled("KALLSYMS_ALL")
        absolute_percpu = config.enabled("KALLSYMS_ABSOLUTE_PERCPU")
    name_len = ksym_name_len(version)
    name_list: list[str] = names.tolist()
    type_list: list[str] = types.tolist()

    # read_symbol(): too long names and is_ignored_symbol()
    keep = np.fromiter(
        (len(n) < name_len and not _ignored(n, t)
         for n, t in zip(name_list, type_list, strict=True)),
        dtype=bool, count=len(name_list),
    )
    # check_symbol_range() sees only the symbols read_symbol() kept; the last wins.
    ranges: dict[str, int] = {}
    wanted = {"_stext", "_etext", "_sinittext", "_einittext", "__per_cpu_start",
              "__per_cpu_end"}
    for i in np.flatnonzero(keep).tolist():
        if name_list[i] in wanted:
            ranges[name_list[i]] = int(addresses[i])

    if not all_symbols:  # symbol_valid()
        valid = np.zeros(len(name_list), dtype=bool)
        text_end = ranges.get("_etext", 0)
        init_end = ranges.get("_einittext", 0)
        for lo_name, hi in (("_stext", text_end), ("_sinittext", init_end)):
            lo = ranges.get(lo_name, 0)
            valid |= (addresses >= np.uint64(lo)) & (addresses <= np.uint64(hi))
        at_end = ((addresses == np.uint64(text_end)) & (names != "_etext")) | \
                 ((addresses == np.uint64(init_end)) & (names != "_einittext"))
        valid &= ~at_end
        if kallsyms_keeps_start_stop(version):
            valid |= np.fromiter((n.startswith(("__start_", "__stop_")) for n in name_list),
                                 dtype=bool, count=len(name_list))
        keep &= valid

    idx = np.flatnonzero(keep)
    if not len(idx):
        raise KernelSourceError(f"{source}: no symbol is left after kallsyms' filtering")
    addr_k = addresses[idx]
    types_k = types[idx].copy()
    names_k = names[idx]
    if absolute_percpu and "__per_cpu_start" in ranges:  # make_percpus_absolute()
        lo, hi = ranges["__per_cpu_start"], ranges.get("__per_cpu_end", 0)
        types_k[(addr_k >= np.uint64(lo)) & (addr_k <= np.uint64(hi))] = "A"

    # sort_symbols(): address, then non-weak first, then not linker-provided
    # first, then fewer leading underscores, then input order.
    kept_names: list[str] = names_k.tolist()
    weak = np.isin(types_k, np.array(["w", "W"]))
    provided = np.fromiter((_linker_provided(n) for n in kept_names), dtype=bool,
                           count=len(kept_names))
    unders = np.fromiter((len(n) - len(n.lstrip("_")) for n in kept_names), dtype=np.int64,
                         count=len(kept_names))
    start_pos = np.arange(len(kept_names))
    order = np.lexsort((start_pos, unders, provided, weak, addr_k))
    return KallsymsTable(addr_k[order], types_k[order], names_k[order], source,
                         notes=notes)
