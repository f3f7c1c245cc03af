"""transfer.heads: each model kind's inference has one home. A kind registered from this file alone is loaded,
scored, localised and exported by the product's own stages, which ask the run's head instead of branching."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from dataonomy.cli_utils import run_app
from dataonomy.errors import DataonomyError
from transfer import heads
from transfer import localize as L
from transfer.checkpoint import load_model, model_record, save_model
from transfer.cli import app
from transfer.config import FinetuneConfig
from transfer.data import run_fold
from transfer.evaluate import image_scores
from transfer.heads.base import HEADS
from transfer.heads.classify import ClassifyHead
from transfer.localize_run import _settings
from transfer.models import build_model
from transfer.tasks import FinetuneTask


class CalibratedHead(ClassifyHead):
    """A fourth kind: a whole-image classifier whose defect probability is tempered (logits / 4)."""

    name = "calibrated"
    record_fields = ("temperature",)
    onnx_meaning = "logits; the defect probability is softmax(logits / temperature)[:, 1]"

    def defect_probability(self, output):
        return torch.softmax(output.float() / 4.0, dim=1)[:, 1]

    def make_task(self, config):
        return CalibratedTask(config, self)


class CalibratedTask(FinetuneTask):
    """The classifier's training task; the saved model records the kind's own field."""

    def model_meta(self) -> dict:
        return {**super().model_meta(), "temperature": 4.0}


@pytest.fixture()
def calibrated_run(tmp_path, dagm_class1_test, monkeypatch):
    monkeypatch.setattr(HEADS, "items", dict(HEADS.items))
    heads.register_head(CalibratedHead())
    config = FinetuneConfig(
        base="scratch", arch="small_cnn", data=str(dagm_class1_test), test_fraction=0.2, head="classify",
        image_size=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, "scratch")
    meta = {"classes": ["ok", "defect"], "threshold": 0.5, "head": "calibrated", "temperature": 4.0}
    run = tmp_path / "run"
    record = model_record(config, model, meta)
    record["temperature"] = 4.0  # a field of the new kind's own
    save_model(record, run / "best.pt")
    return run


def test_the_kinds_and_how_saved_models_name_them():
    assert heads.list_heads() == ["classify", "patch", "probe", "segdec"]
    # Runs saved before kinds had names of their own: a patch classifier is head=classify, input=patch.
    assert heads.head_name("classify", "patch") == "patch" and heads.head_name(None, "image") == "classify"
    assert heads.head_name("segdec", "image") == "segdec"
    with pytest.raises(
        DataonomyError, match=r"unknown model kind 'unet' \(known: classify, patch, probe, segdec\)"
    ):
        heads.get_head("unet")


def test_a_registered_kind_is_loaded_scored_localised_and_exported_through_its_head(
    calibrated_run, tmp_path, capsys
):
    loaded = load_model(calibrated_run)
    assert loaded.record.head_kind.name == "calibrated"
    fold = run_fold(loaded.config, "test", None)
    scores = image_scores(loaded, fold, batch_size=16)
    # The stage scored with the new kind's rule (the tempered softmax), not the classifier's.
    x = torch.stack([loaded.transforms()(fold[i][0]) for i in range(len(fold))])
    with torch.no_grad():
        logits = loaded.model(x)
    np.testing.assert_allclose(scores, torch.softmax(logits / 4.0, dim=1)[:, 1].numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(scores, torch.softmax(logits, dim=1)[:, 1].numpy(), atol=1e-3)
    # Export: the kind's outputs, meaning and own fields travel in the file.
    path = tmp_path / "calibrated.onnx"
    assert run_app(app, ["export", "--model", str(calibrated_run), "--onnx", str(path), "--images", "4"]) == 0
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert meta["transfer.head"] == "calibrated" and meta["transfer.temperature"] == 4.0
    assert meta["transfer.output"].startswith(
        "logits; the defect probability is softmax(logits / temperature)"
    )
    # Localisation: the kind's modes (a classifier's) are offered, and its heatmaps come out.
    out = tmp_path / "loc"
    code = run_app(
        app,
        [
            "localize",
            "--model",
            str(calibrated_run),
            "--out",
            str(out),
            "--patch-size",
            "32",
            "--limit",
            "2",
            "--val-limit",
            "4",
        ],
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "localize.json").read_text())["parameters"]["mode"] == "batched"
    heat = np.load(next((out / "heatmaps").glob("*.npy")))
    # ... made with the kind's own rule: a tempered softmax stays near 0.5 where the classifier's would not.
    settings = _settings(loaded, 32, None, None, None, "cpu")
    assert settings.probability == loaded.record.head_kind.defect_probability
    image = torch.rand(1, 3, 64, 64)
    tempered = L.heatmap_batched(loaded.model, image, 32, 16, probability=settings.probability)
    plain = L.heatmap_batched(loaded.model, image, 32, 16)
    assert not torch.allclose(tempered, plain) and heat.dtype == np.float32


def test_a_kind_registered_here_fine_tunes_evaluates_localises_and_exports(tmp_path, monkeypatch, capsys):
    """finetune -> evaluate -> localize -> export of a kind no file under transfer/ names, on synthetic data."""
    from dataonomy.datasets.synthetic import Rendering, make_synthetic_dagm

    monkeypatch.setattr(HEADS, "items", dict(HEADS.items))
    heads.register_head(CalibratedHead())
    data = make_synthetic_dagm(
        tmp_path / "dagm", classes=1, images_per_split=24, rendering=Rendering(size=64)
    )
    run = tmp_path / "run"
    finetune = [
        *"finetune --base scratch --arch small_cnn --head calibrated --epochs 1 --steps-per-epoch 2".split(),
        *"--batch-size 8 --image-size 64 --device cpu --no-amp --format dagm".split(),
        *["--data", str(data), "--out", str(run)],
    ]
    assert run_app(app, finetune) == 0, capsys.readouterr().err
    loaded = load_model(run)
    assert loaded.record.head_kind.name == "calibrated" and loaded.record.head_fields == {"temperature": 4.0}
    # Validation scored with the kind's rule: the stored threshold is a tempered probability, near 0.5.
    assert abs(loaded.record.threshold - 0.5) < 0.25
    assert run_app(app, ["evaluate", "--model", str(run), "--split", "val", "--no-errors"]) == 0
    report = json.loads((run / "eval_val.json").read_text())
    assert report["stored_threshold"]["threshold"] == pytest.approx(loaded.record.threshold)
    loc = [
        "localize",
        "--model",
        str(run),
        "--out",
        str(tmp_path / "loc"),
        "--patch-size",
        "32",
        "--limit",
        "2",
    ]
    assert run_app(app, loc) == 0, capsys.readouterr().err
    path = tmp_path / "calibrated.onnx"
    assert run_app(app, ["export", "--model", str(run), "--onnx", str(path), "--images", "4"]) == 0
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert meta["transfer.head"] == "calibrated" and meta["transfer.temperature"] == 4.0
    # The kind's own options are those of the classifier it extends: a segdec option is refused, naming owners.
    assert run_app(app, [*finetune[:-2], "--out", str(tmp_path / "r2"), "--crop-size", "32"]) == 2
    assert "--crop-size: only for --head segdec" in capsys.readouterr().err


def test_a_saved_model_missing_its_kinds_fields_is_refused(calibrated_run):
    obj = torch.load(calibrated_run / "best.pt", map_location="cpu", weights_only=True)
    del obj["temperature"]
    torch.save(obj, calibrated_run / "best.pt")
    with pytest.raises(DataonomyError, match="the saved model lacks temperature"):
        load_model(calibrated_run)
