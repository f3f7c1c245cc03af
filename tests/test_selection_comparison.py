"""examples/selection_comparison.py at --quick sizes on the real data: every condition's trunk is pretrained on
its own classes (the fold's BIP selection, its greedy top k, a random draw, the whole pool, NEU-Seg's defect types),
seeds are paired across conditions, and the Holm-corrected analysis appears only once every planned seed is done."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_example

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "selection_comparison.py"
sys.path.insert(0, str(REPO / "examples"))


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("comparison") / "out"
    first = run_example(SCRIPT, "--quick", "--out", str(out), "--seeds", "1", "--no-localize", timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    partial = json.loads((out / "results.json").read_text())
    done = run_example(SCRIPT, "--quick", "--out", str(out), "--no-localize", timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, partial, json.loads((out / "results.json").read_text())


def test_each_condition_fine_tunes_from_a_trunk_of_its_own_classes(comparison):
    out, _, results = comparison
    selection = json.loads((out / "selection" / "fold0.json").read_text())
    expected = {
        "dataonomy-fold0": selection["dataonomy"],
        "greedy-fold0": selection["greedy"],
        "neu-seg": ["n99000001", "n99000002", "n99000003"],
    }
    for condition in ("dataonomy", "greedy", "random", "all", "neu-seg"):
        rows = [r for r in results["runs"] if r["condition"] == condition]
        assert [r["seed"] for r in rows] == [0, 1], condition
        for row in rows:
            finetune = json.loads(
                (out / "finetune" / condition / f"seed{row['seed']}" / "config.json").read_text()
            )
            trunk = out / "pretrain" / row["trunk"]
            assert Path(finetune["base"]) == (trunk / "best.pt").resolve()
            assert finetune["defective_train"] == 3 and finetune["fold"] == row["seed"] % 3
            wnids = json.loads((trunk / "config.json").read_text())["wnids"]
            if row["trunk"] in expected:
                assert sorted(wnids) == sorted(expected[row["trunk"]])
    all_classes = json.loads((out / "pretrain" / "all" / "config.json").read_text())["wnids"]
    assert len(all_classes) == 8  # the quick pool
    assert len(selection["dataonomy"]) == len(selection["greedy"]) == len(selection["bottom"]) == 3
    # the k = 100 comparison's bottom: the k of lowest affinity, none of them among the greedy top k of 8
    assert not set(selection["bottom"]) & set(selection["greedy"])
    assert set(selection["bottom"]) <= set(all_classes)


def test_neu_seg_source_holds_each_defect_type_at_the_budget(comparison):
    out, _, _ = comparison
    root = out / "source" / "neu-seg"
    from selection_comparison import neu_type

    for kind, wnid in enumerate(("n99000001", "n99000002", "n99000003"), start=1):
        images = sorted((root / "train" / wnid / "images").iterdir())
        assert len(images) == 4
        masks = [Path(p.resolve()).parents[1] / "masks" / f"{p.stem}.png" for p in images]
        assert all(neu_type(m) == kind for m in masks)
    annotations = (root / "val" / "val_annotations.txt").read_text().split("\n")
    assert len([a for a in annotations if a]) == 12
    train_names = {p.name for p in root.glob("train/*/images/*")}
    val_names = {a.split("\t")[0].split("_", 1)[1] for a in annotations if a}
    assert not train_names & val_names  # no image both trains and validates the trunk


def test_analysis_only_once_every_planned_seed_is_done(comparison):
    _, partial, results = comparison
    assert partial["seeds_done"] == 1 and partial["seeds_planned"] == 1 and partial["analysis"] is not None
    assert results["seeds_done"] == 2 and results["analysis"] is not None
    primary = results["analysis"]["primary"]
    assert [(t["condition"], t["baseline"], t["metric"]) for t in primary] == [
        ("dataonomy", "greedy", "ap"), ("dataonomy", "random", "ap"), ("dataonomy", "all", "ap"),
    ]  # fmt: skip
    for t in primary:
        assert t["n"] == 2 and 0 <= t["holm_p"] <= 1
        assert t["wilcoxon_p"] is None or t["holm_p"] >= t["wilcoxon_p"]
    assert isinstance(results["analysis"]["selection_helps"], bool)


def test_holm_adjusts_step_down():
    from selection_comparison import holm

    # Holm (1979): sorted p 0.01, 0.03, 0.04 of 3 -> 0.03, 0.06, 0.06 (monotone), order kept
    assert holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert holm([None, 0.2]) == pytest.approx([1.0, 0.4])


def test_partial_run_reports_no_analysis(tmp_path):
    from selection_comparison import ComparisonConfig, summarize

    cfg = ComparisonConfig.quick_config(tmp_path, seeds=3)
    rows = [{"condition": c, "seed": 0, "ap": 0.5, "mean_iou": None} for c in cfg.conditions]
    assert summarize(cfg, rows, 1)["analysis"] is None
    assert summarize(cfg, rows, 3)["analysis"] is not None


def test_k100_family_tests_the_selection_against_random_all_and_the_lowest_affinity(tmp_path):
    """The k = 100 design (docs/experiment.md): no greedy (it shares 93-96 of the selection's 100 classes), a
    bottom condition; the primary family is dataonomy against random, all and bottom, Holm over three."""
    from selection_comparison import ComparisonConfig, summarize

    cfg = ComparisonConfig.quick_config(
        tmp_path, seeds=6, conditions=("dataonomy", "random", "bottom", "all")
    )
    rows = [
        {"condition": c, "seed": s, "ap": ap + 0.01 * s, "mean_iou": 0.1}
        for s in range(6)
        for c, ap in (("dataonomy", 0.8), ("random", 0.5), ("bottom", 0.2), ("all", 0.7))
    ]
    primary = summarize(cfg, rows, 6)["analysis"]["primary"]
    assert [(t["baseline"], t["better"]) for t in primary] == [("random", 6), ("all", 6), ("bottom", 6)]
    assert all(t["holm_p"] >= t["wilcoxon_p"] for t in primary)
