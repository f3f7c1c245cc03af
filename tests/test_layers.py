"""The package layers only point down, and no module imports itself round a circle (issue 15).

``dataonomy`` (curation and the shared helpers) <- ``transfer`` (training and inspection) <- ``dataonomy_demo``.
Imports are read from the source (``ast``), function-level ones included: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("dataonomy", "transfer", "dataonomy_demo")  # lowest first


def _modules() -> dict[str, Path]:
    out = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> nx.DiGraph:
    """Module -> project module it imports (``from a.b import c`` points at ``a.b.c`` when that is a module)."""
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph.add_edge(name, target)
    return graph


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_no_import_points_up_a_layer():
    graph = import_graph()
    assert graph.number_of_nodes() > 40  # the walk found the packages
    upward = sorted((a, b) for a, b in graph.edges if _layer(b) > _layer(a))
    assert upward == []


def test_no_import_circle():
    assert sorted(map(sorted, nx.simple_cycles(import_graph()))) == []


def test_the_walk_sees_function_level_imports():
    # dataonomy_demo.cli imports the demo inside the command: the graph must hold that arrow.
    graph = import_graph()
    assert graph.has_edge("dataonomy_demo.cli", "dataonomy_demo.demo")
    assert graph.has_edge("dataonomy_demo.demo", "transfer.training")
