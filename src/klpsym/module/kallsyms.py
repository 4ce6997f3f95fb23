"""A module's kallsyms, read from its .ko: the symbol source of a livepatch's
*module object* (``.klp.sym.<module>.NAME,POS``).

Livepatch resolves a module object's symbol with klp_find_object_symbol()
(kernel/livepatch/core.c), which walks module_kallsyms_on_each_symbol()
over that module's ``mod->kallsyms`` and counts the entries called NAME
(every entry but SHN_UNDEF ones; klp_find_callback() before v6.2,
klp_match_callback() since: the same count, v5.8 .. v7.x).  The module's
kallsyms is its ELF symbol table *in file order* (the loader never
reorders it), in one of two copies (kernel/module/kallsyms.c,
layout_symtab() and add_kallsyms(), v5.8 .. v7.x):

* while the module loads, up to the end of do_init_module(): the whole
  ``.symtab`` -- this is the copy klp_module_coming() sees when the target
  loads after the livepatch ("late module patching");
* after its init: ``core_kallsyms``, only the entries is_core_symbol()
  keeps: a name, a real section index (not SHN_UNDEF, SHN_ABS or another
  reserved one), a section that is SHF_ALLOC (with SHF_EXECINSTR too
  unless CONFIG_KALLSYMS_ALL; the per-cpu section counts under
  KALLSYMS_ALL although the loader clears its SHF_ALLOC) and not an init
  section (``.init*``, and ``.exit*`` without CONFIG_MODULE_UNLOAD:
  module_init_layout_section()) -- the copy a livepatch enabled while the
  target is loaded sees.

A POS is only safe when it designates the same symbol in both copies:
:meth:`ModuleKallsyms.choose` applies that rule
(:func:`klpsym.kernel.sympos.choose_pos_in_both`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from klpsym.elf.constants import SHF, SHN, SHT, STB, STT
from klpsym.errors import ModuleError, param
from klpsym.kernel.kallsyms import Candidate
from klpsym.kernel.sympos import PosChoice, choose_pos_in_both
from klpsym.module.compression import COMPRESSED_SUFFIXES
from klpsym.module.ko import Module, read_module
from klpsym.module.tree import find_module, module_key

_PERCPU = ".data..percpu"


@dataclass
class ModuleKallsyms:
    """One module's kallsyms (the init-time copy, every row) as numpy
    columns, with which rows the core copy keeps."""

    name: str  # the module name livepatch matches (klp_object.name)
    path: Path
    names: np.ndarray  # object array of str, symtab order (rows: non-UNDEF symbols)
    types: np.ndarray  # '<U1' letters as the kernel's elf_type() gives them
    core: np.ndarray  # bool: kept after init (is_core_symbol)
    text: np.ndarray  # bool: in an executable section
    sections: np.ndarray  # object array: the symbol's section name ('' if reserved)
    units: np.ndarray  # object array: the STT_FILE a local symbol follows ('' if none)
    # bool: its ENDBR64 is in the module's .ibt_endbr_seal (endbr_sealed());
    # None when the module has no such section
    sealed: np.ndarray | None = None
    _rows: dict[str, list[int]] | None = field(default=None, repr=False)

    @property
    def source(self) -> str:
        return f"{self.path}'s symbol table"

    def rows_of(self, name: str) -> list[int]:
        if self._rows is None:
            rows: dict[str, list[int]] = {}
            for i, n in enumerate(self.names.tolist()):
                rows.setdefault(n, []).append(i)
            self._rows = rows
        return self._rows.get(name, [])

    def candidates(self, name: str) -> list[Candidate]:
        """Every entry called ``name`` in the init-time copy, POS 1..N."""
        return [Candidate(pos, str(self.types[i]), None, i)
                for pos, i in enumerate(self.rows_of(name), 1)]

    def choose(self, candidates: Sequence[Candidate], wanted: int | None) -> PosChoice[Candidate]:
        """The entry POS ``wanted`` designates in both copies (see the
        module docstring)."""
        return choose_pos_in_both(candidates, [bool(self.core[c.index]) for c in candidates],
                                  wanted)

    def kind(self, entry: Candidate) -> str:
        return "text" if self.text[entry.index] else "data"

    def describe(self, entry: Candidate) -> str:
        """``POS 2: t in .text (file.c)``, for error messages."""
        i = entry.index
        unit = f" ({self.units[i]})" if self.units[i] else ""
        after = "" if self.core[i] else ", gone after init"
        return f"POS {entry.pos}: {entry.type} in {self.sections[i] or '?'}{unit}{after}"


def module_kallsyms(module: Module, *, kallsyms_all: bool = True,
                    module_unload: bool = True) -> ModuleKallsyms:
    """``module``'s kallsyms as the target kernel keeps it (``kallsyms_all``:
    CONFIG_KALLSYMS_ALL, ``module_unload``: CONFIG_MODULE_UNLOAD)."""
    elf = module.elf
    symtab = elf.symtab
    arr = symtab.array
    ref = symtab.section_ref
    n = len(symtab)
    nsec = max((s.uid for s in elf.sections), default=0) + 1
    flags = np.zeros(nsec, dtype=np.int64)
    nobits = np.zeros(nsec, dtype=bool)
    init = np.zeros(nsec, dtype=bool)
    percpu = np.zeros(nsec, dtype=bool)
    secnames = np.empty(nsec, dtype=object)
    secnames[:] = ""
    for s in elf.sections:
        flags[s.uid] = s.flags
        nobits[s.uid] = s.type == SHT.NOBITS
        init[s.uid] = s.name.startswith(".init") or (not module_unload
                                                     and s.name.startswith(".exit"))
        percpu[s.uid] = s.name == _PERCPU
        secnames[s.uid] = s.name
    names_all = symtab.names()
    # Rows: every symbol but SHN_UNDEF (module_kallsyms_on_each_symbol()
    # skips those); entry 0 is SHN_UNDEF too.
    rows = np.flatnonzero(ref != 0)
    real = ref[rows] > 0
    sec = np.where(real, ref[rows], 0)
    f = flags[sec]
    core = (real & (arr["st_name"][rows] != 0)
            & (((f & int(SHF.ALLOC)) != 0) | (percpu[sec] & kallsyms_all))
            & ~init[sec])
    if not kallsyms_all:
        core &= (f & int(SHF.EXECINSTR)) != 0
    text = real & ((f & int(SHF.EXECINSTR)) != 0)
    binds = symtab.binds[rows]
    types = np.array([_letter(int(ref[r]), int(fl), bool(nb), int(b))
                      for r, fl, nb, b in zip(rows.tolist(), f.tolist(),
                                              nobits[sec].tolist(), binds.tolist(),
                                              strict=True)], dtype="<U1")
    # The STT_FILE symbol a local symbol follows: its compilation unit.
    stt = symtab.types
    unit_of = [""] * n
    current = ""
    for i in range(n):
        if stt[i] == STT.FILE:
            current = names_all[i]
        elif symtab.binds[i] == STB.LOCAL:
            unit_of[i] = current
    names = np.empty(len(rows), dtype=object)
    names[:] = [names_all[r] for r in rows.tolist()]
    units = np.empty(len(rows), dtype=object)
    units[:] = [unit_of[r] for r in rows.tolist()]
    sealed = endbr_sealed(module)
    return ModuleKallsyms(module.name, module.path, names, types, core, text,
                          secnames[sec], units, None if sealed is None else sealed[rows])


SEAL_SECTION = ".ibt_endbr_seal"


def endbr_sealed(module: Module) -> np.ndarray | None:
    """Per symbol table entry: whether the loader of a CONFIG_X86_KERNEL_IBT
    kernel overwrites the ENDBR64 at its address (seals the function against
    indirect calls); None when the module has no ``.ibt_endbr_seal``.

    kbuild runs objtool ``--ibt --link --module`` on a module's linked
    object (scripts/Makefile.lib: ``delay-objtool`` is set by
    CONFIG_X86_KERNEL_IBT, and ``--ibt requires --link``), which lists in
    ``.ibt_endbr_seal`` every function-start ENDBR64 the module itself
    never takes the address of (tools/objtool/check.c
    create_ibt_endbr_seal_sections(), v5.18 .. v7.x): one s32 each,
    relocated R_X86_64_PC32 against the section symbol plus the offset.
    The loader seals them at load: module_finalize()
    (arch/x86/kernel/module.c) hands the section to apply_ibt_endbr()
    (v5.18 .. v6.1), apply_seal_endbr() since v6.2
    (arch/x86/kernel/alternative.c), which poisons each ENDBR64.  Debian
    trixie (6.12) and sid (7.x) modules carry the section."""
    elf = module.elf
    sec = elf.section_by_name(SEAL_SECTION)
    if sec is None or not elf.has_symtab:
        return None
    symtab = elf.symtab
    ref = symtab.section_ref
    value = symtab.array["st_value"].astype(np.int64)
    places: list[np.ndarray] = []  # (section uid, offset) of each sealed ENDBR64, one key
    for rel in elf.rela_sections():
        if rel.info_section is not sec:
            continue
        rela = elf.rela(rel)
        syms = elf.layout.r_sym(rela["r_info"]).astype(np.int64)
        syms = np.where(syms < len(symtab), syms, 0)  # entry 0 is SHN_UNDEF: skipped
        ok = ref[syms] > 0
        addend = rela["r_addend"].astype(np.int64)[ok]
        places.append(_place(ref[syms[ok]], value[syms[ok]] + addend))
    funcs = (ref > 0) & (symtab.types == STT.FUNC)
    keys = _place(np.where(funcs, ref, 0), value)
    out: np.ndarray = funcs & np.isin(keys, np.concatenate(places) if places
                                      else np.zeros(0, np.int64))
    return out


def _place(section_uid: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """One int64 key for (section, offset): offsets of a module's sections
    are far below 2**40."""
    key: np.ndarray = (section_uid.astype(np.int64) << 40) | (offset.astype(np.int64)
                                                              & ((1 << 40) - 1))
    return key


def _letter(ref: int, flags: int, nobits: bool, bind: int) -> str:
    """nm's letter, as the kernel's elf_type() gives it for module symbols."""
    if ref == -int(SHN.ABS):
        letter = "a"
    elif ref <= 0:
        letter = "?"
    elif flags & SHF.EXECINSTR:
        letter = "t"
    elif nobits:
        letter = "b"
    elif flags & SHF.ALLOC and not flags & SHF.WRITE:
        letter = "r"
    elif flags & SHF.WRITE:
        letter = "d"
    else:
        letter = "n"
    return letter.upper() if bind != STB.LOCAL and letter != "?" else letter


def is_module_path(spec: str) -> bool:
    """Whether a ``--target-module`` value is a file rather than a name."""
    return "/" in spec or spec.endswith(".ko") or any(
        spec.endswith(".ko" + s) for s in COMPRESSED_SUFFIXES)


class TargetModules:
    """The target modules a livepatch may reference (``--target-module``,
    each a path or a name found in the target's module tree), read once;
    an object a KLP_MODULE_RELOC annotation names is looked up by name when
    it was not given."""

    def __init__(self, specs: Sequence[str], release: str, kernel_dir: Path | None, *,
                 kallsyms_all: bool = True, module_unload: bool = True) -> None:
        self.specs = list(specs)
        self.release = release
        self.kernel_dir = kernel_dir
        self.kallsyms_all = kallsyms_all
        self.module_unload = module_unload
        self._given: list[ModuleKallsyms] | None = None
        self._found: dict[str, ModuleKallsyms] = {}

    def _read(self, path: Path) -> ModuleKallsyms:
        module = read_module(path)
        built_for = module.modinfo.vermagic_release
        if built_for is not None and built_for != self.release:
            raise ModuleError(
                f"{param('target_module')} {path}: built for kernel {built_for} (vermagic), "
                f"not the target {self.release}; its symbol table would give wrong positions: "
                f"give {self.release}'s {path.name}")
        return module_kallsyms(module, kallsyms_all=self.kallsyms_all,
                               module_unload=self.module_unload)

    @property
    def given(self) -> list[ModuleKallsyms]:
        if self._given is None:
            given: list[ModuleKallsyms] = []
            for spec in self.specs:
                path = (Path(spec) if is_module_path(spec)
                        else find_module(spec, self.release, self.kernel_dir))
                table = self._read(path)
                if any(t.name == table.name for t in given):
                    raise ModuleError(f"{param('target_module')} {spec}: module {table.name} "
                                      "is given twice")
                given.append(table)
            self._given = given
        return self._given

    def get(self, name: str) -> ModuleKallsyms:
        """Target module ``name``: a given one, else found in the tree."""
        key = module_key(name)
        for t in self.given:
            if module_key(t.name) == key:
                return t
        if key not in self._found:
            self._found[key] = self._read(find_module(name, self.release, self.kernel_dir))
        return self._found[key]

    @property
    def all(self) -> list[ModuleKallsyms]:
        """The given ones and any found by name so far."""
        return self.given + [t for t in self._found.values()
                             if all(t.name != g.name for g in self.given)]
