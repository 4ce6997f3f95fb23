"""Where kbuild's ``make`` runs: on this machine, or inside a chroot.

A target kernel's headers call their own compiler (Debian: ``gcc-12`` for
6.1, ``gcc-14`` for 6.12, ``gcc-16`` for 7.x).  When this machine lacks it, a
chroot of the target's distribution has it, and make runs there.  Everything
make is given (``-C KDIR``, ``M=DIR``, ``MO=OUTDIR``, KBUILD_EXTRA_SYMBOLS) is then a path
*as the chroot sees it*, and what make writes back (``modules.order``) is one
too; a runner maps both ways:

* :class:`HostRunner`: make on this machine; paths are unchanged.
* :class:`ChrootRunner`: make in ``chroot ROOT``.  A path inside ROOT is the
  same path without the ROOT prefix; any other directory make needs (the
  module dir, the output dir, a generated symvers file's dir) is bind-mounted at
  ``/klpsym/host/<its absolute path>`` for the one make run, in a private
  mount namespace (``unshare``), so nothing stays mounted afterwards, even
  after a kill.  The namespace also gets its own /proc (objtool reads it).
  Needs root.  The kernel dir must be inside ROOT: the headers refer to their
  kbuild tools by relative links that must resolve in there.

:func:`modules_in_order` is the one reader of kbuild's ``modules.order``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from klpsym.errors import KbuildError, param
from klpsym.kbuild.early import MAKE_MISSING, host_env, spawn

#: Where a ChrootRunner shows the host's directories inside the chroot.
HOST_MOUNT = Path("/klpsym/host")
#: PATH inside a chroot (nothing of the host's PATH, e.g. a venv, leaks in).
CHROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class Runner(Protocol):
    """Runs make somewhere and maps paths between this machine and there."""

    def guest_path(self, path: Path) -> Path:
        """``path`` (on this machine, existing) as make will see it."""
        ...

    def host_path(self, path: Path) -> Path:
        """A path make printed or wrote, as it is on this machine."""
        ...

    def make(self, args: Sequence[str], env: Mapping[str, str] | None = None, *,
             capture: bool = False,
             timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """``make ARGS`` with ``env`` added to make's environment.  With
        ``capture`` stdout and stderr are returned together in ``stdout``;
        else they go to this process's own."""
        ...

    def start(self, args: Sequence[str],
              env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """``make ARGS`` started in the background, its output going to this
        process's stdout and stderr."""
        ...

    def describe(self) -> str:
        """Where make runs, for messages ("this machine", "chroot /x")."""
        ...


def _run(argv: Sequence[str], env: Mapping[str, str] | None, capture: bool,
         timeout: float | None, what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), stdin=subprocess.DEVNULL, env=None if env is None else dict(env),
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            text=True, errors="replace", timeout=timeout, check=False)
    except FileNotFoundError:
        raise KbuildError(f"{argv[0]!r} is not installed; {what}") from None
    except subprocess.TimeoutExpired:
        raise KbuildError(f"make timed out after {timeout:g} s ({what})") from None


class HostRunner:
    """make on this machine, with this process's environment."""

    def guest_path(self, path: Path) -> Path:
        return path

    def host_path(self, path: Path) -> Path:
        return path

    def make(self, args: Sequence[str], env: Mapping[str, str] | None = None, *,
             capture: bool = False,
             timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return _run(["make", *args], host_env(env), capture, timeout, MAKE_MISSING)

    def start(self, args: Sequence[str],
              env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        return spawn(["make", *args], host_env(env), MAKE_MISSING)

    def describe(self) -> str:
        return "this machine"


class ChrootRunner:
    """make inside ``chroot ROOT`` (see the module docstring).  One runner
    serves one build: every directory :meth:`guest_path` is asked about is
    bind-mounted for each later :meth:`make`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise KbuildError(f"{root}: no such directory ({param('chroot')}); pass the root of "
                              "a system with the compiler the kernel headers call")
        self._binds: list[Path] = []

    def describe(self) -> str:
        return f"chroot {self.root}"

    def guest_path(self, path: Path) -> Path:
        path = Path(os.path.abspath(path))
        if path.is_relative_to(self.root):
            return Path("/") / path.relative_to(self.root)
        share = path if path.is_dir() else path.parent
        if not any(share.is_relative_to(b) for b in self._binds):
            self._binds = [b for b in self._binds if not b.is_relative_to(share)] + [share]
        return HOST_MOUNT / path.relative_to("/")

    def host_path(self, path: Path) -> Path:
        if not path.is_absolute():
            return path
        if path.is_relative_to(HOST_MOUNT):
            return Path("/") / path.relative_to(HOST_MOUNT)
        return self.root / path.relative_to("/")

    def _check(self) -> None:
        import shutil  # here: shutil and shlex cost ~3 ms of every build's start

        if os.geteuid() != 0:
            raise KbuildError(f"running make in the chroot {self.root} needs root "
                              "(chroot, mount namespaces); run as root")
        for tool, package in (("unshare", "util-linux"), ("chroot", "coreutils"),
                              ("mount", "mount")):
            if shutil.which(tool) is None:
                raise KbuildError(f"{tool!r} is missing; apt-get install {package}")
        if not (self.root / "usr" / "bin" / "make").exists():
            raise KbuildError(f"{self.root} has no /usr/bin/make; install make in the chroot")

    def make(self, args: Sequence[str], env: Mapping[str, str] | None = None, *,
             capture: bool = False,
             timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return _run(self._argv(args, env), {"PATH": CHROOT_PATH}, capture, timeout,
                    "apt-get install util-linux")

    def start(self, args: Sequence[str],
              env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        return spawn(self._argv(args, env), {"PATH": CHROOT_PATH},
                     "apt-get install util-linux")

    def _argv(self, args: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
        self._check()
        mount_point = self.root / HOST_MOUNT.relative_to("/")
        mount_point.mkdir(parents=True, exist_ok=True)
        import shlex

        q = shlex.quote
        lines = ["set -e", f"mount -t tmpfs klpsym-host {q(str(mount_point))}"]
        for share in self._binds:
            inside = mount_point / share.relative_to("/")
            lines += [f"mkdir -p {q(str(inside))}",
                      f"mount --bind {q(str(share))} {q(str(inside))}"]
        clean = {"PATH": CHROOT_PATH, "HOME": "/root", "LC_ALL": "C.UTF-8", **(env or {})}
        lines.append("exec chroot " + q(str(self.root)) + " /usr/bin/env -i "
                     + " ".join(q(f"{k}={v}") for k, v in clean.items())
                     + " make " + " ".join(q(a) for a in args))
        # A private mount and pid namespace: the tmpfs, the binds and the new
        # /proc vanish with it (nothing to unmount, even after a kill), and
        # so does make (--kill-child: unshare killed kills it).
        return ["unshare", "--fork", "--kill-child", "--pid", "--mount", "--propagation",
                "private", f"--mount-proc={self.root / 'proc'}", "sh", "-c", "\n".join(lines)]


def modules_in_order(directory: Path,
                     host_path: Callable[[Path], Path] = lambda p: p) -> list[Path]:
    """The module objects (``<m>.o``) kbuild listed in ``directory/modules.order``
    (``directory``: where kbuild wrote its output, the module dir or MO=).

    For external modules Debian's 6.1 writes absolute ``.ko`` paths, 6.12
    absolute ``.o`` paths (both as make saw them: ``host_path`` maps a chroot's
    view back), 7.x relative ``.o`` ones (kbuild runs in the output dir since
    6.13: "kbuild: change working directory to external module directory with
    M=", then MO=); older kernels wrote ``kernel/...`` entries.
    """
    order = directory / "modules.order"
    try:
        entries = order.read_text().split()
    except OSError as e:
        raise KbuildError(f"{order}: kbuild wrote no modules.order ({e.strerror}); is obj-m set "
                          "in the Kbuild/Makefile?") from None
    out: list[Path] = []
    for entry in entries:
        rel = Path(entry.removeprefix("kernel/"))
        obj = (host_path(rel) if rel.is_absolute() else directory / rel).with_suffix(".o")
        if obj not in out:
            out.append(obj)
    if not out:
        raise KbuildError(f"{order} lists no module; set obj-m in the Kbuild/Makefile")
    return out
