"""A Python for the QEMU guest, so klpsym itself runs inside a booted kernel.

The guest's userland is busybox; to run ``klpsym convert``, ``check`` and
``insmod`` there as a user would on the target machine, this module assembles
a self-contained CPython from the interpreter running it:

* ``bin/pythonX.Y``: the real binary behind the venv (its symlinks resolved);
* ``lib/``: every shared library the binary and the kept extension modules
  need (DT_NEEDED, resolved by ``ldd``), and the dynamic loader itself;
* ``lib/pythonX.Y``: the standard library without what klpsym never imports
  (:data:`STDLIB_SKIP`, :data:`DYNLOAD_SKIP`);
* ``deps``: klpsym's runtime dependencies from the
  venv (:data:`PACKAGES`: numpy with numpy.libs, rich, zstandard's C backend),
  without their tests;
* beside it, a second tree with the klpsym package (``src/klpsym``), kept
  apart because it changes far more often than the interpreter.

Every .py is byte-compiled into the tree with unchecked-hash pycs: the
initramfs stores mtime 0, so timestamp pycs would be stale and Python would
compile every import under TCG.  Shared objects are copied with their debug
information stripped.  Both trees are cached under ``<cache>/guestpy`` keyed
on their inputs, and checked once after assembly by running the copied
interpreter on the host (same loader, same libraries) to import all of klpsym.

In the guest (``files()`` puts the trees at /lab/py and /lab/py/site),
``GUEST_SETUP`` installs ``/bin/klpsym``, which starts Python through the
copied loader: ``ld-linux-x86-64.so.2 --library-path /lab/py/lib
/lab/py/bin/python3.11 -m klpsym.cli.main``.
"""

from __future__ import annotations

import compileall
import hashlib
import os
import py_compile
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import klpsym
from klpsym.elf import ElfFile
from klpsym.errors import KlpsymError, LabError
from klpsym.lab._run import run as _run
from klpsym.lab.provision import default_cache_dir

GUEST_ROOT = "/lab/py"
GUEST_SITE = f"{GUEST_ROOT}/site"
# On PYTHONPATH, not in lib/pythonX.Y/site-packages: Debian's python looks
# for site packages in lib/python3/dist-packages instead.
GUEST_DEPS = f"{GUEST_ROOT}/deps"
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
LOADER = "ld-linux-x86-64.so.2"

# Standard library packages and modules klpsym and its dependencies never import.
STDLIB_SKIP = frozenset({
    "test", "idlelib", "tkinter", "turtledemo", "turtle.py", "ensurepip", "lib2to3",
    "pydoc_data", "site-packages", "dist-packages", "distutils", "venv", "unittest",
    "sqlite3", "curses", "dbm", "asyncio", "xmlrpc", "wsgiref", "http", "email",
    "html", "xml", "multiprocessing", "concurrent", "__phello__", "__hello__.py",
    "antigravity.py", "this.py", "pydoc.py", "doctest.py", "smtplib.py", "imaplib.py",
    "nntplib.py", "ftplib.py", "poplib.py", "mailbox.py",
})
# Extension modules of lib-dynload nothing of klpsym's loads (tests, GUIs,
# databases, OpenSSL: libcrypto is the largest library they would pull in;
# hashlib falls back to its built-in sha256, md5 and blake2).
DYNLOAD_SKIP = re.compile(
    r"^(_test\w*|_ctypes_test|_xx\w*|xx\w*|_tkinter|_curses\w*|_dbm|_gdbm|_sqlite3|_ssl"
    r"|readline|nis|spwd|ossaudiodev|audioop|_asyncio|_multiprocessing|_posixshmem"
    r"|_elementtree|pyexpat|_codecs_\w+|_multibytecodec|_lsprof|_crypt|_hashlib)\.")
# The venv's packages the guest needs: import name -> files within it to leave out.
PACKAGES: dict[str, re.Pattern[str]] = {
    "numpy": re.compile(r"(^|/)tests/|^(f2py|distutils|typing|_pyinstaller|testing/"
                        r"|_core/include|_core/lib/|random/lib/)|\.pyi$|\.pxd$|\.h$"
                        r"|^_core/_(multiarray_tests|operand_flag_tests|rational_tests"
                        r"|struct_ufunc_tests|umath_tests|simd)\."),
    "numpy.libs": re.compile(r"^$"),
    "rich": re.compile(r"\.pyi$"),
    # the C backend is the one zstandard picks; leave out the cffi one
    "zstandard": re.compile(r"^(_cffi\.|backend_cffi)|\.pyi$"),
}
# In klpsym's own tree: build leftovers.
_PACKAGE_SKIP = re.compile(r"(^|/)__pycache__/|\.(c|o|pyc)$")
# Part of both cache keys: a change to the selection or layout here is a new tree.
_RECIPE = hashlib.sha256(Path(__file__).read_bytes()).digest()


@dataclass(frozen=True)
class GuestPython:
    """The two assembled trees (see the module docstring)."""

    base: Path  # interpreter, libraries, standard library, dependencies
    site: Path  # holds klpsym/

    def files(self) -> dict[str, Path]:
        """``files`` for :func:`klpsym.lab.qemu.boot`: /lab/py and /lab/py/site."""
        return {"py": self.base, "py/site": self.site}

    def size(self) -> int:
        """Bytes of regular files in both trees (what the initramfs carries)."""
        return sum(p.stat().st_size for t in (self.base, self.site) for p in t.rglob("*")
                   if p.is_file() and not p.is_symlink())


GUEST_SETUP = f"""\
cat > /bin/klpsym <<'EOF'
#!/bin/sh
PYTHONHOME={GUEST_ROOT} PYTHONPATH={GUEST_SITE}:{GUEST_DEPS} PYTHONDONTWRITEBYTECODE=1 \\
exec {GUEST_ROOT}/lib/{LOADER} --library-path {GUEST_ROOT}/lib \\
    {GUEST_ROOT}/bin/python{PYVER} -m klpsym.cli.main "$@"
EOF
chmod 755 /bin/klpsym
"""


# ------------------------------------------------------------ file selection


def _walk(root: Path) -> Iterator[Path]:
    """Regular files and symlinks under ``root``, sorted, as paths relative to it."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(filenames):
            yield (here / name).relative_to(root)


def stdlib_files(stdlib: Path) -> list[Path]:
    """The standard library's files to copy (relative to ``stdlib``): the
    .py sources and lib-dynload's extension modules, without STDLIB_SKIP's
    packages and modules, DYNLOAD_SKIP's extensions, pycs (recompiled), the
    static library and build configuration (config-X.Y-*)."""
    out: list[Path] = []
    for rel in _walk(stdlib):
        top = rel.parts[0]
        if top in STDLIB_SKIP or top.startswith("config-") or "__pycache__" in rel.parts:
            continue
        if "test" in rel.parts[:-1] or "tests" in rel.parts[:-1]:
            continue  # e.g. ctypes/test, sqlite3/test
        if top == "lib-dynload":
            if len(rel.parts) == 2 and not DYNLOAD_SKIP.match(rel.name):
                out.append(rel)
        elif rel.suffix == ".py" or (rel.suffix == ".txt" and "LICENSE" in rel.name):
            out.append(rel)
    return out


def package_files(root: Path, skip: re.Pattern[str]) -> list[Path]:
    """The files of one site-packages directory ``root`` to copy, relative to it."""
    return [rel for rel in _walk(root)
            if "__pycache__" not in rel.parts and not skip.search(rel.as_posix())]


_LDD_LINE = re.compile(r"^\s*(\S+)(?:\s+=>\s+(\S+))?\s+\(0x[0-9a-f]+\)\s*$")


def parse_ldd(text: str) -> dict[str, Path]:
    """``ldd``'s output: soname -> resolved path, the loader included (under
    its own file name); the vDSO and anything ldd could not find left out
    (``not found`` is checked by :func:`needed_libraries`)."""
    out: dict[str, Path] = {}
    for line in text.splitlines():
        m = _LDD_LINE.match(line)
        if not m:
            continue
        name, path = m.group(1), m.group(2)
        if path is None:  # the loader: "/lib64/ld-linux-x86-64.so.2 (0x...)"
            if name.startswith("/"):
                out[Path(name).name] = Path(name)
        elif path.startswith("/"):
            out[name] = Path(path)
    return out


def needed_libraries(objects: Iterable[Path], *, provided: Iterable[Path] = ()) -> dict[str, Path]:
    """The shared libraries (soname -> host path) ``objects`` load, per
    ``ldd``, except those under ``provided`` (directories shipped anyway,
    such as numpy.libs, which the extensions find through their RUNPATH)."""
    roots = [p.resolve() for p in provided]
    out: dict[str, Path] = {}
    for obj in objects:
        try:
            proc = subprocess.run(["ldd", str(obj)], capture_output=True, text=True,
                                  timeout=60, check=False)
        except FileNotFoundError:
            raise LabError("ldd not found; install libc-bin") from None
        missing = [ln.split()[0] for ln in proc.stdout.splitlines() if "not found" in ln]
        if proc.returncode != 0 or missing:
            raise LabError(f"ldd {obj}: {missing or proc.stderr.strip()}: cannot ship its "
                           "libraries to the guest")
        for name, path in parse_ldd(proc.stdout).items():
            real = path.resolve()
            if not any(real.is_relative_to(r) for r in roots):
                out.setdefault(name, real)
    if LOADER not in out:
        raise LabError(f"no {LOADER} among the libraries of {', '.join(map(str, objects))}")
    return out


# ------------------------------------------------------------ assembly


def _has_debug_info(path: Path) -> bool:
    """An ELF file with DWARF (.debug_info); False for anything else."""
    with path.open("rb") as f:
        if f.read(4) != b"\x7fELF":
            return False
    try:
        elf = ElfFile.from_path(path, relocatable_only=False)
    except KlpsymError:
        return False
    return elf.section_by_name(".debug_info") is not None


def _copy(src: Path, dest: Path) -> None:
    """Copy a file; an ELF object with debug information without it.  Only
    those are stripped: strip mangles some libraries rewritten by patchelf
    (auditwheel's numpy.libs), which carry no debug information anyway."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o755 if os.access(src, os.X_OK) or ".so" in src.name else 0o644)
    if _has_debug_info(src):
        _run(["strip", "--strip-debug", dest], what=f"strip {dest.name}", timeout=120,
             fix="install binutils")


def _compile(tree: Path) -> None:
    """Byte-compile every .py in ``tree`` (unchecked-hash pycs, see the module
    docstring); failures (a stray Python 2 file) only mean no pyc for it."""
    compileall.compile_dir(
        str(tree), quiet=2, workers=1, optimize=0,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def _stat_key(paths: Iterable[Path]) -> str:
    h = hashlib.sha256(_RECIPE + sys.version.encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def _package_dir(name: str) -> Path:
    """Where the running interpreter imports ``name`` from (a site-packages dir)."""
    if name.endswith(".libs"):  # auditwheel's vendored libraries, beside the package
        return _package_dir(name.removesuffix(".libs")).parent / name
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise LabError(f"the Python package {name} is not installed in {sys.prefix}; "
                       "run scripts/bootstrap")
    return Path(next(iter(spec.submodule_search_locations)))


def _publish(tmp: Path, dest: Path) -> None:
    try:
        os.rename(tmp, dest)
    except OSError:  # another process published the same key first
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_dir():
            raise


def _assemble_base(dest: Path, executable: Path, stdlib: Path,
                   packages: dict[str, Path]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    lib = tmp / "lib" / f"python{PYVER}"
    _copy(executable, tmp / "bin" / f"python{PYVER}")
    for rel in stdlib_files(stdlib):
        _copy(stdlib / rel, lib / rel)
    site = tmp / "deps"
    for name, src in packages.items():
        for rel in package_files(src, PACKAGES[name]):
            _copy(src / rel, site / name / rel)
    objects = [executable, *(p for p in tmp.rglob("*.so") if p.is_file()),
               *(p for p in (site / "numpy.libs").glob("*") if p.is_file())]
    # the copies' RUNPATH ($ORIGIN/../../numpy.libs) finds the copied numpy.libs
    for name, path in needed_libraries(objects, provided=[site]).items():
        _copy(path, tmp / "lib" / name)
    _compile(lib)
    _compile(site)
    _publish(tmp, dest)


def _assemble_site(dest: Path, package: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    for rel in package_files(package, _PACKAGE_SKIP):
        _copy(package / rel, tmp / "klpsym" / rel)
    _compile(tmp)
    _publish(tmp, dest)


def _validate(gp: GuestPython) -> None:
    """Run the copied interpreter the way the guest does and import all of klpsym."""
    code = ("import pkgutil, importlib, numpy, rich.console, rich.progress, zstandard, klpsym\n"
            "for m in pkgutil.walk_packages(klpsym.__path__, 'klpsym.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(klpsym.__file__, numpy.__version__)\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONHOME": str(gp.base),
           "PYTHONPATH": f"{gp.site}:{gp.base / 'deps'}", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [str(gp.base / "lib" / LOADER), "--library-path", str(gp.base / "lib"),
           str(gp.base / "bin" / f"python{PYVER}"), "-c", code]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    if proc.returncode != 0 or not proc.stdout.startswith(str(gp.site)):
        raise LabError(f"the guest Python in {gp.base} does not run klpsym: "
                       f"{(proc.stderr.strip().splitlines() or [proc.stdout.strip()])[-1]}")


def guest_python(cache_dir: Path | None = None) -> GuestPython:
    """The trees for the guest, assembled (about half a minute) or from the cache."""
    root = (cache_dir or default_cache_dir()) / "guestpy"
    root.mkdir(parents=True, exist_ok=True)
    executable = Path(os.path.realpath(sys.executable))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    packages = {name: _package_dir(name) for name in PACKAGES}
    inputs = [executable, stdlib, stdlib / "lib-dynload"]
    inputs += [packages[name] / "__init__.py" for name in PACKAGES if "." not in name]
    inputs += [packages[name] for name in PACKAGES if "." in name]
    base = root / f"base-{_stat_key(inputs)}"
    package = Path(klpsym.__file__).parent
    h = hashlib.sha256(_RECIPE)
    for rel in package_files(package, _PACKAGE_SKIP):
        h.update(rel.as_posix().encode() + b"\0" + (package / rel).read_bytes())
    site = root / f"klpsym-{h.hexdigest()[:16]}"
    fresh: list[Path] = []
    if not base.is_dir():
        _assemble_base(base, executable, stdlib, packages)
        fresh.append(base)
    if not site.is_dir():
        _assemble_site(site, package)
        fresh.append(site)
    gp = GuestPython(base, site)
    if fresh:
        try:
            _validate(gp)
        except LabError:
            for tree in fresh:
                shutil.rmtree(tree, ignore_errors=True)  # our own, just made
            raise
        prune(root, keep={base, site})
    return gp


# How many trees of each kind stay in the cache: every klpsym source change
# makes a new ~2 MB site tree, every interpreter or numpy change an ~85 MB
# base.  A few are kept, not one: another test run (another worktree) may be
# booting with an older one right now.
KEEP = {"klpsym-": 8, "base-": 2}


def prune(root: Path, keep: set[Path]) -> list[Path]:
    """Remove all but the newest trees of each kind (:data:`KEEP`) under
    ``root``, never those in ``keep``; the removed ones."""
    removed = []
    for prefix, n in KEEP.items():
        trees = sorted((p for p in root.glob(f"{prefix}*") if p.is_dir() and p not in keep
                        and "." not in p.name),  # not another process's temporary tree
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for old in trees[max(n - 1, 0):]:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed


__all__ = ["GUEST_ROOT", "GUEST_SETUP", "GuestPython", "guest_python", "needed_libraries",
           "package_files", "parse_ldd", "prune", "stdlib_files"]
