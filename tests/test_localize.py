"""Patch heatmaps on real DAGM images: loop = batched = dense where they must agree, and the IoU threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from dataonomy.errors import DataonomyError
from transfer import localize, metrics

DEFECTIVE = (2, 10, 21)  # Class1/Test images with a defect mask
CLEAN = (1, 3)


def _image(folder, number: int) -> np.ndarray:
    return np.asarray(Image.open(folder / f"{number:04d}.PNG"), dtype=np.float32) / 255


def _mask(folder, number: int) -> np.ndarray:
    path = folder / "Label" / f"{number:04d}_label.PNG"
    return np.asarray(Image.open(path)) > 0 if path.exists() else np.zeros((512, 512), bool)


@pytest.fixture(scope="module")
def dagm_images(dagm_class1_test) -> torch.Tensor:
    """(3, 1, 512, 512) normalised DAGM images, two with a defect."""
    images = np.stack([_image(dagm_class1_test, n) for n in (2, 10, 3)])
    return torch.from_numpy((images - 0.5) / 0.25)[:, None]


@pytest.fixture(scope="module")
def dagm_crops(dagm_images) -> torch.Tensor:
    """The same images' top-left 256x256 quarter (image 2's defect lies there): cheap enough for the patch loop."""
    return dagm_images[:, :, :256, :256]


class PatchCNN(nn.Module):
    """A small CNN in the torchvision layout: conv trunk `features`, global average pool, `classifier` head."""

    def __init__(self, trunk: nn.Sequential, channels: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = trunk
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(channels, 2))
        # A seeded random head scaled up so that patch probabilities spread over (0, 1): a flat heatmap would
        # make the equality tests below blind.
        with torch.no_grad():
            self.classifier[1].weight.mul_(40)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def padded_cnn() -> PatchCNN:
    """Ordinary 3x3 convolutions with padding and batch norm, total stride 8."""
    torch.manual_seed(0)
    layers = []
    for cin, cout in ((1, 8), (8, 16), (16, 32)):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return PatchCNN(nn.Sequential(*layers), 32)


def cellwise_cnn() -> PatchCNN:
    """Convolutions with kernel = stride (no overlap, no padding): each 4x4 cell is seen on its own."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(1, 8, 2, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 2, stride=2), nn.ReLU())
    return PatchCNN(trunk, 16)


def test_patch_grid_covers_the_border():
    np.testing.assert_array_equal(localize.patch_starts(512, 128, 64), [0, 64, 128, 192, 256, 320, 384])
    # 512 is not reached by 0, 96, ..., 384 + 96: one more patch flush with the edge.
    np.testing.assert_array_equal(localize.patch_starts(512, 96, 96), [0, 96, 192, 288, 384, 416])
    np.testing.assert_array_equal(localize.patch_starts(100, 100, 7), [0])
    with pytest.raises(DataonomyError, match="--patch-size 600 is larger"):
        localize.patch_starts(512, 600, 64)
    with pytest.raises(DataonomyError, match="--stride"):
        localize.patch_starts(512, 64, 0)


def test_loop_heatmap_is_the_mean_of_covering_patches(dagm_images):
    model = padded_cnn()
    heat = localize.heatmap_loop(model, dagm_images[0], patch_size=256, stride=128)
    assert heat.shape == (512, 512)
    # The 3x3 grid of 256-patches at 0/128/256: pixel (10, 10) is covered by the first patch only, pixel
    # (200, 200) by four patches (rows and columns 0 and 128).
    with torch.no_grad():
        model.eval()
        crops = [dagm_images[0:1, :, y : y + 256, x : x + 256] for y in (0, 128) for x in (0, 128)]
        probs = [torch.softmax(model(c), 1)[0, 1].item() for c in crops]
    assert heat[10, 10].item() == pytest.approx(probs[0], abs=1e-6)
    assert heat[200, 200].item() == pytest.approx(np.mean(probs), abs=1e-6)
    assert model.training is False  # restored: it was in eval mode before the call
    model.train()
    localize.heatmap_loop(model, dagm_images[0], patch_size=256, stride=128)
    assert model.training is True


@pytest.mark.parametrize(
    ("patch_size", "stride", "input_size"), [(128, 64, None), (96, 72, None), (96, 96, 64)]
)
def test_batched_equals_loop_on_dagm(dagm_crops, patch_size, stride, input_size):
    model = padded_cnn()
    loop = localize.heatmap_loop(model, dagm_crops, patch_size, stride, input_size=input_size)
    batched = localize.heatmap_batched(
        model, dagm_crops, patch_size, stride, batch_size=7, input_size=input_size
    )
    assert loop.shape == batched.shape == (3, 256, 256)
    assert loop.std() > 0.01, "heatmap nearly flat: the comparison would prove nothing"
    torch.testing.assert_close(batched, loop, rtol=0, atol=1e-5)


def test_dense_equals_loop_when_trunk_cells_are_independent(dagm_crops):
    # Aligned patches (offsets 0, 72, 144 and the edge patch at 160 are multiples of the stride 4) and a trunk
    # that never looks across a 4x4 cell: the whole-image feature map restricted to a patch is exactly the
    # patch's own feature map, so dense must reproduce the loop.
    model = cellwise_cnn()
    loop = localize.heatmap_loop(model, dagm_crops, 96, 72)
    dense = localize.heatmap_dense(model, dagm_crops, 96, 72)
    assert loop.std() > 0.01
    torch.testing.assert_close(dense, loop, rtol=0, atol=1e-5)


def test_dense_tracks_loop_for_a_padded_cnn(dagm_crops):
    model = padded_cnn()
    # Features near patch borders see neighbouring content in dense mode, so the maps are close but not equal
    # (measured: Pearson 0.99, mean |difference| 0.008).
    aligned = localize.dense_agreement(model, dagm_crops, 96, 32)
    assert aligned["pearson"] > 0.95 and 0 < aligned["mean_abs_diff"] < 0.03
    # Offsets that are not multiples of the trunk's stride 8 are interpolated, not refused (measured: 0.98).
    unaligned = localize.dense_agreement(model, dagm_crops, 96, 60)
    assert unaligned["pearson"] > 0.9 and unaligned["mean_abs_diff"] < 0.03


def test_dense_refuses_models_without_the_layout(dagm_images):
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(DataonomyError, match="no `features`"):
        localize.heatmap_dense(plain, dagm_images[0], 128, 64)

    class MaxPooled(PatchCNN):
        def forward(self, x):
            return self.classifier(self.features(x).amax(dim=(2, 3)))

    model = MaxPooled(padded_cnn().features, 32)
    with pytest.raises(DataonomyError, match="global-average-pool"):
        localize.heatmap_dense(model, dagm_images[0], 128, 64)
    # The loop and batched paths take any module.
    assert localize.heatmap_batched(model, dagm_images[0], 128, 64).shape == (512, 512)


def test_bad_model_output_is_a_clear_error(dagm_images):
    three_way = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(DataonomyError, match=r"\(batch, 2\) logits"):
        localize.heatmap_batched(three_way, dagm_images[0], 64, 512)


def test_threshold_search_matches_brute_force_on_dagm_masks(dagm_class1_test):
    rng = np.random.default_rng(0)
    masks = [_mask(dagm_class1_test, n) for n in DEFECTIVE + CLEAN]
    # Heatmaps that look like a classifier's: a blurred, shifted copy of the mask plus noise.
    heatmaps = [
        np.clip(
            ndimage.gaussian_filter(np.roll(m, 7, axis=1).astype(float), 12) + rng.normal(0, 0.05, m.shape),
            0,
            1,
        )
        for m in masks
    ]
    thresholds = np.round(np.arange(0.05, 1.0, 0.05), 2)
    fast = localize.mean_iou_by_threshold(heatmaps, masks, thresholds)
    brute = [metrics.mean_iou(localize.binarize(heatmaps, t), masks) for t in thresholds]
    np.testing.assert_allclose(fast, brute, rtol=1e-12)
    threshold, best = localize.choose_threshold(heatmaps, masks, thresholds)
    assert best == pytest.approx(max(brute))
    assert threshold == thresholds[int(np.argmax(brute))]
    assert 0.2 < threshold < 0.9  # not a degenerate all/nothing answer
    with pytest.raises(DataonomyError, match="strictly increasing"):
        localize.choose_threshold(heatmaps, masks, [0.5, 0.2])


def test_dense_accepts_the_project_models(dagm_crops):
    # The contract with transfer.models: features -> global average pool -> classifier.
    from transfer.models import get_model

    torch.manual_seed(0)
    model = get_model("small_cnn", 2)
    rgb = dagm_crops[0].expand(3, -1, -1)
    stats = localize.dense_agreement(model, rgb, 96, 32)
    assert stats["mean_abs_diff"] < 0.03


def test_the_threshold_cannot_choose_to_mark_nothing():
    """Heatmaps that rank defect pixels above clean ones on average, but with a few hot pixels on clean images:
    a mean IoU over images is won by marking nothing (every clean image then scores 1); the pooled pixel F1
    picks a threshold that outlines the defects."""
    rng = np.random.default_rng(0)
    heatmaps, masks = [], []
    for i in range(12):
        heat = rng.uniform(0.0, 0.4, (64, 64))
        mask = np.zeros((64, 64), dtype=bool)
        if i < 3:
            mask[20:40, 20:40] = True
            heat[mask] = rng.uniform(0.5, 0.7, mask.sum())
        else:
            heat[rng.integers(0, 64), rng.integers(0, 64)] = 0.8  # one hot pixel on each clean image
        heatmaps.append(heat)
        masks.append(mask)
    value, _ = localize.choose_threshold(heatmaps, masks)
    assert value >= 0.8  # marks (almost) nothing: the trap
    best = localize.choose_threshold_f1(heatmaps, masks)
    assert 0.4 <= best["value"] <= 0.5
    assert best["mean_iou_defective"] > 0.9 and best["recall"] > 0.9
    with pytest.raises(DataonomyError, match="no defect pixels"):
        localize.choose_threshold_f1([np.zeros((8, 8))], [np.zeros((8, 8), dtype=bool)])


def test_defect_regions_box_each_connected_defect():
    predicted = np.zeros((20, 30), dtype=bool)
    predicted[2:5, 3:9] = True
    predicted[10:18, 20:22] = True
    predicted[5, 9] = True  # touches the first region diagonally: 8-connected, same defect
    heat = np.where(predicted, 0.6, 0.1)
    heat[12, 21] = 0.9
    regions = localize.defect_regions(heat, predicted)
    assert regions == [
        {"box": [20, 10, 21, 17], "area": 16, "score": 0.9},
        {"box": [3, 2, 9, 5], "area": 19, "score": 0.6},
    ]
    assert localize.defect_regions(heat, np.zeros_like(predicted)) == []
