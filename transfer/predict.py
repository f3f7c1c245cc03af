"""``transfer predict``: score new, unlabelled images on a production line, with a fine-tuned run (PyTorch) or its
ONNX export (ONNX Runtime), into one table.

Both runtimes share every step but the forward pass, so the same raw pixels give the same decisions:

1. the image is read as RGB and, where the run was trained resized (``input_size``), its longer side is scaled to
   that size with the aspect kept (bilinear, antialiased; :func:`transfer.data.scaled_size`), then normalised
   with the run's mean and std: what ``transfer evaluate`` does;
2. the model (a head with a defect map from one pass: segdec) gives the image's defect probability and its map
   (:meth:`transfer.heads.Head.score_and_map`), the map upsampled to the image's own size;
3. the image is defective when its probability is at least the decision threshold (the one fine-tuning chose on
   validation), and its defects are the connected regions of ``map >= pixel threshold``.

Where the two thresholds come from: the decision threshold from the run (``best.pt``) or the ONNX file's
metadata (``transfer.threshold``), unless ``--decision-threshold`` is given; the pixel threshold from
``--threshold``, else a ``localize.json`` (``--threshold-from``), else the ONNX metadata
(``transfer.pixel_threshold``, chosen by ``transfer export``), else for a run chosen on its validation fold as
``transfer localize`` chooses it (maximum pooled pixel F1). The output folder (written whole or not at all)::

    predictions.csv       one row per image: file, score, decision, defects, defect_pixels and the largest
                          defect's area, box (x0, y0, x1, y1, inclusive) and peak map value
    predict.json          the model, the runtime, both thresholds and where they came from, the preprocessing,
                          the counts, and every image's defects
    config.json           the config, for ``--config``
    masks/<name>.png      with --write-masks: the binary defect mask at the image's own size, 0/255
    overlays/<name>.png   with --write-overlays: the map over the image, the defects outlined

Unlike ``transfer localize``, which scores maps against masks (labelled folds, metrics), ``predict`` needs no
labels and returns the decisions a line acts on.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dataonomy.datasets import open_image
from dataonomy.errors import DataonomyError
from dataonomy.io import file_sha256, write_json
from dataonomy.progress import progress as show_progress
from transfer.data import scaled_size, size_batches
from transfer.heads import Head, get_head
from transfer.inspect_io import (
    check_images,
    drop_bad_images,
    finite,
    list_images,
    overlay_heatmap,
    save_png,
    staged_folder,
    unique_names,
)
from transfer.localize import binarize, defect_regions
from transfer.stage_config import PredictConfig

REPORT_FORMAT = "transfer.predict/1"
PREDICTIONS_NAME = "predictions.csv"
REPORT_NAME = "predict.json"
CONFIG_NAME = "config.json"
COLUMNS = (
    "file",
    "score",
    "decision",
    "defects",
    "defect_pixels",
    "largest_area",
    "largest_x0",
    "largest_y0",
    "largest_x1",
    "largest_y1",
    "largest_score",
)
# What the exported file says about its preprocessing, for a caller outside this tool.
RESIZE_RULE = (
    "RGB; where input_size is set, the longer side scaled to it with the aspect kept (bilinear, antialiased); "
    "then (pixel / 255 - mean) / std"
)

__all__ = [
    "COLUMNS",
    "PREDICTIONS_NAME",
    "REPORT_NAME",
    "RESIZE_RULE",
    "ModelInput",
    "OnnxPredictor",
    "Predictor",
    "TorchPredictor",
    "format_predict_summary",
    "open_predictor",
    "predict_pixels",
    "predict_images",
]


@dataclass(frozen=True)
class ModelInput:
    """How raw pixels become the model's input: the longer side scaled to ``input_size`` (None: the image's own
    size), then normalised with ``mean``/``std``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int | None

    def size(self, height: int, width: int) -> tuple[int, int]:
        return scaled_size(height, width, self.input_size)

    def batch(self, pixels: Sequence[np.ndarray]) -> torch.Tensor:
        """(H, W, 3) uint8 images of one size -> the normalised input (B, 3, h, w), float32 on the CPU."""
        from torchvision.transforms import v2

        x = torch.stack(
            [torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in pixels]
        )  # decoded pixels are read-only
        size = self.size(*x.shape[-2:])
        if tuple(x.shape[-2:]) != size:
            x = v2.functional.resize(x, list(size), antialias=True)
        mean = torch.tensor(self.mean)[:, None, None]
        std = torch.tensor(self.std)[:, None, None]
        return (x.float() / 255.0 - mean) / std

    def describe(self) -> dict:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": self.input_size,
            "rule": RESIZE_RULE,
        }


class Predictor:
    """A model ready to score images: its head, input, decision threshold, and the forward pass of one runtime."""

    runtime = ""

    def __init__(self, head: Head, model_input: ModelInput, threshold: float, source: dict):
        self.head, self.input, self.threshold, self.source = head, model_input, float(threshold), source

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The model's outputs (CPU tensors, in the head's ONNX output order) for the normalised batch ``x``."""
        raise NotImplementedError

    def score_and_map(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Defect probabilities (B,) and maps (B, h, w) at the input's size."""
        scores, maps = self.head.score_and_map(self.outputs(x), tuple(x.shape[-2:]))
        return scores.double().numpy(), maps


class TorchPredictor(Predictor):
    runtime = "pytorch"

    def __init__(
        self, model, head: Head, model_input: ModelInput, threshold: float, source: dict, device: str
    ):
        super().__init__(head, model_input, threshold, source)
        self.model, self.device, self.loaded = model.eval(), device, None

    @classmethod
    def from_run(cls, loaded, device: str) -> TorchPredictor:
        """The predictor of a loaded run (:class:`transfer.checkpoint.LoadedModel`), its record's input and
        threshold."""
        record = loaded.record
        model_input = ModelInput(tuple(record.mean), tuple(record.std), record.input_size)
        source = {"model": str(loaded.path), "model_sha256": file_sha256(loaded.path)}
        predictor = cls(loaded.model, record.head_kind, model_input, record.threshold, source, device)
        predictor.loaded = loaded  # for the pixel threshold chosen on its validation fold
        return predictor

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            out = self.model(x.to(self.device))
        return tuple(t.float().cpu() for t in (out if isinstance(out, tuple) else (out,)))


class OnnxPredictor(Predictor):
    runtime = "onnxruntime"

    def __init__(self, path: Path, device: str, threads: int | None = None):
        import onnxruntime as ort

        try:
            providers = ["CPUExecutionProvider"]
            if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            options = ort.SessionOptions()
            if threads is not None:  # default: ONNX Runtime's own choice (the physical cores)
                options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own types for a file that is not a model
            raise DataonomyError(f"--onnx {path}: not an ONNX model ({str(exc).splitlines()[0]})") from None
        meta = {}
        for key, value in self.session.get_modelmeta().custom_metadata_map.items():
            try:
                meta[key] = json.loads(value)
            except json.JSONDecodeError:
                meta[key] = value
        self.metadata = meta
        if "transfer.head" not in meta or "transfer.threshold" not in meta:
            raise DataonomyError(
                f"--onnx {path}: no transfer metadata (head, threshold); export it with transfer export"
            )
        head = get_head(meta["transfer.head"])
        model_input = ModelInput(
            tuple(meta["transfer.mean"]), tuple(meta["transfer.std"]), meta.get("transfer.input_size")
        )
        source = {"onnx": str(path), "onnx_sha256": file_sha256(path)}
        super().__init__(head, model_input, meta["transfer.threshold"], source)

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.session.run(None, {"image": x.numpy().astype(np.float32)})
        return tuple(torch.from_numpy(np.asarray(o)) for o in out)


def open_predictor(config: PredictConfig, device: str) -> Predictor:
    """The config's model (``model``: a run through PyTorch; ``onnx``: an export through ONNX Runtime), refused
    in one line when its kind gives no defect map in one pass."""
    if config.onnx is not None:
        path = Path(config.onnx)
        if not path.is_file():
            raise DataonomyError(f"--onnx {path}: no such file")
        predictor: Predictor = OnnxPredictor(path, device)
        where = f"--onnx {path}"
    else:
        from transfer.localize_run import load_localization_model

        predictor = TorchPredictor.from_run(load_localization_model(config.model, device), device)
        where = f"--model {config.model}"
    if not predictor.head.maps_in_one_pass:
        raise DataonomyError(
            f"{where}: a {predictor.head.name} model gives no defect map in one pass; transfer predict takes "
            "segdec runs (use transfer localize for a classifier's patch heatmaps)"
        )
    return predictor


def _pixel_threshold(predictor: Predictor, config: PredictConfig, progress: bool | None) -> dict:
    """The map's binarisation threshold and where it came from (module docstring, in that order)."""
    if config.threshold is not None:
        return {"value": float(config.threshold), "source": "given"}
    if isinstance(predictor, OnnxPredictor):
        if config.threshold_from is not None:
            raise DataonomyError(
                "--threshold-from: reads a localize.json of a run; with --onnx the pixel threshold is the one "
                "stored at export, or give --threshold"
            )
        stored = predictor.metadata.get("transfer.pixel_threshold")
        if stored is None:
            raise DataonomyError(
                f"--onnx {predictor.source['onnx']}: no pixel threshold in its metadata (exported before "
                "transfer predict existed); give --threshold or export it again"
            )
        return {"value": float(stored), "source": "onnx metadata"}
    from transfer.localize_run import _threshold_from, segmap_settings, validation_threshold

    settings = segmap_settings(predictor.loaded, predictor.device)
    if config.threshold_from is not None:
        return _threshold_from(config.threshold_from, predictor.source["model_sha256"], settings)
    return validation_threshold(predictor.loaded, settings, config.val_limit, progress)


def _image_paths(config: PredictConfig) -> list[Path]:
    paths = list_images(config.images)
    if config.skip_bad:
        paths = drop_bad_images(paths)
        if not paths:
            raise DataonomyError(f"--images {config.images}: no readable image left after --skip-bad")
    return paths


def predict_images(
    config: PredictConfig,
    out_dir: str | Path,
    *,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict:
    """Score every image of ``config.images`` with ``config.model`` or ``config.onnx``; write ``out_dir`` (module
    docstring) and return the report that ``predict.json`` holds. Every input is checked (the model, each
    image's header) before anything is written; a bad one raises :class:`DataonomyError` and leaves no output."""
    from dataonomy.devices import resolve_device
    from transfer.localize_run import _check_out

    out_dir = Path(out_dir)
    _check_out(out_dir, overwrite)
    device = str(resolve_device(device))
    predictor = open_predictor(config, device)
    if config.decision_threshold is not None:
        predictor.threshold = float(config.decision_threshold)
        decision_source = "given"
    else:
        decision_source = "run" if isinstance(predictor, TorchPredictor) else "onnx metadata"
    paths = _image_paths(config)
    sizes = [(height, width) for width, height in check_images(paths)]
    pixel = _pixel_threshold(predictor, config, progress)
    names = unique_names(paths)
    rows: list[dict | None] = [None] * len(paths)
    batches = size_batches([predictor.input.size(*s) for s in sizes], config.batch_size)
    with staged_folder(out_dir, overwrite=True) as stage:
        for batch in show_progress(
            batches, desc="predict", weights=[len(b) for b in batches], enabled=progress
        ):
            pixels = [np.asarray(open_image(paths[i], "RGB")) for i in batch]
            found = predict_pixels(predictor, pixels, pixel["value"])
            for i, image, (row, heat, predicted) in zip(batch, pixels, found, strict=True):
                rows[i] = {"file": str(paths[i]), "name": names[i], **row}
                rows[i].update(_write_pictures(stage, names[i], image, heat, predicted, config))
        done = [r for r in rows if r is not None]
        report = finite(
            {
                "format": REPORT_FORMAT,
                **predictor.source,
                "runtime": predictor.runtime,
                "head": predictor.head.name,
                "device": device if predictor.runtime == "pytorch" else "cpu",
                "input": predictor.input.describe(),
                "decision_threshold": {"value": predictor.threshold, "source": decision_source},
                "pixel_threshold": pixel,
                "counts": {
                    "images": len(done),
                    "defective": sum(r["decision"] == "defective" for r in done),
                    "clean": sum(r["decision"] == "clean" for r in done),
                    "defects": sum(r["defects"] for r in done),
                },
                "images": done,
            }
        )
        _write_csv(stage / PREDICTIONS_NAME, done)
        write_json(stage / REPORT_NAME, report)
        config.save(stage / CONFIG_NAME)
    report["files"] = {
        "folder": str(out_dir),
        "predictions": str(out_dir / PREDICTIONS_NAME),
        "report": str(out_dir / REPORT_NAME),
    }
    return report


def predict_pixels(
    predictor: Predictor, pixels: Sequence[np.ndarray], pixel_threshold: float
) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """Raw (H, W, 3) uint8 images of one size -> for each, (its row: score, decision, defects; its defect map and
    binary mask at the image's own size)."""
    scores, maps = predictor.score_and_map(predictor.input.batch(pixels))
    height, width = pixels[0].shape[:2]
    if tuple(maps.shape[-2:]) != (height, width):  # trained resized: back to the image's own pixels
        maps = torch.nn.functional.interpolate(maps[:, None], size=(height, width), mode="bilinear")[:, 0]
    out = []
    for score, heat in zip(scores, maps.numpy(), strict=True):
        predicted = binarize(heat, pixel_threshold)
        regions = defect_regions(heat, predicted)
        largest = max(regions, key=lambda r: r["area"]) if regions else None
        row = {
            "score": float(score),
            "decision": "defective" if score >= predictor.threshold else "clean",
            "defects": len(regions),
            "defect_pixels": int(predicted.sum()),
            "largest_area": largest["area"] if largest else 0,
            "largest_box": largest["box"] if largest else None,
            "largest_score": largest["score"] if largest else None,
            "regions": regions,
        }
        out.append((row, heat, predicted))
    return out


def _write_pictures(stage: Path, name: str, pixels, heat, predicted, config: PredictConfig) -> dict:
    """The mask and overlay asked for, and their paths for the image's row."""
    files = {}
    if config.write_masks:
        files["mask"] = f"masks/{name}.png"
        save_png(predicted, stage / files["mask"])
    if config.write_overlays:
        files["overlay"] = f"overlays/{name}.png"
        overlay = overlay_heatmap(pixels, heat, predicted, None, config.colormap, config.alpha)
        save_png(overlay, stage / files["overlay"])
    return files


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        box = r["largest_box"] or ["", "", "", ""]
        peak = "" if r["largest_score"] is None else f"{r['largest_score']:.6f}"
        writer.writerow(
            [r["file"], f"{r['score']:.6f}", r["decision"], r["defects"], r["defect_pixels"], r["largest_area"],
             *box, peak]
        )  # fmt: skip
    path.write_text(buffer.getvalue())


def format_predict_summary(report: dict) -> str:
    """A few lines for a terminal: the counts, both thresholds and where the table is."""
    counts, pixel = report["counts"], report["pixel_threshold"]
    decision = report["decision_threshold"]
    return "\n".join(
        [
            f"{counts['images']} images ({report['runtime']}): {counts['defective']} defective, "
            f"{counts['clean']} clean, {counts['defects']} defects in all",
            f"decision threshold {decision['value']:.4g} ({decision['source']}), pixel threshold "
            f"{pixel['value']:.4g} ({pixel['source']})",
            f"wrote {report['files']['predictions']} and {report['files']['report']}",
        ]
    )
