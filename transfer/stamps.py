"""Synthetic systematic defects (the Dataonomy paper, section 4.2).

A systematic defect is one that a faulty machine leaves on every product it touches: the same scratch or the same
ink blot at the same place. To test root-cause analysis on real images, this module draws one such stamp
(seeded) and applies it, identically, to every image of a batch, optionally only from image ``start`` on (a
fault that appears partway through a production run).

- scratch: a thin curved line (a quadratic Bezier curve, ``width`` pixels wide) that is brighter (or darker) than
  the surface by ``contrast`` of the image's full range, added to the pixel values;
- blot: a dark irregular blob (a wobbly closed contour, filled) where the surface is blended towards black by
  ``opacity``.

Images are (N, H, W) grayscale arrays, uint8 (range 255) or float (range 1.0); the result has the same dtype.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from dataonomy.errors import DataonomyError

STAMP_KINDS = ("scratch", "blot")


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _canvas(shape: tuple[int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    return canvas, ImageDraw.Draw(canvas)


def scratch_mask(
    shape: tuple[int, int],
    seed=None,
    length: tuple[float, float] = (0.3, 0.6),
    width: int = 3,
    bend: float = 0.25,
) -> np.ndarray:
    """Boolean mask of one scratch: a quadratic Bezier curve ``width`` pixels wide.

    ``length``: range of the chord length as a fraction of the shorter image side; ``bend``: the control point's
    offset from the chord's midpoint, at most this fraction of the chord. The scratch lies inside the image with
    a margin of 10% of the shorter side.
    """
    rng = _rng(seed)
    height, width_px = shape
    side = min(height, width_px)
    if side < 20 or width < 1:
        raise DataonomyError(f"scratch: image {shape} too small or width {width} < 1")
    margin = 0.1 * side
    for _ in range(1000):
        chord = rng.uniform(*length) * side
        angle = rng.uniform(0, np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        middle = rng.uniform([margin, margin], [width_px - margin, height - margin])
        start, end = middle - direction * chord / 2, middle + direction * chord / 2
        control = middle + np.array([-direction[1], direction[0]]) * rng.uniform(-bend, bend) * chord
        t = np.linspace(0, 1, max(16, int(chord)))[:, None]
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end  # (x, y) points
        inside = (curve >= margin).all() and (curve[:, 0] <= width_px - margin).all()
        if inside and (curve[:, 1] <= height - margin).all():
            canvas, draw = _canvas(shape)
            draw.line([tuple(p) for p in curve], fill=1, width=width, joint="curve")
            return np.asarray(canvas) > 0
    raise DataonomyError(f"scratch: could not place a scratch of length {length} inside an image of {shape}")


def blot_mask(
    shape: tuple[int, int],
    seed=None,
    radius: tuple[float, float] = (0.04, 0.08),
    wobble: float = 0.25,
) -> np.ndarray:
    """Boolean mask of one ink blot: a filled closed contour whose radius wobbles around a random mean.

    ``radius``: range of the mean radius as a fraction of the shorter image side; ``wobble``: relative amplitude
    of the low-frequency harmonics (2 to 5 lobes) that make the outline irregular.
    """
    rng = _rng(seed)
    height, width_px = shape
    side = min(height, width_px)
    mean_radius = rng.uniform(*radius) * side
    if mean_radius < 2:
        raise DataonomyError(f"blot: image {shape} too small for a blot")
    angles = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    harmonics = np.arange(2, 6)
    amplitude = rng.uniform(0, wobble, harmonics.size) / harmonics  # higher lobes smaller: a smooth outline
    phase = rng.uniform(0, 2 * np.pi, harmonics.size)
    profile = 1 + (amplitude[:, None] * np.cos(harmonics[:, None] * angles + phase[:, None])).sum(0)
    reach = mean_radius * profile.max()
    centre = rng.uniform([reach, reach], [width_px - reach, height - reach])
    points = [
        tuple(p) for p in centre + (mean_radius * profile)[:, None] * np.c_[np.cos(angles), np.sin(angles)]
    ]
    canvas, draw = _canvas(shape)
    draw.polygon(points, fill=1)
    return np.asarray(canvas) > 0


def _full_range(images: np.ndarray) -> float:
    if images.dtype == np.uint8:
        return 255.0
    if np.issubdtype(images.dtype, np.floating):
        return 1.0
    raise DataonomyError(f"images: expected uint8 or float pixels, got {images.dtype}")


def apply_stamp(images, mask, kind: str, strength: float, start: int = 0) -> np.ndarray:
    """Copy of ``images`` (N, H, W) with the stamp ``mask`` applied to images ``start`` and later.

    ``scratch``: adds ``strength`` x full range inside the mask (negative for a dark scratch), clipped to the
    range. ``blot``: blends the pixels inside the mask towards black, ``pixel * (1 - strength)``.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise DataonomyError(
            f"images: expected a (N, H, W) stack of grayscale images, got shape {images.shape}"
        )
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != images.shape[1:]:
        raise DataonomyError(f"stamp mask {mask.shape} does not match the images {images.shape[1:]}")
    if kind not in STAMP_KINDS:
        raise DataonomyError(f"stamp kind '{kind}' unknown, expected one of {STAMP_KINDS}")
    if not 0 <= start <= len(images):
        raise DataonomyError(f"stamp start {start} outside the batch of {len(images)} images")
    full = _full_range(images)
    stamped = images.copy()
    region = stamped[start:, mask].astype(np.float64)
    if kind == "scratch":
        region = np.clip(region + strength * full, 0, full)
    else:
        if not 0 <= strength <= 1:
            raise DataonomyError(f"blot opacity must be in [0, 1], got {strength}")
        region = region * (1 - strength)
    stamped[start:, mask] = np.round(region) if images.dtype == np.uint8 else region
    return stamped


DEFAULT_STRENGTH = {"scratch": 0.3, "blot": 0.7}


def stamp_systematic_defect(
    images,
    kind: str = "scratch",
    seed=0,
    start: int = 0,
    strength: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stamp the same seeded scratch or blot at the same place onto images ``start`` onwards.

    Returns ``(stamped images, stamp mask)``; the input is not modified. ``strength`` defaults to a scratch 30%
    of the full range brighter than the surface, or a blot that removes 70% of the surface's brightness.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise DataonomyError(
            f"images: expected a (N, H, W) stack of grayscale images, got shape {images.shape}"
        )
    if kind not in STAMP_KINDS:
        raise DataonomyError(f"stamp kind '{kind}' unknown, expected one of {STAMP_KINDS}")
    shape = images.shape[1:]
    mask = scratch_mask(shape, seed) if kind == "scratch" else blot_mask(shape, seed)
    strength = DEFAULT_STRENGTH[kind] if strength is None else strength
    return apply_stamp(images, mask, kind, strength, start), mask
