"""What every dataset reader returns: a list of :class:`Sample` and a torchvision dataset.

Readers follow torchvision's conventions (``root``, ``transform``, ``target_transform``,
``__getitem__ -> (image, target)``, ``classes``, ``class_to_idx``) so they plug into a
``DataLoader`` unchanged, and add what inspection needs: a defect flag, a mask path, a group and the
dataset's own split per sample.

Masks are binarised by one rule for every reader (:func:`binarize_mask`): the mask is read as one
gray channel; when its brightest pixel is below 128 (0/1 masks, class-index masks, dim colours) every
non-zero pixel is a defect, otherwise a pixel is a defect when its value is above 127 (0/255 masks;
anti-aliased 0..255 edges are cut at half).
"""

from __future__ import annotations

import os
import threading
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import VisionDataset
from tqdm.auto import tqdm

from dataonomy.errors import BadImageError, DataonomyError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``label`` is the class name the dataset uses (a wnid, ``Class3``, an MVTec category, a folder
    name), ``target`` its index in the reader's ``classes`` (the defect readers' ``classes`` are
    ``["ok", "defect"]``, so there ``target`` is the defect flag); ``defect`` is True/False where the
    dataset says whether the image shows a defect (None where it does not), and ``mask`` the path of
    its defect mask where there is one.

    ``group`` names the finest unit a per-group table reports on (``Class1`` for DAGM,
    ``bottle/broken_large`` for an MVTec category and defect type, ``kos01`` for a KolektorSDD item);
    the defect readers always set it (to ``label`` where the dataset has nothing finer). ``split`` is
    the dataset's own split the file belongs to (``train`` or ``test``; None where the dataset has
    none): where the file lives, not the fold a reader was asked for.
    """

    path: Path
    label: str
    target: int
    defect: bool | None = None
    mask: Path | None = None
    group: str | None = None
    split: str | None = None


# An image whose header claims more pixels than this is refused before it is decoded: a decompression bomb
# (a few bytes that say 30000 x 30000) would otherwise take gigabytes. PIL's own bound (twice
# ``Image.MAX_IMAGE_PIXELS``, about 13,400 x 13,400); line-scan frames beyond it set the variable.
MAX_IMAGE_PIXELS_ENV = "DATAONOMY_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
_PIL_LIMIT_LOCK = threading.Lock()


def max_image_pixels() -> int | None:
    """The pixel limit in force: ``$DATAONOMY_MAX_IMAGE_PIXELS`` (0: no limit), else the default."""
    raw = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        limit = int(raw.replace("_", ""))
    except ValueError:
        limit = -1
    if limit < 0:
        raise DataonomyError(
            f"{MAX_IMAGE_PIXELS_ENV}={raw!r}: must be a whole number of pixels >= 0 (0: no limit)"
        )
    return limit or None


def _open_checked(path: Path) -> Image.Image:
    """``Image.open`` (header only) with the pixel limit applied by size, one line naming the file."""
    limit = max_image_pixels()
    # PIL warns between its bound and twice it and raises above; the limit here decides instead. Its bound is a
    # module global: lifted for the header read only, under a lock (the readers open images from threads).
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = im.size
    if limit is not None and width * height > limit:
        im.close()
        raise BadImageError(
            f"{path}: its header says {width} x {height} = {width * height:,} pixels, above the limit of "
            f"{limit:,} (a decompression bomb?); set {MAX_IMAGE_PIXELS_ENV} to allow larger images (0: no limit)"
        )
    return im


def open_image(path: Path, mode: str | None = None) -> Image.Image:
    """Decode an image fully, turning every decoding failure into a one-line :class:`BadImageError`."""
    try:
        with _open_checked(path) as im:
            im.load()  # force a full decode so truncated files fail here, not inside a model
            return im.convert(mode) if mode else im.copy()
    except FileNotFoundError:
        raise BadImageError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{path}: not an image file (cannot identify its format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"{path}: unreadable or truncated image ({exc})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels (the pixel limit applies)."""
    try:
        with _open_checked(path) as im:
            return im.size
    except FileNotFoundError:
        raise BadImageError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{path}: not an image file (cannot identify its format)") from None
    except OSError as exc:
        raise BadImageError(f"{path}: unreadable image ({exc})") from None


# Single-channel modes whose values are used as they are; every other mode is converted to "L".
_RAW_MASK_MODES = ("1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def binarize_mask(values: np.ndarray) -> np.ndarray:
    """The defect pixels of a one-channel mask, as a bool array of the same shape.

    The rule every reader uses: when the brightest pixel is below 128 (0/1 masks, class-index
    masks 0..K, dim colours), every non-zero pixel is a defect; otherwise a pixel is a defect when
    its value is above 127 (0/255 masks such as DAGM's, MVTec's and Kolektor's; anti-aliased
    0..255 edges are cut at half). An all-zero mask has no defect pixel.
    """
    values = np.asarray(values)
    if values.size == 0 or values.max() < 128:
        return values > 0
    return values > 127


def load_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A defect mask as a boolean array (H, W); ``size`` (width, height) is checked when given.

    Gray masks (8-bit, 16-bit, 1-bit) are used as stored; colour and palette masks are converted to
    8-bit gray (``L``) first. Pixels are then binarised by :func:`binarize_mask`: below 128 at
    most, any non-zero pixel is a defect; else values above 127 are.
    """
    return read_mask_values(path, size)[0]


def mask_has_defect(path: Path, size: tuple[int, int] | None = None) -> bool:
    """Whether a mask has any defect pixel (see :func:`load_mask`); ``size`` is checked when given."""
    return bool(load_mask(path, size).any())


#: A mask that marks more than this share of its image as defect is suspect (:class:`MaskAudit`).
MOSTLY_DEFECT = 0.9


class MaskAudit:
    """What a reader's masks say as a whole, reported once per listing (a warning each, naming how many and the
    first file): masks that are empty (their image counts as defect-free, in every reader) and masks that mark
    most of their image as defect, which is what a class-index mask whose background is not 0 (values 1/2)
    looks like under :func:`binarize_mask`."""

    def __init__(self, root: Path):
        self.root, self.read = root, 0
        self.empty: list[Path] = []
        self.mostly: list[tuple[Path, float, list[int]]] = []

    def add(self, path: Path, mask: np.ndarray, values: np.ndarray | None = None) -> None:
        self.read += 1
        share = float(mask.mean()) if mask.size else 0.0
        if share == 0.0:
            self.empty.append(path)
        elif share > MOSTLY_DEFECT:
            shown = [] if values is None else [int(v) for v in np.unique(values)[:4]]
            self.mostly.append((path, share, shown))

    def warn(self, stacklevel: int = 3) -> None:
        if self.empty:
            warnings.warn(
                f"{self.root}: {len(self.empty)} of {self.read} masks are empty, so their images count as "
                f"defect-free (first: {self.empty[0]})",
                stacklevel=stacklevel,
            )
        if self.mostly:
            path, share, shown = self.mostly[0]
            every = (
                f"all {self.read}" if len(self.mostly) == self.read else f"{len(self.mostly)} of {self.read}"
            )
            values = f", values {shown}" if shown else ""
            warnings.warn(
                f"{self.root}: {every} masks mark more than {MOSTLY_DEFECT:.0%} of their image as defect "
                f"(first: {path}, {share:.0%}{values}); a class-index mask must be 0 where there is no defect "
                "(a background of 1 marks every pixel)",
                stacklevel=stacklevel,
            )


def read_mask_values(path: Path, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(defect pixels, the raw one-channel values) of a mask, as :func:`load_mask` reads it."""
    im = open_image(path)
    if size is not None and im.size != tuple(size):
        raise BadImageError(f"{path}: mask is {im.size[0]}x{im.size[1]}, image is {size[0]}x{size[1]}")
    if im.mode not in _RAW_MASK_MODES:
        im = im.convert("L")
    values = np.asarray(im)
    return binarize_mask(values), values


def listed_mask_defect(
    mask: Path, image: Path, skip_bad: bool, warn: Callable[[str], None], audit: MaskAudit | None = None
) -> bool | None:
    """Whether ``image``'s mask has a defect pixel, for readers that read masks while listing (``audit`` notes
    what it holds); with ``skip_bad`` a bad image or mask is reported through ``warn`` and None returned (skip
    the sample)."""
    try:
        pixels, values = read_mask_values(mask, image_size(image))
    except BadImageError as exc:
        if not skip_bad:
            raise
        warn(f"skipping {exc}")
        return None
    if audit is not None:
        audit.add(mask, pixels, values)
    return bool(pixels.any())


def masks_decide(samples: list[Sample], root: Path, skip_bad: bool) -> list[Sample]:
    """The one rule for an empty mask, for readers whose folders say which images are defective (MVTec's
    defect types, anomalib's abnormal folder): an image whose mask is empty is defect-free, as in the readers
    where the mask alone decides; :class:`MaskAudit` warns how many. A bad mask is skipped with ``skip_bad``."""
    audit, out = MaskAudit(root), []
    for s in samples:
        if s.mask is None or not s.defect:
            out.append(s)
            continue
        defect = listed_mask_defect(s.mask, s.path, skip_bad, lambda m: warnings.warn(m, stacklevel=4), audit)
        if defect is None:
            continue
        out.append(s if defect else replace(s, defect=False, target=0))
    audit.warn(stacklevel=4)
    return out


def check_mask_sizes(samples: Sequence[Sample]) -> None:
    """Fail on the first mask whose size differs from its image's (header reads only: cheap).

    A file whose header cannot be read is passed over here: it is a decoding problem, reported where
    files are decoded (``verify_samples``: ``--skip-bad`` skips it, ``inspect`` names it), like every
    other unreadable image; failing here would stop ``--skip-bad`` from skipping it.
    """
    for s in samples:
        if s.mask is not None:
            try:
                size = image_size(s.path)
                msize = image_size(s.mask)
            except BadImageError:
                continue
            if msize != size:
                raise BadImageError(
                    f"{s.mask}: mask is {msize[0]}x{msize[1]}, image {s.path.name} is {size[0]}x{size[1]}"
                )


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataonomyError(f"{path}: {what} does not exist")
    if not path.is_dir():
        raise DataonomyError(f"{path}: {what} is not a folder")
    return path


def check_reader_options(
    images_per_class: int | None = None,
    split: str | None = None,
    splits: Sequence[str] = ("all", "train", "test"),
) -> None:
    """One-line errors for the options every reader takes: ``--images-per-class`` and (where given) ``--split``."""
    if split is not None and split not in splits:
        raise DataonomyError(f"--split '{split}': must be one of {', '.join(splits)}")
    if images_per_class is not None and images_per_class < 1:
        raise DataonomyError(f"--images-per-class {images_per_class}: must be at least 1")


def seeded_subsample(items: Sequence, n: int | None, seed: int, key: str) -> list:
    """Up to ``n`` items drawn without replacement, reproducibly.

    The generator is seeded by (seed, key) so that each class's draw depends only on its own
    files: adding or removing another class leaves this class's sample (and its cache) unchanged.
    """
    items = list(items)
    if n is None or n >= len(items):
        return items
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    chosen = np.sort(rng.choice(len(items), size=n, replace=False))
    return [items[i] for i in chosen]


def _decode_sample(s: Sample) -> BadImageError | None:
    """Decode a sample's image and mask (checking the mask's size); the problem, or None."""
    try:
        size = open_image(s.path).size
        if s.mask is not None:
            load_mask(s.mask, size)
    except BadImageError as exc:
        return exc
    return None


def drop_bad_files(samples: list[Sample], skip_bad: bool, stacklevel: int = 4) -> list[Sample]:
    """A reader's ``--skip-bad``: ``samples`` less the files that do not decode, each one warned about (the
    warning names the reader's caller); without it, ``samples`` as they are (files are decoded when read)."""
    if not skip_bad:
        return samples
    # stacklevel: the lambda, verify_samples, this function, the reader's __init__, its caller.
    return verify_samples(samples, True, lambda m: warnings.warn(m, stacklevel=stacklevel))


@dataclass(frozen=True)
class Sampling:
    """Which of a reader's images to keep: every reader's ``sampling`` argument.

    ``images_per_class``: keep at most N images per class (or per category, per set: the reader's unit),
    drawn by :func:`seeded_subsample` with ``seed``, so that class-level statistics need not read every image;
    None keeps them all. ``skip_bad``: decode every image and mask now and drop bad ones with a warning and a
    count, instead of failing on the first when it is read.
    """

    images_per_class: int | None = None
    seed: int = 0
    skip_bad: bool = False

    def __post_init__(self):
        check_reader_options(self.images_per_class)

    def subsample(self, items: Sequence, key: str) -> list:
        """Up to ``images_per_class`` of ``items`` (one class's, named ``key``), seeded by (seed, key)."""
        return seeded_subsample(items, self.images_per_class, self.seed, key)

    def per_label(self, samples: Sequence[Sample]) -> list[Sample]:
        """:meth:`subsample` of each label's samples, labels in the order they first appear."""
        if self.images_per_class is None:
            return list(samples)
        by_label: dict[str, list[Sample]] = {}
        for s in samples:
            by_label.setdefault(s.label, []).append(s)
        return [s for label, group in by_label.items() for s in self.subsample(group, label)]

    def drop_bad(self, samples: list[Sample]) -> list[Sample]:
        """``samples`` less the files that do not decode, with ``skip_bad`` (see :func:`drop_bad_files`; the
        warnings name the reader's caller); else ``samples`` as they are."""
        # stacklevel: the lambda, verify_samples, drop_bad_files, this method, the reader's __init__, its
        # caller.
        return drop_bad_files(samples, self.skip_bad, stacklevel=5)


def verify_samples(
    samples: list[Sample], skip_bad: bool, warn: Callable[[str], None], progress: bool | None = None
) -> list[Sample]:
    """Decode every image and mask; raise on the first bad one, or drop bad ones with a warning.

    Files are decoded by a few threads (PIL decodes without holding the GIL), in order, a chunk at a
    time so memory stays bounded. ``progress``: show a progress bar (None: only on a terminal).
    """
    good, bad = [], 0
    workers = max(1, min(8, os.cpu_count() or 1))
    chunk = 64 * workers
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(
            total=len(samples),
            desc="decoding",
            unit="img",
            leave=False,
            disable=None if progress is None else not progress,
        ) as bar,
    ):
        for start in range(0, len(samples), chunk):
            part = samples[start : start + chunk]
            for s, problem in zip(part, pool.map(_decode_sample, part), strict=True):
                if problem is None:
                    good.append(s)
                elif not skip_bad:
                    raise problem
                else:
                    bad += 1
                    warn(f"skipping {problem}")
            bar.update(len(part))
    if bad:
        warn(f"skipped {bad} bad file(s) of {len(samples)}")
    return good


class SampleDataset(VisionDataset):
    """A torchvision dataset over a fixed list of samples (what every reader builds)."""

    def __init__(
        self,
        root: str | Path,
        samples: list[Sample],
        classes: list[str],
        class_names: list[str] | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        image_mode: str = "RGB",
        notes: Sequence[str] | None = None,
    ):
        super().__init__(str(root), transform=transform, target_transform=target_transform)
        self.samples = samples
        self.classes = classes
        self.class_names = class_names or list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.image_mode = image_mode
        # What the reader decided about the files it found (pairs made, files skipped), one line
        # each; `dataonomy inspect` prints them.
        self.notes = list(notes or [])

    def _init_defect_set(self, root, samples: list[Sample], transforms: tuple, notes=None) -> None:
        """What the defect-set readers (DAGM, MVTec AD, Kolektor, pairs) build: classes ``ok`` and ``defect``;
        ``transforms`` is ``(transform, target_transform)``."""
        transform, target_transform = transforms
        first_name: dict[str, Path] = {}
        second = []
        for sample in samples:  # a link to another image of the set: one image under two names, in two folds
            real = os.path.realpath(sample.path)
            if real in first_name:
                second.append((sample.path, first_name[real]))
            first_name.setdefault(real, sample.path)
        if second:
            warnings.warn(
                f"{root}: {len(second)} image(s) are a second name of an image already listed (first: "
                f"{second[0][0]}, the same file as {second[0][1]}); both names are read",
                stacklevel=3,
            )
        SampleDataset.__init__(
            self,
            root,
            samples,
            ["ok", "defect"],
            transform=transform,
            target_transform=target_transform,
            notes=notes,
        )

    @property
    def targets(self) -> list[int]:
        return [s.target for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        s = self.samples[index]
        image = open_image(s.path, self.image_mode)
        target = s.target
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def mask(self, index: int) -> np.ndarray | None:
        """The defect mask of sample ``index`` as a bool (H, W) array, all False for a clean
        image, or None where the dataset has no masks."""
        s = self.samples[index]
        if s.mask is not None:
            return load_mask(s.mask, image_size(s.path))
        if s.defect is False:
            w, h = image_size(s.path)
            return np.zeros((h, w), dtype=bool)
        return None

    def summary(self) -> dict:
        """Counts a person checks first: images, classes, defective images, masks; images per
        class (``label``), per dataset split and per group (with their defective images)."""
        per_class: dict[str, int] = {}
        per_split: dict[str, int] = {}
        per_group: dict[str, dict[str, int]] = {}
        for s in self.samples:
            per_class[s.label] = per_class.get(s.label, 0) + 1
            if s.split is not None:
                per_split[s.split] = per_split.get(s.split, 0) + 1
            if s.group is not None:
                g = per_group.setdefault(s.group, {"images": 0, "defective": 0})
                g["images"] += 1
                g["defective"] += int(bool(s.defect))
        return {
            "images": len(self.samples),
            "classes": len(self.classes),
            "defective": sum(1 for s in self.samples if s.defect),
            "masks": sum(1 for s in self.samples if s.mask is not None),
            "per_class": per_class,
            "per_split": per_split,
            "per_group": per_group,
        }
