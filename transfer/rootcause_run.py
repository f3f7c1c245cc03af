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

The onset is where the fault starts: in the first window that detects it, the first image of the run of images
that carry the defect up to the window's end (:class:`transfer.rootcause.CommonDefects`), reported as an index
into the sorted images and as a path. The folder is written whole or not at all.

:func:`stamp_images` writes copies of images with a seeded systematic scratch or blot (:mod:`transfer.stamps`)
from image ``start`` on, to try the analysis on one's own images.
"""

from __future__ import annotations

import json
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
from transfer.inspect_io import check_images, finite, list_images, save_png, staged_folder

REPORT_FORMAT = "transfer.rootcause/1"
REPORT_NAME = "rootcause.json"

__all__ = [
    "REPORT_FORMAT",
    "REPORT_NAME",
    "format_window",
    "read_gray",
    "rootcause_stream",
    "stamp_images",
]


def read_gray(path: Path) -> np.ndarray:
    """One image as a 2-D array: 8- or 16-bit gray as stored (z-scores do not depend on the scale), anything
    else converted to 8-bit luminance."""
    image = open_image(path)
    if image.mode not in ("L", "I;16", "I", "F"):
        image = image.convert("L")
    return np.asarray(image)


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
    if entry["onset"] is not None:
        line += f"  onset {entry['onset']} ({Path(entry['onset_image']).name})"
    return line


def _plot_map(result: R.CommonDefects, z_threshold: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap

    z = R.robust_zscore(result.map)
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
    paths: str | Path | Sequence[str | Path],
    window: int = 30,
    stride: int = 5,
    out_dir: str | Path = "rootcause",
    *,
    z_threshold: float = R.DEFAULT_Z_THRESHOLD,
    min_area: int = R.DEFAULT_MIN_AREA,
    device: str | None = None,
    window_maps: bool = False,
    overwrite: bool = False,
    on_window: Callable[[dict], None] | None = None,
    progress: bool | None = None,
) -> dict:
    """Common-defect analysis of a batch of images with a sliding window; write ``out_dir`` (see the module
    docstring) and return the report that ``out_dir/rootcause.json`` holds.

    ``paths``: a folder, a glob pattern or a file list (:func:`transfer.inspect_io.list_images`); folders and
    globs are read in natural order of file name. ``window``/``stride``: images per window and the step between
    windows (a last window flush with the end is added). ``z_threshold``/``min_area``: the mask's detection
    threshold and smallest component (:func:`transfer.rootcause.common_defect_mask`). ``on_window`` is called
    with each window's entry as soon as it is analysed (the CLI prints it). The report holds ``verdict``
    (``yes`` when any window detects a common defect), ``score`` (the highest window score), ``onset`` and
    ``onset_image`` (see the module docstring), ``headline`` (the window whose map is saved), ``windows``.

    Checked before anything is written: at least ``window`` images, every file an image (from its header),
    all the same size; a bad input raises :class:`DataonomyError` and leaves no output.
    """
    out_dir = Path(out_dir)
    _check_outputs(out_dir, overwrite)
    if window < 3:
        raise DataonomyError(f"--window {window}: must be at least 3")
    if stride < 1:
        raise DataonomyError(f"--stride {stride}: must be at least 1")
    if min_area < 1:
        raise DataonomyError(f"--min-area {min_area}: must be at least 1")
    spec = paths if isinstance(paths, str | Path) else [str(p) for p in paths]
    paths = list_images(paths)
    if len(paths) < window:
        raise DataonomyError(
            f"--window {window}: needs at least {window} images, --images gives {len(paths)}"
        )
    (width, height), *_ = check_images(paths, same_size=True)

    def images() -> Iterator[np.ndarray]:
        for path in tqdm(paths, desc="rootcause", unit="image", disable=_quiet(progress), leave=False):
            yield read_gray(path)

    entries, first, headline = [], None, None
    with staged_folder(out_dir, overwrite=True) as stage:
        for result in R.stream_common_defects(images(), window, stride, z_threshold, min_area, device):
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
        _, best, best_entry = headline
        np.save(stage / "map.npy", best.map.astype(np.float32))
        save_png(best.mask, stage / "mask.png")
        title = (
            f"images {best.start}-{best.stop - 1}: common defect {best_entry['verdict']}, "
            f"score {best.score:.1f}, peak z {best.peak_z:.1f}"
        )
        _plot_map(best, z_threshold, title, stage / "map.png")
        with open(stage / "windows.jsonl", "w", encoding="utf-8") as f:
            for entry in entries:
                f.write(json.dumps(finite(entry)) + "\n")
        report = finite(
            {
                "format": REPORT_FORMAT,
                "parameters": {
                    "images": str(spec) if isinstance(spec, Path) else spec,
                    "n_images": len(paths),
                    "image_size": [width, height],
                    "window": window,
                    "stride": stride,
                    "z_threshold": z_threshold,
                    "min_area": min_area,
                },
                "verdict": "yes" if first is not None else "no",
                "score": max(e["score"] for e in entries),
                "onset": None if first is None else first["onset"],
                "onset_image": None if first is None else first["onset_image"],
                "first_detection": first,
                "headline": best_entry,
                "windows": entries,
            }
        )
        write_json(stage / REPORT_NAME, report)
    report["files"] = {
        "folder": str(out_dir),
        "report": str(out_dir / REPORT_NAME),
        "windows": str(out_dir / "windows.jsonl"),
        "map": str(out_dir / "map.npy"),
        "map_png": str(out_dir / "map.png"),
        "mask": str(out_dir / "mask.png"),
    }
    return report


def _quiet(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


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
    (:func:`transfer.stamps.stamp_systematic_defect`) on images ``start`` onwards (0-based, natural order),
    plus ``out_dir/stamp_mask.png`` and ``out_dir/stamp.json``. One image is held in memory at a time. Returns the record
    ``stamp.json`` holds (kind, seed, start, strength, the first stamped image, the files)."""
    out_dir = Path(out_dir)
    _check_outputs(out_dir, overwrite)
    if kind not in S.STAMP_KINDS:
        raise DataonomyError(f"--kind '{kind}': must be one of {', '.join(S.STAMP_KINDS)}")
    paths = list_images(paths)
    if not 0 <= start < len(paths):
        raise DataonomyError(f"--start {start}: must be between 0 and {len(paths) - 1} (the images found)")
    (width, height), *_ = check_images(paths, same_size=True)
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
                pixels = S.apply_stamp(pixels, mask, kind, strength)
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
        }
        write_json(stage / "stamp.json", record)
    return record
