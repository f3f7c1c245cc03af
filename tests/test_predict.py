"""`transfer predict` on real DAGM Class1 images: a table of decisions and defects through PyTorch and through the
exported ONNX file, the same decisions from the same raw pixels, and the counts that `evaluate` gives at the
stored threshold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataonomy.cli_utils import run_app
from dataonomy.datasets import SplitSpec
from transfer.checkpoint import load_model
from transfer.cli import app
from transfer.data import DefectData, defect_fold
from transfer.evaluate import image_scores
from transfer.predict import COLUMNS

N_IMAGES = 100


@pytest.fixture(scope="module")
def exported(tmp_path_factory, dagm_class1_test):
    """A segdec run fine-tuned on fold 1 of real Class1, its ONNX export, and a folder of 100 of its test
    images (symlinks, every defective one of the test fold among them)."""
    root = tmp_path_factory.mktemp("predict")
    run = root / "run"
    code = run_app(
        app,
        [
            "finetune", "--base", "scratch", "--arch", "small_cnn", "--output-stride", "8", "--head-channels", "8",
            "--dagm", str(dagm_class1_test), "--folds", "3", "--fold", "1", "--epochs", "3",
            "--steps-per-epoch", "8", "--batch-size", "4", "--crop-size", "96", "--out", str(run),
            "--device", "cpu",
        ],
    )  # fmt: skip
    assert code == 0
    onnx = root / "m.onnx"
    assert run_app(app, ["export", "--model", str(run), "--onnx", str(onnx), "--images", "2"]) == 0
    test = defect_fold(DefectData(str(dagm_class1_test)), SplitSpec("test", folds=3, fold=1))
    defective = [s for s in test.samples if s.defect]
    clean = [s for s in test.samples if not s.defect]
    chosen = defective + clean[: N_IMAGES - len(defective)]
    images = root / "images"
    images.mkdir()
    for s in chosen:
        (images / Path(s.path).name).symlink_to(s.path)
    return run, onnx, images, test


def read_table(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def predict(tmp_path, capsys, name: str, *args: str) -> tuple[int, Path]:
    out = tmp_path / name
    code = run_app(app, ["predict", *args, "--out", str(out), "--device", "cpu"])
    return code, out


def test_pytorch_and_onnx_give_the_same_decisions_as_evaluate(exported, tmp_path, capsys):
    run, onnx, images, test = exported
    code, torch_out = predict(tmp_path, capsys, "torch", "--model", str(run), "--images", str(images))
    assert code == 0, capsys.readouterr().err
    code, onnx_out = predict(tmp_path, capsys, "onnx", "--onnx", str(onnx), "--images", str(images))
    assert code == 0, capsys.readouterr().err
    by_torch = {Path(r["file"]).name: r for r in read_table(torch_out / "predictions.csv")}
    by_onnx = {Path(r["file"]).name: r for r in read_table(onnx_out / "predictions.csv")}
    assert list(read_table(torch_out / "predictions.csv")[0]) == list(COLUMNS)
    assert len(by_torch) == len(by_onnx) == N_IMAGES and by_torch.keys() == by_onnx.keys()

    # The ONNX file carries both thresholds: the run's decision threshold and the pixel threshold chosen on the
    # same validation fold that predict --model chooses it on.
    reports = [json.loads((d / "predict.json").read_text()) for d in (torch_out, onnx_out)]
    loaded = load_model(run)
    assert reports[0]["decision_threshold"]["value"] == reports[1]["decision_threshold"]["value"]
    assert reports[0]["decision_threshold"]["value"] == pytest.approx(loaded.threshold)
    assert reports[1]["pixel_threshold"]["source"] == "onnx metadata"
    assert reports[0]["pixel_threshold"]["value"] == pytest.approx(reports[1]["pixel_threshold"]["value"])
    assert reports[0]["runtime"] == "pytorch" and reports[1]["runtime"] == "onnxruntime"

    # Raw pixels in: the same decisions, scores within the export tolerance.
    for name, row in by_torch.items():
        other = by_onnx[name]
        assert row["decision"] == other["decision"], name
        assert float(row["score"]) == pytest.approx(float(other["score"]), abs=1e-4)
        assert abs(int(row["defect_pixels"]) - int(other["defect_pixels"])) <= 0.001 * 512 * 512

    # The counts match evaluate's at the stored threshold on the same images.
    scores = dict(zip((Path(s.path).name for s in test.samples), image_scores(loaded, test), strict=True))
    expected = sum(scores[name] >= loaded.threshold for name in by_torch)
    assert reports[0]["counts"]["defective"] == expected == reports[1]["counts"]["defective"]
    for name, row in by_torch.items():
        assert float(row["score"]) == pytest.approx(scores[name], abs=1e-5)
    assert reports[0]["counts"]["defective"] + reports[0]["counts"]["clean"] == N_IMAGES


def test_defects_and_masks_at_the_images_own_size(exported, tmp_path, capsys):
    run, onnx, images, _ = exported
    args = ["--onnx", str(onnx), "--images", str(images / "*.PNG"), "--write-masks", "--write-overlays"]
    code, out = predict(tmp_path, capsys, "masks", *args, "--threshold", "0.3")
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "predict.json").read_text())
    assert report["pixel_threshold"] == {"value": 0.3, "source": "given"}
    for row in report["images"][:10]:
        mask = np.asarray(Image.open(out / row["mask"]))
        assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}
        assert int((mask == 255).sum()) == row["defect_pixels"] == sum(r["area"] for r in row["regions"])
        assert row["defects"] == len(row["regions"])
        if row["regions"]:
            largest = max(row["regions"], key=lambda r: r["area"])
            assert row["largest_area"] == largest["area"] and row["largest_box"] == largest["box"]
            x0, y0, x1, y1 = largest["box"]
            assert (mask[y0 : y1 + 1, x0 : x1 + 1] == 255).any()
        assert Image.open(out / row["overlay"]).size == (512, 512)
    assert (out / "config.json").is_file()


def test_bad_models_and_inputs_are_one_line_errors(exported, tmp_path, capsys, dagm_class1_test):
    run, onnx, images, _ = exported
    not_a_model = tmp_path / "x.onnx"
    not_a_model.write_bytes(b"not a model")
    cases = [
        (["--onnx", str(not_a_model), "--images", str(images)], "not an ONNX model"),
        (["--onnx", str(onnx), "--model", str(run), "--images", str(images)], "give one of them"),
        (["--model", str(run)], "--images"),
        (["--model", str(run), "--images", str(images), "--threshold", "1.5"], "--threshold 1.5"),
        (["--onnx", str(onnx), "--images", str(tmp_path / "none")], "--images"),
    ]
    for args, message in cases:
        code, out = predict(tmp_path, capsys, "bad", *args)
        err = capsys.readouterr().err
        assert code != 0 and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_classifier_run_is_refused_in_one_line(tmp_path, dagm_class1_test, capsys):
    run = tmp_path / "cls"
    code = run_app(
        app,
        [
            "finetune", "--base", "scratch", "--arch", "small_cnn", "--head", "classify", "--image-size", "64",
            "--dagm", str(dagm_class1_test), "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4",
            "--out", str(run), "--device", "cpu",
        ],
    )  # fmt: skip
    assert code == 0
    code, _ = predict(tmp_path, capsys, "p", "--model", str(run), "--images", str(dagm_class1_test))
    err = capsys.readouterr().err
    assert code != 0 and "gives no defect map in one pass" in err and len(err.strip().splitlines()) == 1


def test_skip_bad_drops_an_unreadable_image(exported, tmp_path, capsys):
    run, onnx, images, _ = exported
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in sorted(images.iterdir())[:3]:
        (mixed / p.name).symlink_to(p.resolve())
    (mixed / "broken.png").write_bytes(b"\x89PNG broken")
    code, _ = predict(tmp_path, capsys, "strict", "--onnx", str(onnx), "--images", str(mixed))
    assert code != 0 and "broken.png" in capsys.readouterr().err
    code, out = predict(tmp_path, capsys, "skip", "--onnx", str(onnx), "--images", str(mixed), "--skip-bad")
    assert code == 0 and len(read_table(out / "predictions.csv")) == 3
