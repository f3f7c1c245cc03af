"""Any ``class_name/*.{png,jpg,...}`` tree (torchvision's ImageFolder convention)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from torchvision.datasets.folder import find_classes, make_dataset

from dataonomy.datasets.base import (
    IMAGE_EXTENSIONS,
    Sample,
    SampleDataset,
    require_dir,
    seeded_subsample,
    verify_samples,
)
from dataonomy.datasets.registry import register_dataset
from dataonomy.errors import DataonomyError


@register_dataset("folder")
class ImageFolderDataset(SampleDataset):
    """A folder of class folders.

    Args:
        root: the folder holding one sub-folder per class.
        defect_classes: class folder names that hold defective images (e.g. ``["defect", "NG"]``);
            when given, every sample gets a defect flag.
        images_per_class: sample at most N images per class, seeded.
        skip_bad: decode every image now and drop bad ones with a warning and a count.
    """

    def __init__(
        self,
        root: str | Path,
        defect_classes: Sequence[str] | None = None,
        images_per_class: int | None = None,
        seed: int = 0,
        skip_bad: bool = False,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        image_mode: str = "RGB",
    ):
        root = require_dir(Path(root), "image folder root")
        try:
            classes, class_to_idx = find_classes(str(root))
        except FileNotFoundError as exc:
            raise DataonomyError(f"{root}: {exc}") from None
        if defect_classes is not None:
            unknown = sorted(set(defect_classes) - set(classes))
            if unknown:
                raise DataonomyError(f"--defect-classes: '{unknown[0]}' is not a class folder of {root}")
        try:
            pairs = make_dataset(str(root), class_to_idx, extensions=IMAGE_EXTENSIONS)
        except FileNotFoundError as exc:
            raise DataonomyError(f"{root}: {exc}") from None
        by_class: dict[int, list[str]] = {}
        for path, target in pairs:
            by_class.setdefault(target, []).append(path)
        samples = []
        for target, cls in enumerate(classes):
            for p in seeded_subsample(by_class.get(target, []), images_per_class, seed, cls):
                defect = None if defect_classes is None else cls in defect_classes
                samples.append(Sample(path=Path(p), label=cls, target=target, defect=defect))
        if skip_bad:
            samples = verify_samples(samples, True, lambda m: warnings.warn(m, stacklevel=3))
        super().__init__(
            root,
            samples,
            classes,
            transform=transform,
            target_transform=target_transform,
            image_mode=image_mode,
        )
