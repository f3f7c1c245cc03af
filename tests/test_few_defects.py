"""Few defects and pretraining that converges (issue 25): ``finetune --defective-train N``, the pretrained trunk's
learning rate, pretraining's early stop on validation top-1, and runs saved before these fields existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dataonomy.cli_utils import run_app
from dataonomy.errors import DataonomyError
from transfer.cli import app
from transfer.config import FinetuneConfig, PretrainConfig, config_from_dict
from transfer.data import file_sha256, run_fold
from transfer.models import get_model
from transfer.training import Runtime, sgd, train


def class1_config(root: Path, **overrides) -> FinetuneConfig:
    options = dict(
        base="scratch", arch="small_cnn", data=str(root), folds=3, fold=0, split_seed=0, head="segdec",
        output_stride=8, seed=0,
    )  # fmt: skip
    return FinetuneConfig(**(options | overrides))


def paths(fold) -> dict[int, set[str]]:
    return {t: {str(s.path) for s in fold.samples if s.target == t} for t in (0, 1)}


# --- --defective-train ---------------------------------------------------------------------------------------------


def test_defective_train_keeps_n_seeded_nested_defects_and_every_clean_image(dagm_class1_test):
    full = paths(run_fold(class1_config(dagm_class1_test), "train"))
    assert len(full[1]) > 20  # Class1, 2 of 3 folds, 80 % of them: about 38 defective images
    kept = {
        n: paths(run_fold(class1_config(dagm_class1_test, defective_train=n), "train")) for n in (5, 10, 20)
    }
    for n, fold in kept.items():
        assert len(fold[1]) == n and fold[1] <= full[1]
        assert fold[0] == full[0]  # every clean training image stays
    assert kept[5][1] <= kept[10][1] <= kept[20][1]  # nested: "how many defects do I need?" adds images
    # The same N images in every condition: another initialisation seed, base or head does not change them.
    other = class1_config(dagm_class1_test, defective_train=10, seed=7, head="classify", image_size=64)
    assert paths(run_fold(other, "train"))[1] == kept[10][1]
    # Another split seed is another choice (and another cut).
    reseeded = paths(run_fold(class1_config(dagm_class1_test, defective_train=10, split_seed=1), "train"))
    assert reseeded[1] != kept[10][1]
    # Validation and test folds are left as they are.
    for split in ("val", "test"):
        assert paths(run_fold(class1_config(dagm_class1_test, defective_train=5), split)) == paths(
            run_fold(class1_config(dagm_class1_test), split)
        )


def test_defective_train_beyond_the_fold_or_below_one_is_refused(dagm_class1_test):
    with pytest.raises(
        DataonomyError, match=r"--defective-train 500: the training fold has only \d+ defective"
    ):
        run_fold(class1_config(dagm_class1_test, defective_train=500), "train")
    with pytest.raises(DataonomyError, match="--defective-train 0: must be at least 1"):
        class1_config(dagm_class1_test, defective_train=0)


def test_finetune_cli_trains_on_the_n_defects_it_was_given(dagm_class1_test, tmp_path, capsys):
    run = tmp_path / "run"
    code = run_app(
        app,
        [
            "finetune", "--base", "scratch", "--arch", "small_cnn", "--dagm", str(dagm_class1_test), "--folds", "3",
            "--defective-train", "4", "--out", str(run), "--head", "classify", "--image-size", "32",
            "--epochs", "1", "--batch-size", "32", "--device", "cpu",
        ],
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["defective_train"] == 4
    record = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    train_fold = run_fold(config_from_dict(config), "train")
    assert sum(train_fold.targets) == 4
    # What the run says it trained on is what it was given: 4 defective images and every clean one.
    assert record["seen_images"]["train"] == sorted({file_sha256(s.path) for s in train_fold.samples})


# --- the pretrained trunk's learning rate --------------------------------------------------------------------------


def test_trunk_lr_scale_puts_the_trunk_in_its_own_groups():
    model = get_model("small_cnn", 2, init=False)
    plain = sgd(model, 0.1, 0.9, 1e-4)
    assert [g["lr"] for g in plain.param_groups] == [0.1, 0.1]  # the two groups runs have always saved
    scaled = sgd(model, 0.1, 0.9, 1e-4, trunk=model.features, trunk_lr_scale=0.1)
    lrs = [g["lr"] for g in scaled.param_groups]
    assert lrs == pytest.approx([0.01, 0.01, 0.1, 0.1])
    trunk_ids = {id(p) for p in model.features.parameters()}
    for group in scaled.param_groups:
        in_trunk = {id(p) in trunk_ids for p in group["params"]}
        assert in_trunk == {group["lr"] == pytest.approx(0.01)} or not group["params"]
    assert sum(len(g["params"]) for g in scaled.param_groups) == len(list(model.parameters()))


def test_trunk_lr_scale_defaults_by_base(dagm_class1_test, tmp_path):
    from transfer.config import PRETRAINED_TRUNK_LR_SCALE

    assert class1_config(dagm_class1_test).trunk_lr_scale == 1.0
    pretrained = class1_config(dagm_class1_test, base=str(tmp_path / "best.pt"))
    assert pretrained.trunk_lr_scale == PRETRAINED_TRUNK_LR_SCALE
    assert class1_config(dagm_class1_test, base="imagenet", trunk_lr_scale=0.3).trunk_lr_scale == 0.3
    with pytest.raises(DataonomyError, match="--trunk-lr-scale -1"):
        class1_config(dagm_class1_test, trunk_lr_scale=-1)


# --- pretraining until validation top-1 stops improving -----------------------------------------------------------


def tiny_pretrain(tiny_imagenet: Path, tmp_path: Path, **overrides) -> PretrainConfig:
    wnids = (tiny_imagenet / "wnids.txt").read_text().split()[:3]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps({"schema": "dataonomy.manifest/1", "selected": [{"wnid": w} for w in wnids]})
    )
    options = dict(
        manifest=str(manifest), source_root=str(tiny_imagenet), wnids=wnids, arch="small_cnn", image_size=16,
        images_per_class=6, batch_size=6, epochs=6, seed=0,
    )  # fmt: skip
    return PretrainConfig(**(options | overrides))


def test_pretrain_stops_when_validation_top1_stops_improving(tiny_imagenet, tmp_path):
    # lr 0: the weights never change, so top-1 never improves after the first epoch.
    config = tiny_pretrain(tiny_imagenet, tmp_path, lr=0.0, patience=2)
    summary = train(config, tmp_path / "run", runtime=Runtime(device="cpu", progress=False))
    assert summary["status"] == "stopped early" and summary["epochs"] == 3 and summary["best_epoch"] == 1
    curve = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in curve] == [1, 2, 3] and all("val_top1" in x for x in curve)
    # Without patience every epoch of the budget is trained.
    summary = train(
        tiny_pretrain(tiny_imagenet, tmp_path, lr=0.0, patience=None, epochs=3),
        tmp_path / "budget",
        runtime=Runtime(device="cpu", progress=False),
    )
    assert summary["status"] == "complete" and summary["epochs"] == 3


def test_pretrain_cli_patience_and_its_check(tiny_imagenet, tmp_path, capsys):
    config = tiny_pretrain(tiny_imagenet, tmp_path)
    assert config.patience == 10  # the default: an epoch budget with early stopping
    args = [
        "pretrain", "--manifest", config.manifest, "--source-root", str(tiny_imagenet), "--arch", "small_cnn",
        "--image-size", "16", "--images-per-class", "6", "--batch-size", "6", "--device", "cpu",
    ]  # fmt: skip
    assert run_app(app, [*args, "--out", str(tmp_path / "bad"), "--patience", "0"]) == 2
    assert "--patience 0: must be at least 1" in capsys.readouterr().err
    code = run_app(
        app, [*args, "--out", str(tmp_path / "run"), "--epochs", "4", "--lr", "0", "--patience", "1"]
    )
    assert code == 0
    assert "stopped early: 2 epochs" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["patience"] == 1


# --- runs saved before these fields -------------------------------------------------------------------------------


def test_runs_saved_without_the_new_fields_load_as_they_trained(tiny_imagenet, dagm_class1_test, tmp_path):
    pretrain = tiny_pretrain(tiny_imagenet, tmp_path, epochs=1).to_dict()
    del pretrain["patience"]
    assert config_from_dict(pretrain).patience is None  # an old run trained every epoch
    finetune = class1_config(dagm_class1_test, base=str(tmp_path / "best.pt")).to_dict()
    del finetune["defective_train"], finetune["trunk_lr_scale"]
    old = config_from_dict(finetune)
    assert old.trunk_lr_scale == 1.0 and old.defective_train is None


def test_an_old_run_resumes(tiny_imagenet, tmp_path):
    """A checkpoint whose config predates ``patience`` resumes (its config is read with the legacy value)."""
    config = tiny_pretrain(tiny_imagenet, tmp_path, epochs=2, patience=None)
    run = tmp_path / "run"
    train(config, run, runtime=Runtime(device="cpu", progress=False, stop_after_steps=2))
    last = run / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    del checkpoint["config"]["patience"]
    torch.save(checkpoint, last)
    summary = train(config, run, resume=True, runtime=Runtime(device="cpu", progress=False))
    assert summary["status"] == "complete" and summary["epochs"] == 2
