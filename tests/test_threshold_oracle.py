"""examples/threshold_oracle.py on a small segdec run of real Class1: its "chosen" row is the threshold
``transfer localize`` chooses and the test IoU localize reports there, and no threshold rule beats its oracle."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_example

from dataonomy.cli_utils import run_app
from transfer.cli import app

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "threshold_oracle.py"


def test_the_oracle_reports_the_threshold_localize_chooses_and_the_bound_above_it(dagm_class1_test, tmp_path):
    run = tmp_path / "run"
    code = run_app(
        app,
        [
            "finetune", "--base", "scratch", "--arch", "small_cnn", "--output-stride", "8", "--head-channels", "8",
            "--dagm", str(dagm_class1_test), "--folds", "3", "--fold", "0", "--epochs", "1", "--steps-per-epoch",
            "3", "--batch-size", "4", "--crop-size", "96", "--out", str(run), "--device", "cpu",
        ],
    )  # fmt: skip
    assert code == 0
    assert (
        run_app(app, ["localize", "--model", str(run), "--out", str(tmp_path / "loc"), "--device", "cpu"])
        == 0
    )
    localized = json.loads((tmp_path / "loc" / "localize.json").read_text())
    sys.path.insert(0, str(REPO / "examples"))
    from threshold_oracle import oracle

    report = oracle(str(run))
    chosen, on_val, best = report["rows"]
    assert chosen["threshold"] == localized["threshold"]["value"]
    assert chosen["val_iou"] == pytest.approx(localized["threshold"]["mean_iou_defective"])
    assert chosen["test_iou"] == pytest.approx(localized["metrics"]["mean_iou_defective"])
    assert report["n_test_defective"] == localized["metrics"]["n_defective_images"]
    assert (
        best["test_iou"]
        == max(report["test_mean_iou_defective"])
        >= max(chosen["test_iou"], on_val["test_iou"])
    )
    assert on_val["val_iou"] == max(report["val_mean_iou_defective"])


def test_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path):
    done = run_example(SCRIPT, "--model", str(tmp_path), "--out", str(tmp_path / "o.json"), timeout=300)
    assert done.returncode == 2 and "no best.pt in the folder" in done.stderr
    assert not (tmp_path / "o.json").exists()
