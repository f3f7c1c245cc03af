"""The taxonomy as a tree (counts and sums), its HTML page (also in a real headless Chromium), and the
collapsed PNG of large selections (`dataonomy graph --format html`, `--depth`)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from PIL import Image

from dataonomy.cli import app
from dataonomy.cli_utils import run_app
from dataonomy.errors import DataonomyError
from dataonomy.manifest import read_manifest
from dataonomy.taxonomy import (
    AUTO_DEPTH_ABOVE,
    auto_depth,
    build_taxonomy_graph,
    collapse_taxonomy,
    draw_taxonomy,
    graph_from_manifest,
    taxonomy_tree,
)
from dataonomy.taxonomy_html import manifest_summary, open_level, render_taxonomy_html
from dataonomy.wordnet import imagenet_classes, load_wordnet

MANIFEST = Path(__file__).resolve().parents[1] / "data_manifests" / "dagm_class1_tiny_k20.json"
CHROMIUM = next(
    (
        p
        for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))
        if p
    ),
    None,
)
# CI sets DATAONOMY_REQUIRE_BROWSER=1 (.ci/run installs Chromium): there a missing browser fails, not skips.
REQUIRE_BROWSER = os.environ.get("DATAONOMY_REQUIRE_BROWSER") == "1"
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not REQUIRE_BROWSER, reason="chromium not installed: apt-get install chromium"
)


def test_ci_has_the_browser_it_requires():
    if REQUIRE_BROWSER:
        assert CHROMIUM is not None, "DATAONOMY_REQUIRE_BROWSER=1 but no chromium on PATH"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return read_manifest(MANIFEST)


@pytest.fixture(scope="module")
def graph(manifest) -> nx.DiGraph:
    return graph_from_manifest(manifest)


def _walk(node: dict):
    yield node
    for child in node.get("children", []):
        yield from _walk(child)


def _wordnet_nodes(g: nx.DiGraph) -> set[str]:
    return {v for v, k in g.nodes(data="kind") if k == "wordnet"}


def test_tree_counts_and_sums_on_real_manifest(manifest, graph):
    tree = taxonomy_tree(graph)
    k = manifest["parameters"]["k"]
    targets = manifest["target"]["classes"]
    assert tree["classes"] == k == len(manifest["selected"]) == 20
    assert tree["wnid"] == load_wordnet().root and tree["targets"] == targets
    for t in targets:
        assert tree["affinity"][t] == pytest.approx(sum(e["affinity"][t] for e in manifest["selected"]))
    assert tree["affinity_sum"] == pytest.approx(
        sum(v for e in manifest["selected"] for v in e["affinity"].values())
    )
    nodes = list(_walk(tree))
    leaves = [n for n in nodes if "children" not in n]
    internal = [n for n in nodes if "children" in n]
    # The leaves are exactly the selected classes (a class under a node with two parents shows under
    # each), with their own affinities; the internal nodes are exactly the WordNet nodes of the graph.
    by_wnid = {e["wnid"]: e for e in manifest["selected"]}
    assert sorted({n["wnid"] for n in leaves}) == sorted(by_wnid) and len(leaves) > len(by_wnid)
    for leaf in leaves:
        assert leaf["kind"] == "source" and leaf["classes"] == 1
        assert leaf["name"] == by_wnid[leaf["wnid"]]["name"]
        assert leaf["affinity"] == pytest.approx(by_wnid[leaf["wnid"]]["affinity"])
    assert {n["wnid"] for n in internal} == _wordnet_nodes(graph)

    def below(node):
        return {n["wnid"] for n in _walk(node) if "children" not in n}

    for node in internal:
        kids = node["children"]
        # Distinct classes: a class reached through two children counts once.
        assert node["classes"] == len(below(node)) >= 1
        assert node["affinity_sum"] == pytest.approx(
            sum(by_wnid[w]["affinity"]["Class1"] for w in below(node))
        )
        assert [c["affinity_sum"] for c in kids] == sorted((c["affinity_sum"] for c in kids), reverse=True)
        # Every is-a parent, so a child can be shallower than a parent on a longer path (depth = shortest).
        assert all(c["depth"] <= node["depth"] + 1 for c in kids)
        assert sorted(c["wnid"] for c in kids if c["wnid"] != node["wnid"]) == sorted(
            v for v in graph.successors(node["wnid"]) if graph[node["wnid"]][v]["kind"] == "is_a"
        )
    clothing = next(n for n in internal if n["name"] == "clothing")
    assert clothing["classes"] == 4  # poncho, cardigan, sock, sombrero (the BIP's diversity limit is 4)


def test_tree_of_a_dag_and_of_classes_outside_wordnet():
    # s1 has two parents, a and b: it appears under each, and the root counts it once. s1 is also an
    # ancestor of the selected s2: it becomes an internal node with itself as first leaf.
    g = nx.DiGraph()
    g.add_node("r", kind="wordnet", label="root", depth=0)
    for v in ("a", "b"):
        g.add_node(v, kind="wordnet", label=v, depth=1)
        g.add_edge("r", v, kind="is_a")
    g.add_node("s1", kind="source", label="one", depth=2)
    g.add_node("s2", kind="source", label="two", depth=3)
    g.add_edges_from([("a", "s1"), ("b", "s1"), ("s1", "s2")], kind="is_a")
    g.add_node("target:T", kind="target", label="T", depth=-1)
    g.add_edge("target:T", "s1", kind="affinity", weight=0.25)
    g.add_edge("target:T", "s2", kind="affinity", weight=0.5)
    tree = taxonomy_tree(g)
    assert tree["wnid"] == "r" and tree["classes"] == 2 and tree["affinity"] == {"T": 0.75}
    a, b = tree["children"]
    assert (a["wnid"], b["wnid"]) == ("a", "b")
    for parent in (a, b):
        (s1,) = parent["children"]
        assert s1["selected"] and s1["classes"] == 2 and s1["parents"] == ["a", "b"]
        assert [(c["wnid"], "children" in c) for c in s1["children"]] == [("s1", False), ("s2", False)]
    # Classes outside WordNet: a top node joins them to the WordNet tree.
    wn = load_wordnet()
    g2 = build_taxonomy_graph(
        ["T"], ["n01440764", "my_part"], ["tench", "my part"], np.array([[0.2, 0.3]]), wn
    )
    tree2 = taxonomy_tree(g2)
    assert tree2["kind"] == "root" and tree2["wnid"] is None and tree2["classes"] == 2
    assert sorted(c["wnid"] for c in tree2["children"]) == ["my_part", wn.root]
    assert tree2["affinity_sum"] == pytest.approx(0.5)


def test_manifest_summary_reads_every_field_and_tolerates_missing_ones(manifest):
    s = manifest_summary(manifest)
    assert (s["k"], s["coverage"], s["status"], s["gap"]) == (20, 3, "optimal", 0.0)
    assert s["coverage_floor"] == pytest.approx(manifest["parameters"]["coverage_floor"])
    assert s["objective"] == pytest.approx(manifest["solver"]["objective"])
    assert s["greedy"]["overlap"] == 18 and len(s["greedy"]["violations"]) == 2
    assert "clothing" in s["greedy"]["violations"][0]
    empty = manifest_summary({})
    assert empty["k"] is None and empty["greedy"] is None and empty["source"] is None
    # A pool taken from the classifier has no root: the page says where the classes came from.
    classifier = dict(manifest, source={"dataset": "imagenet", "pool": "classifier", "root": None, "classes": 1000,
                                        "description": "the ImageNet-1k classes of the backbone's classifier"})  # fmt: skip
    assert "backbone's classifier" in manifest_summary(classifier)["source"]
    tree = {"wnid": None, "name": "x", "kind": "root", "depth": -1, "classes": 0, "affinity": {},
            "affinity_sum": 0.0, "children": [], "targets": []}  # fmt: skip
    page = render_taxonomy_html(tree, empty)
    assert "k = n/a" in page and "greedy top-k: n/a" in page


def test_html_escapes_the_embedded_data():
    tree = {"wnid": "n1", "name": "</script><b>bold</b> <!-- __JS__", "kind": "source", "depth": 1,
            "classes": 1, "affinity": {"T": 1.0}, "affinity_sum": 1.0, "targets": ["T"]}  # fmt: skip
    page = render_taxonomy_html(tree, None, title="<i>title</i>")
    assert "</script><b>" not in page and "<!-- __JS__" not in page and "<i>title</i>" not in page
    block = re.search(r'<script type="application/json" id="taxonomy-data">(.*?)</script>', page, re.S).group(
        1
    )
    assert json.loads(block)["tree"]["name"] == tree["name"]
    assert open_level(tree) == 0


def test_graph_html_cli_writes_one_offline_page(graph, tmp_path, capsys):
    out = tmp_path / "view.html"
    assert run_app(app, ["graph", str(MANIFEST), "--format", "html", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["view.html"]  # one file, no temporary left
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "<script>" in page
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(\w+:)?//""", page)  # no network resource
    assert "@import" not in page and "url(" not in page and "<link" not in page
    assert 'data-key="k">k = 20<' in page and "objective 0.906270" in page and "solver optimal" in page
    assert "100.17 % of the BIP's, 18 of 20 classes in common, violates 2 constraints" in html.unescape(page)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "html"], "--out is required for --format html"),
        (["--format", "png", "--out", "t.png", "--depth", "0"], "--depth must be >= 1 (got 0)"),
        (["--format", "html", "--out", "t.html", "--depth", "3"], "--depth applies to --format png only"),
        (["--format", "png", "--out", "t.png", "--max-sources", "0"], "--max-sources must be >= 1"),
        (["--format", "svg", "--out", "t.svg"], "--format 'svg': must be one of"),
    ],
)
def test_graph_cli_bad_options_are_one_line_errors(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_app(app, ["graph", str(MANIFEST), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


class _Nodes(HTMLParser):
    """Every element of a dumped DOM whose class list has ``node``, plus the #hits element."""

    def __init__(self):
        super().__init__()
        self.nodes: list[tuple[str, dict]] = []
        self.hits: dict = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "node" in (attrs.get("class") or "").split():
            self.nodes.append((tag, attrs))
        if attrs.get("id") == "hits":
            self.hits = attrs


def _dump_dom(page: Path, fragment: str, profile: Path) -> _Nodes:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
           "--dump-dom", page.resolve().as_uri() + fragment]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-ready="true"' in proc.stdout, "the page's script did not run"
    parser = _Nodes()
    parser.feed(proc.stdout)
    return parser


@needs_chromium
def test_html_in_headless_chromium_draws_every_node_and_searches_from_the_url(graph, tmp_path):
    page = tmp_path / "view.html"
    assert run_app(app, ["graph", str(MANIFEST), "--format", "html", "--out", str(page)]) == 0
    dom = _dump_dom(page, "", tmp_path / "profile")
    classes = [set(a["class"].split()) for _, a in dom.nodes]
    # Every node of the tree view (a node with two parents is drawn under each), every distinct class.
    tree = list(_walk(taxonomy_tree(graph)))
    assert sum("leaf" in c for c in classes) == sum("children" not in n for n in tree) > 20
    assert sum("internal" in c for c in classes) == sum("children" in n for n in tree)
    assert {a["data-wnid"] for _, a in dom.nodes if "internal" in a["class"]} == _wordnet_nodes(graph)
    assert len(_wordnet_nodes(graph)) == 61
    leaves = {a["data-wnid"] for _, a in dom.nodes if "leaf" in a["class"]}
    assert leaves == {v for v, k in graph.nodes(data="kind") if k == "source"}
    # A node with two parents says so.
    assert any(a.get("data-parents") == "consumer goods|covering" for _, a in dom.nodes)
    assert dom.hits["data-hits"] == "0" and not any("hit" in c for c in classes)

    # A search in the address: the hit is marked, counted, and the path down to it is open.
    dom = _dump_dom(page, "#search=poncho", tmp_path / "profile")
    assert (dom.hits["data-hits"], dom.hits["data-leaf-hits"]) == ("1", "1")
    hits = [a for _, a in dom.nodes if "hit" in a["class"].split()]
    # poncho is under clothing, which has two parents: marked in both places, counted once.
    assert [(a["data-wnid"], a["data-name"]) for a in hits] == [("n03980874", "poncho")] * 2
    ancestors = nx.ancestors(graph, "n03980874") - {"target:Class1"}
    details = {a["data-wnid"]: a for tag, a in dom.nodes if tag == "details"}
    assert ancestors and all("open" in details[v] for v in ancestors)
    # ?q= works too, and a wnid prefix matches several classes (not only the leaves).
    dom = _dump_dom(page, "?q=n04", tmp_path / "profile")
    expected = [v for v in graph if v.startswith("n04")]
    assert int(dom.hits["data-hits"]) == len(expected) > 1


@needs_chromium
def test_headless_chromium_screenshot_of_a_search(tmp_path):
    page = tmp_path / "view.html"
    assert run_app(app, ["graph", str(MANIFEST), "--format", "html", "--out", str(page)]) == 0
    shot = tmp_path / "view.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1400,1000", page.resolve().as_uri() + "#search=lampshade"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1400, 1000)
        pixels = np.asarray(im.convert("RGB")).astype(int)
    # The highlighted hit (#fff2a8) is on screen.
    assert (
        (abs(pixels[..., 0] - 255) < 4) & (abs(pixels[..., 1] - 242) < 4) & (abs(pixels[..., 2] - 168) < 4)
    ).sum() > 100


def test_collapse_folds_branches_into_boxes(graph, manifest):
    k = len(manifest["selected"])
    h = collapse_taxonomy(graph, 6)
    kinds = nx.get_node_attributes(h, "kind")
    boxes = [v for v, kind in kinds.items() if kind in ("source", "group")]
    groups = [v for v, kind in kinds.items() if kind == "group"]
    assert len(boxes) < k and groups
    assert sum(h.nodes[v].get("classes", 1) for v in boxes) == k
    assert all(h.nodes[v]["classes"] >= 2 and h.nodes[v]["depth"] == 6 for v in groups)
    clothing = next(v for v in groups if h.nodes[v]["label"] == "clothing")
    assert h.nodes[clothing]["classes"] == 4
    # Affinity is carried over: per target, the boxes' summed affinity is the selection's.
    total = sum(d["weight"] for _, _, d in h.edges(data=True) if d["kind"] == "affinity")
    assert total == pytest.approx(sum(e["affinity"]["Class1"] for e in manifest["selected"]))
    # The boxes follow one shortest path per class (a tree); the DAG's other parents of kept nodes stay.
    isa = nx.DiGraph([(u, v) for u, v, d in h.edges(data=True) if d["kind"] == "is_a"])
    assert nx.is_directed_acyclic_graph(isa)
    assert sorted(isa.predecessors(clothing)) == sorted(load_wordnet().parents(clothing))
    assert graph.number_of_nodes() > h.number_of_nodes()  # the input graph is untouched
    assert sum(1 for _, kind in graph.nodes(data="kind") if kind == "source") == k
    # The automatic depth: the deepest cut with at most the allowed boxes.
    for limit in (3, 8, 15):
        depth = auto_depth(graph, limit)
        n_boxes = sum(
            1 for _, kind in collapse_taxonomy(graph, depth).nodes(data="kind") if kind in ("source", "group")
        )
        deeper = sum(
            1
            for _, kind in collapse_taxonomy(graph, depth + 1).nodes(data="kind")
            if kind in ("source", "group")
        )
        assert n_boxes <= limit < deeper
    with pytest.raises(DataonomyError, match="--depth must be >= 1"):
        collapse_taxonomy(graph, 0)


def test_graph_png_with_depth(tmp_path, capsys):
    out = tmp_path / "taxonomy.png"
    assert run_app(app, ["graph", str(MANIFEST), "--format", "png", "--depth", "6", "--out", str(out)]) == 0
    with Image.open(out) as im:
        im.load()
        assert im.size[0] >= 1000 and im.size[1] >= 600
    assert [p.name for p in tmp_path.iterdir()] == ["taxonomy.png"]


def test_large_selection_png_is_collapsed_automatically(manifest, tmp_path, capsys):
    # A manifest of more than AUTO_DEPTH_ABOVE classes: the k20 one with 80 ImageNet classes.
    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(1000, AUTO_DEPTH_ABOVE + 20, replace=False))
    classes = imagenet_classes()
    big = dict(manifest, parameters=dict(manifest["parameters"], k=len(chosen)))
    big["selected"] = [
        {"wnid": classes[i][0], "name": classes[i][1], "source_index": int(i), "images": None,
         "affinity": {"Class1": float(a)}}
        for i, a in zip(chosen, rng.dirichlet(np.ones(len(chosen))), strict=True)
    ]  # fmt: skip
    path = tmp_path / "big.json"
    path.write_text(json.dumps(big))
    out = tmp_path / "big.png"
    assert (
        run_app(app, ["graph", str(path), "--format", "png", "--out", str(out), "--max-sources", "30"]) == 0
    )
    printed = capsys.readouterr().out
    depth = auto_depth(graph_from_manifest(read_manifest(path)), 30)
    assert f"{len(chosen)} selected classes: drawn collapsed below WordNet depth {depth}" in printed
    with Image.open(out) as im:
        im.load()
    # draw_taxonomy on its own collapses the same way (the library default matches the command).
    draw_taxonomy(graph_from_manifest(read_manifest(path)), tmp_path / "lib.png", max_sources=30)
    assert (tmp_path / "lib.png").stat().st_size > 0
