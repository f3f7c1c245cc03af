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


def _ablation_module():
    sys.path.insert(0, str(REPO / "examples"))
    import pretrain_ablation

    return pretrain_ablation


def test_neu_seg_target_reads_pairs_and_groups_iou_by_defect_type(tmp_path, shared_data):
    import numpy as np
    from PIL import Image

    ablation = _ablation_module()
    cfg = ablation.AblationConfig(out=tmp_path / "out", target="neu-seg", neu_root=shared_data / "neu-seg")
    config = ablation.finetune_config(cfg, "converged-trunk0.1", None, seed=1)
    staged = (tmp_path / "out" / "target" / "neu-seg").resolve()
    assert config.format == "pairs" and config.layout.masks == str(staged / "masks")
    # NEU-Seg holds 4 images twice (different names and masks): one copy of each is kept.
    dropped = json.loads((staged / "dropped.json").read_text())
    assert dropped["kept"] == 4466 and len(dropped["dropped"]) == 4
    assert len(list((staged / "images").iterdir())) == len(list((staged / "masks").iterdir())) == 4466
    first = dropped["dropped"][0]
    assert (
        not (staged / "images" / first["image"]).exists() and (staged / "images" / first["same_as"]).exists()
    )
    assert config.segdec.crop_size is None and config.split.fold == 1 and config.trunk_lr_scale == 0.1
    # Real masks: each image's IoU counts toward every defect type its mask holds.
    masks = sorted((shared_data / "neu-seg" / "masks").glob("*.png"))[::100]  # across the set
    types = {m.stem: set(np.unique(np.asarray(Image.open(m))).tolist()) - {0} for m in masks}
    images = [{"name": stem, "defect": True, "iou": i / len(types)} for i, stem in enumerate(types)]
    images.append({"name": masks[0].stem, "defect": False, "iou": 1.0})  # a clean image: not counted
    path = tmp_path / "localize.json"
    path.write_text(json.dumps({"images": images}))
    got = ablation.iou_by_defect_type(path, shared_data / "neu-seg" / "masks")
    for t in (1, 2, 3):
        expected = [x["iou"] for x in images[:-1] if t in types[x["name"]]]
        assert got[f"type{t}"] == (pytest.approx(np.mean(expected)) if expected else None)
    assert len(set().union(*types.values())) >= 2  # the sample holds more than one type


def test_neu_seg_refuses_class1_resizing_levers(tmp_path, shared_data):
    done = run_script(
        "--quick", "--target", "neu-seg", "--levers", "converged-256", "--out", str(tmp_path / "o")
    )
    assert done.returncode == 2 and "converged-256: resize Class1's 512 px images" in done.stderr
    assert not (tmp_path / "o").exists()
    bad = run_script("--quick", "--target", "kolektor", "--out", str(tmp_path / "o"))
    assert bad.returncode == 2 and "--target kolektor: must be one of class1, neu-seg" in bad.stderr


def test_saved_config_from_before_the_target_field_still_matches(tmp_path):
    ablation = _ablation_module()
    cfg = ablation.AblationConfig(out=tmp_path)
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("target", "neu_root")}
    (tmp_path / "ablation_config.json").write_text(json.dumps(old))
    ablation.check_saved_config(cfg)  # a run made before the field existed was made with its default
    changed = ablation.AblationConfig(out=tmp_path, crop_size=128)
    with pytest.raises(ablation.DataonomyError, match="holds an ablation with other parameters"):
        ablation.check_saved_config(changed)


def test_long_budget_lever_pairs_with_a_random_trunk_on_the_same_budget(tmp_path, shared_data):
    ablation = _ablation_module()
    cfg = ablation.AblationConfig(out=tmp_path, dagm_root=shared_data / "dagm" / "Class1" / "Test")
    assert ablation.LEVERS["converged-long"].baseline == "none-long"
    short, long = (ablation.finetune_config(cfg, lever, None, seed=2) for lever in ("none", "none-long"))
    assert short.epochs * short.steps_per_epoch == 120 and short.patience == short.epochs  # no early stop
    assert long.epochs * long.steps_per_epoch == 600 and long.patience == 5  # stops on validation AP
    same = ("fold", "defective_train", "split_seed", "seed", "crop_size", "lr", "batch_size")
    assert [short.to_dict()[f] for f in same] == [long.to_dict()[f] for f in same]


def test_synthetic_target_trains_on_its_own_split_with_the_same_defects_per_seed(tmp_path, shared_data):
    out = tmp_path / "syn"
    done = run_script(
        "--quick",
        "--target",
        "synthetic",
        "--levers",
        "converged",
        "--defective-train",
        "3",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert {(r["lever"], r["seed"], r["fold"]) for r in results["runs"]} == {
        (lever, seed, None) for lever in ("none", "converged") for seed in (0, 1)
    }
    staged = (out / "target" / "synthetic" / "dagm").resolve()
    assert json.loads((staged / "synthetic.json").read_text())["parameters"]["classes"] == [1, 2]
    assert not (out / "target" / "synthetic" / "dagm.partial").exists()
    configs = [json.loads(p.read_text()) for p in sorted((out / "finetune").glob("*/seed*/config.json"))]
    assert {(c["data"], c["folds"], c["crop_size"], c["defective_train"]) for c in configs} == {
        (str(staged), None, None, 3)
    }
    seen = {
        tuple(torch.load(p, map_location="cpu", weights_only=True)["seen_images"]["train"])
        for p in (out / "finetune").glob("*/seed*/best.pt")
    }
    assert len(seen) == 1  # every seed and condition trains on the same 3 defects (and every clean image)
    assert "synthetic DAGM (its own Test split)" in (out / "results.md").read_text()
    assert len(list((out / "logme").glob("*.json"))) == 2  # one per trunk: every seed tests the same split
