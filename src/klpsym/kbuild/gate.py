"""Hand modpost a symvers file written while kbuild waits for it.

``klpsym build`` must tell modpost which undefined symbols to accept (the
unexported ones it converts), and can only know them once the objects are
compiled, which is the moment modpost starts: kbuild runs modpost after every
``<m>.o`` and ``modules.order`` is made (its prerequisites in
scripts/Makefile.modpost, 6.1 to 7.x).  :class:`ModpostGate` makes modpost
wait at that moment, inside the one ``make modules`` run, while klpsym
classifies the objects and writes the file.

How: KBUILD_EXTRA_SYMBOLS lists five paths, ``begin end SYMVERS end
begin``, where ``begin`` and ``end`` are named pipes.  modpost reads every
``-i`` file (read_dump()) before it reads any object, and opening a named
pipe for reading blocks until a writer opens it (fifo(7)):

1. modpost opens ``begin`` and waits; the gate's first thread has waited in
   ``open(begin, O_WRONLY)``, so both opens return.  modpost reads nothing
   from it (read_text_file() reads ``st_size`` bytes, 0 for a pipe; a reader
   up to EOF gets EOF at the writer's close), goes on to ``end`` and waits.
2. The thread calls ``produce()`` (klpsym classifies the objects), writes
   SYMVERS, and only then lets the second thread open ``end``.
3. modpost reads SYMVERS, complete, then the later ``end`` and ``begin``,
   which the threads serve at once.

The list is a palindrome so that the order modpost reads ``-i`` files in does
not matter: 6.1 to 7.x read them in command-line order (``list_add_tail``
of ``dump_lists``), some older modpost read ``-e`` files last first.  A pipe
opened more than once is served each time.  When make ends (modpost never
ran: nothing changed, a compile error, a makefile that replaced
KBUILD_EXTRA_SYMBOLS), :meth:`close` opens both pipes for reading itself,
which releases any thread still waiting, and removes the dir.

The paths are the same from run to run (``.klpsym-modpost/`` in kbuild's
output dir): they are part of modpost's command line, which kbuild keeps in
``.Module.symvers.cmd`` and compares (if_changed), so a rebuild where nothing
changed runs no modpost, as with plain kbuild.  None of them is a make
prerequisite (Makefile.modpost 6.1 to 7.x), so their times do not matter.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from klpsym.errors import KbuildError
from klpsym.kbuild.early import GATE_DIR, GATE_FILES, make_gate, remove_gate


class ModpostGate:
    """The pipes and the symvers file of one build (see the module
    docstring); a context manager: ``with ModpostGate(objdir, produce) as
    gate``, then give ``gate.files`` to modpost.  ``produce`` returns the
    symvers text; it runs at most once, in a thread, while modpost waits.
    What it raises is kept in :attr:`error` (modpost then reads an empty
    file)."""

    def __init__(self, objdir: Path, produce: Callable[[], str]) -> None:
        self.dir = objdir / GATE_DIR
        self.begin, self.end, self.symvers = (self.dir / name for name in GATE_FILES)
        self._produce = produce
        self._stop = False
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self.opened = False  # modpost reached the gate
        self.error: BaseException | None = None

    @property
    def files(self) -> list[Path]:
        """For KBUILD_EXTRA_SYMBOLS, in this order."""
        return [self.begin, self.end, self.symvers, self.end, self.begin]

    def __enter__(self) -> ModpostGate:
        return self.open()

    def open(self, made: bool = False) -> ModpostGate:
        """Make the files (unless ``made``: :func:`klpsym.kbuild.early.make_gate`
        made them for a make already started) and start serving them."""
        if not made:
            try:
                make_gate(str(self.dir))
            except OSError as e:
                raise KbuildError(f"{self.dir}: cannot create klpsym's modpost gate there "
                                  f"({e.strerror}); is the build dir writable?") from None
        self._threads = [threading.Thread(target=self._serve_begin, daemon=True),
                         threading.Thread(target=self._serve_end, daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve_begin(self) -> None:
        while True:
            if not _meet(self.begin) or self._stop:
                return
            if not self.opened:
                self.opened = True
                text = ""
                try:
                    text = self._produce()
                except BaseException as e:  # noqa: BLE001 -- handed to the main thread
                    self.error = e
                try:
                    self.symvers.write_text(text)
                finally:
                    self._ready.set()

    def _serve_end(self) -> None:
        self._ready.wait()
        while not self._stop and _meet(self.end):
            pass

    def close(self) -> None:
        """Release the threads (make has ended) and remove the dir."""
        self._stop = True
        self._ready.set()
        while any(t.is_alive() for t in self._threads):
            for pipe in (self.begin, self.end):
                try:
                    # A reader of our own: a thread waiting to open the pipe
                    # for writing returns, sees _stop and ends.
                    os.close(os.open(pipe, os.O_RDONLY | os.O_NONBLOCK))
                except OSError:
                    pass
            for t in self._threads:
                t.join(0.01)
        self._threads = []
        remove_gate(str(self.dir))


def _meet(pipe: Path) -> bool:
    """Wait for a reader of ``pipe`` and let it go on (False: the pipe is
    gone)."""
    try:
        os.close(os.open(pipe, os.O_WRONLY))
    except OSError:
        return False
    return True
