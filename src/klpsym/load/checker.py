"""What ``klpsym check`` needs of the target kernel, computed once for many
modules (:class:`Checker`), and find_symbol(): who provides a symbol --
vmlinux, a module checked in the same batch, or one of the target's own."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from klpsym.elf.constants import EM
from klpsym.errors import ModuleError
from klpsym.kernel.kallsyms import Candidate
from klpsym.kernel.symvers import GPL_ONLY_TYPES, ExportFields
from klpsym.kernel.target import TargetKernel
from klpsym.kernel.vermagic import expected_vermagic
from klpsym.kernel.version import klp_sym_name_max
from klpsym.klp.classify import Fate
from klpsym.klp.names import VMLINUX
from klpsym.load.model import ModuleFacts
from klpsym.load.verdict import Provider, provider
from klpsym.module.kallsyms import ModuleKallsyms, TargetModules
from klpsym.module.license import is_gpl_compatible

NOT_LOOKED_UP = provider("", False, "", None)  # not looked up yet
Plain = tuple[Provider, int | None, str | None, bool]  # see Checker.plain
NOT_PLAIN: Plain = (NOT_LOOKED_UP, None, None, False)  # not looked up yet


#: An export of a module of the batch: (name, gpl_only, namespace, crc), the
#: fields of ExportFact as a plain tuple (cheaper to send between processes).
_ExportTuple = tuple[str, bool, str, int | None]
#: What a module of the batch exports to the others: (its name, whether it
#: is proprietary, its exports).
BatchExports = tuple[str, bool, tuple[_ExportTuple, ...]]


def batch_exports(f: ModuleFacts) -> BatchExports | None:
    if f.error is not None:
        return None
    return f.name, not is_gpl_compatible(f.license or "unspecified"), \
        tuple((e.name, e.gpl_only, e.namespace, e.crc) for e in f.exports)


class Checker:
    """What the checks need of the target, computed once for many modules;
    :meth:`check` judges one."""

    def __init__(self, target: TargetKernel, batch: Iterable[BatchExports | None],
                 target_modules: Sequence[str] = ()) -> None:
        self.target = target
        cfg = target.config
        # A livepatch's target modules (--target-module; others by name in
        # the target's module tree), read when a check needs one.
        self.target_modules = TargetModules(
            target_modules, target.release, target.kernel_dir,
            kallsyms_all=cfg is None or cfg.enabled("KALLSYMS_ALL"),
            module_unload=cfg is None or cfg.enabled("MODULE_UNLOAD"))
        self._tables: dict[str, ModuleKallsyms | None] = {}
        self.config_known = cfg is not None
        self.force_load = cfg is not None and cfg.enabled("MODULE_FORCE_LOAD")
        self.sig_force = cfg is not None and cfg.enabled("MODULE_SIG_FORCE")
        self.sig = cfg is not None and cfg.enabled("MODULE_SIG")
        self.modversions = cfg.enabled("MODVERSIONS") if cfg is not None else None
        self.allow_missing_ns = cfg is not None and cfg.enabled(
            "MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS")
        self.livepatch = cfg.enabled("LIVEPATCH") if cfg is not None else None
        self.machine = EM.X86_64 if cfg is not None and cfg.enabled("X86_64") else None
        self.vermagic = expected_vermagic(target.version, cfg, target.kernel_dir)
        self.klp_width = klp_sym_name_max(target.version)
        # One dict lookup a name (Symvers.get may cost more, per name), and
        # no Export object made for the ~25,000 names a kernel exports
        self.exports: dict[str, ExportFields] = target.symvers.fields()
        layout = self.exports.get("module_layout")
        self.module_layout = _from_fields(layout) if layout is not None \
            and layout[0] == VMLINUX else None
        self._providers: dict[str, Provider | None] = {}
        self.plain_found: dict[str, Plain | None] = {}
        # Exports of the modules checked together (they would be loaded),
        # the first module's where two export a name; a provider is made
        # when a name is looked up.
        self._batch: dict[str, tuple[str, bool, _ExportTuple]] = {
            e[0]: (item[0], item[1], e)
            for item in reversed([b for b in batch if b is not None]) for e in item[2]}

    #: False: the symbols an export resolves plainly are not listed in the
    #: verdicts (load.batch, for modules that load and whose symbols are
    #: not shown: a tuple each, made and thrown away, for ~185,000 symbols)
    list_plain = True

    def provider(self, name: str) -> Provider | None:
        """find_symbol(): vmlinux first, then the modules (this batch's
        before the target's own, which the batch may replace)."""
        found = self._providers.get(name, NOT_LOOKED_UP)
        if found is NOT_LOOKED_UP:
            found = self._providers[name] = self._find(name)
        return found

    def plain(self, name: str) -> Plain | None:
        """For a symbol exported by vmlinux or a non-proprietary module in no
        namespace (resolve_symbol()'s common case): (provider, its CRC, the
        module to load first or None, GPL-only); else None."""
        found = self.plain_found.get(name, NOT_PLAIN)
        if found is NOT_PLAIN:
            p = self.provider(name)
            found = None if p is None or p.proprietary or p.namespace else (
                p, p.crc, None if p.fate == Fate.EXPORTED else p.module, p.gpl_only)
            self.plain_found[name] = found
        return found

    def _find(self, name: str) -> Provider | None:
        e = self.exports.get(name)
        if e is not None and e[0] == VMLINUX:
            return _from_fields(e)
        exporter = self._batch.get(name)
        if exporter is not None:
            module, proprietary, (_, gpl_only, namespace, crc) = exporter
            return provider(module, gpl_only, namespace, crc, proprietary)
        return _from_fields(e) if e is not None else None

    def module_table(self, objname: str) -> ModuleKallsyms | None:
        """Target module ``objname``'s symbol table, or None when it is
        neither given nor in the target's module tree (a bad given one is
        an error of the arguments, said by the first use)."""
        _ = self.target_modules.given  # a bad --target-module: raised
        if objname not in self._tables:
            try:
                self._tables[objname] = self.target_modules.get(objname)
            except ModuleError:
                self._tables[objname] = None
        return self._tables[objname]

    def kallsyms_candidates(self, name: str) -> list[Candidate] | None:
        if not self.target.has_kallsyms:
            return None
        return self.target.kallsyms.candidates(name)


def _from_fields(e: ExportFields) -> Provider:
    module, export_type, namespace, crc = e
    owner = VMLINUX if module == VMLINUX else module.rsplit("/", 1)[-1].replace("-", "_")
    return provider(owner, export_type in GPL_ONLY_TYPES, namespace, crc)
