"""make started before ``klpsym build`` has parsed its arguments.

``klpsym build`` starts make as soon as its arguments say what to run
(:func:`klpsym.kbuild.make.start_early`); parsing them costs argparse,
pathlib, typing and the command's modules, ~10-15 ms of a 0.7 s rebuild
where nothing changed.  So a run that start_early started records what it
ran (:func:`remember`: make's arguments, what it added to make's
environment, the modpost gate's dir, the files the arguments named) under
its command line, current dir, environment and klpsym version; the next run
with the same four starts that make at once (:func:`replay`, called by the
program before anything else is imported) and :meth:`KbuildRun.start
<klpsym.kbuild.make.KbuildRun.start>` adopts it (:func:`take`) only if it
is exactly the run it would start itself, from the arguments as parsed: any
difference (a kernel dir changed meanwhile) stops it and starts the right
one.  The record is what the parser and start_early decided last time, never
a second parser.

Nothing here imports more than ``os``, ``subprocess`` and ``zlib``; the
gate's files and make's start (:func:`spawn`) are made here for every run,
so that a replayed run is started as any other.
"""

from __future__ import annotations

import os
import subprocess
import zlib
from collections.abc import Iterable, Mapping, Sequence

from klpsym import __version__
from klpsym.cachepath import symcache_dir
from klpsym.errors import KbuildError
from klpsym.procutil import stop

#: The modpost gate's dir in kbuild's output dir (the module dir, or MO=)
#: and its files (:mod:`klpsym.kbuild.gate`): two named pipes and the
#: generated symvers.
GATE_DIR = ".klpsym-modpost"
GATE_FILES = ("begin", "end", "unexported.symvers")
#: The records, in the cache dir; the last :data:`KEEP` starts.
RECORDS = "build-starts"
KEEP = 16

MAKE_MISSING = ("install make and the compiler the kernel headers use "
                "(Debian: build-essential)")


def host_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """make's environment on this machine: this process's with ``env``
    added (None: this process's)."""
    return None if not env else {**os.environ, **env}


def spawn(argv: Sequence[str], env: Mapping[str, str] | None,
          what: str) -> subprocess.Popen[str]:
    """``argv`` started in the background with the environment ``env``
    (None: this process's), its output going to this process's."""
    try:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL,
                                env=None if env is None else dict(env), text=True)
    except FileNotFoundError:
        raise KbuildError(f"{argv[0]!r} is not installed; {what}") from None


def make_gate(directory: str) -> None:
    """The gate's dir with its two pipes and an empty symvers file, in place
    of anything left there by a killed run."""
    remove_gate(directory)
    try:
        os.mkdir(directory)
        os.mkfifo(os.path.join(directory, GATE_FILES[0]), 0o600)
        os.mkfifo(os.path.join(directory, GATE_FILES[1]), 0o600)
        with open(os.path.join(directory, GATE_FILES[2]), "wb"):
            pass
    except OSError:
        remove_gate(directory)
        raise


def remove_gate(directory: str) -> None:
    """Remove the gate's dir (or whatever is at its path), stranding no
    process on its pipes: each is held open for reading and writing while
    it is unlinked.  That open wakes a process waiting to open it (fifo(7);
    Linux allows O_RDWR on a FIFO), a later open finds no pipe, and one in
    between reads end of file once the hold is let go.  A modpost or a
    recipe's command that a stopped make left behind (its shell gone
    before it opened the pipe) ends instead of waiting for good."""
    if os.path.islink(directory) or (os.path.exists(directory)
                                     and not os.path.isdir(directory)):
        os.unlink(directory)
    elif os.path.exists(directory):
        held = []
        for name in GATE_FILES[:2]:
            try:
                held.append(os.open(os.path.join(directory, name),
                                    os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW))
            except OSError:
                pass
        try:  # the gate's own dir: two pipes and a file
            with os.scandir(directory) as entries:
                for entry in entries:
                    os.unlink(entry.path)
            os.rmdir(directory)
        except OSError:  # anything else in it (a dir someone made there)
            import shutil  # here: its import (bz2, lzma) costs ~2 ms

            shutil.rmtree(directory, ignore_errors=True)
        finally:
            for fd in held:
                os.close(fd)


def release_readers(directory: str) -> None:
    """Let every process waiting to open one of the gate's pipes for reading
    go on (it reads end of file): a writer's open meets it (fifo(7)), and
    opens nothing when no reader waits (ENXIO)."""
    for name in GATE_FILES[:2]:
        try:
            os.close(os.open(os.path.join(directory, name), os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def stop_make(proc: subprocess.Popen[str], gate: str) -> None:
    """End make ``proc`` (:func:`klpsym.procutil.stop`), letting go of its
    modpost if it waits at the gate ``gate`` unserved.  make passes SIGTERM
    to the shell running the recipe, but kbuild's recipes trap it
    (delete-on-interrupt, scripts/Kbuild.include, 6.1 to 7.x) and a shell
    runs a trap only once the command it waits for has ended: without the
    release, make would wait for a modpost blocked in open(2) until its
    SIGKILL, and that modpost would stay blocked for good."""
    stop(proc, nudge=lambda: release_readers(gate))


class _Started:
    def __init__(self, argv: list[str], env: dict[str, str], gate: str,
                 proc: subprocess.Popen[str]) -> None:
        self.argv, self.env, self.gate, self.proc = argv, env, gate, proc

    def stop(self) -> None:
        stop_make(self.proc, self.gate)
        remove_gate(self.gate)


#: What this program's record is filed under (set by :func:`replay`, before
#: klpsym sets anything in the environment; None in a process that is not the
#: ``klpsym build`` program: nothing is recorded then).
_program: list[str] | None = None
#: The make :func:`replay` started, until :func:`take` adopts or stops it.
_pending: _Started | None = None


def _records_file() -> str | None:
    found = symcache_dir()
    return None if found is None else os.path.join(found, RECORDS)


def _key(argv: Sequence[str]) -> list[str]:
    """What a record is filed under: klpsym's version, the current dir, the
    environment (make sees all of it) and the command line."""
    env = "\0".join(sorted(f"{k}={v}" for k, v in os.environ.items()))
    return [__version__, os.getcwd(), str(zlib.crc32(env.encode("utf-8", "surrogateescape"))),
            *argv]


# A record is a list of lists of strings (key, make's argv, its environment
# additions as name, value, ..., [gate dir], named files); the file holds the
# records one after the other, every list as its length and its items, all
# NUL-terminated (no argument, path or variable holds a NUL).
Record = list[list[str]]


def _read(path: str) -> list[Record]:
    try:
        with open(path, "rb") as f:
            items = f.read().decode("utf-8", "surrogateescape").split("\0")[:-1]
    except OSError:
        return []
    records: list[Record] = []
    i = 0
    try:
        while i < len(items):
            record: Record = []
            for _ in range(5):
                n = int(items[i])
                part = items[i + 1:i + 1 + n]
                if len(part) != n:
                    return []
                record.append(part)
                i += 1 + n
            if len(record[3]) != 1 or len(record[2]) % 2:
                return []
            records.append(record)
    except (ValueError, IndexError):
        return []  # not a file this version wrote: start afresh
    return records


def _write(path: str, records: list[Record]) -> None:
    items = [x for record in records for part in record for x in (str(len(part)), *part)]
    data = "".join(f"{x}\0" for x in items).encode("utf-8", "surrogateescape")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:  # a cache: a home that cannot take it only loses the head start
        try:
            os.unlink(tmp)
        except OSError:
            pass


def replay(argv: Sequence[str]) -> None:
    """Start the make the last run with this command line, dir and
    environment started, if a record says which and the files it named are
    still there; never fails (a failure here only loses the head start)."""
    global _program, _pending
    try:
        key = _program = _key(argv)
    except OSError:  # the current dir is gone: nothing to file a record under
        return
    path = _records_file()
    if path is None:
        return
    found = next((r for r in _read(path) if r[0] == key), None)
    if found is None:
        return
    make, env, gate, files = found[1:]
    # Only what remember() writes: make, and a gate dir (which make_gate
    # empties first).
    if make[:1] != ["make"] or os.path.basename(gate[0]) != GATE_DIR:
        return
    if not all(os.path.isfile(f) for f in files):
        return
    additions = dict(zip(env[::2], env[1::2], strict=True))
    try:
        make_gate(gate[0])
    except OSError:
        return
    try:
        proc = spawn(make, host_env(additions), MAKE_MISSING)
    except (OSError, KbuildError):
        remove_gate(gate[0])
        return
    _pending = _Started(make, additions, gate[0], proc)


def take(argv: Sequence[str], env: Mapping[str, str],
         gate: os.PathLike[str] | str) -> subprocess.Popen[str] | None:
    """The make :func:`replay` started, if it is ``argv`` with ``env``
    added and the gate ``gate`` (its files made); else None, and that make
    (if any) is stopped and its gate removed."""
    global _pending
    started, _pending = _pending, None
    if started is None:
        return None
    if (started.argv, started.env, started.gate) == (list(argv), dict(env), os.fspath(gate)):
        return started.proc
    started.stop()
    return None


def abandon() -> None:
    """Stop the make :func:`replay` started unless a build has taken it."""
    global _pending
    started, _pending = _pending, None
    if started is not None:
        started.stop()


def remember(argv: Sequence[str], env: Mapping[str, str], gate: os.PathLike[str] | str,
             files: Iterable[os.PathLike[str] | str]) -> None:
    """Record that this program's command line started make ``argv`` with
    ``env`` added and the gate ``gate``, the files ``files`` being there."""
    path = _records_file()
    if _program is None or path is None:
        return
    try:
        named = [os.path.abspath(f) for f in files]
    except OSError:  # the current dir is gone
        return
    record: Record = [_program, list(argv), [x for kv in sorted(env.items()) for x in kv],
                      [os.fspath(gate)], named]
    records = _read(path)
    if records[:1] == [record]:
        return  # the common case: the same build again
    _write(path, [record, *(r for r in records if r[0] != record[0])][:KEEP])
