"""Where klpsym keeps its cache (the symbol cache, :mod:`klpsym.kernel.symcache`,
and the build starts, :mod:`klpsym.kbuild.early`).

With nothing but ``os``: ``klpsym build`` reads its record of the last build
start here before it has imported anything else.
"""

from __future__ import annotations

import os


def symcache_dir() -> str | None:
    """``$KLPSYM_SYMCACHE``, else ``$KLPSYM_CACHE/symcache``, else
    ``$XDG_CACHE_HOME/klpsym/symcache``, else ``~/.cache/klpsym/symcache``;
    None when ``KLPSYM_NO_CACHE`` turns caching off."""
    if os.environ.get("KLPSYM_NO_CACHE", "") not in ("", "0"):
        return None
    explicit = os.environ.get("KLPSYM_SYMCACHE")
    if explicit:
        return explicit
    base = os.environ.get("KLPSYM_CACHE")
    if base:
        return os.path.join(base, "symcache")
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = xdg if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "klpsym", "symcache")
