"""Synthetic data that ships with the package: a DAGM-compatible target and an ImageNet-style source pool.

Both feed ``dataonomy demo`` (the whole pipeline on a laptop) and tests that need more images than
../shared/data holds. Everything is procedural numpy, vectorised over a batch of images, so a few
thousand images take seconds.

* :func:`make_synthetic_dagm` writes 10 grayscale texture classes in the DAGM Kaggle layout
  (``ClassN/{Train,Test}/NNNN.PNG``, ``Label/Labels.txt``, ``Label/NNNN_label.PNG``) that the ``dagm``
  reader reads. Each class has its own texture (oriented band-pass noise, fibres, radial streaks,
  rings, grain...) and its own defect kind drawn inside a random ellipse (a dark smudge, spot or
  scratch, a local change of texture orientation or frequency). As in DAGM, the label is the ellipse
  rasterised into a 0/255 mask, a weak label that encloses the defect.
* :func:`make_synthetic_mvtec` and :func:`make_synthetic_kolektor` write the same textures and defects
  in the MVTec AD layout (``<category>/{train,test}/<type>/NNN.png``, ``ground_truth/<type>/NNN_mask.png``)
  and the KolektorSDD layouts (``kosNN/PartK.jpg`` + ``PartK_label.bmp``; ``{train,test}/NNNNN.png`` +
  ``NNNNN_GT.png``) that the ``mvtec`` and ``kolektor`` readers read.
* :func:`make_synthetic_source` writes a labelled pool of 30 texture, pattern and shape classes in
  the ILSVRC train layout (``<wnid>/<wnid>_<i>.JPEG`` and ``LOC_synset_mapping.txt``) that the
  ``imagenet`` reader reads with names. Each class is a real WordNet synset naming what it shows, so
  the taxonomy and diversity constraints of the selection mean something; material textures (sand,
  paper, concrete, crack...) resemble the DAGM textures more than designs and shapes do.

Every image depends only on (seed, class, split, index) and on whether it gets a defect: its random
parameters come from its own generator, so files are byte-identical across runs and chunk sizes.
Generation is numpy on the CPU on purpose: it takes seconds, and the same seed gives the same bytes
on every machine. Geometry is in image units (coordinates in [0, 1), frequencies in cycles per
image), so a larger ``size`` draws the same kinds of pictures at the same scales, more finely.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from matplotlib.colors import hsv_to_rgb
from PIL import Image

from dataonomy.datasets.dagm import Ellipse, rasterize_ellipse
from dataonomy.errors import DataonomyError
from dataonomy.io import staged_folder, write_json
from dataonomy.wordnet import load_wordnet

GENERATOR_VERSION = 1
MIN_SIZE = 32
CHUNK = 64  # images rendered at once: bounds memory at large sizes, never changes the pixels
_DAGM_STREAM = 0xDA6
_SOURCE_STREAM = 0x50C
_SPLITS = (("Test", 0), ("Train", 1))  # the Kaggle copy numbers Test images first, then Train

# --- per-image random draws ---------------------------------------------------------------------


class PerImageRandom:
    """Random draws for a batch, one generator per image, stacked along a leading batch axis.

    Each image's generator is seeded by ``(*key, index)``, so an image's parameters do not depend
    on the batch it is rendered in. Every recipe draws in a fixed order, whatever the image.
    """

    def __init__(self, key: Sequence[int], start: int, count: int):
        self.rngs = [np.random.default_rng([*key, i]) for i in range(start, start + count)]

    @property
    def n(self) -> int:
        return len(self.rngs)

    def uniform(self, low: float, high: float, shape: tuple = ()) -> np.ndarray:
        return np.stack([r.uniform(low, high, shape) for r in self.rngs]).astype(np.float32)

    def normal(self, shape: tuple = ()) -> np.ndarray:
        return np.stack([r.standard_normal(shape, dtype=np.float32) for r in self.rngs])

    def integers(self, low: int, high: int, shape: tuple = ()) -> np.ndarray:
        return np.stack([r.integers(low, high, shape) for r in self.rngs])

    def choice(self, options: Sequence[float], shape: tuple = ()) -> np.ndarray:
        return np.stack([r.choice(np.asarray(options), shape) for r in self.rngs]).astype(np.float32)

    def white(self, size: int) -> np.ndarray:
        """White Gaussian noise images (n, size, size)."""
        return self.normal((size, size))


# --- image primitives (pure, vectorised over the batch) ------------------------------------------


def _col(a) -> np.ndarray:
    """Per-image parameters (n,) -> (n, 1, 1) for broadcasting against (n, H, W) images."""
    return np.asarray(a, dtype=np.float32).reshape(-1, 1, 1)


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (size, size), in image units [0, 1)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")
    return y, x


def rotate(x: np.ndarray, y: np.ndarray, angle) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along and across direction ``angle`` (n,): (u, v), each (n, H, W)."""
    c, s = np.cos(_col(angle)), np.sin(_col(angle))
    return x * c + y * s, -x * s + y * c


def standardize(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation per image (over the last two axes)."""
    a = a - a.mean(axis=(-2, -1), keepdims=True)
    return a / np.maximum(a.std(axis=(-2, -1), keepdims=True), 1e-6)


def bandpass_noise(white: np.ndarray, freq, bandwidth, orientation=None, spread=None) -> np.ndarray:
    """Filter white noise (n, H, W) to a band of spatial frequencies; return standardised fields.

    ``freq`` is the centre frequency in cycles per image, ``bandwidth`` the Gaussian width of the
    band in octaves. With ``orientation`` (radians, the direction the stripes or fibres run, image
    x towards y) the spectrum is also limited to a Gaussian wedge of angular width ``spread``
    around the perpendicular wave direction: small spreads give fibres, large ones isotropic grain.
    All parameters are scalars or per-image arrays (n,).
    """
    n, h, w = white.shape
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None] * h
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :] * w
    radius = np.hypot(fx, fy)
    log_ratio = np.log2(np.maximum(radius, 1e-3)[None] / _col(np.broadcast_to(freq, (n,))))
    gain = np.exp(-0.5 * (log_ratio / _col(np.broadcast_to(bandwidth, (n,)))) ** 2)
    gain[:, 0, 0] = 0.0
    if orientation is not None:
        wave = _col(np.broadcast_to(orientation, (n,))) + np.pi / 2
        diff = (np.arctan2(fy, fx)[None] - wave + np.pi / 2) % np.pi - np.pi / 2
        gain = gain * np.exp(-0.5 * (diff / _col(np.broadcast_to(spread, (n,)))) ** 2)
    field = np.fft.irfft2(np.fft.rfft2(white) * gain, s=(h, w))
    return standardize(field.astype(np.float32))


def segment_distance(x: np.ndarray, y: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance (n, H, W) from each pixel to the nearest of K segments ``p0[:, k] -> p1[:, k]``
    (points (n, K, 2) as (x, y) in image units)."""
    best = None
    for k in range(p0.shape[1]):
        ax, ay = _col(p0[:, k, 0]), _col(p0[:, k, 1])
        dx, dy = _col(p1[:, k, 0]) - ax, _col(p1[:, k, 1]) - ay
        t = np.clip(((x - ax) * dx + (y - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
        d = np.hypot(x - ax - t * dx, y - ay - t * dy)
        best = d if best is None else np.minimum(best, d)
    return best


def voronoi(x: np.ndarray, y: np.ndarray, points: np.ndarray):
    """Nearest and second-nearest seed distances and the nearest seed's index, each (n, H, W),
    for seeds ``points`` (n, K, 2) in image units."""
    n = points.shape[0]
    d1 = np.full((n, *x.shape), np.inf, np.float32)
    d2 = d1.copy()
    index = np.zeros((n, *x.shape), np.int64)
    for k in range(points.shape[1]):
        d = np.hypot(x - _col(points[:, k, 0]), y - _col(points[:, k, 1]))
        closer = d < d1
        d2 = np.where(closer, d1, np.minimum(d2, d))
        index = np.where(closer, k, index)
        d1 = np.where(closer, d, d1)
    return d1, d2, index


def ellipse_frame(size: int, ellipses: Sequence[Ellipse]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates along each ellipse's major and minor axes, divided by its semi-axes: (u, v),
    each (n, size, size), with u**2 + v**2 <= 1 inside the ellipse. Same pixel frame and formula as
    :func:`~dataonomy.datasets.dagm.rasterize_ellipse`, so the mask is exactly ``u**2 + v**2 <= 1``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    us, vs = [], []
    for e in ellipses:
        dx, dy = xx - e.x, yy - e.y
        c, s = np.cos(e.angle), np.sin(e.angle)
        us.append((dx * c + dy * s) / max(e.semi_major, 1e-9))
        vs.append((-dx * s + dy * c) / max(e.semi_minor, 1e-9))
    return np.stack(us), np.stack(vs)


def _mix(t: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Blend per-image colours c0, c1 (n, 3) by t (n, H, W) -> RGB (n, H, W, 3)."""
    t = t[..., None]
    return c0[:, None, None, :] * (1 - t) + c1[:, None, None, :] * t


def _hsv(h, s, v) -> np.ndarray:
    """Per-image HSV (each (n,)) -> RGB (n, 3); hue wraps."""
    h, s, v = np.broadcast_arrays(np.mod(h, 1.0), np.clip(s, 0, 1), np.clip(v, 0, 1))
    return hsv_to_rgb(np.stack([h, s, v], -1)).astype(np.float32)


def _smooth_step(edge_distance: np.ndarray, width: float) -> np.ndarray:
    """0 -> 1 across an anti-aliased edge: ``edge_distance`` > 0 inside, ``width`` in image units."""
    return np.clip(0.5 + edge_distance / width, 0.0, 1.0)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


# --- the synthetic DAGM target -----------------------------------------------------------------


@dataclass(frozen=True)
class DagmTexture:
    """One synthetic DAGM class: a texture recipe and the kind of defect it gets.

    ``draw(R, size)`` returns the per-image parameters and noise; ``render(p)`` the texture field
    (n, H, W) in units of its standard deviation. Texture-change defects re-render inside the
    ellipse with ``alter(p, severity)``'s parameters (same noise, other orientation or frequency).
    ``brightness`` and ``contrast`` map the field to gray levels; ``major`` is the range of the
    ellipse's semi-major axis (fraction of the image side) and ``ratio`` of semi-minor/semi-major.
    """

    name: str
    defect: str  # "smudge" | "scratch" | "orientation" | "frequency"
    draw: Callable
    render: Callable
    brightness: float
    contrast: float
    major: tuple[float, float]
    ratio: tuple[float, float]
    strength: tuple[float, float] = (1.5, 2.0)
    alter: Callable | None = None
    flatten: float = 0.35  # how much of the texture a smudge hides
    profile: float = 1.5  # smudge fall-off exponent: smaller gives a flatter top and a sharper rim


def _p_crossed(R: PerImageRandom, size: int) -> dict:
    return {
        "w": [R.white(size) for _ in range(3)],
        "freq": R.uniform(36, 42),
        "ori": R.uniform(0, np.pi),
        "cross": R.uniform(1.2, 1.57),
    }


def _r_crossed(p: dict) -> np.ndarray:
    a = bandpass_noise(p["w"][0], p["freq"], 0.2, p["ori"], 0.1)
    b = bandpass_noise(p["w"][1], p["freq"], 0.2, p["ori"] + p["cross"], 0.1)
    return standardize(a + b + 0.35 * bandpass_noise(p["w"][2], 3.0, 0.7))


def _p_fibres(R: PerImageRandom, size: int) -> dict:
    return {
        "w": [R.white(size), R.white(size)],
        "freq": R.uniform(14, 19),
        "ori": np.pi / 2 + 0.05 * R.normal(),
    }


def _r_fibres(p: dict) -> np.ndarray:
    return bandpass_noise(p["w"][0], p["freq"], 0.6, p["ori"], 0.05) + 0.35 * bandpass_noise(
        p["w"][1], 45.0, 0.5
    )


def _p_oriented(R: PerImageRandom, size: int) -> dict:
    return {
        "w": [R.white(size)],
        "freq": R.uniform(10, 13),
        "ori": np.pi / 4 + 0.1 * R.normal(),
        "turn": R.choice([-1.0, 1.0]) * R.uniform(np.pi / 3, np.pi / 2),
    }


def _r_oriented(p: dict) -> np.ndarray:
    return bandpass_noise(p["w"][0], p["freq"], 0.35, p["ori"], 0.22)


def _a_oriented(p: dict, severity: float) -> dict:
    turn = np.clip(p["turn"] * severity, -np.pi / 2, np.pi / 2)
    return {**p, "ori": p["ori"] + turn}


def _p_radial(R: PerImageRandom, size: int) -> dict:
    return {
        "w": [R.white(size)],
        "rays": R.normal((1024,)),
        "centre": R.uniform(0.35, 0.65, (2,)),
        "size": size,
    }


def _r_radial(p: dict) -> np.ndarray:
    # Streaks radiating from a centre (like DAGM's Class 4): 1-D noise over the angle, band-passed.
    rays = p["rays"]
    spectrum = np.fft.rfft(rays, axis=1)
    f = np.arange(spectrum.shape[1], dtype=np.float32)
    spectrum *= np.exp(-0.5 * (np.log2(np.maximum(f, 1e-3) / 90.0) / 0.8) ** 2)
    rays = np.fft.irfft(spectrum, n=rays.shape[1], axis=1).astype(np.float32)
    rays /= rays.std(axis=1, keepdims=True)
    y, x = grid(p["size"])
    cx, cy = _col(p["centre"][:, 0]), _col(p["centre"][:, 1])
    angle = np.arctan2(y - cy, x - cx)
    idx = ((angle + np.pi) / (2 * np.pi) * rays.shape[1]).astype(np.int64) % rays.shape[1]
    streaks = np.take_along_axis(rays, idx.reshape(len(rays), -1), axis=1).reshape(idx.shape)
    fade = np.clip(np.hypot(x - cx, y - cy) / 0.08, 0, 1)  # rays merge into a knot at the centre
    return standardize(streaks * fade + 0.4 * bandpass_noise(p["w"][0], 50.0, 0.5))


def _p_blotch(R: PerImageRandom, size: int) -> dict:
    return {"w": [R.white(size), R.white(size)], "freq": R.uniform(5, 7), "finer": R.uniform(2.6, 3.4)}


def _r_blotch(p: dict) -> np.ndarray:
    return bandpass_noise(p["w"][0], p["freq"], 0.5) + 0.25 * bandpass_noise(p["w"][1], 40.0, 0.5)


def _a_blotch(p: dict, severity: float) -> dict:
    return {**p, "freq": p["freq"] * p["finer"] ** severity}


def _p_weave(R: PerImageRandom, size: int) -> dict:
    return {
        "w": [R.white(size), R.white(size), R.white(size)],
        "freq": R.uniform(13, 17),
        "ori": 0.05 * R.normal(),
        "size": size,
    }


def _r_weave(p: dict) -> np.ndarray:
    # Regular warp and weft threads whose phase wanders slowly, crossing over and under.
    y, x = grid(p["size"])
    u, v = rotate(x, y, p["ori"])
    f = 2 * np.pi * _col(p["freq"])
    warp = np.cos(f * u + 1.2 * bandpass_noise(p["w"][0], 1.5, 0.5))
    weft = np.cos(f * v + 1.2 * bandpass_noise(p["w"][1], 1.5, 0.5)) * p.get("weft", 1.0)
    return standardize(warp + weft + 0.5 * warp * weft + 0.4 * bandpass_noise(p["w"][2], 45.0, 0.5))


def _a_weave(p: dict, severity: float) -> dict:
    return {**p, "weft": max(0.0, 1.0 - severity)}  # one thread direction fades out


def _p_mottle(R: PerImageRandom, size: int) -> dict:
    return {"w": [R.white(size), R.white(size)], "freq": R.uniform(2, 4)}


def _r_mottle(p: dict) -> np.ndarray:
    return standardize(bandpass_noise(p["w"][0], p["freq"], 0.6) + 0.9 * bandpass_noise(p["w"][1], 50.0, 0.4))


def _p_brushed(R: PerImageRandom, size: int) -> dict:
    return {"w": [R.white(size)], "freq": R.uniform(25, 32), "ori": 0.04 * R.normal()}


def _r_brushed(p: dict) -> np.ndarray:
    return bandpass_noise(p["w"][0], p["freq"], 0.5, p["ori"], 0.06)


def _p_speckle(R: PerImageRandom, size: int) -> dict:
    return {"w": [R.white(size), R.white(size)], "freq": R.uniform(48, 56)}


def _r_speckle(p: dict) -> np.ndarray:
    return bandpass_noise(p["w"][0], p["freq"], 1.2) + 0.4 * bandpass_noise(p["w"][1], 8.0, 0.6)


def _p_rings(R: PerImageRandom, size: int) -> dict:
    a = R.uniform(0, 2 * np.pi)
    return {
        "w": [R.white(size), R.white(size)],
        "centre": 0.5 + 1.4 * np.stack([np.cos(a), np.sin(a)], 1),
        "freq": R.uniform(9, 12),
        "phase": R.uniform(0, 2 * np.pi),
        "denser": R.uniform(2.1, 2.5),
        "size": size,
    }


def _r_rings(p: dict) -> np.ndarray:
    y, x = grid(p["size"])
    r = np.hypot(x - _col(p["centre"][:, 0]), y - _col(p["centre"][:, 1]))
    wobble = 0.8 * bandpass_noise(p["w"][0], 2.0, 0.6)
    rings = np.sin(2 * np.pi * _col(p["freq"]) * r + _col(p["phase"]) + wobble)
    return standardize(rings + 0.45 * bandpass_noise(p["w"][1], 40.0, 0.5))


def _a_rings(p: dict, severity: float) -> dict:
    return {**p, "freq": p["freq"] * p["denser"] ** severity}


DAGM_TEXTURES: tuple[DagmTexture, ...] = (
    DagmTexture(
        "crossed fine grain",
        "smudge",
        _p_crossed,
        _r_crossed,
        brightness=85,
        contrast=26,
        major=(0.08, 0.14),
        ratio=(0.5, 1.0),
        strength=(2.5, 3.2),
        flatten=0.6,
    ),
    DagmTexture(
        "vertical fibres",
        "scratch",
        _p_fibres,
        _r_fibres,
        brightness=100,
        contrast=38,
        major=(0.1, 0.2),
        ratio=(0.2, 0.35),
        strength=(3.5, 4.5),
    ),
    DagmTexture(
        "oriented grain",
        "orientation",
        _p_oriented,
        _r_oriented,
        brightness=120,
        contrast=30,
        major=(0.13, 0.21),
        ratio=(0.55, 0.9),
        alter=_a_oriented,
    ),
    DagmTexture(
        "radial streaks",
        "scratch",
        _p_radial,
        _r_radial,
        brightness=175,
        contrast=16,
        major=(0.1, 0.2),
        ratio=(0.2, 0.35),
        strength=(4.0, 5.0),
    ),
    DagmTexture(
        "coarse blotches",
        "frequency",
        _p_blotch,
        _r_blotch,
        brightness=110,
        contrast=30,
        major=(0.13, 0.21),
        ratio=(0.6, 1.0),
        alter=_a_blotch,
    ),
    DagmTexture(
        "woven threads",
        "orientation",
        _p_weave,
        _r_weave,
        brightness=95,
        contrast=30,
        major=(0.15, 0.23),
        ratio=(0.6, 1.0),
        alter=_a_weave,
    ),
    DagmTexture(
        "mottled grain",
        "smudge",
        _p_mottle,
        _r_mottle,
        brightness=120,
        contrast=20,
        major=(0.05, 0.09),
        ratio=(0.5, 1.0),
        strength=(3.5, 4.5),  # the mottle's own shadows reach -3: a fainter stain hides among them
        flatten=0.9,
        profile=0.3,  # flat top, sharp rim: unlike the soft mottle
    ),
    DagmTexture(
        "brushed lines",
        "scratch",
        _p_brushed,
        _r_brushed,
        brightness=130,
        contrast=22,
        major=(0.06, 0.1),
        ratio=(0.25, 0.4),
        strength=(4.0, 5.0),
    ),
    DagmTexture(
        "fine speckle",
        "smudge",
        _p_speckle,
        _r_speckle,
        brightness=140,
        contrast=24,
        major=(0.05, 0.075),
        ratio=(0.6, 1.0),
        strength=(3.5, 4.5),
        flatten=0.6,
    ),
    DagmTexture(
        "rings",
        "frequency",
        _p_rings,
        _r_rings,
        brightness=105,
        contrast=30,
        major=(0.15, 0.23),
        ratio=(0.6, 1.0),
        alter=_a_rings,
    ),
)


@dataclass
class DagmBatch:
    """Rendered images (n, H, W) uint8, the same images without their defects, and one ellipse
    per image (None for a defect-free image)."""

    images: np.ndarray
    clean: np.ndarray
    ellipses: list[Ellipse | None]


def _draw_ellipses(R: PerImageRandom, size: int, tex: DagmTexture) -> list[Ellipse]:
    a = np.maximum(R.uniform(*tex.major) * size, 2.5)  # a few pixels at least, even in small images
    b = np.clip(a * R.uniform(*tex.ratio), 2.0, a)
    angle = R.uniform(0, np.pi)
    fx, fy = R.uniform(0, 1), R.uniform(0, 1)
    margin = a + 1  # keep the ellipse (and so the defect) inside the image
    x = margin + fx * np.maximum(size - 1 - 2 * margin, 0)
    y = margin + fy * np.maximum(size - 1 - 2 * margin, 0)
    return [Ellipse(float(a[i]), float(b[i]), float(angle[i]), float(x[i]), float(y[i])) for i in range(R.n)]


def _apply_defects(
    tex: DagmTexture,
    p: dict,
    field: np.ndarray,
    ellipses: list[Ellipse],
    strength: np.ndarray,
    bend: np.ndarray,
    severity: float,
) -> np.ndarray:
    """The texture field with each image's defect drawn inside its ellipse (unchanged outside)."""
    strength = strength * severity
    size = field.shape[-1]
    u, v = ellipse_frame(size, ellipses)
    r = np.sqrt(u * u + v * v).astype(np.float32)  # the defect weights below vanish at r >= 1
    # Smudges and scratches are dark: with bright ones among them a small CNN trained for a few
    # epochs learns the dark ones and leaves the bright ones at chance (measured on this data).
    if tex.defect == "smudge":
        bump = np.clip(1 - r * r, 0, 1) ** tex.profile
        # A stain: darkens and hides some of the texture.
        return field * (1 - tex.flatten * bump) - _col(strength) * bump
    if tex.defect == "scratch":
        semi_minor = _col([e.semi_minor for e in ellipses])
        curve = _col(bend) * (u * u - 1 / 3)  # a gently curved streak along the major axis
        distance_px = np.abs(v - curve) * semi_minor
        width_px = max(0.75, 0.011 * size)
        line = np.exp(-((distance_px / width_px) ** 2)) * np.clip((0.85 - np.abs(u)) / 0.15, 0, 1)
        line *= np.clip((1 - r) / 0.1, 0, 1)
        return field - _col(strength) * line
    altered = tex.render(tex.alter(p, severity))
    weight = np.clip((1 - r) / 0.3, 0, 1)
    return field * (1 - weight) + altered * weight


def _subset(p: dict, idx: np.ndarray) -> dict:
    """The parameters of images ``idx`` of a batch."""
    out = {}
    for k, v in p.items():
        if isinstance(v, list):
            out[k] = [a[idx] for a in v]
        elif isinstance(v, np.ndarray) and v.ndim >= 1:
            out[k] = v[idx]
        else:
            out[k] = v
    return out


def _check_common(size: int, seed: int) -> None:
    if size < MIN_SIZE:
        raise DataonomyError(f"--size {size}: must be at least {MIN_SIZE} pixels")
    if seed < 0:
        raise DataonomyError(f"--seed {seed}: must be a non-negative integer")


def _check_severity(severity: float) -> None:
    if not 0.0 < severity <= 4.0:
        raise DataonomyError(f"--severity {severity}: must be in (0, 4]")


@dataclass(frozen=True)
class Rendering:
    """How the synthetic target's images are drawn: ``size`` (the side of the square images, in pixels),
    ``seed`` (the same seed draws the same images) and ``severity`` (how far a defect departs from the
    texture: below 1 subtler, above 1 easier to see; 0-4). Checked when made."""

    size: int = 128
    seed: int = 0
    severity: float = 1.0

    def __post_init__(self) -> None:
        _check_common(self.size, self.seed)
        _check_severity(self.severity)


def render_dagm_class(
    class_number: int,
    count: int,
    rendering: Rendering = Rendering(),
    *,
    stream: int = 0,
    start: int = 0,
    defective: Sequence[bool] | np.ndarray | None = None,
    ellipses: Sequence[Ellipse | None] | None = None,
) -> DagmBatch:
    """Render ``count`` images of synthetic DAGM class ``class_number`` (1-10), ``rendering.size``
    pixels square.

    Image ``i`` depends only on (rendering.seed, class_number, stream, start + i). ``defective`` (count,)
    says which images get a defect in their own random ellipse; ``ellipses`` instead gives each
    image's ellipse explicitly (None: defect-free), e.g. the same ellipse in a run of images to
    mimic a systematic defect. ``rendering.severity`` scales how far a defect departs from the texture
    (smudge and scratch contrast, the change of orientation or frequency): below 1 is subtler, above
    1 easier. The defect-free rendering of every image comes back too.
    """
    size, seed, severity = rendering.size, rendering.seed, rendering.severity
    tex = dagm_texture(class_number)
    R = PerImageRandom((seed, _DAGM_STREAM, class_number, stream), start, count)
    p = tex.draw(R, size)
    level = tex.brightness + R.uniform(-8, 8)
    contrast = tex.contrast * R.uniform(0.9, 1.1)
    strength = R.uniform(*tex.strength)
    bend = R.uniform(-0.6, 0.6)
    drawn = _draw_ellipses(R, size, tex)  # drawn for every image so parameters never shift
    if ellipses is None:
        flags = np.zeros(count, bool) if defective is None else np.asarray(defective, bool)
        if flags.shape != (count,):
            raise ValueError(f"defective has shape {flags.shape}, expected ({count},)")
        ellipses = [e if f else None for e, f in zip(drawn, flags, strict=True)]
    elif len(ellipses) != count:
        raise ValueError(f"{len(ellipses)} ellipses for {count} images")
    ellipses = list(ellipses)
    field = tex.render(p)
    defect_field = field.copy()
    idx = np.array([i for i, e in enumerate(ellipses) if e is not None], dtype=np.int64)
    if len(idx):
        defect_field[idx] = _apply_defects(
            tex, _subset(p, idx), field[idx], [ellipses[i] for i in idx], strength[idx], bend[idx], severity
        )

    def to_gray(f: np.ndarray) -> np.ndarray:
        return _to_uint8(_col(level) + _col(contrast) * f)

    return DagmBatch(to_gray(defect_field), to_gray(field), ellipses)


def dagm_texture(class_number: int) -> DagmTexture:
    """The recipe of synthetic DAGM class ``class_number`` (1-10)."""
    if not 1 <= int(class_number) <= len(DAGM_TEXTURES):
        raise DataonomyError(f"--classes {class_number}: synthetic DAGM classes are 1-{len(DAGM_TEXTURES)}")
    return DAGM_TEXTURES[int(class_number) - 1]


def labels_txt(rows: Sequence[tuple[str, bool]]) -> str:
    """A Kaggle-layout ``Labels.txt`` for (id, defective) rows, byte for byte as the real files:
    header ``1``, tab-separated ``id flag image 0 mask-or-0``, CRLF, a trailing tab on defect-free rows."""
    lines = ["1"]
    for ident, defect in rows:
        if defect:
            lines.append(f"{ident}\t1\t{ident}.PNG\t0\t{ident}_label.PNG")
        else:
            lines.append(f"{ident}\t0\t{ident}.PNG\t0\t0\t")
    return "\r\n".join(lines) + "\r\n"


def _dagm_class_numbers(classes: int | Sequence[int | str]) -> list[int]:
    if isinstance(classes, int | np.integer):
        if not 1 <= classes <= len(DAGM_TEXTURES):
            raise DataonomyError(
                f"--classes {classes}: must be 1-{len(DAGM_TEXTURES)} (the number of classes)"
            )
        return list(range(1, int(classes) + 1))
    numbers = []
    for c in classes:
        text = str(c).strip().lower().removeprefix("class")
        if not text.isdigit():
            raise DataonomyError(f"--classes '{c}': expected a class number 1-{len(DAGM_TEXTURES)} or ClassN")
        dagm_texture(int(text))
        numbers.append(int(text))
    if not numbers:
        raise DataonomyError("--classes: no classes given")
    if len(set(numbers)) != len(numbers):
        raise DataonomyError(f"--classes {','.join(map(str, numbers))}: a class is listed twice")
    return sorted(numbers)


def _write_dagm_split(
    split_dir: Path, number: int, stream: int, flags: np.ndarray, rendering: Rendering, ellipses: dict
) -> None:
    """One split of one synthetic DAGM class in the Kaggle layout: ``NNNN.PNG`` images, ``Label/`` masks and
    ``Labels.txt``; each defect's ellipse goes into ``ellipses`` under ``ClassN/split/NNNN.PNG``."""
    (split_dir / "Label").mkdir(parents=True)
    first_id = 1 + stream * len(flags)
    key = f"{split_dir.parent.name}/{split_dir.name}"
    rows = []
    for j, image, e in _render_flags(number, flags, rendering, stream):
        ident = f"{first_id + j:04d}"
        Image.fromarray(image, "L").save(split_dir / f"{ident}.PNG")
        rows.append((ident, e is not None))
        if e is not None:
            _mask_image(rendering.size, e).save(split_dir / "Label" / f"{ident}_label.PNG")
            ellipses[f"{key}/{ident}.PNG"] = [e.semi_major, e.semi_minor, e.angle, e.x, e.y]
    (split_dir / "Label" / "Labels.txt").write_bytes(labels_txt(rows).encode("ascii"))


def make_synthetic_dagm(
    out: str | Path,
    classes: int | Sequence[int | str] = 10,
    images_per_split: int = 100,
    defect_fraction: float = 0.18,
    rendering: Rendering = Rendering(),
    overwrite: bool = False,
) -> Path:
    """Write a synthetic DAGM dataset in the Kaggle layout; return ``out``.

    Each class gets ``images_per_split`` images in Train and in Test, of which
    ``round(defect_fraction * images_per_split)`` are defective (which ones is seeded), drawn with
    ``rendering``'s size, seed and severity. Test is numbered 0001..N and Train N+1..2N, as in the
    Kaggle copy. ``synthetic.json`` beside the class folders records the parameters, each class's
    texture and defect kind, and every ellipse (``semi_major semi_minor angle x y``, pixels and
    radians, as DAGM 2007's labels).
    """
    numbers = _dagm_class_numbers(classes)
    size, seed, severity = rendering.size, rendering.seed, rendering.severity
    if images_per_split < 1:
        raise DataonomyError(f"--images-per-split {images_per_split}: must be at least 1")
    if images_per_split > 4999:
        raise DataonomyError(f"--images-per-split {images_per_split}: at most 4999 (4-digit DAGM file names)")
    if not 0.0 <= defect_fraction <= 1.0:
        raise DataonomyError(f"--defect-fraction {defect_fraction}: must be in [0, 1]")
    n_defective = int(round(defect_fraction * images_per_split))
    record = {
        "generator": "dataonomy.datasets.synthetic.make_synthetic_dagm",
        "version": GENERATOR_VERSION,
        "parameters": {
            "classes": numbers,
            "images_per_split": images_per_split,
            "defect_fraction": defect_fraction,
            "size": size,
            "seed": seed,
            "severity": severity,
        },
        "classes": {},
        "ellipses": {},
    }
    with staged_folder(out, overwrite) as stage:
        for number in numbers:
            tex = dagm_texture(number)
            label = f"Class{number}"
            record["classes"][label] = {
                "texture": tex.name,
                "defect": tex.defect,
                "defective_per_split": n_defective,
            }
            for split, stream in _SPLITS:
                key = (seed, _DAGM_STREAM, number, stream, 1 << 20)
                flags = _seeded_flags(images_per_split, n_defective, key)
                _write_dagm_split(stage / label / split, number, stream, flags, rendering, record["ellipses"])
        write_json(stage / "synthetic.json", record)
    return Path(out)


# --- the synthetic target in the MVTec AD and KolektorSDD layouts --------------------------------

_MVTEC_STREAMS = {"train": 2, "test": 3}
_KSDD_STREAM = 4
_KSDD2_STREAMS = {"train": 5, "test": 6}
KOLEKTOR_LAYOUTS = ("ksdd", "ksdd2")


def mvtec_category(class_number: int) -> str:
    """The MVTec-style category name of synthetic DAGM class ``class_number``: its texture's name
    (``vertical_fibres``)."""
    return dagm_texture(class_number).name.replace(" ", "_")


def _render_flags(
    number: int, flags: np.ndarray, rendering: Rendering, stream: int, start: int = 0
) -> Iterator[tuple[int, np.ndarray, Ellipse | None]]:
    """(index, gray image (H, W) uint8, ellipse or None) for images ``start .. start + len(flags) - 1``
    of a synthetic DAGM class, rendered in chunks; ``flags`` says which get a defect."""
    for first in range(0, len(flags), CHUNK):
        count = min(CHUNK, len(flags) - first)
        batch = render_dagm_class(
            number,
            count,
            rendering,
            stream=stream,
            start=start + first,
            defective=flags[first : first + count],
        )
        for j in range(count):
            yield first + j, batch.images[j], batch.ellipses[j]


def _mask_image(size: int, e: Ellipse | None) -> Image.Image:
    """The 0/255 mask of an ellipse (all zero for None), as an 8-bit gray image."""
    mask = (
        np.zeros((size, size), np.uint8)
        if e is None
        else rasterize_ellipse(size, size, e).astype(np.uint8) * 255
    )
    return Image.fromarray(mask, "L")


def _seeded_flags(count: int, n_defective: int, key: Sequence[int]) -> np.ndarray:
    flags = np.zeros(count, bool)
    flags[np.random.default_rng(list(key)).permutation(count)[:n_defective]] = True
    return flags


def make_synthetic_mvtec(
    out: str | Path,
    classes: int | Sequence[int | str] = 2,
    train_images: int = 10,
    test_good: int = 4,
    test_defective: int = 4,
    rendering: Rendering = Rendering(),
    overwrite: bool = False,
) -> Path:
    """Write the synthetic DAGM textures in the MVTec AD layout; return ``out``.

    One category per texture class (named by :func:`mvtec_category`): ``train/good/NNN.png``
    (``train_images`` defect-free images), ``test/good/NNN.png`` (``test_good``),
    ``test/<defect kind>/NNN.png`` (``test_defective``, the class's defect kind: smudge, scratch,
    orientation or frequency) and ``ground_truth/<defect kind>/NNN_mask.png`` (0/255 ellipses). Images
    are RGB PNGs (three equal channels), drawn with ``rendering``'s size, seed and severity.
    ``synthetic.json`` records the parameters and every ellipse.
    """
    numbers = _dagm_class_numbers(classes)
    size, seed, severity = rendering.size, rendering.seed, rendering.severity
    for option, n, least in (
        ("--train-images", train_images, 1),
        ("--test-good", test_good, 0),
        ("--test-defective", test_defective, 0),
    ):
        if n < least:
            raise DataonomyError(f"{option} {n}: must be at least {least}")
    if test_good + test_defective < 1:
        raise DataonomyError("--test-good and --test-defective: the test split needs at least one image")
    record = {
        "generator": "dataonomy.datasets.synthetic.make_synthetic_mvtec",
        "version": GENERATOR_VERSION,
        "parameters": {
            "classes": numbers,
            "train_images": train_images,
            "test_good": test_good,
            "test_defective": test_defective,
            "size": size,
            "seed": seed,
            "severity": severity,
        },
        "categories": {},
        "ellipses": {},
    }

    def save(image: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.repeat(image[..., None], 3, axis=-1), "RGB").save(path)

    with staged_folder(out, overwrite) as stage:
        for number in numbers:
            tex = dagm_texture(number)
            category = stage / mvtec_category(number)
            record["categories"][category.name] = {"class": number, "texture": tex.name, "defect": tex.defect}
            flags = np.zeros(train_images, bool)
            for i, image, _ in _render_flags(number, flags, rendering, _MVTEC_STREAMS["train"]):
                save(image, category / "train" / "good" / f"{i:03d}.png")
            flags = np.array([False] * test_good + [True] * test_defective)
            for i, image, e in _render_flags(number, flags, rendering, _MVTEC_STREAMS["test"]):
                if e is None:
                    save(image, category / "test" / "good" / f"{i:03d}.png")
                    continue
                j = i - test_good
                save(image, category / "test" / tex.defect / f"{j:03d}.png")
                mask = category / "ground_truth" / tex.defect / f"{j:03d}_mask.png"
                mask.parent.mkdir(parents=True, exist_ok=True)
                _mask_image(size, e).save(mask)
                key = f"{category.name}/test/{tex.defect}/{j:03d}.png"
                record["ellipses"][key] = [e.semi_major, e.semi_minor, e.angle, e.x, e.y]
        write_json(stage / "synthetic.json", record)
    return Path(out)


@dataclass(frozen=True)
class KsddLayout:
    """The KolektorSDD layout and its counts: ``items`` folders ``kos01``.. (1-99) of ``parts`` images each.
    Checked when made."""

    items: int = 4
    parts: int = 8
    name: ClassVar[str] = "ksdd"

    def __post_init__(self) -> None:
        if not 1 <= self.items <= 99:
            raise DataonomyError(f"--items {self.items}: must be 1-99 (kos01..kos99)")
        if self.parts < 1:
            raise DataonomyError(f"--parts {self.parts}: must be at least 1")


@dataclass(frozen=True)
class Ksdd2Layout:
    """The KolektorSDD2 layout and its count: ``images_per_split`` images (1-49999) in train and in test.
    Checked when made."""

    images_per_split: int = 12
    name: ClassVar[str] = "ksdd2"

    def __post_init__(self) -> None:
        if not 1 <= self.images_per_split <= 49999:
            raise DataonomyError(
                f"--images-per-split {self.images_per_split}: must be 1-49999 (5-digit file names)"
            )


def kolektor_layout(
    name: str, items: int | None = None, parts: int | None = None, images_per_split: int | None = None
) -> KsddLayout | Ksdd2Layout:
    """The layout ``name`` (one of :data:`KOLEKTOR_LAYOUTS`) with the counts given, None for a default: the
    ``synth kolektor`` command's flat options. A count of the other layout is an error."""
    if name not in KOLEKTOR_LAYOUTS:
        raise DataonomyError(f"--layout '{name}': must be one of {', '.join(KOLEKTOR_LAYOUTS)}")
    if name == "ksdd":
        if images_per_split is not None:
            raise DataonomyError("--images-per-split applies to --layout ksdd2 (KolektorSDD has no split)")
        counts = {"items": items, "parts": parts}
        return KsddLayout(**{k: v for k, v in counts.items() if v is not None})
    for option, value in (("--items", items), ("--parts", parts)):
        if value is not None:
            raise DataonomyError(f"{option} applies to --layout ksdd (KolektorSDD2 has no items)")
    return Ksdd2Layout() if images_per_split is None else Ksdd2Layout(images_per_split)


def make_synthetic_kolektor(
    out: str | Path,
    layout: KsddLayout | Ksdd2Layout = KsddLayout(),
    texture: int = 2,
    defect_fraction: float = 0.25,
    rendering: Rendering = Rendering(),
    quality: int = 95,
    overwrite: bool = False,
) -> Path:
    """Write one synthetic DAGM texture in a KolektorSDD layout; return ``out``.

    ``layout`` :class:`KsddLayout`: ``kosNN/PartK.jpg`` (8-bit gray JPEG, ``quality``) with
    ``kosNN/PartK_label.bmp`` (0/255; all zero for a defect-free part), ``items`` folders (default 4) of
    ``parts`` images (default 8). :class:`Ksdd2Layout`: ``{train,test}/NNNNN.png`` (RGB) with
    ``NNNNN_GT.png`` (0/255), ``images_per_split`` images per split (default 12), train numbered first.
    ``round(defect_fraction * images)`` images are defective (which ones is seeded). ``texture`` is the
    synthetic DAGM class drawn (default 2, vertical fibres with scratches, which looks most like a
    commutator), with ``rendering``'s size, seed and severity. ``synthetic.json`` records the parameters
    and every ellipse.
    """
    if isinstance(layout, KsddLayout):
        counts = {"items": layout.items, "parts": layout.parts, "images_per_split": None}
    elif isinstance(layout, Ksdd2Layout):
        counts = {"items": None, "parts": None, "images_per_split": layout.images_per_split}
    else:
        raise TypeError(f"layout: expected a KsddLayout or a Ksdd2Layout, got {layout!r}")
    job = _KolektorJob(int(texture), rendering, quality, defect_fraction)
    job.check()
    tex = dagm_texture(texture)
    record = {
        "generator": "dataonomy.datasets.synthetic.make_synthetic_kolektor",
        "version": GENERATOR_VERSION,
        "parameters": {
            "layout": layout.name,
            "texture": int(texture),
            **counts,
            "defect_fraction": defect_fraction,
            "size": rendering.size,
            "seed": rendering.seed,
            "severity": rendering.severity,
            "quality": quality,
        },
        "texture": {"name": tex.name, "defect": tex.defect},
        "ellipses": {},
    }
    with staged_folder(out, overwrite) as stage:
        if isinstance(layout, KsddLayout):
            _write_ksdd(stage, job, layout.items, layout.parts, record["ellipses"])
        else:
            _write_ksdd2(stage, job, layout.images_per_split, record["ellipses"])
        write_json(stage / "synthetic.json", record)
    return Path(out)


@dataclass(frozen=True)
class _KolektorJob:
    """What every synthetic Kolektor image is drawn with."""

    texture: int
    rendering: Rendering
    quality: int
    defect_fraction: float

    def check(self) -> None:
        dagm_texture(self.texture)
        if not 0.0 <= self.defect_fraction <= 1.0:
            raise DataonomyError(f"--defect-fraction {self.defect_fraction}: must be in [0, 1]")
        if not 1 <= self.quality <= 100:
            raise DataonomyError(f"--quality {self.quality}: must be 1-100")

    def render(self, count: int, stream: int):
        """``(i, image, ellipse or None)`` for ``count`` images of ``stream``, the defective ones seeded."""
        key = (self.rendering.seed, stream, self.texture, 1 << 20)
        flags = _seeded_flags(count, int(round(self.defect_fraction * count)), key)
        return _render_flags(self.texture, flags, self.rendering, stream)

    def mask(self, e: Ellipse | None) -> Image.Image:
        return _mask_image(self.rendering.size, e)


def _keep_ellipse(ellipses: dict, e: Ellipse | None, key: str) -> None:
    if e is not None:
        ellipses[key] = [e.semi_major, e.semi_minor, e.angle, e.x, e.y]


def _write_ksdd(stage: Path, job: _KolektorJob, items: int, parts: int, ellipses: dict) -> None:
    """KolektorSDD: ``kosNN/PartK.jpg`` (gray JPEG) with ``kosNN/PartK_label.bmp``."""
    for i, image, e in job.render(items * parts, _KSDD_STREAM):
        folder = stage / f"kos{i // parts + 1:02d}"
        folder.mkdir(exist_ok=True)
        part = f"Part{i % parts}"
        Image.fromarray(image, "L").save(folder / f"{part}.jpg", quality=job.quality)
        job.mask(e).save(folder / f"{part}_label.bmp")
        _keep_ellipse(ellipses, e, f"{folder.name}/{part}.jpg")


def _write_ksdd2(stage: Path, job: _KolektorJob, images_per_split: int, ellipses: dict) -> None:
    """KolektorSDD2: ``{train,test}/NNNNN.png`` (RGB) with ``NNNNN_GT.png``, train numbered first."""
    first = 0
    for split in ("train", "test"):
        folder = stage / split
        folder.mkdir()
        for i, image, e in job.render(images_per_split, _KSDD2_STREAMS[split]):
            ident = f"{first + i:05d}"
            Image.fromarray(np.repeat(image[..., None], 3, axis=-1), "RGB").save(folder / f"{ident}.png")
            job.mask(e).save(folder / f"{ident}_GT.png")
            _keep_ellipse(ellipses, e, f"{split}/{ident}.png")
        first += images_per_split


# --- the synthetic source pool -----------------------------------------------------------------


@dataclass(frozen=True)
class SourceClass:
    """A synthetic source class: a WordNet synset and the recipe that draws it.

    ``render(R, size)`` returns RGB images (n, H, W, 3) in [0, 1]; ``family`` groups classes
    (fabric, design, shape, material) for documentation.
    """

    wnid: str
    name: str
    family: str
    render: Callable


def _grain(R: PerImageRandom, size: int, freq: float = 50.0) -> np.ndarray:
    return bandpass_noise(R.white(size), freq, 0.6)


def _s_tartan(R: PerImageRandom, size: int) -> np.ndarray:
    palette = _hsv(R.uniform(0, 1, (4,)), R.uniform(0.4, 0.9, (4,)), R.uniform(0.15, 0.85, (4,)))
    palette = palette.reshape(R.n, 4, 3)
    widths = R.integers(2, 12, (6,)) * max(size / 128, 0.5)
    colours = R.integers(0, 4, (6,))
    offsets = R.integers(0, size, (2,))
    twill_dir = R.integers(0, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((R.n, size, size, 3), np.float32)
    for i in range(R.n):
        # A sett: bands of colour, mirrored (tartans are symmetric), repeated; the same for warp and weft.
        bands = np.repeat(colours[i], np.maximum(np.rint(widths[i]).astype(int), 1))
        sett = np.concatenate([bands, bands[::-1]])
        stripe = sett[(np.arange(size)[None, :] + offsets[i][:, None]) % len(sett)]
        warp, weft = palette[i][stripe[0]], palette[i][stripe[1]]
        twill = ((xx + (yy if twill_dir[i] else -yy)) // 2) % 2 == 0
        out[i] = np.where(twill[..., None], warp[None, :, :], weft[:, None, :])
    return out * (1 + 0.06 * _grain(R, size))[..., None]


def _s_denim(R: PerImageRandom, size: int) -> np.ndarray:
    twill = bandpass_noise(R.white(size), R.uniform(30, 40), 0.3, R.uniform(1.0, 1.25), 0.15)
    fleck = _grain(R, size, 55)
    fade = bandpass_noise(R.white(size), 2.0, 0.6)
    t = np.clip(0.45 + 0.2 * twill + 0.1 * fleck + 0.12 * fade * _col(R.uniform(0.3, 1.5)), 0, 1)
    h = R.uniform(0.57, 0.64)
    return _mix(
        t,
        _hsv(h, R.uniform(0.6, 0.9), R.uniform(0.12, 0.3)),
        _hsv(h, R.uniform(0.2, 0.4), R.uniform(0.7, 0.9)),
    )


def _s_herringbone(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    u, v = rotate(x, y, R.uniform(-0.2, 0.2) + R.choice([0, np.pi / 2]))
    column = np.floor(u / _col(R.uniform(0.06, 0.12)))
    sign = np.where(column % 2 == 0, 1.0, -1.0)
    s = np.sin(2 * np.pi * _col(R.uniform(14, 22)) * (v + sign * u))
    t = np.clip(0.5 + 0.35 * s + 0.12 * _grain(R, size), 0, 1)
    h = R.uniform(0.03, 0.14)
    return _mix(
        t,
        _hsv(h, R.uniform(0.1, 0.4), R.uniform(0.15, 0.35)),
        _hsv(h, R.uniform(0.05, 0.3), R.uniform(0.55, 0.8)),
    )


def _s_knit(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    u, v = rotate(x, y, R.uniform(-0.15, 0.15))
    col_w = R.uniform(0.05, 0.08)
    cu = 2 * ((u / _col(col_w)) % 1.0) - 1  # -1..1 across a column of stitches
    rows = v / _col(col_w * R.uniform(0.6, 0.85))
    s = np.cos(2 * np.pi * (rows + 0.6 * np.abs(cu)))
    t = np.clip(0.55 + 0.3 * s * (1 - 0.5 * cu**2) - 0.25 * cu**2 + 0.08 * _grain(R, size), 0, 1)
    c = _hsv(R.uniform(0, 1), R.uniform(0.45, 0.9), R.uniform(0.55, 0.9))
    return _mix(t, c * 0.3, c)


def _s_velvet(R: PerImageRandom, size: int) -> np.ndarray:
    folds = bandpass_noise(R.white(size), R.uniform(1.5, 3), 0.6)
    sheen = bandpass_noise(R.white(size), R.uniform(3, 6), 0.5, R.uniform(0, np.pi), 0.5)
    t = np.clip(0.5 + 0.25 * folds + 0.12 * sheen + 0.03 * _grain(R, size), 0, 1)
    c = _hsv(
        R.choice([0.0, 0.8, 0.65, 0.35, 0.95]) + R.uniform(-0.03, 0.03),
        R.uniform(0.7, 1),
        R.uniform(0.6, 0.9),
    )
    return c[:, None, None, :] * (0.2 + 0.9 * t[..., None])


def _s_net(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    base, half = R.uniform(0, np.pi), R.uniform(0.55, 1.0)
    warp = 0.015 * bandpass_noise(R.white(size), 1.5, 0.5)
    f = _col(R.uniform(6, 10))
    width = _col(R.uniform(0.005, 0.009))
    lines = 0
    for angle in (base + half, base - half):
        u, _ = rotate(x, y, angle)
        d = np.abs((f * (u + warp)) % 1.0 - 0.5) / f
        lines = np.maximum(lines, np.exp(-((d / width) ** 2)))
    bg = np.clip(0.5 + 0.25 * bandpass_noise(R.white(size), 2.0, 0.6), 0, 1)
    background = _mix(
        bg,
        _hsv(R.uniform(0, 1), R.uniform(0.2, 0.6), R.uniform(0.05, 0.2)),
        _hsv(R.uniform(0, 1), R.uniform(0.2, 0.6), R.uniform(0.25, 0.45)),
    )
    cord = _hsv(R.uniform(0, 1), R.uniform(0, 0.5), R.uniform(0.75, 1.0))
    return background * (1 - lines[..., None]) + cord[:, None, None, :] * lines[..., None]


def _s_burlap(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    u, v = rotate(x, y, R.uniform(-0.1, 0.1))
    period = _col(R.uniform(0.03, 0.045))
    cu, cv = (u / period) % 1.0, (v / period) % 1.0
    over = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    warp = np.sin(np.pi * cu) ** 0.7 * (0.7 + 0.3 * np.sin(np.pi * cv))
    weft = np.sin(np.pi * cv) ** 0.7 * (0.7 + 0.3 * np.sin(np.pi * cu))
    thickness = 0.8 + 0.15 * bandpass_noise(R.white(size), 6.0, 0.6)
    fibres = bandpass_noise(R.white(size), 40.0, 0.5, R.uniform(0, np.pi), 0.4)
    t = np.clip(np.where(over, warp, weft) * thickness + 0.1 * fibres, 0, 1)
    h = R.uniform(0.07, 0.12)
    return _mix(
        t,
        _hsv(h, R.uniform(0.4, 0.7), R.uniform(0.08, 0.2)),
        _hsv(h, R.uniform(0.3, 0.5), R.uniform(0.6, 0.8)),
    )


def _s_weave(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    u, v = rotate(x, y, R.choice([0, np.pi / 4]) + R.uniform(-0.1, 0.1))
    block = _col(R.uniform(0.1, 0.16))
    horizontal = (np.floor(u / block) + np.floor(v / block)) % 2 == 0
    strips = np.where(horizontal, (v / block * 3) % 1.0, (u / block * 3) % 1.0)
    t = np.clip(np.sin(np.pi * strips) ** 0.5 + 0.05 * _grain(R, size), 0, 1)
    a, b = (
        _hsv(R.uniform(0, 1), R.uniform(0.4, 0.9), R.uniform(0.6, 0.95)),
        _hsv(R.uniform(0, 1), R.uniform(0.4, 0.9), R.uniform(0.1, 0.35)),
    )
    return _mix(t, b, a)


def _s_polka(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    u, v = rotate(x, y, R.uniform(0, np.pi))
    p = _col(R.uniform(0.08, 0.16))
    row = np.floor(v / p)
    du = (u / p + 0.5 * (row % 2)) % 1.0 - 0.5
    dv = (v / p) % 1.0 - 0.5
    d = np.hypot(du, dv) * p
    dot = _smooth_step(_col(R.uniform(0.2, 0.35)) * p - d, 1.5 / size)
    hb, hd = R.uniform(0, 1), R.uniform(0, 1)
    light = R.integers(0, 2).astype(np.float32)  # light dots on dark ground, or the reverse
    vb = np.where(light == 1, R.uniform(0.1, 0.35), R.uniform(0.75, 1.0))
    vd = np.where(light == 1, R.uniform(0.75, 1.0), R.uniform(0.1, 0.35))
    return _mix(dot, _hsv(hb, R.uniform(0.2, 0.9), vb), _hsv(hd, R.uniform(0.3, 1.0), vd))


def _s_zigzag(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    u, v = rotate(x, y, R.choice([0, np.pi / 2]) + R.uniform(-0.25, 0.25))
    tri = 2 * np.abs((u / _col(R.uniform(0.1, 0.2))) % 1.0 - 0.5)
    yy = v + _col(R.uniform(0.03, 0.07)) * tri
    p = _col(R.uniform(0.06, 0.12))
    band = np.floor(yy / p) % 3
    palette = _hsv(
        R.uniform(0, 1, (3,)),
        R.uniform(0.3, 0.9, (3,)),
        np.array([0.2, 0.6, 0.95]) + R.uniform(-0.1, 0.05, (3,)),
    )
    out = palette.reshape(R.n, 3, 3)[np.arange(R.n)[:, None, None], band.astype(np.int64)]
    return out * (1 + 0.04 * _grain(R, size))[..., None]


def _s_checkerboard(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    u, v = rotate(x, y, R.uniform(0, np.pi / 2))
    p = _col(R.uniform(0.08, 0.2))
    su, sv = np.sin(np.pi * u / p), np.sin(np.pi * v / p)
    t = _smooth_step(su * sv * p / np.pi, 1.5 / size)  # anti-aliased squares
    light = _hsv(R.uniform(0, 1), R.uniform(0, 0.5), R.uniform(0.75, 1.0))
    dark = _hsv(R.uniform(0, 1), R.uniform(0, 0.8), R.uniform(0.0, 0.3))
    shade = 1 + 0.1 * bandpass_noise(R.white(size), 1.0, 0.5)
    return _mix(t, dark, light) * shade[..., None]


def _s_stripe(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    _, v = rotate(x, y, R.uniform(0, np.pi))
    p = _col(R.uniform(0.05, 0.15))
    duty = _col(R.uniform(0.3, 0.7))
    phase = (v / p) % 1.0
    inside = np.where(phase < duty, np.minimum(phase, duty - phase), -np.minimum(phase - duty, 1 - phase))
    t = _smooth_step(inside * p, 1.5 / size)
    a = _hsv(R.uniform(0, 1), R.uniform(0.3, 1.0), R.uniform(0.55, 1.0))
    b = _hsv(R.uniform(0, 1), R.uniform(0.0, 0.8), R.uniform(0.05, 0.45))
    return _mix(t, b, a) * (1 + 0.03 * _grain(R, size))[..., None]


def _s_lattice(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    u, v = rotate(x, y, R.choice([0, np.pi / 4]) + R.uniform(-0.1, 0.1))
    p = _col(R.uniform(0.1, 0.18))
    half = p * _col(R.uniform(0.12, 0.2))
    du = np.abs((u / p) % 1.0 - 0.5) * p  # distance to the bar's centre line
    dv = np.abs((v / p) % 1.0 - 0.5) * p
    bar_u, bar_v = _smooth_step(half - du, 1.5 / size), _smooth_step(half - dv, 1.5 / size)
    on_top_u = (np.floor(u / p) + np.floor(v / p)) % 2 == 0  # over-under at crossings
    prof_u = np.cos(0.5 * np.pi * np.clip(du / half, 0, 1))
    prof_v = np.cos(0.5 * np.pi * np.clip(dv / half, 0, 1))
    bar = np.maximum(bar_u, bar_v)
    shade = np.where(on_top_u & (bar_u > 0), prof_u, np.where(bar_v > 0, prof_v, prof_u))
    wood = _hsv(R.uniform(0.05, 0.35), R.uniform(0.1, 0.7), R.uniform(0.6, 0.95))
    ground = _hsv(R.uniform(0, 1), R.uniform(0.2, 0.7), R.uniform(0.05, 0.3))
    bars = wood[:, None, None, :] * (0.55 + 0.45 * shade[..., None])
    return ground[:, None, None, :] * (1 - bar[..., None]) + bars * bar[..., None]


def _s_honeycomb(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    u, v = rotate(x, y, R.uniform(0, np.pi / 3))
    s = _col(R.uniform(0.05, 0.09))  # cell circumradius
    sx, sy = np.sqrt(3) * s, 3 * s
    # The hexagonal lattice is two offset rectangular lattices; the nearest centre is the nearer of both.
    best_dx, best_dy = None, None
    for ox, oy in ((0.0, 0.0), (0.5, 0.5)):
        cx = (np.round(u / sx - ox) + ox) * sx
        cy = (np.round(v / sy - oy) + oy) * sy
        dx, dy = u - cx, v - cy
        if best_dx is None:
            best_dx, best_dy = dx, dy
        else:
            closer = dx * dx + dy * dy < best_dx**2 + best_dy**2
            best_dx, best_dy = np.where(closer, dx, best_dx), np.where(closer, dy, best_dy)
    reach = np.maximum.reduce(
        [np.abs(best_dx * np.cos(a) + best_dy * np.sin(a)) for a in (0, np.pi / 3, 2 * np.pi / 3)]
    )
    edge = np.sqrt(3) / 2 * s - reach  # distance to the cell wall
    wall = np.exp(-((edge / _col(R.uniform(0.006, 0.012))) ** 2))
    depth = np.clip(edge / (np.sqrt(3) / 2 * s), 0, 1)
    t = np.clip(0.9 - 0.5 * depth + 0.05 * _grain(R, size), 0, 1)
    amber = _hsv(R.uniform(0.08, 0.14), R.uniform(0.6, 0.95), R.uniform(0.6, 0.95))
    cells = amber[:, None, None, :] * t[..., None]
    wax = _hsv(R.uniform(0.1, 0.15), R.uniform(0.2, 0.5), R.uniform(0.85, 1.0))
    return cells * (1 - wall[..., None]) + wax[:, None, None, :] * wall[..., None]


def _s_ripple(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    height = 0
    for _ in range(2):
        cx, cy = R.uniform(-0.5, 1.5), R.uniform(-0.5, 1.5)
        r = np.hypot(x - _col(cx), y - _col(cy))
        height = height + np.sin(2 * np.pi * _col(R.uniform(8, 14)) * r + _col(R.uniform(0, 2 * np.pi)))
    height = height + 0.5 * bandpass_noise(R.white(size), 3.0, 0.6)
    slope = np.gradient(height, axis=-1) * size / 30
    t = np.clip(0.5 + 0.4 * np.tanh(slope), 0, 1)
    h = R.uniform(0.45, 0.62)
    return _mix(
        t,
        _hsv(h, R.uniform(0.5, 0.9), R.uniform(0.15, 0.35)),
        _hsv(h, R.uniform(0.1, 0.4), R.uniform(0.75, 1.0)),
    )


def _s_circle(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    bg = _hsv(R.uniform(0, 1), R.uniform(0, 0.5), R.uniform(0.3, 1.0))
    out = _mix(np.clip(0.5 + 0.15 * bandpass_noise(R.white(size), 1.5, 0.5), 0, 1), bg * 0.85, bg)
    count = R.integers(1, 4)
    for k in range(3):
        cx, cy, radius = R.uniform(0.2, 0.8), R.uniform(0.2, 0.8), R.uniform(0.1, 0.3)
        ring = R.integers(0, 2) == 1
        thickness = R.uniform(0.02, 0.05)
        colour = _hsv(R.uniform(0, 1), R.uniform(0.4, 1), R.uniform(0.2, 1))
        d = np.hypot(x - _col(cx), y - _col(cy)) - _col(radius)  # signed distance to the circle
        inside = np.where(_col(ring), _col(thickness) - np.abs(d), -d)
        a = _smooth_step(inside, 1.5 / size) * _col(k < count)
        out = out * (1 - a[..., None]) + colour[:, None, None, :] * a[..., None]
    return out


def _s_triangle(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    bg = _hsv(R.uniform(0, 1), R.uniform(0, 0.5), R.uniform(0.3, 1.0))
    out = _mix(np.clip(0.5 + 0.15 * bandpass_noise(R.white(size), 1.5, 0.5), 0, 1), bg * 0.85, bg)
    count = R.integers(1, 3)
    for k in range(2):
        cx, cy, radius = R.uniform(0.3, 0.7), R.uniform(0.3, 0.7), R.uniform(0.15, 0.35)
        turn = R.uniform(0, 2 * np.pi / 3)
        colour = _hsv(R.uniform(0, 1), R.uniform(0.4, 1), R.uniform(0.2, 1))
        # Signed distance inside a triangle: the smallest distance to its three edge lines.
        inside = None
        for j in range(3):
            normal = turn + 2 * np.pi * j / 3
            d = _col(radius) / 2 - (
                (x - _col(cx)) * np.cos(_col(normal)) + (y - _col(cy)) * np.sin(_col(normal))
            )
            inside = d if inside is None else np.minimum(inside, d)
        a = _smooth_step(inside, 1.5 / size) * _col(k < count)
        out = out * (1 - a[..., None]) + colour[:, None, None, :] * a[..., None]
    return out


def _stones(R: PerImageRandom, size: int, count: int, gap: float, dome: bool) -> np.ndarray:
    y, x = grid(size)
    points = R.uniform(-0.05, 1.05, (count, 2))
    d1, d2, index = voronoi(x, y, points)
    base_h, base_s = R.uniform(0.02, 0.14), R.uniform(0.05, 0.35)
    tones = _hsv(
        (base_h[:, None] + R.uniform(-0.04, 0.04, (count,))).ravel(),
        (base_s[:, None] * R.uniform(0.5, 1.5, (count,))).ravel(),
        R.uniform(0.3, 0.85, (count,)).ravel(),
    ).reshape(R.n, count, 3)
    stone = tones[np.arange(R.n)[:, None, None], index]
    edge = np.clip((d2 - d1) / gap, 0, 1)
    shade = np.sqrt(edge) if dome else np.clip(edge * 3, 0, 1)
    if dome:  # light from the upper left on a rounded top
        slope = np.gradient(shade, axis=-1) + np.gradient(shade, axis=-2)
        shade = shade * (0.8 - 0.2 * np.tanh(slope * size / 16))
    return stone * (0.15 + 0.85 * shade[..., None]) * (1 + 0.08 * _grain(R, size))[..., None]


def _s_gravel(R: PerImageRandom, size: int) -> np.ndarray:
    return _stones(R, size, 90, 0.025, dome=False)


def _s_pebble(R: PerImageRandom, size: int) -> np.ndarray:
    return _stones(R, size, 14, 0.12, dome=True)


def _tint(t: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """A material of one colour whose brightness follows t (around 0.5)."""
    return colour[:, None, None, :] * (0.5 + t[..., None])


def _s_sand(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    _, v = rotate(x, y, R.uniform(0, np.pi))
    ripples = np.sin(2 * np.pi * _col(R.uniform(5, 9)) * v + 2 * bandpass_noise(R.white(size), 2.0, 0.5))
    t = 0.5 + 0.18 * _grain(R, size, R.uniform(45, 60)) + 0.1 * ripples * _col(R.uniform(0.3, 1.0))
    return _tint(t, _hsv(R.uniform(0.08, 0.13), R.uniform(0.25, 0.5), R.uniform(0.6, 0.85)))


def _s_marble(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    u, _ = rotate(x, y, R.uniform(0, np.pi))
    turbulence = bandpass_noise(R.white(size), R.uniform(2, 4), 0.8) + 0.5 * bandpass_noise(
        R.white(size), 8.0, 0.6
    )
    veins = np.abs(np.sin(2 * np.pi * (_col(R.uniform(1.5, 3)) * u + 0.25 * turbulence))) ** _col(
        R.uniform(0.15, 0.3)
    )
    green = R.integers(0, 4) == 0  # a few dark green marbles among the white ones
    base = np.where(
        green[:, None],
        _hsv(R.uniform(0.35, 0.45), R.uniform(0.3, 0.6), R.uniform(0.2, 0.4)),
        _hsv(R.uniform(0.05, 0.6), R.uniform(0.0, 0.1), R.uniform(0.85, 0.98)),
    )
    vein = np.where(
        green[:, None],
        _hsv(R.uniform(0, 1), 0.05, 0.9),
        _hsv(R.uniform(0, 1), R.uniform(0, 0.2), R.uniform(0.25, 0.5)),
    )
    return _mix(veins, vein, base) * (1 + 0.03 * bandpass_noise(R.white(size), 5.0, 0.6))[..., None]


def _s_concrete(R: PerImageRandom, size: int) -> np.ndarray:
    mottle = bandpass_noise(R.white(size), R.uniform(3, 6), 0.8)
    pores = np.clip((bandpass_noise(R.white(size), R.uniform(20, 30), 0.4) - 2.2) / 0.5, 0, 1)
    t = 0.5 + 0.1 * mottle + 0.1 * _grain(R, size, 40) - 0.35 * pores
    return _tint(t, _hsv(R.uniform(0.05, 0.6), R.uniform(0, 0.08), R.uniform(0.45, 0.75)))


def _s_cork(R: PerImageRandom, size: int) -> np.ndarray:
    granules = bandpass_noise(R.white(size), R.uniform(12, 18), 0.5)
    spots = np.clip((bandpass_noise(R.white(size), R.uniform(20, 28), 0.4) - 1.6) / 0.6, 0, 1)
    t = 0.5 + 0.2 * granules - 0.3 * spots + 0.08 * _grain(R, size)
    return _tint(t, _hsv(R.uniform(0.06, 0.1), R.uniform(0.45, 0.65), R.uniform(0.5, 0.75)))


def _s_sponge(R: PerImageRandom, size: int) -> np.ndarray:
    holes = np.clip(
        (bandpass_noise(R.white(size), R.uniform(9, 14), 0.5) - R.uniform(0.4, 0.8)[:, None, None]) / 0.5,
        0,
        1,
    )
    t = 1 - 0.75 * holes + 0.08 * _grain(R, size, 40)
    colour = _hsv(R.uniform(0.1, 0.16), R.uniform(0.6, 0.9), R.uniform(0.75, 0.95))
    return colour[:, None, None, :] * t[..., None]


def _s_cardboard(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    u, _ = rotate(x, y, R.choice([0, np.pi / 2]))
    corrugation = np.sin(2 * np.pi * _col(R.uniform(10, 18)) * u)
    fibres = bandpass_noise(R.white(size), R.uniform(30, 45), 0.5, R.uniform(0, np.pi), 0.3)
    t = 0.5 + 0.06 * corrugation + 0.1 * fibres + 0.06 * bandpass_noise(R.white(size), 3.0, 0.6)
    return _tint(t, _hsv(R.uniform(0.07, 0.1), R.uniform(0.4, 0.6), R.uniform(0.55, 0.75)))


def _s_paper(R: PerImageRandom, size: int) -> np.ndarray:
    fibres = bandpass_noise(R.white(size), R.uniform(25, 40), 0.7, R.uniform(0, np.pi), 0.6)
    t = 0.5 + 0.05 * fibres + 0.04 * bandpass_noise(R.white(size), 4.0, 0.6)
    return _tint(t, _hsv(R.uniform(0.1, 0.6), R.uniform(0, 0.08), R.uniform(0.85, 0.97)))


def _s_wood(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    angle = R.choice([0, np.pi / 2]) + R.uniform(-0.15, 0.15)
    _, v = rotate(x, y, angle)
    warp = bandpass_noise(R.white(size), R.uniform(1, 2.5), 0.6)
    rings = (_col(R.uniform(6, 12)) * (v + 0.08 * _col(R.uniform(0.5, 1.5)) * warp)) % 1.0
    fibre = bandpass_noise(R.white(size), R.uniform(40, 55), 0.5, angle, 0.05)
    t = 0.75 - 0.35 * rings**4 + 0.06 * fibre
    return _tint(t, _hsv(R.uniform(0.06, 0.1), R.uniform(0.45, 0.7), R.uniform(0.45, 0.8)))


def _s_crack(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    cracks, steps = 3, 10
    start = R.uniform(0.1, 0.9, (cracks, 1, 2))
    heading = R.uniform(0, 2 * np.pi, (cracks, 1)) + np.cumsum(0.4 * R.normal((cracks, steps)), axis=-1)
    step = R.uniform(0.03, 0.06, (cracks, steps))
    moves = np.stack([np.cos(heading), np.sin(heading)], -1) * step[..., None]
    path = np.concatenate([start, start + np.cumsum(moves, axis=2)], axis=2)  # (n, cracks, steps + 1, 2)
    p0 = path[:, :, :-1].reshape(R.n, -1, 2)
    p1 = path[:, :, 1:].reshape(R.n, -1, 2)
    d = segment_distance(x, y, p0, p1)
    line = np.exp(-((d / _col(R.uniform(0.003, 0.007))) ** 2))
    t = 0.5 + 0.08 * bandpass_noise(R.white(size), 4.0, 0.7) + 0.06 * _grain(R, size, 40) - 0.6 * line
    return _tint(t, _hsv(R.uniform(0.05, 0.6), R.uniform(0, 0.15), R.uniform(0.5, 0.8)))


def _s_rust(R: PerImageRandom, size: int) -> np.ndarray:
    cover = bandpass_noise(R.white(size), R.uniform(3, 6), 0.8) + 0.5 * bandpass_noise(
        R.white(size), R.uniform(12, 20), 0.6
    )
    m = np.clip((cover - _col(R.uniform(-0.6, 0.6))) / 0.4, 0, 1)
    metal = _hsv(R.uniform(0.55, 0.62), R.uniform(0, 0.1), R.uniform(0.45, 0.65))
    rust = _hsv(R.uniform(0.03, 0.08), R.uniform(0.6, 0.9), R.uniform(0.3, 0.6))
    return _mix(m, metal, rust) * (1 + 0.15 * _grain(R, size))[..., None]


def _s_frost(R: PerImageRandom, size: int) -> np.ndarray:
    y, x = grid(size)
    clusters, needles = 6, 10
    centre = R.uniform(0, 1, (clusters, 1, 2))
    angle = R.uniform(0, 2 * np.pi, (clusters, needles))
    length = R.uniform(0.02, 0.09, (clusters, needles))
    offset = R.uniform(-0.05, 0.05, (clusters, needles, 2))
    p0 = (centre + offset).reshape(R.n, -1, 2)
    p1 = p0 + (np.stack([np.cos(angle), np.sin(angle)], -1) * length[..., None]).reshape(R.n, -1, 2)
    d = segment_distance(x, y, p0, p1)
    needle = np.exp(-((d / _col(R.uniform(0.003, 0.006))) ** 2))
    speckle = np.clip(_grain(R, size, 55) - 1.0, 0, None) * 0.3
    t = np.clip(needle + speckle + 0.1 * bandpass_noise(R.white(size), 2.0, 0.6), 0, 1)
    return _mix(
        t,
        _hsv(R.uniform(0.55, 0.62), R.uniform(0.2, 0.5), R.uniform(0.25, 0.5)),
        _hsv(R.uniform(0.52, 0.6), R.uniform(0, 0.15), R.uniform(0.9, 1.0)),
    )


SOURCE_CLASSES: tuple[SourceClass, ...] = (
    SourceClass("n04395106", "tartan", "fabric", _s_tartan),
    SourceClass("n03175189", "denim", "fabric", _s_denim),
    SourceClass("n03516266", "herringbone", "fabric", _s_herringbone),
    SourceClass("n03625355", "knit", "fabric", _s_knit),
    SourceClass("n04525038", "velvet", "fabric", _s_velvet),
    SourceClass("n03819595", "net", "fabric", _s_net),
    SourceClass("n02922798", "burlap", "fabric", _s_burlap),
    SourceClass("n04568298", "weave", "design", _s_weave),
    SourceClass("n03978300", "polka dot", "design", _s_polka),
    SourceClass("n13887319", "zigzag", "design", _s_zigzag),
    SourceClass("n03011521", "checkerboard", "design", _s_checkerboard),
    SourceClass("n04683136", "stripe", "design", _s_stripe),
    SourceClass("n05729875", "lattice", "design", _s_lattice),
    SourceClass("n03530642", "honeycomb", "design", _s_honeycomb),
    SourceClass("n07344663", "ripple", "design", _s_ripple),
    SourceClass("n13873502", "circle", "shape", _s_circle),
    SourceClass("n13879320", "triangle", "shape", _s_triangle),
    SourceClass("n14698884", "gravel", "material", _s_gravel),
    SourceClass("n09388023", "pebble", "material", _s_pebble),
    SourceClass("n15019030", "sand", "material", _s_sand),
    SourceClass("n14947807", "marble", "material", _s_marble),
    SourceClass("n14820180", "concrete", "material", _s_concrete),
    SourceClass("n14823227", "cork", "material", _s_cork),
    SourceClass("n14597758", "sponge", "material", _s_sponge),
    SourceClass("n14799601", "cardboard", "material", _s_cardboard),
    SourceClass("n14974264", "paper", "material", _s_paper),
    SourceClass("n04950952", "wood grain", "material", _s_wood),
    SourceClass("n04693096", "crack", "material", _s_crack),
    SourceClass("n13552270", "rust", "material", _s_rust),
    SourceClass("n14915622", "frost", "material", _s_frost),
)


def source_class(key: str) -> SourceClass:
    """A synthetic source class by wnid or name (``n14974264`` or ``paper``)."""
    for c in SOURCE_CLASSES:
        if key.strip() in (c.wnid, c.name):
            return c
    raise DataonomyError(
        f"--classes '{key}': not a synthetic source class (known: {', '.join(c.name for c in SOURCE_CLASSES)})"
    )


def render_source_class(
    key: str, count: int, size: int = 128, seed: int = 0, *, start: int = 0
) -> np.ndarray:
    """Render ``count`` RGB images (n, H, W, 3) uint8 of synthetic source class ``key`` (wnid or name).

    Image ``i`` depends only on (seed, wnid, start + i).
    """
    c = source_class(key)
    R = PerImageRandom((seed, _SOURCE_STREAM, zlib.crc32(c.wnid.encode())), start, count)
    return _to_uint8(255 * np.clip(c.render(R, size), 0, 1))


def _source_selection(classes: int | Sequence[str] | None) -> list[SourceClass]:
    if classes is None:
        return list(SOURCE_CLASSES)
    if isinstance(classes, int | np.integer):
        if not 1 <= classes <= len(SOURCE_CLASSES):
            raise DataonomyError(
                f"--classes {classes}: must be 1-{len(SOURCE_CLASSES)} (the number of classes)"
            )
        return list(SOURCE_CLASSES[: int(classes)])
    chosen = [source_class(str(k)) for k in classes]
    if not chosen:
        raise DataonomyError("--classes: no classes given")
    if len({c.wnid for c in chosen}) != len(chosen):
        raise DataonomyError("--classes: a class is listed twice")
    return chosen


def make_synthetic_source(
    out: str | Path,
    classes: int | Sequence[str] | None = None,
    images_per_class: int = 60,
    size: int = 128,
    seed: int = 0,
    quality: int = 90,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic source pool in the ILSVRC train layout; return ``out``.

    ``classes``: None for all 30, N for the first N, or wnids/names. Writes
    ``<out>/<wnid>/<wnid>_<i>.JPEG`` (RGB, JPEG ``quality``), ``LOC_synset_mapping.txt``
    (``wnid lemmas`` lines, read by the ``imagenet`` reader for names) and ``synthetic.json``.
    """
    chosen = _source_selection(classes)
    _check_common(size, seed)
    if images_per_class < 1:
        raise DataonomyError(f"--images-per-class {images_per_class}: must be at least 1")
    if not 1 <= quality <= 100:
        raise DataonomyError(f"--quality {quality}: must be 1-100")
    wordnet = load_wordnet()
    for c in chosen:
        if c.wnid not in wordnet:  # a packaging error, not a user error
            raise RuntimeError(f"synthetic class {c.name} has wnid {c.wnid}, not in the packaged WordNet")
    with staged_folder(out, overwrite) as stage:
        for c in sorted(chosen, key=lambda c: c.wnid):
            folder = stage / c.wnid
            folder.mkdir()
            for start in range(0, images_per_class, CHUNK):
                count = min(CHUNK, images_per_class - start)
                images = render_source_class(c.wnid, count, size, seed, start=start)
                for j in range(count):
                    Image.fromarray(images[j], "RGB").save(
                        folder / f"{c.wnid}_{start + j}.JPEG", quality=quality
                    )
        mapping = "".join(
            f"{c.wnid} {wordnet.names.get(c.wnid, c.name)}\n" for c in sorted(chosen, key=lambda c: c.wnid)
        )
        (stage / "LOC_synset_mapping.txt").write_text(mapping, encoding="utf-8")
        write_json(
            stage / "synthetic.json",
            {
                "generator": "dataonomy.datasets.synthetic.make_synthetic_source",
                "version": GENERATOR_VERSION,
                "parameters": {
                    "classes": [c.wnid for c in chosen],
                    "images_per_class": images_per_class,
                    "size": size,
                    "seed": seed,
                    "quality": quality,
                },
                "classes": {c.wnid: {"name": c.name, "family": c.family} for c in chosen},
            },
        )
    return Path(out)
