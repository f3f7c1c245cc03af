"""``patch``: a two-class classifier trained on patches; an image is as defective as its most defective patch
on the localisation grid (so a patch-level threshold decides images too)."""

from __future__ import annotations

import numpy as np
import torch

from transfer.heads.base import balanced_indices
from transfer.heads.classify import ClassifyHead
from transfer.localize import patch_grid, two_class_probability


class PatchHead(ClassifyHead):
    name = "patch"
    record_fields = ("patch_size", "patch_stride")
    image_input = "as_is"
    finetune_choice = False  # trained by --head classify --patches

    def examples(self, loaded, fold, n: int) -> torch.Tensor:
        """Patches of the fold, by the fine-tuning's own patch rule."""
        from transfer.data import PatchDataset

        record = loaded.record
        patches = PatchDataset(
            fold, record.patch_size, record.patch_stride, loaded.config.patch.patch_defect_fraction
        )
        chosen = balanced_indices(np.asarray(patches.targets), n)
        return loaded.normalize(torch.stack([patches[int(i)][0] for i in chosen]))

    def score_images(self, loaded, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        record = loaded.record
        return max_patch_scores(loaded.model, images, record.patch_size, record.patch_stride, batch_size)


def max_patch_scores(
    model, images: torch.Tensor, patch_size: int, stride: int, batch_size: int = 256
) -> torch.Tensor:
    """Each image's highest defect probability over its patches on the localisation grid.

    ``images``: normalised (N, 3, H, W) on the model's device.
    """
    n, _, height, width = images.shape
    ys, xs = patch_grid(height, width, patch_size, stride)
    windows = images.unfold(2, patch_size, 1).unfold(3, patch_size, 1)  # (N, C, H', W', p, p), a view
    rows, cols = np.meshgrid(ys, xs, indexing="ij")
    rows, cols = torch.as_tensor(rows.ravel()), torch.as_tensor(cols.ravel())
    out = torch.empty(n, device=images.device)
    with torch.no_grad():
        for i in range(n):
            probs = []
            for begin in range(0, rows.numel(), batch_size):
                r, c = rows[begin : begin + batch_size], cols[begin : begin + batch_size]
                patches = windows[i][:, r, c].permute(1, 0, 2, 3).contiguous()  # (B, C, p, p)
                probs.append(two_class_probability(model(patches)))
            out[i] = torch.cat(probs).max()
    return out
