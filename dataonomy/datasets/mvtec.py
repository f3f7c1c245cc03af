"""MVTec AD reader.

Layout: ``<category>/train/good/*.png`` (defect-free training images), ``<category>/test/<type>/*.png``
(``good`` is defect-free, every other type folder is a kind of defect), and
``<category>/ground_truth/<type>/<stem>_mask.png``, one mask per defective test image. ``root`` may be
one category folder or the dataset folder holding every category.

``label`` is the category (``bottle``), ``group`` the category and type (``bottle/broken_large``,
``bottle/good``), ``split`` the folder the image lives in (``train`` or ``test``). ``classes`` are
``["ok", "defect"]`` and ``target`` is the defect flag, as in the ``dagm`` reader. Defect flags come from
the type folders; masks are checked by name and size (header reads) here, decoded only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from dataonomy.datasets.base import (
    IMAGE_EXTENSIONS,
    Sample,
    SampleDataset,
    Sampling,
    check_mask_sizes,
    check_reader_options,
    masks_decide,
    require_dir,
)
from dataonomy.datasets.pairs import list_files
from dataonomy.datasets.registry import register_dataset
from dataonomy.errors import DataonomyError

SPLITS = ("all", "train", "test")
GOOD = "good"
MASK_SUFFIX = "_mask"


def _is_category(folder: Path) -> bool:
    return (folder / "train").is_dir() or (folder / "test").is_dir()


def _by_stem(images: list[Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in images:
        if p.stem in out:
            raise DataonomyError(f"{p}: two images named {p.stem}.* ({out[p.stem].name}) in one folder")
        out[p.stem] = p
    return out


def _masks_of(gt_dir: Path) -> dict[str, Path]:
    """``{image stem: mask}`` for the ``<stem>_mask.<ext>`` files of a ground_truth/<type> folder."""
    masks, _ = list_files(gt_dir)
    out: dict[str, Path] = {}
    for m in masks:
        if not (len(m.stem) > len(MASK_SUFFIX) and m.stem.endswith(MASK_SUFFIX)):
            raise DataonomyError(f"{m}: MVTec AD masks are named <image stem>{MASK_SUFFIX}.png")
        base = m.stem[: -len(MASK_SUFFIX)]
        if base in out:
            raise DataonomyError(f"{m}: a second mask for image {base} (the first is {out[base].name})")
        out[base] = m
    return out


def _read_split(category: Path, split: str) -> list[Sample]:
    split_dir = category / split
    label = category.name
    samples = []
    stray = list_files(split_dir)[0]
    if stray:
        raise DataonomyError(f"{stray[0]}: image outside a type folder (expected {split_dir}/<type>/)")
    type_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir())
    gt_root = category / "ground_truth"
    for type_dir in type_dirs:
        kind = type_dir.name
        defect = kind != GOOD
        if split == "train" and defect:
            raise DataonomyError(f"{type_dir}: MVTec AD train folders hold good images only")
        images = _by_stem(list_files(type_dir)[0])
        masks: dict[str, Path] = {}
        if defect:
            gt_dir = gt_root / kind
            masks = _masks_of(gt_dir) if gt_dir.is_dir() else {}
            for stem, m in masks.items():
                if stem not in images:
                    raise DataonomyError(f"{m}: mask without an image (no {stem}.* in {type_dir})")
        for stem, p in images.items():
            mask = masks.get(stem)
            if defect and mask is None:
                raise DataonomyError(
                    f"{p}: defective image without a mask (expected {gt_root / kind / stem}{MASK_SUFFIX}.png)"
                )
            samples.append(
                Sample(
                    path=p,
                    label=label,
                    target=int(defect),
                    defect=defect,
                    mask=mask,
                    group=f"{label}/{kind}",
                    split=split,
                )
            )
    if split == "test" and gt_root.is_dir():
        # Masks of a defect type with no test folder at all: they name no image.
        for gt_dir in sorted(d for d in gt_root.iterdir() if d.is_dir()):
            masks, _ = list_files(gt_dir)
            if masks and gt_dir.name == GOOD:
                raise DataonomyError(f"{masks[0]}: a mask for a good image (good images have no masks)")
            if masks and not (split_dir / gt_dir.name).is_dir():
                raise DataonomyError(
                    f"{masks[0]}: mask without an image (no {split_dir / gt_dir.name} folder of defective images)"
                )
    return samples


@register_dataset("mvtec")
class MVTecAD(SampleDataset):
    """MVTec AD (and anything laid out like it) as a torchvision dataset (``target`` = defect flag).

    Args:
        root: one category folder (holding ``train/``, ``test/``, ``ground_truth/``) or the dataset
            folder holding the category folders.
        classes: categories to read (``["bottle", "cable"]``; what ``--classes`` passes); default all.
        split: ``all``, ``train`` (``train/good``) or ``test`` (``test/<type>``).
        sampling: :class:`~dataonomy.datasets.base.Sampling`: ``images_per_class`` keeps at most N images
            per category, seeded; ``skip_bad`` decodes every image and mask now and drops bad ones with a
            warning and a count.
    """

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str] | None = None,
        split: str = "all",
        sampling: Sampling | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ):
        sampling = sampling or Sampling()
        check_reader_options(split=split, splits=SPLITS)
        root = require_dir(Path(root), "MVTec AD root")
        if _is_category(root):
            found = [root]
        else:
            found = sorted(d for d in root.iterdir() if d.is_dir() and _is_category(d))
            if not found:
                raise DataonomyError(
                    f"{root}: no MVTec AD category folders found (<category>/train/good, <category>/test/<type>)"
                )
        if classes is not None:
            wanted = [str(c) for c in classes]
            missing = sorted(set(wanted) - {d.name for d in found})
            if missing:
                raise DataonomyError(f"--classes: {', '.join(missing)} not found under {root}")
            found = [d for d in found if d.name in set(wanted)]
        samples = []
        for category in found:
            read = []
            for name in ("train", "test"):
                if split not in ("all", name):
                    continue
                if not (category / name).is_dir():
                    if split == name:
                        raise DataonomyError(f"{category / name}: folder not found (--split {split})")
                    continue
                read += _read_split(category, name)
            samples += sampling.subsample(read, category.name)
        if not samples:
            raise DataonomyError(
                f"{root}: no images found for split '{split}' (extensions: {', '.join(IMAGE_EXTENSIONS)})"
            )
        check_mask_sizes(samples)
        samples = sampling.drop_bad(masks_decide(samples, root, sampling.skip_bad))
        self.split = split
        self.categories = [d.name for d in found]
        self._init_defect_set(root, samples, (transform, target_transform))


__all__ = ["MVTecAD"]
