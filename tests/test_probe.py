"""`--head probe`: a frozen trunk and a per-location logistic regression fitted from the masks in one pass, on
real DAGM Class1; it is saved, evaluated, localised, exported and used by `predict` as a segdec run is."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from dataonomy.cli_utils import run_app
from transfer import metrics as M
from transfer.checkpoint import load_model
from transfer.cli import app
from transfer.probe import ProbeNet, build_probe, fit_probe


def test_the_fit_separates_what_a_linear_rule_separates():
    """Features where one channel carries the label: the fitted probe ranks the cells almost perfectly, and its
    standardisation and weights land in the model's buffers and 1x1 map."""
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(4000, generator=g) < 0.05).long()
    features = torch.randn(4000, 8, generator=g)
    features[:, 3] += 3.0 * labels
    model = build_probe("small_cnn", "scratch", 8)
    channels = model.linear.in_channels
    padded = torch.cat([features, torch.zeros(4000, channels - 8)], 1) + 1e-3 * torch.randn(
        4000, channels, generator=g
    )
    fit = fit_probe(model, padded, labels)
    assert fit["examples"] == 4000 and fit["defective"] == int(labels.sum())
    with torch.no_grad():
        z = (padded - model.feature_mean) / model.feature_std
        scores = model.linear(z[:, :, None, None])[:, 0, 0, 0]
    assert M.auroc(scores.numpy(), labels.numpy()) > 0.97
    assert not any(p.requires_grad for p in model.trunk.parameters())


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory, dagm_class1_test):
    run = tmp_path_factory.mktemp("probe") / "run"
    code = run_app(
        app,
        [
            "finetune", "--head", "probe", "--base", "scratch", "--arch", "small_cnn", "--output-stride", "8",
            "--dagm", str(dagm_class1_test), "--folds", "3", "--fold", "1", "--defective-train", "5",
            "--out", str(run), "--device", "cpu",
        ],
    )  # fmt: skip
    assert code == 0
    return run


def test_a_probe_run_is_one_fit_saved_as_a_run(probe_run):
    summary = json.loads((probe_run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["epochs"] == 1 and summary["steps"] == 0
    assert summary["fit"]["defective"] > 0 and summary["fit"]["examples"] > summary["fit"]["defective"]
    loaded = load_model(probe_run)
    assert isinstance(loaded.model, ProbeNet) and loaded.record.head == "probe"
    assert loaded.record.output_stride == 8 and 0 < loaded.threshold < 1
    config = json.loads((probe_run / "config.json").read_text())
    assert config["head"] == "probe" and config["defective_train"] == 5


def test_a_probe_is_evaluated_localised_exported_and_predicts(probe_run, tmp_path, capsys, dagm_class1_test):
    assert run_app(app, ["evaluate", "--model", str(probe_run), "--device", "cpu", "--no-errors"]) == 0
    report = json.loads((probe_run / "eval_test.json").read_text())
    (row,) = report["stored_threshold"]["rows"]
    assert row["n"] > 100 and 0 <= row["auroc"] <= 1
    loc = tmp_path / "loc"
    args = ["localize", "--model", str(probe_run), "--out", str(loc), "--limit", "3", "--val-limit", "6"]
    assert run_app(app, args) == 0
    assert json.loads((loc / "localize.json").read_text())["parameters"]["mode"] == "segmap"
    onnx = tmp_path / "probe.onnx"
    assert run_app(app, ["export", "--model", str(probe_run), "--onnx", str(onnx), "--images", "2"]) == 0
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted(dagm_class1_test.glob("*.PNG"))[:6]:
        (images / p.name).symlink_to(p)
    tables = []
    for name, model in (("t", ["--model", str(probe_run)]), ("o", ["--onnx", str(onnx)])):
        args = ["predict", *model, "--images", str(images), "--out", str(tmp_path / name), "--device", "cpu"]
        assert run_app(app, [*args, "--threshold", "0.5"]) == 0, capsys.readouterr().err
        with (tmp_path / name / "predictions.csv").open() as f:
            tables.append(list(csv.DictReader(f)))
    for a, b in zip(*tables, strict=True):
        assert a["decision"] == b["decision"]
        assert float(a["score"]) == pytest.approx(float(b["score"]), abs=1e-4)
    assert np.isfinite([float(r["score"]) for r in tables[0]]).all()
