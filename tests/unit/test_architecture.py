"""The package's shape, checked: layers with imports only downward (function-level imports included), no import
cycle, no private name across a subpackage boundary, and a public API that agrees with itself.

The layers (docs/architecture.md draws them): a module may import from a lower layer, from its own subpackage,
or along one of the few named sideways arrows. `nox -s lint` runs this file too.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pgrecovery"

# lowest first; a name is a module or a subpackage (dotted, relative to pgrecovery)
LAYERS: list[tuple[str, set[str]]] = [
    (
        "base",
        {
            "errors",
            "logs",
            "progress",
            "_version",
            "_redact",
            "_fsutil",
            "_walnames",
            "_spool",
            "_walclient",
            "_fastpath",
            "_lazy",
        },
    ),
    ("formats and PostgreSQL", {"codec", "_objects", "crypto", "manifest", "pgtools", "_pgdb", "cluster"}),
    ("storage", {"storage"}),
    ("info", {"catalog", "repository", "_chain", "wal._layout", "wal.index"}),
    ("transfer", {"_stream", "logical._archive", "logical._toc"}),
    ("commands", {"logical", "physical", "recovery", "wal", "verify", "retention", "copies"}),
    ("orchestration", {"monitoring", "policy", "demo"}),
    ("entry points", {"cli", "__main__", "_walcmd", ""}),  # "" is pgrecovery/__init__ (the lazy public API)
]
COMMANDS = next(i for i, (name, _) in enumerate(LAYERS) if name == "commands")
# Sideways between the command areas (source area -> target area), as docs/architecture.md names them. Elsewhere
# a module may use another of its own layer (the cycle test keeps that honest).
ARROWS: set[tuple[str, str]] = {
    ("recovery", "physical"),  # restoring a base backup's files
    ("recovery", "logical"),  # rescue: a table out of a sandbox recovery, through a logical dump
    ("recovery", "wal"),  # the archive's index: what a target needs, WAL continuity
    ("physical", "wal"),  # a base backup waits until its last WAL file is archived
    ("verify", "recovery"),  # the base-backup drill recovers a sandbox
    ("verify", "logical"),  # the logical drill restores into a sandbox
    ("retention", "wal"),  # expire removes WAL no kept backup needs
    ("copies", "wal"),  # WAL is copied first
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def layer_of(module: str) -> int:
    """The layer of a module: the most specific entry (``wal.index`` before ``wal``) that names it."""
    best: tuple[int, int] | None = None
    for number, (_, names) in enumerate(LAYERS):
        for name in names:
            if module == name or (name and module.startswith(name + ".")):
                depth = len(name.split(".")) if name else 0
                if best is None or depth > best[1]:
                    best = (number, depth)
    if best is None:
        raise AssertionError(f"pgrecovery.{module} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return best[0]


def area_of(module: str) -> str:
    return module.split(".")[0]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    names: tuple[str, ...]
    line: int
    in_function: bool
    type_only: bool


def _target(source: str, node: ast.ImportFrom) -> str:
    is_package = MODULES[source].name == "__init__.py"
    base = source.split(".") if source else []
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def edges() -> Iterator[Edge]:
    for source, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        in_function: set[int] = set()
        type_only: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                in_function |= {id(n) for n in ast.walk(node)}
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                type_only |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            targets: list[tuple[str, tuple[str, ...]]] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    target = _target(source, node)
                elif node.module and (node.module == "pgrecovery" or node.module.startswith("pgrecovery.")):
                    target = node.module.removeprefix("pgrecovery").lstrip(".")
                else:
                    continue
                for alias in node.names:  # "from . import x" where x is a module
                    sub = f"{target}.{alias.name}" if target else alias.name
                    targets.append((sub, ()) if sub in MODULES else (target, (alias.name,)))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("pgrecovery"):
                        targets.append((alias.name.removeprefix("pgrecovery").lstrip("."), ()))
            for target, names in targets:
                if target != source:
                    yield Edge(source, target, names, node.lineno, id(node) in in_function, id(node) in type_only)


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_imports_go_only_down_or_along_a_named_arrow() -> None:
    wrong = []
    for e in edges():
        if e.type_only:
            continue  # annotations only: no import at run time
        if area_of(e.source) == area_of(e.target) and e.source and e.target:
            continue  # within one subpackage
        src, dst = layer_of(e.source), layer_of(e.target)
        if dst < src or (dst == src and (src != COMMANDS or (area_of(e.source), area_of(e.target)) in ARROWS)):
            continue
        where = "inside a function" if e.in_function else "at the top"
        wrong.append(
            f"pgrecovery/{MODULES[e.source].relative_to(PACKAGE)}:{e.line} ({LAYERS[src][0]}) imports "
            f"pgrecovery.{e.target} ({LAYERS[dst][0]}) {where}"
        )
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in edges():
        if not e.type_only and e.target in graph:
            graph[e.source].add(e.target)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_crosses_a_subpackage_boundary() -> None:
    wrong = [
        f"pgrecovery.{e.source}:{e.line} takes {name} from pgrecovery.{e.target}"
        for e in edges()
        if area_of(e.source) != area_of(e.target) and "." in e.target
        for name in e.names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not wrong, "\n".join(wrong)


def test_modules_stay_small() -> None:
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 500}
    assert not big, f"modules over 500 lines: {big}"


def test_functions_stay_small() -> None:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"pgrecovery.{module}.{node.name}: {length} lines")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_the_public_api_agrees_with_itself() -> None:
    """Each public name is in __all__, in the lazy table (pointing at the module that defines it) and among the
    type checker's imports: three lists that must not drift."""
    import pgrecovery

    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    typed: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for imp in ast.walk(node):
                if isinstance(imp, ast.ImportFrom) and imp.module:
                    typed.update({a.asname or a.name: imp.module for a in imp.names})
    eager = {n for n in pgrecovery.__all__ if n in vars(pgrecovery)}
    lazy = pgrecovery._LAZY
    assert set(pgrecovery.__all__) == eager | set(lazy), set(pgrecovery.__all__) ^ (eager | set(lazy))
    assert set(lazy) == set(typed), set(lazy) ^ set(typed)
    for name, module in lazy.items():
        assert typed[name] == module, f"{name}: lazy table says {module}, the type checker imports {typed[name]}"
        assert getattr(importlib.import_module(f"pgrecovery.{module}"), name) is getattr(pgrecovery, name)


@pytest.mark.parametrize("package", ["wal", "storage", "logical", "physical", "recovery", "monitoring", "policy"])
def test_subpackages_export_what_they_say(package: str) -> None:
    module = importlib.import_module(f"pgrecovery.{package}")
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_the_wal_package_agrees_with_itself() -> None:
    """pgrecovery.wal loads its names lazily: __all__, its lazy table and its type-checking imports must agree, and
    the table must name the module that defines each one."""
    import pgrecovery.wal as wal

    tree = ast.parse((PACKAGE / "wal" / "__init__.py").read_text())
    typed: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for imp in ast.walk(node):
                if isinstance(imp, ast.ImportFrom) and imp.module:
                    typed.update({a.asname or a.name: imp.module for a in imp.names})
    lazy = wal._LAZY
    assert set(wal.__all__) == set(lazy) == set(typed), set(wal.__all__) ^ set(lazy) ^ set(typed)
    for name, module in lazy.items():
        assert typed[name] == module, f"{name}: lazy table says {module}, the type checker imports {typed[name]}"
        value = getattr(importlib.import_module(f"pgrecovery.wal.{module}"), name)
        assert value is getattr(wal, name)
        assert getattr(value, "__module__", f"pgrecovery.wal.{module}") == f"pgrecovery.wal.{module}", name
