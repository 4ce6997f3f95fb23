"""IBT thunks: a converted module never takes the address of a kernel function
that may have lost its ENDBR64.

On a kernel built with CONFIG_X86_KERNEL_IBT=y (v5.18 on; Debian's from 6.12)
every indirect call or jump must land on an ENDBR64, and at boot the kernel
overwrites the ENDBR64 of each vmlinux function whose address vmlinux never
takes: objtool lists them in ``.ibt_endbr_seal``, and apply_ibt_endbr()
(v5.18; apply_seal_endbr() since v6.2), arch/x86/kernel/alternative.c,
poisons each.  Unexported functions are the ones most likely sealed
(``kallsyms_lookup_name`` is, on Debian's 6.12 and 7.x): an indirect call to
one is a #CP, ``Missing ENDBR: NAME`` (exc_control_protection(),
arch/x86/kernel/traps.c in v5.18, arch/x86/kernel/cet.c since v6.6).

So, on such a target, every relocation that takes the address of an
unexported function -- anything but the rel32 of a direct ``call``/``jmp``/
``jcc``, which the CPU never checks -- is redirected to a module-local thunk

    endbr64                 f3 0f 1e fa
    jmp NAME                e9 <rel32: a klp relocation, R_X86_64_PLT32 NAME-4>
    int3 x 7                (padding to 16 bytes)

one per function, in the core text section ``.text.klpsym_ibt`` (SHF_ALLOC |
SHF_EXECINSTR: layout_sections() puts it with the module's core text, which
stays after init, so ``__init`` users share the thunk).  The thunk is a
global STT_FUNC symbol ``__klpsym_ibt_NAME`` (appended, so no index moves).
Pointer identity changes: the module's ``&NAME`` is the thunk, not the
kernel's ``NAME``.  Data symbols are left alone; function or data is the
plan's ``kind`` (addresses against the text ranges, letters only where
trusted), and where that cannot tell, a direct branch to the symbol in the
module says it is a function.

A livepatch's *target modules* seal too.  kbuild runs objtool ``--ibt``
on each module's linked object when CONFIG_X86_KERNEL_IBT=y
(scripts/Makefile.lib: ``delay-objtool``, ``--link``, ``--module``; v5.18
.. v7.x, the same in Debian's 6.12 and 7.x linux-kbuild), and objtool
lists in the module's ``.ibt_endbr_seal`` every function-start ENDBR64
the module never takes the address of (tools/objtool/check.c
create_ibt_endbr_seal_sections(); only init_module/cleanup_module are
special-cased, as errors).  module_finalize() (arch/x86/kernel/module.c)
seals them while the module loads: apply_ibt_endbr() in v5.18 .. v6.1,
apply_seal_endbr() since v6.2 (arch/x86/kernel/alternative.c), each
ENDBR64 poisoned by poison_endbr().  Debian trixie's and sid's modules
carry the section (vsock.ko: ``__vsock_dgram_recvmsg`` and two others).
The target was built without knowing the livepatch, so a function the
livepatch alone takes the address of is sealed by then: the same thunk,
whose ``jmp`` is a klp relocation of that module's object
(``.klp.rela.<module>..text.klpsym_ibt``, ``.klp.sym.<module>.NAME,POS``),
applied when the module object is, like the livepatch's other references
to it (kernel/livepatch/core.c klp_apply_object_relocs(): the patch
enabled with the module loaded, or the module loading later).  Until then
the thunk's rel32 is zero: a call through it lands on the int3 padding,
where the unthunked pointer would have been zero.  Whether the target's
function is sealed is read from its ``.ibt_endbr_seal``
(:func:`klpsym.module.kallsyms.endbr_sealed`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from klpsym.elf import ElfFile, Section
from klpsym.elf.constants import EM, R_X86_64, SHF, SHN, SHT, STB, STT
from klpsym.elf.describe import relocation_type
from klpsym.errors import ConvertError, param
from klpsym.kernel.config import KernelConfig
from klpsym.kernel.kallsyms import Candidate
from klpsym.kernel.target import TargetKernel
from klpsym.kernel.version import kallsyms_letters_tell_data
from klpsym.klp.apply import KLP_RELA_FLAGS
from klpsym.klp.names import VMLINUX, klp_section_name, parse_symbol_name

ENDBR64 = b"\xf3\x0f\x1e\xfa"
THUNK_SECTION = ".text.klpsym_ibt"
THUNK_PREFIX = "__klpsym_ibt_"
THUNK_SIZE = 16
JMP_OFFSET = 4  # the e9 opcode; its rel32 follows
_PAD = b"\xcc" * (THUNK_SIZE - len(ENDBR64) - 5)
_BRANCH_TYPES = (int(R_X86_64.PC32), int(R_X86_64.PLT32))


def thunk_bytes() -> bytes:
    """One thunk before its relocation is applied (the rel32 is zero: the
    x86_64 loader refuses to relocate over nonzero bytes)."""
    return ENDBR64 + b"\xe9" + b"\0" * 4 + _PAD


def ibt_config(config: KernelConfig | None) -> bool | None:
    """Whether a target's .config has CONFIG_X86_KERNEL_IBT=y; None when the
    .config is unknown."""
    return None if config is None else config.enabled("CONFIG_X86_KERNEL_IBT")


def branch_mask(elf: ElfFile, target: Section | None, rela: np.ndarray) -> np.ndarray:
    """Per relocation of ``rela`` (applied to ``target``): whether it is the
    rel32 of a direct branch -- PC32/PLT32 with addend -4 in an executable
    section, right after an ``e8`` (call), ``e9`` (jmp) or ``0f 8x`` (jcc)
    opcode.  A RIP-relative operand's rel32 follows a ModRM byte (mod 00,
    r/m 101: 05, 0d, .. 3d), never e8/e9/8x after 0f, so the bytes tell."""
    n = len(rela)
    out = np.zeros(n, dtype=bool)
    if not n or target is None or not target.flags & SHF.EXECINSTR or target.type == SHT.NOBITS:
        return out
    types = elf.layout.r_type(rela["r_info"])
    offsets = rela["r_offset"].astype(np.int64)
    data = np.frombuffer(target.content(), dtype=np.uint8)
    cand = (np.isin(types, _BRANCH_TYPES) & (rela["r_addend"].astype(np.int64) == -4)
            & (offsets >= 1) & (offsets + 4 <= len(data)))
    idx = np.flatnonzero(cand)
    if not len(idx):
        return out
    off = offsets[idx]
    op1 = data[off - 1]
    op2 = np.where(off >= 2, data[np.maximum(off - 2, 0)], 0)
    direct = (op1 == 0xE8) | (op1 == 0xE9) | ((op2 == 0x0F) & (op1 >= 0x80) & (op1 <= 0x8F))
    out[idx[direct]] = True
    return out


@dataclass(frozen=True)
class ThunkUse:
    """One relocation that takes a function's address: where, and its type."""

    section: str  # the relocated section
    offset: int
    type: int


@dataclass
class Thunk:
    name: str  # the kernel function
    symbol_index: int  # its (undefined, to-be-converted) symbol in the module
    uses: list[ThunkUse] = field(default_factory=list)
    # in its object's .ibt_endbr_seal: the target vmlinux's, or the target
    # module's (None: unknown)
    sealed: bool | None = None
    objname: str = VMLINUX  # vmlinux, or a livepatch's target module

    @property
    def symbol(self) -> str:
        return THUNK_PREFIX + self.name

    @property
    def label(self) -> str:
        """``NAME`` for vmlinux, ``OBJ:NAME`` for a module object's (as
        ``--sympos`` spells them)."""
        return function_label(self.objname, self.name)

    def seal_state(self) -> str:
        """What the notes say of :attr:`sealed`."""
        return seal_note(self.objname, self.sealed)


def seal_note(objname: str, sealed: bool | None) -> str:
    """`` (sealed: ...)`` or `` (not sealed ...)`` for a function of
    ``objname`` (vmlinux seals at boot, a module when it loads); empty when
    unknown."""
    if sealed is None:
        return ""
    if objname == VMLINUX:
        return (" (sealed: its ENDBR64 is removed at boot)" if sealed
                else " (not sealed in the target's vmlinux)")
    return (f" (sealed: its ENDBR64 is removed when {objname} loads)" if sealed
            else f" (not sealed in {objname})")


def function_label(objname: str, name: str) -> str:
    """``NAME`` for vmlinux, ``OBJ:NAME`` for a module object's."""
    return name if objname == VMLINUX else f"{objname}:{name}"


class IbtSymbol(NamedTuple):
    """A symbol to convert, as the IBT pass needs it."""

    symbol: int  # its index in the module's symbol table
    name: str
    kind: str  # "text", "data" or "" (cannot tell)
    address: int | None = None  # vmlinux's link-time address, when known
    objname: str = VMLINUX
    sealed: bool | None = None  # a module object's: in its .ibt_endbr_seal (None: unknown)


@dataclass
class IbtPlan:
    """What the IBT pass does to one module."""

    target_ibt: bool | None  # CONFIG_X86_KERNEL_IBT=y (None: .config unknown)
    enabled: bool  # thunks wanted (not --no-ibt-thunks)
    thunks: list[Thunk] = field(default_factory=list)  # address-taken functions

    @property
    def applies(self) -> bool:
        return bool(self.target_ibt) and self.enabled and bool(self.thunks)

    def notes(self) -> list[str]:
        """What the plan and the result print about it."""
        if not self.thunks:
            return []
        names = ", ".join(t.label for t in self.thunks)
        if not self.target_ibt:
            if self.target_ibt is None:
                return [f"target .config unknown: could not check CONFIG_X86_KERNEL_IBT; {names} "
                        "keep their addresses taken directly, which faults (Missing ENDBR) on "
                        "IBT hardware if the kernel has IBT"]
            return []
        if not self.enabled:
            return [f"WARNING: no IBT thunks (--no-ibt-thunks): the module takes the address of "
                    f"{t.label}{t.seal_state()} ({len(t.uses)} relocation"
                    f"{'s' * (len(t.uses) != 1)}); on IBT hardware an indirect call there faults "
                    f"with \"Missing ENDBR: {t.name}\" if the kernel sealed it"
                    for t in self.thunks]
        return [f"IBT thunk {t.symbol} ({THUNK_SECTION}+{i * THUNK_SIZE:#x}: endbr64; jmp "
                f"{t.label}) takes {len(t.uses)} address-taking relocation"
                f"{'s' * (len(t.uses) != 1)}: "
                + ", ".join(f"{u.section}+{u.offset:#x}" for u in t.uses[:6])
                + (f" and {len(t.uses) - 6} more" if len(t.uses) > 6 else "")
                + f"; the module's &{t.name} is the thunk{t.seal_state()}"
                for i, t in enumerate(self.thunks)]

    def to_json(self) -> dict[str, object]:
        return {
            "target_ibt": self.target_ibt,
            "enabled": self.enabled,
            "section": THUNK_SECTION if self.applies else None,
            "thunks": [{"function": t.name, "object": t.objname, "symbol": t.symbol,
                        "offset": i * THUNK_SIZE if self.applies else None,
                        "relocations": [{"section": u.section, "offset": u.offset,
                                         "type": u.type} for u in t.uses],
                        "sealed": t.sealed}
                       for i, t in enumerate(self.thunks)],
        }


def address_uses(elf: ElfFile, symbol_indexes: list[int]) -> tuple[dict[int, list[ThunkUse]],
                                                                     dict[int, int]]:
    """For each symbol: the ordinary relocations of allocated sections that
    take its address (not a branch displacement), and how many are direct
    branches to it."""
    wanted = np.zeros(len(elf.symtab), dtype=bool)
    wanted[np.asarray(symbol_indexes, dtype=np.int64)] = True
    uses: dict[int, list[ThunkUse]] = {i: [] for i in symbol_indexes}
    branches: dict[int, int] = dict.fromkeys(symbol_indexes, 0)
    for _sec, target, rela, syms, hit in _marked(elf, wanted, livepatch=False):
        branch = branch_mask(elf, target, rela[hit])
        types = elf.layout.r_type(rela["r_info"][hit])
        for j, k in enumerate(hit.tolist()):
            s = int(syms[k])
            if branch[j]:
                branches[s] += 1
            else:
                uses[s].append(ThunkUse(target.name, int(rela["r_offset"][k]), int(types[j])))
    return uses, branches


def plan_ibt(elf: ElfFile, convert: Sequence[IbtSymbol], target_ibt: bool | None,
             enabled: bool, vmlinux: Path | None = None) -> IbtPlan:
    """Which converted functions the module takes the address of: vmlinux's
    and, for a livepatch, its target modules' (both seal, see above).

    ``convert``: each symbol to convert.  ``vmlinux``: the target's, whose
    seal list says which of vmlinux's functions are sealed
    (:func:`sealed_addresses`); a module object's say so themselves
    (``IbtSymbol.sealed``).  A symbol of unknown kind that the module also
    branches to directly is a function; one it only takes the address of is
    refused on an IBT target (a thunk in front of data would corrupt it, no
    thunk in front of a function would fault)."""
    plan = IbtPlan(target_ibt, enabled)
    if not convert or target_ibt is False:
        return plan
    uses, branches = address_uses(elf, [c.symbol for c in convert])
    sealed: np.ndarray | None = None
    for c in sorted(convert, key=lambda c: (c.name, c.objname)):
        if not uses[c.symbol] or c.kind == "data":
            continue
        if c.kind == "" and not branches[c.symbol]:
            if target_ibt and enabled:
                raise ConvertError(
                    f"{c.name}: the module takes its address and the target has IBT, but its "
                    "kallsyms entry does not say whether it is a function (no addresses); "
                    "give a kallsyms with addresses (read as root) or a System.map, or "
                    f"{param('no_ibt_thunks')} if it is data")
            continue
        state = c.sealed if target_ibt else None
        if c.objname == VMLINUX and target_ibt and vmlinux is not None and c.address is not None:
            if sealed is None:
                sealed = sealed_addresses(vmlinux)
            state = is_sealed(sealed, c.address)
        plan.thunks.append(Thunk(c.name, c.symbol, uses[c.symbol], state, c.objname))
    return plan


def apply_ibt(elf: ElfFile, plan: IbtPlan) -> None:
    """Add the thunks and redirect the address-taking relocations to them.

    Run before :func:`klpsym.klp.apply.apply_conversions`: each thunk's jmp
    is a klp relocation against the symbol still undefined here, which the
    conversion then renames into its ``.klp.sym`` form."""
    if not plan.applies:
        return
    if elf.section_by_name(THUNK_SECTION) is not None:
        raise ConvertError(f"{elf.name}: already has a {THUNK_SECTION} section, yet takes "
                           "unexported functions' addresses directly; the module is corrupt")
    symtab = elf.symtab
    layout = elf.layout
    execs = [s for s in elf.sections if s.flags & SHF.EXECINSTR and s.flags & SHF.ALLOC]
    text = elf.new_section(THUNK_SECTION, SHT.PROGBITS, flags=int(SHF.ALLOC | SHF.EXECINSTR),
                           addralign=THUNK_SIZE,
                           data=thunk_bytes() * len(plan.thunks))
    elf.insert_section(text, after=execs[-1] if execs else None)
    jumps = np.zeros(len(plan.thunks), dtype=layout.rela)
    redirect = np.zeros(len(symtab), dtype=np.int64)  # old symbol -> thunk symbol
    for i, t in enumerate(plan.thunks):
        s = symtab.append_undefined(t.symbol, STB.GLOBAL, STT.FUNC)
        symtab.section_ref[s] = text.uid
        symtab.array["st_value"][s] = i * THUNK_SIZE
        symtab.array["st_size"][s] = THUNK_SIZE - len(_PAD)
        redirect[t.symbol_index] = s
        jumps[i]["r_offset"] = i * THUNK_SIZE + JMP_OFFSET + 1
        jumps[i]["r_addend"] = -4
    jumps["r_info"] = layout.r_info(
        np.array([t.symbol_index for t in plan.thunks], dtype=np.int64),
        np.full(len(plan.thunks), int(R_X86_64.PLT32), dtype=np.int64))
    # One .klp.rela.OBJ..text.klpsym_ibt per object: klp_resolve_symbols()
    # refuses another object's symbol in a section (v5.8 on), and a module
    # object's jmp is applied with the module object (klp_apply_object_relocs()).
    after = text
    objects = np.array([t.objname for t in plan.thunks], dtype=object)
    for objname in sorted(set(objects.tolist()), key=lambda o: (o != VMLINUX, o)):
        klp = elf.new_section(klp_section_name(THUNK_SECTION, objname), SHT.RELA,
                              flags=int(KLP_RELA_FLAGS), addralign=8,
                              entsize=layout.rela.itemsize, link=symtab.section,
                              info_section=text)
        klp.table = jumps[objects == objname]
        elf.insert_section(klp, after=after)
        after = klp

    taken = {(u.section, u.offset) for t in plan.thunks for u in t.uses}
    for sec, target, rela, syms, hit in _marked(elf, redirect != 0, livepatch=False):
        pick = [k for k in hit.tolist() if (target.name, int(rela["r_offset"][k])) in taken]
        if not pick:
            continue
        table = rela.copy()
        types = layout.r_type(table["r_info"][pick])
        table["r_info"][pick] = layout.r_info(redirect[syms[pick]], types)
        sec.table = table


def _marked(elf: ElfFile, wanted: np.ndarray, livepatch: bool
            ) -> Iterator[tuple[Section, Section, np.ndarray, np.ndarray, np.ndarray]]:
    """The relocation sections of allocated sections, klp ones
    (``livepatch``) or ordinary, that have entries whose symbol is marked in
    ``wanted`` (a bool per symbol table entry; an index outside it marks
    nothing), in file order: (section, the section it relocates, its table,
    each entry's symbol index, the marked entries' indexes)."""
    for sec in list(elf.rela_sections()):
        target = sec.info_section
        if bool(sec.flags & SHF.RELA_LIVEPATCH) != livepatch or target is None \
                or not target.flags & SHF.ALLOC:
            continue
        rela = elf.rela(sec)
        syms = elf.layout.r_sym(rela["r_info"])
        inside = syms < len(wanted)
        hit = np.flatnonzero(inside & wanted[np.where(inside, syms, 0)]) if len(wanted) \
            else np.zeros(0, dtype=np.int64)
        if len(hit):
            yield sec, target, rela, syms, hit


SEAL_SECTION = ".ibt_endbr_seal"


def sealed_addresses(vmlinux: Path) -> np.ndarray:
    """The (link-time) addresses of the functions a kernel seals at boot:
    vmlinux's ``.ibt_endbr_seal``, objtool's list of ENDBR64 it found unused
    (tools/objtool/check.c create_ibt_endbr_seal_sections(), v5.18+), one
    s32 a function, each relative to its own place (``.long addr - .``);
    apply_seal_endbr() overwrites the ENDBR64 at each.  Sorted uint64.
    The section is in vmlinux and in the ELF a bzImage's payload
    decompresses to (``klpsym.lab.vmlinux``), even without a symbol table.
    A kernel without IBT has no such section: ConvertError."""
    elf = ElfFile.from_path(vmlinux, relocatable_only=False)
    sec = elf.section_by_name(SEAL_SECTION)
    if sec is None:
        raise ConvertError(f"{vmlinux}: has no {SEAL_SECTION} section; the kernel is built "
                           "without CONFIG_X86_KERNEL_IBT (nothing is sealed), or this is not "
                           "its vmlinux")
    data = bytes(sec.content())
    count = len(data) // 4
    rel = np.frombuffer(data, dtype=np.dtype("<i4"), count=count).astype(np.int64)
    places = np.uint64(sec.addr) + np.arange(count, dtype=np.uint64) * np.uint64(4)
    out: np.ndarray = np.sort((places.astype(np.int64) + rel).astype(np.uint64))
    return out


def is_sealed(sealed: np.ndarray, address: int) -> bool:
    """Whether the function at ``address`` (link-time) is in the seal list."""
    i = int(np.searchsorted(sealed, np.uint64(address)))
    return i < len(sealed) and int(sealed[i]) == address


def target_vmlinux(kallsyms_source: str) -> Path | None:
    """The vmlinux a target's symbols come from (``--vmlinux``), if they do."""
    if kallsyms_source.startswith("vmlinux "):
        return Path(kallsyms_source.removeprefix("vmlinux "))
    return None


@dataclass(frozen=True)
class KlpReference:
    """One relocation of a ``.klp.rela`` section of an allocated section."""

    target: Section  # the section it applies to
    offset: int
    symbol: int  # its symbol's index
    type: int
    branch: bool  # the rel32 of a direct call or jump (branch_mask)


def klp_references(elf: ElfFile, wanted: np.ndarray) -> Iterator[KlpReference]:
    """The klp relocations of allocated sections whose symbol is marked in
    ``wanted`` (a bool per symbol table entry), in file order; a symbol index
    outside the table marks nothing."""
    for _sec, target, rela, syms, hit in _marked(elf, wanted, livepatch=True):
        branch = branch_mask(elf, target, rela[hit])
        types = elf.layout.r_type(rela["r_info"][hit])
        for j, k in enumerate(hit.tolist()):
            yield KlpReference(target, int(rela["r_offset"][k]), int(syms[k]), int(types[j]),
                               bool(branch[j]))


def klp_address_uses(elf: ElfFile, name_width: int) -> list[tuple[str, str]]:
    """Every klp relocation of an allocated section that takes the address of
    a livepatch symbol (not a branch displacement), as (NAME, where:
    ``SECTION+OFFSET (TYPE)``), in file order; a module object's symbol is
    ``OBJ:NAME`` (:func:`function_label`).  Whether NAME is a function is
    the target's to say (:func:`symbol_kind`, the target module's table)."""
    if elf.machine != EM.X86_64 or not elf.has_symtab:
        return []
    symtab = elf.symtab
    out: list[tuple[str, str]] = []
    for ref in klp_references(elf, symtab.section_ref == -int(SHN.LIVEPATCH)):
        if ref.branch:
            continue
        parsed = parse_symbol_name(symtab.name(ref.symbol), name_width)
        if parsed is None:
            continue
        out.append((function_label(parsed.objname, parsed.name),
                    f"{ref.target.name}+{ref.offset:#x} "
                    f"({relocation_type(EM.X86_64, ref.type)})"))
    return out


def symbol_kind(target: TargetKernel, candidate: Candidate) -> str:
    """``"text"``, ``"data"`` or ``""``, as klp.plan decides it for a symbol to
    convert: KallsymsTable.kind() by address, letters only where trusted
    (kallsyms_letters_tell_data(), or klpsym's own System.map/vmlinux reader)."""
    trusted = (kallsyms_letters_tell_data(target.version)
               or target.kallsyms_source.startswith(("System.map ", "vmlinux ")))
    return target.kallsyms.kind(candidate, letters_tell_data=trusted)
