"""``segdec``: the segmentation-decision model (:mod:`transfer.segdec`): a defect map at 1/output_stride of the
image and an image decision, in one pass over each image at its own size; the defect probability is
``sigmoid(image_logit)``, the map's ``sigmoid(seg_logits)`` upsampled to the image."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from dataonomy.errors import DataonomyError
from dataonomy.option_groups import flat_names
from dataonomy.progress import progress as show_progress
from transfer.data import scaled_size, size_batches
from transfer.head_options import SegdecOptions
from transfer.heads.base import Head, balanced_indices
from transfer.segdec import OUTPUT_STRIDES, SegDecOutput, check_map_stride, saved_segdec, upsample_map
from transfer.segdec_task import MaskedImages, cell_labels


def check_output_stride(output_stride: int) -> None:
    if output_stride not in OUTPUT_STRIDES:
        raise DataonomyError(
            f"--output-stride {output_stride}: must be one of {', '.join(map(str, OUTPUT_STRIDES))}"
        )


#: The ONNX outputs of a segdec model: the image decision's logit and the defect map's logits.
SEGDEC_OUTPUTS = ("score_logit", "map_logits")


class SegdecHead(Head):
    name = "segdec"
    record_fields = ("output_stride", "head_channels")
    # which image score validation chose (SegDecTask.image_rules); runs saved before the choice: the decision head
    record_defaults = {"image_score": "decision", "map_stride": None}  # None: the map at the output stride
    image_input = "native"
    localize_modes = ("segmap",)
    onnx_outputs = SEGDEC_OUTPUTS
    onnx_axes = {
        "image": {0: "batch", 2: "height", 3: "width"},
        "score_logit": {0: "batch"},
        "map_logits": {0: "batch", 2: "map_height", 3: "map_width"},
    }
    onnx_meaning = (
        "score_logit (N,): the image's defect probability is sigmoid(score_logit) (the decision head's logit, or the "
        "map's highest where transfer.image_score is map); map_logits (N, 1, h, w): "
        "sigmoid gives the defect map at 1/map_stride of the image (the output stride without a decoder), upsample "
        "it bilinearly to the image"
    )
    maps_in_one_pass = True
    native_resolution = True
    # --output-stride and the group config.segdec
    options = ("output_stride", *flat_names(SegdecOptions))

    def check_config(self, config) -> None:
        from transfer.segdec_task import PIXEL_WEIGHTINGS

        own = config.segdec
        check_output_stride(config.output_stride)
        check_map_stride(own.map_stride, config.output_stride)
        if own.head_channels < 1:
            raise DataonomyError(f"--head-channels {own.head_channels}: must be at least 1")
        if own.crop_size is not None and own.crop_size < config.output_stride:
            raise DataonomyError(f"--crop-size {own.crop_size}: must be at least --output-stride")
        if own.pixel_weighting not in PIXEL_WEIGHTINGS:
            raise DataonomyError(
                f"--pixel-weighting '{own.pixel_weighting}': must be one of {', '.join(PIXEL_WEIGHTINGS)}"
            )
        for option, value in (
            ("--seg-loss-weight", own.seg_loss_weight), ("--image-loss-weight", own.image_loss_weight),
        ):  # fmt: skip
            if value < 0:
                raise DataonomyError(f"{option} {value}: must not be negative")

    def build(self, record, weights: dict) -> nn.Module:
        return saved_segdec(
            record.arch, record.output_stride, record.head_channels, weights, str(record.path),
            score_from_map=record.head_fields.get("image_score") == "map",
            map_stride=record.head_fields.get("map_stride"),
        )  # fmt: skip

    def defect_probability(self, output) -> torch.Tensor:
        return decision_probability(output)

    def make_task(self, config):
        """Fine-tuning from the masks (:class:`transfer.segdec_task.SegDecTask`)."""
        from transfer.segdec_task import SegDecTask

        return SegDecTask(config)

    def score_and_map(self, outputs, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        out = SegDecOutput(*outputs)
        return decision_probability(out), upsample_map(out.seg_logits, size)

    def examples(self, loaded, fold, n: int) -> list[torch.Tensor]:
        """One-image batches: each image at its own size, or its longer side at the training size."""
        from torchvision.transforms import v2

        out = []
        for i in balanced_indices(np.asarray(fold.targets), n):
            x = v2.functional.to_image(fold[int(i)][0])
            x = v2.functional.resize(
                x, list(scaled_size(*x.shape[-2:], loaded.record.input_size)), antialias=True
            )
            out.append(loaded.normalize(x[None]))
        return out


def decision_probability(output) -> torch.Tensor:
    """A segdec output's image decisions as defect probabilities, float32 (B,)."""
    return torch.sigmoid(output.image_logit.float())


def map_cells(
    loaded, dataset, batch_size: int = 8, num_workers: int = 0, progress: bool | None = None
) -> dict:
    """The defect-map cells of every image of a defect set (with masks), as a ``decision = "cell"`` run is
    thresholded: ``scores`` (probabilities) and ``labels`` of the labelled cells, ``image`` (each cell's image
    index), and ``image_scores`` (each image's highest map value). Images are batched by size."""
    record, model = loaded.record, loaded.model
    device = next(model.parameters()).device
    images = MaskedImages(dataset, record.mean, record.std, image_size=record.input_size)
    batches = size_batches(images.sizes(), batch_size)
    loader = DataLoader(images, batch_sampler=batches, num_workers=num_workers)
    scores, labels, owner = [], [], []
    image_scores = np.zeros(len(images), dtype=np.float64)
    with torch.no_grad():
        for (x, y), batch in show_progress(
            zip(loader, batches, strict=True), desc="map cells", weights=[len(b) for b in batches],
            enabled=progress,
        ):  # fmt: skip
            seg = model(x.to(device)).seg_logits.float().cpu()
            probs = torch.sigmoid(seg).flatten(1)
            cells = cell_labels(y["mask"], tuple(seg.shape[-2:])).flatten(1)
            image_scores[batch] = probs.amax(1).double().numpy()
            for index, p, label in zip(batch, probs, cells, strict=True):
                keep = label >= 0
                scores.append(p[keep].double().numpy())
                labels.append(label[keep].long().numpy())
                owner.append(np.full(int(keep.sum()), index, dtype=np.int64))
    return {
        "scores": np.concatenate(scores),
        "labels": np.concatenate(labels),
        "image": np.concatenate(owner),
        "image_scores": image_scores,
    }


def segdec_scores(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image scores (B,), defect maps (B, H, W) at the input's size) of normalised images, in one pass."""
    with torch.no_grad():
        out = model(images)
    return decision_probability(out), upsample_map(out.seg_logits, tuple(images.shape[-2:]))
