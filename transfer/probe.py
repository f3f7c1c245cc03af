"""The frozen-trunk probe: a pretrained trunk kept as it is and a per-location logistic regression on its features,
fitted from the masks in closed form (L-BFGS), no gradient through the trunk. The training loop runs it as a
one-pass fit (``transfer.training``: the folds, validation, threshold and run folder of any fine-tuning run).

It is the cheapest detector to train (one forward pass per training image, then a convex fit of a few thousand
weights) and the floor that fine-tuning must beat (``transfer finetune --head probe``; docs/dagm.md measures it
on real Class1). :class:`ProbeNet` answers as :class:`transfer.segdec.SegDecNet` does, a
:class:`~transfer.segdec.SegDecOutput` of the image logit and the map's logits, so evaluation, localisation,
export and prediction take it unchanged. :func:`fit_probe` is the pure computation.
"""

from __future__ import annotations

import torch
from torch import nn

from transfer.segdec import SegDecOutput, build_segdec, cut_trunk
from transfer.segdec_task import MaskedImages, SegDecTask, cell_labels

# L2 weight of the logistic regression, on standardised features.
PROBE_L2 = 1e-3
# Clean cells kept per image for the fit (all defective cells are kept): bounds memory on large sets.
CLEAN_CELLS_PER_IMAGE = 1024


class ProbeNet(nn.Module):
    """Frozen trunk cut at ``output_stride``, features standardised by the fitted ``mean``/``std``, a 1x1 linear
    map (the logistic regression), and the image logit: the highest 3x3-smoothed map logit (one stray cell does
    not decide an image)."""

    def __init__(self, trunk: nn.Module, channels: int, output_stride: int):
        super().__init__()
        self.trunk, self.output_stride = trunk, output_stride
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))
        self.linear = nn.Conv2d(channels, 1, 1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.trunk.eval()  # frozen: BatchNorm keeps its statistics
        return self

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x)
        return (features - self.feature_mean[:, None, None]) / self.feature_std[:, None, None]

    def forward(self, x: torch.Tensor) -> SegDecOutput:
        seg = self.linear(self.standardised(x))
        smoothed = nn.functional.avg_pool2d(seg, 3, stride=1, padding=1, count_include_pad=False)
        return SegDecOutput(smoothed.amax((1, 2, 3)), seg)


def build_probe(arch: str, init: str, output_stride: int) -> ProbeNet:
    """A probe on ``arch``'s trunk from ``init`` (imagenet, scratch, or a run's checkpoint), not yet fitted."""
    segdec = build_segdec(arch, init, output_stride, frozen_bn=True)
    return ProbeNet(segdec.trunk, segdec.seg_features[0].in_channels, output_stride)


def saved_probe(arch: str, output_stride: int, weights: dict, source: str) -> ProbeNet:
    """The probe a run saved, weights loaded (a missing or wrong-shaped tensor is a one-line error)."""
    from transfer.models import get_model, load_state

    trunk, channels = cut_trunk(get_model(arch, 2, init=False), output_stride)
    model = ProbeNet(trunk, channels, output_stride)
    load_state(model, weights, source, "the probe it describes")
    return model


def fit_probe(
    model: ProbeNet, features: torch.Tensor, labels: torch.Tensor, l2: float = PROBE_L2, max_iter: int = 200
) -> dict:
    """Fit the probe's standardisation and logistic regression on per-location ``features`` (N, C) with 0/1
    ``labels`` (N,), each class weighted to half the loss; returns the fit's final loss and sizes."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = (features - mean) / std
    y = labels.float()
    positive = float(y.mean())
    weights = torch.where(y > 0, 0.5 / max(positive, 1e-9), 0.5 / max(1 - positive, 1e-9))
    linear = nn.Linear(x.shape[1], 1)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(linear(x)[:, 0], y, weight=weights)
        loss = loss + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    with torch.no_grad():
        model.feature_mean.copy_(mean)
        model.feature_std.copy_(std)
        model.linear.weight.copy_(linear.weight[:, :, None, None])
        model.linear.bias.copy_(linear.bias)
    return {
        "loss": float(loss.detach()),
        "examples": int(len(y)),
        "defective": int(y.sum()),
        "channels": x.shape[1],
    }


def cell_examples(model: ProbeNet, dataset, seed: int, progress: bool | None = None):
    """(features (N, C), labels (N,)) of a segdec training set's map cells (:func:`cell_labels`: defective where
    any pixel is), every defective cell and up to ``CLEAN_CELLS_PER_IMAGE`` clean ones per image (seeded)."""
    from dataonomy.progress import progress as show_progress

    generator = torch.Generator().manual_seed(seed)
    features, labels = [], []
    model.eval()
    with torch.no_grad():
        for i in show_progress(range(len(dataset)), desc="probe features", enabled=progress):
            x, target = dataset[i]
            f = model.trunk(x[None])[0]  # (C, h, w)
            cells = cell_labels(target["mask"][None], tuple(f.shape[-2:]))[0, 0].flatten()
            f = f.flatten(1).T  # (h*w, C)
            defect = torch.nonzero(cells == 1)[:, 0]
            clean = torch.nonzero(cells == 0)[:, 0]
            if len(clean) > CLEAN_CELLS_PER_IMAGE:
                clean = clean[torch.randperm(len(clean), generator=generator)[:CLEAN_CELLS_PER_IMAGE]]
            keep = torch.cat([defect, clean])
            features.append(f[keep])
            labels.append(cells[keep])
    return torch.cat(features), torch.cat(labels)


class ProbeTask(SegDecTask):
    """segdec's folds, validation metrics and threshold (:class:`transfer.segdec_task.SegDecTask`); the model is
    the probe."""

    image_rules = ("decision",)  # its image logit already is its (smoothed) map's highest value

    def build_model(self):
        c = self.config
        return build_probe(c.arch, c.base, c.output_stride)

    def model_meta(self) -> dict:
        meta = super().model_meta()
        meta["head"] = "probe"
        meta.pop("head_channels", None)
        return meta

    def fit(self, model: ProbeNet, progress: bool | None = None) -> dict:
        """Fit ``model`` on the training fold's whole images (not augmented, not cropped); the fit's numbers."""
        c = self.config
        whole = MaskedImages(self.train_set.images, c.mean, c.std, image_size=c.image_size)
        device = next(model.parameters()).device
        features, labels = cell_examples(model.cpu(), whole, c.seed, progress)
        fit = fit_probe(model, features, labels)
        model.to(device)
        return {**fit, "images": len(whole)}


__all__ = [
    "CLEAN_CELLS_PER_IMAGE",
    "PROBE_L2",
    "ProbeNet",
    "ProbeTask",
    "build_probe",
    "cell_examples",
    "fit_probe",
    "saved_probe",
]
