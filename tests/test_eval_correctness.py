"""Evaluation that measures what it says (issue 14): no silent testing on training images, the same image score
in validation as in test, splits that do not move when classes are added, AR per defect, labels that stay inside
the dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dataonomy.cli_utils import run_app
from dataonomy.datasets import DAGM, SplitSpec
from dataonomy.datasets.synthetic import Rendering, make_synthetic_dagm
from dataonomy.errors import DataonomyError
from transfer import metrics
from transfer.cli import app as transfer_app

# ------------------------------------------------------------------ AR over ground-truth defects (item 6)


def _two_defects() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((20, 20), bool)
    mask[2:6, 2:6] = True  # defect A, 16 px: found exactly
    mask[12:16, 12:16] = True  # defect B, 16 px: missed
    pred = np.zeros_like(mask)
    pred[2:6, 2:6] = True
    return pred, mask


def test_ar_sums_over_defects_not_images():
    pred, mask = _two_defects()
    report = metrics.localization_report([pred], [mask])
    # One of two defects found exactly: 2/2 * (0.5 + 0) = 0.5. Per image (IoU 16/32 = 0.5) it would be 0.
    assert report["ar"] == pytest.approx(0.5)
    assert report["mean_iou_defective"] == pytest.approx(0.5)
    assert report["n_defects"] == 2 and report["n_detected"] == 1
    np.testing.assert_allclose(metrics.defect_ious(pred, mask), [1.0, 0.0])


def test_ar_pools_defects_of_all_images_and_ignores_clean_ones():
    pred, mask = _two_defects()
    clean = np.zeros_like(mask)
    one = np.zeros_like(mask)
    one[5:9, 5:9] = True  # a third defect, predicted with IoU 16/24 (2/3)
    one_pred = np.zeros_like(mask)
    one_pred[5:9, 5:11] = True
    report = metrics.localization_report([pred, clean, one_pred], [mask, clean, one])
    assert report["ar"] == pytest.approx(2 / 3 * (0.5 + 0.0 + (2 / 3 - 0.5)))
    # Mean IoU over all images counts the clean image with an empty prediction as 1; the defective-only one not.
    assert report["mean_iou"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)
    assert report["mean_iou_defective"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert metrics.defect_ious(clean, clean).size == 0
    no_defect = metrics.localization_report([clean], [clean])
    assert no_defect["ar"] != no_defect["ar"]  # NaN: no defect to sum over


def test_localize_summary_prints_defective_mean_iou_beside_the_all_image_one():
    from transfer.localize_run import format_localize_summary

    pred, mask = _two_defects()
    clean = np.zeros_like(mask)
    report = {
        "threshold": {"value": 0.5, "source": "given"},
        "parameters": {"mode": "segmap"},
        "metrics": metrics.localization_report([pred, clean], [mask, clean]),
        "images": [{}, {}],
        "files": {"report": "x/localize.json"},
    }
    text = format_localize_summary(report)
    header = next(line for line in text.splitlines() if "precision" in line).split()
    assert header.index("mean_iou_defective") == header.index("mean_iou") + 1
    lines = text.splitlines()
    row = lines[next(i for i, line in enumerate(lines) if "precision" in line) + 1].split()
    assert float(row[header.index("mean_iou")]) == pytest.approx(0.75, abs=1e-3)  # (0.5 + 1) / 2
    assert float(row[header.index("mean_iou_defective")]) == pytest.approx(0.5, abs=1e-3)
    assert float(row[header.index("ar")]) == pytest.approx(0.5, abs=1e-3)


# ------------------------------------------------------------------ splits independent of other classes (item 5)


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory) -> Path:
    return make_synthetic_dagm(
        tmp_path_factory.mktemp("synthetic") / "dagm",
        classes=[1, 2],
        images_per_split=20,
        rendering=Rendering(size=64, seed=3),
    )


@pytest.mark.parametrize(
    "options",
    [{}, {"test_fraction": 0.3}, {"folds": 3, "fold": 0}, {"folds": 3, "fold": 2}],
    ids=["own-split", "test-fraction", "fold0", "fold2"],
)
def test_a_classes_split_does_not_depend_on_the_other_classes_read(two_classes, options):
    for name in ("Class1", "Class2"):
        for split in ("train", "val", "test"):
            spec = SplitSpec(split, seed=5, **options)
            alone = DAGM(two_classes, classes=[name], split=spec)
            together = DAGM(two_classes, classes=["Class1", "Class2"], split=spec)
            mine = [str(s.path) for s in together.samples if s.label == name]
            assert [str(s.path) for s in alone.samples] == mine, (name, split)


def test_class1_split_of_the_real_dagm_labels_alone_and_with_class2(shared_data):
    """The real label files (every DAGM class's Labels.txt): Class1's folds read alone and with Class2."""
    from dataonomy.datasets.base import Sample
    from dataonomy.datasets.dagm import parse_labels_txt
    from dataonomy.datasets.splits import split_samples

    labels = shared_data / "dagm-labels"

    def samples(name: str) -> list[Sample]:
        out = []
        for folder in ("Train", "Test"):
            for row in parse_labels_txt(labels / name / folder / "Label" / "Labels.txt"):
                path = Path(name) / folder / row.image
                out.append(Sample(path=path, label=name, target=int(row.defect), defect=row.defect))
        return out

    for options in ({"test_fraction": 0.25}, {"folds": 4, "fold": 1}):
        for split in ("train", "val", "test"):
            spec = SplitSpec(split, seed=0, **options)
            alone = split_samples(lambda which: samples("Class1"), spec, own_split=True)
            both = split_samples(lambda which: samples("Class1") + samples("Class2"), spec, own_split=True)
            assert alone == [s for s in both if s.label == "Class1"]
            # ... and Class2's, which sorted after Class1 took other generators before.
            alone2 = split_samples(lambda which: samples("Class2"), spec, own_split=True)
            assert alone2 == [s for s in both if s.label == "Class2"]


# ------------------------------------------------------------------ DAGM label paths stay inside (item 14)


def _tiny_dagm(root: Path, mask_name: str, image_name: str = "0001.PNG") -> Path:
    split = root / "Class1" / "Test"
    (split / "Label").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(split / "0001.PNG")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(split / "0002.PNG")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(split / "Label" / "0001_label.PNG")
    (split / "Label" / "Labels.txt").write_text(
        f"1\n1\t1\t{image_name}\t0\t{mask_name}\n2\t0\t0002.PNG\t0\t0\n", encoding="utf-8"
    )
    return split


@pytest.mark.parametrize(
    "mask_name",
    [
        "../../../../outside_label.PNG",
        "{outside}",
        "../Label/../../../../outside_label.PNG",
        "..\\outside.PNG",
    ],
)
def test_labels_txt_mask_path_leaving_the_dataset_is_refused(tmp_path, mask_name):
    outside = tmp_path / "outside_label.PNG"  # a real file outside the dataset that the path reaches
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(outside)
    split = _tiny_dagm(tmp_path / "data", mask_name.format(outside=outside))
    with pytest.raises(DataonomyError) as err:
        DAGM(split)
    message = str(err.value)
    assert "\n" not in message
    assert f"{split / 'Label' / 'Labels.txt'}:2:" in message and "mask path" in message


def test_labels_txt_image_path_leaving_the_dataset_is_refused(tmp_path):
    split = _tiny_dagm(tmp_path / "data", "0001_label.PNG", image_name="../../0001.PNG")
    with pytest.raises(DataonomyError, match=r"Labels\.txt:2: image path '\.\./\.\./0001\.PNG' leaves"):
        DAGM(split, allow_partial=True)  # not skipped as "missing" either


def test_labels_txt_plain_names_still_read(tmp_path):
    split = _tiny_dagm(tmp_path / "data", "0001_label.PNG")
    ds = DAGM(split)
    assert [s.defect for s in ds.samples] == [True, False] and ds.mask(0).all()


def test_dagm_cli_reports_an_escaping_mask_in_one_line(tmp_path, capsys):
    split = _tiny_dagm(tmp_path / "data", "../../../x.PNG")
    code = run_app(transfer_app, ["split", "--dagm", str(split), "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Labels.txt:2: mask path" in err


# ------------------------------------------------------------------ patch validation scores = test scores (item 4)


class _BrightestPixel(nn.Module):
    """A stand-in patch classifier whose defect logit is the patch's brightest normalised pixel: the image
    score then says which patches were scored."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # inference reads the device from the parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = x.float().amax(dim=(1, 2, 3)) * self.scale
        return torch.stack([torch.zeros_like(top), top], dim=1)


def _patch_set(root: Path) -> tuple[Path, Path]:
    """64x64 images, 16-px patch grid: defective images have a dim 16x16 defect filling one patch (share 1) and
    a bright 2x2 masked speck in another (share 4/256, under the 5 % rule: left out of the patch examples)."""
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    rng = np.random.default_rng(0)
    for j in range(16):
        pixels = rng.integers(0, 40, (64, 64), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        if j % 2:
            pixels[0:16, 0:16] = 100 + j
            mask[0:16, 0:16] = 255
            pixels[40:42, 40:42] = 250 - j
            mask[40:42, 40:42] = 255
        Image.fromarray(pixels).save(images / f"img{j:02d}.png")
        Image.fromarray(mask).save(masks / f"img{j:02d}_mask.png")
    return images, masks


def test_patch_validation_image_scores_equal_image_scores(tmp_path):
    from dataonomy.processes import Processes
    from transfer.checkpoint import LoadedModel, ModelRecord, model_record
    from transfer.config import FinetuneConfig
    from transfer.data import PatchDataset, run_fold
    from transfer.evaluate import image_scores
    from transfer.training import make_task, predict

    images, masks = _patch_set(tmp_path)
    config = FinetuneConfig(
        base="scratch", arch="small_cnn", data=str(images), format="pairs", masks=str(masks), head="classify",
        patches=True, patch_size=16, patch_stride=16, val_fraction=0.5, amp=False, augment=False,
    )  # fmt: skip
    task = make_task(config)
    procs = Processes.from_env("cpu")
    model = _BrightestPixel()
    outputs, targets = predict(model, task.val_set, task, procs, 64, 0, False, False)
    val_scores, val_labels = task.decision_scores(outputs, targets)

    val_images = run_fold(config, "val")
    meta = {"input": "patch", "patch_size": 16, "patch_stride": 16}
    record = ModelRecord.from_dict(model_record(config, model, meta), tmp_path / "best.pt")
    loaded = LoadedModel(model, record, tmp_path / "best.pt")
    test_scores = image_scores(loaded, val_images, batch_size=64)
    np.testing.assert_allclose(val_scores, test_scores, rtol=1e-6)
    np.testing.assert_array_equal(val_labels, val_images.targets)
    assert np.any(val_labels == 1) and np.any(val_labels == 0)

    # The patch metrics still count only the patches the fine-tuning's rule labels.
    labelled = PatchDataset(val_images, 16, 16, config.patch.patch_defect_fraction)
    assert int(task.val_patch_scored.sum()) == len(labelled) < len(outputs["score"])
    np.testing.assert_array_equal(targets[task.val_patch_scored], labelled.targets)
    metrics_now = task.val_metrics(outputs, targets)
    kept = task.val_patch_scored
    assert metrics_now["val_ap"] == pytest.approx(
        metrics.average_precision(outputs["score"][kept], targets[kept])
    )


# ------------------------------------------------------------------ runs know their images by content (item 3)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_app(transfer_app, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def pooled_run(tmp_path_factory):
    """A tiny segdec run fine-tuned with --folds 2 on a synthetic DAGM Class1 (Train and Test pooled), a copy of
    the same set in another folder, and a set of other images."""
    root = tmp_path_factory.mktemp("overlap")
    common = {"classes": [1], "images_per_split": 20, "defect_fraction": 0.5}
    data = make_synthetic_dagm(root / "dagm", rendering=Rendering(size=64, seed=1), **common)
    copy = root / "copy"
    shutil.copytree(data, copy)
    other = make_synthetic_dagm(root / "other", rendering=Rendering(size=64, seed=2), **common)
    run = root / "run"
    argv = [
        "finetune", "--base", "scratch", "--arch", "small_cnn", "--dagm", str(data), "--folds", "2",
        "--out", str(run), "--epochs", "1", "--batch-size", "4", "--output-stride", "8", "--head-channels", "8",
        "--device", "cpu", "--no-amp",
    ]  # fmt: skip
    assert run_app(transfer_app, argv) == 0
    return data, copy, other, run


def test_finetune_records_its_training_and_validation_images_by_content(pooled_run):
    from transfer.data import DefectData, defect_fold, file_sha256
    from transfer.models import read_checkpoint

    data, _, _, run = pooled_run
    seen = read_checkpoint(run / "best.pt")["seen_images"]
    source = DefectData(str(data))
    for name in ("train", "val"):
        fold = defect_fold(source, SplitSpec(name, folds=2, fold=0))
        assert seen[name] == sorted({file_sha256(s.path) for s in fold.samples})
    assert seen["hash"] == "sha256"


def test_evaluate_refuses_a_copys_test_split_holding_training_images(pooled_run, capsys):
    data, copy, _, run = pooled_run
    code, out, err = _run(["evaluate", "--model", str(run), "--dagm", str(copy), "--device", "cpu"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--split test of {copy.resolve()}" in err and "training images of the run" in err
    assert "--allow-overlap" in err and not (run / "eval_test.json").exists()

    # With --allow-overlap: scored, with a warning, and the counts in the report.
    with pytest.warns(UserWarning, match="training images of the run"):
        code, out, err = _run(
            ["evaluate", "--model", str(run), "--dagm", str(copy), "--device", "cpu", "--allow-overlap"],
            capsys,
        )
    assert code == 0, err
    report = json.loads((run / "eval_test.json").read_text())
    overlap = report["overlap"]
    test_copy = DAGM(copy, split="test")  # the copy's own Test folder: 20 images, the run pooled it
    from transfer.data import DefectData, defect_fold

    run_test = {s.path.name for s in defect_fold(DefectData(str(data)), SplitSpec("test", folds=2)).samples}
    expected_seen = sum(
        1 for s in test_copy.samples if s.path.name not in run_test
    )  # the copy's Test images that the run's fold 0 did not hold out
    assert overlap["checked"] and overlap["images"] == len(test_copy)
    assert overlap["train"] + overlap["val"] == expected_seen > 0 and overlap["train"] > 0
    assert "training images of the run" in overlap["warning"]
    assert f"{overlap['train']} training and {overlap['val']} validation images of {len(test_copy)}" in out


def test_evaluate_on_the_runs_own_test_fold_and_on_unseen_images_reports_no_overlap(pooled_run, capsys):
    _, _, other, run = pooled_run
    code, out, err = _run(["evaluate", "--model", str(run), "--device", "cpu", "--no-errors"], capsys)
    assert code == 0, err
    overlap = json.loads((run / "eval_test.json").read_text())["overlap"]
    assert overlap["checked"] and overlap["train"] == overlap["val"] == 0
    assert "0 training and 0 validation images" in out
    code, out, err = _run(["evaluate", "--model", str(run), "--dagm", str(other), "--device", "cpu"], capsys)
    assert code == 0, err
    overlap = json.loads((run / "eval_test.json").read_text())["overlap"]
    assert overlap["checked"] and overlap["train"] == overlap["val"] == 0 and overlap["images"] == 20


def test_localize_refuses_a_copys_test_split_holding_training_images(pooled_run, tmp_path, capsys):
    _, copy, _, run = pooled_run
    out_dir = tmp_path / "loc"
    argv = ["localize", "--model", str(run), "--dagm", str(copy), "--out", str(out_dir), "--device", "cpu",
            "--threshold", "0.5"]  # fmt: skip
    code, out, err = _run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "training images of the run" in err
    assert not out_dir.exists()
    with pytest.warns(UserWarning, match="training images of the run"):
        code, out, err = _run([*argv, "--allow-overlap"], capsys)
    assert code == 0, err
    overlap = json.loads((out_dir / "localize.json").read_text())["overlap"]
    assert overlap["checked"] and overlap["train"] + overlap["val"] > 0 and overlap["warning"]
    assert f"{overlap['train']} training and {overlap['val']} validation images of 20" in out


def test_localize_counts_overlap_of_plain_files_without_refusing(pooled_run, tmp_path, capsys):
    data, _, _, run = pooled_run
    argv = ["localize", "--model", str(run), "--images", str(data / "Class1" / "Train"), "--out",
            str(tmp_path / "loc"), "--device", "cpu", "--threshold", "0.5"]  # fmt: skip
    with pytest.warns(UserWarning, match="training images of the run"):
        code, out, err = _run(argv, capsys)
    assert code == 0, err
    overlap = json.loads((tmp_path / "loc" / "localize.json").read_text())["overlap"]
    assert overlap["checked"] and overlap["images"] == 20 and overlap["train"] + overlap["val"] > 0


def test_a_run_without_recorded_hashes_is_evaluated_and_says_it_was_not_checked(pooled_run, tmp_path, capsys):
    from transfer.checkpoint import save_model
    from transfer.models import read_checkpoint

    _, _, other, run = pooled_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    record = read_checkpoint(old / "best.pt")
    del record["seen_images"]
    save_model(record, old / "best.pt")
    code, out, err = _run(["evaluate", "--model", str(old), "--dagm", str(other), "--device", "cpu"], capsys)
    assert code == 0, err
    overlap = json.loads((old / "eval_test.json").read_text())["overlap"]
    assert overlap["checked"] is False and "records no image hashes" in overlap["reason"]
    assert "not checked" in out
