"""Imports only go down: the command line above the library, the library above the model's
parts (layers, kinds, plan, optimizers), those above the two backends, the backends above
the neutral codes. Nothing imports the package root, and no import circle remains, counting
imports made inside functions (those under `if TYPE_CHECKING:` never run and are left out).

The modules are read from the source files (Python with `ast`; the Cython files' `import`,
`from ... import` and `cimport` lines by pattern), so a new module or import is checked the
day it is written."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import mnistnet

PACKAGE = Path(mnistnet.__file__).parent
ROOT = "mnistnet"

# Lower ranks are further down; a module may import its own rank or lower ones.
RANKS = {
    "neutral codes and data": ("_version", "_source_tree", "_files", "codes", "data",
                               "regularizers", "schedules", "losses"),
    "backends": ("_kernels", "_layers", "_optimizers", "_network", "_epoch", "_dense", "fast",
                 "reference"),
    "the model's parts": ("layers", "kinds", "plan", "optimizers", "callbacks"),
    "library": ("inputs", "saving", "trainer", "model", "presets", "export", "plot", "_figure",
                "images", "demo",
                "bench", "time_to_accuracy", "peers", "sklearn", "runtime", "datasets", "sweep",
                "int8", "export_int8", "export_int8_onnx"),
    "package root": ("__init__",),
    "command line": ("cli", "__main__"),
}


def rank_of(module: str) -> int:
    top = module.split(".")[0]
    for rank, names in enumerate(RANKS.values()):
        if top in names:
            return rank
    raise AssertionError(f"mnistnet.{module} is in no rank of tests/test_layering.py: add it")


def module_files() -> dict[str, Path]:
    """{"kinds": path, "cli.train": path, ...} for every Python and Cython source."""
    files = {}
    for path in PACKAGE.rglob("*"):
        if path.suffix not in (".py", ".pyx", ".pxi", ".pxd") or "demo_static" in path.parts:
            continue
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        files.setdefault(".".join(parts), path)
    return files


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _python_imports(path: Path, package: str) -> set[str]:
    """Dotted names of everything imported, at any depth, but under `if TYPE_CHECKING:`."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package holding this file
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return names


_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import\s+([\w, ()]+)|c?import\s+([\w.]+))",
                            re.MULTILINE)


def _cython_imports(path: Path) -> set[str]:
    names = set()
    for base, items, module in _CYTHON_IMPORT.findall(path.read_text(encoding="utf-8")):
        if module:
            names.add(module)
        else:  # "from X import a, b", or a parenthesised list on the next lines: X itself
            parts = [item.strip() for item in items.strip("()").split(",") if item.strip()]
            names.update(f"{base}.{item}" for item in parts) if parts else names.add(base)
    return names


def imports_of(name: str, path: Path, files: dict[str, Path]) -> set[str]:
    """The mnistnet modules (names relative to the package, "" for the root) that the
    module imports: `from mnistnet import fast` is mnistnet.fast, `from mnistnet import
    preset` (a name the root defines) is the root."""
    package = ROOT if path.name == "__init__.py" and name == "__init__" else (
        f"{ROOT}.{name}" if path.name == "__init__.py" else f"{ROOT}.{name.rpartition('.')[0]}"
        .rstrip("."))
    raw = (_python_imports(path, package) if path.suffix == ".py" else _cython_imports(path))
    found = set()
    for dotted in raw:
        if dotted != ROOT and not dotted.startswith(ROOT + "."):
            continue
        relative = dotted[len(ROOT) + 1:]
        while relative and relative not in files:
            relative = relative.rpartition(".")[0]  # mnistnet.kinds.KINDS -> kinds
        if relative or dotted == ROOT or dotted.count(".") == 1:
            found.add(relative)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, files) for name, path in files.items()}


GRAPH = import_graph()


def test_the_graph_is_read() -> None:
    """A reader that finds nothing would pass every test below."""
    assert {"kinds", "plan", "reference"} <= GRAPH["model"] | GRAPH["plan"] | GRAPH["kinds"]
    assert "codes" in GRAPH["fast"] and "codes" in GRAPH["reference"]
    assert "model" in GRAPH["cli.common"]


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_module_imports_the_package_root(name: str) -> None:
    assert "" not in GRAPH[name], f"mnistnet.{name} imports the package root (import mnistnet)"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_only_go_down(name: str) -> None:
    mine = rank_of(name)
    above = sorted(other for other in GRAPH[name] if other and rank_of(other) > mine)
    ranks = list(RANKS)
    assert not above, (f"mnistnet.{name} ({ranks[mine]}) imports "
                       + ", ".join(f"mnistnet.{o} ({ranks[rank_of(o)]})" for o in above))


def test_no_import_circle() -> None:
    """Depth-first search for a cycle; the message shows it."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for other in sorted(GRAPH.get(node, ())):
            if state.get(other) == 1:
                return [*path[path.index(other):], other]
            if not state.get(other):
                cycle = visit(other)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if not state.get(node):
            cycle = visit(node)
            assert cycle is None, "import circle: " + " -> ".join(f"mnistnet.{m}" for m in cycle)
