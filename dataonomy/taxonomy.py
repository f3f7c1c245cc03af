"""The taxonomy graph of a selection: target classes, selected source classes, and their WordNet
ancestors, with target -> source edges weighted by the AHP-normalised affinity.

Pure graph building (:func:`build_taxonomy_graph`) is separate from export and drawing, and
takes plain lists and arrays, so it can be used without a manifest. :func:`taxonomy_tree` (the nested
tree the HTML view shows) and :func:`collapse_taxonomy` / :func:`auto_depth` (the grouped PNG of a
large selection) are pure functions of the graph as well.

WordNet is a DAG: the graph holds every ancestor of every selected class and every is-a edge among
them (cardigan is clothing through "covering" and through "consumer goods"). A node's ``depth`` is its
*shortest* is-a distance from the WordNet root (entity = 0), the depth ``--diversity-depth`` uses; an
is-a edge can therefore join two nodes of the same depth or go from a deeper parent to a shallower
child. Views that need a tree (the HTML page, the collapsed PNG) say how they make one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import networkx as nx
import numpy as np

from dataonomy.errors import DataonomyError
from dataonomy.io import atomic_path
from dataonomy.wordnet import WordNet, load_wordnet

FORMATS = ("text", "graphml", "json", "dot", "png", "html")
# A PNG of more selected classes than this is drawn collapsed (see auto_depth) unless a depth is given.
AUTO_DEPTH_ABOVE = 60
# Node kinds that are drawn as leaves of the picture: a selected class, or a collapsed group of them.
LEAF_KINDS = ("source", "group")


def build_taxonomy_graph(
    target_classes: Sequence[str],
    source_wnids: Sequence[str],
    source_names: Sequence[str],
    affinity: np.ndarray,
    wordnet: WordNet | None = None,
    min_affinity: float = 0.0,
) -> nx.DiGraph:
    """Build the taxonomy as a DiGraph.

    Args:
        target_classes: target class names (``Class1``...), rows of ``affinity``.
        source_wnids, source_names: the selected source classes, columns of ``affinity``.
        affinity: (T, k) normalised affinity of each target class to each selected source.
        min_affinity: drop target->source edges below this weight (keeps pictures readable).

    Nodes carry ``kind`` (``target`` | ``source`` | ``wordnet``), ``label`` and ``depth`` (the shortest
    is-a distance from the WordNet root; -1 for targets and classes outside WordNet); ``is_a`` edges
    run parent -> child: every WordNet edge among the source classes and all their ancestors (a DAG,
    every is-a path to the root); ``affinity`` edges run target -> source with ``weight``. Nodes and
    edges are added in a fixed order (sources as given, then ancestors by depth and wnid), so the
    exported files are the same bytes in every process.
    """
    affinity = np.asarray(affinity, dtype=float)
    if affinity.shape != (len(target_classes), len(source_wnids)):
        raise ValueError(
            f"affinity has shape {affinity.shape}, expected ({len(target_classes)}, {len(source_wnids)})"
        )
    wordnet = wordnet or load_wordnet()
    g = nx.DiGraph()
    g.graph["depth"] = "shortest is-a path from the WordNet root (entity = 0)"
    above: set[str] = set()
    for wnid, name in zip(source_wnids, source_names, strict=True):
        depth = wordnet.depth(wnid) if wnid in wordnet else -1
        g.add_node(wnid, kind="source", label=name, depth=depth)
        if wnid in wordnet:
            above |= wordnet.ancestors(wnid)
    # Sorted: nx.ancestors is a set, whose order changes with PYTHONHASHSEED.
    for v in sorted(above - set(g), key=lambda v: (wordnet.depth(v), v)):
        g.add_node(v, kind="wordnet", label=wordnet.name(v), depth=wordnet.depth(v))
    in_wordnet = [v for v in g if v in wordnet]
    for child in in_wordnet:
        for parent in wordnet.parents(child):  # sorted; every parent of a node in g is in g
            g.add_edge(parent, child, kind="is_a", weight=1.0)
    for t, name in enumerate(target_classes):
        node = f"target:{name}"
        g.add_node(node, kind="target", label=name, depth=-1)
        for s, wnid in enumerate(source_wnids):
            w = float(affinity[t, s])
            if w > min_affinity:
                g.add_edge(node, wnid, kind="affinity", weight=w)
    return g


def _is_wnid(name: str) -> bool:
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


def graph_from_manifest(
    manifest: dict, wordnet: WordNet | None = None, where: str = "manifest"
) -> nx.DiGraph:
    """The taxonomy graph of a manifest (selected classes and their per-target affinities).

    A wnid that is not in ImageNet's WordNet is an error (a typo or a damaged file would otherwise be
    drawn as a class outside WordNet); class names that are not wnids (a folder pool) are kept as such.
    """
    wordnet = wordnet or load_wordnet()
    targets = list(manifest["target"]["classes"])
    selected = manifest["selected"]
    for i, e in enumerate(selected):
        if _is_wnid(e["wnid"]) and e["wnid"] not in wordnet:
            raise DataonomyError(
                f"{where}: selected[{i}].wnid '{e['wnid']}' ({e['name']}) is not in ImageNet's WordNet hierarchy"
            )
    affinity = np.array([[entry["affinity"].get(t, 0.0) for entry in selected] for t in targets])
    g = build_taxonomy_graph(
        targets, [e["wnid"] for e in selected], [e["name"] for e in selected], affinity, wordnet
    )
    g.graph["target"] = manifest["target"].get("dataset", "")
    g.graph["fingerprint"] = manifest.get("fingerprint", "")
    return g


def summarize_graph(g: nx.DiGraph, top: int = 5) -> str:
    """A few lines a person reads first: counts, and each target's strongest sources."""
    kinds = nx.get_node_attributes(g, "kind")
    n = {k: sum(1 for v in kinds.values() if v == k) for k in ("target", "source", "wordnet")}
    lines = [
        f"taxonomy: {n['target']} target classes, {n['source']} selected source classes, "
        f"{n['wordnet']} WordNet ancestors, {g.number_of_edges()} edges"
    ]
    for node in sorted(v for v, k in kinds.items() if k == "target"):
        edges = sorted(
            ((d["weight"], s) for _, s, d in g.out_edges(node, data=True) if d.get("kind") == "affinity"),
            reverse=True,
        )[:top]
        best = ", ".join(f"{g.nodes[s]['label']} ({w:.3f})" for w, s in edges)
        lines.append(f"  {g.nodes[node]['label']}: {best}")
    # The WordNet nodes that group most selected classes: where the selection concentrates.
    counts = []
    for v, k in kinds.items():
        if k == "wordnet":
            under = sum(1 for d in nx.descendants(g, v) if kinds.get(d) == "source")
            counts.append((under, g.nodes[v].get("depth", 0), g.nodes[v]["label"]))
    groups = [c for c in sorted(counts, key=lambda c: (-c[0], -c[1])) if c[1] >= 3][:top]
    if groups:
        lines.append("  largest groups: " + ", ".join(f"{label} ({m})" for m, _, label in groups))
    return "\n".join(lines)


def is_a_parents(g: nx.DiGraph, v: str) -> list[str]:
    """The is-a parents of ``v`` in ``g``, sorted."""
    return sorted(u for u, _, d in g.in_edges(v, data=True) if d.get("kind") == "is_a")


def is_a_tree(g: nx.DiGraph) -> dict[str, str | None]:
    """One parent per WordNet node and selected class: a spanning tree of the is-a DAG.

    Used where a view needs one place per class (the collapsed PNG's boxes, the layout). The parent is
    one on a shortest path from the root (``depth`` one less; the smallest wnid among those), so a node
    sits in the tree at its own depth; WordNet nodes then left without a selected class beneath are
    dropped. Tops (the WordNet root, classes outside WordNet) map to None. The graph itself keeps every
    parent (:func:`build_taxonomy_graph`).
    """
    parent: dict[str, str | None] = {}
    for v, data in g.nodes(data=True):
        if data.get("kind") != "target":
            preds = is_a_parents(g, v)
            depth = data.get("depth", -1)
            shortest = [u for u in preds if g.nodes[u].get("depth", -2) == depth - 1]
            parent[v] = (shortest or preds or [None])[0]
    keep: set[str] = set()
    for v, kind in g.nodes(data="kind"):
        node = v if kind == "source" else None
        while node is not None and node not in keep:
            keep.add(node)
            node = parent[node]
    return {v: p for v, p in parent.items() if v in keep}


def _tree_order(node: dict) -> tuple:
    return (-node["affinity_sum"], node["name"], node["wnid"] or "")


def taxonomy_tree(g: nx.DiGraph) -> dict:
    """The selection as one nested tree: WordNet nodes over the selected classes, with counts and sums.

    WordNet is a DAG and a tree has one parent per node: a node with several is-a parents appears
    under each of them, with its whole subtree (cardigan under "covering" and under "consumer goods"),
    and lists them in ``parents`` (their names). So a class can be a leaf more than once; counts and
    sums never count it twice: ``classes`` is the number of distinct selected classes at or below a node
    and ``affinity`` sums over those distinct classes.

    Every node is a dict: ``wnid``, ``name``, ``kind`` (``wordnet``; ``source`` for a selected class;
    ``root`` for a top node added when the classes share no WordNet root), ``depth`` (shortest is-a
    distance from the WordNet root, -1 outside WordNet), ``classes``, ``affinity`` (target class ->
    affinity) and ``affinity_sum`` (summed over the targets as well). Internal nodes have ``children``,
    strongest ``affinity_sum`` first. A selected class that is also an ancestor of other selected
    classes becomes an internal node (``selected``: true) whose first child is the class itself, so
    the leaves are exactly the selected classes. The top node also lists ``targets``, the target class
    names in the graph's order.
    """
    names, aff = _source_affinities(g)
    is_a = _is_a_graph(g)
    build = _TreeBuilder(g, is_a, aff, names)
    tops = sorted(v for v in is_a if is_a.in_degree(v) == 0 and build.under[v])
    if len(tops) == 1:
        tree = build(tops[0])
    else:
        base = {"wnid": None, "name": "selected classes", "kind": "root", "depth": -1}
        tree = build.internal(
            base,
            sorted((build(v) for v in tops), key=_tree_order),
            set().union(*(build.under[v] for v in tops)),
        )
    tree = dict(tree)  # the top node gets its own key below; memoised subtrees stay as they are
    tree["targets"] = names
    return tree


def _source_affinities(g: nx.DiGraph) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The target class names in the graph's order, and each selected class's affinity per target name."""
    targets = [(v, d["label"]) for v, d in g.nodes(data=True) if d.get("kind") == "target"]
    names = [label for _, label in targets]
    aff = {v: dict.fromkeys(names, 0.0) for v, kind in g.nodes(data="kind") if kind == "source"}
    for node, label in targets:
        for _, s, d in g.out_edges(node, data=True):
            if d.get("kind") == "affinity" and s in aff:
                aff[s][label] += float(d["weight"])
    return names, aff


def _is_a_graph(g: nx.DiGraph) -> nx.DiGraph:
    """The is-a DAG of ``g``: its is-a edges, and every node but the targets (in ``g``'s order)."""
    is_a = nx.DiGraph((u, v) for u, v, d in g.edges(data=True) if d.get("kind") == "is_a")
    is_a.add_nodes_from(v for v, kind in g.nodes(data="kind") if kind != "target")
    return is_a


class _TreeBuilder:
    """Builds :func:`taxonomy_tree`'s nodes: ``builder(v)`` is the subtree at ``v`` (memoised: a node with
    several parents is the same subtree under each)."""

    def __init__(self, g: nx.DiGraph, is_a: nx.DiGraph, aff: dict, names: list[str]):
        self.g, self.is_a, self.aff, self.names = g, is_a, aff, names
        # The distinct selected classes at or below each node (a class reached by two paths counts once).
        self.under: dict[str, frozenset] = {}
        for v in reversed(list(nx.topological_sort(is_a))):
            below = {v} if v in aff else set()
            for c in is_a.successors(v):
                below |= self.under[c]
            self.under[v] = frozenset(below)
        self.memo: dict[str, dict] = {}

    def sums(self, classes) -> dict:
        return {t: sum(self.aff[s][t] for s in sorted(classes)) for t in self.names}

    def internal(self, base: dict, kids: list[dict], classes) -> dict:
        total = self.sums(classes)
        return {**base, "classes": len(classes), "affinity": total, "affinity_sum": sum(total.values()),
                "children": kids}  # fmt: skip

    def __call__(self, v: str) -> dict:
        if v not in self.memo:
            self.memo[v] = self._build(v)
        return self.memo[v]

    def _build(self, v: str) -> dict:
        g, is_a, aff, under = self.g, self.is_a, self.aff, self.under
        data = g.nodes[v]
        base = {
            "wnid": v,
            "name": data.get("label", v),
            "kind": data["kind"],
            "depth": int(data.get("depth", -1)),
        }
        parents = sorted(is_a.predecessors(v))
        if len(parents) > 1:
            base["parents"] = [g.nodes[p].get("label", p) for p in parents]
        kids = sorted((self(c) for c in sorted(is_a.successors(v)) if under[c]), key=_tree_order)
        if data["kind"] != "source":
            return self.internal(base, kids, under[v])
        leaf = {**base, "classes": 1, "affinity": dict(aff[v]), "affinity_sum": sum(aff[v].values())}
        if not kids:
            return leaf
        return self.internal({**base, "kind": "wordnet", "selected": True}, [leaf, *kids], under[v])


def _depth_groups(g: nx.DiGraph, parent: dict[str, str | None], depth: int) -> dict[str, list[str]]:
    """Selected classes by their ancestor at WordNet ``depth`` (a class above that depth: by itself)."""
    groups: dict[str, list[str]] = {}
    for v, kind in g.nodes(data="kind"):
        if kind == "source" and v in parent:
            key = v
            while g.nodes[key].get("depth", -1) > depth and parent[key] is not None:
                key = parent[key]
            groups.setdefault(key, []).append(v)
    return groups


def collapse_taxonomy(g: nx.DiGraph, depth: int) -> nx.DiGraph:
    """The taxonomy with everything below WordNet ``depth`` folded into one node per branch.

    Each node at ``depth`` with two or more selected classes at or below it becomes a ``group`` node
    (``classes``: how many; its affinity edges carry the sum of theirs, per target); the WordNet
    nodes and classes beneath it are removed. A branch with a single class keeps the class itself,
    and classes above ``depth`` stay as they are. Boxes follow :func:`is_a_tree` (each class in one box,
    under its ancestor at ``depth`` on a shortest path); every WordNet ancestor of what is kept stays,
    with every is-a edge among the kept nodes, so a box with a second parent (clothing under consumer
    goods as well as covering) shows it. Pure: ``g`` is not modified.
    """
    if depth < 1:
        raise DataonomyError(f"--depth must be >= 1 (got {depth})")
    parent = is_a_tree(g)
    groups = {key: m for key, m in _depth_groups(g, parent, depth).items() if len(m) > 1}
    folded: set[str] = set()
    where: dict[str, str] = {}
    for key, members in groups.items():
        for s in members:
            where[s] = key
            v = s
            while v != key:
                folded.add(v)
                v = parent[v]
    h = nx.DiGraph(**g.graph)
    for v, data in g.nodes(data=True):
        if v in folded or (data.get("kind") != "target" and v not in parent):
            continue
        h.add_node(v, **data)
        if v in groups:
            h.nodes[v].update(kind="group", classes=len(groups[v]))
    # Every WordNet ancestor of what is kept, in g's order (a set's order varies between processes).
    is_a = nx.DiGraph((u, v) for u, v, d in g.edges(data=True) if d.get("kind") == "is_a")
    above = set()
    for v in h:
        if v in is_a:
            above |= nx.ancestors(is_a, v)
    h.add_nodes_from(
        (v, data) for v, data in g.nodes(data=True) if v in above and v not in folded and v not in h
    )
    for v, p in parent.items():
        if p is not None and v in h and p in h:
            h.add_edge(p, v, kind="is_a", weight=1.0)
    for u, v, data in g.edges(data=True):  # the DAG's other parents of what is kept
        if data.get("kind") == "is_a" and u in h and v in h and not h.has_edge(u, v):
            h.add_edge(u, v, kind="is_a", weight=1.0)
    for t, s, data in g.edges(data=True):
        if data.get("kind") == "affinity":
            v = where.get(s, s)
            if h.has_edge(t, v):
                h[t][v]["weight"] += float(data["weight"])
            else:
                h.add_edge(t, v, kind="affinity", weight=float(data["weight"]))
    h.graph["collapsed_depth"] = depth
    return h


def auto_depth(g: nx.DiGraph, max_boxes: int = 40) -> int:
    """The deepest WordNet depth whose collapsed picture has at most ``max_boxes`` leaves (at least 1).

    A leaf is a collapsed group or a class drawn by itself (:func:`collapse_taxonomy`); deeper cuts
    only split groups, so the number of leaves grows with the depth.
    """
    parent = is_a_tree(g)
    deepest = max((g.nodes[v].get("depth", -1) for v in parent), default=1)
    best = 1
    for depth in range(1, deepest + 1):
        if len(_depth_groups(g, parent, depth)) <= max_boxes:
            best = depth
    return best


def _tree_positions(g: nx.DiGraph) -> dict:
    """Rows by WordNet depth (root on top), sources below, targets at the bottom.

    Sources are ordered by a depth-first walk of the is-a tree, so siblings sit together and
    each ancestor is centred over its descendants: few crossing edges, groups visible at a glance.
    """
    kinds = nx.get_node_attributes(g, "kind")
    is_a = _is_a_graph(g)
    roots = sorted(v for v in is_a if is_a.in_degree(v) == 0)
    order: list[str] = []
    for r in roots:
        for v in nx.dfs_preorder_nodes(
            is_a, r, sort_neighbors=lambda nbrs: sorted(nbrs, key=lambda n: g.nodes[n]["label"])
        ):
            if kinds[v] in LEAF_KINDS and v not in order:
                order.append(v)
    x = {v: float(i) for i, v in enumerate(order)}
    for v in reversed(list(nx.topological_sort(is_a))):
        if v not in x:
            kids = [c for c in is_a.successors(v) if c in x]
            x[v] = float(np.mean([x[c] for c in kids])) if kids else 0.0
            if len(kids) == 1 and is_a.in_degree(kids[0]) > 1:
                # One of several parents of one child (a DAG): side by side above it, not on one line.
                others = sorted(is_a.predecessors(kids[0]))
                x[v] += 0.6 * (others.index(v) - (len(others) - 1) / 2)
    # Rows by WordNet depth (shortest path), pushed down where a parent is as deep or deeper (a second,
    # longer is-a path): every is-a edge then points down the picture.
    row: dict[str, int] = {}
    for v in nx.topological_sort(is_a):
        parents = [row[p] + 1 for p in is_a.predecessors(v)]
        row[v] = max([int(g.nodes[v].get("depth", 0))] + parents)
    rows = [row[v] for v in row if kinds[v] == "wordnet"]
    top = min(rows, default=0)
    bottom = max(rows, default=0) + 1
    y = {}
    for v, k in kinds.items():
        y[v] = -(bottom + 2.5) if k == "target" else -(bottom if k in LEAF_KINDS else row[v] - top)
    # WordNet nodes of one row closer than a label's width (parents of one child in a DAG): spread apart.
    by_row: dict[float, list[str]] = {}
    for v in sorted(v for v, k in kinds.items() if k == "wordnet"):
        by_row.setdefault(y[v], []).append(v)
    for same in by_row.values():
        same.sort(key=lambda v: (x[v], v))
        for a, b in zip(same, same[1:], strict=False):
            if x[b] - x[a] < 0.9:
                x[b] = x[a] + 0.9
    targets = sorted(v for v, k in kinds.items() if k == "target")
    span = max(len(order) - 1, 1)
    for i, t in enumerate(targets):
        x[t] = span * (i + 1) / (len(targets) + 1)
    return {v: (x[v], y[v]) for v in g}


def draw_taxonomy(
    g: nx.DiGraph,
    path: str | Path,
    max_sources: int = 40,
    top_edges: int = 8,
    title: str | None = None,
    depth: int | None = None,
) -> Path:
    """Render the taxonomy to PNG: the ``max_sources`` strongest leaves with their ancestors,
    and each target's ``top_edges`` strongest affinity edges.

    ``depth`` collapses the tree below that WordNet depth (:func:`collapse_taxonomy`): each branch
    is one box "name (n classes)". None: class by class up to ``AUTO_DEPTH_ABOVE`` selected classes;
    above that, collapsed at :func:`auto_depth` (at most ``max_sources`` boxes). A leaf's strength
    is its summed affinity over the targets.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_src = sum(1 for _, k in g.nodes(data="kind") if k == "source")
    if depth is None and n_src > AUTO_DEPTH_ABOVE:
        depth = auto_depth(g, max_sources)
    if depth is not None:
        g = collapse_taxonomy(g, depth)
    sub, keep_sources, boxes = _picture_graph(g, max_sources, top_edges)
    pos = _tree_positions(sub)
    n_layers = len({y for _, y in pos.values()})
    widest = len(keep_sources)
    fig, ax = plt.subplots(figsize=(max(10, 0.55 * widest + 4), max(6, 0.9 * n_layers + 2)), dpi=110)
    _draw_edges(ax, sub, pos)
    _draw_nodes(ax, sub, pos)
    _draw_labels(ax, sub, pos, 9 if widest <= 30 else 8)
    ax.legend(handles=_legend_handles(depth), loc="upper right", fontsize=9, frameon=True)
    ax.set_title(_picture_heading(title, depth, n_src, len(keep_sources), boxes), fontsize=12)
    ax.axis("off")
    ax.margins(0.08, 0.12)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


_COLORS = {"target": "#d62728", "source": "#1f77b4", "group": "#6baed6", "wordnet": "#bbbbbb"}


def _picture_graph(g: nx.DiGraph, max_sources: int, top_edges: int) -> tuple[nx.DiGraph, list[str], int]:
    """What the picture shows (pure): the ``max_sources`` strongest leaves with their ancestors, near-root
    single-child chains removed, each target's ``top_edges`` strongest edges. Returns the graph, the leaves
    kept (strongest first) and how many leaves there were."""
    kinds = nx.get_node_attributes(g, "kind")
    strength = {
        v: sum(d["weight"] for _, _, d in g.in_edges(v, data=True) if d.get("kind") == "affinity")
        for v, k in kinds.items()
        if k in LEAF_KINDS
    }
    keep_sources = sorted(strength, key=lambda v: (-strength[v], v))[:max_sources]
    keep = set(keep_sources) | {v for v, k in kinds.items() if k == "target"}
    for s in keep_sources:
        keep |= nx.ancestors(g, s) - {v for v, k in kinds.items() if k == "target"}
    # Built in g's order: g.subgraph(set) iterates the set, whose order changes with PYTHONHASHSEED.
    sub = nx.DiGraph(**g.graph)
    sub.add_nodes_from((v, dict(d)) for v, d in g.nodes(data=True) if v in keep)
    sub.add_edges_from((u, v, dict(d)) for u, v, d in g.edges(data=True) if u in keep and v in keep)
    # Drop the long single-child chains near the root: they carry no grouping information. A node that is
    # one of several parents of its child stays: it names a second is-a path (consumer goods -> clothing).
    for v in list(nx.topological_sort(sub)):
        if sub.nodes[v]["kind"] == "wordnet" and sub.out_degree(v) == 1 and sub.in_degree(v) <= 1:
            parents = list(sub.predecessors(v))
            child = next(iter(sub.successors(v)))
            if len(is_a_parents(sub, child)) > 1:
                continue
            sub.remove_node(v)
            for p in parents:
                sub.add_edge(p, child, kind="is_a", weight=1.0)
    # Each target keeps only its strongest edges in the picture (all are in the exported graph).
    for t in [v for v in sub if sub.nodes[v]["kind"] == "target"]:
        edges = sorted(sub.out_edges(t, data="weight"), key=lambda e: -e[2])
        sub.remove_edges_from((u, v) for u, v, _ in edges[top_edges:])
    return sub, keep_sources, len(strength)


def _draw_edges(ax, sub: nx.DiGraph, pos: dict) -> None:
    """Is-a edges in grey; affinity edges in red, as wide as their weight."""
    is_a = [(u, v) for u, v, d in sub.edges(data=True) if d["kind"] == "is_a"]
    aff = [(u, v, d["weight"]) for u, v, d in sub.edges(data=True) if d["kind"] == "affinity"]
    nx.draw_networkx_edges(sub, pos, edgelist=is_a, ax=ax, edge_color="#999999", arrows=False, width=0.8)
    if aff:
        wmax = max(w for *_, w in aff) or 1.0
        nx.draw_networkx_edges(
            sub,
            pos,
            edgelist=[(u, v) for u, v, _ in aff],
            ax=ax,
            edge_color="#d62728",
            arrows=False,
            width=[0.5 + 3.0 * w / wmax for *_, w in aff],
            alpha=0.5,
        )


def _draw_nodes(ax, sub: nx.DiGraph, pos: dict) -> None:
    """Each kind of node in its colour, shape and size."""
    for kind, shape, size in (
        ("wordnet", "o", 120),
        ("source", "o", 260),
        ("group", "s", 420),
        ("target", "s", 520),
    ):
        nodes = [v for v in sub if sub.nodes[v]["kind"] == kind]
        nx.draw_networkx_nodes(
            sub,
            pos,
            nodelist=nodes,
            node_color=_COLORS[kind],
            node_shape=shape,
            node_size=size,
            ax=ax,
            edgecolors="black",
            linewidths=0.5,
        )


def _draw_labels(ax, sub: nx.DiGraph, pos: dict, font: int) -> None:
    """Every node's label: targets bold, WordNet nodes above their dot, classes and groups slanted below."""
    for v, (x, y) in pos.items():
        data = sub.nodes[v]
        bold = data["kind"] == "target"
        label = f"{data['label']} ({data['classes']} classes)" if data["kind"] == "group" else data["label"]
        ax.annotate(
            label,
            (x, y),
            xytext=(0, -11 if data["kind"] != "wordnet" else 8),
            textcoords="offset points",
            ha="center",
            va="top" if data["kind"] != "wordnet" else "bottom",
            rotation_mode="anchor",
            rotation=0 if bold or data["kind"] == "wordnet" else 40,
            fontsize=font + (2 if bold else 0),
            fontweight="bold" if bold else "normal",
            color=_COLORS[data["kind"]] if bold else "black",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 0.6},
        )


def _legend_handles(depth: int | None) -> list:
    """The legend: each kind of node (groups only in a collapsed picture), and the affinity edges."""
    from matplotlib.lines import Line2D

    def marker(shape: str, kind: str, size: int, label: str) -> Line2D:
        return Line2D(
            [], [], marker=shape, color="w", markerfacecolor=_COLORS[kind], markersize=size, label=label
        )

    handles = [
        marker("s", "target", 10, "target class"),
        marker("o", "source", 9, "selected source class"),
        marker("o", "wordnet", 7, "WordNet ancestor"),
    ]
    if depth is not None:
        handles.append(marker("s", "group", 9, f"selected classes below WordNet depth {depth}, as one box"))
    handles.append(Line2D([], [], color="#d62728", lw=2, alpha=0.5, label="affinity (width = weight)"))
    return handles


def _picture_heading(title: str | None, depth: int | None, n_src: int, shown: int, boxes: int) -> str:
    """The picture's title: ``title`` (or "Taxonomy") and what is shown of the ``n_src`` selected classes."""
    if depth is None:
        detail = f"{shown} of {n_src} selected source classes"
        return title or f"Taxonomy: {detail}"
    detail = f"{n_src} selected source classes, collapsed below WordNet depth {depth}: " + (
        f"{shown} boxes" if shown == boxes else f"the strongest {shown} of {boxes} boxes"
    )
    return f"{title}\n{detail}" if title else f"Taxonomy: {detail}"


def export_graph(g: nx.DiGraph, fmt: str, path: str | Path | None = None) -> str | Path:
    """Export as ``text`` (returned), ``graphml``, ``json`` (node-link), ``dot`` or ``png``. The ``html`` page is
    :func:`dataonomy.taxonomy_html.write_taxonomy_html`'s (it builds on this module, not the other way round)."""
    if fmt not in FORMATS or fmt == "html":
        exported = ", ".join(f for f in FORMATS if f != "html")
        raise DataonomyError(f"--format '{fmt}': export_graph writes {exported}; html: write_taxonomy_html")
    if fmt == "text":
        text = summarize_graph(g)
        if path is not None:
            with atomic_path(path) as tmp:
                tmp.write_text(text + "\n")
        return text
    if path is None:
        raise DataonomyError(f"--out is required for --format {fmt}")
    if fmt == "png":
        return draw_taxonomy(g, path)
    # GraphML and DOT want plain attribute values; graph-level attrs are strings already.
    with atomic_path(path) as tmp:
        if fmt == "graphml":
            nx.write_graphml(g, tmp)
        elif fmt == "json":
            tmp.write_text(json.dumps(nx.node_link_data(g, edges="edges"), indent=1) + "\n")
        elif fmt == "dot":
            h = nx.relabel_nodes(g, {v: f'"{v}"' for v in g}, copy=True)
            for _, data in h.nodes(data=True):
                data["label"] = f'"{data["label"]}"'
            nx.nx_pydot.write_dot(h, tmp)
    return Path(path)
