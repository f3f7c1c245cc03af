"""The fine-tuning options that one kind of head reads, as option groups of
:class:`transfer.config.FinetuneConfig` (``config.segdec.crop_size``, ``config.patch.patch_size``).

They sit outside :mod:`transfer.heads` so that the command line builds its options without loading torch; the
head that reads a group names it (:attr:`transfer.heads.Head.options`) and checks it (``check_config``).
``--output-stride`` is the config's own: the segdec head and the probe both cut the trunk there.
"""

from __future__ import annotations

from dataclasses import dataclass

from dataonomy.cli_options import opt

# The --help sections of the groups.
SEGDEC, PATCHES = "segdec head", "Classifier on patches (--patches)"


@dataclass(kw_only=True)
class SegdecOptions:
    """What the segdec head's model, crops and loss are (see :mod:`transfer.segdec_task`)."""

    head_channels: int = opt(64, "segdec: width of the segmentation head.", panel=SEGDEC)
    map_stride: int | None = opt(
        None,
        "segdec: the defect map's stride (4 or 8): below --output-stride a light decoder adds the trunk's features "
        "of each finer stride (skip connections, U-Net/FPN style). Default: the map at --output-stride.",
        panel=SEGDEC,
    )
    crop_size: int | None = opt(
        None,
        "segdec: train on random crops of this side (a defective image's crop holds defect pixels); validation "
        "and test see whole images. Default: whole images.",
        panel=SEGDEC,
    )
    pixel_weighting: str = opt(
        "uniform",
        "segdec: uniform (every mask pixel counts the same) or distance (pixels weigh (distance to the label's "
        "border / its largest)^2, for loose labels such as DAGM's ellipses).",
        panel=SEGDEC,
    )
    seg_loss_weight: float = opt(1.0, "segdec: weight of the pixel loss.", panel=SEGDEC)
    image_loss_weight: float = opt(1.0, "segdec: weight of the image (decision) loss.", panel=SEGDEC)


@dataclass(kw_only=True)
class PatchOptions:
    """The image classifier trained on full-resolution patches instead of whole images (the ``patch`` kind)."""

    patches: bool = opt(False, "Train on full-resolution patches (for localisation).", panel=PATCHES)
    patch_size: int = opt(64, "Patch side.", panel=PATCHES)
    patch_stride: int = opt(32, "Step between patches.", panel=PATCHES)
    patch_defect_fraction: float = opt(
        0.05,
        "A patch is defective when at least this share of its pixels is in the mask.",
        panel=PATCHES,
    )


__all__ = ["PATCHES", "SEGDEC", "PatchOptions", "SegdecOptions"]
