"""`transfer localize` end to end on real DAGM Class1 images: files, threshold on validation, metrics, modes, errors.

The model is a seeded small_cnn saved as a patch-trained fine-tuning run (the record `transfer finetune --patches`
writes), untrained: training takes minutes on a CPU, and what is tested here is that the command computes,
writes and scores exactly the heatmaps of the model it is given. Every number is checked against an independent
computation with transfer.localize / transfer.metrics.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from dataonomy.cli_utils import run_app
from dataonomy.datasets import SplitSpec
from transfer import localize as L
from transfer import metrics
from transfer.checkpoint import load_model, model_record, save_model
from transfer.cli import app
from transfer.config import FinetuneConfig
from transfer.data import DefectData, defect_fold
from transfer.inspect_io import PREDICTED_COLOUR, TRUE_COLOUR
from transfer.localize_run import localize_images
from transfer.models import build_model
from transfer.stage_config import LocalizeConfig

PATCH = 64
FOLD = {"val_fraction": 0.2, "test_fraction": 0.25, "seed": 0}


@pytest.fixture(scope="module")
def mini_dagm(tmp_path_factory, dagm_class1_test) -> Path:
    """A DAGM copy of 16 real Class1 test images (8 defective, 8 clean), linked, with their Labels.txt rows."""
    folder = tmp_path_factory.mktemp("dagm") / "Class1" / "Test"
    (folder / "Label").mkdir(parents=True)
    rows = [r.split("\t") for r in (dagm_class1_test / "Label" / "Labels.txt").read_text().splitlines()[1:]]
    defective = [r for r in rows if r[1] == "1"][:8]
    clean = [r for r in rows if r[1] == "0"][:8]
    kept = sorted(defective + clean, key=lambda r: r[0])
    for row in kept:
        os.symlink(dagm_class1_test / row[2], folder / row[2])
        if row[1] == "1":
            mask = row[4].strip()
            os.symlink(dagm_class1_test / "Label" / mask, folder / "Label" / mask)
    (folder / "Label" / "Labels.txt").write_text("1\n" + "\n".join("\t".join(r) for r in kept) + "\n")
    return folder


def _save_run(folder: Path, dagm: Path, patches: bool) -> Path:
    config = FinetuneConfig(
        base="scratch",
        arch="small_cnn",
        data=str(dagm),
        head="classify",
        patches=patches,
        patch_size=PATCH,
        patch_stride=PATCH,
        image_size=64,
        **FOLD,
    )
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, "scratch")
    meta = {"classes": ["ok", "defect"], "groups": ["Class1"], "threshold": 0.5}
    if patches:
        meta.update(input="patch", patch_size=PATCH, patch_stride=PATCH)
    save_model(model_record(config, model, meta), folder / "best.pt")
    return folder


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory, mini_dagm) -> Path:
    return _save_run(tmp_path_factory.mktemp("runs") / "patch", mini_dagm, patches=True)


@pytest.fixture(scope="module")
def batched(tmp_path_factory, patch_run) -> tuple[Path, str]:
    """`transfer localize` on the run's own test fold, threshold chosen on its validation fold."""
    out = tmp_path_factory.mktemp("localize") / "batched"
    argv = ["localize", "--model", str(patch_run), "--out", str(out), "--stride", "64", "--device", "cpu"]
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = run_app(app, argv)
    assert code == 0
    return out, stdout.getvalue()


def _heat(loaded, path: Path, patch: int, stride: int) -> np.ndarray:
    image = loaded.normalize(pil_to_tensor(Image.open(path).convert("RGB"))[None])
    return L.heatmap_batched(loaded.model, image, patch, stride)[0].numpy()


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im)


def test_localize_writes_heatmaps_overlays_masks_and_scores_them(batched, patch_run, mini_dagm):
    out, terminal = batched
    report = json.loads((out / "localize.json").read_text())
    params = report["parameters"]
    # Patch size from the run (patch-trained at 64), batched by default.
    assert (params["patch"], params["stride"], params["mode"]) == (PATCH, 64, "batched")
    test = defect_fold(DefectData(str(mini_dagm)), SplitSpec("test", **FOLD))
    assert [r["image"] for r in report["images"]] == [str(s.path) for s in test.samples]
    assert len(test) == 4 and sum(s.defect for s in test.samples) == 2

    # The threshold maximises the pooled pixel F1 on the validation fold (not on the images localised).
    loaded = load_model(patch_run)
    val = defect_fold(DefectData(str(mini_dagm)), SplitSpec("val", **FOLD))
    val_heat = [_heat(loaded, s.path, PATCH, 64) for s in val.samples]
    val_masks = [val.mask(i) for i in range(len(val))]
    best = L.choose_threshold_f1(val_heat, val_masks)
    chosen = report["threshold"]
    assert chosen["source"] == "validation" and chosen["n_images"] == len(val)
    assert chosen["value"] == pytest.approx(best["value"]) and chosen["f1"] == pytest.approx(best["f1"])

    # By hand: pooled pixel counts at the chosen threshold give that F1, and no candidate gives more.
    def pooled_f1(t):
        tp = sum(int(((h >= t) & m).sum()) for h, m in zip(val_heat, val_masks, strict=True))
        fp = sum(int(((h >= t) & ~m).sum()) for h, m in zip(val_heat, val_masks, strict=True))
        fn = sum(int((~(h >= t) & m).sum()) for h, m in zip(val_heat, val_masks, strict=True))
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    assert pooled_f1(best["value"]) == pytest.approx(best["f1"])
    assert all(pooled_f1(t) <= best["f1"] + 1e-12 for t in L.DEFAULT_THRESHOLDS[::7])
    value = best["value"]

    preds, masks, heats = [], [], []
    for i, row in enumerate(report["images"]):
        heat = np.load(out / row["heatmap"])
        assert heat.shape == (512, 512) and heat.dtype == np.float32
        assert 0.0 <= heat.min() and heat.max() <= 1.0
        if i == 0:  # the saved heatmap is the model's
            np.testing.assert_allclose(heat, _heat(loaded, Path(row["image"]), PATCH, 64), atol=1e-6)
        predicted = _png(out / row["mask"]) > 0
        np.testing.assert_array_equal(predicted, heat >= value)
        overlay = _png(out / row["overlay"])
        assert overlay.shape == (512, 512, 3) and overlay.dtype == np.uint8
        truth = test.mask(i)
        assert row["defect"] == bool(truth.any())
        # Defective images show the true outline in lime; the predicted outline appears where pixels are marked.
        assert bool(np.all(overlay == TRUE_COLOUR, axis=2).any()) == bool(truth.any())
        if predicted.any() and not truth.any():
            assert np.all(overlay == PREDICTED_COLOUR, axis=2).any()
        assert row["score"] == pytest.approx(float(heat.max()))
        assert row["iou"] == pytest.approx(metrics.iou(predicted, truth))
        preds.append(predicted)
        masks.append(truth)
        heats.append(heat)

    expected = metrics.localization_report(preds, masks)
    # Pixel-level AP/AUROC over every pixel of the 4 images, threshold-free; binned at 0.001 in the report.
    pixel_scores = np.concatenate([h.ravel() for h in heats]).astype(np.float64)
    pixel_labels = np.concatenate([m.ravel() for m in masks]).astype(int)
    exact = {
        "pixel_ap": metrics.average_precision(pixel_scores, pixel_labels),
        "pixel_auroc": metrics.auroc(pixel_scores, pixel_labels),
        "n_pixels": pixel_labels.size,
        "n_defect_pixels": int(pixel_labels.sum()),
    }
    for key, value in exact.items():
        assert report["metrics"].pop(key) == pytest.approx(value, abs=0.01)
    for key, value in report["metrics"].items():
        if expected[key] != expected[key]:  # NaN is stored as null
            assert value is None
        else:
            assert value == pytest.approx(expected[key])
    for key in ("precision", "recall", "f1", "iou", "mean_iou", "ar", "detection_rate"):
        value = report["metrics"][key]
        assert value is None or 0.0 <= value <= 1.0
    assert report["metrics"]["n_defects"] == 2
    # The terminal table.
    assert f"threshold {chosen['value']:.3g} (chosen on {len(val)} validation images" in terminal
    header = next(line for line in terminal.splitlines() if "precision" in line)
    assert header.split() == ["n_images", "n_defective_images", "threshold", "precision", "recall", "f1", "iou",
                              "mean_iou", "mean_iou_defective", "ar", "detected", "pixel_ap",
                              "pixel_auroc"]  # fmt: skip


def test_loop_gives_the_batched_numbers_and_dense_its_own_threshold(batched, tmp_path, capsys):
    reference, _ = batched
    first = json.loads((reference / "localize.json").read_text())
    loop_out = tmp_path / "loop"
    argv = ["localize", "--model", first["model"], "--out", str(loop_out), "--stride", "64", "--mode", "loop",
            "--limit", "1", "--threshold-from", str(reference), "--device", "cpu"]  # fmt: skip
    assert run_app(app, argv) == 0, capsys.readouterr().err
    loop = json.loads((loop_out / "localize.json").read_text())
    assert loop["threshold"]["source"] == "file" and loop["threshold"]["value"] == first["threshold"]["value"]
    by_image = {a["image"]: a for a in first["images"]}
    for b in loop["images"]:  # --limit 1: one image, drawn across the groups
        a = by_image[b["image"]]
        np.testing.assert_allclose(
            np.load(loop_out / b["heatmap"]), np.load(reference / a["heatmap"]), atol=1e-5
        )
        assert b["score"] == pytest.approx(a["score"], abs=1e-5) and b["iou"] == pytest.approx(a["iou"])
        assert b["defect_pixels"] == a["defect_pixels"]

    # A dense heatmap differs from the patch loop, so a threshold chosen for the loop is refused ...
    dense_out = tmp_path / "dense"
    argv = ["localize", "--model", first["model"], "--out", str(dense_out), "--stride", "64", "--mode", "dense",
            "--limit", "1", "--device", "cpu"]  # fmt: skip
    assert run_app(app, [*argv, "--threshold-from", str(reference / "localize.json")]) == 2
    err = capsys.readouterr().err
    assert "heat_kind 'patch' (now 'dense')" in err and not dense_out.exists()
    # ... and a given one is used; the saved map is the fully convolutional one, at image resolution.
    assert run_app(app, [*argv, "--threshold", "0.5"]) == 0
    dense = json.loads((dense_out / "localize.json").read_text())
    assert dense["parameters"]["heat_kind"] == "dense" and dense["threshold"]["source"] == "given"
    heat = np.load(dense_out / dense["images"][0]["heatmap"])
    loaded = load_model(first["model"])
    image = loaded.normalize(pil_to_tensor(Image.open(dense["images"][0]["image"]).convert("RGB"))[None])
    np.testing.assert_allclose(heat, L.heatmap_dense(loaded.model, image, PATCH, 64)[0].numpy(), atol=1e-6)
    assert not np.allclose(heat, np.load(reference / first["images"][0]["heatmap"]), atol=1e-3)


def test_unlabelled_files_of_any_shape(patch_run, dagm_class1_test, tmp_path, capsys):
    """Non-square crops, given by a glob: the heatmap has each image's own (H, W), no metrics are claimed."""
    folder = tmp_path / "crops"
    folder.mkdir()
    source = np.asarray(Image.open(dagm_class1_test / "0002.PNG"))
    Image.fromarray(source[:300, :200]).save(folder / "tall.png")
    Image.fromarray(source[100:228, :384]).save(folder / "wide.png")
    out = tmp_path / "out"
    argv = ["localize", "--model", str(patch_run), "--images", str(folder / "*.png"), "--out", str(out),
            "--threshold", "0.5", "--device", "cpu"]  # fmt: skip
    assert run_app(app, argv) == 0
    terminal = capsys.readouterr().out
    report = json.loads((out / "localize.json").read_text())
    assert report["metrics"] is None and "highest scores" in terminal
    assert report["parameters"]["stride"] == PATCH // 2  # default: half the patch
    loaded = load_model(patch_run)
    for row, shape in zip(report["images"], [(300, 200), (128, 384)], strict=True):
        assert row["defect"] is None and "iou" not in row
        heat = np.load(out / row["heatmap"])
        assert heat.shape == shape
        np.testing.assert_allclose(heat, _heat(loaded, Path(row["image"]), PATCH, PATCH // 2), atol=1e-6)
        assert _png(out / row["overlay"]).shape == (*shape, 3)
        assert _png(out / row["mask"]).shape == shape


def test_the_function_takes_a_dataset_and_a_file_list(patch_run, mini_dagm, tmp_path):
    """What `dataonomy demo` calls: a DAGM fold (labelled) or a list of files (unlabelled)."""
    fold = defect_fold(DefectData(str(mini_dagm)), SplitSpec("val", **FOLD))
    config = LocalizeConfig(model=str(patch_run), stride=64, threshold=0.5)
    report = localize_images(config, tmp_path / "a", images=fold, progress=False)
    assert report["metrics"]["n_images"] == len(fold) and report["input"]["source"] == "dataset"
    files = [s.path for s in fold.samples]
    report = localize_images(replace(config, limit=1), tmp_path / "b", images=files)
    assert report["metrics"] is None and len(report["images"]) == 1
    assert report["images"][0]["image"] in {str(f) for f in files}
    assert Path(report["files"]["report"]).is_file()


def test_bad_inputs_are_one_line_errors_with_no_output(patch_run, mini_dagm, tmp_path, capsys):
    out = tmp_path / "out"

    def error(*argv) -> str:
        code = run_app(app, ["localize", *argv, "--device", "cpu"])
        captured = capsys.readouterr()
        assert code == 2, captured.out
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
        assert not out.exists()
        return captured.err

    run = ["--model", str(patch_run), "--out", str(out)]
    assert "no such run folder" in error("--model", str(tmp_path / "missing"), "--out", str(out))
    assert "no best.pt" in error("--model", str(tmp_path), "--out", str(out))
    assert "no files match" in error(*run, "--images", str(tmp_path / "nothing" / "*.png"))
    junk = tmp_path / "junk"
    junk.mkdir()
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(junk / "a.png")
    (junk / "b.png").write_bytes(b"not a png at all")
    assert "b.png: not an image file" in error(*run, "--images", str(junk / "*"))
    (junk / "b.png").unlink()
    (junk / "notes.txt").write_text("hello")
    assert "notes.txt: not an image file" in error(*run, "--images", str(junk / "*"))
    assert "--patch-size 96: larger than image" in error(
        *run, "--images", str(junk / "a.png"), "--patch", "96"
    )
    assert "give one of them" in error(*run, "--images", str(junk / "a.png"), "--dagm", str(mini_dagm))
    assert "--stride 80" in error(*run, "--stride", "80")
    assert "--mode 'fast'" in error(*run, "--mode", "fast")
    image_run = _save_run(tmp_path / "image_run", mini_dagm, patches=False)
    assert "fine-tuned on whole images" in error("--model", str(image_run), "--out", str(out))
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code = run_app(app, ["localize", *run, "--threshold", "0.5", "--limit", "1", "--device", "cpu"])
    assert code == 2 and "pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
