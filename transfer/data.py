"""Training data: the manifest's source classes, defect-set folds (any layout) and patches, seeded augmentation.

Augmentation is seeded per (run seed, epoch, sample index), not by the process's random state: a sample gets the
same crop, flip and noise whichever process or data-loader worker loads it, and whether or not the run was
interrupted and resumed. That is what makes a resumed run, or a run on W processes, reproduce a single
uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm.auto import tqdm

from dataonomy.datasets import (
    DAGM,
    ImageNet,
    SampleDataset,
    Sampling,
    SplitSpec,
    listed_split,
    open_image,
    split_samples,
    stratified_folds,
)
from dataonomy.datasets.options import DefectLayout, open_dataset
from dataonomy.errors import DataonomyError
from dataonomy.io import file_sha256, read_json_file
from dataonomy.manifest import SCHEMA as MANIFEST_SCHEMA
from transfer.localize import patch_grid


def seed_for(*keys: int) -> int:
    """A 63-bit seed derived from integer ``keys`` (independent streams for different keys)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> 1)


# --------------------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------------------


def scaled_size(height: int, width: int, longer: int | None) -> tuple[int, int]:
    """(height, width) with the longer side scaled to ``longer``, the aspect ratio kept (the shorter side truncated,
    as torchvision's ``Resize(size=None, max_size=longer)``, and at least 1 pixel); the size unchanged when
    ``longer`` is None. The segdec policy for ``--image-size``: never distort."""
    if longer is None:
        return height, width
    if height >= width:
        return longer, max(1, int(longer * width / height))
    return max(1, int(longer * height / width)), longer


def size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Positions 0..n-1 in batches of at most ``batch_size`` whose images share one size: each size's positions in
    order, sizes in order of first appearance. Evaluation batches images this way, so that no image is padded or
    resized to fit another and a score never depends on its batch."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for position, size in enumerate(sizes):
        by_size.setdefault(tuple(size), []).append(position)
    return [
        positions[begin : begin + batch_size]
        for positions in by_size.values()
        for begin in range(0, len(positions), batch_size)
    ]


def read_manifest_wnids(path: str | Path) -> list[str]:
    """The wnids of a manifest's ``selected`` classes, in manifest order.

    Only what pretraining needs is read and checked: the schema, ``source.dataset`` (must be ``imagenet`` where
    given) and ``selected[*].wnid`` (non-empty, unique).
    """
    path = Path(path)
    manifest = read_json_file(
        path, f"--manifest {path}: not a readable JSON manifest", missing=f"--manifest {path}: file not found"
    )
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        schema = manifest.get("schema") if isinstance(manifest, dict) else None
        raise DataonomyError(f"--manifest {path}: schema is {schema!r}, expected {MANIFEST_SCHEMA!r}")
    source = manifest.get("source", {})
    dataset = source.get("dataset") if isinstance(source, dict) else None
    if dataset is not None and dataset != "imagenet":
        raise DataonomyError(
            f"--manifest {path}: source.dataset is {dataset!r}; pretraining reads 'imagenet' pools"
        )
    selected = manifest.get("selected")
    if not isinstance(selected, list) or not selected:
        raise DataonomyError(f"--manifest {path}: 'selected' is missing or empty")
    wnids = []
    for i, entry in enumerate(selected):
        wnid = entry.get("wnid") if isinstance(entry, dict) else None
        if not isinstance(wnid, str) or not wnid:
            raise DataonomyError(f"--manifest {path}: selected[{i}] has no wnid")
        if wnid in wnids:
            raise DataonomyError(f"--manifest {path}: selected[{i}].wnid {wnid} appears twice")
        wnids.append(wnid)
    return wnids


# --------------------------------------------------------------------------------------------------------------
# Seeded augmentation
# --------------------------------------------------------------------------------------------------------------


class SeededTransform(Dataset):
    """``dataset[i]`` with ``transform`` applied under a random state seeded by (seed, epoch, i).

    Call :meth:`set_epoch` before each epoch (data-loader workers receive a fresh copy of this object per epoch).
    An index past the end, ``i + r * len(dataset)``, is sample ``i`` on its ``r``-th pass within one epoch (epochs
    longer than the dataset, :class:`transfer.resumable.ResumableSampler`): same image, its own augmentation.
    """

    def __init__(self, dataset: Dataset, transform: Callable, seed: int):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index % len(self.dataset)]
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed also queues a (costly) lazy CUDA seeding per call.
            torch.default_generator.manual_seed(seed_for(self.seed, self.epoch, index))
            image = self.transform(image)
        return image, target


def rot90(image: torch.Tensor, k: int) -> torch.Tensor:
    """``image`` (..., H, W) rotated by k * 90 degrees, keeping its tv_tensors type (Image, Mask)."""
    if not k % 4:
        return image
    rotated = torch.rot90(image.as_subclass(torch.Tensor), k, dims=(-2, -1))
    return tv_tensors.wrap(rotated, like=image) if isinstance(image, tv_tensors.TVTensor) else rotated


class RandomRot90:
    """Rotate an image tensor (..., H, W) by a random multiple of 90 degrees (textures have no up)."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return rot90(image, int(torch.randint(4, ()).item()))


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def pretrain_transforms(image_size: int, mean, std, augment: bool) -> tuple[Callable, Callable]:
    """(train, eval) transforms of PIL images for pretraining: random resized crops and flips, or the standard
    resize-to-1/0.875 and centre crop (also the training transform when ``augment`` is off)."""
    evaluate = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(round(image_size / 0.875), antialias=True),
            v2.CenterCrop(image_size),
            *_normalize(mean, std),
        ]
    )
    if not augment:
        return evaluate, evaluate
    train = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(image_size, antialias=True),
            v2.RandomHorizontalFlip(),
            *_normalize(mean, std),
        ]
    )
    return train, evaluate


def texture_transforms(image_size: int | None, mean, std, augment: bool) -> tuple[Callable, Callable]:
    """(train, eval) transforms for DAGM images (PIL) or patches (uint8 tensors): ``image_size`` resizes (None:
    keep the size, for patches); augmentation suited to textures: flips, 90-degree rotations,
    brightness/contrast and Gaussian noise."""
    resize = [v2.Resize((image_size, image_size), antialias=True)] if image_size is not None else []
    evaluate = v2.Compose([v2.ToImage(), *resize, *_normalize(mean, std)])
    if not augment:
        return evaluate, evaluate
    train = v2.Compose(
        [
            v2.ToImage(),
            *resize,
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            RandomRot90(),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
            v2.ToDtype(torch.float32, scale=True),
            v2.GaussianNoise(sigma=0.02),
            v2.Normalize(list(mean), list(std)),
        ]
    )
    return train, evaluate


# --------------------------------------------------------------------------------------------------------------
# Source pool for pretraining
# --------------------------------------------------------------------------------------------------------------


def pretrain_folds(
    source_root: str | Path,
    wnids: Sequence[str],
    val_fraction: float,
    images_per_class: int | None,
    seed: int,
    manifest: str | Path = "",
) -> tuple[SampleDataset, SampleDataset]:
    """(train, val) datasets of the ``imagenet`` reader restricted to ``wnids`` (targets = index in sorted wnids).

    Validation is the pool's labelled ``val`` split where it has one, else a seeded, per-class ``val_fraction``
    of the training images. ``images_per_class`` caps both (a quick run reads a seeded sample of each class).
    """
    try:
        sampling = Sampling(images_per_class=images_per_class, seed=seed)
        train = ImageNet(source_root, classes=list(wnids), sampling=sampling)
    except DataonomyError as exc:
        raise DataonomyError(
            f"--source-root {source_root} does not hold the classes of --manifest {manifest}: {exc}"
        ) from None
    if train.layout == "tiny":
        val = ImageNet(source_root, split="val", classes=list(wnids), sampling=sampling)
        return train, val
    folds = stratified_folds(train.samples, {"train": 1 - val_fraction, "val": val_fraction}, seed)
    make = lambda samples: SampleDataset(train.root, samples, train.classes, train.class_names)  # noqa: E731
    return make(folds["train"]), make(folds["val"])


# --------------------------------------------------------------------------------------------------------------
# Defect data in any layout: folds, images and patches
# --------------------------------------------------------------------------------------------------------------

# The defect-set readers the transfer commands take (--format); each yields defect flags and masks.
DEFECT_FORMATS = ("dagm", "mvtec", "kolektor", "pairs", "folder")


@dataclass(kw_only=True)
class DefectData(DefectLayout):
    """Where a defect set lives and how it is laid out: ``--data ROOT --format F`` and the layout's options
    (:class:`transfer.stage_config.DefectLayout`)."""

    root: str = dataclasses.field(kw_only=False)
    format: str = dataclasses.field(default="dagm", kw_only=False)

    def __post_init__(self):
        if self.format not in DEFECT_FORMATS:
            raise DataonomyError(f"--format '{self.format}': must be one of {', '.join(DEFECT_FORMATS)}")
        if self.defect_classes is not None:
            self.defect_classes = tuple(self.defect_classes)

    def reader_options(self) -> dict:
        """The options set (not None, not False), as the reader's keyword arguments."""
        return self.layout_options()

    def same_set(self, other: DefectData) -> bool:
        """Whether ``other`` names the same files the same way (then a run's folds apply to it)."""
        return self.format == other.format and Path(self.root).resolve() == Path(other.root).resolve()


def defect_fold(
    data: DefectData,
    split: str | SplitSpec,
    classes: Sequence[str] | None = None,
    skip_bad: bool = False,
) -> SampleDataset:
    """One fold of a defect set, as fine-tuning, evaluation, localisation and export read it (RGB PIL images).

    ``split`` is the fold's name or a :class:`~dataonomy.datasets.splits.SplitSpec` (fold, fractions, K-fold
    and seed of the cut; a name is ``SplitSpec(split=name)``). The cut is
    :func:`dataonomy.datasets.split_samples`'s, the same for every layout: the dataset's own train/test split
    where it has one (DAGM's Train/Test, MVTec's train/test, KolektorSDD2's), else seeded, stratified parts of
    every image (``test_fraction``, or ``folds``/``fold``). Every sample's ``target`` is its defect flag;
    ``group`` names the rows of per-group tables (DAGM class, MVTec category/type, Kolektor item).
    """
    spec = SplitSpec.of(split)
    options = data.reader_options()
    if data.format == "dagm":  # DAGM's reader cuts its own folds (and rasterises 2007-layout ellipses)
        if spec.split_lists is not None:
            raise DataonomyError("--split-lists: a DAGM set has its own Train/Test split (or use --folds)")
        return DAGM(data.root, classes=classes, split=spec, sampling=Sampling(skip_bad=skip_bad), **options)
    whole = open_dataset(data.format, data.root, classes=classes, skip_bad=skip_bad, **options)
    unflagged = [s for s in whole.samples if s.defect is None]
    if unflagged:
        hint = (
            " (name them with --defect-classes, or put masks beside the images)"
            if data.format == "folder"
            else ""
        )
        raise DataonomyError(
            f"--data {data.root}: {len(unflagged)} images have no defect flag (first: {unflagged[0].path}); "
            f"fine-tuning needs to know which images are defective{hint}"
        )
    samples = [
        s if s.target == int(s.defect) else dataclasses.replace(s, target=int(s.defect))
        for s in whole.samples
    ]

    def read(which: str) -> list:
        return samples if which == "all" else [s for s in samples if s.split == which]

    notes = list(whole.notes)
    if spec.split_lists is not None:
        chosen, unlisted = listed_split(samples, spec)
        if unlisted:
            notes.append(f"{unlisted} images are in none of --split-lists {spec.split_lists}: left out")
    else:
        chosen = split_samples(read, spec, own_split=any(s.split for s in samples))
    split = spec.split
    if not chosen:
        raise DataonomyError(f"--data {data.root}: no images in the '{split}' fold ({data.format} layout)")
    dataset = SampleDataset(whole.root, chosen, ["ok", "defect"], notes=notes)
    dataset.split = split
    return dataset


def one_kind_error(
    config, fold: str, n_defective: int, n: int, what: str, train: SampleDataset
) -> DataonomyError:
    """The error for a training or validation fold of one kind only (all defective or all clean); it says when
    the set's own split is why (MVTec AD's train split holds good images only)."""
    hint = ""
    if not config.split.has_test_fold() and any(s.split for s in train.samples):
        hint = (
            f"; the {config.format} set's own train split is used: pool all its images into seeded folds with "
            "--folds K or --test-fraction F"
        )
    return DataonomyError(
        f"--data {config.data}: the {fold} fold has {n_defective} defective of {n} {what}; "
        f"fine-tuning needs both defective and clean examples{hint}"
    )


def run_fold(
    config,
    split: str,
    data: DefectData | None = None,
    skip_bad: bool = False,
    instead: str = "--split val",
) -> SampleDataset:
    """``split`` of the defect set a fine-tuning run (its :class:`transfer.config.FinetuneConfig`) names, cut as
    the run cut it (its folds, fractions and split seed); ``split`` of another set (``data``) as that set has it
    (its own test split for ``test``). ``instead`` is what the error suggests when the run has no test fold."""
    # The run's own files (read with the layout options given now, if any) keep the run's cut.
    same_set = data is None or config.defect_data().same_set(data)
    try:
        spec = config.split.spec(split, config.seed, own_cut=same_set)
        fold = defect_fold(
            config.defect_data() if data is None else data, spec, config.split.classes, skip_bad
        )
        defective_train = getattr(config, "defective_train", None)
        if split == "train" and same_set and defective_train is not None:
            fold = keep_defective(fold, defective_train, spec.seed, f"--defective-train {defective_train}")
        return fold
    except DataonomyError as exc:
        no_test = same_set and split == "test" and not config.split.has_test_fold()
        if no_test and ("no DAGM images found" in str(exc) or "no images in the" in str(exc)):
            raise DataonomyError(
                f"--split test: the run was fine-tuned on all of {config.data} (no --test-fraction or --folds), so "
                f"it has no test fold there; pass --data with a set that has its own test split, or {instead}"
            ) from None
        raise


_DEFECTIVE_STREAM = 0x5EED  # the choice's own random stream, apart from the split's


def keep_defective(fold: SampleDataset, n: int, seed: int, option: str) -> SampleDataset:
    """``fold`` with only ``n`` of its defective images (every clean one kept, order unchanged): the first ``n``
    of a permutation seeded by ``seed`` over the defective images sorted by path, so a smaller ``n`` keeps a
    subset of a larger one's and every run cut with the same seed trains on the same images."""
    defective = sorted((s for s in fold.samples if s.target == 1), key=lambda s: str(s.path))
    if n > len(defective):
        raise DataonomyError(f"{option}: the training fold has only {len(defective)} defective images")
    order = np.random.default_rng(seed_for(seed, _DEFECTIVE_STREAM)).permutation(len(defective))
    kept = {str(defective[i].path) for i in order[:n]}
    fold.samples = [s for s in fold.samples if s.target == 0 or str(s.path) in kept]
    return fold


# --------------------------------------------------------------------------------------------------------------
# Which images a run has seen, by content
# --------------------------------------------------------------------------------------------------------------

IMAGE_HASH = "sha256"  # of each image file's bytes: what identifies an image across copies of a set


def seen_images(folds: dict[str, SampleDataset]) -> dict:
    """What a fine-tuning run stores in ``best.pt`` as ``seen_images``: the content hashes of its ``train`` and
    ``val`` images (sorted, unique). Paths would not do: another copy of the same set, or a set whose own
    split differs from the run's folds (``--folds``, ``--test-fraction`` pool Train and Test), names the same
    images by other paths."""
    out: dict = {"hash": IMAGE_HASH}
    for name in ("train", "val"):
        out[name] = sorted({file_sha256(s.path) for s in folds[name].samples})
    return out


def training_overlap(seen: dict | None, paths: Sequence[str | Path]) -> dict:
    """How many of ``paths`` (the images about to be evaluated) a run was trained or validated on, by content.

    ``seen``: the run's :func:`seen_images` (its ``ModelRecord.seen_images``; None when it recorded none).
    Returns ``{"checked": True, "images", "train", "val", "first"}`` (``first``: the first such path, or None),
    or ``{"checked": False, "images", "reason"}`` for a run that recorded no hashes.
    """
    if not isinstance(seen, dict) or seen.get("hash") != IMAGE_HASH:
        return {
            "checked": False,
            "images": len(paths),
            "reason": "the run's best.pt records no image hashes (fine-tuned before they were recorded)",
        }
    train, val = set(seen.get("train", ())), set(seen.get("val", ()))
    counts, first = {"train": 0, "val": 0}, None
    for path in paths:
        digest = file_sha256(path)
        fold = "train" if digest in train else "val" if digest in val else None
        if fold is not None:
            counts[fold] += 1
            first = first or str(path)
    return {"checked": True, "images": len(paths), **counts, "first": first}


def check_overlap(overlap: dict, what: str, allow: bool) -> None:
    """Refuse to score held-out images (``what``: e.g. "the test split of DATA") that the run was trained or
    validated on; with ``allow`` (``--allow-overlap``) warn instead. The counts go into the report either way."""
    if not overlap.get("checked"):
        return
    n = overlap["train"] + overlap["val"]
    if n == 0:
        return
    message = (
        f"{what}: {overlap['train']} of its {overlap['images']} images were training images of the run and "
        f"{overlap['val']} validation images (same file content; first: {overlap['first']})"
    )
    if not allow:
        raise DataonomyError(
            f"{message}; its metrics would not be held-out ones: evaluate images the run has not seen, or pass "
            "--allow-overlap to go on with a warning"
        )
    overlap["warning"] = message
    warnings.warn(message + "; its metrics are not held-out ones", stacklevel=3)


class PatchDataset(Dataset):
    """Full-resolution ``patch_size`` crops of a defect-set fold on the localisation grid (:func:`patch_grid`).

    A patch is defective (target 1) when at least ``defect_fraction`` of its pixels are in the image's mask,
    clean (0) when none are; patches in between are left out, or with ``every_patch`` kept with target 1 and
    flagged in ``ambiguous`` (validation: an image's score is its highest patch over the whole grid, as
    :func:`transfer.evaluate.image_scores` scores test images, while patch metrics skip the ambiguous ones).
    Images are decoded once and kept in memory (8-bit, one channel for gray images); ``patches[i]`` is
    ``(image index, top, left)``.
    """

    def __init__(
        self,
        images: SampleDataset,
        patch_size: int,
        stride: int,
        defect_fraction: float,
        every_patch: bool = False,
    ):
        self.images, self.patch_size = images, patch_size
        self.pixels: list[np.ndarray] = []
        patches, targets, groups, ambiguous = [], [], [], []
        for i, sample in enumerate(tqdm(images.samples, desc="reading patches", disable=None, leave=False)):
            im = open_image(sample.path)
            im = im if im.mode in ("L", "RGB") else im.convert("RGB")
            pixels = np.asarray(im)
            height, width = pixels.shape[:2]
            if patch_size > min(height, width):
                raise DataonomyError(
                    f"--patch-size {patch_size}: larger than image {sample.path} ({width}x{height})"
                )
            mask = images.mask(i) if sample.defect else None
            ys, xs = patch_grid(height, width, patch_size, stride)
            for y in ys:
                for x in xs:
                    fraction = (
                        0.0 if mask is None else float(mask[y : y + patch_size, x : x + patch_size].mean())
                    )
                    unsure = 0 < fraction < defect_fraction
                    if unsure and not every_patch:
                        continue
                    patches.append((i, int(y), int(x)))
                    targets.append(int(fraction > 0))
                    groups.append(sample.group or sample.label)
                    ambiguous.append(unsure)
            self.pixels.append(pixels)
        self.patches, self.targets, self.groups = patches, targets, groups
        self.ambiguous = np.asarray(ambiguous, dtype=bool)

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int):
        i, y, x = self.patches[index]
        crop = torch.from_numpy(self.pixels[i][y : y + self.patch_size, x : x + self.patch_size].copy())
        crop = crop.expand(3, -1, -1) if crop.ndim == 2 else crop.permute(2, 0, 1)
        return crop.contiguous(), self.targets[index]
