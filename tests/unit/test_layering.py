"""The import contract of docs/architecture.md: a layer imports only from
layers below it, and no two modules import each other, directly or around a
cycle.  Every import counts, wherever it is written (inside a function, under
TYPE_CHECKING): a lazy import is still a dependency."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

import klpsym

SRC = Path(klpsym.__file__).parent
DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"

# Bottom up.  A module belongs to the layer of the longest prefix naming it
# (a prefix names itself and, but for the package root, what is under it).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("klpsym", "klpsym.errors", "klpsym.fsutil", "klpsym.cachepath",
                    "klpsym.procutil")),
    ("elf", ("klpsym.elf",)),
    ("kernel", ("klpsym.kernel",)),
    ("module", ("klpsym.module",)),
    ("klp", ("klpsym.klp",)),
    ("view", ("klpsym.view",)),
    ("methods", ("klpsym.methods",)),
    ("load", ("klpsym.load",)),
    ("kbuild", ("klpsym.kbuild",)),
    ("lab", ("klpsym.lab",)),
    # `python -m klpsym.lab` is `klpsym lab`: a command-line entry, like
    # klpsym.cli.main, though it must live in the lab's package.
    ("commands", ("klpsym.cli", "klpsym.lab.__main__", "klpsym.__main__")),
)


def layer_of(module: str, layers: Iterable[tuple[str, tuple[str, ...]]] = LAYERS,
             root: str = "klpsym") -> tuple[int, str] | None:
    """(rank, layer name) of ``module``, None when no layer names it."""
    best: tuple[int, int, str] | None = None
    for rank, (name, prefixes) in enumerate(layers):
        for p in prefixes:
            if module == p or (p != root and module.startswith(p + ".")):
                if best is None or len(p) > best[0]:
                    best = (len(p), rank, name)
    return None if best is None else (best[1], best[2])


def _module_name(path: Path, src: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def _exists(module: str, src: Path) -> bool:
    """Whether ``module`` is a module or package of the tree (a compiled
    extension counts by its C source)."""
    base = src.parent.joinpath(*module.split("."))
    return (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()
            or base.with_suffix(".c").is_file())


def import_graph(src: Path = SRC) -> dict[str, dict[str, int]]:
    """Every module of the tree under ``src`` -> {module it imports: line}
    (only the tree's own modules; ``from pkg import name`` is pkg.name when
    that is a module)."""
    root = src.name
    graph: dict[str, dict[str, int]] = {}
    for path in sorted(src.rglob("*.py")):
        name, is_pkg = _module_name(path, src)
        package = name.split(".") if is_pkg else name.split(".")[:-1]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if _exists(f"{mod}.{a.name}", src) else mod
                           for a in node.names]
            for t in targets:
                if (t == root or t.startswith(root + ".")) and t != name:
                    edges.setdefault(t, node.lineno)
        graph[name] = edges
    return graph


def upward_imports(graph: dict[str, dict[str, int]],
                   layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS,
                   root: str = "klpsym") -> list[str]:
    bad = []
    for module, edges in graph.items():
        mine = layer_of(module, layers, root)
        for target, line in edges.items():
            theirs = layer_of(target, layers, root)
            if mine is not None and theirs is not None and theirs[0] > mine[0]:
                bad.append(f"{module}:{line} ({mine[1]}) imports {target} ({theirs[1]})")
    return bad


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# -- the contract ------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    graph = import_graph()
    assert "klpsym.cli.main" in graph and "klpsym.elf.writer" in graph
    assert [m for m in graph if layer_of(m) is None] == []


def test_no_layer_imports_from_a_higher_one() -> None:
    assert upward_imports(import_graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_architecture_document_lists_the_same_layers() -> None:
    """docs/architecture.md's table names the packages bottom up, as LAYERS."""
    rows = [re.findall(r"`(klpsym[\w.]*)`", line.split("|")[2])
            for line in DOC.read_text().splitlines()
            if line.startswith("| ") and line.count("|") >= 4 and "`klpsym" in line]
    documented = [p for row in rows for p in row]
    assert documented == [p for _, prefixes in LAYERS for p in prefixes]


def _options() -> set[str]:
    """Every option of every klpsym command."""
    import argparse

    from klpsym.cli.main import build_parser

    found: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            found.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    return found - {"-h", "--help", "--version"}


# Modules below the CLI whose errors still name its options (none left).
STILL_NAMING_OPTIONS: set[str] = set()


def options_in_errors(src: Path, options: set[str]) -> dict[str, list[str]]:
    """module -> "line: option" for each of ``options`` written in the text
    of an exception a module below the commands layer raises."""
    alternatives = "|".join(map(re.escape, sorted(options)))
    pattern = re.compile(rf"(?<![\w-])({alternatives})(?![\w-])")
    found: dict[str, list[str]] = {}
    for path in sorted(src.rglob("*.py")):
        name, _ = _module_name(path, src)
        layer = layer_of(name)
        if layer is None or layer[1] == "commands":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            for c in ast.walk(node.exc):
                if isinstance(c, ast.Constant) and isinstance(c.value, str):
                    found.setdefault(name, []).extend(
                        f"{node.lineno}: {m[1]}" for m in pattern.finditer(c.value))
    return {k: v for k, v in found.items() if v}


def test_errors_below_the_cli_name_parameters_not_options() -> None:
    """The lower layers name an input by the caller's parameter
    (klpsym.errors.param), which the CLI shows as its option."""
    options = _options()
    assert {"--kallsyms", "--system-map", "--sympos", "--no-guard", "-o"} <= options
    found = options_in_errors(SRC, options)
    assert {k: v for k, v in found.items() if k not in STILL_NAMING_OPTIONS} == {}
    assert STILL_NAMING_OPTIONS <= set(found), "fixed: drop it from STILL_NAMING_OPTIONS"


# -- the checker finds what it is for ------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "pkg"
    for rel, text in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return src


def test_the_checker_finds_upward_imports_and_cycles(tmp_path: Path) -> None:
    src = _tree(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from pkg.high import b\n",  # upward, lazily
        "low/c.py": "from . import d\n",  # c <-> d, relative
        "low/d.py": "from pkg.low.c import x\n",
        "high/__init__.py": "",
        "high/b.py": "from pkg.low import a\nimport pkg.low.c\n",
    })
    layers = (("low", ("pkg.low",)), ("high", ("pkg.high",)))
    graph = import_graph(src)
    assert graph["pkg.low.a"] == {"pkg.high.b": 2}
    assert graph["pkg.high.b"] == {"pkg.low.a": 1, "pkg.low.c": 2}
    assert upward_imports(graph, layers, "pkg") == ["pkg.low.a:2 (low) imports pkg.high.b (high)"]
    assert sorted(cycles(graph)) == [["pkg.high.b", "pkg.low.a"], ["pkg.low.c", "pkg.low.d"]]
    assert layer_of("pkg.other", layers, "pkg") is None


def test_the_option_scan_finds_options_in_raised_text(tmp_path: Path) -> None:
    src = _tree(tmp_path, {
        "klpsym/__init__.py": "",
        "klpsym/kernel/__init__.py": "",
        "klpsym/kernel/a.py":
            'def f(x):\n    raise ValueError(f"{x}: pass --kallsyms or -o OUT")\n',
        "klpsym/kernel/b.py": 'def f():\n    raise ValueError("xz --check=crc32; -obj")\n',
        "klpsym/cli/__init__.py": "",
        "klpsym/cli/c.py": 'def f():\n    raise ValueError("pass --kallsyms")\n',
    }) / "klpsym"
    found = options_in_errors(src, {"--kallsyms", "-o"})
    assert found == {"klpsym.kernel.a": ["2: --kallsyms", "2: -o"]}
