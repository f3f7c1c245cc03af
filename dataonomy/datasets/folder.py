"""Any ``class_name/*.{png,jpg,...}`` tree (torchvision's ImageFolder convention), masks recognised.

Class folders are walked as torchvision's ``make_dataset`` walks them (sorted, sub-folders included).
Within each folder, a file that is another file's mask is not an image of its own: a file whose stem is
an image's stem plus a mask suffix (``_label``, ``_GT``, ``_mask``, any case), or a PNG/BMP with the
same stem as a JPEG (``0001.jpg`` + ``0001.png``); see
:func:`~dataonomy.datasets.pairs.pair_masks_in_folder`. Mask-named files without an image are
skipped with a warning. ``notes`` says what was paired, skipped and ignored.

Defect flags: with ``defect_classes``, an image is defective when its class folder is one of them
(masks are attached but not read). Otherwise, when any mask was paired, every mask is read once here:
an image is defective when its mask has a defect pixel (:func:`~dataonomy.datasets.base.load_mask`),
and an image without a mask is defect-free. With neither, ``defect`` is None.
``group`` is the class folder's name; ``split`` is None.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torchvision.datasets.folder import find_classes

from dataonomy.datasets.base import (
    IMAGE_EXTENSIONS,
    MaskAudit,
    Sample,
    SampleDataset,
    Sampling,
    check_mask_sizes,
    listed_mask_defect,
    require_dir,
)
from dataonomy.datasets.pairs import pair_masks_in_folder
from dataonomy.datasets.registry import register_dataset
from dataonomy.errors import DataonomyError


@register_dataset("folder")
class ImageFolderDataset(SampleDataset):
    """A folder of class folders.

    Args:
        root: the folder holding one sub-folder per class.
        defect_classes: class folder names that hold defective images (e.g. ``["defect", "NG"]``);
            when given, every sample gets a defect flag from its folder.
        sampling: :class:`~dataonomy.datasets.base.Sampling`: ``images_per_class`` samples at most N images
            per class, seeded (masks never count as images); ``skip_bad`` decodes every image (and mask) now
            and drops bad ones with a warning and a count.

    Attributes:
        pairing: ``{"paired": N, "skipped": [paths], "ignored": K}``: masks paired with their
            images, mask-named files skipped (no image), files ignored (not images).
    """

    def __init__(
        self,
        root: str | Path,
        defect_classes: Sequence[str] | None = None,
        sampling: Sampling | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ):
        sampling = sampling or Sampling()
        root = require_dir(Path(root), "image folder root")
        try:
            classes, _ = find_classes(str(root))
        except FileNotFoundError as exc:
            raise DataonomyError(f"{root}: {exc}") from None
        if defect_classes is not None:
            unknown = sorted(set(defect_classes) - set(classes))
            if unknown:
                raise DataonomyError(f"--defect-classes: '{unknown[0]}' is not a class folder of {root}")
        listing = _list_class_folders(root, classes)
        notes = listing.report(root)
        self.pairing = {
            "paired": len(listing.masks),
            "skipped": [p for p, _ in listing.skipped],
            "ignored": len(listing.ignored),
        }
        samples = _samples(root, classes, listing, defect_classes, sampling)
        super().__init__(
            root, samples, classes, transform=transform, target_transform=target_transform, notes=notes
        )


@dataclass
class _Listing:
    """What a walk over the class folders found (each real folder and file once)."""

    by_class: dict[str, list[Path]] = field(default_factory=dict)
    masks: dict[Path, Path] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # mask-named files without an image
    ignored: list[Path] = field(default_factory=list)  # files that are not images
    unfollowed: list[Path] = field(default_factory=list)  # folder links to folders already read
    second_names: list[tuple[Path, Path]] = field(default_factory=list)  # (a file's second name, its first)

    def report(self, root: Path) -> list[str]:
        """Warn about what was left out; the notes the dataset carries."""
        notes = []
        if self.masks:
            notes.append(
                f"paired {len(self.masks)} masks with their images (same stem plus _label/_GT/_mask, "
                "or a PNG/BMP beside a JPEG of the same stem)"
            )
        if self.skipped:
            p, why = self.skipped[0]
            warnings.warn(
                f"{root}: skipped {len(self.skipped)} mask-named file(s) without an image (first: {p}: {why})",
                stacklevel=3,
            )
        if self.ignored:
            notes.append(f"ignored {len(self.ignored)} files that are not images (first: {self.ignored[0]})")
        if self.unfollowed:
            first = self.unfollowed[0]
            warnings.warn(
                f"{root}: did not follow {len(self.unfollowed)} folder link(s) to folders already read, so no "
                f"file is listed twice (first: {first} -> {os.path.realpath(first)})",
                stacklevel=3,
            )
        if self.second_names:
            p, first = self.second_names[0]
            warnings.warn(
                f"{root}: {len(self.second_names)} file(s) are a second name of a file already listed, read once "
                f"(first: {p}, the same file as {first})",
                stacklevel=3,
            )
        return notes


def _list_class_folders(root: Path, classes: list[str]) -> _Listing:
    """Every class folder's images and their masks; an empty class folder is an error."""
    # Directory links are followed (users link folders of images in), but each real folder is read once: a
    # link back up the tree (a loop) or into another class folder would list the same files again, and put
    # one image in several folds. Each real file is read once too, under its first name.
    listing = _Listing()
    read_dirs = {os.path.realpath(root), *(os.path.realpath(root / cls) for cls in classes)}
    real_files: dict[str, Path] = {}
    for cls in classes:
        images = listing.by_class.setdefault(cls, [])
        for folder, _, names in sorted(_walk_once(root / cls, read_dirs, listing.unfollowed)):
            files = []
            for name in sorted(names):
                p = Path(folder) / name
                real = os.path.realpath(p)
                if real in real_files:
                    listing.second_names.append((p, real_files[real]))
                    continue
                real_files[real] = p
                (files if p.suffix.lower() in IMAGE_EXTENSIONS else listing.ignored).append(p)
            found = pair_masks_in_folder(files)
            images += found.images
            listing.masks.update(found.masks)
            listing.skipped += found.skipped
    empty = [cls for cls in classes if not listing.by_class[cls]]
    if empty:
        raise DataonomyError(
            f"{root}: no image in class folder(s) {', '.join(empty)} "
            f"(image extensions: {', '.join(IMAGE_EXTENSIONS)})"
        )
    return listing


def _samples(
    root: Path, classes: list[str], listing: _Listing, defect_classes, sampling: Sampling
) -> list[Sample]:
    """The sampled images of every class, each flagged defective by its folder (``defect_classes``) or by its
    mask (when masks were found), else unflagged; bad files dropped under ``skip_bad``."""
    samples, audit = [], MaskAudit(root)
    for target, cls in enumerate(classes):
        for p in sampling.subsample(listing.by_class[cls], cls):
            mask = listing.masks.get(p)
            if defect_classes is not None:
                defect = cls in defect_classes
            elif listing.masks:
                defect = mask is not None and listed_mask_defect(
                    mask, p, sampling.skip_bad, lambda m: warnings.warn(m, stacklevel=4), audit
                )
                if defect is None:  # a bad file, reported and skipped (--skip-bad)
                    continue
            else:
                defect = None
            samples.append(Sample(path=p, label=cls, target=target, defect=defect, mask=mask, group=cls))
    audit.warn(stacklevel=3)
    check_mask_sizes(samples)
    return sampling.drop_bad(samples)


def _walk_once(top: Path, read_dirs: set[str], unfollowed: list[Path]):
    """``os.walk(top, followlinks=True)`` in sorted order, entering no real folder twice: a sub-folder whose real
    path is in ``read_dirs`` is left out (and appended to ``unfollowed``); every folder entered is added."""
    for folder, dirnames, names in os.walk(top, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(Path(folder) / d)
            if real in read_dirs:
                unfollowed.append(Path(folder) / d)
            else:
                read_dirs.add(real)
                keep.append(d)
        dirnames[:] = keep
        yield folder, keep, names
