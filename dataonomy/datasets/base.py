"""What every dataset reader returns: a list of :class:`Sample` and a torchvision dataset.

Readers follow torchvision's conventions (``root``, ``transform``, ``target_transform``,
``__getitem__ -> (image, target)``, ``classes``, ``class_to_idx``) so they plug into a
``DataLoader`` unchanged, and add what inspection needs: a defect flag and a mask path per sample.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import VisionDataset

from dataonomy.errors import BadImageError, DataonomyError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``label`` is the class name the dataset uses (a wnid, ``Class3``, a folder name),
    ``target`` its index in the reader's ``classes``; ``defect`` is True/False where the
    dataset says whether the image shows a defect (None where it does not), and ``mask``
    the path of its defect mask where there is one.
    """

    path: Path
    label: str
    target: int
    defect: bool | None = None
    mask: Path | None = None


def open_image(path: Path, mode: str | None = None) -> Image.Image:
    """Decode an image fully, turning every decoding failure into a one-line :class:`BadImageError`."""
    try:
        with Image.open(path) as im:
            im.load()  # force a full decode so truncated files fail here, not inside a model
            return im.convert(mode) if mode else im.copy()
    except FileNotFoundError:
        raise BadImageError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{path}: not an image file (cannot identify its format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"{path}: unreadable or truncated image ({exc})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise BadImageError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{path}: not an image file (cannot identify its format)") from None
    except OSError as exc:
        raise BadImageError(f"{path}: unreadable image ({exc})") from None


def load_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A defect mask as a boolean array (H, W); ``size`` (width, height) is checked when given."""
    im = open_image(path, "L")
    if size is not None and im.size != tuple(size):
        raise BadImageError(f"{path}: mask is {im.size[0]}x{im.size[1]}, image is {size[0]}x{size[1]}")
    return np.asarray(im) > 127


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataonomyError(f"{path}: {what} does not exist")
    if not path.is_dir():
        raise DataonomyError(f"{path}: {what} is not a folder")
    return path


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


def verify_samples(samples: list[Sample], skip_bad: bool, warn: Callable[[str], None]) -> list[Sample]:
    """Decode every image and mask; raise on the first bad one, or drop bad ones with a warning."""
    good, bad = [], 0
    for s in samples:
        try:
            size = open_image(s.path).size
            if s.mask is not None:
                load_mask(s.mask, size)
            good.append(s)
        except BadImageError as exc:
            if not skip_bad:
                raise
            bad += 1
            warn(f"skipping {exc}")
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
    ):
        super().__init__(str(root), transform=transform, target_transform=target_transform)
        self.samples = samples
        self.classes = classes
        self.class_names = class_names or list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.image_mode = image_mode

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
        """Counts a person checks first: images, classes, defective images, masks."""
        per_class: dict[str, int] = {}
        for s in self.samples:
            per_class[s.label] = per_class.get(s.label, 0) + 1
        return {
            "images": len(self.samples),
            "classes": len(self.classes),
            "defective": sum(1 for s in self.samples if s.defect),
            "masks": sum(1 for s in self.samples if s.mask is not None),
            "per_class": per_class,
        }
