"""The segmentation-decision model: its contract, its losses and data, and that it learns real DAGM defects."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dataonomy.cli_utils import run_app
from dataonomy.datasets import SplitSpec
from dataonomy.errors import DataonomyError
from transfer import metrics as M
from transfer.checkpoint import load_model
from transfer.cli import app
from transfer.data import DefectData, defect_fold
from transfer.heads.segdec import segdec_scores
from transfer.segdec import SegDecNet, build_segdec, cut_trunk, upsample_map
from transfer.segdec_task import MaskedImages, distance_weights, pixel_loss, segdec_loss

EFFNET_MEAN, EFFNET_STD = (127 / 255,) * 3, (128 / 255,) * 3


# --- the model ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "stride", "channels"),
    [
        ("small_cnn", 8, 128),
        ("efficientnet_lite0", 8, 40),
        ("efficientnet_lite0", 16, 112),
        ("resnet18", 16, 256),
    ],
)
def test_one_pass_gives_image_score_and_map_at_the_output_stride(arch, stride, channels):
    torch.manual_seed(0)
    model = build_segdec(arch, "scratch", stride, head_channels=16).eval()
    assert model.seg_features[0].in_channels == channels
    x = torch.randn(2, 3, 128, 96)
    out = model(x)
    assert out.image_logit.shape == (2,)
    assert out.seg_logits.shape == (2, 1, 128 // stride, 96 // stride)
    scores, maps = segdec_scores(model, x)
    assert scores.shape == (2,) and maps.shape == (2, 128, 96)
    assert torch.allclose(scores, torch.sigmoid(out.image_logit))
    assert 0 <= maps.min() and maps.max() <= 1


@pytest.mark.parametrize(
    ("arch", "output_stride", "map_stride", "tap_strides"),
    [("efficientnet_lite0", 16, 4, [4, 8]), ("efficientnet_lite0", 16, 8, [8]), ("small_cnn", 8, 4, [4])],
)
def test_a_decoder_gives_a_finer_map_from_the_trunk_s_finer_features(
    arch, output_stride, map_stride, tap_strides
):
    """``map_stride`` below the output stride: the map comes out at 1/map_stride of the image, built from the
    trunk's last stage at each finer stride (the skip connections), and the pixel loss trains those taps."""
    from transfer.segdec import stage_strides

    torch.manual_seed(0)
    model = build_segdec(arch, "scratch", output_stride, head_channels=16, map_stride=map_stride)
    strides = stage_strides(list(model.trunk.named_children()))
    assert [strides[i] for i in model.decoder.taps] == tap_strides
    assert all(strides[i + 1] > strides[i] for i in model.decoder.taps)  # the last stage at its stride
    x = torch.randn(2, 3, 128, 96)
    out = model(x)
    assert out.seg_logits.shape == (2, 1, 128 // map_stride, 96 // map_stride) and out.image_logit.shape == (
        2,
    )
    mask = torch.zeros(2, 1, 128, 96)
    mask[:, :, 40:60, 30:50] = 1.0
    pixel_loss(out.seg_logits, mask, torch.ones_like(mask)).backward()
    assert all(conv.weight.grad.abs().sum() > 0 for conv in model.decoder.lateral)
    # Odd sizes: the map has the finest tapped stage's own grid (no size assumed divisible by the output stride).
    model.eval()
    odd = torch.randn(1, 3, 100, 70)
    with torch.no_grad():
        finest = model.trunk[: model.decoder.taps[0] + 1](odd)
        assert model(odd).seg_logits.shape[-2:] == finest.shape[-2:]
    # The map at the output stride is the model without a decoder.
    assert build_segdec(arch, "scratch", output_stride, map_stride=output_stride).decoder is None
    with pytest.raises(
        DataonomyError,
        match=f"--map-stride 32: must be one of 4, 8, 16, 32 and at most --output-stride \\({output_stride}\\)",
    ):
        build_segdec(arch, "scratch", output_stride, map_stride=32)


def test_the_cut_trunk_is_the_start_of_the_full_trunk():
    torch.manual_seed(0)
    from transfer.models import get_model

    full = get_model("resnet18", 2).eval()
    trunk, channels = cut_trunk(full, 8)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = full.features[:6](x)  # conv1 .. layer2: stride 8, 128 channels
        np.testing.assert_allclose(trunk(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert channels == 128
    with pytest.raises(DataonomyError, match="--output-stride 16: this trunk's stages have strides"):
        cut_trunk(get_model("small_cnn", 2), 16)
    with pytest.raises(DataonomyError, match="must be one of"):
        cut_trunk(full, 12)


def test_pretrained_trunks_keep_their_batchnorm_statistics_in_training():
    model = build_segdec("resnet18", "scratch", 8, frozen_bn=True).train()
    bn = model.trunk.bn1
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64) * 5 + 3)
    assert not bn.training and not bn.weight.requires_grad
    assert torch.equal(bn.running_mean, before)
    assert model.seg_features.training  # the heads do train
    scratch = build_segdec("resnet18", "scratch", 8).train()  # from scratch: batch statistics
    assert not scratch.frozen_bn and scratch.trunk.bn1.training


def test_decision_head_pools_features_and_map_and_is_detached_from_the_trunk():
    torch.manual_seed(0)
    model = build_segdec("small_cnn", "scratch", 8, head_channels=8)
    assert isinstance(model, SegDecNet) and model.decision.in_features == 2 * 8 + 2
    out = model(torch.randn(2, 3, 32, 32))
    out.image_logit.sum().backward()
    assert all(
        p.grad is None for p in model.trunk.parameters()
    )  # the image loss trains the decision layer only
    assert model.decision.weight.grad is not None


def test_upsampled_map_lines_up_with_the_image():
    logits = torch.full((1, 1, 4, 4), -10.0)
    logits[0, 0, 1, 2] = 10.0  # cell (row 1, col 2) of a stride-8 map covers pixels y 8..15, x 16..23
    heat = upsample_map(logits, (32, 32))[0]
    y, x = np.unravel_index(int(heat.argmax()), heat.shape)
    assert 8 <= y <= 15 and 16 <= x <= 23


# --- losses and data ---------------------------------------------------------------------------------------------


def test_distance_weights_are_one_at_the_centre_and_fade_to_the_border():
    mask = np.zeros((41, 41), dtype=bool)
    yy, xx = np.mgrid[:41, :41]
    mask[(yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2] = True
    mask[2:5, 2:5] = True  # a second, small defect gets its own scale
    w = distance_weights(mask)
    assert w[20, 20] == pytest.approx(1.0) and w[3, 3] == pytest.approx(1.0)
    assert w[20, 35] < 0.01 and (w[~mask] == 0).all()
    assert w[20, 28] < w[20, 24] < w[20, 20]


def test_pixel_loss_is_class_balanced():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :2, :2] = 1  # 4 of 256 pixels
    weight = mask.clone()
    perfect_clean = torch.full((1, 1, 16, 16), -8.0)  # calls every pixel clean
    loss = pixel_loss(perfect_clean, mask, weight)
    # The missed defect pixels count half, however few they are.
    bce_missed = torch.nn.functional.softplus(torch.tensor(8.0))
    assert loss.item() == pytest.approx(
        0.5 * bce_missed.item() + 0.5 * torch.nn.functional.softplus(torch.tensor(-8.0)).item(), rel=1e-4
    )
    clean_batch = pixel_loss(perfect_clean, torch.zeros_like(mask), torch.zeros_like(mask))
    assert clean_batch.item() < 1e-3
    # The full loss: pixel + image, each weighted.
    out = type("Out", (), {"image_logit": torch.tensor([3.0]), "seg_logits": perfect_clean})()
    targets = {"label": torch.tensor([1.0]), "mask": mask, "weight": weight}
    total = segdec_loss(out, targets, torch.tensor([0.5, 2.0]), seg_loss_weight=1.0, image_loss_weight=0.0)
    assert total.item() == pytest.approx(loss.item(), rel=1e-5)


def test_augmentation_moves_image_and_mask_together(tmp_path):
    """Images whose bright pixels are exactly the mask: after crops, flips, rotations, jitter and noise, the
    mask still marks the bright pixels."""
    from types import SimpleNamespace

    from PIL import Image

    rng = np.random.default_rng(0)
    samples, masks = [], []
    for i in range(3):
        mask = np.zeros((160, 200), dtype=bool)
        top, left = rng.integers(0, 100), rng.integers(0, 120)
        mask[top : top + 30, left : left + 70] = True
        mask[top : top + 50, left : left + 10] = True  # an L: not symmetric under flips or rotations
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.where(mask, 200, 40).astype(np.uint8)).save(path)
        samples.append(SimpleNamespace(path=path, defect=True))
        masks.append(mask)
    fold = SimpleNamespace(samples=samples, mask=lambda i: masks[i])
    data = MaskedImages(fold, (0.0,) * 3, (1.0,) * 3, augment=True, crop_size=96, seed=3)
    for epoch in range(3):
        data.set_epoch(epoch)
        for i in range(3):
            x, target = data[i]
            assert x.shape == (3, 96, 96) and target["mask"].shape == (1, 96, 96)
            assert target["label"] == 1 and target["mask"].sum() > 0  # a defective image's crop holds defect
            bright = x[0] > x[0].mean() if target["mask"].mean() < 1 else torch.ones(96, 96, dtype=torch.bool)
            assert (bright == target["mask"][0].bool()).float().mean() > 0.99
    # Without a crop, whole images at their own size; the same epoch and index give the same sample.
    whole = MaskedImages(fold, (0.0,) * 3, (1.0,) * 3, augment=True, seed=3)
    assert whole[0][0].shape == (3, 160, 200) or whole[0][0].shape == (3, 200, 160)
    assert torch.equal(data[1][0], data[1][0])


# --- it learns real defects --------------------------------------------------------------------------------------


def test_segdec_learns_real_dagm_defects_in_under_a_minute(dagm_class1_test):
    """ImageNet EfficientNet-Lite0 cut at stride 16, 128-px crops of real Class1 images around defects and from
    clean images: a few epochs rank held-out defective crops above clean ones, by the decision score and by
    the defect map's pixels."""
    torch.manual_seed(0)
    common = {"folds": 3, "seed": 0}
    train_fold, test_fold = (
        defect_fold(DefectData(str(dagm_class1_test)), SplitSpec("trainval", **common)),
        defect_fold(DefectData(str(dagm_class1_test)), SplitSpec("test", **common)),
    )

    def balanced(fold, n):
        defective = [i for i, s in enumerate(fold.samples) if s.defect][:n]
        clean = [i for i, s in enumerate(fold.samples) if not s.defect][:n]
        return defective + clean

    train = MaskedImages(train_fold, EFFNET_MEAN, EFFNET_STD, augment=True, crop_size=128, seed=0)
    held_out = MaskedImages(test_fold, EFFNET_MEAN, EFFNET_STD, crop_size=128, seed=1)
    train_idx, test_idx = balanced(train_fold, 24), balanced(test_fold, 16)
    model = build_segdec("efficientnet_lite0", "imagenet", 16, head_channels=32)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    class_weights = torch.tensor([1.0, 1.0])
    generator = torch.Generator().manual_seed(0)
    for epoch in range(6):
        train.set_epoch(epoch)
        model.train()
        order = [train_idx[i] for i in torch.randperm(len(train_idx), generator=generator)]
        for begin in range(0, len(order), 8):
            batch = [train[i] for i in order[begin : begin + 8]]
            x = torch.stack([b[0] for b in batch])
            targets = {k: torch.stack([b[1][k] for b in batch]) for k in ("label", "mask", "weight")}
            loss = segdec_loss(model(x), targets, class_weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    batch = [held_out[i] for i in test_idx]
    x = torch.stack([b[0] for b in batch])
    labels = np.array([int(b[1]["label"]) for b in batch])
    scores, maps = segdec_scores(model, x)
    masks = torch.stack([b[1]["mask"][0] for b in batch]).numpy().ravel()
    assert labels.sum() == 16
    image_auroc, pixel_auroc = M.auroc(scores.numpy(), labels), M.auroc(maps.numpy().ravel(), masks)
    print(f"held-out crops: image AUROC {image_auroc:.3f}, pixel AUROC {pixel_auroc:.3f}")
    assert image_auroc >= 0.9
    # A stride-16 map is 8x8 cells on a 128-px crop and the ellipse labels are loose: a coarse but real ranking.
    assert pixel_auroc >= 0.8


# --- through the commands ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segdec_run(tmp_path_factory, dagm_class1_test):
    root = tmp_path_factory.mktemp("segdec")
    code = run_app(
        app,
        [
            "finetune", "--base", "scratch", "--arch", "small_cnn", "--output-stride", "8", "--head-channels", "8",
            "--dagm", str(dagm_class1_test), "--folds", "3", "--fold", "1", "--epochs", "2",
            "--steps-per-epoch", "2", "--batch-size", "4", "--crop-size", "64", "--out", str(root / "run"),
            "--device", "cpu",
        ],
    )  # fmt: skip
    assert code == 0
    return root / "run"


def test_segdec_is_the_default_head_at_native_resolution(segdec_run, dagm_class1_test):
    config = json.loads((segdec_run / "config.json").read_text())
    assert config["head"] == "segdec" and config["image_size"] is None and config["crop_size"] == 64
    loaded = load_model(segdec_run)
    assert isinstance(loaded.model, SegDecNet) and loaded.record.output_stride == 8
    # The stored decision threshold is the best balanced accuracy on the validation images' decision scores.
    from transfer.evaluate import image_scores

    val = defect_fold(DefectData(str(dagm_class1_test)), SplitSpec("val", folds=3, fold=1))
    val_scores = image_scores(loaded, val)
    assert loaded.threshold == pytest.approx(
        M.best_threshold(val_scores, val.targets, "balanced_accuracy"), abs=1e-6
    )
    # Whole 512-px images are scored as they are, one pass each.
    x = loaded.normalize(torch.from_numpy(np.array(val[0][0])).permute(2, 0, 1)[None])
    score, heat = segdec_scores(loaded.model, x)
    assert heat.shape == (1, 512, 512) and float(score[0]) == pytest.approx(val_scores[0], abs=1e-5)


def test_evaluate_reports_errors_side_by_side(segdec_run, capsys):
    code = run_app(app, ["evaluate", "--model", str(segdec_run), "--device", "cpu", "--human-error", "0.02"])
    out = capsys.readouterr().out
    assert code == 0 and "train_error" in out and "avoidable_bias" in out
    report = json.loads((segdec_run / "eval_test.json").read_text())
    analysis = report["error_analysis"]
    row = report["stored_threshold"]["rows"][0]
    assert analysis["test_error"] == pytest.approx(1 - row["accuracy"])
    assert analysis["val_test_gap"] == pytest.approx(analysis["test_error"] - analysis["val_error"])
    assert analysis["train_val_gap"] == pytest.approx(analysis["val_error"] - analysis["train_error"])
    assert analysis["avoidable_bias"] == pytest.approx(analysis["train_error"] - 0.02)


def test_localize_uses_the_segmentation_map_and_boxes_each_defect(segdec_run, tmp_path, capsys):
    out = tmp_path / "loc"
    code = run_app(
        app,
        ["localize", "--model", str(segdec_run), "--out", str(out), "--limit", "10", "--val-limit", "8",
         "--tolerance", "2"],
    )  # fmt: skip
    assert code == 0
    assert "within 2 px: precision" in capsys.readouterr().out
    report = json.loads((out / "localize.json").read_text())
    metrics = report["metrics"]
    assert metrics["tolerance"] == 2 and metrics["tolerant_f1"] >= metrics["f1"] - 1e-9
    assert metrics["n_detected_tolerant"] <= metrics["n_defects"]
    # Threshold-free pixel figures over every pixel of the 10 images (one of them defective), with the counts.
    assert metrics["n_defective_images"] == 1 and metrics["n_pixels"] == 10 * 512 * 512
    assert 0 < metrics["n_defect_pixels"] < metrics["n_pixels"]
    assert 0 <= metrics["pixel_ap"] <= 1 and 0 <= metrics["pixel_auroc"] <= 1
    assert report["parameters"]["mode"] == "segmap" and report["parameters"]["patch"] is None
    assert report["threshold"]["criterion"] == "pooled pixel F1"
    for row in report["images"]:
        heat = np.load(out / row["heatmap"])
        assert heat.shape == (512, 512)
        predicted = heat >= report["threshold"]["value"]
        assert sum(d["area"] for d in row["defects"]) == int(predicted.sum()) == row["defect_pixels"]
        for d in row["defects"]:
            x0, y0, x1, y1 = d["box"]
            assert predicted[y0 : y1 + 1, x0 : x1 + 1].any()
    code = run_app(
        app, ["localize", "--model", str(segdec_run), "--out", str(tmp_path / "x"), "--mode", "dense"]
    )
    assert code == 2 and "segdec run localises with its own defect map" in capsys.readouterr().err


def test_segdec_options_are_checked(dagm_class1_test, tmp_path, capsys):
    base = [
        *"finetune --base scratch --arch small_cnn".split(),
        "--dagm",
        str(dagm_class1_test),
        "--out",
        str(tmp_path / "r"),
    ]
    for extra, message in (
        (["--head", "nope"], "--head 'nope': must be one of classify, probe, segdec"),
        (["--head", "segdec", "--patches"], "--patches: only for --head classify"),
        (["--head", "probe", "--crop-size", "64"], "--crop-size: only for --head segdec"),
        (["--output-stride", "16"], "--output-stride 16: this trunk's stages have strides"),
        (["--pixel-weighting", "edges", "--output-stride", "8"], "--pixel-weighting 'edges'"),
        (["--head", "classify", "--crop-size", "64"], "--crop-size: only for --head segdec"),
    ):
        assert run_app(app, base + extra) == 2, extra
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_crop_larger_than_the_smallest_image_is_refused_before_training(dagm_class1_test, tmp_path, capsys):
    """Images of mixed sizes (real Class1 crops): --crop-size is checked against every training image's header
    before the first step, and the message names the smallest one."""
    from PIL import Image

    ds = DefectData(str(dagm_class1_test))
    fold = defect_fold(ds, "all")
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    picked = [s for s in fold.samples if s.defect][:6] + [s for s in fold.samples if not s.defect][:18]
    for i, s in enumerate(picked):
        side = 100 if i == 7 else 160  # one small image among them
        Image.open(s.path).convert("L").crop((0, 0, side, side + 20)).save(images / f"{i:03d}.png")
        mask = np.zeros((side + 20, side), np.uint8)
        if s.defect:
            mask[10:30, 10:30] = 255
        Image.fromarray(mask).save(masks / f"{i:03d}.png")
    out = tmp_path / "run"
    code = run_app(
        app,
        [
            *"finetune --base scratch --arch small_cnn --output-stride 8 --format pairs".split(),
            "--data", str(images), "--masks", str(masks), "--crop-size", "128", "--epochs", "1",
            "--steps-per-epoch", "1", "--batch-size", "2", "--out", str(out), "--device", "cpu",
        ],
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--crop-size 128: larger than the smallest image" in err, err
    assert "007.png (100x120)" in err and "give at most 100" in err
    assert not (out / "checkpoints").exists() and not (out / "best.pt").exists()


def test_export_writes_segdec_runs_for_images_of_any_size(segdec_run, dagm_class1_test, tmp_path, capsys):
    path = tmp_path / "m.onnx"
    code = run_app(app, ["export", "--model", str(segdec_run), "--onnx", str(path), "--images", "2"])
    assert code == 0, capsys.readouterr().err
    assert "parity on 2 real images" in capsys.readouterr().out
    import onnx

    from transfer.export import onnx_logits

    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert meta["transfer.output_stride"] == 8 and "sigmoid(score_logit)" in meta["transfer.output"]
    # Another size than the traced one (512 x 512): the graph's height and width are dynamic.
    loaded = load_model(segdec_run)
    image = torch.randn(1, 3, 96, 160)
    score, seg = onnx_logits(path, image)
    with torch.no_grad():
        reference = loaded.model(image)
    assert seg.shape == (1, 1, 12, 20) and score.shape == (1,)
    np.testing.assert_allclose(score, reference.image_logit.numpy(), atol=1e-4)
    np.testing.assert_allclose(seg, reference.seg_logits.numpy(), atol=1e-4)


def test_validation_chooses_the_image_score_that_ranks_its_images(tmp_path):
    """Few defects can teach the decision head an inverted ranking while the map ranks right (Class1, 5 defects,
    fold 1: decision AUROC 0.005, map 1.00): the better validation AP scores the run; a tie keeps the head."""
    from types import SimpleNamespace

    from transfer.probe import ProbeTask
    from transfer.segdec_task import SegDecTask

    task = SegDecTask.__new__(SegDecTask)  # the rule needs only the validation labels and the config
    task.config = SimpleNamespace(monitor="ap", threshold_criterion="balanced_accuracy")
    task.decision, task.val_set = "image", SimpleNamespace(targets=[0, 0, 0, 1, 1])
    inverted = {
        "decision_score": np.array([0.9, 0.8, 0.7, 0.2, 0.1]),
        "map_max": np.array([0.1, 0.2, 0.3, 0.8, 0.9]),
    }
    extras = task.best_extras(inverted, None)
    assert extras["image_score"] == "map" and 0.3 <= extras["threshold"] <= 0.8
    right = {"decision_score": inverted["map_max"], "map_max": inverted["decision_score"]}
    assert task.image_rule(right) == "decision"
    assert (
        task.image_rule({"decision_score": right["decision_score"], "map_max": right["decision_score"]})
        == "decision"
    )
    assert ProbeTask.image_rules == (
        "decision",
    )  # the probe's image logit is its map's highest value already


def test_a_run_scored_by_its_map_scores_so_in_pytorch_and_onnx(segdec_run, tmp_path, capsys):
    """best.pt's ``image_score`` rebuilds the model with it, so evaluate, predict and the ONNX file score alike; a
    run saved before the choice loads as scored by its decision head."""
    import shutil

    from transfer.export import onnx_logits
    from transfer.models import read_checkpoint

    assert load_model(segdec_run).record.head_fields["image_score"] in ("decision", "map")
    for rule in ("map", None):
        run = tmp_path / f"run-{rule}"
        shutil.copytree(segdec_run, run)
        obj = read_checkpoint(run / "best.pt")
        if rule is None:
            obj.pop("image_score")
        else:
            obj["image_score"] = rule
        torch.save(obj, run / "best.pt")
        loaded = load_model(run)
        assert loaded.model.score_from_map is (rule == "map")
        image = torch.randn(2, 3, 64, 96)
        with torch.no_grad():
            out = loaded.model(image)
        by_map = out.seg_logits.amax((1, 2, 3))
        assert torch.equal(out.image_logit, by_map) is (rule == "map")
    onnx_path = tmp_path / "map.onnx"
    code = run_app(
        app, ["export", "--model", str(tmp_path / "run-map"), "--onnx", str(onnx_path), "--images", "1"]
    )
    assert code == 0, capsys.readouterr().err
    score, seg = onnx_logits(onnx_path, image)
    np.testing.assert_allclose(score, seg.reshape(2, -1).max(1), atol=1e-5)


def test_a_decoder_run_trains_loads_exports_and_localizes(dagm_class1_test, tmp_path, capsys):
    """``--map-stride 4`` on a stride-8 trunk, through the commands: best.pt records the map's stride and rebuilds
    the decoder, the ONNX file gives the finer map for any image size, localize maps with it, and a run saved
    before the option (no ``map_stride`` in best.pt) loads without a decoder."""
    import shutil

    from transfer.export import onnx_logits
    from transfer.models import read_checkpoint

    run = tmp_path / "run"
    code = run_app(
        app,
        [
            "finetune", "--base", "scratch", "--arch", "small_cnn", "--output-stride", "8", "--map-stride", "4",
            "--head-channels", "8", "--dagm", str(dagm_class1_test), "--folds", "3", "--fold", "1", "--epochs",
            "1", "--steps-per-epoch", "2", "--batch-size", "4", "--crop-size", "64", "--out", str(run),
            "--device", "cpu",
        ],
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    loaded = load_model(run)
    assert loaded.record.head_fields["map_stride"] == 4 and loaded.model.decoder is not None
    assert json.loads((run / "config.json").read_text())["map_stride"] == 4
    path = tmp_path / "m.onnx"
    assert run_app(app, ["export", "--model", str(run), "--onnx", str(path), "--images", "2"]) == 0
    image = torch.randn(1, 3, 96, 160)
    score, seg = onnx_logits(path, image)
    with torch.no_grad():
        reference = loaded.model(image)
    assert seg.shape == (1, 1, 24, 40)
    np.testing.assert_allclose(seg, reference.seg_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(score, reference.image_logit.numpy(), atol=1e-4)
    capsys.readouterr()
    code = run_app(
        app,
        [
            "localize", "--model", str(run), "--out", str(tmp_path / "loc"), "--limit", "6", "--val-limit", "6",
            "--device", "cpu",
        ],
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "loc" / "localize.json").read_text())["metrics"]
    assert metrics["n_images"] == 6 and 0.0 <= metrics["mean_iou"] <= 1.0
    old = tmp_path / "old"
    shutil.copytree(run, old)
    obj = read_checkpoint(old / "best.pt")
    for key in list(obj["model"]):
        if key.startswith("decoder."):
            del obj["model"][key]
    del obj["map_stride"]
    torch.save(obj, old / "best.pt")
    assert load_model(old).model.decoder is None


def test_pad_collate_pads_by_reflection_and_pixel_loss_ignores_the_padding():
    from transfer.data import scaled_size, size_batches
    from transfer.segdec_task import pad_collate, pixel_loss

    g = torch.Generator().manual_seed(0)
    small = torch.rand(3, 5, 7, generator=g)
    big = torch.rand(3, 9, 4, generator=g)
    masks = [torch.zeros(1, 5, 7), torch.zeros(1, 9, 4)]
    masks[0][0, 1:3, 2:4] = 1
    batch = [(small, {"label": torch.tensor(1.0), "mask": masks[0], "weight": masks[0]}),
             (big, {"label": torch.tensor(0.0), "mask": masks[1], "weight": masks[1]})]  # fmt: skip
    x, y = pad_collate(batch)
    assert x.shape == (2, 3, 9, 7) and y["valid"].shape == (2, 1, 9, 7)
    torch.testing.assert_close(x[0, :, :5, :7], small)  # the image itself untouched, at the top left
    torch.testing.assert_close(x[0, :, 5:9, :], small.flip(1)[:, 1:5, :])  # below it: its reflection
    torch.testing.assert_close(x[1, :, :, 4:7], big.flip(2)[:, :, 1:4])  # a 4-wide image padded by 3
    assert y["valid"][0].sum() == 35 and y["valid"][1].sum() == 36 and y["mask"][0, 0, 5:].sum() == 0
    # The padded pixels carry no loss: the batch's loss equals the loss over the real pixels alone.
    logits = torch.randn(2, 1, 9, 7, generator=g)
    with_pad = pixel_loss(logits, y["mask"], y["weight"], y["valid"])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y["mask"], reduction="none")
    real = y["valid"].bool()
    defect, clean = real & (y["mask"] > 0), real & (y["mask"] == 0)
    torch.testing.assert_close(with_pad, 0.5 * (bce[defect].mean() + bce[clean].mean()))
    assert not torch.isclose(with_pad, pixel_loss(logits, y["mask"], y["weight"]))

    # --image-size keeps the aspect ratio (torchvision's rule); evaluation batches hold one size each.
    assert scaled_size(512, 256, 128) == (128, 64) and scaled_size(300, 1000, 100) == (30, 100)
    assert scaled_size(40, 60, None) == (40, 60) and scaled_size(1, 5000, 10) == (1, 10)
    assert size_batches([(2, 2), (3, 3), (2, 2), (2, 2), (3, 3)], 2) == [[0, 2], [3], [1, 4]]
