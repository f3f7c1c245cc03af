"""What differs between pretraining and fine-tuning runs for the training loop (:mod:`transfer.training`): the
data, the model, the loss, validation and what ``best.pt`` records. A task is chosen by the run's kind: pretraining,
or the fine-tuning head's own (:meth:`transfer.heads.Head.make_task`); segdec's is :mod:`transfer.segdec_task`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dataonomy.errors import DataonomyError
from transfer import metrics as M
from transfer.config import (
    FinetuneConfig,
    PretrainConfig,
)
from transfer.data import (
    PatchDataset,
    SeededTransform,
    one_kind_error,
    pretrain_folds,
    pretrain_transforms,
    run_fold,
    seen_images,
    texture_transforms,
)
from transfer.models import ClassifierNet, build_model, replace_head


class PretrainTask:
    """Classify the manifest's source classes; validation top-1/top-5 accuracy and loss; best = top-1."""

    monitor, mode = "val_top1", "max"

    def __init__(self, config: PretrainConfig):
        self.config = config
        self.patience = config.patience
        train, val = pretrain_folds(
            config.source_root,
            config.wnids,
            config.val_fraction,
            config.images_per_class,
            config.seed,
            config.manifest,
        )
        if len(val) == 0:  # nothing to choose the best epoch on (was a KeyError on val_top1)
            per_class = (
                f"--images-per-class {config.images_per_class}" if config.images_per_class else "the pool"
            )
            raise DataonomyError(
                f"--val-fraction {config.val_fraction}: leaves no validation images ({len(train)} training images "
                f"from {len(config.wnids)} classes, {per_class}); raise --val-fraction or --images-per-class"
            )
        train_tf, eval_tf = pretrain_transforms(config.image_size, config.mean, config.std, config.augment)
        self.train_set = SeededTransform(train, train_tf, config.seed)
        self.val_set = SeededTransform(val, eval_tf, config.seed)
        self.classes = list(train.classes)
        self.class_names = list(train.class_names)
        self.train_targets = np.asarray(train.targets)

    def build_model(self) -> ClassifierNet:
        c = self.config
        return build_model(c.arch, len(self.classes), c.init, c.dropout, c.aux_logits)

    def criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss(label_smoothing=self.config.label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        return {
            "loss": nn.functional.cross_entropy(logits, targets, reduction="none"),
            "top1": (top[:, 0] == targets).float(),
            "top5": (top == targets[:, None]).any(dim=1).float(),
        }

    def val_metrics(self, outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict:
        return {f"val_{k}": float(np.mean(v)) for k, v in outputs.items()}

    def best_extras(self, outputs, targets) -> dict:
        return {}

    def model_meta(self) -> dict:
        return {"classes": self.classes, "class_names": self.class_names, "input": "image"}


class FinetuneTask:
    """Defect / no defect on a defect set, class-weighted cross entropy, early stopping, validation threshold.

    Scores are defect probabilities (softmax of the two logits). With ``patches`` the examples are patches and
    an image's score is its highest patch score (an image is defective when any patch is). The stored decision
    threshold decides images, so it is chosen on the validation images' scores: a threshold chosen on patches
    sits too low for the maximum over dozens of patches and flags nearly every image. Validation reports the
    patch metrics (``val_ap``, ``val_auroc``, what early stopping watches) and the image ones (``val_image_*``).
    When the validation images are all of one kind (every image defective) there is no image threshold to
    choose: it is chosen on the patches (``decision = "patch"``), and evaluation reports patches. A validation
    image's score is its highest patch over the whole grid, patches the defect-share rule leaves out of the
    patch metrics included: the statistic :func:`image_scores` gives the test images.
    """

    mode_of = {"ap": "max", "auroc": "max", "loss": "min"}

    def __init__(self, config: FinetuneConfig, head):
        self.config = c = config
        self.monitor, self.mode, self.patience = f"val_{c.monitor}", self.mode_of[c.monitor], c.patience
        folds = {split: run_fold(c, split) for split in ("train", "val")}
        self.seen_images = seen_images(folds)  # evaluate/localize refuse to test on these (by content)
        self.val_patch_scored = None  # which validation examples the patch metrics count (None: all)
        patch = c.patch
        if patch.patches:
            grid = (patch.patch_size, patch.patch_stride, patch.patch_defect_fraction)
            train = PatchDataset(folds["train"], *grid)
            # Validation keeps every grid patch: the image score (max over patches) that places the threshold
            # must be the one the test images get (transfer.evaluate.image_scores), not a max over the
            # patches that passed the defect-share filter.
            val = PatchDataset(folds["val"], *grid, every_patch=True)
            self.val_patch_scored = ~val.ambiguous
            train_tf, eval_tf = texture_transforms(None, c.mean, c.std, c.augment)
        else:
            train, val = folds["train"], folds["val"]
            train_tf, eval_tf = texture_transforms(c.image_size, c.mean, c.std, c.augment)
        for name, ds in (("training", train), ("validation", val)):
            labelled = np.asarray(ds.targets)[~ds.ambiguous] if patch.patches else np.asarray(ds.targets)
            n_def = int(np.sum(labelled))
            if n_def == 0 or n_def == len(labelled):
                what = "patches" if patch.patches else "images"
                raise one_kind_error(c, name, n_def, len(labelled), what, folds["train"])
        self.train_set = SeededTransform(train, train_tf, c.seed)
        self.val_set = SeededTransform(val, eval_tf, c.seed)
        self.train_targets = np.asarray(train.targets)
        if patch.patches:
            # Which validation image each patch comes from, and the images' labels: image-level decisions.
            self.val_patch_image = np.array([i for i, _, _ in val.patches], dtype=np.int64)
            self.val_image_targets = np.asarray(folds["val"].targets)
        # A validation fold of one kind of image (every image defective, as road cracks) cannot place an image
        # threshold: the patches' own labels do (decision "patch"; evaluate then reports patches).
        one_kind = patch.patches and self.val_image_targets.min() == self.val_image_targets.max()
        self.decision = "patch" if one_kind else "image"
        self.classes = ["ok", "defect"]
        self.groups = sorted({s.group or s.label for s in folds["train"].samples})
        counts = np.bincount(self.train_targets, minlength=2)
        # Inverse class frequency, scaled so that a balanced set would get weights (1, 1).
        self.class_weights = torch.tensor(counts.sum() / (2.0 * counts), dtype=torch.float32)
        # The run's kind's rule from logits to a defect probability (a registered kind may bring its own).
        self.probability = head.defect_probability

    @staticmethod
    def trunk(model: ClassifierNet) -> nn.Module:
        """The part of the model the base brings (``--trunk-lr-scale`` applies to it)."""
        return model.features

    def build_model(self) -> ClassifierNet:
        c = self.config
        # The base's trunk (and head, if it had two classes) is loaded; the last layer is always a new one.
        model = build_model(c.arch, 2, c.base, c.dropout, c.aux_logits)
        return replace_head(model, 2)

    def criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss(weight=self.class_weights, label_smoothing=self.config.label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        weights = self.class_weights.to(logits.device)[targets]
        return {
            "score": self.probability(logits),
            "weighted_loss": nn.functional.cross_entropy(logits.float(), targets, reduction="none") * weights,
            "weight": weights,
        }

    def decision_scores(
        self, outputs: dict[str, np.ndarray], targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels) of the validation images: the examples' own, or each image's highest patch score over
        every grid patch (as :func:`image_scores` scores test images); ``decision = "patch"``: the labelled
        patches (the fine-tuning's patch rule, as :func:`patch_scores`)."""
        if not self.config.patch.patches:
            return outputs["score"], targets
        if self.decision == "patch":
            return outputs["score"][self.val_patch_scored], targets[self.val_patch_scored]
        images = np.zeros(len(self.val_image_targets), dtype=np.float64)  # every image has a clean patch
        np.maximum.at(images, self.val_patch_image, outputs["score"].astype(np.float64))
        return images, self.val_image_targets

    def val_metrics(self, outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict:
        keep = self.val_patch_scored if self.val_patch_scored is not None else slice(None)
        scores, labels = outputs["score"][keep], targets[keep]
        metrics = {
            "val_loss": float(outputs["weighted_loss"][keep].sum() / outputs["weight"][keep].sum()),
            "val_ap": M.average_precision(scores, labels),
            "val_auroc": M.auroc(scores, labels),
        }
        images, labels = self.decision_scores(outputs, targets)
        if self.config.patch.patches and self.decision == "image":
            metrics.update(
                val_image_ap=M.average_precision(images, labels), val_image_auroc=M.auroc(images, labels)
            )
        threshold = M.best_threshold(images, labels, self.config.threshold_criterion)
        counts = M.confusion(images, labels, threshold)
        return {**metrics, "val_threshold": threshold, "val_tpr": counts.tpr, "val_tnr": counts.tnr}

    def best_extras(self, outputs, targets) -> dict:
        images, labels = self.decision_scores(outputs, targets)
        threshold = M.best_threshold(images, labels, self.config.threshold_criterion)
        return {"threshold": threshold, "threshold_criterion": self.config.threshold_criterion}

    def model_meta(self) -> dict:
        c, patch = self.config, self.config.patch
        meta = {
            "classes": self.classes,
            "groups": self.groups,
            "input": "patch" if patch.patches else "image",
            "head": c.head,
            "seen_images": self.seen_images,
        }
        if patch.patches:
            meta.update(patch_size=patch.patch_size, patch_stride=patch.patch_stride, decision=self.decision)
        return meta
