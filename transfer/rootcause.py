"""Common-defect (root-cause) analysis: median-gradient maps over a window of images (METHOD.md section 8).

A fault in a production line (a scratched roller, a dirty nozzle) leaves the same mark at the same place on
every product it touches; ordinary defects land anywhere. For a window of w consecutive grayscale images:

1. per-pixel gradients of each image, x and y (Sobel, see :func:`image_gradients`);
2. the per-pixel median over the window of each, separately (signed, so random edges cancel out);
3. the magnitude of the two medians: the common-defect map. A mark present at the same place in more than half
   of the window survives the median; random defects and texture do not, and the map stays near its noise floor.

The binary mask marks where the map stands out from that noise floor (:func:`common_defect_mask`), and the
verdict is yes when any common defect survives. :func:`stream_common_defects` slides the window along a long
sequence and reports every window, so a fault that starts partway through a run is found where it starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from dataonomy.errors import DataonomyError

DEFAULT_Z_THRESHOLD = 5.0
DEFAULT_MIN_AREA = 30
# Pixels next to the frame are left out of the mask: padding, resizing and tiling leave the same edge at the
# same place in every image, which the median keeps like a real common defect.
DEFAULT_BORDER = 4
# 1.4826 * MAD estimates the standard deviation of normally distributed noise.
MAD_TO_SIGMA = 1.4826
_SQUARE = np.ones((3, 3), bool)


def _on_cpu(device) -> bool:
    return device is None or torch.device(device).type == "cpu"


def _as_stack(images, device=None):
    """(w, H, W) float32 stack of same-size 2-D grayscale images: numpy on the CPU, a torch tensor elsewhere.

    The CPU path is numpy on purpose: every step here is a cheap element-wise pass, and numpy's single-threaded
    passes do not stall the way torch's multi-threaded ones do on a busy machine (measured: 30x slower under
    load for one 512x512 image).
    """
    if isinstance(images, np.ndarray | torch.Tensor):
        if images.ndim != 3:
            raise DataonomyError(
                f"images: expected (w, H, W) grayscale images, got shape {tuple(images.shape)}"
            )
        stack = images
    else:
        images = [image if isinstance(image, torch.Tensor) else np.asarray(image) for image in images]
        if not images:
            raise DataonomyError("images: no images given")
        for i, image in enumerate(images):
            if image.ndim != 2:
                raise DataonomyError(
                    f"image {i}: expected a 2-D grayscale image, got shape {tuple(image.shape)}"
                )
            if image.shape != images[0].shape:
                raise DataonomyError(
                    f"image {i}: size {tuple(image.shape)} differs from image 0 {tuple(images[0].shape)}"
                )
        if _on_cpu(device):
            stack = np.stack([_to_numpy(image) for image in images])
        else:
            stack = torch.stack([torch.as_tensor(image) for image in images])
    if min(stack.shape[1:]) < 3:
        raise DataonomyError(f"images: {tuple(stack.shape[1:])} is too small for 3x3 gradients")
    if _on_cpu(device):
        if isinstance(stack, torch.Tensor):
            stack = stack.cpu().numpy()
        return np.asarray(stack, dtype=np.float32)
    return torch.as_tensor(stack).to(device=device, dtype=torch.float32)


def _sobel(stack):
    """Sobel (gx, gy) / 8 of a (w, H, W) numpy array or torch tensor, edges replicated."""
    if isinstance(stack, np.ndarray):
        padded = np.pad(stack, ((0, 0), (1, 1), (1, 1)), mode="edge")
    else:
        padded = F.pad(stack[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    smooth_y = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]  # (w, H, W+2)
    smooth_x = padded[:, :, :-2] + 2 * padded[:, :, 1:-1] + padded[:, :, 2:]  # (w, H+2, W)
    gx = (smooth_y[:, :, 2:] - smooth_y[:, :, :-2]) / 8
    gy = (smooth_x[:, 2:] - smooth_x[:, :-2]) / 8
    return gx, gy


def image_gradients(images, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel gradients ``(gx, gy)``, each a (w, H, W) float32 tensor, in intensity units per pixel.

    Sobel rather than plain central differences: it is the central difference smoothed with [1, 2, 1] across
    the gradient direction, which averages down the pixel-level texture noise that the median must then remove,
    while keeping the 3x3 support (one pixel of widening, which :func:`common_defect_mask` undoes). Divided by 8 so
    a step of height h reads h/2 per pixel, like a central difference. Borders replicate the edge pixels, so
    the image frame itself is not an edge. Computed as two 1-D passes (smooth, then difference) by slicing,
    several times cheaper than a 3x3 convolution on a CPU; on a GPU ``device`` the same passes run in torch.
    """
    gx, gy = _sobel(_as_stack(images, device))
    return torch.as_tensor(gx), torch.as_tensor(gy)


def window_median(values):
    """Exact per-pixel median over the first axis of a (w, H, W) array or tensor (the mean of the two middle
    values when w is even); returns the same kind it is given.

    On the CPU, ``np.sort`` of a pixel-major copy (each pixel's w values contiguous; numpy sorts short rows with
    SIMD) is about ten times faster than ``torch.median(dim=0)`` or ``np.median(axis=0)``, which walk the window
    axis with a stride of H*W. On a GPU, a torch sort along the window axis.
    """
    count = values.shape[0]
    low, high = (count - 1) // 2, count // 2
    if isinstance(values, torch.Tensor) and values.device.type != "cpu":
        ordered = values.sort(dim=0).values
        return (ordered[low] + ordered[high]) / 2
    array = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    ordered = np.sort(np.ascontiguousarray(array.reshape(count, -1).T), axis=1)
    median = ((ordered[:, low] + ordered[:, high]) / 2).reshape(array.shape[1:])
    return torch.from_numpy(median) if isinstance(values, torch.Tensor) else median


def _to_numpy(values) -> np.ndarray:
    return values.cpu().numpy() if isinstance(values, torch.Tensor) else values


def _hypot(x, y):
    return np.hypot(x, y) if isinstance(x, np.ndarray) else torch.hypot(x, y)


def robust_zscore(defect_map: np.ndarray, border: int = 0) -> np.ndarray:
    """(map - median) / (1.4826 * MAD): how many noise standard deviations each pixel stands above the floor.

    The statistics are taken over the map inside a band of ``border`` pixels along the frame (the band, left
    out of the analysis, scores 0): counting the band's floor values would shrink the MAD and inflate every
    z-score (a 16-px band on a 256-px map took pure noise from z 4.8 to 7.1, past the threshold of 5). The
    map is mostly noise as long as common defects cover well under half of it. A MAD of zero (identical images)
    is floored at 1e-6 of the map's largest value.
    """
    defect_map = np.asarray(defect_map, dtype=np.float64)
    inner = defect_map[border:-border, border:-border] if border > 0 else defect_map
    centre = np.median(inner)
    spread = MAD_TO_SIGMA * np.median(np.abs(inner - centre))
    spread = max(spread, 1e-6 * float(np.abs(inner).max()), np.finfo(np.float64).tiny)
    z = (defect_map - centre) / spread
    if border > 0:
        z[:border], z[-border:], z[:, :border], z[:, -border:] = 0.0, 0.0, 0.0, 0.0
    return z


def common_defect_mask(
    defect_map: np.ndarray,
    z_threshold: float = DEFAULT_Z_THRESHOLD,
    min_area: int = DEFAULT_MIN_AREA,
    border: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Binary mask of common defects in a map, and the map's robust z-scores (``border``: the band along the
    frame left out, see :func:`robust_zscore`).

    1. ``z > z_threshold`` (z from :func:`robust_zscore`): pixels whose common gradient stands out from the noise;
    2. closing with a 3x3 square: a gradient marks both sides of a thin line but not its centre; this bridges it;
    3. hole filling: the inside of a blot has no gradient, only its outline does;
    4. erosion with a 3x3 square: the 3x3 gradient kernel widened the footprint by one pixel on each side.
       Structures too thin to survive the erosion (the two-pixel band along an edge whose outline is not closed)
       are kept as they are rather than lost: only pixels next to what survives the erosion are removed;
    5. connected components (8-connected) smaller than ``min_area`` pixels are dropped as noise.

    Defaults (z > 5, 30 pixels) come from DAGM Class1/Test (texture noise: a map median of about 3 gray levels,
    robust sigma about 1.7): over 37 windows of 30 consecutive images (71 of the 575 with their own defect) and
    windows of 30 defective images, nothing survives even at z > 3.5, the highest z anywhere being 6 to 8; a
    stamped scratch of 10% contrast (25 gray levels) is found (IoU 0.4-0.7), one of 30% stands at z of about 27
    (IoU 0.95); ink blots removing half the brightness or more are found with IoU about 0.97.
    """
    if min_area < 1:
        raise DataonomyError(f"--min-area must be at least 1, got {min_area}")
    z = robust_zscore(defect_map, border)
    marked = z > z_threshold
    # Closing done by hand: the dilation may spill past the frame (outside counts as empty), the erosion must not
    # eat defects touching the frame (outside counts as full).
    closed = ndimage.binary_erosion(ndimage.binary_dilation(marked, _SQUARE), _SQUARE, border_value=1)
    filled = ndimage.binary_fill_holes(closed)
    eroded = ndimage.binary_erosion(filled, _SQUARE, border_value=1)
    footprint = eroded | (filled & ~ndimage.binary_dilation(eroded, _SQUARE))
    labels, count = ndimage.label(footprint, structure=_SQUARE)
    if count:
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        footprint = (areas >= min_area)[labels] & footprint
    return footprint, z


@dataclass(frozen=True)
class CommonDefects:
    """The result of root-cause analysis on one window of images ``start .. stop - 1``.

    ``map``: the common-defect map (H, W); ``mask``: common defects (H, W) bool; ``verdict``: True when the mask
    is not empty; ``score``: the highest robust z-score on or next to the mask (0 when there is none);
    ``peak_z``: the highest z-score anywhere (how close a "no" came); ``area``: mask pixels; ``support``: per
    image of the window, how much of the common gradient it carries (about 1 for an image with the defect, about
    0 without; NaN for all when the verdict is no); ``onset``: index of the first image of the run that carries
    the defect up to the end of the window (``start`` when all do; None when the verdict is no).
    """

    start: int
    stop: int
    map: np.ndarray
    mask: np.ndarray
    verdict: bool
    score: float
    peak_z: float
    area: int
    support: np.ndarray
    onset: int | None
    border: int = 0  # the band along the frame left out of the z-scores and the mask

    def summary(self) -> dict:
        """The scalar fields, for a report line or JSON."""
        return {
            "start": self.start,
            "stop": self.stop,
            "verdict": "yes" if self.verdict else "no",
            "score": self.score,
            "peak_z": self.peak_z,
            "area": self.area,
            "onset": self.onset,
        }


def _onset(support: np.ndarray) -> int:
    """The split k that best separates non-carriers (support ~0) before it from carriers (support ~1) after."""
    gain = np.cumsum((support - 0.5)[::-1])[::-1]  # gain[k] = sum over i >= k of (support_i - 1/2)
    return int(np.argmax(gain))


def mask_border(defect_map: np.ndarray, border: int) -> np.ndarray:
    """``defect_map`` with a band of ``border`` pixels along the frame set to the median of the rest (its noise
    floor), as the saved map shows it; the z-scores leave the band out (:func:`robust_zscore`)."""
    if border <= 0:
        return defect_map
    height, width = defect_map.shape
    if 2 * border >= min(height, width):
        raise DataonomyError(f"--border {border}: leaves nothing of a {width}x{height} image")
    out = defect_map.copy()
    inner = out[border:-border, border:-border]
    floor = np.median(inner)
    out[:border], out[-border:], out[:, :border], out[:, -border:] = floor, floor, floor, floor
    return out


def _analyse(
    gx: np.ndarray | torch.Tensor,
    gy: np.ndarray | torch.Tensor,
    z_threshold: float,
    min_area: int,
    start: int,
    order: np.ndarray | None = None,
    border: int = 0,
) -> CommonDefects:
    """Analyse one window of gradients (w, H, W), numpy or torch; ``order``: the slots of gx/gy in time order;
    ``border``: the band along the frame left out (:func:`mask_border`)."""
    mx, my = window_median(gx), window_median(gy)
    defect_map = mask_border(_to_numpy(_hypot(mx, my)), border)
    mask, z = common_defect_mask(defect_map, z_threshold, min_area, border)
    count = gx.shape[0]
    support, onset, score = np.full(count, np.nan), None, 0.0
    if mask.any():
        near = ndimage.binary_dilation(mask, _SQUARE)
        score = float(z[near].max())
        # Project each image's gradient on the common gradient over the strong pixels of the defect.
        strong = near & (z > z_threshold)
        if isinstance(gx, torch.Tensor):
            strong = torch.as_tensor(strong, device=gx.device)
        common_x, common_y = mx[strong], my[strong]
        norm = float((common_x**2 + common_y**2).sum())
        support = _to_numpy((gx[:, strong] * common_x + gy[:, strong] * common_y).sum(axis=1) / norm)
        if order is not None:
            support = support[order]
        onset = start + _onset(support)
    return CommonDefects(
        start=start,
        stop=start + count,
        map=defect_map,
        mask=mask,
        verdict=bool(mask.any()),
        score=score,
        peak_z=float(z.max()),
        area=int(mask.sum()),
        support=support,
        onset=onset,
        border=border,
    )


def find_common_defects(
    images,
    z_threshold: float = DEFAULT_Z_THRESHOLD,
    min_area: int = DEFAULT_MIN_AREA,
    device=None,
    border: int = 0,
) -> CommonDefects:
    """Root-cause analysis of one window: ``images`` (w, H, W) stack or list of same-size grayscale images.

    Pixel values may be uint8 or float; z-scores do not depend on the scale. At least 3 images are needed for a
    median to reject anything; around 30 is the intended window.
    """
    stack = _as_stack(images, device)
    if stack.shape[0] < 3:
        raise DataonomyError(f"images: a window needs at least 3 images, got {stack.shape[0]}")
    gx, gy = _sobel(stack)
    return _analyse(gx, gy, z_threshold, min_area, start=0, border=border)


def stream_common_defects(
    images: Iterable,
    window: int = 30,
    stride: int = 5,
    z_threshold: float = DEFAULT_Z_THRESHOLD,
    min_area: int = DEFAULT_MIN_AREA,
    device=None,
    border: int = 0,
) -> Iterator[CommonDefects]:
    """Slide a window of ``window`` images by ``stride`` along a sequence and yield one result per window.

    ``images`` may be any iterable of 2-D images (a generator reading files works: only the last ``window``
    images' gradients are kept). Windows start at 0, stride, 2*stride, ...; when the sequence does not end on
    a window boundary, a last window flush with its end is added, so every image is analysed. A defect that
    starts at image k first shows in a window holding more than half stamped images; that window's ``onset``
    estimates k. ``border``: the band along the frame left out of every window's mask (:func:`mask_border`).

    Raises :class:`DataonomyError` when images differ in size or the sequence is shorter than the window.
    """
    if window < 3:
        raise DataonomyError(f"--window must be at least 3, got {window}")
    if stride < 1:
        raise DataonomyError(f"--stride must be at least 1, got {stride}")
    # Ring buffers of the last `window` images' gradients: slot = index % window. The median does not care about
    # order; the per-image support is put back in time order.
    buffers = None
    shape, count, last_start = None, 0, None
    for index, image in enumerate(images):
        image = image if isinstance(image, torch.Tensor) else np.asarray(image)
        if image.ndim != 2:
            raise DataonomyError(
                f"image {index}: expected a 2-D grayscale image, got shape {tuple(image.shape)}"
            )
        if shape is None:
            shape = tuple(image.shape)
        elif tuple(image.shape) != shape:
            raise DataonomyError(f"image {index}: size {tuple(image.shape)} differs from image 0 {shape}")
        gx, gy = _sobel(_as_stack(image[None], device))
        if buffers is None:
            buffers = (_empty_window(gx, window), _empty_window(gy, window))
        buffers[0][index % window], buffers[1][index % window] = gx[0], gy[0]
        count = index + 1
        start = count - window
        if start >= 0 and start % stride == 0:
            last_start = start
            yield _analyse(*buffers, z_threshold, min_area, start, _time_order(count, window), border)
    if count < window:
        raise DataonomyError(f"--window {window} needs at least {window} images, got {count}")
    if last_start != count - window:
        yield _analyse(*buffers, z_threshold, min_area, count - window, _time_order(count, window), border)


def _empty_window(like, window: int):
    """Uninitialised (window, H, W) buffer of the same kind, dtype and device as ``like`` (1, H, W)."""
    if isinstance(like, np.ndarray):
        return np.empty((window, *like.shape[1:]), dtype=like.dtype)
    return torch.empty((window, *like.shape[1:]), dtype=like.dtype, device=like.device)


def _time_order(count: int, window: int) -> np.ndarray:
    """Ring-buffer slots of the last `window` of `count` images, oldest first."""
    return (count + np.arange(window)) % window


def first_detection(results: Iterable[CommonDefects]) -> CommonDefects | None:
    """The first window whose verdict is yes (consuming ``results`` only up to it), or None."""
    return next((result for result in results if result.verdict), None)
