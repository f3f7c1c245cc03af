"""Patch-heatmap localisation (METHOD.md section 7).

A patch classifier is any ``torch.nn.Module`` that maps a batch of image patches ``(B, C, p, p)`` to two logits
``(B, 2)``; the defect probability of a patch is ``softmax(logits)[:, 1]``. Images are passed exactly as the model
expects them (channels, normalisation): cropping commutes with per-channel normalisation, so the caller
normalises the whole image once.

Patch grid: along each axis patches start at 0, stride, 2*stride, ... and, when that does not reach the border, one
more patch is placed flush with the far edge, so every pixel is covered. A pixel's heat is the mean probability of
all patches that cover it.

Three ways to compute the same heatmap:

- :func:`heatmap_loop`: the reference; crops and classifies one patch at a time.
- :func:`heatmap_batched`: the same numbers (to float tolerance), patches gathered from an ``unfold`` view and
  classified in batches.
- :func:`heatmap_dense`: runs the convolutional trunk once per image and classifies every patch from the
  trunk's feature map (see its docstring for what differs); :func:`dense_agreement` measures how far it is from
  the patch loop.

:func:`choose_threshold` picks the binarisation threshold on validation heatmaps by maximising mean IoU against
the masks, and :func:`binarize` applies it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from dataonomy.errors import DataonomyError

# --------------------------------------------------------------------------------------------------------------
# Patch grid and assembly
# --------------------------------------------------------------------------------------------------------------


def patch_starts(length: int, patch_size: int, stride: int) -> np.ndarray:
    """Start offsets of patches along one axis: 0, stride, ... plus one patch flush with the far edge if needed."""
    if patch_size < 1:
        raise DataonomyError(f"--patch-size must be at least 1, got {patch_size}")
    if stride < 1:
        raise DataonomyError(f"--stride must be at least 1, got {stride}")
    if patch_size > length:
        raise DataonomyError(f"--patch-size {patch_size} is larger than the image side ({length} pixels)")
    starts = np.arange(0, length - patch_size + 1, stride)
    if starts[-1] != length - patch_size:
        starts = np.r_[starts, length - patch_size]
    return starts


def patch_grid(height: int, width: int, patch_size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column starts of the patch grid of an image of ``height`` x ``width``."""
    return patch_starts(height, patch_size, stride), patch_starts(width, patch_size, stride)


def _coverage(starts: np.ndarray, patch_size: int, length: int, dtype, device) -> torch.Tensor:
    """(n_patches, length) 0/1 matrix: does the patch starting at starts[i] cover position j?"""
    positions = torch.arange(length, device=device)
    starts = torch.as_tensor(starts, device=device)[:, None]
    return ((positions >= starts) & (positions < starts + patch_size)).to(dtype)


def assemble(patch_probs: torch.Tensor, ys, xs, patch_size: int, height: int, width: int) -> torch.Tensor:
    """Per-pixel mean of patch probabilities ``(N, len(ys), len(xs))`` over the patches covering each pixel.

    The grid is a product of row and column intervals, so the sum of covering probabilities is
    ``rows^T @ P @ cols`` and the number of covering patches is the outer product of the per-axis counts.
    """
    dtype, device = torch.float64, patch_probs.device
    rows = _coverage(ys, patch_size, height, dtype, device)  # (ny, H)
    cols = _coverage(xs, patch_size, width, dtype, device)  # (nx, W)
    total = rows.T @ patch_probs.to(dtype) @ cols  # (N, H, W)
    count = rows.sum(0)[:, None] * cols.sum(0)[None, :]
    return (total / count).to(torch.float32)


# --------------------------------------------------------------------------------------------------------------
# Classifying patches
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off, batch-norm running statistics) and no autograd, restoring the mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _model_device(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _as_batch(images) -> tuple[torch.Tensor, bool]:
    """(N, C, H, W) float tensor from (C, H, W) or (N, C, H, W); also whether a single image was given."""
    images = torch.as_tensor(images)
    if images.ndim == 3:
        return images[None].float(), True
    if images.ndim == 4:
        return images.float(), False
    raise DataonomyError(f"images: expected (C, H, W) or (N, C, H, W), got shape {tuple(images.shape)}")


def two_class_probability(logits: torch.Tensor) -> torch.Tensor:
    """The defect probability of each row of a two-class classifier's logits (class 1 = defective), float32."""
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise DataonomyError(
            f"model: a patch classifier must return (batch, 2) logits, got shape {tuple(logits.shape)}"
        )
    return torch.softmax(logits.float(), dim=1)[:, 1]


#: The rule from a patch classifier's output to each patch's defect probability (the run's head's).
Probability = Callable[[torch.Tensor], torch.Tensor]


def _defect_probability(
    model: nn.Module, patches: torch.Tensor, input_size: int | None, probability: Probability
) -> torch.Tensor:
    if input_size is not None and patches.shape[-1] != input_size:
        patches = F.interpolate(patches, size=(input_size, input_size), mode="bilinear", antialias=True)
    return probability(model(patches))


def heatmap_loop(
    model: nn.Module,
    images,
    patch_size: int,
    stride: int,
    input_size: int | None = None,
    device=None,
    probability: Probability = two_class_probability,
) -> torch.Tensor:
    """Reference heatmap: crop every patch, classify it alone, average the probabilities per pixel.

    ``images``: (C, H, W) or (N, C, H, W); returns (H, W) or (N, H, W) float32 on the CPU, values in [0, 1].
    ``input_size``: resize each patch to this side before classifying (when the model was trained at a fixed
    input size); ``None`` classifies patches at their own size. ``device``: where to run (default: the model's).
    ``probability``: the rule from the model's output to each patch's defect probability (the run's head's;
    default a two-class softmax), in every heatmap function.
    """
    batch, single = _as_batch(images)
    n, _, height, width = batch.shape
    ys, xs = patch_grid(height, width, patch_size, stride)
    device = _model_device(model, device)
    total = torch.zeros(n, height, width, dtype=torch.float64)
    count = torch.zeros(height, width, dtype=torch.float64)
    with _evaluating(model):
        for i in range(n):
            image = batch[i].to(device)
            for y in ys:
                for x in xs:
                    patch = image[None, :, y : y + patch_size, x : x + patch_size]
                    score = _defect_probability(model, patch, input_size, probability).item()
                    total[i, y : y + patch_size, x : x + patch_size] += score
                    if i == 0:
                        count[y : y + patch_size, x : x + patch_size] += 1
    heat = (total / count).to(torch.float32)
    return heat[0] if single else heat


def default_patch_batch(device) -> int:
    """Patches per forward pass: large batches feed a GPU; on a CPU, 32 measured about 3x faster than 256
    (benchmarks/bench_heatmap.py, docs/benchmarks.md), since a small batch stays in cache."""
    return 256 if torch.device(device).type == "cuda" else 32


def heatmap_batched(
    model: nn.Module,
    images,
    patch_size: int,
    stride: int,
    batch_size: int | None = None,
    input_size: int | None = None,
    device=None,
    probability: Probability = two_class_probability,
) -> torch.Tensor:
    """The :func:`heatmap_loop` heatmap, with patches classified ``batch_size`` at a time.

    ``batch_size`` defaults to :func:`default_patch_batch` for the model's device.

    Patches are gathered from a strided ``unfold`` view of the images (no copy until a batch is taken), and
    assembled with :func:`assemble`. Same arguments and result as :func:`heatmap_loop`.
    """
    device = _model_device(model, device)
    batch_size = default_patch_batch(device) if batch_size is None else batch_size
    if batch_size < 1:
        raise DataonomyError(f"--batch-size must be at least 1, got {batch_size}")
    batch, single = _as_batch(images)
    n, _, height, width = batch.shape
    ys, xs = patch_grid(height, width, patch_size, stride)
    batch = batch.to(device)
    # (N, C, H-p+1, W-p+1, p, p): every possible patch, as a view.
    windows = batch.unfold(2, patch_size, 1).unfold(3, patch_size, 1)
    image_index, row_index, col_index = (
        torch.as_tensor(a.ravel(), device=device) for a in np.meshgrid(np.arange(n), ys, xs, indexing="ij")
    )
    probabilities = []
    with _evaluating(model):
        for begin in range(0, image_index.numel(), batch_size):
            chunk = slice(begin, begin + batch_size)
            patches = windows[image_index[chunk], :, row_index[chunk], col_index[chunk]]  # (B, C, p, p)
            probabilities.append(_defect_probability(model, patches.contiguous(), input_size, probability))
    patch_probs = torch.cat(probabilities).reshape(n, len(ys), len(xs))
    heat = assemble(patch_probs, ys, xs, patch_size, height, width).cpu()
    return heat[0] if single else heat


# --------------------------------------------------------------------------------------------------------------
# Dense (fully convolutional) heatmaps
# --------------------------------------------------------------------------------------------------------------


def _check_dense_structure(model: nn.Module, probe: torch.Tensor) -> None:
    """Raise unless ``model(x) == model.classifier(mean over space of model.features(x))`` on ``probe``."""
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if not isinstance(features, nn.Module) or not isinstance(classifier, nn.Module):
        raise DataonomyError(
            f"--method dense: {type(model).__name__} has no `features` (conv trunk) and `classifier` "
            "(head on pooled features) modules; use --method batched"
        )
    trunk_output = features(probe)
    if trunk_output.ndim != 4:
        raise DataonomyError(
            f"--method dense: model.features must return a (B, F, h, w) feature map, got {tuple(trunk_output.shape)}"
        )
    pooled = classifier(trunk_output.mean(dim=(2, 3)))
    direct = model(probe)
    if pooled.shape != direct.shape or not torch.allclose(pooled, direct, rtol=1e-4, atol=1e-4):
        raise DataonomyError(
            f"--method dense: {type(model).__name__}(x) is not classifier(global-average-pool(features(x))); "
            "dense heatmaps need that structure, use --method batched"
        )


def heatmap_dense(
    model: nn.Module,
    images,
    patch_size: int,
    stride: int,
    input_size: int | None = None,
    device=None,
    probability: Probability = two_class_probability,
) -> torch.Tensor:
    """Heatmap from one pass of the convolutional trunk per image, classifying every patch from its features.

    Required structure: ``model.features`` maps (B, C, H, W) to a feature map (B, F, h, w), ``model.classifier``
    maps pooled features (B, F) to (B, 2) logits, and ``model(x) == model.classifier(features(x).mean((2, 3)))``
    (torchvision EfficientNet/MobileNet layout: conv trunk, global average pool, head). This is checked on one
    patch, and a :class:`DataonomyError` is raised for any other model.

    How it is computed: the trunk runs once on the whole image (resized by ``input_size / patch_size`` first when
    ``input_size`` is given). For every patch of the same grid as :func:`heatmap_loop`, the feature map is
    average-pooled over the patch's footprint (``roi_align`` with one bilinear sample per feature cell: exactly
    the cells inside the patch when the patch offsets are multiples of the trunk's stride, interpolated
    otherwise), the classifier turns that vector into logits, and the patch probabilities are assembled exactly
    as in the loop. Per-location head, then pooling, as in class-activation maps, but pooled per patch so that
    the heatmap has the loop's meaning.

    How it differs from the patch loop: in the loop the trunk sees only the patch, padded with zeros at the
    patch border; here features near a patch border also see the neighbouring image content (their receptive
    field crosses the border), and patch offsets that are not multiples of the trunk's stride are interpolated.
    For a trunk whose receptive field does not cross its stride cells (non-overlapping convolutions) and aligned
    patches, the two are equal; for ordinary CNNs they differ near patch borders, the more so the wider the
    trunk's receptive field is compared with the patch. :func:`dense_agreement` measures by how much. Measured
    on 24 held-out DAGM Class1 images, 128-pixel patches, stride 64, classifiers fine-tuned on Class1 patches:
    a 4-block CNN (stride 16): Pearson 0.99, mean |difference| 0.04; EfficientNet-Lite0 from ImageNet weights
    (stride 32, receptive field far wider than a patch): Pearson 0.75, mean |difference| 0.09. Use
    :func:`heatmap_batched` where the patch classifier's exact numbers matter.
    """
    batch, single = _as_batch(images)
    n, _, height, width = batch.shape
    ys, xs = patch_grid(height, width, patch_size, stride)
    device = _model_device(model, device)
    scale = 1.0 if input_size is None else input_size / patch_size
    with _evaluating(model):
        _check_dense_structure(model, _probe_patch(batch, patch_size, input_size, device))
        heats = []
        for i in range(n):
            image = batch[i : i + 1].to(device)
            if scale != 1.0:
                size = (round(height * scale), round(width * scale))
                image = F.interpolate(image, size=size, mode="bilinear", antialias=True)
            feature_map = model.features(image)  # (1, F, h, w)
            fy, fx = feature_map.shape[2] / height, feature_map.shape[3] / width
            # Patch boxes (x1, y1, x2, y2) in feature-map coordinates, one per grid patch, row-major.
            y0, x0 = (
                torch.as_tensor(a.ravel(), dtype=torch.float32) for a in np.meshgrid(ys, xs, indexing="ij")
            )
            boxes = torch.stack([x0 * fx, y0 * fy, (x0 + patch_size) * fx, (y0 + patch_size) * fy], dim=1)
            cells = (max(1, round(patch_size * fy)), max(1, round(patch_size * fx)))
            pooled = roi_align(
                feature_map.float(),
                [boxes.to(device)],
                output_size=cells,
                spatial_scale=1.0,
                sampling_ratio=1,
                aligned=True,
            ).mean(dim=(2, 3))
            logits = model.classifier(pooled.to(feature_map.dtype))
            patch_probs = probability(logits).reshape(1, len(ys), len(xs))
            heats.append(assemble(patch_probs, ys, xs, patch_size, height, width).cpu())
    heat = torch.cat(heats)
    return heat[0] if single else heat


def _probe_patch(batch: torch.Tensor, patch_size: int, input_size: int | None, device) -> torch.Tensor:
    patch = batch[:1, :, :patch_size, :patch_size].to(device)
    if input_size is not None and input_size != patch_size:
        patch = F.interpolate(patch, size=(input_size, input_size), mode="bilinear", antialias=True)
    return patch


def agreement(reference, other) -> dict:
    """How closely two sets of heatmaps agree, pooled over all pixels of all images.

    ``pearson``: correlation coefficient (NaN if either is constant); ``mean_abs_diff``, ``max_abs_diff``:
    absolute differences in probability units.
    """
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(other, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise DataonomyError(f"heatmaps differ in size ({a.size} vs {b.size} pixels)")
    difference = np.abs(a - b)
    pearson = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return {
        "pearson": pearson,
        "mean_abs_diff": float(difference.mean()),
        "max_abs_diff": float(difference.max()),
    }


def dense_agreement(
    model: nn.Module,
    images,
    patch_size: int,
    stride: int,
    input_size: int | None = None,
    device=None,
) -> dict:
    """:func:`agreement` of :func:`heatmap_dense` against the patch-loop heatmap on the same images.

    The patch-loop numbers are computed with :func:`heatmap_batched`, which gives the loop's heatmap (tested to
    float tolerance) in a fraction of the time.
    """
    reference = heatmap_batched(model, images, patch_size, stride, input_size=input_size, device=device)
    dense = heatmap_dense(model, images, patch_size, stride, input_size=input_size, device=device)
    return agreement(reference, dense)


# --------------------------------------------------------------------------------------------------------------
# Binarisation
# --------------------------------------------------------------------------------------------------------------


def binarize(heatmaps, threshold: float) -> np.ndarray:
    """Defect pixels: ``heat >= threshold`` (boolean array of the heatmaps' shape)."""
    return np.asarray(heatmaps) >= threshold


DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


def mean_iou_by_threshold(heatmaps, masks, thresholds=DEFAULT_THRESHOLDS) -> np.ndarray:
    """Mean IoU over images of ``binarize(heatmap, t)`` against the masks, for every candidate threshold t.

    IoU follows :mod:`transfer.metrics` (an empty prediction on an empty mask scores 1). All thresholds are
    evaluated in one pass per image: each pixel's heat is bucketed among the sorted thresholds, and cumulative
    bucket counts give the true and false positives at every threshold.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0 or np.any(np.diff(thresholds) <= 0):
        raise DataonomyError("thresholds: need a non-empty, strictly increasing list of candidate thresholds")
    if len(heatmaps) != len(masks):
        raise DataonomyError(f"heatmaps and masks differ in number ({len(heatmaps)} vs {len(masks)})")
    if len(heatmaps) == 0:
        raise DataonomyError("masks: no validation images to choose a threshold on")
    total = np.zeros(thresholds.size)
    for heat, mask in zip(heatmaps, masks, strict=True):
        heat, mask = np.asarray(heat, dtype=np.float64), np.asarray(mask) != 0
        if heat.shape != mask.shape:
            raise DataonomyError(f"heatmap and mask differ in shape ({heat.shape} vs {mask.shape})")
        # bucket = number of thresholds <= heat: the pixel is predicted defective at thresholds[:bucket].
        bucket = np.searchsorted(thresholds, heat, side="right")
        in_mask = np.bincount(bucket[mask], minlength=thresholds.size + 1)
        outside = np.bincount(bucket[~mask], minlength=thresholds.size + 1)
        tp = np.cumsum(in_mask[::-1])[::-1][1:]  # pixels with bucket > i, for threshold i
        fp = np.cumsum(outside[::-1])[::-1][1:]
        union = mask.sum() + fp
        total += np.where(union > 0, tp / np.maximum(union, 1), 1.0)
    return total / len(heatmaps)


def pixel_counts_by_threshold(
    heat, mask, thresholds=DEFAULT_THRESHOLDS
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(tp, fp, n_mask)`` of one image for every candidate threshold: true and false positive pixels of
    ``binarize(heat, t)`` and the mask's pixel count (one bucketing pass, as :func:`mean_iou_by_threshold`)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    heat, mask = np.asarray(heat, dtype=np.float64), np.asarray(mask) != 0
    if heat.shape != mask.shape:
        raise DataonomyError(f"heatmap and mask differ in shape ({heat.shape} vs {mask.shape})")
    bucket = np.searchsorted(thresholds, heat, side="right")
    in_mask = np.bincount(bucket[mask], minlength=thresholds.size + 1)
    outside = np.bincount(bucket[~mask], minlength=thresholds.size + 1)
    return np.cumsum(in_mask[::-1])[::-1][1:], np.cumsum(outside[::-1])[::-1][1:], int(mask.sum())


class ThresholdCurves:
    """Pixel counts of validation images accumulated one image at a time, for choosing the binarisation
    threshold without keeping the heatmaps.

    The threshold maximises the **pooled pixel F1** ``2 TP / (2 TP + FP + FN)`` over all images: the defective
    images give the true positives and misses, and every image (clean ones included) its false-positive pixels.
    Unlike a mean IoU over images, whose clean images score 1 for an empty prediction, marking nothing scores 0
    here, so the choice cannot fall on "mark nothing" while defects exist.
    """

    def __init__(self, thresholds=DEFAULT_THRESHOLDS):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        if self.thresholds.ndim != 1 or self.thresholds.size == 0 or np.any(np.diff(self.thresholds) <= 0):
            raise DataonomyError(
                "thresholds: need a non-empty, strictly increasing list of candidate thresholds"
            )
        zeros = np.zeros(self.thresholds.size)
        self.tp, self.fp, self.fn = zeros.copy(), zeros.copy(), zeros.copy()
        self.iou_defective, self.n_defective, self.n_images = zeros.copy(), 0, 0

    def add(self, heat, mask) -> None:
        tp, fp, n_mask = pixel_counts_by_threshold(heat, mask, self.thresholds)
        self.tp += tp
        self.fp += fp
        self.fn += n_mask - tp
        self.n_images += 1
        if n_mask:
            self.iou_defective += tp / (n_mask + fp)
            self.n_defective += 1

    def f1(self) -> np.ndarray:
        return np.where(self.tp > 0, 2 * self.tp / np.maximum(2 * self.tp + self.fp + self.fn, 1), 0.0)

    def best(self) -> dict:
        """The chosen threshold (ties to the highest) with its pooled F1, precision, recall and the mean IoU
        of the defective images there."""
        if self.n_images == 0:
            raise DataonomyError("masks: no validation images to choose a threshold on")
        if self.n_defective == 0:
            raise DataonomyError(
                "masks: the validation images hold no defect pixels to choose a threshold on"
            )
        f1 = self.f1()
        i = f1.size - 1 - int(np.argmax(f1[::-1]))
        tp, fp, fn = self.tp[i], self.fp[i], self.fn[i]
        return {
            "value": float(self.thresholds[i]),
            "criterion": "pooled pixel F1",
            "f1": float(f1[i]),
            "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
            "recall": float(tp / (tp + fn)) if tp + fn else 0.0,
            "mean_iou_defective": float(self.iou_defective[i] / self.n_defective),
        }


def defect_regions(heat, predicted) -> list[dict]:
    """The connected components (8-connected) of a binary defect mask: each one's box ``[x0, y0, x1, y1]``
    (inclusive pixel corners), area in pixels and score (the highest heat inside), largest score first."""
    from scipy import ndimage

    labels, n = ndimage.label(np.asarray(predicted, dtype=bool), structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    areas = ndimage.sum_labels(np.ones(labels.shape), labels, index)
    peaks = ndimage.maximum(np.asarray(heat, dtype=np.float64), labels, index)
    regions = [
        {
            "box": [int(box[1].start), int(box[0].start), int(box[1].stop - 1), int(box[0].stop - 1)],
            "area": int(area),
            "score": float(peak),
        }
        for box, area, peak in zip(ndimage.find_objects(labels), areas, peaks, strict=True)
    ]
    return sorted(regions, key=lambda r: -r["score"])


def choose_threshold_f1(heatmaps, masks, thresholds=DEFAULT_THRESHOLDS) -> dict:
    """:meth:`ThresholdCurves.best` over lists of heatmaps and masks."""
    if len(heatmaps) != len(masks):
        raise DataonomyError(f"heatmaps and masks differ in number ({len(heatmaps)} vs {len(masks)})")
    curves = ThresholdCurves(thresholds)
    for heat, mask in zip(heatmaps, masks, strict=True):
        curves.add(heat, mask)
    return curves.best()


def choose_threshold(heatmaps, masks, thresholds=DEFAULT_THRESHOLDS) -> tuple[float, float]:
    """The binarisation threshold that maximises mean IoU on validation heatmaps, and that mean IoU.

    Grid search over ``thresholds`` (default 0.01, 0.02, ..., 0.99); ties go to the highest threshold (fewest
    marked pixels). Include clean validation images with empty masks to make false alarms count.
    """
    scores = mean_iou_by_threshold(heatmaps, masks, thresholds)
    best = scores.size - 1 - int(np.argmax(scores[::-1]))
    return float(np.asarray(thresholds)[best]), float(scores[best])
