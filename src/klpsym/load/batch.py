"""Many modules at once: find them, read and judge them in parallel.

The target kernel is read once, in the parent, before the workers are
forked (so they start without importing or parsing anything again).  A
module's verdict depends on the exports of every other module of the batch,
so :func:`check_paths` works in two rounds in the same processes: each
reads modules (chunks taken from a queue, so a process slowed by the
machine's load takes fewer) and sends only their exports; then each
judges the modules it read against all the exports and sends back the
verdicts -- without their symbol lists where the caller does not show them,
and with whatever the caller renders of each (its JSON), made in parallel.
The parent is one of the workers.  The processes are plain forks talking
through pipes: the multiprocessing package would cost more to import
(~10 ms) than the exchange itself.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klpsym.errors import KlpsymError
from klpsym.kernel.target import TargetKernel
from klpsym.load.check import (
    BatchExports,
    Checker,
    ModuleVerdict,
    batch_exports,
    check_modules,
    check_one,
    fail_for_dependencies,
    propagate_dependencies,
)
from klpsym.load.facts import ModuleFacts, module_facts

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
MODULE_PATTERNS = tuple("*" + s for s in MODULE_SUFFIXES)
# Below this many modules a pool costs more than it saves.
PARALLEL_MIN = 16
# Modules a worker takes at a time from the shared counter.
CHUNK = 24


def collect_modules(paths: Iterable[Path]) -> list[Path]:
    """The module files named, with directories searched recursively for
    ``.ko``, ``.ko.xz``, ``.ko.zst`` and ``.ko.gz`` (not through symbolic
    links to directories, as depmod does not: /lib/modules/RELEASE/build
    is one)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = _modules_under(p)
            if not found:
                raise KlpsymError(f"{p}: no kernel modules (*.ko, *.ko.xz, *.ko.zst, *.ko.gz) "
                                  "in this directory")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise KlpsymError(f"{p}: no such file or directory")
    return out


def _modules_under(top: Path) -> list[Path]:
    """The module files under ``top``, sorted as Paths sort (by their parts)."""
    keyed: list[tuple[tuple[str, ...], Path, str]] = []
    todo = [top]
    while todo:
        d = todo.pop()
        parts = d.parts
        with os.scandir(d) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    todo.append(d / e.name)
                elif e.name.endswith(MODULE_SUFFIXES) and e.is_file():
                    keyed.append((parts + (e.name,), d, e.name))
    keyed.sort()
    return [d / name for _, d, name in keyed]


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gather_facts(paths: Sequence[Path], jobs: int | None = None,
                 progress: Callable[[int], None] | None = None) -> list[ModuleFacts]:
    """Read every module (in ``jobs`` processes; default: one per CPU),
    in the order given.  ``progress`` is called with the number done."""
    jobs = jobs or default_jobs()
    if jobs <= 1 or len(paths) < PARALLEL_MIN:
        out = []
        for i, p in enumerate(paths, 1):
            out.append(module_facts(p))
            if progress is not None:
                progress(i)
        return out
    with _forked(len(paths), jobs, lambda chan, queue: chan.send(
            ("facts", list(queue.read(paths, queue.tell).items())))) as (queue, chans):
        found = queue.read(paths, queue.reporter(progress))
        for chan in chans:
            found.update(_receive(chan, "facts"))
        queue.report_all(progress)
    return [found[i] for i in range(len(paths))]


@dataclass
class Checked:
    verdicts: list[ModuleVerdict]  # in the order of the paths
    rendered: list[Any] | None  # render(verdict) of each, when asked


def check_paths(paths: Sequence[Path], target: TargetKernel, jobs: int | None = None, *,
                symbols: bool = True, render: Callable[[ModuleVerdict], Any] | None = None,
                progress: Callable[[int], None] | None = None,
                target_modules: Sequence[str] = ()) -> Checked:
    """Check every module against ``target`` and each other (as
    :func:`~klpsym.load.check.check_modules` does), in ``jobs`` processes
    (default: one per CPU).

    ``symbols=False``: the verdicts of modules that would load may come
    without their symbol list (``symbols_listed`` False), which saves
    sending it between processes.  ``render`` is applied to every final
    verdict (in the workers where it can be) and its results returned in
    ``rendered``.  ``progress`` is called with the number of modules read.
    ``target_modules``: a livepatch's (``--target-module``).
    """
    jobs = jobs or default_jobs()
    # What every process needs of the target, made once before they fork
    # (the kallsyms are read only if a check needs them).
    _ = target.symvers.fields(), target.config
    with _gc_paused():
        if jobs <= 1 or len(paths) < PARALLEL_MIN:
            facts = gather_facts(paths, 1, progress)
            verdicts = check_modules(facts, target, target_modules)
            return Checked(verdicts, [render(v) for v in verdicts] if render else None)
        return _parallel(paths, target, jobs, symbols, render, progress, target_modules)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while hundreds of thousands of small
    objects are made that all live to the end: its passes over them cost a
    third of the check's time, and there are no cycles to collect."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Queue:
    """The chunks of the module list, taken by every process until none is
    left: their numbers in a pipe, written before the processes fork (a
    read of 4 bytes from a pipe is atomic, and end-of-file says none is
    left), so a process slowed by the machine's load takes fewer.  Modules
    read are counted in a second pipe, for the progress report."""

    def __init__(self, total: int) -> None:
        # a pipe holds 64 KiB: at most 16,384 chunk numbers
        self.chunk = max(CHUNK, -(-total // 16384))
        self.total = total
        self.todo_r, todo_w = os.pipe()
        self.done_r, self.done_w = os.pipe()
        os.set_blocking(self.done_r, False)
        count = -(-total // self.chunk)
        try:
            os.write(todo_w, b"".join(k.to_bytes(4, "little") for k in range(count)))
        finally:
            os.close(todo_w)
        self.done = 0

    def read(self, paths: Sequence[Path], on_chunk: Callable[[int], None] | None = None,
             ) -> dict[int, ModuleFacts]:
        """Take chunks until none is left; the facts read, by index.
        ``on_chunk`` is called with the number of modules of each chunk
        read (a worker's :meth:`tell`, the parent's :meth:`reporter`)."""
        mine: dict[int, ModuleFacts] = {}
        while True:
            raw = os.read(self.todo_r, 4)
            if not raw:
                return mine
            start = int.from_bytes(raw, "little") * self.chunk
            end = min(start + self.chunk, self.total)
            for i in range(start, end):
                mine[i] = module_facts(paths[i])
            if on_chunk is not None:
                on_chunk(end - start)

    def tell(self, n: int) -> None:
        """In a worker: say that ``n`` more modules were read."""
        os.write(self.done_w, n.to_bytes(4, "little"))

    def reporter(self, progress: Callable[[int], None] | None) -> Callable[[int], None] | None:
        """In the parent: what to call after each of its chunks, so that
        ``progress`` hears the modules read by every process so far."""
        if progress is None:
            return None
        report = progress

        def on_chunk(n: int) -> None:
            self.done += n
            self.drain()
            report(self.done)
        return on_chunk

    def report_all(self, progress: Callable[[int], None] | None) -> None:
        """In the parent, once every worker is done: the final count."""
        if progress is not None:
            self.drain()
            progress(self.done)

    def drain(self) -> None:
        """Count what the workers said they read."""
        try:
            while raw := os.read(self.done_r, 4096):
                self.done += sum(int.from_bytes(raw[k:k + 4], "little")
                                 for k in range(0, len(raw), 4))
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self.todo_r, self.done_r, self.done_w):
            os.close(fd)


class _Channel:
    """Pickled messages over a pair of pipes between the parent and one
    worker, each a 8-byte length and the pickle."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.r, self.w = read_fd, write_fd

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(len(data).to_bytes(8, "little") + data)
        while view:
            view = view[os.write(self.w, view):]

    def recv(self) -> Any:
        size = int.from_bytes(self._exactly(8), "little")
        return pickle.loads(self._exactly(size))

    def _exactly(self, n: int) -> bytes:
        parts, left = [], n
        while left:
            chunk = os.read(self.r, min(left, 1 << 20))
            if not chunk:
                raise EOFError
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


def _judge(checker: Checker, f: ModuleFacts, symbols: bool,
           render: Callable[[ModuleVerdict], Any] | None) -> tuple[ModuleVerdict, Any]:
    """The verdict on ``f`` (and its rendering, made from every symbol):
    with its symbols listed unless ``symbols`` is False and the module
    would load."""
    listed = checker.list_plain = symbols or render is not None
    v = check_one(f, checker)
    if not v.would_load and not listed:  # a failing module's symbols are shown
        checker.list_plain = True
        v = check_one(f, checker)
    rendered = render(v) if render is not None else None
    if not symbols and v.would_load and f.undefined:  # one row a symbol, when listed
        v.symbols = []
        v.symbols_listed = False
    return v, rendered


def _worker(chan: _Channel, queue: _Queue, paths: Sequence[Path], target: TargetKernel,
            symbols: bool, render: Callable[[ModuleVerdict], Any] | None,
            target_modules: Sequence[str]) -> None:
    facts = queue.read(paths, queue.tell)
    mine = [(i, batch_exports(f)) for i, f in facts.items()]
    chan.send(("exports", mine))
    # the others' exports (the parent's and other workers'), then all in order
    batch: list[BatchExports | None] = [None] * len(paths)
    for i, e in [*mine, *chan.recv()]:
        batch[i] = e
    checker = Checker(target, batch, target_modules)
    chan.send(("verdicts", [(i, *_judge(checker, f, symbols, render))
                            for i, f in facts.items()]))


def _receive(chan: _Channel, what: str) -> Any:
    try:
        kind, payload = chan.recv()
    except EOFError:
        raise RuntimeError("a klpsym check worker exited unexpectedly") from None
    if kind == "error":
        raise RuntimeError(f"a klpsym check worker failed:\n{payload}")
    assert kind == what, (kind, what)
    return payload


def _fork_worker(run: Callable[[_Channel], None]) -> tuple[int, _Channel]:
    """A worker process running ``run`` with its end of a channel to the
    parent, which gets ``("error", traceback)`` if it fails; it exits
    without the interpreter's clean-up (the parent's buffered output must
    not be written twice)."""
    to_worker_r, to_worker_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            os.close(to_worker_w)
            os.close(to_parent_r)
            chan = _Channel(to_worker_r, to_parent_w)
            try:
                run(chan)
            except BaseException:  # noqa: BLE001 -- reported to the parent, which raises
                try:
                    chan.send(("error", traceback.format_exc()))
                except OSError:
                    pass
        finally:
            os._exit(0)
    os.close(to_worker_r)
    os.close(to_parent_w)
    return pid, _Channel(to_parent_r, to_worker_w)


@contextmanager
def _forked(total: int, jobs: int, run: Callable[[_Channel, _Queue], None],
            ) -> Iterator[tuple[_Queue, list[_Channel]]]:
    """A queue of ``total`` modules and up to ``jobs - 1`` workers running
    ``run`` on it (the parent is the last of the ``jobs``), with their
    channels; on leaving, the channels closed and the workers reaped."""
    queue = _Queue(total)
    workers: list[tuple[int, _Channel]] = []
    finished = False
    try:
        for _ in range(min(jobs, total // queue.chunk + 1) - 1):
            workers.append(_fork_worker(lambda chan: run(chan, queue)))
        yield queue, [chan for _, chan in workers]
        finished = True
    finally:
        for pid, chan in workers:
            chan.close()
            _reap(pid, finished)
        queue.close()


_reapers: list[threading.Thread] = []
_kept: list[object] = []  # the facts of the last batch (see _parallel)


def _reap(pid: int, finished: bool) -> None:
    """Wait for a worker.  One that sent its verdicts is exiting: it is
    reaped in the background (its exit, the kernel freeing its memory,
    takes ~10 ms that the report need not wait for; the interpreter's exit
    and :func:`wait_for_workers` wait for it).  Another exits when it finds
    its pipes closed, and is killed if it has not after 5 s."""
    if finished:
        reaper = threading.Thread(target=os.waitpid, args=(pid, 0), name="klpsym-reap")
        reaper.start()
        _reapers.append(reaper)
        return
    for _ in range(5000):
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def wait_for_workers() -> None:
    """Return when every worker of earlier :func:`check_paths` calls has
    exited and been reaped."""
    while _reapers:
        _reapers.pop().join()


def _parallel(paths: Sequence[Path], target: TargetKernel, jobs: int, symbols: bool,
              render: Callable[[ModuleVerdict], Any] | None,
              progress: Callable[[int], None] | None,
              target_modules: Sequence[str] = ()) -> Checked:
    with _forked(len(paths), jobs, lambda chan, queue: _worker(
            chan, queue, paths, target, symbols, render, target_modules)) as (queue, chans):
        mine = queue.read(paths, queue.reporter(progress))
        parts = [[(i, batch_exports(f)) for i, f in mine.items()]]
        parts += [_receive(chan, "exports") for chan in chans]
        for w, chan in enumerate(chans, 1):  # each what it has not got
            chan.send([x for k, part in enumerate(parts) if k != w for x in part])
        exports: list[BatchExports | None] = [None] * len(paths)
        for part in parts:
            for i, e in part:
                exports[i] = e
        checker = Checker(target, exports, target_modules)
        results: list[tuple[ModuleVerdict, Any] | None] = [None] * len(paths)
        for i, f in mine.items():
            results[i] = _judge(checker, f, symbols, render)
        # Not freed now (~3 ms for half a kernel's modules, while the report
        # waits): kept until the next batch, and the program ends without
        # freeing it (cli.main.entry).
        _kept[:] = [mine]
        for chan in chans:
            for i, v, rendered in _receive(chan, "verdicts"):
                results[i] = (v, rendered)
        queue.report_all(progress)
    verdicts = [r[0] for r in results if r is not None]
    if len(verdicts) != len(paths):
        raise RuntimeError("klpsym check: a worker left modules unchecked")
    rendered = [r[1] for r in results if r is not None] if render is not None else None
    # Modules that need a module of the batch that would not load: their
    # verdict changes now, so they are judged again here with everything.
    failed = propagate_dependencies(verdicts)
    if failed:
        where = {id(v): i for i, v in enumerate(verdicts)}
        for v, bad in failed:
            i = where[id(v)]
            if not v.symbols_listed:
                checker.list_plain = True
                v = verdicts[i] = check_one(module_facts(paths[i]), checker)
                fail_for_dependencies(v, bad)
            if rendered is not None and render is not None:
                rendered[i] = render(v)
    return Checked(verdicts, rendered)
