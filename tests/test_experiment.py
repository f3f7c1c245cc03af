"""examples/subset_experiment.py at --quick sizes on the real data: every condition runs with the same step
budget, the results are complete, and a rerun resumes (skips finished runs) with identical results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "subset_experiment.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900
    )


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("experiment") / "out"
    started = time.perf_counter()
    done = run_script("--quick", "--seeds", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, time.perf_counter() - started


def test_every_condition_runs_with_equal_steps(experiment):
    out, _ = experiment
    results = json.loads((out / "results.json").read_text())
    table = {(e["target"], e["condition"]): e for e in results["table"]}
    assert set(table) == {
        (t, c) for t in ("dagm-class1", "synthetic") for c in ("dataonomy", "greedy", "random", "all", "none")
    }
    for entry in table.values():
        assert entry["runs"] == 2
        for metric in ("ap", "auroc", "accuracy", "tpr", "tnr"):
            assert 0 <= entry[metric]["mean"] <= 1 and entry[metric]["std"] is not None
    # Equal budgets: every pretraining run took the same steps (also "all", with 50x the classes), and so did
    # every fine-tuning run.
    pre_steps = {json.loads(p.read_text())["steps"] for p in (out / "pretrain").glob("*/seed*/summary.json")}
    fin_steps = {
        json.loads(p.read_text())["steps"] for p in (out / "finetune").glob("*/*/seed*/summary.json")
    }
    assert len(pre_steps) == 1 and len(fin_steps) == 1
    runs = results["runs"]
    assert {r["classes"] for r in runs if r["condition"] == "all"} == {
        200
    }  # the standard 200, not the copy's 202
    assert {r["classes"] for r in runs if r["condition"] in ("dataonomy", "greedy", "random")} == {4}
    # The random condition draws anew for every seed; the selection is the same for every seed.
    draws = [json.loads((out / "pretrain" / f"random-draw{s}" / "classes.json").read_text()) for s in (0, 1)]
    assert draws[0] != draws[1]
    manifest = json.loads((out / "selection" / "dagm-class1_manifest.json").read_text())
    assert manifest["source"]["classes"] == 200
    assert not {"n02480855", "n10148035"} & {e["wnid"] for e in manifest["selected"]}
    # Real Class1 is cross-validated: the two seeds test on two different folds of the 3.
    tested = [
        {p["path"] for p in json.loads((out / "finetune" / "dagm-class1" / "none" / f"seed{s}" / "eval_test.json")
                                       .read_text())["predictions"]}
        for s in (0, 1)
    ]  # fmt: skip
    assert tested[0] and tested[1] and not tested[0] & tested[1]
    assert {c for c in results["affinity_vs_ap"]} == {"dagm-class1", "synthetic"}
    paired = results["dataonomy_vs"]["synthetic/random"]
    assert paired["seeds"] == 2 and 0 <= paired["dataonomy_better"] <= 2
    for name in ("results.md", "results.png", "experiment_config.json"):
        assert (out / name).stat().st_size > 0
    assert "| dagm-class1 | dataonomy | 2 |" in (out / "results.md").read_text()


def test_rerun_skips_finished_runs_and_reproduces_the_results(experiment):
    out, first_seconds = experiment
    before = json.loads((out / "results.json").read_text())
    started = time.perf_counter()
    again = run_script("--quick", "--seeds", "2", "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert time.perf_counter() - started < first_seconds  # nothing retrained
    after = json.loads((out / "results.json").read_text())
    assert after["runs"] == before["runs"] and after["table"] == before["table"]
    # More seeds extend the experiment: the finished seeds' runs are kept as they are.
    more = run_script("--quick", "--seeds", "3", "--out", str(out))
    assert more.returncode == 0, more.stderr[-3000:]
    extended = json.loads((out / "results.json").read_text())
    assert [r for r in extended["runs"] if r["seed"] < 2] == before["runs"]
    assert {e["runs"] for e in extended["table"]} == {3}


def test_bad_options_and_a_changed_experiment_are_refused(experiment, tmp_path):
    out, _ = experiment
    bad = run_script("--quick", "--targets", "mvtec", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--targets mvtec" in bad.stderr
    changed = run_script("--quick", "--k", "5", "--out", str(out))
    assert changed.returncode == 2 and "other parameters" in changed.stderr
