"""``classify``: a whole-image two-class classifier (:class:`transfer.models.ClassifierNet`), its images resized
to the run's input size; the defect probability is ``softmax(logits)[:, 1]``."""

from __future__ import annotations

import torch
from torch import nn

from dataonomy.errors import DataonomyError
from dataonomy.option_groups import flat_names
from transfer.head_options import PatchOptions
from transfer.heads.base import Head
from transfer.localize import two_class_probability


class ClassifyHead(Head):
    name = "classify"
    image_input = "resized"
    localize_modes = ("batched", "loop", "dense")
    onnx_meaning = "logits; the defect probability is softmax(logits)[:, 1]"
    # --patches trains it on full-resolution patches (the ``patch`` kind once saved): config.patch
    options = tuple(flat_names(PatchOptions))

    def check_config(self, config) -> None:
        patch = config.patch
        if patch.patches:
            if patch.patch_size < 1 or patch.patch_stride < 1:
                raise DataonomyError("--patch-size/--patch-stride: must be at least 1")
            if not 0 < patch.patch_defect_fraction <= 1:
                raise DataonomyError(
                    f"--patch-defect-fraction {patch.patch_defect_fraction}: must be in (0, 1]"
                )

    def build(self, record, weights: dict) -> nn.Module:
        from transfer.models import get_model, load_weights

        model = get_model(record.arch, record.num_classes, record.dropout, aux_logits=False, init=False)
        load_weights(model, weights, str(record.path), record.arch)
        return model

    def defect_probability(self, output) -> torch.Tensor:
        return two_class_probability(output)

    def make_task(self, config):
        """Fine-tuning a two-class classifier on whole images or patches (:class:`transfer.tasks.FinetuneTask`),
        its validation scored with this kind's :meth:`defect_probability`."""
        from transfer.tasks import FinetuneTask

        return FinetuneTask(config, self)
