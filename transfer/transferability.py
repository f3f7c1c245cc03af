"""How well a base trunk suits a fine-tuning run's target, before any fine-tuning: LogME of the trunk's
features of the run's training images, one example per cell of the defect map, labelled by the masks.

The estimate (:func:`dataonomy.transferability.logme`) is pure; this module reads the run's training fold as
fine-tuning would (``--defective-train`` included, whole images at the run's resolution, no augmentation), cuts
the base's trunk where segdec would (``--output-stride``) and collects its cell features. Every defective cell
is kept; clean cells are a seeded sample per image, so the defect cells are not drowned (LogME's per-example
evidence would then mostly measure how well the trunk says "clean").
"""

from __future__ import annotations

import numpy as np
import torch

from dataonomy.devices import resolve_device
from dataonomy.transferability import logme
from transfer.data import run_fold, seed_for
from transfer.segdec import build_segdec
from transfer.segdec_task import MaskedImages, cell_labels


def trunk_cells(
    trunk: torch.nn.Module,
    images: MaskedImages,
    clean_cells_per_image: int,
    seed: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), labels (N,)) of the cells of every image in ``images``: each defective cell (at least
    half its pixels in the mask) and up to ``clean_cells_per_image`` clean ones (no defect pixel), seeded per
    image; cells in between are left out, as segdec's cell metrics leave them."""
    features, labels = [], []
    trunk.eval()
    with torch.no_grad():
        for index in range(len(images)):
            x, target = images[index]
            out = trunk(x[None].to(device))
            grid = out[0].flatten(1).T.double().cpu().numpy()  # (h * w, D)
            cells = cell_labels(target["mask"][None], tuple(out.shape[-2:])).flatten().numpy()
            defective = np.flatnonzero(cells == 1)
            clean = np.flatnonzero(cells == 0)
            rng = np.random.default_rng(seed_for(seed, index))
            clean = rng.choice(clean, min(clean_cells_per_image, len(clean)), replace=False)
            keep = np.r_[defective, clean]
            features.append(grid[keep])
            labels.append(cells[keep].astype(np.int64))
    return np.concatenate(features), np.concatenate(labels)


def run_logme(config, clean_cells_per_image: int = 64, device: str | None = "cpu") -> dict:
    """LogME of the base trunk of fine-tuning ``config`` (a :class:`transfer.config.FinetuneConfig` with
    ``head="segdec"``) on its training fold's cells, with the counts behind it. The trunk is initialised as
    fine-tuning initialises it (the base's weights, or a random one seeded by ``config.seed``)."""
    dev = resolve_device(device)
    fold = run_fold(config, "train")
    images = MaskedImages(fold, config.mean, config.std, image_size=config.image_size, seed=config.seed)
    torch.manual_seed(config.seed)  # the random trunk fine-tuning from scratch would start from
    trunk = build_segdec(
        config.arch, config.base, config.output_stride, config.segdec.head_channels
    ).trunk.to(dev)
    features, labels = trunk_cells(trunk, images, clean_cells_per_image, config.seed, dev)
    return {
        "logme": logme(features, labels),
        "cells": len(labels),
        "defective_cells": int(labels.sum()),
        "images": len(images),
        "dimensions": int(features.shape[1]),
    }


__all__ = ["run_logme", "trunk_cells"]
