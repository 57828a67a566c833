"""The package's import structure: rooms import each other without cycles, every module imports on
its own in any order, and the torch-free modules stay torch-free.

A room is a first-level part of ``src/mm1``: a subpackage (``mm1.models``) or a top-level module
(``mm1.atomic``). The intended layering is config <- data <- world, models <- parallel <- train,
eval <- figures, plan <- cli: models know nothing of processes or files, parallel nothing of MM1,
and figures never import torch.
"""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mm1"

# Room cycles another change is removing; each must still exist (a stale entry fails the test).
PENDING_CYCLES: set[frozenset[str]] = set()

# The torch-free modules: the workflow counts parameters while Snakemake parses (mm1.models.size),
# and figures read result tables only (DESIGN.md).
TORCH_FREE = ("mm1.models.size", "mm1.figures")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    """mm1.models.size -> models; mm1.atomic -> atomic; mm1 (the package's __init__) -> mm1."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mm1"


def resolve(target: str) -> str | None:
    """The mm1 module an import names (``from mm1.x import name`` names mm1.x or mm1.x.name)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def imported(module: str, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(mm1 module, line) for every import in ``module``: at any depth, or only those run on import."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    nodes = ast.walk(tree)
    if top_level_only:
        skip = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
        nodes = (n for top in tree.body if not isinstance(top, skip) for n in _walk_outside(top, skip))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "mm1" and (found := resolve(target)) and found != module:
                out.append((found, node.lineno))
    return out


def _walk_outside(node: ast.AST, skip: tuple[type, ...]):
    """ast.walk that does not enter function bodies (they run later, if at all)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, skip):
            yield from _walk_outside(child, skip)


def room_graph() -> dict[str, dict[str, list[str]]]:
    """room -> {room it imports: ["module:line -> module", ...]}, all imports (module and function level)."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module in MODULES:
        at_import = set(imported(module, top_level_only=True))
        for target, line in imported(module):
            edge = f"{module}:{line} -> {target}" + ("" if (target, line) in at_import else " (inside a function)")
            if room(target) != room(module) and edge not in graph[room(module)][room(target)]:
                graph[room(module)][room(target)].append(edge)
    return graph


def components(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component, as a closed path [a, b, ..., a]."""
    return [_path(edges, component) for component in components(edges)]


def _path(edges: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first node (breadth-first): [a, b, ..., a]."""
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges.get(v, ())):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if w in component and w not in came_from:
                    came_from[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def _explain(graph: dict[str, dict[str, list[str]]], path: list[str], component: set[str]) -> str:
    lines = [f"{' -> '.join(path)}  (rooms caught in this knot: {', '.join(sorted(component))})"]
    for a, b in zip(path, path[1:], strict=False):
        lines += [f"  {a} -> {b}:", *(f"    {edge}" for edge in graph[a][b])]
    return "\n".join(lines)


def test_rooms_import_each_other_without_cycles() -> None:
    graph = room_graph()
    edges = {a: set(targets) for a, targets in graph.items()}
    found = [frozenset(c) for c in components(edges)]
    new = [c for c in found if c not in PENDING_CYCLES]
    report = "\n".join(_explain(graph, _path(edges, set(c)), set(c)) for c in new)
    assert not new, f"import cycles between rooms:\n{report}"
    stale = PENDING_CYCLES - set(found)
    assert not stale, f"these cycles are gone: remove them from PENDING_CYCLES: {sorted(map(sorted, stale))}"


def test_the_package_root_imports_only_modules_that_import_nothing_of_mm1() -> None:
    """Every mm1 module runs mm1/__init__.py first, so what the root imports must sit below every room:
    a top-level module (not a subpackage, whose modules run the root first) that imports nothing of mm1."""
    for target, line in imported("mm1"):
        where = f"src/mm1/__init__.py:{line} imports {target}"
        assert target.count(".") == 1 and MODULES[target].name != "__init__.py", f"{where}, inside a room"
        assert not imported(target), f"{where}, which imports {imported(target)}"


def test_modules_import_each_other_without_cycles_at_import_time() -> None:
    """Within rooms too: no cycle among the imports a module runs when it is imported."""
    edges = {module: {target for target, _ in imported(module, top_level_only=True)} for module in MODULES}
    assert not cycles(edges), f"module-level import cycles: {cycles(edges)}"


IMPORT_ALL = """
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        print(f"importing {name} failed (after {sys.argv[1:].index(name)} other modules):", file=sys.stderr)
        raise
"""


def test_every_module_imports_in_any_order() -> None:
    """Every module, one after another in a fresh interpreter: in a seeded random order and in reverse
    sorted order (a module imported first must bring in everything it needs). Both run at once."""
    shuffled = sorted(MODULES)
    random.Random(24).shuffle(shuffled)
    orders = {"random (seed 24)": shuffled, "reverse sorted": sorted(MODULES, reverse=True)}
    runs = {
        what: subprocess.Popen(
            [sys.executable, "-W", "ignore", "-c", IMPORT_ALL, *order],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for what, order in orders.items()
    }
    errors = {what: run.communicate(timeout=300)[1] for what, run in runs.items()}
    failed = [f"in {what} order:\n{errors[what][-4000:]}" for what, run in runs.items() if run.returncode]
    assert not failed, "\n".join(failed)


def test_the_torch_free_modules_import_no_torch() -> None:
    names = [m for m in MODULES if any(m == t or m.startswith(t + ".") for t in TORCH_FREE)]
    script = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "    assert 'torch' not in sys.modules, f'importing {name} imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]


def test_the_counting_leaf_imports_only_the_config_and_the_standard_library() -> None:
    """mm1.models.size: parameter counts and the LR law, for the workflow and the figures."""
    tree = ast.parse(MODULES["mm1.models.size"].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                ok = top in sys.stdlib_module_names or top == "__future__" or name.startswith("mm1.config")
                assert ok, f"src/mm1/models/size.py:{node.lineno} imports {name}"
