"""``python -m klpsym``: the ``klpsym`` program."""

from klpsym.cli.main import entry

if __name__ == "__main__":
    entry()
