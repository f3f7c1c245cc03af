"""examples/pretrain_ablation.py at --quick sizes on the real data: the converged trunk stops on its validation
plateau and records its curve, every condition fine-tunes on the same few defects with the same step budget,
the lever's own change reaches its config, the paired statistics are computed, and a rerun skips finished runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_example

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "pretrain_ablation.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    return run_example(SCRIPT, *args, timeout=1200)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("ablation") / "out"
    done = run_script("--quick", "--out", str(out), "--defective-train", "4", "--no-localize")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_conditions_share_defects_and_budget_and_differ_by_their_lever(ablation):
    results = json.loads((ablation / "results.json").read_text())
    assert [e["lever"] for e in results["levers"]] == ["none", "converged-trunk0.1"]
    assert {e["runs"] for e in results["levers"]} == {2}
    configs = {
        (p.parent.parent.name, p.parent.name): json.loads(p.read_text())
        for p in (ablation / "finetune").glob("*/seed*/config.json")
    }
    assert len(configs) == 4 and {c["defective_train"] for c in configs.values()} == {4}
    assert {c["steps_per_epoch"] * c["epochs"] for c in configs.values()} == {2}
    assert (
        configs[("none", "seed0")]["base"] == "scratch"
        and configs[("none", "seed0")]["trunk_lr_scale"] == 1.0
    )
    lever = configs[("converged-trunk0.1", "seed0")]
    assert lever["trunk_lr_scale"] == 0.1 and lever["base"].endswith("pretrain/converged/best.pt")
    for seed in ("seed0", "seed1"):  # the same 4 defective training images in both conditions of a seed
        seen = [
            torch.load(
                ablation / "finetune" / name / seed / "best.pt", map_location="cpu", weights_only=True
            )["seen_images"]["train"]
            for name in ("none", "converged-trunk0.1")
        ]
        assert seen[0] == seen[1]
    paired = results["levers"][1]["ap_vs_none"]
    assert paired["pairs"] == 2 and 0 <= paired["better_on"] <= 2
    # The starting trunk's LogME, one per fold and trunk (seeds 0 and 1 test folds 0 and 1): 4 estimates.
    assert results["logme_vs_ap"]["runs"] == 4 and -1 <= results["logme_vs_ap"]["rho"] <= 1
    assert len(list((ablation / "logme").glob("*.json"))) == 4


def test_converged_trunk_records_its_curve_and_stops_on_the_plateau(ablation):
    pretrain = json.loads((ablation / "results.json").read_text())["pretrain"]["converged"]
    curve = pretrain["curve"]
    assert [x["epoch"] for x in curve] == list(range(1, pretrain["epochs"] + 1))
    assert all(0 <= x["val_top1"] <= 1 for x in curve)
    best = max(x["val_top1"] for x in curve)
    assert pretrain["val_top1"] == pytest.approx(best)
    config = json.loads((ablation / "pretrain" / "converged" / "config.json").read_text())
    assert config["patience"] == 1 and config["epochs"] == 3
    if pretrain["status"] == "stopped early":  # one epoch without a new best ends it
        assert pretrain["epochs"] == pretrain["best_epoch"] + 1


def test_rerun_skips_finished_runs_and_reproduces_results(ablation):
    before = json.loads((ablation / "results.json").read_text())
    done = run_script("--quick", "--out", str(ablation), "--defective-train", "4", "--no-localize")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epoch 1/" not in done.stdout  # nothing trained again
    after = json.loads((ablation / "results.json").read_text())
    assert after["levers"] == before["levers"] and after["runs"] == before["runs"]
    bad = run_script("--quick", "--out", str(ablation), "--defective-train", "5", "--no-localize")
    assert bad.returncode == 2 and "holds an ablation with other parameters" in bad.stderr


def test_seeds_for_power_matches_the_paired_t_test_table():
    sys.path.insert(0, str(REPO / "examples"))
    import numpy as np
    from pretrain_ablation import seeds_for_power

    # Effect size 1 (mean 1, sd 1): 10 pairs give a two-sided paired t-test 80 % power at 0.05 (Cohen's table).
    assert seeds_for_power(np.array([0.0, 1.0, 2.0])) == 10
    assert seeds_for_power(np.array([0.0, 2.0])) == 18  # effect 0.71
    assert seeds_for_power(np.array([0.3, 0.3])) is None  # no spread to plan on
    assert seeds_for_power(np.array([-1.0, 1.0])) is None  # no effect
