"""The package's import graph: no cycles, and every import points down the layer table.

Every module under ``openmm_cmt/`` is parsed with ``ast``; every import counts, at module
level or inside a function, as does a string naming a package module (the lazy
``importlib.import_module`` tables of ``__init__`` files). ``from openmm_cmt.x import y``
depends on ``openmm_cmt.x.y`` when that is a module, else on ``openmm_cmt.x``.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "openmm_cmt"

#: Layer of each top-level unit (subpackage or module) of openmm_cmt, lowest first. A
#: module may import its own layer or lower ones; ``openmm_cmt`` itself is the
#: package's facade (``BoltzmannGeneratorSampler`` on first use) and sits on top.
LAYERS = {
    # ground: plain numbers, files, locks, plugins
    "_version": 0, "units": 0, "io": 0, "run_lock": 0, "_openmmtorch": 0,
    # what a molecule is and how its coordinates and samples are measured
    "systems": 1, "coordinates": 1, "metrics": 1, "trajectory_io": 1,
    # energies of a System
    "energy": 2,
    # models and many-copy dynamics, built on energies
    "flows": 3, "replicas": 3,
    # training
    "cmt": 4,
    # what uses trained models or replicated dynamics
    "presets": 5, "reference": 5, "mcmc": 5,
    # runs: checkpoints, the facade class, evaluation and its report
    "checkpoint": 6, "report": 6, "sampler": 6, "evaluation": 6,
    # entry points
    "commands": 7, "bench": 7, "cli": 7, "__main__": 7, "": 7,
}  # fmt: skip


def _modules() -> dict[str, tuple[pathlib.Path, list[str]]]:
    """Module name -> (file, package parts used to resolve relative imports)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["openmm_cmt", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
            package = parts
        else:
            package = parts[:-1]
        out[".".join(parts)] = (path, package)
    return out


MODULES = _modules()


def _targets(node, package: list[str], lazy: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        out = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.append(sub if sub in MODULES else base)
        return out
    # Module names in strings are imports in modules that import by name (lazy
    # ``import_module`` tables); elsewhere such a string is a name of its own (an
    # entry-point group, a file group).
    if lazy and isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES:
        return [node.value]
    return []


def _graph() -> dict[str, dict[str, int]]:
    """Module -> {imported package module: line of the first such import}."""
    graph = {}
    for name, (path, package) in MODULES.items():
        edges = {}
        text = path.read_text()
        for node in ast.walk(ast.parse(text, str(path))):
            for target in _targets(node, package, "import_module" in text):
                # `import openmm_cmt.a.b` loads the innermost existing module
                while target and target not in MODULES:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


GRAPH = _graph()


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in MODULES}
    assert units <= set(LAYERS), f"add these to LAYERS: {sorted(units - set(LAYERS))}"
    assert set(LAYERS) <= units, f"LAYERS names units that do not exist: {sorted(set(LAYERS) - units)}"


def test_imports_point_down_the_layers():
    upward = [
        f"{MODULES[a][0].relative_to(PACKAGE.parent)}:{line} imports {b} "
        f"(layer {LAYERS[_unit(a)]} -> {LAYERS[_unit(b)]})"
        for a, edges in GRAPH.items()
        for b, line in edges.items()
        if LAYERS[_unit(b)] > LAYERS[_unit(a)]
    ]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


@pytest.mark.parametrize("level", ["unit", "module"])
def test_no_import_cycles(level):
    if level == "unit":
        graph = {}
        for a, edges in GRAPH.items():
            graph.setdefault(_unit(a), set()).update(_unit(b) for b in edges if _unit(b) != _unit(a))
    else:
        graph = {a: set(edges) for a, edges in GRAPH.items()}
    assert not _cycles(graph), f"import cycles between {level}s: {_cycles(graph)}"


def test_the_checker_sees_hidden_and_relative_imports():
    # A function-level import and a lazy table entry are edges too.
    assert "openmm_cmt.sampler" in GRAPH["openmm_cmt"]
    assert "openmm_cmt.energy.openmm_energy" in GRAPH["openmm_cmt.energy"]
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
