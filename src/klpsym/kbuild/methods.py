"""``klpsym build --method``: which of klpsym.h's methods a build uses.

The method reaches the module's compiler through ``klpsym cflags``: the
module's Kbuild says ``ccflags-y += $(shell klpsym cflags)`` and this sets
``KLPSYM_METHOD`` in make's environment, which ``klpsym cflags`` turns into
``-DKLPSYM_METHOD=...`` (an explicit ``--method`` in the Kbuild wins, and
the check below then names the mismatch).

* klp: :func:`klpsym.kbuild.build.build` (modpost told about the
  convertible names, then conversion).
* kallsyms, kprobe: a plain, strict kbuild -- the module references no
  unexported symbol directly, so modpost has nothing to forgive -- and no
  conversion.  Each .ko must then say ``klpsym_method=M`` in .modinfo.
* auto: klp where the target's loader applies klp relocations (>= 5.8 with
  CONFIG_LIVEPATCH=y), else kprobe with CONFIG_KPROBES=y, else kallsyms.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from klpsym.errors import KbuildError, param
from klpsym.kbuild.build import BuildResult, _make, build, prepare
from klpsym.kbuild.make import KbuildRun
from klpsym.kbuild.runner import HostRunner, Runner, modules_in_order
from klpsym.kernel.target import TargetKernel
from klpsym.klp.sign import Signer
from klpsym.methods.header import Method
from klpsym.methods.insmod import DeclaredSymbol, declared_symbols
from klpsym.module.kallsyms import TargetModules
from klpsym.module.ko import read_module

ENV = "KLPSYM_METHOD"
AUTO = "auto"


def choose_method(requested: str, target: TargetKernel) -> tuple[Method, str]:
    """The method for ``requested`` (a method name or "auto") and why."""
    if requested != AUTO:
        return Method.parse(requested), "asked for with --method"
    release, cfg = target.release, target.config
    if cfg is None:
        return Method.KALLSYMS, (f"no .config for {release}, so neither CONFIG_LIVEPATCH nor "
                                 "CONFIG_KPROBES can be checked; kallsyms needs neither")
    if target.supports_klp_for_plain_modules and cfg.enabled("LIVEPATCH"):
        return Method.KLP, (f"{release} is >= 5.8 with CONFIG_LIVEPATCH=y: its module loader "
                            "resolves klp relocations (direct calls, IBT-safe)")
    why = (f"{release} is older than 5.8" if not target.supports_klp_for_plain_modules
           else f"{release} has no CONFIG_LIVEPATCH")
    if cfg.enabled("KPROBES"):
        return Method.KPROBE, f"{why}; CONFIG_KPROBES=y, so the module looks symbols up itself"
    return Method.KALLSYMS, f"{why} and no CONFIG_KPROBES; load it with 'klpsym insmod'"


@contextlib.contextmanager
def method_env(method: Method) -> Iterator[None]:
    """``KLPSYM_METHOD`` in the environment kbuild (and ``klpsym cflags``) sees."""
    old = os.environ.get(ENV)
    os.environ[ENV] = method.label
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


@dataclass
class MethodModule:
    ko: Path
    name: str
    symbols: list[DeclaredSymbol]


@dataclass
class MethodBuild:
    method: Method
    reason: str
    klp: BuildResult | None = None  # the klp method's result
    modules: list[MethodModule] = field(default_factory=list)  # the other methods'


def build_with_method(directory: Path, target: TargetKernel, requested: str,
                      sympos: Mapping[str, int], make_args: Sequence[str] = (),
                      extra_symvers: Sequence[Path] = (), *, guard: bool = True,
                      signer: Signer | None = None, runner: Runner | None = None,
                      started: KbuildRun | None = None,
                      targets: TargetModules | None = None) -> MethodBuild:
    """Build with the chosen method; ``guard``, ``signer``, ``started`` and
    ``targets`` are the klp method's (see :func:`klpsym.kbuild.build.build`)."""
    method, reason = choose_method(requested, target)
    out = MethodBuild(method, reason)
    if started is not None and method != Method.KLP:
        started.close()
        started = None
    with method_env(method):
        if method == Method.KLP:
            out.klp = build(directory, target, sympos, make_args, extra_symvers, guard=guard,
                            signer=signer, runner=runner, started=started, targets=targets)
            return out
        if sympos:
            raise KbuildError(f"{param('sympos')} is for the klp method; with {method.label}, "
                              "declare the POS in the module (KLPSYM_FUNC_POS) or pass it to "
                              "klpsym insmod")
        directory, kdir, args, output = prepare(directory, target, make_args)
        runner = runner or HostRunner()
        rc = _make(kdir, directory, args, "modules", runner=runner, output=output)
    if rc != 0:
        raise KbuildError(f"kbuild failed in {directory} (make exit {rc}); see its messages "
                          f"above (with the {method.label} method, use klpsym(NAME) for every "
                          "unexported symbol: a direct reference makes modpost fail)")
    for obj in modules_in_order(output or directory, runner.host_path):
        module = read_module(obj.with_suffix(".ko"))
        got, symbols = declared_symbols(module)
        if got != method.label:
            raise KbuildError(
                f"{module.path}: built for method {got or 'none (no klpsym.h)'}, not "
                f"{method.label}; its Kbuild needs 'ccflags-y += $(shell klpsym cflags)' "
                f"without {param('method')} (klpsym build sets it)")
        out.modules.append(MethodModule(module.path, module.name, symbols))
    return out
