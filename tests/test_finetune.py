"""Fine-tuning on real DAGM images (Class1/Test split into train/val/test by the tool), evaluation tables, patches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dataonomy.cli_utils import run_app
from dataonomy.datasets import DAGM, SplitSpec
from transfer import metrics
from transfer.checkpoint import load_model
from transfer.cli import app
from transfer.data import DefectData, PatchDataset, defect_fold
from transfer.evaluate import evaluation_report, image_scores
from transfer.heads.patch import max_patch_scores
from transfer.models import get_model

# --- the report on a hand-checked confusion matrix -------------------------------------------------------------


def test_evaluation_report_on_hand_checked_confusion():
    #             Class1: 3 defective, 5 clean               Class2: 2 defective, 2 clean
    scores = [0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.05, 0.4, 0.8, 0.45, 0.55, 0.2]
    labels = [1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    groups = ["Class1"] * 8 + ["Class2"] * 4
    report = evaluation_report(scores, labels, groups, threshold=0.5)
    rows = {row["group"]: row for row in report["stored_threshold"]["rows"]}
    # Class1 at 0.5: called defective 0.9, 0.6 (right) and 0.7 (wrong); missed 0.2.
    c1 = rows["Class1"]
    assert (c1["tp"], c1["fn"], c1["fp"], c1["tn"]) == (2, 1, 1, 4)
    assert c1["tpr"] == pytest.approx(2 / 3) and c1["tnr"] == pytest.approx(4 / 5)
    assert c1["accuracy"] == pytest.approx(6 / 8)
    # AP: ranks 0.9 (TP), 0.7 (FP), 0.6 (TP), 0.4, 0.3 (FP), 0.2 (TP): (1 + 2/3 + 3/6) / 3.
    assert c1["ap"] == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    # AUROC: of 3 x 5 (defective, clean) pairs, the defective image scores higher in 5 + 4 + 2.
    assert c1["auroc"] == pytest.approx(11 / 15)
    c2 = rows["Class2"]  # 0.8 TP, 0.45 FN, 0.55 FP, 0.2 TN
    assert (c2["tp"], c2["fn"], c2["fp"], c2["tn"]) == (1, 1, 1, 1)
    pooled = rows["all"]
    assert (pooled["tp"], pooled["fn"], pooled["fp"], pooled["tn"]) == (3, 2, 2, 5)
    # Best threshold per class, on these images (reported apart, as optimistic).
    best = report["best_threshold"]
    assert "optimistic" in best["note"]
    # Class1: calling >= 0.6 defective is best ((2/3 + 4/5) / 2); the threshold sits between 0.6 and 0.4.
    assert best["thresholds"]["Class1"] == pytest.approx(0.5)
    # Class2: calling >= 0.8 gives (1/2 + 1) / 2 = 0.75, >= 0.45 gives (1 + 1/2) / 2 too: the higher wins.
    assert best["thresholds"]["Class2"] == pytest.approx((0.8 + 0.55) / 2)
    best_rows = {row["group"]: row for row in best["rows"]}
    assert (best_rows["Class2"]["tp"], best_rows["Class2"]["fp"]) == (1, 0)


# --- fine-tune + evaluate on real DAGM images --------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, dagm_class1_test, tiny_imagenet) -> Path:
    """A pretrain run on 5 Tiny ImageNet classes, fine-tuned on DAGM Class1/Test (80/20 of 80 % train/val)."""
    root = tmp_path_factory.mktemp("finetune")
    wnids = (tiny_imagenet / "wnids.txt").read_text().split()[:5]
    manifest = root / "manifest.json"
    manifest.write_text(
        json.dumps({"schema": "dataonomy.manifest/1", "selected": [{"wnid": w} for w in wnids]})
    )
    common = ["--arch", "small_cnn", "--device", "cpu", "--seed", "1"]
    code = run_app(
        app,
        [
            "pretrain", "--manifest", str(manifest), "--source-root", str(tiny_imagenet), "--out", str(root / "base"),
            "--image-size", "32", "--images-per-class", "8", "--epochs", "1", "--batch-size", "8", *common,
        ],
    )  # fmt: skip
    assert code == 0
    code = run_app(
        app,
        [
            "finetune", "--base", str(root / "base"), "--dagm", str(dagm_class1_test), "--test-fraction", "0.2",
            "--out", str(root / "run"), "--head", "classify", "--image-size", "48", "--epochs", "2", "--batch-size", "32",
            "--device", "cpu", "--seed", "1",
        ],
    )  # fmt: skip
    assert code == 0
    return root / "run"


def test_finetune_run_folds_weights_and_validation_threshold(finetuned, dagm_class1_test):
    record = torch.load(finetuned / "best.pt", map_location="cpu", weights_only=True)
    assert record["kind"] == "finetune" and record["arch"] == "small_cnn" and record["num_classes"] == 2
    assert record["classes"] == ["ok", "defect"] and record["groups"] == ["Class1"]
    config = json.loads((finetuned / "config.json").read_text())
    assert (
        config["base"].endswith("best.pt") and config["test_fraction"] == 0.2 and config["image_size"] == 48
    )
    # The three folds the tool carves are disjoint, cover Class1/Test, and each holds defects (stratified).
    folds = {
        s: defect_fold(
            DefectData(str(dagm_class1_test)), SplitSpec(s, val_fraction=0.2, test_fraction=0.2, seed=1)
        )
        for s in ("train", "val", "test")
    }
    paths = {s: {x.path for x in ds.samples} for s, ds in folds.items()}
    assert sum(len(p) for p in paths.values()) == 575 and len(set.union(*paths.values())) == 575
    assert [sum(x.defect for x in folds[s].samples) for s in ("train", "val", "test")] == [46, 11, 14]
    # The stored threshold is the one that maximises balanced accuracy on the validation fold's scores.
    loaded = load_model(finetuned)
    val_scores = image_scores(loaded, folds["val"])
    expected = metrics.best_threshold(val_scores, folds["val"].targets, "balanced_accuracy")
    assert record["threshold"] == pytest.approx(expected, abs=1e-6)
    lines = [json.loads(x) for x in (finetuned / "metrics.jsonl").read_text().splitlines()]
    best_line = next(x for x in lines if x["epoch"] == record["epoch"])
    assert best_line["val_ap"] == pytest.approx(
        metrics.average_precision(val_scores, folds["val"].targets), abs=1e-6
    )


def test_evaluate_prints_table_and_saves_what_it_computed(finetuned, capsys):
    code = run_app(app, ["evaluate", "--model", str(finetuned), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "tpr" in out and "tnr" in out and "Class1" in out and "optimistic" in out
    report = json.loads((finetuned / "eval_test.json").read_text())
    png = (finetuned / "eval_test_pr.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    predictions = report["predictions"]
    assert len(predictions) == 115 and sum(p["defect"] for p in predictions) == 14
    # Recompute the confusion matrix from the saved per-image scores, by hand.
    scores = np.array([p["score"] for p in predictions])
    labels = np.array([p["defect"] for p in predictions])
    threshold = report["stored_threshold"]["threshold"]
    called = scores >= threshold
    tp, fp = int(np.sum(called & (labels == 1))), int(np.sum(called & (labels == 0)))
    fn, tn = int(np.sum(~called & (labels == 1))), int(np.sum(~called & (labels == 0)))
    (row,) = report["stored_threshold"]["rows"]
    assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (tp, fp, fn, tn)
    assert row["tpr"] == pytest.approx(tp / (tp + fn)) and row["tnr"] == pytest.approx(tn / (tn + fp))
    assert row["accuracy"] == pytest.approx((tp + tn) / 115)
    # The printed table shows the same counts.
    line = next(x for x in out.splitlines() if x.strip().startswith("Class1"))
    assert line.split()[4:8] == [str(tp), str(fp), str(tn), str(fn)]
    # The saved scores are the model's: re-score the first test images.
    loaded = load_model(finetuned)
    fold = defect_fold(
        DefectData(str(json.loads((finetuned / "config.json").read_text())["data"])),
        SplitSpec("test", val_fraction=0.2, test_fraction=0.2, seed=1),
    )
    assert [str(s.path) for s in fold.samples] == [p["path"] for p in predictions]
    subset = torch.utils.data.Subset(fold, range(4))
    np.testing.assert_allclose(image_scores(loaded, subset), scores[:4], rtol=1e-5, atol=1e-6)


def test_finetune_and_evaluate_bad_inputs(finetuned, dagm_class1_test, tmp_path, capsys):
    def error(*argv) -> str:
        code = run_app(app, list(argv))
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("error: ") and err.count("\n") == 1
        return err

    out = ["--out", str(tmp_path / "run"), "--device", "cpu"]
    assert "--base and --data (or --dagm) are required" in error("finetune", *out)
    assert "checkpoint not found" in error(
        "finetune", "--base", str(tmp_path / "none.pt"), "--dagm", str(dagm_class1_test), *out
    )
    err = error(
        "finetune", "--base", str(finetuned), "--arch", "resnet18", "--dagm", str(dagm_class1_test), *out
    )
    assert "holds a small_cnn model" in err
    err = error(
        *"finetune --base scratch --arch small_cnn --monitor acc".split(),
        "--dagm",
        str(dagm_class1_test),
        *out,
    )
    assert "--monitor 'acc'" in err
    # Only clean images: nothing to learn a defect from.
    clean = tmp_path / "Class1" / "Test"
    (clean / "Label").mkdir(parents=True)
    rows = ["1"]
    for i, src in enumerate(sorted(dagm_class1_test.glob("*.PNG"))[:12]):
        if "_label" not in src.name and i < 10:
            (clean / src.name).write_bytes(src.read_bytes())
            rows.append(f"{i + 1}\t0\t{src.name}\t0\t0")
    (clean / "Label" / "Labels.txt").write_text("\n".join(rows) + "\n")
    err = error("finetune", "--base", "scratch", "--arch", "small_cnn", "--dagm", str(clean), *out)
    assert "needs both defective and clean examples" in err
    base = finetuned.parent / "base"
    assert "a pretrain run; evaluate a fine-tuned run" in error(
        "evaluate", "--model", str(base), "--device", "cpu"
    )
    assert "checkpoint not found" in error("evaluate", "--model", str(tmp_path), "--device", "cpu")


# --- patches -------------------------------------------------------------------------------------------------------


def test_patch_labels_follow_the_masks(dagm_class1_test):
    fold = defect_fold(
        DefectData(str(dagm_class1_test)), SplitSpec("val", val_fraction=0.2, test_fraction=0.2, seed=1)
    )
    patches = PatchDataset(fold, patch_size=128, stride=96, defect_fraction=0.1)
    counted = {"defective": 0, "clean": 0, "left_out": 0}
    kept = set(patches.patches)
    for i in range(len(fold)):
        mask = fold.mask(i)
        for y in (
            0,
            96,
            192,
            288,
            384,
        ):  # the grid on 512 pixels: 0, 96, ..., 288 and 384 flush with the edge
            for x in (0, 96, 192, 288, 384):
                fraction = mask[y : y + 128, x : x + 128].mean()
                kind = "defective" if fraction >= 0.1 else "clean" if fraction == 0 else "left_out"
                counted[kind] += 1
                assert ((i, y, x) in kept) == (kind != "left_out")
    assert sum(patches.targets) == counted["defective"] > 0
    assert len(patches) == counted["defective"] + counted["clean"]
    image, target = patches[patches.targets.index(1)]
    assert image.shape == (3, 128, 128) and image.dtype == torch.uint8 and target == 1


def test_max_patch_scores_equal_a_loop_over_patches(dagm_class1_test):
    torch.manual_seed(0)
    model = get_model("small_cnn", 2).eval()
    fold = defect_fold(DefectData(str(dagm_class1_test)), "all")
    from torchvision.transforms.v2.functional import pil_to_tensor

    images = torch.stack([pil_to_tensor(fold[i][0]) for i in (0, 1)]).float() / 255
    images = images[:, :, :300, :260]  # not a multiple of the stride: the flush-edge patches count too
    fast = max_patch_scores(model, images, patch_size=64, stride=48, batch_size=7)
    with torch.no_grad():
        for n in range(2):
            best = 0.0
            for y in [*range(0, 300 - 64 + 1, 48), 300 - 64]:
                for x in [*range(0, 260 - 64 + 1, 48), 260 - 64]:
                    patch = images[n : n + 1, :, y : y + 64, x : x + 64]
                    best = max(best, torch.softmax(model(patch), 1)[0, 1].item())
            assert fast[n].item() == pytest.approx(best, abs=1e-6)


def _patch_finetune(dagm: Path, run: Path, stride: str, defect_fraction: str, *options: str) -> int:
    """One epoch of ``finetune --patches`` (32 px patches, every ``stride``) of a small CNN on CPU."""
    return run_app(
        app,
        [
            "finetune", "--base", "scratch", "--arch", "small_cnn", "--dagm", str(dagm),
            "--test-fraction", "0.2", "--out", str(run), "--patches", "--patch-size", "32", "--patch-stride", stride,
            "--patch-defect-fraction", defect_fraction, "--epochs", "1", *options, "--device", "cpu",
        ],
    )  # fmt: skip


def test_patch_finetune_decides_images_by_their_most_defective_patch(dagm_class1_test, tmp_path, capsys):
    run = tmp_path / "patches"
    code = _patch_finetune(dagm_class1_test, run, "240", "0.05", "--batch-size", "64")
    assert code == 0, capsys.readouterr().err
    record = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert record["input"] == "patch" and record["input_size"] == 32
    assert (record["patch_size"], record["patch_stride"]) == (32, 240)
    assert run_app(app, ["evaluate", "--model", str(run), "--split", "val", "--device", "cpu"]) == 0
    assert "Class1" in capsys.readouterr().out
    predictions = json.loads((run / "eval_val.json").read_text())["predictions"]
    assert len(predictions) == 92  # the validation fold: 20 % of the 460 images left after the test fold
    # An image's score is its highest patch score, on the full-resolution patch grid.
    loaded = load_model(run)
    spec = SplitSpec("val", val_fraction=0.2, test_fraction=0.2)
    fold = defect_fold(DefectData(str(dagm_class1_test)), spec)
    from torchvision.transforms.v2.functional import pil_to_tensor

    images = loaded.normalize(torch.stack([pil_to_tensor(fold[i][0]) for i in (0, 1)]))
    expected = max_patch_scores(loaded.model, images, 32, 240)
    np.testing.assert_allclose([p["score"] for p in predictions[:2]], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_cross_validation_fold_is_what_finetune_trains_on_and_evaluate_tests(
    dagm_class1_test, tmp_path, capsys
):
    """--folds 3 --fold 1 --split-seed 7: training, validation and test images are the reader's fold 1 of the
    split seeded 7, whatever --seed (initialisation, order, augmentation) is."""
    run = tmp_path / "cv"
    code = run_app(
        app,
        [
            "finetune", "--base", "scratch", "--arch", "small_cnn", "--dagm", str(dagm_class1_test),
            "--folds", "3", "--fold", "1", "--split-seed", "7", "--seed", "2", "--out", str(run), "--patches",
            "--patch-size", "32", "--patch-stride", "240", "--epochs", "1", "--steps-per-epoch", "2",
            "--batch-size", "32", "--device", "cpu",
        ],
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert run_app(app, ["evaluate", "--model", str(run), "--split", "test", "--device", "cpu"]) == 0
    tested = {p["path"] for p in json.loads((run / "eval_test.json").read_text())["predictions"]}
    fold = DAGM(dagm_class1_test, split=SplitSpec("test", folds=3, fold=1, seed=7))
    assert tested == {str(s.path) for s in fold.samples} and len(tested) == 191
    capsys.readouterr()
    for extra, message in (
        (["--folds", "3", "--fold", "3"], "--fold 3: must be in 0..2"),
        (["--folds", "3", "--test-fraction", "0.2"], "--folds and --test-fraction"),
    ):
        argv = ["finetune", "--base", "scratch", "--arch", "small_cnn", "--dagm", str(dagm_class1_test),
                "--out", str(tmp_path / "bad"), "--device", "cpu", *extra]  # fmt: skip
        assert run_app(app, argv) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_patch_runs_choose_the_image_threshold_on_validation_images(dagm_class1_test, tmp_path, capsys):
    """The stored threshold decides images by their highest patch score, so it is the best threshold for the
    validation images' scores (what `evaluate --split val` computes), not for the validation patches."""
    run = tmp_path / "patches"
    code = _patch_finetune(
        dagm_class1_test, run, "160", "1e-9", "--steps-per-epoch", "4", "--batch-size", "32"
    )
    assert code == 0, capsys.readouterr().err
    assert run_app(app, ["evaluate", "--model", str(run), "--split", "val", "--device", "cpu"]) == 0
    predictions = json.loads((run / "eval_val.json").read_text())["predictions"]
    scores = np.array([p["score"] for p in predictions])
    labels = np.array([p["defect"] for p in predictions])
    stored = torch.load(run / "best.pt", map_location="cpu", weights_only=True)["threshold"]
    best = metrics.best_threshold(scores, labels, "balanced_accuracy")

    def balanced(t):
        c = metrics.confusion(scores, labels, t)
        return (c.tpr + c.tnr) / 2

    assert balanced(stored) == pytest.approx(balanced(best), abs=1e-9)
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"val_ap", "val_image_ap", "val_image_auroc", "val_threshold"} <= set(line)
    assert line["val_threshold"] == pytest.approx(stored)
