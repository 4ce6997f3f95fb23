"""Making unpacked Debian kernel packages work where they are, not under /."""

from __future__ import annotations

import os
import re
from pathlib import Path


def fix_tree(root: Path) -> None:
    """Make the unpacked packages work where they are instead of under /.

    Debian's headers assume installation in /: ``lib/modules/<r>/build`` and
    ``source`` are absolute symlinks to /usr/src/linux-headers-*, and the
    flavour's Makefile starts with ``include /usr/src/linux-headers-<abi>-common/
    Makefile``.  Absolute symlinks that point inside the tree become relative;
    the include becomes relative to the Makefile itself, so the cache can move.
    7.x's flavour Makefile also sets ``KBUILD_OUTPUT=/usr/src/<itself>``, made
    relative the same way.  (The ``scripts`` and ``tools`` links to linux-kbuild
    are already relative.)
    """
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = Path(dirpath) / name
            if not link.is_symlink():
                continue
            target = os.readlink(link)
            if not target.startswith("/"):
                continue
            inside = root / target.lstrip("/")
            if inside.exists() or inside.is_symlink():
                link.unlink()
                link.symlink_to(os.path.relpath(inside, link.parent))
    src = root / "usr" / "src"
    pattern = re.compile(r"^([ \t]*-?include[ \t]+)/usr/src/([^/\s]+)/(\S+)[ \t]*$", re.MULTILINE)
    for makefile in src.glob("linux-headers-*/Makefile"):
        text = makefile.read_text()

        def _rel(m: re.Match[str]) -> str:
            if not (src / m.group(2)).is_dir():
                return m.group(0)
            here = "$(dir $(lastword $(MAKEFILE_LIST)))"
            return f"{m.group(1)}$(abspath {here}../{m.group(2)}/{m.group(3)})"

        fixed = pattern.sub(_rel, text)
        # 7.x: the flavour's Makefile sets KBUILD_OUTPUT=/usr/src/<itself>; make it the
        # Makefile's own directory, evaluated at once (MAKEFILE_LIST grows later).
        own = re.escape(makefile.parent.name)
        fixed = re.sub(
            rf"^KBUILD_OUTPUT[ \t]*:?=[ \t]*/usr/src/{own}/?[ \t]*$",
            "KBUILD_OUTPUT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))",
            fixed,
            flags=re.MULTILINE,
        )
        if fixed != text:
            makefile.write_text(fixed)


def compiler_of(kernel_dir: Path) -> str:
    """The C compiler the headers call: Debian sets ``CC`` in ``.kernelvariables``
    (included by the top Makefile), e.g. ``CC = ... $(CROSS_COMPILE)gcc-12``."""
    try:
        text = (kernel_dir / ".kernelvariables").read_text()
    except OSError:
        return "gcc"
    m = re.search(r"^CC[ \t]*:?=.*?(\S+)[ \t]*$", text, re.MULTILINE)
    if not m:
        return "gcc"
    return m.group(1).replace("$(CROSS_COMPILE)", "")
