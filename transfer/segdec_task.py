"""Fine-tuning the segmentation-decision model (:mod:`transfer.segdec`) from defect masks and image labels.

Data (:class:`MaskedImages`): whole images at native resolution (or with ``image_size``, the longer side resized
to it, the aspect ratio kept), or, with ``crop_size``, random crops of them for training (a defective image's crop
always holds one of its defect pixels, so every defective image teaches a defect). Image and mask are augmented together (flips, 90-degree rotations;
brightness/contrast and noise on the image only), seeded per (seed, epoch, sample) like every other run.

Images of different sizes in one set (the policy; nothing is ever stretched): a training batch is padded at the
bottom and right to its largest height and width (:func:`pad_collate`; the image by reflection, so the decision
head sees texture, not a frame), and the padded pixels carry no pixel loss. Validation and evaluation batch only
images of one size (:func:`transfer.data.size_batches`), so an image's score never depends on its batch-mates,
and every defect map is upsampled to its own image's size.

Losses (:func:`segdec_loss`), a documented blend: ``seg_loss_weight * L_pixel + image_loss_weight * L_image``.

* ``L_pixel``: binary cross entropy of the upsampled defect map against the mask at image resolution,
  class-balanced within the batch: the mean loss over defect pixels and the mean over clean pixels, averaged
  (defect pixels are about 1 % of DAGM's). Balanced per batch, it depends on how a global batch is split: a
  ``torchrun`` run is not bit-identical to one process (the classifier's losses are). With ``pixel_weighting="distance"`` a defect pixel weighs
  ``(d / d_max) ** 2``, d its distance to the label's border (Božič et al. 2021, mixed supervision): DAGM's
  labels are loose ellipses, whose rim is mostly clean texture.
* ``L_image``: binary cross entropy of the decision logit against the image label, each class weighted by its
  inverse frequency in the training set (as the classifier's cross entropy).

Sets where every image is defective (road cracks: most of each image is clean) or whose validation fold holds
one kind of image only are learnt and thresholded from the masks (``decision = "cell"``): the image loss is
dropped when the training fold has one kind of image, an image's score is its defect map's highest value, and the
stored threshold is chosen on the defect map's cells (one per output-stride cell; a cell is defective when at
least half its pixels are, clean when none is, left out otherwise) of the validation images. ``transfer
evaluate`` then reports TPR/TNR/AP/AUROC over the cells of the test images.

The decision head sees detached features (:class:`transfer.segdec.SegDecNet`), so ``L_image`` trains only the
decision layer and ``L_pixel`` alone shapes the trunk.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from dataonomy.datasets import open_image
from dataonomy.datasets.base import image_size as header_size
from dataonomy.errors import DataonomyError
from transfer import metrics as M
from transfer.data import one_kind_error, rot90, run_fold, scaled_size, seed_for, seen_images
from transfer.segdec import SegDecOutput, build_segdec

PIXEL_WEIGHTINGS = ("uniform", "distance")


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------


def distance_weights(mask: np.ndarray, power: float = 2.0) -> np.ndarray:
    """Per-pixel weights inside ``mask`` (bool (H, W)): (distance to the label's border / its largest) ** power,
    computed per connected defect; 0 outside."""
    out = np.zeros(mask.shape, dtype=np.float32)
    if not mask.any():
        return out
    labels, n = ndimage.label(mask)
    distance = ndimage.distance_transform_edt(mask)
    peaks = ndimage.maximum(distance, labels, index=np.arange(1, n + 1))
    peak_of = np.concatenate([[1.0], np.maximum(peaks, 1e-6)])[labels]
    out[mask] = (distance[mask] / peak_of[mask]) ** power
    return out


def check_crop_fits(samples, crop_size: int) -> None:
    """Refuse, before any training, a crop larger than the smallest image (header reads only), naming it."""
    if not samples:
        return
    sizes = [(min(header_size(s.path)), s.path) for s in samples]
    side, path = min(sizes, key=lambda x: x[0])
    if crop_size > side:
        width, height = header_size(path)
        raise DataonomyError(
            f"--crop-size {crop_size}: larger than the smallest image, {path} ({width}x{height}); "
            f"give at most {side}"
        )


def _crop_box(mask: torch.Tensor, size: int, generator: torch.Generator) -> tuple[int, int]:
    """(top, left) of a ``size`` crop: around a random defect pixel when the mask has one, else anywhere."""
    height, width = mask.shape[-2:]
    if size > min(height, width):
        raise DataonomyError(f"--crop-size {size}: larger than an image of the set ({width}x{height})")
    defect = mask[0].nonzero()
    if len(defect):
        y, x = defect[int(torch.randint(len(defect), (), generator=generator))].tolist()
        top_lo, top_hi = max(0, y - size + 1), min(height - size, y)
        left_lo, left_hi = max(0, x - size + 1), min(width - size, x)
    else:
        top_lo, top_hi, left_lo, left_hi = 0, height - size, 0, width - size
    top = int(torch.randint(top_lo, top_hi + 1, (), generator=generator))
    left = int(torch.randint(left_lo, left_hi + 1, (), generator=generator))
    return top, left


class MaskedImages(Dataset):
    """``(image, target)`` pairs for segdec training and validation.

    ``image``: normalised float (3, H, W); ``target``: ``{"label": float defect flag, "mask": float (1, H, W),
    "weight": float (1, H, W) per-pixel weights of defect pixels}``. ``images`` is a dataset with ``samples``
    (path, defect flag) and ``mask(i)`` (a defect reader). ``crop_size`` crops (training), ``image_size``
    resizes the longer side, keeping the aspect ratio (None: native resolution). Call :meth:`set_epoch` before each epoch (the training loop does).
    """

    def __init__(
        self,
        images,
        mean,
        std,
        *,
        augment: bool = False,
        crop_size: int | None = None,
        image_size: int | None = None,
        pixel_weighting: str = "uniform",
        seed: int = 0,
    ):
        if pixel_weighting not in PIXEL_WEIGHTINGS:
            raise DataonomyError(
                f"--pixel-weighting '{pixel_weighting}': must be one of {', '.join(PIXEL_WEIGHTINGS)}"
            )
        self.images, self.augment, self.crop_size = images, augment, crop_size
        self.image_size, self.pixel_weighting, self.seed, self.epoch = image_size, pixel_weighting, seed, 0
        self.targets = [int(bool(s.defect)) for s in images.samples]
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.geometric = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()])
        self.photometric = v2.ColorJitter(brightness=0.2, contrast=0.2)
        if crop_size is not None:
            check_crop_fits(images.samples, crop_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images.samples)

    def sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every sample as the model gets it (before the augmentation's 90-degree turns), read
        from the image headers."""
        if self.crop_size is not None:
            return [(self.crop_size, self.crop_size)] * len(self)
        out = []
        for sample in self.images.samples:
            width, height = header_size(sample.path)
            out.append(scaled_size(height, width, self.image_size))
        return out

    def pixels(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 image (3, H, W) and bool mask (1, H, W) of sample ``index``, before any transform."""
        sample = self.images.samples[index]
        image = open_image(sample.path)
        image = image if image.mode in ("L", "RGB") else image.convert("RGB")
        pixels = torch.from_numpy(np.array(image))
        pixels = pixels.expand(3, -1, -1) if pixels.ndim == 2 else pixels.permute(2, 0, 1)
        mask = self.images.mask(index) if sample.defect else None
        if mask is None:
            if sample.defect:
                raise DataonomyError(
                    f"{sample.path}: defective image without a mask; segdec training needs masks"
                )
            mask = np.zeros(pixels.shape[1:], dtype=bool)
        return pixels.contiguous(), torch.from_numpy(np.asarray(mask, dtype=bool))[None]

    def __getitem__(self, index: int):
        n = len(self)
        image, mask = self.pixels(index % n)
        generator = torch.Generator().manual_seed(seed_for(self.seed, self.epoch, index))
        if self.crop_size is not None:
            top, left = _crop_box(mask, self.crop_size, generator)
            image = image[:, top : top + self.crop_size, left : left + self.crop_size]
            mask = mask[:, top : top + self.crop_size, left : left + self.crop_size]
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self.image_size is not None:
            size = list(scaled_size(*image.shape[-2:], self.image_size))
            image = v2.functional.resize(image, size, antialias=True)
            mask = v2.functional.resize(mask, size, interpolation=v2.InterpolationMode.NEAREST)
        if self.augment:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(int(torch.randint(2**62, (), generator=generator)))
                image, mask = self.geometric(image, mask)
                k = int(torch.randint(4, ()).item())
                image, mask = rot90(image, k), rot90(mask, k)
                image = self.photometric(image)
                x = image.float() / 255.0
                x = x + 0.02 * torch.randn(x.shape)
        else:
            x = image.float() / 255.0
        x = (torch.as_tensor(x) - self.mean) / self.std
        mask_np = np.asarray(mask[0], dtype=bool)
        if self.pixel_weighting == "distance":
            weight = distance_weights(mask_np)
        else:
            weight = mask_np.astype(np.float32)
        target = {
            # A crop is defective when it holds defect pixels; a whole image is what its label says.
            "label": torch.tensor(
                float(mask_np.any() if self.crop_size is not None else self.targets[index % n])
            ),
            "mask": torch.from_numpy(mask_np.astype(np.float32))[None],
            "weight": torch.from_numpy(weight)[None],
        }
        return x.contiguous(), target


# --------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------


def pad_collate(batch: list) -> tuple[torch.Tensor, dict]:
    """Stack ``(image, target)`` pairs of possibly different sizes: each image padded at the bottom and right to
    the batch's largest height and width by reflection, masks and weights with zeros, and ``target["valid"]``
    (B, 1, H, W) marking the real pixels. A batch of one size is stacked as it is."""
    height = max(x.shape[-2] for x, _ in batch)
    width = max(x.shape[-1] for x, _ in batch)
    images, targets = [], {"label": [], "mask": [], "weight": [], "valid": []}
    for x, target in batch:
        pad = (0, width - x.shape[-1], 0, height - x.shape[-2])
        images.append(_reflect_pad(x, pad))
        targets["label"].append(target["label"])
        for key in ("mask", "weight"):
            targets[key].append(nn.functional.pad(target[key], pad))
        targets["valid"].append(nn.functional.pad(torch.ones_like(target["mask"]), pad))
    return torch.stack(images), {k: torch.stack(v) for k, v in targets.items()}


def _reflect_pad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Pad (C, H, W) by reflection; a pad wider than the image reflects again (torch's reflect needs pad < size)."""
    right, bottom = pad[1], pad[3]
    while right > 0 or bottom > 0:
        step_r, step_b = min(right, x.shape[-1] - 1), min(bottom, x.shape[-2] - 1)
        if step_r == 0 and step_b == 0:  # a 1-pixel image: nothing to reflect
            return nn.functional.pad(x, (0, right, 0, bottom), mode="replicate")
        x = nn.functional.pad(x[None], (0, step_r, 0, step_b), mode="reflect")[0]
        right, bottom = right - step_r, bottom - step_b
    return x


def pixel_loss(
    seg_logits: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Class-balanced BCE of the defect map (B, 1, h, w) upsampled to the masks' size (B, 1, H, W): the
    (weighted) mean over defect pixels and the mean over clean pixels, averaged; clean pixels only when the
    batch has no defect pixel. ``valid`` (B, 1, H, W) leaves out padding."""
    logits = nn.functional.interpolate(
        seg_logits.float(), size=mask.shape[-2:], mode="bilinear", align_corners=False
    )
    bce = nn.functional.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    clean = 1.0 - mask if valid is None else (1.0 - mask) * valid
    clean_loss = (bce * clean).sum() / clean.sum().clamp_min(1.0)
    positive = weight * mask
    if positive.sum() <= 0:
        return clean_loss
    return 0.5 * (clean_loss + (bce * positive).sum() / positive.sum())


def segdec_loss(
    outputs: SegDecOutput,
    targets: dict,
    class_weights: torch.Tensor,
    seg_loss_weight: float = 1.0,
    image_loss_weight: float = 1.0,
) -> torch.Tensor:
    labels = targets["label"]
    weights = class_weights.to(labels.device)[labels.long()]
    image = nn.functional.binary_cross_entropy_with_logits(
        outputs.image_logit.float(), labels, weight=weights
    )
    image = image * len(labels) / weights.sum()
    return (
        seg_loss_weight
        * pixel_loss(outputs.seg_logits, targets["mask"], targets["weight"], targets.get("valid"))
        + image_loss_weight * image
    )


# --------------------------------------------------------------------------------------------------------------
# The task (what transfer.training's loop asks of a run)
# --------------------------------------------------------------------------------------------------------------


# Cell scores are binned in logit space for validation (fixed-size per-image histograms that gather across
# processes): 0.01 wide between -20 and 20, far finer than any threshold needs.
CELL_EDGES = torch.linspace(-20.0, 20.0, 4001)
CELL_CENTRES = ((CELL_EDGES[:-1] + CELL_EDGES[1:]) / 2).numpy().astype(np.float64)
# A cell holding any defect pixel is defective: a 1-3 px crack covers a few per cent of a stride-8 or -16 cell,
# so a "half the cell" rule left all but a handful of a thin defect's cells out of the metrics.
DEFECT_CELL_MIN_SHARE = 0.0


def cell_labels(mask: torch.Tensor, map_size: tuple[int, int]) -> torch.Tensor:
    """Labels of the defect map's cells from a mask (B, 1, H, W): 1 where more than ``DEFECT_CELL_MIN_SHARE`` of
    the cell's pixels (any one, at 0) are defective, 0 where none is, -1 (left out) in between (none at 0)."""
    share = nn.functional.adaptive_avg_pool2d(mask.float(), map_size)
    labels = torch.full_like(share, -1.0)
    labels[share > DEFECT_CELL_MIN_SHARE] = 1.0
    labels[share == 0] = 0.0
    return labels


def cell_histograms(seg_logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (B, len(CELL_CENTRES)) counts of defective and of clean cells in each logit bin."""
    labels = cell_labels(mask, tuple(seg_logits.shape[-2:])).flatten(1)
    edges = CELL_EDGES.to(seg_logits.device)
    bins = torch.bucketize(seg_logits.float().flatten(1).clamp(-20.0, 20.0), edges[1:-1])
    n = len(CELL_CENTRES)
    pos = torch.stack([torch.bincount(b[lab == 1], minlength=n) for b, lab in zip(bins, labels, strict=True)])
    neg = torch.stack([torch.bincount(b[lab == 0], minlength=n) for b, lab in zip(bins, labels, strict=True)])
    return pos.float(), neg.float()


def binned_cells(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logit scores, labels) of the cells counted in summed histograms, each at its bin's centre."""
    pos, neg = np.asarray(pos).astype(np.int64), np.asarray(neg).astype(np.int64)
    scores = np.r_[np.repeat(CELL_CENTRES, pos), np.repeat(CELL_CENTRES, neg)]
    return scores, np.r_[np.ones(pos.sum(), dtype=np.int64), np.zeros(neg.sum(), dtype=np.int64)]


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


class SegDecTask:
    """Fine-tune a segdec model on the folds of a :class:`transfer.config.FinetuneConfig` (``head="segdec"``).

    Validation reports the image metrics (``val_ap``, ``val_auroc``: what early stopping watches), the defect
    map's own image ranking (``val_map_auroc``: the map's highest value as the score) and the decision
    threshold chosen on the validation images.
    """

    mode_of = {"ap": "max", "auroc": "max", "loss": "min"}
    collate_fn = staticmethod(pad_collate)
    #: The image scores validation chooses between, where it holds both kinds of image: ``decision`` (the
    #: decision head's) and ``map`` (the defect map's highest value). With a few defective training images the
    #: decision head, a linear layer fitted on their crops, can rank validation images wrongly while the map
    #: ranks them right (Class1, 5 defects, fold 1: map AUROC 1.00, decision AUROC 0.005); the rule with the
    #: better validation AP (AUROC under ``--monitor auroc``) scores the run, a tie keeps the decision head.
    image_rules: tuple[str, ...] = ("decision", "map")

    def __init__(self, config):
        self.config = c = config
        self.monitor, self.mode, self.patience = f"val_{c.monitor}", self.mode_of[c.monitor], c.patience
        folds = {split: run_fold(c, split) for split in ("train", "val")}
        self.seen_images = seen_images(folds)  # evaluate/localize refuse to test on these (by content)
        kinds = {}
        for name, split in (("training", "train"), ("validation", "val")):
            n_def, n = int(np.sum(folds[split].targets)), len(folds[split])
            if n_def == 0:  # nothing defective to learn from or to validate on
                raise one_kind_error(c, name, n_def, n, "images", folds["train"])
            kinds[split] = n_def < n
        # Both kinds in both folds: the decision head's score, thresholded on validation images. Otherwise the
        # masks decide: the map's cells (see the module's docstring).
        self.decision = "image" if all(kinds.values()) else "cell"
        own = c.segdec
        common = {"image_size": c.image_size, "pixel_weighting": own.pixel_weighting, "seed": c.seed}
        self.train_set = MaskedImages(
            folds["train"], c.mean, c.std, augment=c.augment, crop_size=own.crop_size, **common
        )
        self.val_set = MaskedImages(folds["val"], c.mean, c.std, **common)
        self.train_targets = np.asarray(self.train_set.targets)
        self.classes = ["ok", "defect"]
        self.groups = sorted({s.group or s.label for s in folds["train"].samples})
        counts = np.bincount(self.train_targets, minlength=2)
        # Inverse class frequency; with one kind of training image the image loss has nothing to tell apart.
        self.image_loss_weight = own.image_loss_weight if kinds["train"] else 0.0
        self.class_weights = torch.tensor(counts.sum() / (2.0 * np.maximum(counts, 1)), dtype=torch.float32)

    @staticmethod
    def trunk(model) -> nn.Module:
        """The part of the model the base brings (``--trunk-lr-scale`` applies to it)."""
        return model.trunk

    def build_model(self):
        c, own = self.config, self.config.segdec
        return build_segdec(c.arch, c.base, c.output_stride, own.head_channels, map_stride=own.map_stride)

    def criterion(self):
        return None

    def loss(self, outputs: SegDecOutput, targets: dict, criterion=None, aux_weight=None):
        c = self.config
        loss = segdec_loss(
            outputs, targets, self.class_weights, c.segdec.seg_loss_weight, self.image_loss_weight
        )
        return loss, outputs

    @staticmethod
    def correct(outputs: SegDecOutput, targets: dict) -> torch.Tensor:
        return ((outputs.image_logit > 0).float() == targets["label"]).sum()

    def per_sample(self, outputs: SegDecOutput, targets: dict) -> dict[str, torch.Tensor]:
        labels = targets["label"]
        logits = outputs.image_logit.float()
        weights = self.class_weights.to(labels.device)[labels.long()]
        map_max = torch.sigmoid(outputs.seg_logits.float().amax((1, 2, 3)))
        out = {
            "decision_score": torch.sigmoid(logits),
            "map_max": map_max,
            "weighted_loss": nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
            * weights,
            "weight": weights,
        }
        if self.decision == "cell":
            out["cell_pos"], out["cell_neg"] = cell_histograms(outputs.seg_logits, targets["mask"])
        return out

    def image_rule(self, outputs: dict[str, np.ndarray]) -> str:
        """Which image score validation chose (:attr:`image_rules`); ``map`` where the map's cells decide."""
        if self.decision != "image":
            return "map"
        labels = np.asarray(self.val_set.targets)
        metric = M.auroc if self.config.monitor == "auroc" else M.average_precision
        chosen = {"decision": outputs["decision_score"], "map": outputs["map_max"]}
        values = {rule: metric(chosen[rule], labels) for rule in self.image_rules}
        return max(self.image_rules, key=lambda rule: values[rule])  # the first (decision) wins a tie

    def _decisions(self, outputs: dict[str, np.ndarray], rule: str) -> tuple[np.ndarray, np.ndarray, bool]:
        """(scores, labels, in logits) the threshold is chosen on: validation images by ``rule``'s score, or
        their map cells."""
        if self.decision == "image":
            key = "decision_score" if rule == "decision" else "map_max"
            return outputs[key], np.asarray(self.val_set.targets), False
        scores, labels = binned_cells(outputs["cell_pos"].sum(0), outputs["cell_neg"].sum(0))
        return scores, labels, True

    def _threshold(self, outputs: dict[str, np.ndarray], rule: str) -> float:
        scores, labels, logits = self._decisions(outputs, rule)
        threshold = M.best_threshold(scores, labels, self.config.threshold_criterion)
        return _sigmoid(threshold) if logits else threshold

    def val_metrics(self, outputs: dict[str, np.ndarray], targets) -> dict:
        rule = self.image_rule(outputs)
        scores, labels, logits = self._decisions(outputs, rule)
        threshold = M.best_threshold(scores, labels, self.config.threshold_criterion)
        counts = M.confusion(scores, labels, threshold)
        image_labels = np.asarray(self.val_set.targets)
        return {
            "val_loss": float(outputs["weighted_loss"].sum() / outputs["weight"].sum()),
            "val_ap": M.average_precision(scores, labels),
            "val_auroc": M.auroc(scores, labels),
            "val_map_auroc": M.auroc(outputs["map_max"], image_labels),
            "val_decision_auroc": M.auroc(outputs["decision_score"], image_labels),
            "val_image_score": rule,
            "val_threshold": _sigmoid(threshold) if logits else threshold,
            "val_tpr": counts.tpr,
            "val_tnr": counts.tnr,
        }

    def best_extras(self, outputs, targets) -> dict:
        rule = self.image_rule(outputs)
        return {
            "threshold": self._threshold(outputs, rule),
            "threshold_criterion": self.config.threshold_criterion,
            "image_score": rule,
        }

    def model_meta(self) -> dict:
        c = self.config
        return {
            "classes": self.classes,
            "groups": self.groups,
            "input": "image",
            "head": "segdec",
            "output_stride": c.output_stride,
            "head_channels": c.segdec.head_channels,
            "map_stride": c.segdec.map_stride,
            "decision": self.decision,
            "seen_images": self.seen_images,
        }


__all__ = [
    "PIXEL_WEIGHTINGS",
    "MaskedImages",
    "SegDecTask",
    "cell_labels",
    "distance_weights",
    "pad_collate",
    "pixel_loss",
    "segdec_loss",
]
