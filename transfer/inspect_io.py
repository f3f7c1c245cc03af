"""File handling shared by ``transfer localize``, ``rootcause`` and ``stamp``: finding images, checking them
before any output is written, naming outputs, drawing overlays, and writing a whole output folder at once.

Outputs go through :func:`staged_folder`: everything is written into ``<out>.partial`` and the folder is renamed
into place only when the command succeeds, so a bad input or a crash halfway leaves no partial results.
"""

from __future__ import annotations

import glob
import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from dataonomy.datasets.base import IMAGE_EXTENSIONS, image_size, open_image
from dataonomy.errors import BadImageError, DataonomyError
from dataonomy.io import make_dirs, output_error, staged_folder

__all__ = [
    "PREDICTED_COLOUR",
    "TRUE_COLOUR",
    "check_images",
    "contour",
    "finite",
    "list_images",
    "natural_key",
    "overlay_heatmap",
    "save_png",
    "staged_folder",
    "unique_names",
]

# Contour colours that do not occur in the heat colormaps (inferno, jet) used under them.
PREDICTED_COLOUR = (0, 191, 255)  # deep sky blue: the predicted (binarised) defect
TRUE_COLOUR = (0, 255, 0)  # lime: the labelled defect


def natural_key(path: str | Path) -> tuple:
    """Sort key: file name with digit runs compared as numbers (``img2`` < ``img10``), then the full path."""
    path = Path(path)
    parts = re.split(r"(\d+)", path.name.lower())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p), str(path)


def list_images(spec: str | Path | Sequence[str | Path], option: str = "--images") -> list[Path]:
    """Image files named by ``spec``, in natural order of file name.

    ``spec``: a folder (its files with an image extension, not recursive: a DAGM split folder's ``Label/`` is not
    read), one file, a glob pattern (``**`` recurses; every file it matches must be an image, which
    :func:`check_images` verifies), or a list of files (kept in the given order). Raises
    :class:`DataonomyError` naming ``option`` when nothing is found.
    """
    if not isinstance(spec, str | Path):
        paths = [Path(p) for p in spec]
        if not paths:
            raise DataonomyError(f"{option}: no images given")
        return paths
    path = Path(spec)
    if path.is_dir():
        paths = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not paths:
            raise DataonomyError(
                f"{option} {path}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
            )
    elif path.is_file():
        paths = [path]
    elif glob.has_magic(str(spec)):
        paths = [Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file()]
        if not paths:
            raise DataonomyError(f"{option} '{spec}': no files match the pattern")
    else:
        raise DataonomyError(f"{option} {spec}: no such file or folder")
    return sorted(paths, key=natural_key)


def check_images(paths: Sequence[Path], option: str = "--images", same_size: bool = False) -> list[tuple]:
    """(width, height) of every image, read from the file headers (cheap: no pixels are decoded).

    Raises :class:`BadImageError` for a file that is not an image, and with ``same_size`` a
    :class:`DataonomyError` for the first image whose size differs from the first one's.
    """
    sizes = []
    for path in paths:
        size = image_size(path)
        if same_size and sizes and size != sizes[0]:
            raise BadImageError(
                f"{option}: {path} is {size[0]}x{size[1]} but {paths[0]} is {sizes[0][0]}x{sizes[0][1]}; "
                "all images must have the same size"
            )
        sizes.append(size)
    return sizes


def drop_bad_images(paths: Sequence[Path]) -> list[Path]:
    """The paths whose images decode fully; each bad one is skipped with a warning naming it, then a count."""
    good, bad = [], 0
    for path in paths:
        try:
            open_image(path)
            good.append(path)
        except BadImageError as exc:
            bad += 1
            warnings.warn(f"skipping {exc}", stacklevel=2)
    if bad:
        warnings.warn(f"skipped {bad} bad file(s) of {len(paths)}", stacklevel=2)
    if not good:
        raise DataonomyError(f"--skip-bad: none of the {len(paths)} images could be read")
    return good


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Output file stems, one per path: the file's stem where that is unique, else its path relative to the
    paths' common folder with ``/`` turned into ``_`` (``Class1/Test/0001.PNG`` and ``Class2/Test/0001.PNG``)."""
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    resolved = [Path(p).resolve() for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    names = ["_".join(p.relative_to(common).with_suffix("").parts) for p in resolved]
    if len(set(names)) != len(names):
        raise DataonomyError("--images: the same image is given twice")
    return names


def contour(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """The inner outline of a boolean mask, ``thickness`` pixels wide (the frame counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, iterations=thickness, border_value=0)


def overlay_heatmap(
    image: np.ndarray,
    heat: np.ndarray,
    predicted: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    colormap: str = "inferno",
    alpha: float = 0.45,
) -> np.ndarray:
    """The heatmap blended over the image, with the predicted and true defect outlines: (H, W, 3) uint8.

    ``image``: (H, W) or (H, W, 3) uint8; ``heat``: (H, W) defect probabilities, coloured on a fixed 0..1 scale
    (so colours mean the same in every image) with ``colormap`` at opacity ``alpha``. Outlines:
    :data:`PREDICTED_COLOUR` for ``predicted``, :data:`TRUE_COLOUR` for ``truth`` (drawn last, on top).
    """
    from matplotlib import colormaps

    image = np.asarray(image)
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != rgb.shape[:2]:
        raise DataonomyError(f"heatmap {heat.shape} does not match the image {rgb.shape[:2]}")
    coloured = colormaps[colormap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    out = np.round((1.0 - alpha) * rgb.astype(np.float64) + alpha * coloured).astype(np.uint8)
    for mask, colour in ((predicted, PREDICTED_COLOUR), (truth, TRUE_COLOUR)):
        if mask is not None:
            out[contour(mask)] = colour
    return out


def save_png(array: np.ndarray, path: Path) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) array, or a boolean mask (as 0/255), as a PNG."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    make_dirs(path.parent)
    try:
        Image.fromarray(array).save(path, format="PNG")
    except OSError as exc:
        raise output_error(path, exc) from None
    return path


def finite(obj):
    """``obj`` with every non-finite float (NaN: a metric with nothing to measure) turned into None, for JSON."""
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj
