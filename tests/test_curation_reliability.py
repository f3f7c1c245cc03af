"""Issue 14, curation side: exact distances at extreme scales, the taxonomy as the whole is-a DAG, and
`select` / `graph` options checked before any work (one-line errors, nothing written)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from dataonomy import affinity as aff
from dataonomy.cli import app
from dataonomy.cli_utils import run_app
from dataonomy.errors import DataonomyError
from dataonomy.manifest import read_manifest
from dataonomy.taxonomy import graph_from_manifest, taxonomy_tree
from dataonomy.wordnet import load_wordnet

REPO = Path(__file__).resolve().parents[1]
K20 = REPO / "data_manifests" / "dagm_class1_tiny_k20.json"
CONSUMER_GOODS = "n03093574"

# ------------------------------------------------------------------------------------------ affinity


def test_softmax_index_error_names_the_offending_index():
    # -1 is the bad one; the largest index (5) is fine, and was the one the message used to name.
    with pytest.raises(DataonomyError, match=r"source logit index -1 \(source class 1\)"):
        aff.softmax_scores(np.zeros((2, 1000), np.float32), np.array([5, -1, 3]))
    with pytest.raises(DataonomyError, match=r"index 1000 \(source class 2\)"):
        aff.softmax_scores(np.zeros((2, 1000), np.float32), np.array([5, 3, 1000]))


def _extreme(seed=0, dim=64, sources=5, per_class=20):
    # Features around 1e4 with a spread of 1: float32's expansion of ||x - mu||^2 loses the spread.
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(sources, dim)) + 1e4
    src = (np.repeat(centres, per_class, 0) + rng.normal(size=(sources * per_class, dim)) * 0.1).astype(
        np.float32
    )
    src_labels = np.repeat(np.arange(sources), per_class)
    tgt = (centres[[0, 2]].repeat(7, 0) + rng.normal(size=(14, dim)) * 0.1).astype(np.float32)
    return src, src_labels, tgt, np.repeat([0, 1], 7)


def test_gaussian_and_frechet_are_exact_at_extreme_feature_scales():
    src, src_labels, tgt, tgt_labels = _extreme()
    stats = aff.class_gaussians(src, src_labels, 5)
    mu, var = stats.means.double().numpy(), stats.variances.double().numpy()
    x = tgt.astype(np.float64)[:, None, :]
    direct = (-0.5 * ((x - mu) ** 2 / var + np.log(2 * math.pi * var))).mean(2)
    scores = aff.gaussian_scores(tgt, stats, block_size=4)
    assert scores.dtype == torch_float64()
    np.testing.assert_allclose(scores.numpy(), direct, rtol=1e-9)
    tau = np.stack([tgt.astype(np.float64)[tgt_labels == t].std(0) for t in range(2)])
    sigma = np.sqrt(var)
    fd = -(((x - mu) ** 2).sum(2) + (sigma**2).sum(1)[None] - 2 * (tau[tgt_labels] @ sigma.T)) / x.shape[2]
    np.testing.assert_allclose(
        aff.frechet_scores(tgt, tgt_labels, 2, stats, block_size=4).numpy(), fd, rtol=1e-9
    )


def torch_float64():
    import torch

    return torch.float64


# ------------------------------------------------------------------------------------------ taxonomy


@pytest.fixture(scope="module")
def k20_graph():
    return graph_from_manifest(read_manifest(K20))


def test_taxonomy_holds_every_wordnet_ancestor(k20_graph):
    wn = load_wordnet()
    g = k20_graph
    isa = nx.DiGraph([(u, v) for u, v, d in g.edges(data=True) if d["kind"] == "is_a"])
    by_name = {g.nodes[v]["label"]: v for v, k in g.nodes(data="kind") if k == "source"}
    for name in ("cardigan", "poncho", "sock", "sombrero"):
        assert CONSUMER_GOODS in nx.ancestors(isa, by_name[name]), name
    # Every ancestor of every selected class, and every WordNet edge among them: the graph is a DAG.
    for v, kind in g.nodes(data="kind"):
        if kind == "source":
            assert nx.ancestors(isa, v) == wn.ancestors(v)
            assert g.nodes[v]["depth"] == wn.depth(v)
    for v in isa:
        assert sorted(isa.predecessors(v)) == wn.parents(v)
    assert nx.is_directed_acyclic_graph(isa) and not nx.is_tree(isa)
    # Depth is the shortest path from the root: clothing (2 parents) sits at depth 6.
    clothing = next(v for v in g if g.nodes[v]["label"] == "clothing")
    assert g.nodes[clothing]["depth"] == 6 == nx.shortest_path_length(isa, wn.root, clothing)
    assert nx.dag_longest_path_length(isa.subgraph(nx.ancestors(isa, clothing) | {clothing})) == 7


def test_html_tree_shows_a_node_under_each_parent_and_counts_classes_once(k20_graph):
    tree = taxonomy_tree(k20_graph)

    def walk(node, path):
        yield node, path
        for c in node.get("children", []):
            yield from walk(c, [*path, node["wnid"]])

    places = {}
    for node, path in walk(tree, []):
        places.setdefault(node["wnid"], []).append(path)
    # clothing appears under consumer goods and under covering, and says so.
    clothing = next(n for n, _ in walk(tree, []) if n["name"] == "clothing")
    assert sorted(p[-1] for p in places[clothing["wnid"]]) == sorted(load_wordnet().parents(clothing["wnid"]))
    assert clothing["parents"] == sorted(clothing["parents"]) and len(clothing["parents"]) == 2
    assert clothing["classes"] == 4 and tree["classes"] == 20
    consumer = next(n for n, _ in walk(tree, []) if n["wnid"] == CONSUMER_GOODS)
    assert consumer["classes"] >= 4


def test_graph_refuses_an_unknown_wnid_and_a_folder_as_out(tmp_path, capsys):
    m = json.loads(K20.read_text())
    m["selected"][3]["wnid"] = "n99999999"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(m))
    assert run_app(app, ["graph", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "n99999999" in err and "selected[3]" in err and len(err.strip().splitlines()) == 1
    folder = tmp_path / "folder"
    folder.mkdir()
    assert run_app(app, ["graph", str(K20), "--format", "graphml", "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a folder" in err and len(err.strip().splitlines()) == 1
    assert list(folder.iterdir()) == []


# ------------------------------------------------------------------------- select: checked before work


def _select(target, source, cache, out, *extra):
    argv = [
        "select", "--target", "dagm", "--target-root", str(target), "--source", "imagenet",
        "--source-root", str(source), "--k", "20", "--backbone", "efficientnet_lite0",
        "--images-per-class", "10", "--coverage", "3", "--diversity-depth", "6", "--diversity-max", "4",
        "--cache-dir", str(cache), "--out", str(out), "--num-workers", "0", *extra,
    ]  # fmt: skip
    return run_app(app, argv)


@pytest.fixture()
def wnids(tiny_imagenet):
    return (tiny_imagenet / "wnids.txt").read_text().split()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--diversity-depth", "-1"], "--diversity-depth -1: must be between 0"),
        (["--diversity-depth", "99"], "--diversity-depth 99: must be between 0"),
        (["--diversity-depth", "18"], "--diversity-depth 18: no source class of the pool"),
        (["--affinity", "nearest"], "--affinity 'nearest' is not a known affinity measure"),
        (["--k", "300"], "--k 300 is larger than the source pool (202 classes)"),
        (["--coverage", "-1"], "--coverage -1: must be >= 0"),
        (["--image-budget", "-5"], "--image-budget -5: must be >= 0"),
        (["--image-budget", "100"], "--image-budget 100 cannot be met"),
        (["--include", "MISSING"], "--include MISSING: cannot read"),
        (["--include", "UNKNOWN"], "--include UNKNOWN:1: 'n99999999' is not a class of the source pool"),
        (["--include", "FIRST", "--exclude", "FIRST"], "both list FIRSTWNID"),
        (["--target", "magnetic"], "--target 'magnetic': unknown dataset reader"),
        (["--source", "magnetic"], "--source 'magnetic': unknown dataset reader"),
        (["--k", "3", "--include", "FIVE"], "--include lists 5 classes but --k is 3"),
    ],
)
def test_bad_select_options_fail_before_any_extraction(
    extra, message, dagm_class1_test, tiny_imagenet, wnids, tmp_path, capsys
):
    files = {"UNKNOWN": "n99999999\n", "FIRST": wnids[0] + "\n", "FIVE": "\n".join(wnids[:5]) + "\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    extra = [str(tmp_path / a) if a in files or a == "MISSING" else a for a in extra]
    message = message.replace("FIRSTWNID", wnids[0]).replace("MISSING", str(tmp_path / "MISSING"))
    message = message.replace("UNKNOWN", str(tmp_path / "UNKNOWN"))
    out = tmp_path / "out" / "m.json"
    assert _select(dagm_class1_test, tiny_imagenet, tmp_path / "cache", out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1
    # Nothing extracted, nothing written.
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_select_out_naming_a_folder_is_one_line_and_leaves_nothing(
    dagm_class1_test, tiny_imagenet, tmp_path, capsys
):
    folder = tmp_path / "manifests"
    folder.mkdir()
    assert _select(dagm_class1_test, tiny_imagenet, tmp_path / "cache", folder) == 2
    err = capsys.readouterr().err
    assert f"--out {folder}: {folder} is a folder" in err and len(err.strip().splitlines()) == 1
    assert list(folder.iterdir()) == [] and not (tmp_path / "manifests.graphml").exists()
    assert not (tmp_path / "cache").exists()


def test_graph_exports_are_the_same_bytes_in_every_process(tmp_path):
    # Set orders change with PYTHONHASHSEED: every export of `dataonomy graph` must not depend on them.
    import os
    import subprocess
    import sys

    k500 = REPO / "data_manifests" / "dagm_class1_imagenet1k_k500.json"
    jobs = [(K20, fmt) for fmt in ("graphml", "json", "dot", "html", "png", "text")] + [(k500, "png")]
    script = (
        "import sys\n"
        "from dataonomy.cli import app\n"
        "from dataonomy.cli_utils import run_app\n"
        "for manifest, fmt, out in zip(*[iter(sys.argv[1:])] * 3):\n"
        "    argv = ['graph', manifest, '--format', fmt] + ([] if fmt == 'text' else ['--out', out])\n"
        "    assert run_app(app, argv) == 0\n"
    )
    outputs = []
    for seed in ("1", "4"):
        folder = tmp_path / seed
        folder.mkdir()
        args = [a for i, (m, fmt) in enumerate(jobs) for a in (str(m), fmt, str(folder / f"{i}.{fmt}"))]
        proc = subprocess.run(
            [sys.executable, "-c", script, *args],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
        outputs.append((files, proc.stdout.replace(str(folder), "OUT")))
    assert outputs[0][0].keys() == outputs[1][0].keys() and len(outputs[0][0]) == len(jobs) - 1
    for name in outputs[0][0]:
        assert outputs[0][0][name] == outputs[1][0][name], name
    assert outputs[0][1] == outputs[1][1]  # the text summary


def test_softmax_with_a_pool_outside_imagenet_fails_before_extraction(dagm_class1_test, tmp_path, capsys):
    from PIL import Image

    pool = tmp_path / "pool"
    for name in ("bolts", "nuts"):
        (pool / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (i * 90, 40, 200)).save(pool / name / f"{i}.png")
    argv = ["select", "--target-root", str(dagm_class1_test), "--source", "folder", "--source-root", str(pool),
            "--k", "1", "--backbone", "efficientnet_lite0", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "m.json")]  # fmt: skip
    assert run_app(app, argv) == 2
    err = capsys.readouterr().err
    assert "--affinity softmax needs a source pool of ImageNet-1k classes" in err and "'bolts'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "m.json").exists()
