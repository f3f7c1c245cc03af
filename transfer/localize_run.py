"""``transfer localize``: defect heatmaps of images with a fine-tuned run, binarised, drawn, and (with labels) scored.

For every image: the defect heatmap (a segdec run's own map, ``mode`` ``segmap``, one pass per image; for
classifier runs :mod:`transfer.localize`'s patch heatmaps, ``mode`` ``loop`` (reference), ``batched`` (default,
same numbers) or ``dense`` (one trunk pass)), binarised at one threshold; each connected region of the mask is
one defect with its box, area and score. The output folder::

    localize.json         parameters, the threshold and where it came from, metrics, one row per image
    heatmaps/<name>.npy   the raw heatmap, (H, W) float32 defect probabilities at image resolution
    overlays/<name>.png   the heatmap over the image (colormap at ``alpha``, fixed 0..1 scale), the predicted
                          defect outlined in deep sky blue and, with labels, the true defect in lime
    masks/<name>.png      the binary mask (heat >= threshold), 0/255

``<name>`` is the image's file stem (made unique with its folders when stems repeat). The folder is written
whole or not at all (:func:`transfer.inspect_io.staged_folder`).

Where the threshold comes from, in this order:

1. ``threshold``: given by the user;
2. ``threshold_from``: a previous ``localize.json`` (or its folder) made with the same model file, patch size,
   stride and kind of heatmap (patch loop/batched vs dense); anything else is refused, since the best
   threshold depends on all of them;
3. otherwise it is chosen on the run's own validation fold (the DAGM copy, classes and seeded split it was
   fine-tuned with; never the images being localised) by maximising the pooled pixel F1
   (:class:`transfer.localize.ThresholdCurves`), with the same heatmap settings. A mean IoU over images is
   not used: its clean images score 1 for an empty prediction, so it can pick "mark nothing".

The threshold and its origin are stored in the output folder's ``localize.json`` (the run folder is never
modified); pass that file to ``threshold_from`` (``--threshold-from``) to reuse it without recomputing.

Metrics (labelled images only, :func:`transfer.metrics.localization_report`): pixel precision/recall/F1 and IoU
pooled over all pixels, mean IoU over all images (``mean_iou``: a clean image with an empty prediction counts 1)
and over the defective ones (``mean_iou_defective``), He & Liu's AR over ground-truth defects (connected
components of the masks), per-defect detection at IoU >= 0.5.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dataonomy.datasets import SampleDataset, open_image
from dataonomy.datasets.base import seeded_subsample
from dataonomy.devices import resolve_device
from dataonomy.errors import DataonomyError
from dataonomy.io import file_sha256, read_json_file, write_json
from dataonomy.progress import progress as show_progress
from transfer import localize as L
from transfer import metrics as M
from transfer.data import check_overlap, scaled_size, training_overlap
from transfer.inspect_io import (
    check_images,
    drop_bad_images,
    finite,
    list_images,
    overlay_heatmap,
    save_png,
    staged_folder,
)
from transfer.inspect_io import unique_names as _unique_names
from transfer.stage_config import LocalizeConfig

REPORT_FORMAT = "transfer.localize/1"
REPORT_NAME = "localize.json"
CONFIG_NAME = "config.json"
# Below this mean IoU of the defective validation images at the chosen threshold, the maps miss the defects.
NEAR_ZERO_IOU = 0.05
MODES = ("loop", "batched", "dense", "segmap")
# Heat bins of the pixel-level AP/AUROC (heat is a probability): 1,000 of 0.001, far finer than a threshold needs.
PIXEL_BINS = np.linspace(0.0, 1.0 + 1e-9, 1001)
SUMMARY_COLUMNS = (
    "n_images",
    "n_defective_images",
    "threshold",
    "precision",
    "recall",
    "f1",
    "iou",
    "mean_iou",
    "mean_iou_defective",
    "ar",
    "detected",
    "pixel_ap",
    "pixel_auroc",
)

__all__ = [
    "MODES",
    "REPORT_FORMAT",
    "REPORT_NAME",
    "SUMMARY_COLUMNS",
    "LocalizeSettings",
    "format_localize_summary",
    "load_localization_model",
    "localize_images",
    "segmap_settings",
    "validation_threshold",
]


# --------------------------------------------------------------------------------------------------------------
# The model and how its heatmaps are computed
# --------------------------------------------------------------------------------------------------------------


def load_localization_model(run: str | Path, device: str | None = None):
    """The fine-tuned defect classifier of a run folder (or its ``best.pt``), as a
    :class:`transfer.checkpoint.LoadedModel` in eval mode on ``device`` (default: CUDA when available)."""
    from transfer.checkpoint import load_model

    path = Path(run)
    if not path.exists():
        raise DataonomyError(f"--model {run}: no such run folder or model file")
    if path.is_dir() and not (path / "best.pt").is_file():
        raise DataonomyError(
            f"--model {run}: no best.pt in the folder (not a transfer finetune run, or no epoch has finished)"
        )
    loaded = load_model(path, _device(device))
    kind, classes = loaded.record.kind, loaded.record.num_classes
    if kind != "finetune" or classes != 2:
        raise DataonomyError(
            f"--model {run}: a {kind} run with {classes} classes; localisation needs a defect classifier "
            "fine-tuned with transfer finetune"
        )
    return loaded


def _device(device: str | None) -> str:
    return str(resolve_device(device))


@dataclass(frozen=True)
class LocalizeSettings:
    """How heatmaps are computed: patch side and stride (pixels; None for ``segmap``, the segdec model's own map
    from one pass), ``mode``, and the side patches (segmap: images) are resized to before the model sees them
    (None: their own size), patches per forward pass, device."""

    patch: int | None
    stride: int | None
    mode: str
    input_size: int | None
    batch_size: int
    device: str
    probability: Callable[[torch.Tensor], torch.Tensor] = L.two_class_probability  # the run's head's rule

    @property
    def heat_kind(self) -> str:
        """``patch`` (loop and batched give the same numbers), ``dense`` or ``segmap``: what a threshold is tied to."""
        return self.mode if self.mode in ("dense", "segmap") else "patch"

    def heatmap(self, model: torch.nn.Module, image: torch.Tensor) -> np.ndarray:
        """(H, W) float32 heatmap of one normalised image (3, H, W) on the device."""
        return self.heatmap_and_score(model, image)[0]

    def heatmap_and_score(self, model: torch.nn.Module, image: torch.Tensor) -> tuple[np.ndarray, float]:
        """The heatmap and the image's defect score: the segdec decision, or the heatmap's highest value."""
        common = {"input_size": self.input_size, "device": self.device, "probability": self.probability}
        if self.mode == "segmap":
            # One forward pass: the segdec model's defect map, upsampled to the image (resized first and back
            # when the run was trained resized).
            from transfer.heads.segdec import segdec_scores

            height, width = image.shape[-2:]
            x = image[None]
            if self.input_size is not None:  # longer side to the training size, aspect kept (segdec policy)
                x = torch.nn.functional.interpolate(
                    x, size=scaled_size(height, width, self.input_size), mode="bilinear", antialias=True
                )
            score, heat = segdec_scores(model, x)
            if heat.shape[-2:] != (height, width):
                heat = torch.nn.functional.interpolate(heat[None], size=(height, width), mode="bilinear")[0]
            return heat[0].cpu().numpy(), float(score[0])
        if self.mode == "loop":
            heat = L.heatmap_loop(model, image, self.patch, self.stride, **common)
        elif self.mode == "batched":
            heat = L.heatmap_batched(model, image, self.patch, self.stride, self.batch_size, **common)
        else:
            heat = L.heatmap_dense(model, image, self.patch, self.stride, **common)
        heat = heat.numpy()
        return heat, float(heat.max())


def _settings(loaded, patch, stride, mode, batch_size, device) -> LocalizeSettings:
    from transfer.models import check_image_size

    record, head = loaded.record, loaded.record.head_kind
    if mode is None:
        mode = head.localize_modes[0]
    if mode not in MODES:
        raise DataonomyError(f"--mode '{mode}': must be one of {', '.join(MODES)}")
    if mode not in head.localize_modes:
        raise DataonomyError(
            f"--mode {mode}: a segdec run localises with its own defect map (--mode segmap)"
            if mode != "segmap"
            else f"--mode segmap: the run {loaded.path} is a classifier; use {', '.join(head.localize_modes)}"
        )
    if mode == "segmap":
        if patch is not None or stride is not None:
            raise DataonomyError(
                "--patch-size/--stride: a segdec run maps whole images in one pass; leave them out"
            )
        return LocalizeSettings(None, None, mode, record.input_size, 1, str(device))
    patch_trained = "patch_size" in head.record_fields  # trained on patches: it has a patch size
    if patch is None:
        if not patch_trained:
            raise DataonomyError(
                f"--patch-size: the run {loaded.path} was fine-tuned on whole images, so it has no patch size; "
                "give --patch-size"
            )
        patch = record.patch_size
    if patch < 1:
        raise DataonomyError(f"--patch-size {patch}: must be at least 1")
    stride = max(1, patch // 2) if stride is None else stride
    if not 1 <= stride <= patch:
        raise DataonomyError(
            f"--stride {stride}: must be between 1 and the patch size {patch} (a larger step leaves pixels "
            "that no patch covers)"
        )
    if batch_size is None:
        batch_size = L.default_patch_batch(device)
    if batch_size < 1:
        raise DataonomyError(f"--batch-size {batch_size}: must be at least 1")
    # A patch-trained model saw full-resolution patches: classify patches at their own size, keeping the scale.
    # An image-trained model saw whole images resized to its input size: give it patches at that size.
    input_size = None if patch_trained else record.input_size
    check_image_size(record.arch, input_size or patch, "--patch-size")
    return LocalizeSettings(
        patch, stride, mode, input_size, batch_size, str(device), probability=head.defect_probability
    )


def segmap_settings(loaded, device: str) -> LocalizeSettings:
    """The heatmap settings of a run whose head maps defects in one pass (``--mode segmap``): what ``export`` and
    ``predict`` choose a pixel threshold with."""
    return _settings(loaded, None, None, "segmap", None, device)


def _image_tensor(loaded, pixels: np.ndarray, device: str) -> torch.Tensor:
    """(H, W, 3) uint8 pixels -> the model's normalised input (3, H, W) on the device."""
    tensor = torch.tensor(pixels).permute(2, 0, 1)[None].to(device)  # a copy: decoded pixels are read-only
    return loaded.normalize(tensor)[0]


# --------------------------------------------------------------------------------------------------------------
# Which images
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    path: Path
    group: (
        str | None
    )  # the dataset's group (DAGM class, MVTec category/type); a file's folder for plain files
    mask: Callable[[], np.ndarray | None]


def _dataset_items(dataset: SampleDataset) -> list[_Item]:
    return [
        _Item(Path(s.path), s.group or s.label, lambda i=i: dataset.mask(i))
        for i, s in enumerate(dataset.samples)
    ]


def _run_fold(loaded, data, split: str, skip_bad: bool = False):
    """A fold as ``transfer evaluate`` reads it: the run's own split of its own set (when ``data`` is None or that
    set), else ``split`` of another set (its own test split for ``test``)."""
    from transfer.data import run_fold

    return run_fold(loaded.config, split, data, skip_bad, instead="--images")


def _items(loaded, images, data, split, skip_bad: bool = False) -> tuple[list[_Item], dict]:
    if images is not None and data is not None:
        raise DataonomyError("--images and --data: give one of them, not both")
    if isinstance(images, SampleDataset):
        return _dataset_items(images), {"source": "dataset", "root": str(images.root)}
    if images is not None:
        spec = images if isinstance(images, str | Path) else [str(p) for p in images]
        paths = list_images(images)
        if skip_bad:
            paths = drop_bad_images(paths)
        return [_Item(p, p.parent.name, lambda: None) for p in paths], {"source": "files", "images": spec}
    fold = _run_fold(loaded, data, split, skip_bad)
    config = loaded.config
    root, layout = (data.root, data.format) if data is not None else (config.data, config.format)
    return _dataset_items(fold), {"source": "data", "data": str(root), "format": layout, "split": split}


def spread_sample(items: Sequence[_Item], limit: int | None, seed: int = 0) -> list[_Item]:
    """At most ``limit`` items taken evenly across groups (round robin over the groups, in a seeded order within
    each), returned in their original order: the first N files by name are often all one defect type."""
    if limit is None or limit >= len(items):
        return list(items)
    by_group: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_group.setdefault(str(item.group), []).append(i)
    queues = [
        [
            members[j]
            for j in np.random.default_rng([seed, zlib.crc32(group.encode())]).permutation(len(members))
        ]
        for group, members in sorted(by_group.items())
    ]
    chosen: list[int] = []
    while len(chosen) < limit:
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return [items[i] for i in sorted(chosen)]


# --------------------------------------------------------------------------------------------------------------
# The threshold
# --------------------------------------------------------------------------------------------------------------


def validation_threshold(
    loaded, settings: LocalizeSettings, val_limit: int | None = None, progress: bool | None = None
) -> dict:
    """The threshold that maximises the pooled pixel F1 on the run's validation fold
    (:class:`transfer.localize.ThresholdCurves`: defect pixels found against false alarms on every image, clean
    ones included), with these heatmap settings.

    Returns ``{"value", "source": "validation", "criterion", "f1", "precision", "recall", "mean_iou_defective",
    "dagm", "split", "n_images", "n_defective"}`` and, when the defective images' mean IoU there is near zero
    (the map does not find the defects), a ``warning``. ``val_limit`` uses a seeded sample of that many
    validation images (faster, less exact). Heatmaps are reduced to pixel counts one image at a time, so memory
    does not grow with the fold.
    """
    fold_description = f"the run's validation fold of {loaded.config.data}"
    try:
        fold = _run_fold(loaded, None, "val")
    except DataonomyError as exc:
        raise DataonomyError(
            f"threshold: cannot read {fold_description} ({exc}); pass --threshold or --threshold-from"
        ) from None
    groups = {True: [], False: []}
    for i, sample in enumerate(fold.samples):
        groups[bool(sample.defect)].append(i)
    if val_limit is not None:
        if val_limit < 1:
            raise DataonomyError(f"--val-limit {val_limit}: must be at least 1")
        half = max(1, val_limit // 2)
        groups = {
            k: seeded_subsample(v, half, loaded.config.seed, f"localize-validation-{k}")
            for k, v in groups.items()
        }
    indices = groups[True] + groups[False]
    curves = L.ThresholdCurves()
    for i in show_progress(indices, desc="validation heatmaps", enabled=progress):
        sample = fold.samples[i]
        pixels = np.asarray(open_image(sample.path, "RGB"))
        mask = fold.mask(i)
        _check_fits(sample.path, pixels.shape, settings.patch)
        curves.add(settings.heatmap(loaded.model, _image_tensor(loaded, pixels, settings.device)), mask)
    try:
        best = curves.best()
    except DataonomyError as exc:
        raise DataonomyError(
            f"threshold: {fold_description}: {exc}; pass --threshold or --threshold-from"
        ) from None
    chosen = {
        **best,
        "source": "validation",
        "data": loaded.config.data,
        "split": "val",
        "n_images": len(indices),
        "n_defective": curves.n_defective,
    }
    if best["mean_iou_defective"] < NEAR_ZERO_IOU:
        chosen["warning"] = (
            f"at the chosen threshold {best['value']:.2f} the defective validation images' mean IoU is "
            f"{best['mean_iou_defective']:.3f}: the heatmaps do not outline these defects"
        )
    return chosen


def _threshold_from(path: str | Path, model_sha256: str, settings: LocalizeSettings) -> dict:
    report_path = Path(path)
    report_path = report_path / REPORT_NAME if report_path.is_dir() else report_path
    report = read_json_file(
        report_path,
        f"--threshold-from {report_path}: not a readable JSON report",
        missing=f"--threshold-from {path}: no {REPORT_NAME} there",
    )
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise DataonomyError(f"--threshold-from {report_path}: not a report written by transfer localize")
    params = report["parameters"]
    wanted = {
        "model_sha256": model_sha256,
        "patch": settings.patch,
        "stride": settings.stride,
        "heat_kind": settings.heat_kind,
    }
    differ = [f"{k} {params.get(k)!r} (now {v!r})" for k, v in wanted.items() if params.get(k) != v]
    if differ:
        raise DataonomyError(
            f"--threshold-from {report_path}: its threshold was chosen for other settings: {', '.join(differ)}"
        )
    return {"value": float(report["threshold"]["value"]), "source": "file", "file": str(report_path)}


def _check_fits(path: Path, shape: tuple, patch: int | None) -> None:
    if patch is not None and patch > min(shape[:2]):
        raise DataonomyError(f"--patch-size {patch}: larger than image {path} ({shape[1]}x{shape[0]})")


# --------------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------------


class _PackedMasks(Sequence):
    """Boolean masks kept as packed bits (8x smaller), unpacked on access, for the metrics over all images."""

    def __init__(self):
        self._items: list[tuple[tuple, np.ndarray]] = []

    def append(self, mask: np.ndarray) -> None:
        self._items.append((mask.shape, np.packbits(mask, axis=None)))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> np.ndarray:
        shape, bits = self._items[index]
        return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


def localize_images(
    config: LocalizeConfig,
    out_dir: str | Path,
    *,
    images: Sequence[str | Path] | SampleDataset | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict:
    """Localise defects in images with the fine-tuned run ``config.model``; write ``out_dir`` (see the module
    docstring; ``config.json`` holds ``config``) and return the report that ``out_dir/localize.json`` holds.

    The images: ``images`` (a list of files, or a dataset such as a ``DAGM`` fold,
    :class:`dataonomy.datasets.SampleDataset`: labelled where it has masks), else ``config.images`` (a folder,
    file or glob of image files, unlabelled), else a fold of a defect set: ``config.split`` of ``config.data``,
    or of the run's own set and seeded split when it is None. ``patch_size`` defaults to the run's training
    patch size (patch-trained runs), ``stride`` to half the patch. ``limit``: localise N images spread over the
    groups (:func:`spread_sample`, seeded by the run's seed). ``skip_bad``: drop unreadable images (and masks)
    with a warning instead of failing. ``threshold``/``threshold_from``/``val_limit``: see the module
    docstring. ``overwrite``: replace a non-empty ``out_dir``. Every input is checked before anything is
    written; a bad one raises :class:`DataonomyError` and leaves no output.

    The images are matched by content against those the run was trained and validated on (``overlap`` in the
    report); a labelled set scored as held-out (a ``test`` fold, or a dataset passed in) that holds any of them
    is refused, or with ``allow_overlap`` localised with a warning. Plain image files are only counted.
    """
    out_dir = Path(out_dir)
    _check_out(out_dir, overwrite)
    loaded = load_localization_model(config.model, device)
    settings = _settings(
        loaded, config.patch_size, config.stride, config.mode, config.batch_size, _device(device)
    )
    items, source, overlap = _chosen_items(
        loaded, config, config.images if images is None else images, settings
    )
    model_sha256 = file_sha256(loaded.path)
    chosen = _threshold(loaded, config, settings, model_sha256, progress)
    with staged_folder(out_dir, overwrite=True) as stage:
        rows, metrics = _localize_items(loaded, settings, items, chosen["value"], stage, config, progress)
        report = finite(
            {
                "format": REPORT_FORMAT,
                "model": str(loaded.path),
                "arch": loaded.record.arch,
                "input": source,
                "overlap": overlap,
                "parameters": _parameters(settings, model_sha256, config),
                "threshold": chosen,
                "metrics": metrics,
                "images": rows,
            }
        )
        write_json(stage / REPORT_NAME, report)
        config.save(stage / CONFIG_NAME)
    report["files"] = {"folder": str(out_dir), "report": str(out_dir / REPORT_NAME)}
    return report


def _check_out(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataonomyError(f"--out {out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise DataonomyError(f"--out {out_dir}: folder is not empty (pass --overwrite to replace it)")


def _chosen_items(loaded, config: LocalizeConfig, images, settings) -> tuple[list[_Item], dict, dict]:
    """The images to localise (checked: readable, large enough for the patches), where they come from, and
    their overlap with the run's training images (refused for a held-out labelled set unless allowed)."""
    data = config.defect_data(default_format=loaded.config.format)
    items, source = _items(loaded, images, data, config.split, config.skip_bad)
    items = spread_sample(items, config.limit, loaded.config.seed)
    overlap = training_overlap(loaded.record.seen_images, [item.path for item in items])
    if source["source"] == "dataset" or (source["source"] == "data" and config.split == "test"):
        where = source.get("root") or f"--split test of {source['data']}"
        check_overlap(overlap, where, config.allow_overlap)
    elif source["source"] == "files":  # unlabelled: no metrics to mislead, so a warning is enough
        check_overlap(overlap, f"--images {source.get('images')}", True)
    # (a train/val/trainval/all fold holds training images by request: counted only)
    sizes = check_images([item.path for item in items])
    for item, (width, height) in zip(items, sizes, strict=True):
        _check_fits(item.path, (height, width), settings.patch)
    return items, source, overlap


def _threshold(
    loaded, config: LocalizeConfig, settings: LocalizeSettings, model_sha256: str, progress
) -> dict:
    """The binarisation threshold and where it came from (given, a file, or chosen on validation)."""
    if config.threshold is not None:
        return {"value": float(config.threshold), "source": "given"}
    if config.threshold_from is not None:
        return _threshold_from(config.threshold_from, model_sha256, settings)
    return validation_threshold(loaded, settings, config.val_limit, progress)


def _localize_items(loaded, settings, items: list[_Item], value: float, stage: Path, config, progress):
    """Localise every item into ``stage``: the report's rows, and the metrics where every image is labelled."""
    names = _unique_names([item.path for item in items])
    rows, predictions, truths = [], _PackedMasks(), _PackedMasks()
    labelled = True
    # Pixel-level AP/AUROC of the heatmaps, threshold-free: every pixel's heat binned by class.
    pixel_hist = np.zeros((2, len(PIXEL_BINS) - 1), dtype=np.int64)
    for item, name in show_progress(
        list(zip(items, names, strict=True)), desc="localize", enabled=None if progress is None else progress
    ):
        row, predicted, truth, heat = _localize_one(loaded, settings, item, name, value, stage, config)
        if truth is None:
            labelled = False
        else:
            truths.append(truth)
            pixel_hist[1] += np.histogram(heat[truth], PIXEL_BINS)[0]
            pixel_hist[0] += np.histogram(heat[~truth], PIXEL_BINS)[0]
        predictions.append(predicted)
        rows.append(row)
    if not (labelled and rows):
        return rows, None
    report = M.localization_report(predictions, truths, tolerance=config.tolerance)
    pixel_ap, pixel_auroc = M.binned_ap_auroc(pixel_hist[1], pixel_hist[0])
    return rows, {
        **report,
        "pixel_ap": pixel_ap,
        "pixel_auroc": pixel_auroc,
        "n_pixels": int(pixel_hist.sum()),
        "n_defect_pixels": int(pixel_hist[1].sum()),
    }


def _localize_one(loaded, settings, item: _Item, name: str, value: float, stage: Path, config):
    """One image's heatmap, mask and overlay written into ``stage``; its report row, mask and true mask."""
    pixels = np.asarray(open_image(item.path, "RGB"))
    heat, score = settings.heatmap_and_score(loaded.model, _image_tensor(loaded, pixels, settings.device))
    predicted = L.binarize(heat, value)
    truth = item.mask()
    files = {
        "heatmap": f"heatmaps/{name}.npy",
        "overlay": f"overlays/{name}.png",
        "mask": f"masks/{name}.png",
    }
    (stage / "heatmaps").mkdir(exist_ok=True)
    np.save(stage / files["heatmap"], heat.astype(np.float32))
    save_png(predicted, stage / files["mask"])
    overlay = overlay_heatmap(pixels, heat, predicted, truth, config.colormap, config.alpha)
    save_png(overlay, stage / files["overlay"])
    row = {
        "image": str(item.path),
        "name": name,
        "group": item.group,
        "defect": None if truth is None else bool(truth.any()),
        "score": score,
        "defect_pixels": int(predicted.sum()),
        "defects": L.defect_regions(heat, predicted),
    }
    if truth is not None:
        detection = M.detect_defects(predicted, truth)
        row.update(
            iou=M.iou(predicted, truth),
            n_defects=detection.n_defects,
            n_detected=detection.n_detected,
            defect_ious=M.defect_ious(predicted, truth).tolist(),  # what AR sums over
        )
    return {**row, **files}, predicted, truth, heat


def _parameters(settings: LocalizeSettings, model_sha256: str, config: LocalizeConfig) -> dict:
    """The report's ``parameters``: how the heatmaps were made and drawn (``--threshold-from`` checks them)."""
    return {
        "model_sha256": model_sha256,
        "patch": settings.patch,
        "stride": settings.stride,
        "mode": settings.mode,
        "heat_kind": settings.heat_kind,
        "input_size": settings.input_size,
        "batch_size": settings.batch_size,
        "device": settings.device,
        "limit": config.limit,
        "colormap": config.colormap,
        "alpha": config.alpha,
        "contours": {"predicted": "deepskyblue", "true": "lime"},
        "detection_iou": 0.5,
    }


def format_localize_summary(report: dict) -> str:
    """A few lines for a terminal: where the threshold came from, the metrics table (labelled images) or the
    highest-scoring images (unlabelled), and where the files are."""
    chosen = report["threshold"]
    origin = {
        "given": "given",
        "file": f"from {chosen.get('file')}",
        "validation": (
            f"chosen on {chosen.get('n_images')} validation images of {chosen.get('data', chosen.get('dagm'))} "
            f"by pooled pixel F1 ({chosen.get('f1', float('nan')):.3f})"
        ),
    }[chosen["source"]]
    params = report["parameters"]
    how = (
        "segdec defect map"
        if params["mode"] == "segmap"
        else f"patch {params['patch']}, stride {params['stride']}, mode {params['mode']}"
    )
    lines = [f"{len(report['images'])} images, {how}; threshold {chosen['value']:.3g} ({origin})"]
    overlap = report.get("overlap") or {}
    if overlap.get("checked"):
        lines.append(
            f"overlap with the run's training images (by file content): {overlap['train']} training and "
            f"{overlap['val']} validation images of {overlap['images']}"
        )
    elif overlap:
        lines.append(f"overlap with the run's training images: not checked ({overlap.get('reason')})")
    if chosen.get("warning"):
        lines.append(f"warning: {chosen['warning']}")
    metrics = report.get("metrics")
    if metrics:
        row = {k: (np.nan if v is None else v) for k, v in metrics.items()}
        row["threshold"] = chosen["value"]
        row["detected"] = f"{metrics['n_detected']}/{metrics['n_defects']}"
        lines.append(M.format_table([row], SUMMARY_COLUMNS))
        if "tolerance" in metrics:
            lines.append(
                f"within {metrics['tolerance']:g} px: precision {metrics['tolerant_precision']:.3f}, recall "
                f"{metrics['tolerant_recall']:.3f}, F1 {metrics['tolerant_f1']:.3f}; defects found "
                f"{metrics['n_detected_tolerant']}/{metrics['n_defects']}"
            )
    else:
        top = sorted(report["images"], key=lambda r: -r["score"])[:5]
        lines.append("highest scores:")
        lines.append(M.format_table(top, ("name", "score", "defect_pixels")))
    lines.append(f"wrote heatmaps/, overlays/, masks/ and {report['files']['report']}")
    return "\n".join(lines)
