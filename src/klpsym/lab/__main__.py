"""``python -m klpsym.lab ARGS`` is ``klpsym lab ARGS`` (see klpsym.cli.lab)."""

from __future__ import annotations

import sys


def main() -> int:
    from klpsym.cli.main import main as klpsym_main

    return klpsym_main(["lab", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
