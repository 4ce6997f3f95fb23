"""klpsym: let an out-of-tree kernel module use unexported kernel symbols.

The module is converted after it is linked: every undefined symbol that the
target kernel does not export, but has in kallsyms, becomes a livepatch symbol
(``.klp.sym.vmlinux.NAME,POS``) and the relocations that use it move into
``.klp.rela.vmlinux.*`` sections, which the kernel's module loader resolves
through kallsyms (``kernel/livepatch/core.c: klp_apply_section_relocs``).
"""

__version__ = "0.1.0"
