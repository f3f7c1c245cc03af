"""examples/subset_experiment.py at --quick sizes on the real data: both arms and every condition run with the same
step budgets, the Class1 selection never sees the test fold's images, results.json holds the statistics, and a
rerun skips the finished runs and reproduces the results."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_example

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "subset_experiment.py"
ARMS = {"scratch": "none", "imagenet": "imagenet"}
TARGETS = ("dagm-class1", "synthetic")


def run_script(*args: str) -> subprocess.CompletedProcess:
    return run_example(SCRIPT, *args, timeout=1500)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("experiment") / "out"
    started = time.perf_counter()
    done = run_script("--quick", "--seeds", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, time.perf_counter() - started


def test_every_arm_and_condition_runs_with_equal_steps(experiment):
    out, _ = experiment
    results = json.loads((out / "results.json").read_text())
    table = {(e["arm"], e["target"], e["condition"]): e for e in results["table"]}
    assert set(table) == {
        (arm, t, c)
        for arm, baseline in ARMS.items()
        for t in TARGETS
        for c in ("dataonomy", "greedy", "random", "all", baseline)
    }
    for entry in table.values():
        assert entry["runs"] == 2
        for metric in ("ap", "auroc", "tpr", "tnr", "accuracy"):
            assert 0 <= entry[metric]["mean"] <= 1 and entry[metric]["std"] is not None
        assert entry["mean_iou"]["n"] >= 1 and 0 <= entry["mean_iou"]["mean"] <= 1  # pixel IoU from localize
    runs = results["runs"]
    assert len(runs) == 2 * len(table)
    # Equal budgets within an arm: every pretraining run took the same steps (also "all", with 50x the classes),
    # the baseline none; every fine-tuning run the same steps.
    for arm, baseline in ARMS.items():
        mine = [r for r in runs if r["arm"] == arm]
        assert len({r["pretrain_steps"] for r in mine if r["condition"] != baseline}) == 1
        assert {r["pretrain_steps"] for r in mine if r["condition"] == baseline} == {0}
        assert len({r["finetune_steps"] for r in mine}) == 1 and mine[0]["finetune_steps"] > 0
        pre = {
            json.loads(p.read_text())["steps"] for p in (out / "pretrain" / arm).glob("*/seed*/summary.json")
        }
        assert pre == {r["pretrain_steps"] for r in mine if r["condition"] != baseline}
    configs = [json.loads(p.read_text()) for p in (out / "finetune").glob("*/*/*/seed*/config.json")]
    assert len(configs) == len(runs) and {c["head"] for c in configs} == {"segdec"}
    arches = {
        arm: {
            json.loads(p.read_text())["arch"] for p in (out / "finetune" / arm).glob("*/*/seed*/config.json")
        }
        for arm in ARMS
    }
    assert arches == {"scratch": {"small_cnn"}, "imagenet": {"efficientnet_lite0"}}
    assert {r["classes"] for r in runs if r["condition"] == "all"} == {200}  # the standard 200, not 202
    assert {r["classes"] for r in runs if r["condition"] in ("dataonomy", "greedy", "random")} == {4}
    # The random condition draws anew for every seed.
    draws = [json.loads((out / "pretrain" / "subsets" / f"random-draw{s}.json").read_text()) for s in (0, 1)]
    assert draws[0] != draws[1]
    manifest = json.loads((out / "selection" / "dagm-class1-fold0_manifest.json").read_text())
    assert manifest["source"]["classes"] == 200
    assert not {"n02480855", "n10148035"} & {e["wnid"] for e in manifest["selected"]}


def _test_images(out: Path, arm: str, seed: int) -> set[str]:
    report = json.loads((out / "finetune" / arm / "dagm-class1" / ARMS[arm] / f"seed{seed}" / "eval_test.json")
                        .read_text())  # fmt: skip
    return {Path(p["path"]).name for p in report["predictions"]}


def test_selection_sees_only_the_training_folds(experiment):
    out, _ = experiment
    results = json.loads((out / "results.json").read_text())
    for seed in (0, 1):
        tested = _test_images(out, "scratch", seed)
        assert tested and tested == _test_images(out, "imagenet", seed)  # paired: the same fold in both arms
        selected_from = set(results["selection_images"][f"dagm-class1-fold{seed}"])
        staged = {
            p.name for p in (out / "selection" / f"dagm-class1-fold{seed}" / "Class1" / "Test").glob("*.PNG")
        }
        assert staged == selected_from and len(staged) > len(tested)
        assert not tested & staged  # the selection read none of the test fold's images
    assert not _test_images(out, "scratch", 0) & _test_images(out, "scratch", 1)  # seeds 0, 1: folds 0, 1
    assert results["selections"]["synthetic"]["target_split"] == "trainval"  # never its Test split


def test_results_hold_the_statistics(experiment):
    out, _ = experiment
    results = json.loads((out / "results.json").read_text())
    assert set(results["affinity_vs_ap"]) == {f"{a}/{t}" for a in ARMS for t in TARGETS}
    for key, c in results["affinity_vs_ap"].items():
        assert set(c) == {"spearman_rho", "p_value", "runs"} and c["runs"] >= 3, key
    assert set(results["dataonomy_vs"]) == {
        f"{a}/{t}/{c}" for a, b in ARMS.items() for t in TARGETS for c in ("greedy", "random", "all", b)
    }
    for c in results["dataonomy_vs"].values():
        assert c["seeds"] == 2
        for metric in ("ap", "auroc", "mean_iou"):
            assert set(c[metric]) == {"mean_difference", "dataonomy_better", "pairs", "wilcoxon_p"}
            assert 0 <= c[metric]["dataonomy_better"] <= c[metric]["pairs"] <= 2
    for name in ("results.md", "results.png", "experiment_config.json"):
        assert (out / name).stat().st_size > 0
    page = (out / "results.md").read_text()
    assert (
        "| imagenet | dagm-class1 | imagenet | 2 |" in page and "| scratch | synthetic | none | 2 |" in page
    )


def test_rerun_skips_finished_runs_and_reproduces_the_results(experiment):
    out, first_seconds = experiment
    before = json.loads((out / "results.json").read_text())
    stamps = {p: p.stat().st_mtime for p in out.glob("*/*/*/*/seed*/summary.json")}
    started = time.perf_counter()
    again = run_script("--quick", "--seeds", "2", "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert time.perf_counter() - started < first_seconds / 2  # nothing retrained or re-evaluated
    assert {p: p.stat().st_mtime for p in stamps} == stamps
    after = json.loads((out / "results.json").read_text())
    assert after["runs"] == before["runs"] and after["table"] == before["table"]


def test_bad_options_and_a_changed_experiment_are_refused(experiment, tmp_path):
    out, _ = experiment
    bad = run_script("--quick", "--targets", "mvtec", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--targets mvtec" in bad.stderr
    bad = run_script("--quick", "--arms", "resnet", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--arms resnet" in bad.stderr
    changed = run_script("--quick", "--k", "5", "--out", str(out))
    assert changed.returncode == 2 and "other parameters" in changed.stderr
