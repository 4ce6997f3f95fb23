"""What the last ``klpsym build`` of a dir made, so that a rebuild where
nothing changed costs what kbuild's own costs.

After a build, ``.klpsym-build.json`` in kbuild's output dir records the
inputs (the command line, the current dir, and the identity of every file it
names and of the kernel dir's Module.symvers, .config and release: device,
inode, size, mtime and ctime, as the symbol cache keys its entries), the
outputs (modules.order, the dir's Module.symvers and each .ko, as converted),
and what the run printed.  When the next run's make ends without running
modpost and without writing into the output dir, and every input and output
is still the same, the .ko files are the ones a conversion would leave as
they are: klpsym prints the recorded report and loads no kernel table (nor
numpy).  Any difference, a missing or unreadable stamp: the full build.
Nothing here imports numpy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from klpsym import __version__
from klpsym.errors import KbuildError
from klpsym.kbuild.runner import modules_in_order

STAMP = ".klpsym-build.json"


def _identity(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def inputs(argv: Iterable[str], files: Iterable[Path | None]) -> dict[str, object]:
    """The key of a run: its arguments, the current dir, the files' identities
    (and this boot's id: /proc/kallsyms, the default source, is the same for
    a whole boot)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    named = sorted({str(Path(f).resolve()) for f in files if f is not None})
    return {"klpsym": __version__, "argv": list(argv), "cwd": os.getcwd(), "boot": boot,
            "files": {f: _identity(Path(f)) for f in named}}


def _outputs(objdir: Path) -> dict[str, object] | None:
    try:
        kos = [o.with_suffix(".ko") for o in modules_in_order(objdir)]
    except KbuildError:
        return None
    found = {str(p): _identity(p) for p in [objdir / "modules.order",
                                            objdir / "Module.symvers", *kos]}
    return None if any(v is None for v in found.values()) else dict(found)


def save(objdir: Path, key: dict[str, object], report: str) -> None:
    """Record a successful build (best effort: a dir that cannot take the
    file only loses the shortcut)."""
    outputs = _outputs(objdir)
    if outputs is None:
        return
    path = objdir / STAMP
    tmp = path.with_name(f".{STAMP}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"inputs": key, "outputs": outputs, "report": report}))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


_SOURCES = (".c", ".h", ".S", ".s", ".lds")
_MAKEFILES = ("Kbuild", "Makefile")


def likely_current(objdir: Path, directory: Path, key: dict[str, object]) -> bool:
    """Whether make will probably find nothing to do: the record holds and
    no source or makefile under ``directory`` is newer than it.  A guess,
    to choose when to load the target (at once, or only if make turns out
    to build something); make decides."""
    try:
        stamp_time = os.stat(objdir / STAMP).st_mtime_ns
    except OSError:
        return False
    if recorded_report(objdir, key) is None:
        return False
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.endswith(_SOURCES) or name in _MAKEFILES:
                try:
                    if os.stat(os.path.join(root, name)).st_mtime_ns > stamp_time:
                        return False
                except OSError:
                    return False
    return True


def recorded_report(objdir: Path, key: dict[str, object]) -> str | None:
    """What the last build printed, if it was made from these inputs and its
    outputs are untouched; else None."""
    try:
        data = json.loads((objdir / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("inputs") != key:
        return None
    outputs = _outputs(objdir)
    report = data.get("report")
    if outputs is None or data.get("outputs") != outputs or not isinstance(report, str):
        return None
    return report
