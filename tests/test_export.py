"""ONNX export with the parity check against PyTorch, on real DAGM (and Tiny ImageNet) images."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from dataonomy.cli_utils import run_app
from dataonomy.errors import DataonomyError
from transfer import export
from transfer.checkpoint import load_model, model_record, save_model
from transfer.cli import app
from transfer.config import FinetuneConfig
from transfer.models import build_model


def make_run(tmp_path, dagm_class1_test, arch: str, init: str = "scratch", **config_options):
    """A fine-tuning run folder holding an (untrained) model, as `transfer finetune` writes it."""
    config = FinetuneConfig(
        base=init, arch=arch, data=str(dagm_class1_test), test_fraction=0.2, head="classify", **config_options
    )
    torch.manual_seed(0)
    model = build_model(arch, 2, init)
    meta = {"classes": ["ok", "defect"], "threshold": 0.4, "threshold_criterion": "balanced_accuracy"}
    if config.patch.patches:
        meta.update(input="patch", patch_size=config.patch.patch_size, patch_stride=config.patch.patch_stride)
    run = tmp_path / arch
    save_model(model_record(config, model, meta), run / "best.pt")
    return run


def test_export_cli_small_cnn_parity_on_real_dagm_images(tmp_path, dagm_class1_test, capsys):
    run = make_run(tmp_path, dagm_class1_test, "small_cnn", image_size=64)
    path = tmp_path / "model.onnx"
    assert run_app(app, ["export", "--model", str(run), "--onnx", str(path), "--images", "6"]) == 0
    out = capsys.readouterr().out
    assert "parity on 6 real images: max |logit difference|" in out and f"wrote {path}" in out
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["transfer.threshold"] == 0.4 and meta["transfer.input_size"] == 64
    assert meta["transfer.mean"] == pytest.approx(
        list(FinetuneConfig(base="scratch", arch="small_cnn", data="x").mean)
    )
    # The file answers like the model on real images, for any batch size (the batch axis is dynamic).
    loaded = load_model(run)
    images = export.parity_images(loaded, n=6)
    assert images.shape == (6, 3, 64, 64)
    with torch.no_grad():
        reference = loaded.model(images).numpy()
    for batch in (images[:1], images):
        np.testing.assert_allclose(
            export.onnx_logits(path, batch)[0], reference[: len(batch)], rtol=1e-4, atol=1e-5
        )


def test_parity_failure_writes_nothing(tmp_path, dagm_class1_test, monkeypatch, capsys):
    run = make_run(tmp_path, dagm_class1_test, "small_cnn", image_size=64)
    real_export = export.export_onnx

    def export_another_model(model, path, input_size, opset=export.DEFAULT_OPSET, **kwargs):
        other = build_model("small_cnn", 2)  # different weights: the check must catch it
        return real_export(other, path, input_size, opset, **kwargs)

    monkeypatch.setattr(export, "export_onnx", export_another_model)
    path = tmp_path / "model.onnx"
    assert run_app(app, ["export", "--model", str(run), "--onnx", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: --tolerance 0.0001: ONNX and PyTorch logits differ by up to")
        and err.count("\n") == 1
    )
    assert not path.exists() and not list(tmp_path.glob("*.partial"))


def test_efficientnet_lite0_imagenet_weights_export(tmp_path, dagm_class1_test):
    """A real architecture with real (ImageNet) weights, at its own input size, on real DAGM images."""
    run = make_run(tmp_path, dagm_class1_test, "efficientnet_lite0", init="imagenet")
    result = export.export_run(run, tmp_path / "lite0.onnx", n_images=4)
    assert result["images"] == 4 and result["max_abs_logit_diff"] <= 1e-4 * result["logit_scale"]
    assert (tmp_path / "lite0.onnx").stat().st_size > 10_000_000  # the weights are in the file


def test_patch_model_exports_at_patch_size_with_defective_patches(tmp_path, dagm_class1_test):
    run = make_run(tmp_path, dagm_class1_test, "small_cnn", patches=True, patch_size=48, patch_stride=96)
    loaded = load_model(run)
    images = export.parity_images(loaded, n=4)
    assert images.shape == (4, 3, 48, 48)
    result = export.export_run(run, tmp_path / "patch.onnx", n_images=4)
    assert result["max_abs_logit_diff"] <= 1e-4 * result["logit_scale"]


def test_export_bad_inputs(tmp_path, dagm_class1_test):
    run = make_run(tmp_path, dagm_class1_test, "small_cnn", image_size=32)
    with pytest.raises(DataonomyError, match="--images 0"):
        export.export_run(run, tmp_path / "x.onnx", n_images=0)
    with pytest.raises(DataonomyError, match="checkpoint not found"):
        export.export_run(tmp_path / "nothing", tmp_path / "x.onnx")
