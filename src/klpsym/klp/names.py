"""Livepatch symbol and section names, exactly as the loader parses them.

kernel/livepatch/core.c (v5.8 .. v6.12):

    klp_apply_section_relocs():  sscanf(secname, ".klp.rela.%55[^.]", objname)
    klp_resolve_symbols():       sscanf(symname, ".klp.sym.%55[^.].%511[^,],%lu",
                                        objname, name, &sympos)

The name width is KSYM_NAME_LEN - 1: 511 since v6.1 (commit b8a94bfb3395,
"kallsyms: increase maximum kernel symbol length to 512"), 127 before.  The
objname width 55 is MODULE_NAME_LEN - 1 (the BUILD_BUG_ON in
klp_resolve_symbols pins it to 56).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from klpsym.kernel.version import KLP_OBJNAME_MAX

KLP_SYM_PREFIX = ".klp.sym."
KLP_RELA_PREFIX = ".klp.rela."
OBJNAME_WIDTH = KLP_OBJNAME_MAX
VMLINUX = "vmlinux"


def klp_symbol_name(name: str, pos: int, objname: str = VMLINUX) -> str:
    return f"{KLP_SYM_PREFIX}{objname}.{name},{pos}"


def klp_section_name(target: str, objname: str = VMLINUX) -> str:
    return f"{KLP_RELA_PREFIX}{objname}.{target}"


class KlpSymbol(NamedTuple):  # a tuple: made thousands of times per check
    objname: str
    name: str
    pos: int


_SECTION_RE = re.compile(rf"\.klp\.rela\.([^.]{{1,{OBJNAME_WIDTH}}})")


def parse_section_name(secname: str) -> str | None:
    """The objname the loader reads from a klp relocation section name, or
    None where its sscanf() would fail ("has an incorrectly formatted name")."""
    m = _SECTION_RE.match(secname)
    return m.group(1) if m else None


def parse_symbol_name(symname: str, name_width: int) -> KlpSymbol | None:
    """Parse like the loader's sscanf(".klp.sym.%55[^.].%W[^,],%lu"): None
    where it would not convert all three fields.  Stricter than sscanf in
    one way: the whole name must be consumed, with a plain decimal POS, and
    the objname and name must fit their fields instead of being cut."""
    if not symname.startswith(KLP_SYM_PREFIX):
        return None
    rest = symname[len(KLP_SYM_PREFIX):]
    dot = rest.find(".")
    if dot <= 0 or dot > OBJNAME_WIDTH:
        return None
    objname, rest = rest[:dot], rest[dot + 1:]
    comma = rest.rfind(",")
    if comma <= 0:
        return None
    name, pos = rest[:comma], rest[comma + 1:]
    if "," in name or len(name) > name_width or not pos.isdigit() or not pos.isascii():
        return None
    return KlpSymbol(objname, name, int(pos))
