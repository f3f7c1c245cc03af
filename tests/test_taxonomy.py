"""Taxonomy graph building, export formats, and the rendered picture."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
from PIL import Image

from dataonomy.errors import DataonomyError
from dataonomy.taxonomy import build_taxonomy_graph, draw_taxonomy, export_graph, summarize_graph
from dataonomy.wordnet import load_wordnet

# Goldfish, tench (both fish), tabby cat, bullfrog, and a few artefacts.
SOURCES = ["n01443537", "n01440764", "n02123045", "n01641577", "n03000134", "n04254680"]


@pytest.fixture()
def graph():
    wn = load_wordnet()
    names = [wn.name(w) for w in SOURCES]
    affinity = np.array([[0.4, 0.3, 0.1, 0.1, 0.05, 0.05], [0.05, 0.05, 0.1, 0.1, 0.3, 0.4]])
    return build_taxonomy_graph(["Class1", "Class2"], SOURCES, names, affinity, wn)


def test_graph_structure(graph):
    kinds = nx.get_node_attributes(graph, "kind")
    assert sorted(v for v, k in kinds.items() if k == "target") == ["target:Class1", "target:Class2"]
    assert sorted(v for v, k in kinds.items() if k == "source") == sorted(SOURCES)
    wn = load_wordnet()
    # Every source hangs under the WordNet root through is-a edges.
    isa = nx.DiGraph([(u, v) for u, v, d in graph.edges(data=True) if d["kind"] == "is_a"])
    for s in SOURCES:
        assert nx.has_path(isa, wn.root, s)
    # The two fish share an ancestor below the root that the cat does not have.
    common = nx.ancestors(isa, "n01443537") & nx.ancestors(isa, "n01440764")
    assert any(graph.nodes[a]["depth"] >= 5 and a not in nx.ancestors(isa, "n02123045") for a in common)
    assert graph["target:Class1"]["n01443537"]["weight"] == pytest.approx(0.4)
    text = summarize_graph(graph)
    assert "2 target classes, 6 selected source classes" in text
    assert "Class1: goldfish (0.400)" in text


def test_exports_roundtrip(graph, tmp_path):
    export_graph(graph, "graphml", tmp_path / "t.graphml")
    g2 = nx.read_graphml(tmp_path / "t.graphml")
    assert g2.number_of_nodes() == graph.number_of_nodes() and g2.number_of_edges() == graph.number_of_edges()
    assert g2.nodes["n01443537"]["label"] == "goldfish"
    export_graph(graph, "json", tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text())
    assert len(data["nodes"]) == graph.number_of_nodes()
    export_graph(graph, "dot", tmp_path / "t.dot")
    dot = (tmp_path / "t.dot").read_text()
    assert '"target:Class1" -> "n01443537"' in dot
    with pytest.raises(DataonomyError, match="--format 'svgz'"):
        export_graph(graph, "svgz", tmp_path / "t.svgz")


def test_png_renders_with_distinct_targets(graph, tmp_path):
    out = draw_taxonomy(graph, tmp_path / "t.png")
    im = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert im.shape[0] > 500 and im.shape[1] > 800
    # Target squares are drawn in their own colour (red), sources in blue: both present.
    red = (abs(im[..., 0] - 214) < 12) & (abs(im[..., 1] - 39) < 12) & (abs(im[..., 2] - 40) < 12)
    blue = (abs(im[..., 0] - 31) < 12) & (abs(im[..., 1] - 119) < 12) & (abs(im[..., 2] - 180) < 12)
    assert red.sum() > 500 and blue.sum() > 500
    assert not list(tmp_path.glob(".t.png*"))
