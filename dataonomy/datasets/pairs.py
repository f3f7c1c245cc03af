"""Generic defect data: images with their masks, matched by file name.

Two layouts are read:

* Images and masks (``root`` = the images folder): masks in another folder (``masks``) named after
  their image's stem plus an optional suffix (``0001.jpg`` <- ``0001.png``, ``0001_label.png``,
  ``0001_GT.png`` or ``0001_mask.png``; the suffix is found automatically unless ``mask_suffix`` is
  given), or masks in the images folder itself, recognised by such a suffix (or, for a JPEG image,
  by a PNG/BMP file of the same stem). An image without a mask, or whose mask has no defect pixel,
  is defect-free; an image with a non-empty mask is defective (every mask is read once, here).
* anomalib's ``Folder`` layout: ``normal_dir`` (defect-free images) and/or ``abnormal_dir``
  (defective images), with ``mask_dir`` optionally holding one mask per defective image, matched as
  above. The folders say which images are defective; masks are not read here.

Folders given as relative paths are looked up under ``root`` first, then taken as they are (relative
to the current folder), so both ``--root data --normal-dir good`` and ``--root data/images --masks
data/masks`` work. Folders are read flat (sub-folders are not entered), in sorted order.

``label`` is the name of ``root``; ``classes`` are ``["ok", "defect"]`` and ``target`` the defect
flag, as in the ``dagm`` reader. ``group`` is the label, or in the anomalib layout
``<label>/<folder name>`` (``data/good``, ``data/crack``); ``split`` is None.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dataonomy.datasets.base import (
    IMAGE_EXTENSIONS,
    MaskAudit,
    Sample,
    SampleDataset,
    Sampling,
    check_mask_sizes,
    listed_mask_defect,
    masks_decide,
    require_dir,
)
from dataonomy.datasets.registry import register_dataset
from dataonomy.errors import DataonomyError

# Mask-name suffixes recognised without being told (compared case-insensitively, so ``_gt`` too).
MASK_SUFFIXES = ("_label", "_GT", "_mask")
# Mask files of other tools that are not images: named in the error, with what to do.
FOREIGN_MASK_FORMATS = {
    ".mat": "MATLAB arrays",
    ".seg": "BSDS segmentation files",
    ".npy": "NumPy arrays",
    ".json": "polygon annotations",
    ".xml": "annotation files",
}
_JPEG = (".jpg", ".jpeg")
_MASK_BESIDE_JPEG = (".png", ".bmp")


def list_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) directly inside ``folder``, each sorted."""
    images, other = [], []
    for p in sorted(folder.iterdir()):
        if p.is_file():
            (images if p.suffix.lower() in IMAGE_EXTENSIONS else other).append(p)
    return images, other


def strip_mask_suffix(stem: str, suffixes: Sequence[str]) -> str | None:
    """``stem`` without the first of ``suffixes`` it ends with (case-insensitively), or None.

    An empty suffix matches every stem (a mask named exactly as its image)."""
    for suffix in suffixes:
        if not suffix:
            return stem
        if len(stem) > len(suffix) and stem.lower().endswith(suffix.lower()):
            return stem[: -len(suffix)]
    return None


@dataclass
class FolderPairs:
    """What :func:`pair_masks_in_folder` found: the images, each paired image's mask, and the
    mask-named files left without an image (with the reason)."""

    images: list[Path]
    masks: dict[Path, Path] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def pair_masks_in_folder(
    files: Sequence[Path], suffixes: Sequence[str] = MASK_SUFFIXES, by_extension: bool = True
) -> FolderPairs:
    """Split the image files of one folder into images and their masks, deterministically.

    1. A file whose stem is another file's stem plus a mask suffix (``Part3_label.bmp`` beside
       ``Part3.jpg``) is that file's mask; when several files have that stem, the JPEG (else the
       first in sorted order) gets it. A suffixed file with no such image, or a second mask for an
       image, is skipped.
    2. With ``by_extension``, a stem with exactly two files left, one JPEG and one PNG or BMP
       (``0001.jpg`` and ``0001.png``), makes the PNG/BMP the JPEG's mask.

    Everything else is an image.
    """
    files = sorted(files)
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        by_stem.setdefault(p.stem, []).append(p)
    out = FolderPairs(images=[])
    claimed: set[Path] = set()  # files that are masks (or skipped mask-named files)
    for p in files:
        base = strip_mask_suffix(p.stem, [s for s in suffixes if s])
        if base is None or p in claimed:
            continue
        partners = [q for q in by_stem.get(base, []) if q != p and q not in claimed]
        if not partners:
            continue  # no image of that stem: skipped below as a mask without an image
        free = [q for q in partners if q not in out.masks]
        claimed.add(p)
        if not free:
            out.skipped.append((p, f"a second mask for {partners[0].name}"))
            continue
        image = sorted(free, key=lambda q: (q.suffix.lower() not in _JPEG, str(q)))[0]
        out.masks[image] = p
    # Mask-named files whose image is missing: the name says mask, and no image claims it.
    for p in files:
        if p in claimed:
            continue
        base = strip_mask_suffix(p.stem, [s for s in suffixes if s])
        if base is not None and not any(q != p and q not in claimed for q in by_stem.get(base, [])):
            claimed.add(p)
            out.skipped.append((p, f"a mask-named file without an image named {base}.*"))
    if by_extension:
        for group in by_stem.values():
            rest = [q for q in group if q not in claimed and q not in out.masks]
            if len(rest) != 2:
                continue
            jpeg = [q for q in rest if q.suffix.lower() in _JPEG]
            other = [q for q in rest if q.suffix.lower() in _MASK_BESIDE_JPEG]
            if len(jpeg) == 1 and len(other) == 1:
                out.masks[jpeg[0]] = other[0]
                claimed.add(other[0])
    out.images = [p for p in files if p not in claimed]
    out.skipped.sort()
    return out


def match_masks(
    images: Sequence[Path], masks_dir: Path, mask_suffix: str | None, images_where: str | Path
) -> tuple[dict[Path, Path], str]:
    """Masks in ``masks_dir`` matched to ``images`` by stem: mask stem = image stem + suffix.

    ``mask_suffix`` None tries no suffix and each of :data:`MASK_SUFFIXES` and keeps the one that
    matches most masks (the first of them on a tie). Every mask must match an image, and no image
    may have two masks. ``images_where`` names the images' folder(s) in messages. Returns
    (image -> mask, the suffix used).
    """
    by_stem: dict[str, Path] = {}
    for p in images:
        if p.stem in by_stem:
            raise DataonomyError(
                f"{p}: two images named {p.stem}.* ({by_stem[p.stem].name}); a mask could belong to either"
            )
        by_stem[p.stem] = p
    mask_files, other_files = list_files(masks_dir)
    if not mask_files:
        foreign = sorted({q.suffix.lower() for q in other_files} & set(FOREIGN_MASK_FORMATS))
        if foreign:
            raise DataonomyError(
                f"{masks_dir}: holds {', '.join(foreign)} masks ({FOREIGN_MASK_FORMATS[foreign[0]]}), which are "
                "not read; save them as PNG images (0 where there is no defect, non-zero on the defect)"
            )
        raise DataonomyError(f"{masks_dir}: no mask images in this folder")
    candidates = [mask_suffix] if mask_suffix is not None else ["", *MASK_SUFFIXES]

    def matches(suffix: str) -> int:
        return sum(strip_mask_suffix(m.stem, [suffix]) in by_stem for m in mask_files)

    suffix = max(candidates, key=matches)
    if matches(suffix) == 0:
        tried = ", ".join(repr(s) for s in candidates)
        raise DataonomyError(
            f"{masks_dir}: no mask is named after an image of {images_where} (mask suffixes tried: {tried})"
        )
    out: dict[Path, Path] = {}
    for m in mask_files:
        base = strip_mask_suffix(m.stem, [suffix])
        image = by_stem.get(base) if base is not None else None
        if image is None:
            raise DataonomyError(
                f"{m}: mask without an image (no {base or m.stem}.* in {images_where}; mask suffix '{suffix}')"
            )
        if image in out:
            raise DataonomyError(f"{m}: a second mask for {image} (the first is {out[image].name})")
        out[image] = m
    return out, suffix


def resolve_folder(root: Path, value: str | Path, option: str) -> Path:
    """A folder option: an absolute path, else ``root/value`` when it exists, else ``value``."""
    p = Path(value)
    if not p.is_absolute() and (root / p).exists():
        p = root / p
    if not p.exists():
        where = p if p.is_absolute() else f"{root / p} or {p}"
        raise DataonomyError(f"{option} {value}: folder not found ({where})")
    if not p.is_dir():
        raise DataonomyError(f"{option} {value}: {p} is not a folder")
    return p


@dataclass(frozen=True)
class AnomalibFolders:
    """anomalib's ``Folder`` layout under a pairs set's root: ``normal_dir`` (defect-free images) and/or
    ``abnormal_dir`` (defective images; may be a list), ``mask_dir`` optionally holding the defective images'
    masks. The reader's options group ``--normal-dir``/``--abnormal-dir``/``--mask-dir`` into one."""

    normal_dir: str | Path | None = None
    abnormal_dir: str | Path | Sequence[str | Path] | None = None
    mask_dir: str | Path | None = None


@register_dataset("pairs")
class ImageMaskPairs(SampleDataset):
    """Images with masks matched by name, or anomalib's normal/abnormal/mask folders.

    Args:
        root: the images folder; in the anomalib layout, the folder the other folders are under.
        masks: folder of masks (default: masks lie beside the images, recognised by suffix).
        mask_suffix: what a mask's stem adds to its image's stem (``_label``, ``_GT``, ``_mask``,
            or ``""`` for the same stem); default: found from the files.
        folders: :class:`AnomalibFolders`: anomalib's ``Folder`` layout (folders of defect-free and of
            defective images, either or both, and optionally their masks) instead of ``masks``.
        sampling: :class:`~dataonomy.datasets.base.Sampling`: ``images_per_class`` keeps at most N images,
            seeded (masks are only read for the kept ones); ``skip_bad`` decodes every image and mask now
            and drops bad ones with a warning and a count.
    """

    def __init__(
        self,
        root: str | Path,
        masks: str | Path | None = None,
        mask_suffix: str | None = None,
        folders: AnomalibFolders | None = None,
        sampling: Sampling | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ):
        sampling = sampling or Sampling()
        root = require_dir(Path(root), "pairs root")
        label = Path(os.path.abspath(root)).name or str(root)
        folders = folders or AnomalibFolders()
        if folders.normal_dir is not None or folders.abnormal_dir is not None:
            if masks is not None:
                raise DataonomyError(
                    "--masks and --normal-dir/--abnormal-dir are two layouts: give --mask-dir with the latter"
                )
            self.layout = "anomalib"
            samples, notes = self._read_anomalib(root, label, folders, mask_suffix, sampling)
        else:
            if folders.mask_dir is not None:
                raise DataonomyError("--mask-dir goes with --normal-dir/--abnormal-dir (use --masks here)")
            self.layout = "pairs"
            samples, notes = self._read_pairs(root, label, masks, mask_suffix, sampling)
        samples = sampling.drop_bad(samples)
        self._init_defect_set(root, samples, (transform, target_transform), notes=notes)

    @staticmethod
    def _read_pairs(root, label, masks, mask_suffix, sampling: Sampling) -> tuple[list, list]:
        notes = []
        if masks is not None:
            masks_dir = resolve_folder(root, masks, "--masks")
            images, other = list_files(root)
            if not images:
                raise DataonomyError(f"{root}: no images in this folder{_class_folder_hint(root)}")
            pairing, suffix = match_masks(images, masks_dir, mask_suffix, root)
            notes.append(f"paired {len(pairing)} masks in {masks_dir} with images (mask suffix '{suffix}')")
        else:
            files, other = list_files(root)
            if mask_suffix is None:
                found = pair_masks_in_folder(files)
            else:
                found = pair_masks_in_folder(files, [mask_suffix] if mask_suffix else [])
            if found.skipped:
                p, why = found.skipped[0]
                raise DataonomyError(f"{p}: {why}")
            images, pairing = found.images, found.masks
            if not images:
                raise DataonomyError(f"{root}: no images in this folder{_class_folder_hint(root)}")
            notes.append(f"paired {len(pairing)} masks with images in the same folder")
        if other:
            notes.append(f"ignored {len(other)} files that are not images (first: {other[0].name})")
        unmasked = len(images) - len(pairing)
        if unmasked:
            notes.append(f"{unmasked} images have no mask: read as defect-free")
        images = sampling.subsample(images, label)
        samples, audit = [], MaskAudit(root)
        for p in images:
            mask = pairing.get(p)
            defect = mask is not None and listed_mask_defect(
                mask, p, sampling.skip_bad, lambda m: warnings.warn(m, stacklevel=4), audit
            )
            if defect is None:  # a bad file, reported and skipped (--skip-bad)
                continue
            samples.append(
                Sample(path=p, label=label, target=int(defect), defect=defect, mask=mask, group=label)
            )
        audit.warn(stacklevel=4)
        return samples, notes

    @staticmethod
    def _read_anomalib(
        root, label, given: AnomalibFolders, mask_suffix, sampling: Sampling
    ) -> tuple[list, list]:
        normal_dir, abnormal_dir, mask_dir = given.normal_dir, given.abnormal_dir, given.mask_dir
        notes = []
        folders: list[tuple[Path, bool]] = []
        if normal_dir is not None:
            folders.append((resolve_folder(root, normal_dir, "--normal-dir"), False))
        if abnormal_dir is not None:
            many = abnormal_dir if isinstance(abnormal_dir, list | tuple) else [abnormal_dir]
            folders += [(resolve_folder(root, d, "--abnormal-dir"), True) for d in many]
        if len({d.resolve() for d, _ in folders}) != len(folders):
            raise DataonomyError("--normal-dir/--abnormal-dir: the same folder is given twice")
        listed = []
        for folder, defect in folders:
            images, other = list_files(folder)
            if not images:
                raise DataonomyError(f"{folder}: no images in this folder")
            if other:
                notes.append(f"ignored {len(other)} files in {folder} that are not images")
            listed.append((folder, defect, images))
        pairing: dict[Path, Path] = {}
        if mask_dir is not None:
            abnormal = [p for _, defect, images in listed if defect for p in images]
            if not abnormal:
                raise DataonomyError("--mask-dir needs --abnormal-dir (masks belong to the defective images)")
            masks_dir = resolve_folder(root, mask_dir, "--mask-dir")
            where = ", ".join(str(d) for d, defect in folders if defect)
            pairing, suffix = match_masks(abnormal, masks_dir, mask_suffix, where)
            missing = [p for p in abnormal if p not in pairing]
            if missing:
                raise DataonomyError(
                    f"{missing[0]}: defective image without a mask in {masks_dir} "
                    f"(mask suffix '{suffix}'; {len(missing)} such image(s))"
                )
            notes.append(
                f"paired {len(pairing)} masks in {masks_dir} with defective images (suffix '{suffix}')"
            )
        samples = []
        for folder, defect, images in listed:
            group = f"{label}/{folder.name}"
            for p in images:
                samples.append(
                    Sample(
                        path=p,
                        label=label,
                        target=int(defect),
                        defect=defect,
                        mask=pairing.get(p),
                        group=group,
                    )
                )
        samples = sampling.subsample(samples, label)
        check_mask_sizes(samples)
        return masks_decide(samples, root, sampling.skip_bad), notes


def _class_folder_hint(root: Path) -> str:
    """What to say when a pairs root holds folders of images instead of images."""
    subfolders = sorted(d.name for d in Path(root).iterdir() if d.is_dir() and list_files(d)[0])
    if not subfolders:
        return ""
    shown = ", ".join(subfolders[:3]) + (", ..." if len(subfolders) > 3 else "")
    return f"; it holds folders of images ({shown}): read a tree of class folders with --format folder"


__all__ = [
    "FOREIGN_MASK_FORMATS",
    "AnomalibFolders",
    "MASK_SUFFIXES",
    "FolderPairs",
    "ImageMaskPairs",
    "list_files",
    "match_masks",
    "pair_masks_in_folder",
    "resolve_folder",
    "strip_mask_suffix",
]
