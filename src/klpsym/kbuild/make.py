"""The one ``make modules`` run of ``klpsym build``, and its arguments.

Nothing here imports numpy or the kernel tables (klpsym.kernel): the CLI
starts make with it (:func:`start_early`) before it loads the target
kernel, so that loading it, klpsym's imports among them, happen while kbuild
compiles (on another CPU); modpost then waits at the gate
(:mod:`klpsym.kbuild.gate`) until the target is there.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from klpsym.errors import KbuildError, param
from klpsym.kbuild import early
from klpsym.kbuild.gate import ModpostGate
from klpsym.kbuild.runner import HostRunner, Runner

# MO= (external module output dir) came with Linux 6.13 (commit 11b3d5175e6b
# "kbuild: support building external modules in a separate build directory").
MO_SINCE = (6, 13)
# Exports for named modules only (EXPORT_SYMBOL_GPL_FOR_MODULES, v6.16, commit
# 707f853d7fa3 "module: Provide EXPORT_SYMBOL_GPL_FOR_MODULES() helper"):
# on such targets modpost runs with KBUILD_NSDEPS (see
# klpsym.kbuild.build._module_only_exports).
MODULE_ONLY_SINCE = (6, 16)

Version = tuple[int, int, int]


def check_args(make_args: Sequence[str], version: Version, release: str) -> None:
    """Refuse make arguments that would build something else than DIR."""
    for arg in make_args:
        name = arg.split("=", 1)[0] if "=" in arg else ""
        if name in ("M", "SUBDIRS", "KBUILD_EXTMOD"):
            raise KbuildError(f"make argument {arg!r}: the module directory is klpsym build's "
                              "DIR argument; drop it")
        if name == "MO" and version < MO_SINCE:
            raise KbuildError(
                f"make argument {arg!r}: kernel {release}'s kbuild has no MO= "
                "(a separate output dir for external modules came in Linux 6.13); build in "
                "the source dir, or copy it and build the copy")
        if name == "KBUILD_EXTMOD_OUTPUT":
            raise KbuildError(f"make argument {arg!r}: give the output dir as MO=DIR")
        if name == "KBUILD_MODPOST_WARN":
            raise KbuildError(f"make argument {arg!r}: klpsym build keeps modpost strict; "
                              "drop it")


def split_output(make_args: Sequence[str], directory: Path, version: Version,
                 environ: Mapping[str, str] | None = None) -> tuple[list[str], Path | None]:
    """``make_args`` without ``MO=``, and the separate output dir it names
    (None: kbuild writes into ``directory``), made ready for make.

    After :func:`check_args`.  A relative MO= is taken from the current
    dir (make would take it from KDIR, its ``-C``); the last MO= wins, as in
    make; without one, 6.13+ kbuild takes ``KBUILD_EXTMOD_OUTPUT`` from the
    environment, and so does this.  The dir is created (a chroot's bind mount
    needs it) and the source dir must not hold an in-place build's
    modules.order, which 6.13+ kbuild refuses (``outputmakefile``: "The
    external module source tree is not clean")."""
    environ = os.environ if environ is None else environ
    rest: list[str] = []
    value: str | None = None
    for arg in make_args:
        if arg.startswith("MO="):
            value = arg[3:]
        else:
            rest.append(arg)
    if value is None and version >= MO_SINCE:
        value = environ.get("KBUILD_EXTMOD_OUTPUT")
    if not value:
        return rest, None
    out = Path(os.path.abspath(Path(value).expanduser()))
    if os.path.realpath(out) == os.path.realpath(directory):
        return rest, None
    if out.exists() and not out.is_dir():
        raise KbuildError(f"MO={value}: {out} is not a directory; name a dir for kbuild's output")
    if (directory / "modules.order").exists():
        raise KbuildError(
            f"{directory}: holds an earlier build made in the source dir (modules.order), and "
            f"kbuild refuses MO= while it does; clean it with 'make -C KDIR M={directory} "
            "clean' first")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KbuildError(f"MO={value}: cannot create {out} ({e.strerror})") from None
    return rest, out


def check_module_dir(directory: Path) -> Path:
    """``directory`` resolved, if it is a module dir kbuild can build (the
    CLI checks it before it looks for the target kernel)."""
    directory = directory.resolve()
    if not directory.is_dir():
        raise KbuildError(f"{directory}: no such directory")
    if not ((directory / "Kbuild").is_file() or (directory / "Makefile").is_file()):
        raise KbuildError(f"{directory}: has neither a Kbuild nor a Makefile "
                          "(expected 'obj-m := NAME.o')")
    return directory


def check_kernel_dir(kdir: Path | None) -> Path:
    if kdir is None or not (kdir / "Makefile").is_file():
        raise KbuildError(f"{kdir or 'the target kernel'}: no kbuild Makefile; pass the "
                          f"kernel's build/headers dir with {param('kernel_dir')}")
    return kdir


def make_argv(kdir: Path, directory: Path, make_args: Sequence[str], goal: str,
              runner: Runner, output: Path | None = None) -> list[str]:
    """make's arguments: -C KDIR M=DIR [MO=OUTPUT] [-jN] ... GOAL, as
    ``runner``'s make sees the paths (-jN: this machine's CPUs, unless
    ``make_args`` say)."""
    jobs = [] if any(a.startswith("-j") or a == "--jobs" or a.startswith("--jobs=")
                     for a in make_args) else [f"-j{os.cpu_count() or 1}"]
    mo = [] if output is None else [f"MO={runner.guest_path(output)}"]
    return ["-C", str(runner.guest_path(kdir)), f"M={runner.guest_path(directory)}", *mo,
            *jobs, *make_args, goal]


def extra_symbols(make_args: Sequence[str], files: Sequence[Path],
                  runner: Runner | None = None) -> tuple[list[str], dict[str, str]]:
    """make arguments and environment additions that add ``files`` to
    KBUILD_EXTRA_SYMBOLS (as ``runner``'s make sees them).

    The environment, not the command line: a command-line value would override
    the module Makefile's own ``KBUILD_EXTRA_SYMBOLS +=`` (Makefile.modpost
    includes it); an environment value is appended to.  A value the user gave
    on the make command line is extended instead."""
    runner = runner or HostRunner()
    add = " ".join(str(runner.guest_path(f)) for f in files)
    args = list(make_args)
    for i, arg in enumerate(args):
        if arg.startswith("KBUILD_EXTRA_SYMBOLS="):
            args[i] = f"{arg} {add}"
            return args, {}
    mine = [str(runner.guest_path(Path(p)))
            for p in os.environ.get("KBUILD_EXTRA_SYMBOLS", "").split()]
    return args, {"KBUILD_EXTRA_SYMBOLS": " ".join([*mine, add])}


class KbuildRun:
    """``make modules`` of one module dir, with the modpost gate, running in
    the background from :meth:`start` on.  :meth:`attach` gives it what
    writes the generated symvers (modpost waits at the gate until then);
    :meth:`wait` ends it; :meth:`close` stops make if it still runs, releases
    the gate and removes what klpsym added (the gate's dir; modules.nsdeps,
    unless it was there before).

    ``key`` says what was started, so that a run started early is used
    only for the build it was started for."""

    def __init__(self, kdir: Path, directory: Path, make_args: Sequence[str],
                 output: Path | None, extra_symvers: Sequence[Path], *, nsdeps: bool,
                 runner: Runner, env: Mapping[str, str] | None = None) -> None:
        self.kdir, self.directory, self.output = kdir, directory, output
        self.objdir = output or directory
        self.make_args, self.extra_symvers = list(make_args), list(extra_symvers)
        self.nsdeps, self.runner, self.env = nsdeps, runner, dict(env or {})
        self.key = (kdir, directory, tuple(make_args), output, tuple(extra_symvers), nsdeps)
        self.gate = ModpostGate(self.objdir, self._symvers_text)
        self._attached = threading.Event()
        self._produce: Callable[[], str] | None = None
        self._proc: subprocess.Popen[str] | None = None
        self.command: tuple[list[str], dict[str, str]] | None = None
        self._nsdeps_file = self.objdir / "modules.nsdeps"  # modpost's working dir
        self._had_nsdeps_file = self._nsdeps_file.exists()
        self.returncode: int | None = None

    def start(self) -> KbuildRun:
        """Start make, or adopt the same make started by
        :func:`klpsym.kbuild.early.replay` (any other it started is stopped
        first)."""
        args, env = extra_symbols(self.make_args, [*self.extra_symvers, *self.gate.files],
                                  self.runner)
        env.update(self.env)
        if self.nsdeps:
            env["KBUILD_NSDEPS"] = "1"
        argv = make_argv(self.kdir, self.directory, args, "modules", self.runner, self.output)
        #: What a host make runs with: argv, and what it adds to the environment.
        self.command = (["make", *argv], env)
        if isinstance(self.runner, HostRunner):
            self._proc = early.take(*self.command, self.gate.dir)
        else:
            early.abandon()
        try:
            self.gate.open(made=self._proc is not None)
            # kbuild's own output goes straight to the user's terminal.
            self._proc = self._proc or self.runner.start(argv, env)
        except BaseException:
            self.close()
            raise
        return self

    def _symvers_text(self) -> str:
        self._attached.wait()
        return self._produce() if self._produce is not None else ""

    def attach(self, produce: Callable[[], str]) -> None:
        """What modpost is waiting for: ``produce`` writes the generated
        symvers (see ModpostGate)."""
        self._produce = produce
        self._attached.set()

    @property
    def gated(self) -> bool:
        """modpost reached the gate (and read the generated symvers)."""
        return self.gate.opened

    def idle(self, poll: float = 0.05) -> bool:
        """Wait until make ends (True) or shows it builds something (False):
        modpost reached the gate, or a file was made, changed or removed in
        the output dir (a compile writes its .d file there first), other than
        the ``.tmp_PID`` files of kbuild's compiler checks (try-run, which
        every run makes, TMPOUT being the module dir)."""
        proc = self._proc
        assert proc is not None
        ended = threading.Event()

        def reap() -> None:
            proc.wait()
            ended.set()

        def state() -> frozenset[tuple[str, int]] | None:
            try:
                with os.scandir(self.objdir) as it:
                    return frozenset((e.name, e.stat(follow_symlinks=False).st_mtime_ns)
                                     for e in it if not e.name.startswith(".tmp_"))
            except OSError:
                return None

        threading.Thread(target=reap, daemon=True).start()
        before = state()
        while not ended.wait(poll):
            if self.gate.opened or state() != before:
                return False
        return not self.gate.opened and state() == before

    def returncode_now(self) -> int | None:
        """make's exit status if it has ended, else None."""
        return None if self._proc is None else self._proc.poll()

    def wait(self) -> int:
        """make's exit status, once it has ended (the gate is then closed)."""
        assert self._proc is not None
        try:
            self.returncode = self._proc.wait()
        finally:
            self.close()
        return self.returncode

    def close(self) -> None:
        if self._proc is not None:
            early.stop_make(self._proc, str(self.gate.dir))
        self._attached.set()
        self.gate.close()
        if self.nsdeps and not self._had_nsdeps_file:
            self._nsdeps_file.unlink(missing_ok=True)


_UTS_RELEASE = re.compile(r'#define\s+UTS_RELEASE\s+"([^"]*)"')
_MAJOR_MINOR = re.compile(r"(\d+)\.(\d+)")


def _release(kdir: Path) -> tuple[Version, str] | None:
    """The version (major, minor, 0) and release of the headers in ``kdir``,
    read as klpsym.kernel.version.read_kernel_version reads them (UTS_RELEASE,
    else include/config/kernel.release), or None; the target loaded later
    must agree."""
    try:
        m = _UTS_RELEASE.search((kdir / "include/generated/utsrelease.h").read_text())
        release = m.group(1) if m else None
    except (OSError, UnicodeDecodeError):
        release = None
    if release is None:
        try:
            release = (kdir / "include/config/kernel.release").read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None
    v = _MAJOR_MINOR.match(release or "")
    if release is None or v is None:
        return None
    return (int(v.group(1)), int(v.group(2)), 0), release


def start_early(directory: Path, kernel_dir: Path | None, kernel_release: str | None,
                make_args: Sequence[str], extra_symvers: Sequence[Path],
                env: Mapping[str, str]) -> KbuildRun | None:
    """``klpsym build``'s make, started on this machine before the target
    kernel is loaded, when everything it needs can be known without loading
    it; else None (the build then starts make itself, and reports any
    mistake in the arguments first).  The kernel dir is found as
    klpsym.kernel.target.discover finds it."""
    try:
        if kernel_dir is not None:
            kdir = Path(kernel_dir)
        else:
            kdir = Path("/lib/modules") / (kernel_release or os.uname().release) / "build"
        directory = check_module_dir(directory)
        found = _release(kdir)
        if found is None or kernel_release is not None and found[1] != kernel_release:
            return None
        version, release = found
        check_kernel_dir(kdir)
        check_args(make_args, version, release)
        args, output = split_output(make_args, directory, version)
        extra = [p.resolve() for p in extra_symvers]
        if not all(p.is_file() for p in extra):
            return None
        return KbuildRun(kdir, directory, args, output, extra,
                         nsdeps=version >= MODULE_ONLY_SINCE, runner=HostRunner(),
                         env=env).start()
    except (KbuildError, OSError):
        return None
