"""Load modules into a provisioned kernel booted in QEMU, one boot for all.

Each module is insmod'ed in the order given; for each, what insmod said, its
exit status and the kernel log lines written while it loaded come back
(``klpsym lab run``, and tests that want the same).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from klpsym.errors import KlpsymError, LabError
from klpsym.lab.provision import Kernel
from klpsym.lab.qemu import BOOT_TIMEOUT, BootResult, boot
from klpsym.module.ko import read_module

# One record a line on the result channel: "@@<tag> <index> <text>".
_RECORD = re.compile(r"^@@(begin|out|rc|log|loaded) (\d+)(?: (.*))?$")


@dataclass
class Load:
    """What happened when one module was insmod'ed."""

    path: Path
    status: int | None = None  # insmod's exit status (None: the guest never got there)
    output: list[str] = field(default_factory=list)  # what insmod printed
    log: list[str] = field(default_factory=list)  # kernel log lines while it loaded
    loaded: bool = False  # listed in /proc/modules afterwards

    @property
    def ok(self) -> bool:
        return self.status == 0 and self.loaded


@dataclass
class LoadRun:
    kernel: Kernel
    loads: list[Load]
    boot: BootResult

    @property
    def ok(self) -> bool:
        return all(load.ok for load in self.loads)


def script(files: Sequence[tuple[str, str]]) -> str:
    """The guest script: insmod /lab/mod<i>/<file> in order, reporting each;
    ``files`` holds (file name, module name as /proc/modules shows it)."""
    parts = ["dmesg -c >/dev/null\n"]
    for i, (name, mod) in enumerate(files):
        parts.append(
            f"echo '@@begin {i}'\n"
            f"out=$(insmod /lab/mod{i}/{name} 2>&1); rc=$?\n"
            f"[ -n \"$out\" ] && printf '%s\\n' \"$out\" | sed 's/^/@@out {i} /'\n"
            f"echo \"@@rc {i} $rc\"\n"
            f"dmesg -c | sed 's/^/@@log {i} /'\n"
            f"echo \"@@loaded {i} $(grep -c '^{mod} ' /proc/modules)\"\n"
        )
    return "".join(parts)


def parse(output: str, paths: Sequence[Path]) -> list[Load]:
    loads = [Load(p) for p in paths]
    for line in output.splitlines():
        m = _RECORD.match(line)
        if not m or int(m.group(2)) >= len(loads):
            continue
        load, text = loads[int(m.group(2))], m.group(3) or ""
        if m.group(1) == "out":
            load.output.append(text)
        elif m.group(1) == "rc":
            load.status = int(text)
        elif m.group(1) == "log":
            load.log.append(text)
        elif m.group(1) == "loaded":
            load.loaded = text.strip() not in ("", "0")
    return loads


def load_modules(kernel: Kernel, modules: Sequence[Path], *, kaslr: bool = False,
                 timeout: float = BOOT_TIMEOUT) -> LoadRun:
    """Boot ``kernel`` once and insmod ``modules`` in order (a module's failure
    does not stop the next one).  Raises BootError if the guest does not get
    through the script (a panic, say)."""
    if not modules:
        raise LabError("give at least one module (.ko) to load")
    paths = [Path(m) for m in modules]
    for p in paths:
        if not p.is_file():
            raise LabError(f"{p}: no such module file")
    names = []
    for p in paths:
        try:
            name = read_module(p).name
        except KlpsymError:  # not a module: insmod will say so in the guest
            name = p.name.removesuffix(".ko")
        names.append((p.name, name.replace("-", "_")))
    files = {f"mod{i}/{p.name}": p for i, p in enumerate(paths)}
    result = boot(kernel, files, script(names), timeout, kaslr=kaslr)
    return LoadRun(kernel, parse(result.output, paths), result)
