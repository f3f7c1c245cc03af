"""``transfer rootcause`` and ``transfer stamp``: common-defect analysis of a batch of image files, streamed.

:func:`rootcause_stream` reads the images one at a time in natural order of file name (``img2`` before
``img10``) and slides a window along them (:func:`transfer.rootcause.stream_common_defects`, which keeps only the
last ``window`` images' gradients), so a production run of any length is analysed in constant memory. Every
window is reported as it is analysed. The output folder::

    rootcause.json   parameters, the overall verdict, score and onset, and one entry per window
    windows.jsonl    the same per-window entries, one JSON line each
    map.npy          the common-defect map (median-gradient magnitude, gray levels per pixel, float32) of the
                     headline window: the detecting window with the highest score, or where no window
                     detects anything, the one with the highest peak z-score (how close a "no" came)
    map.png          that map as robust z-scores (noise standard deviations, 0 to 3x the detection threshold),
                     with the mask outlined, a colour bar and the window's verdict
    mask.png         its binary mask of common defects, 0/255
    windows/         with ``window_maps``: ``<start>_map.npy`` and ``<start>_mask.png`` for every window

**The onset** is where the fault starts, one definition for the whole batch: in the first window that detects a
common defect, the first image of the run of images that carry it up to that window's end
(:class:`transfer.rootcause.CommonDefects`), reported as an index into the sorted images and as a path. Each
window entry's own ``onset`` (in the JSON) is that window's estimate; the report's ``onset`` is the batch's.
The folder is written whole or not at all.

Images of different sizes need ``resize`` (every image scaled to one size) or ``crop`` (the centre of every
image cut to one size); a band of ``border`` pixels along the frame is left out of the masks (edges from
padding, resizing or tiling sit at the same place in every image; with ``resize`` the band is scaled by the
largest enlargement, recorded as ``border_applied``), and the report warns when a detected mask still hugs the
frame.

:func:`stamp_images` writes copies of images with a seeded systematic scratch or blot (:mod:`transfer.stamps`)
from image ``start`` on, to try the analysis on one's own images.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from dataonomy.datasets import open_image
from dataonomy.errors import DataonomyError
from dataonomy.io import write_json
from transfer import rootcause as R
from transfer import stamps as S
from transfer.inspect_io import check_images, drop_bad_images, finite, list_images, save_png, staged_folder
from transfer.stage_config import RootcauseConfig

REPORT_FORMAT = "transfer.rootcause/1"
REPORT_NAME = "rootcause.json"
CONFIG_NAME = "config.json"

__all__ = [
    "REPORT_FORMAT",
    "REPORT_NAME",
    "format_window",
    "read_gray",
    "rootcause_stream",
    "stamp_images",
]


def read_gray(
    path: Path, resize: tuple[int, int] | None = None, crop: tuple[int, int] | None = None
) -> np.ndarray:
    """One image as a 2-D array: 8- or 16-bit gray as stored (z-scores do not depend on the scale), anything
    else converted to 8-bit luminance; ``crop`` (width, height) cuts its centre, then ``resize`` (width, height)
    scales it (bilinear)."""
    image = open_image(path)
    if image.mode not in ("L", "I;16", "I", "F"):
        image = image.convert("L")
    if crop is not None:
        width, height = image.size
        if crop[0] > width or crop[1] > height:
            raise DataonomyError(f"--crop {crop[0]},{crop[1]}: larger than {path} ({width}x{height})")
        left, top = (width - crop[0]) // 2, (height - crop[1]) // 2
        image = image.crop((left, top, left + crop[0], top + crop[1]))
    if resize is not None and image.size != tuple(resize):
        image = image.convert("F").resize(tuple(resize), resample=2)  # 2: bilinear, in float (no rounding)
    return np.asarray(image)


def _hugs_frame(mask: np.ndarray, border: int) -> bool:
    """Whether a mask lies mostly along the frame, or runs along most of it (an outlined frame, filled)."""
    edge = border + 3
    frame = np.zeros_like(mask)
    frame[:edge], frame[-edge:], frame[:, :edge], frame[:, -edge:] = True, True, True, True
    on_frame = (mask & frame).sum()
    return bool(mask.any()) and (on_frame > 0.5 * mask.sum() or on_frame > 0.5 * frame.sum())


def _check_outputs(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataonomyError(f"--out {out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise DataonomyError(f"--out {out_dir}: folder is not empty (pass --overwrite to replace it)")


def _window_entry(result: R.CommonDefects, paths: Sequence[Path]) -> dict:
    entry = result.summary()
    entry["first_image"] = str(paths[result.start])
    entry["last_image"] = str(paths[result.stop - 1])
    entry["onset_image"] = None if result.onset is None else str(paths[result.onset])
    return entry


def format_window(entry: dict) -> str:
    """One terminal line for a window entry of :func:`rootcause_stream`."""
    first, last = Path(entry["first_image"]).name, Path(entry["last_image"]).name
    line = (
        f"images {entry['start']}-{entry['stop'] - 1} ({first} .. {last}): {entry['verdict']:<3}  "
        f"score {entry['score']:6.1f}  peak z {entry['peak_z']:6.1f}  area {entry['area']}"
    )
    return line


def _plot_map(result: R.CommonDefects, z_threshold: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap

    z = R.robust_zscore(result.map, result.border)
    height, width = z.shape
    fig, ax = plt.subplots(figsize=(7.2, 6.4 * height / width + 0.4))
    shown = ax.imshow(np.clip(z, 0, None), cmap="inferno", vmin=0, vmax=3 * z_threshold)
    # An outline just outside the mask, so the map under a thin defect stays visible.
    ring = ndimage.binary_dilation(result.mask, iterations=4) & ~ndimage.binary_dilation(
        result.mask, iterations=2
    )
    outline = np.ma.masked_where(~ring, np.ones(z.shape))
    ax.imshow(outline, cmap=ListedColormap(["deepskyblue"]), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize="small")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="robust z-score (noise sigmas)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def rootcause_stream(
    config: RootcauseConfig,
    out_dir: str | Path,
    *,
    device: str | None = None,
    overwrite: bool = False,
    on_window: Callable[[dict], None] | None = None,
    progress: bool | None = None,
) -> dict:
    """Common-defect analysis of a batch of images with a sliding window; write ``out_dir`` (see the module
    docstring; ``config.json`` holds ``config``) and return the report that ``out_dir/rootcause.json`` holds.

    ``config.images``: a folder, a glob pattern or a file list (:func:`transfer.inspect_io.list_images`);
    folders and globs are read in natural order of file name. ``window``/``stride``: images per window and the
    step between windows (a last window flush with the end is added). ``z_threshold``/``min_area``: the mask's
    detection threshold and smallest component (:func:`transfer.rootcause.common_defect_mask`). ``on_window`` is
    called with each window's entry as soon as it is analysed (the CLI prints it). The report holds ``verdict``
    (``yes`` when any window detects a common defect), ``score`` (the highest window score), ``onset`` and
    ``onset_image`` (see the module docstring), ``headline`` (the window whose map is saved), ``windows``, and a
    ``warning`` when the detected mask hugs the frame. ``resize``/``crop`` (width, height) bring images of
    different sizes to one; ``border`` pixels along the frame are left out; ``skip_bad`` drops unreadable
    images with a warning.

    Checked before anything is written: at least ``window`` images, every file an image (from its header),
    all the same size unless ``resize``/``crop`` is given; a bad input raises :class:`DataonomyError` and
    leaves no output.
    """
    out_dir = Path(out_dir)
    _check_outputs(out_dir, overwrite)
    paths, (width, height), border = _checked_images(config)
    resize = tuple(config.resize) if config.resize is not None else None
    crop = tuple(config.crop) if config.crop is not None else None

    def images() -> Iterator[np.ndarray]:
        for path in tqdm(paths, desc="rootcause", unit="image", disable=_quiet(progress), leave=False):
            yield read_gray(path, resize, crop)

    with staged_folder(out_dir, overwrite=True) as stage:
        results = R.stream_common_defects(
            images(), config.window, config.stride, config.z_threshold, config.min_area, device, border
        )
        entries, first, (best, best_entry) = _windows(results, paths, stage, config.window_maps, on_window)
        _write_headline(best, best_entry, config.z_threshold, stage)
        report = finite(
            {
                "format": REPORT_FORMAT,
                "parameters": {**_parameters(config, len(paths), (width, height)), "border_applied": border},
                "verdict": "yes" if first is not None else "no",
                "score": max(e["score"] for e in entries),
                "onset": None if first is None else first["onset"],
                "onset_image": None if first is None else first["onset_image"],
                "first_detection": first,
                "headline": best_entry,
                "windows": entries,
            }
        )
        if first is not None and _hugs_frame(best.mask, border):
            report["warning"] = (
                f"the common defect of images {best.start}-{best.stop - 1} lies along the frame: often an edge "
                "left by resizing, padding or tiling rather than a fault; look at map.png, or raise --border"
            )
        write_json(stage / REPORT_NAME, report)
        config.save(stage / CONFIG_NAME)
    names = {"report": REPORT_NAME, "windows": "windows.jsonl", "map": "map.npy", "map_png": "map.png"}
    report["files"] = {"folder": str(out_dir), **{k: str(out_dir / v) for k, v in names.items()}}
    report["files"]["mask"] = str(out_dir / "mask.png")
    return report


def _checked_images(config: RootcauseConfig) -> tuple[list[Path], tuple[int, int], int]:
    """The images in natural order (unreadable ones dropped with ``skip_bad``), checked to be enough for one
    window and of one size after ``crop``/``resize``; that size (width, height); and the border band in the
    analysed frame: ``border`` pixels of the images as they are, so with ``resize`` scaled by the largest
    enlargement (a tile's 2-px frame line enlarged 2.5 times is 5 px wide, past a 4-px band)."""
    window, resize, crop, border = config.window, config.resize, config.crop, config.border
    paths = list_images(config.images)
    if config.skip_bad:
        paths = drop_bad_images(paths)
    if len(paths) < window:
        raise DataonomyError(
            f"--window {window}: needs at least {window} images, --images gives {len(paths)}"
        )
    sizes = check_images(paths)
    if resize is None and crop is None and len(set(sizes)) > 1:
        odd = next(i for i, size in enumerate(sizes) if size != sizes[0])
        raise DataonomyError(
            f"--images: {paths[odd]} is {sizes[odd][0]}x{sizes[odd][1]} but {paths[0]} is "
            f"{sizes[0][0]}x{sizes[0][1]}; give --resize W,H or --crop W,H to bring them to one size"
        )
    if crop is not None:
        small = next((i for i, (w, h) in enumerate(sizes) if w < crop[0] or h < crop[1]), None)
        if small is not None:
            raise DataonomyError(
                f"--crop {crop[0]},{crop[1]}: larger than {paths[small]} ({sizes[small][0]}x{sizes[small][1]})"
            )
    width, height = resize or crop or sizes[0]
    if resize is not None:
        _warn_aspect_ratios([crop or size for size in sizes], paths, resize)
        enlargement = max(max(width / w, height / h) for w, h in sizes)
        border = math.ceil(border * max(1.0, enlargement))
    if 2 * border >= min(width, height):
        raise DataonomyError(f"--border {config.border}: leaves nothing of {width}x{height} images")
    return paths, (width, height), border


def _warn_aspect_ratios(sizes: list[tuple[int, int]], paths: list[Path], resize: tuple[int, int]) -> None:
    """Warn when ``--resize`` stretches images of different shapes: a defect fixed in the camera's frame then
    lands at a different place in each shape, and no window's median keeps it (measured on real Class1 tiles of
    four shapes with a scratch from image 30: no window detected it at the default band; ``--crop`` found
    onset 30)."""
    shapes = {round(w / h, 2): i for i, (w, h) in reversed(list(enumerate(sizes)))}
    if len(shapes) > 1:
        (a, b) = sorted(shapes.values())[:2]
        warnings.warn(
            f"--resize {resize[0]},{resize[1]}: the images have {len(shapes)} shapes ({paths[a].name} "
            f"{sizes[a][0]}x{sizes[a][1]}, {paths[b].name} {sizes[b][0]}x{sizes[b][1]}, ...), so a defect at one "
            "place in the camera's frame lands at a different place in each after resizing and may be missed; "
            "--crop W,H keeps the pixels",
            stacklevel=3,
        )


def _windows(results, paths: list[Path], stage: Path, window_maps: bool, on_window) -> tuple:
    """Each window's entry (its map and mask saved with ``window_maps``), the first detecting one, and the
    headline window (the highest-scoring detection, else the highest peak z-score) with its entry."""
    entries, first, headline = [], None, None
    for result in results:
        entry = _window_entry(result, paths)
        entries.append(entry)
        if result.verdict and first is None:
            first = entry
        key = (result.verdict, result.score if result.verdict else result.peak_z)
        if headline is None or key > headline[0]:
            headline = (key, result, entry)
        if window_maps:
            save_png(result.mask, stage / "windows" / f"{result.start:06d}_mask.png")
            np.save(stage / "windows" / f"{result.start:06d}_map.npy", result.map)
        if on_window is not None:
            on_window(entry)
    with open(stage / "windows.jsonl", "w", encoding="utf-8") as f:
        for entry in entries:
            f.write(json.dumps(finite(entry)) + "\n")
    return entries, first, headline[1:]


def _write_headline(best: R.CommonDefects, best_entry: dict, z_threshold: float, stage: Path) -> None:
    """The headline window's map.npy, mask.png and map.png."""
    np.save(stage / "map.npy", best.map.astype(np.float32))
    save_png(best.mask, stage / "mask.png")
    title = (
        f"images {best.start}-{best.stop - 1}: common defect {best_entry['verdict']}, "
        f"score {best.score:.1f}, peak z {best.peak_z:.1f}"
    )
    _plot_map(best, z_threshold, title, stage / "map.png")


def _parameters(config: RootcauseConfig, n_images: int, size: tuple[int, int]) -> dict:
    """The report's ``parameters``."""
    spec = config.images
    return {
        "images": str(spec) if isinstance(spec, Path) else spec,
        "n_images": n_images,
        "image_size": list(size),
        "window": config.window,
        "stride": config.stride,
        "z_threshold": config.z_threshold,
        "min_area": config.min_area,
        "resize": config.resize,
        "crop": config.crop,
        "border": config.border,
    }


def _quiet(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


def _centred(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The centred ``shape`` part of a stamp mask drawn at the largest image size."""
    top, left = (mask.shape[0] - shape[0]) // 2, (mask.shape[1] - shape[1]) // 2
    return mask[top : top + shape[0], left : left + shape[1]]


def stamp_images(
    paths: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    kind: str = "scratch",
    start: int = 0,
    seed: int = 0,
    strength: float | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict:
    """Write 8-bit grayscale PNG copies of the images, ``out_dir/images/<stem>.png``, with the same seeded scratch or blot
    (:func:`transfer.stamps.stamp_systematic_defect`) on images ``start`` onwards (0-based, natural order; images of
    mixed sizes each take the centred part of a stamp drawn at the largest size),
    plus ``out_dir/stamp_mask.png`` and ``out_dir/stamp.json``. One image is held in memory at a time. Returns the record
    ``stamp.json`` holds (kind, seed, start, strength, the first stamped image, the files)."""
    out_dir = Path(out_dir)
    _check_outputs(out_dir, overwrite)
    if kind not in S.STAMP_KINDS:
        raise DataonomyError(f"--kind '{kind}': must be one of {', '.join(S.STAMP_KINDS)}")
    paths = list_images(paths)
    if not 0 <= start < len(paths):
        raise DataonomyError(f"--start {start}: must be between 0 and {len(paths) - 1} (the images found)")
    sizes = check_images(paths)
    # Mixed sizes (tiles, crops): one stamp on a canvas of the largest size, each image taking its centred part,
    # so the defect sits at one place relative to the image centre (what `rootcause --crop W,H` compares).
    width, height = max(w for w, _ in sizes), max(h for _, h in sizes)
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise DataonomyError("--images: two images have the same file name stem; the copies would collide")
    strength = S.DEFAULT_STRENGTH[kind] if strength is None else strength
    # The stamp depends only on (kind, seed, image size): draw it once, apply it to each image in turn.
    mask = S.scratch_mask((height, width), seed) if kind == "scratch" else S.blot_mask((height, width), seed)
    with staged_folder(out_dir, overwrite=True) as stage:
        for index, path in enumerate(tqdm(paths, desc="stamp", disable=_quiet(progress), leave=False)):
            pixels = np.asarray(open_image(path, "L"))[None]
            if index >= start:
                pixels = S.apply_stamp(pixels, _centred(mask, pixels.shape[1:]), kind, strength)
            save_png(pixels[0], stage / "images" / f"{path.stem}.png")
        save_png(mask, stage / "stamp_mask.png")
        record = {
            "kind": kind,
            "seed": seed,
            "start": start,
            "strength": strength,
            "images": str(out_dir / "images"),
            "first_stamped": str(out_dir / "images" / f"{paths[start].stem}.png"),
            "n_images": len(paths),
            "mask": str(out_dir / "stamp_mask.png"),
            "mask_size": [width, height],
            "placement": "centred: an image smaller than the mask takes its centred part",
        }
        write_json(stage / "stamp.json", record)
    return record
