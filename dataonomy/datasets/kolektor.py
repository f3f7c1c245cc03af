"""KolektorSDD and KolektorSDD2 readers (the layout is detected).

* KolektorSDD: ``kosNN/PartK.jpg`` with ``kosNN/PartK_label.bmp``, one folder per commutator (``kos01``
  .. ``kos50``), no train/test split. ``root`` is the dataset folder or one ``kosNN`` folder.
* KolektorSDD2: ``{train,test}/NNNNN.png`` with ``NNNNN_GT.png``. ``root`` is the dataset folder or one
  split folder.

Every image has a label image of its size; an image is defective when its label has a defect pixel
(:func:`~dataonomy.datasets.base.load_mask`), so every label is read once, here. ``label`` is the
dataset (``KolektorSDD`` or ``KolektorSDD2``); ``group`` is the item folder (``kos01``) in KolektorSDD
and the label in KolektorSDD2; ``split`` is ``train``/``test`` in KolektorSDD2, None in KolektorSDD.
``classes`` are ``["ok", "defect"]`` and ``target`` the defect flag, as in the ``dagm`` reader. Defect-free
images keep their (empty) label as ``mask``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

from dataonomy.datasets.base import (
    Sample,
    SampleDataset,
    Sampling,
    check_reader_options,
    listed_mask_defect,
    require_dir,
)
from dataonomy.datasets.pairs import list_files, strip_mask_suffix
from dataonomy.datasets.registry import register_dataset
from dataonomy.errors import DataonomyError

KSDD, KSDD2 = "KolektorSDD", "KolektorSDD2"
SPLITS = ("all", "train", "test")
_ITEM_RE = re.compile(r"^kos(\d+)$", re.IGNORECASE)
_SUFFIX = {KSDD: "_label", KSDD2: "_GT"}
_EXPECT = {KSDD: "PartK.jpg with PartK_label.bmp", KSDD2: "NNNNN.png with NNNNN_GT.png"}


def _strict_pairs(folder: Path, layout: str) -> list[tuple[Path, Path]]:
    """(image, label) pairs of one folder; an image without its label, or a label without its image,
    is an error naming the file."""
    suffix = _SUFFIX[layout]
    files, _ = list_files(folder)
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for p in files:
        base = strip_mask_suffix(p.stem, [suffix])
        target, key = (images, p.stem) if base is None else (labels, base)
        if key in target:
            raise DataonomyError(f"{p}: two files for {key} ({target[key].name}) in one {layout} folder")
        target[key] = p
    for key, m in labels.items():
        if key not in images:
            raise DataonomyError(
                f"{m}: label without an image (no {key}.* in {folder}; {layout}: {_EXPECT[layout]})"
            )
    pairs = []
    for key, p in images.items():
        if key not in labels:
            raise DataonomyError(f"{p}: {layout} image without its label {key}{suffix}.* ({_EXPECT[layout]})")
        pairs.append((p, labels[key]))
    return pairs


def _has_suffix_files(folder: Path, suffix: str) -> bool:
    return any(strip_mask_suffix(p.stem, [suffix]) is not None for p in list_files(folder)[0])


def detect_layout(root: Path) -> tuple[str, list[tuple[Path, str | None]]]:
    """(layout, [(folder, group or split)]): the folders to read and what each one is."""
    if _ITEM_RE.match(root.name) and _has_suffix_files(root, _SUFFIX[KSDD]):
        return KSDD, [(root, root.name)]
    items = sorted(
        (d for d in root.iterdir() if d.is_dir() and _ITEM_RE.match(d.name)),
        key=lambda d: (int(_ITEM_RE.match(d.name).group(1)), d.name),
    )
    if items:
        return KSDD, [(d, d.name) for d in items]
    splits = [(root / s, s) for s in ("train", "test") if (root / s).is_dir()]
    if splits and any(_has_suffix_files(d, _SUFFIX[KSDD2]) for d, _ in splits):
        return KSDD2, splits
    if _has_suffix_files(root, _SUFFIX[KSDD2]):
        name = root.name.lower()
        return KSDD2, [(root, name if name in ("train", "test") else None)]
    raise DataonomyError(
        f"{root}: neither KolektorSDD (kosNN/{_EXPECT[KSDD]}) nor KolektorSDD2 "
        f"({{train,test}}/{_EXPECT[KSDD2]}) found"
    )


@register_dataset("kolektor")
class KolektorSDD(SampleDataset):
    """KolektorSDD or KolektorSDD2 as a torchvision dataset (``target`` = defect flag).

    Args:
        root: the dataset folder, one ``kosNN`` folder (KolektorSDD), or one split folder (KolektorSDD2).
        split: ``all``; ``train`` or ``test`` (KolektorSDD2 only: KolektorSDD has no split).
        sampling: :class:`~dataonomy.datasets.base.Sampling`: ``images_per_class`` keeps at most N images,
            seeded (labels are only read for the kept ones); ``skip_bad`` decodes every image and label now
            and drops bad ones with a warning and a count.

    Attributes:
        layout: ``KolektorSDD`` or ``KolektorSDD2``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        sampling: Sampling | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ):
        sampling = sampling or Sampling()
        check_reader_options(split=split, splits=SPLITS)
        root = require_dir(Path(root), "Kolektor root")
        self.layout, folders = detect_layout(root)
        if self.layout == KSDD and split != "all":
            raise DataonomyError(f"--split {split}: KolektorSDD has no train/test split (KolektorSDD2 has)")
        if split != "all":
            if not any(s == split for _, s in folders):
                raise DataonomyError(f"{root}: no KolektorSDD2 '{split}' folder (--split {split})")
            folders = [(d, s) for d, s in folders if s == split]
        label = self.layout
        listed = []
        for folder, name in folders:
            pairs = _strict_pairs(folder, self.layout)
            for image, mask in pairs:
                if self.layout == KSDD:
                    listed.append((image, mask, name, None))
                else:
                    listed.append((image, mask, label, name))
        if not listed:
            raise DataonomyError(f"{root}: no {self.layout} images found")
        samples = []
        for image, mask, group, split_name in sampling.subsample(listed, label):
            defect = listed_mask_defect(
                mask, image, sampling.skip_bad, lambda m: warnings.warn(m, stacklevel=3)
            )
            if defect is None:  # a bad file, reported and skipped (--skip-bad)
                continue
            samples.append(
                Sample(
                    path=image,
                    label=label,
                    target=int(defect),
                    defect=defect,
                    mask=mask,
                    group=group,
                    split=split_name,
                )
            )
        samples = sampling.drop_bad(samples)
        self.split = split
        self._init_defect_set(root, samples, (transform, target_transform))


__all__ = ["KSDD", "KSDD2", "KolektorSDD", "detect_layout"]
