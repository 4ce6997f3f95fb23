"""``python -m klpsym.lab ARGS`` is ``klpsym lab ARGS``.

The command is the CLI's (klpsym.cli.lab registers it in klpsym.cli.main);
this file only runs it, and Python wants it inside the lab's package.  So it
is a command-line entry, in the commands layer of docs/architecture.md
(tests/unit/test_layering.py), and nothing imports it.
"""

from __future__ import annotations

import sys


def main() -> int:
    from klpsym.cli.main import main as klpsym_main

    return klpsym_main(["lab", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
