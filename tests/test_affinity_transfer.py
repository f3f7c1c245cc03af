"""examples/affinity_transfer.py at --quick sizes on the real data: each random subset is pretrained on exactly its
classes and fine-tuned from that trunk, its affinity score is the selection objective of those classes under
every affinity, the correlations come with their intervals, and a larger --subsets extends a finished study
without training its subsets again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_example

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "affinity_transfer.py"
AFFINITIES = ("softmax", "prototype", "gaussian", "frechet")


def run_script(*args: str) -> subprocess.CompletedProcess:
    return run_example(SCRIPT, *args, timeout=1200)


@pytest.fixture(scope="module")
def study(tmp_path_factory, shared_data):
    """A 3-subset study, then the same folder extended to 4: (out, first results, the extension's run)."""
    out = tmp_path_factory.mktemp("affinity") / "out"
    first = run_script("--quick", "--out", str(out), "--subsets", "3", "--no-localize")
    assert first.returncode == 0, first.stderr[-3000:]
    before = json.loads((out / "results.json").read_text())
    extended = run_script("--quick", "--out", str(out), "--subsets", "4", "--no-localize")
    assert extended.returncode == 0, extended.stderr[-3000:]
    return out, before, extended


def test_each_subset_pretrains_on_its_classes_and_fine_tunes_from_that_trunk(study):
    out, _, _ = study
    results = json.loads((out / "results.json").read_text())
    names = [s["name"] for s in results["subsets"]]
    assert names == ["subset00", "subset01", "subset02", "subset03"] and results["subsets_done"] == 4
    draws = [tuple(s["wnids"]) for s in results["subsets"]]
    assert len(set(draws)) == 4 and all(len(set(d)) == 3 for d in draws)
    for s in results["subsets"]:
        pretrain = json.loads((out / "pretrain" / s["name"] / "config.json").read_text())
        assert sorted(pretrain["wnids"]) == sorted(s["wnids"]) and pretrain["patience"] == 1
        finetune = json.loads((out / "finetune" / s["name"] / "seed0" / "config.json").read_text())
        assert Path(finetune["base"]) == (out / "pretrain" / s["name"] / "best.pt").resolve()
        assert finetune["defective_train"] == 3 and finetune["fold"] == 0
        assert 0 <= s["ap"] <= 1 and s["logme"] is not None


def test_subset_score_is_the_selection_objective_of_its_classes(study):
    out, _, _ = study
    results = json.loads((out / "results.json").read_text())
    for affinity in AFFINITIES:
        record = json.loads((out / "affinity" / f"fold0-{affinity}.json").read_text())
        values = record["values"]
        assert len(values) == 8 and all(v >= 0 for v in values.values())
        # AHP rows sum to 1, so the objective over all pool classes is the number of target classes.
        assert sum(values.values()) == pytest.approx(len(record["target_classes"]))
        for s in results["subsets"]:
            assert s[affinity] == pytest.approx(sum(values[w] for w in s["wnids"]))


def test_correlations_for_every_affinity_and_estimator(study):
    out, _, _ = study
    results = json.loads((out / "results.json").read_text())
    for predictor in (*AFFINITIES, "logme"):
        c = results["correlations"][f"{predictor}_vs_ap"]
        assert c["n"] == 4
        if c["rho"] is not None:
            assert -1 <= c["rho"] <= 1
    assert results["best_affinity"]["ap"] in (*AFFINITIES, None)
    # every other predictor is compared with the product's default affinity, paired over the same subsets
    assert results["default_affinity"] == "softmax"
    compared = {k.rsplit("_vs_", 1)[0] for k in results["against_default"]}
    assert compared == {"prototype", "gaussian", "frechet", "logme", "pretrain_val_top1"}
    table = (out / "results.md").read_text()
    assert "4 of 4 random 3-class subsets" in table and "| frechet |" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_more_subsets_extend_the_study_and_other_parameters_are_refused(study):
    out, before, extended = study
    assert before["subsets_done"] == 3
    assert extended.stdout.count("== subset") == 4
    assert (
        extended.stdout.count("val_top5")
        == json.loads((out / "pretrain" / "subset03" / "summary.json").read_text())["epochs"]
    )  # only the new subset pretrained
    after = json.loads((out / "results.json").read_text())
    assert after["subsets"][:3] == before["subsets"]
    bad = run_script("--quick", "--out", str(out), "--subsets", "4", "--k", "2", "--no-localize")
    assert bad.returncode == 2 and "holds a study with other parameters" in bad.stderr


def test_spearman_interval_brackets_the_rank_correlation():
    sys.path.insert(0, str(REPO / "examples"))
    from affinity_transfer import spearman_with_interval

    x = np.arange(12.0)
    exact = spearman_with_interval(x, 2 * x + 1, resamples=500, seed=0)
    assert exact["rho"] == pytest.approx(1.0) and exact["ci95"] == pytest.approx([1.0, 1.0])
    rng = np.random.default_rng(0)
    noisy = spearman_with_interval(x, x + rng.normal(0, 4, 12), resamples=500, seed=0)
    low, high = noisy["ci95"]
    assert low < noisy["rho"] < high and high - low > 0.1
    # Five subsets: a few resamples repeat one subset (no rho); the interval comes from the others.
    few = spearman_with_interval(x[:5], np.array([0.1, 0.3, 0.2, 0.5, 0.4]), resamples=500, seed=0)
    assert few["ci95"] is not None and few["ci95"][0] <= few["rho"] <= few["ci95"][1] <= 1
    assert spearman_with_interval(x, np.ones(12), resamples=100, seed=0)["rho"] is None
    assert spearman_with_interval(x[:2], x[:2], resamples=100, seed=0)["rho"] is None


def test_difference_against_the_default_is_paired_over_the_same_subsets():
    sys.path.insert(0, str(REPO / "examples"))
    from affinity_transfer import rho_difference_with_interval

    y = np.arange(12.0)
    rng = np.random.default_rng(1)
    # a predictor that ranks every subset right against one that ranks them backwards: +2, and the interval
    # excludes 0 because each resample scores both predictors on the same subsets
    both = rho_difference_with_interval(y, -y, y, resamples=500, seed=0)
    assert both["difference"] == pytest.approx(2.0) and both["ci95"] == pytest.approx([2.0, 2.0])
    # two equally noisy predictors: a difference near 0 with an interval spanning it
    a, b = y + rng.normal(0, 6, 12), y + rng.normal(0, 6, 12)
    same = rho_difference_with_interval(a, b, y, resamples=500, seed=0)
    assert same["ci95"][0] < 0 < same["ci95"][1]
    assert rho_difference_with_interval(y, np.ones(12), y, resamples=100, seed=0)["difference"] is None
