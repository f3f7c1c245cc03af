"""ImageNet's class list and WordNet is-a hierarchy, shipped as package data.

The files come from the public ImageNet metadata (``LOC_synset_mapping.txt`` in class-index
order, ``wordnet.is_a.txt`` as ``parent child`` edges, ``words.txt`` as ``wnid<TAB>lemmas``).
WordNet is a DAG, not a tree: a class can have several ancestors at one depth, so the
functions here return sets where a tree would return one node.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

import networkx as nx

from dataonomy.errors import DataonomyError

ROOT_WNID = "n00001740"  # "entity"


def _read_package_text(name: str) -> str:
    data = resources.files("dataonomy").joinpath("data", name).read_bytes()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8")


def parse_synset_mapping(text: str) -> list[tuple[str, str]]:
    """Parse ``LOC_synset_mapping.txt`` lines ``wnid name, synonyms`` into (wnid, name) pairs."""
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        wnid, _, name = line.partition(" ")
        pairs.append((wnid, name.strip()))
    return pairs


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet-1k classes as (wnid, name) in the standard class-index order."""
    return tuple(parse_synset_mapping(_read_package_text("LOC_synset_mapping.txt")))


@lru_cache(maxsize=1)
def imagenet_index() -> dict[str, int]:
    """wnid -> ImageNet-1k class index (0..999)."""
    return {wnid: i for i, (wnid, _) in enumerate(imagenet_classes())}


class WordNet:
    """The is-a hierarchy as a networkx DiGraph (edges parent -> child) with lemma names."""

    def __init__(self, edges: list[tuple[str, str]], names: dict[str, str], root: str = ROOT_WNID):
        self.graph = nx.DiGraph()
        self.graph.add_edges_from(edges)
        self.names = names
        self.root = root
        # Depth = shortest is-a distance from the root (NLTK's min_depth); computed once for every node.
        # WordNet is a DAG, so a node can also be reached by longer paths: the shortest one is the
        # depth everywhere (diversity groups, the taxonomy graph's ``depth`` attribute, --depth cuts).
        self._depth = nx.single_source_shortest_path_length(self.graph, root)
        self.max_depth = max(self._depth.values(), default=0)

    def _check(self, wnid: str) -> None:
        if wnid not in self.graph:
            raise DataonomyError(f"unknown WordNet id '{wnid}': not in ImageNet's is-a hierarchy")

    def __contains__(self, wnid: str) -> bool:
        return wnid in self.graph

    def name(self, wnid: str) -> str:
        """First lemma of the synset (``'tench'`` for ``n01440764``)."""
        self._check(wnid)
        return self.names.get(wnid, wnid).split(",")[0].strip()

    def parents(self, wnid: str) -> list[str]:
        self._check(wnid)
        return sorted(self.graph.predecessors(wnid))

    def ancestors(self, wnid: str) -> set[str]:
        """Every node above ``wnid`` (all paths to the root), not including itself."""
        self._check(wnid)
        return nx.ancestors(self.graph, wnid)

    def depth(self, wnid: str) -> int:
        """Shortest number of is-a steps from the root (root has depth 0)."""
        self._check(wnid)
        if wnid not in self._depth:
            raise DataonomyError(f"WordNet id '{wnid}' does not reach the root {self.root}")
        return self._depth[wnid]

    def ancestors_at_depth(self, wnid: str, depth: int) -> set[str]:
        """Ancestors (or the node itself) whose depth is exactly ``depth``.

        A set: callers whose output depends on the order must sort it (set order varies with
        PYTHONHASHSEED between processes).
        """
        nodes = self.ancestors(wnid) | {wnid}
        return {n for n in nodes if self._depth.get(n) == depth}

    def path_to_root(self, wnid: str) -> list[str]:
        """One shortest chain ``[wnid, parent, ..., root]``, for drawing a taxonomy."""
        self._check(wnid)
        return list(reversed(nx.shortest_path(self.graph, self.root, wnid)))


@lru_cache(maxsize=1)
def load_wordnet() -> WordNet:
    """The packaged ImageNet WordNet hierarchy (loaded once per process)."""
    edges = []
    for line in _read_package_text("wordnet.is_a.txt.gz").splitlines():
        parts = line.split()
        if len(parts) == 2:
            edges.append((parts[0], parts[1]))
    names = {}
    for line in _read_package_text("words.txt.gz").splitlines():
        wnid, _, lemmas = line.partition("\t")
        if wnid:
            names[wnid] = lemmas.strip()
    return WordNet(edges, names)
