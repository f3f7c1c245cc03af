"""`dataonomy demo --quick`: every stage of the pipeline runs and every artefact is valid."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
from PIL import Image

from dataonomy.cli_utils import run_app
from dataonomy.manifest import read_manifest
from dataonomy_demo.cli import app


def _png(path) -> np.ndarray:
    im = Image.open(path)
    im.load()
    return np.asarray(im)


def test_demo_quick_writes_every_artefact(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_app(app, ["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for stage in ("1/7", "2/7", "3/7", "4/7", "5/7", "6/7", "7/7", "== summary =="):
        assert stage in printed
    summary = json.loads((out / "summary.json").read_text())
    files = summary["files"]
    # The manifest validates and the selection honours k; the graph reads back.
    manifest = read_manifest(files["manifest"])
    assert len(manifest["selected"]) == 4 and manifest["target"]["classes"] == ["Class1", "Class2", "Class3"]
    graph = nx.read_graphml(files["taxonomy_graphml"])
    assert sum(1 for _, d in graph.nodes(data=True) if d["kind"] == "target") == 3
    # Pictures decode and are not blank.
    for key in ("taxonomy_png", "pr_curve_png", "rootcause_png"):
        pixels = _png(files[key])
        assert pixels.shape[0] > 100 and pixels.std() > 0, key
    overlays = summary["heatmap_overlays"]
    assert len(overlays) == 2 and all(_png(p).ndim == 3 for p in overlays)
    # Metrics are in range.
    report = json.loads(open(files["metrics_json"]).read())
    for row in report["stored_threshold"]["rows"]:
        for key in ("tpr", "tnr", "accuracy", "ap", "auroc"):
            assert row[key] is None or 0.0 <= row[key] <= 1.0, (key, row)
    loc = summary["localization"]
    for key in ("precision", "recall", "f1", "iou", "mean_iou"):
        assert 0.0 <= loc[key] <= 1.0
    # The stamped systematic scratch is found, where it starts.
    assert summary["rootcause"]["verdict"] == "yes"
    assert summary["rootcause"]["onset"] == summary["rootcause"]["stamp_start"]
    assert "finished in" in printed and str(out / "summary.json") in printed


def test_demo_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x").write_text("keep me")
    assert run_app(app, ["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["x"]
