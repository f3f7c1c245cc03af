"""ONNX export of a trained run, with a parity check against PyTorch on real images.

Classifier runs: the graph takes normalised images ``image`` (batch, 3, S, S) with S the run's input size (the
image size, or the patch size of a patch model) and returns the class logits ``logits`` (batch, num_classes); the
batch dimension is dynamic. Segdec runs (native resolution): ``image`` (batch, 3, H, W) with H and W dynamic, and
two outputs, ``score_logit`` (batch,), the image's defect logit (probability: its sigmoid), and ``map_logits``
(batch, 1, H / stride, W / stride), the defect map's logits. What a caller needs to prepare inputs and read
outputs (mean, std, input size, classes, the decision threshold and, for segdec, the resize rule and the pixel
threshold chosen on validation) is stored in the ONNX file's metadata (``metadata_props``, values in JSON), so
that ``transfer predict --onnx`` decides from raw pixels as the run does.

The file is exported with the TorchScript-based exporter (``dynamo=False``): the torch.export-based one, torch's
default since 2.9, needs the ``onnxscript`` package. The file is written only when ONNX Runtime's outputs on real
images agree with PyTorch's within the tolerance.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from dataonomy.errors import DataonomyError
from dataonomy.io import atomic_path
from transfer.checkpoint import LoadedModel, load_model
from transfer.heads import Head, get_head

DEFAULT_TOLERANCE = 1e-4
DEFAULT_OPSET = 17


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    input_size: int | tuple[int, int],
    opset: int = DEFAULT_OPSET,
    head: Head | None = None,
) -> Path:
    """Export ``model`` (eval mode, on CPU) to ONNX at ``path``: input ``image``, the outputs of ``head`` (default
    ``classify``: ``logits``) with its dynamic axes: (N, 3, S, S) for a classifier; a segdec model's (N, 3, H, W)
    of any size (``input_size`` (H, W) is the traced example's) and outputs ``score_logit``, ``map_logits``."""
    head = head or get_head("classify")
    model = model.cpu().eval()
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    example = torch.zeros(1, 3, height, width)
    names, axes = list(head.onnx_outputs), head.onnx_axes
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation; it is the one that needs no onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # Shape-inference and constant-folding notes (e.g. strided slices in EfficientNet's padding), and the
        # tracer's note on GroupNorm's input-size check; the parity check (on another batch size than the
        # traced one) is what shows whether the graph is right.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset,
        )
    return Path(path)


def add_metadata(path: str | Path, metadata: dict) -> None:
    """Store ``metadata`` (name -> JSON-serialisable value) in the ONNX file's ``metadata_props`` and check it."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def onnx_logits(path: str | Path, images: torch.Tensor) -> list[np.ndarray]:
    """Every output of an exported model on ``images`` (normalised, (N, 3, H, W)) with ONNX Runtime on CPU:
    ``[logits]`` for a classifier, ``[score_logit, map_logits]`` for a segdec model."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images.detach().cpu().numpy().astype(np.float32)})


def _probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities (softmax over classes) of classifier logits (N, C); per-entry sigmoids otherwise."""
    x = torch.from_numpy(logits).double()
    return (torch.softmax(x, dim=1) if x.ndim == 2 else torch.sigmoid(x)).numpy()


def parity(path: str | Path, model: torch.nn.Module, images: torch.Tensor | list[torch.Tensor]) -> dict:
    """How far ONNX Runtime's outputs are from PyTorch's on ``images`` (a batch, or a list of batches: segdec
    images of different sizes): max |difference| of logits (every output) and of probabilities, and the logits'
    scale ``max(1, max |PyTorch logit|)`` that the tolerance is relative to (float32 rounding grows with the size
    of the numbers: an untrained Inception V3 has logits of 1e11)."""
    model = model.cpu().eval()
    batches = images if isinstance(images, list) else [images]
    logit_diff = prob_diff = 0.0
    scale = 1.0
    for batch in batches:
        with torch.no_grad():
            out = model(batch.cpu())
        reference = [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
        exported = onnx_logits(path, batch)
        for ref, exp in zip(reference, exported, strict=True):
            if exp.shape != ref.shape:
                raise DataonomyError(f"{path}: ONNX output has shape {exp.shape}, PyTorch's {ref.shape}")
            logit_diff = max(logit_diff, float(np.max(np.abs(exp - ref))))
            prob_diff = max(prob_diff, float(np.max(np.abs(_probabilities(exp) - _probabilities(ref)))))
            scale = max(scale, float(np.max(np.abs(ref))))
    return {
        "images": int(sum(b.shape[0] for b in batches)),
        "max_abs_logit_diff": logit_diff,
        "logit_scale": scale,
        "max_abs_prob_diff": prob_diff,
    }


def check_parity(result: dict, tolerance: float) -> None:
    """Raise when the logits differ by more than ``tolerance`` times their scale (see :func:`parity`)."""
    if not result["max_abs_logit_diff"] <= tolerance * result["logit_scale"]:  # NaN fails too
        raise DataonomyError(
            f"--tolerance {tolerance:g}: ONNX and PyTorch logits differ by up to {result['max_abs_logit_diff']:.3g} "
            f"(logit scale {result['logit_scale']:.3g}) on {result['images']} real images; "
            "the ONNX file was not written"
        )


def parity_images(
    loaded: LoadedModel, data=None, split: str | None = None, n: int = 8
) -> torch.Tensor | list[torch.Tensor]:
    """Up to ``n`` real images as the model takes them (normalised, input size), half of them defective where
    there are defects: images of the defect set (``data``, a :class:`transfer.data.DefectData`, default the
    run's own; whole, resized) or patches for fine-tuned runs, source-pool validation images for pretrain
    runs. Segdec runs take images at their own size: a list of one-image batches."""

    from transfer.data import pretrain_folds, run_fold

    config, record = loaded.config, loaded.record
    if record.kind == "pretrain":
        _, val = pretrain_folds(
            config.source_root, config.wnids, config.val_fraction, config.images_per_class, config.seed
        )
        pick = np.linspace(0, len(val) - 1, min(n, len(val))).round().astype(int)
        return torch.stack([loaded.transforms()(val[int(i)][0]) for i in pick])
    same_set = data is None or config.defect_data().same_set(data)
    split = split or ("test" if config.split.has_test_fold() or not same_set else "val")
    return record.head_kind.examples(loaded, run_fold(config, split, data), n)


def _pixel_threshold(loaded: LoadedModel) -> dict:
    """What ``transfer predict --onnx`` needs to binarise the defect map: the pixel threshold chosen on the run's
    validation fold as ``transfer localize`` chooses it, and the resize rule. Without a readable validation fold
    the file holds no pixel threshold (a warning says so; predict then asks for ``--threshold``)."""
    from transfer.localize_run import segmap_settings, validation_threshold
    from transfer.predict import RESIZE_RULE

    out = {"transfer.preprocessing": RESIZE_RULE}
    try:
        chosen = validation_threshold(loaded, segmap_settings(loaded, "cpu"), progress=False)
    except DataonomyError as exc:
        warnings.warn(f"no pixel threshold stored in the ONNX file: {exc}", stacklevel=2)
        return out
    return {
        **out,
        "transfer.pixel_threshold": chosen["value"],
        "transfer.pixel_threshold_source": {
            k: chosen[k] for k in ("source", "criterion", "f1") if k in chosen
        },
    }


def export_run(
    run: str | Path,
    onnx_path: str | Path,
    data=None,
    split: str | None = None,
    n_images: int = 8,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int = DEFAULT_OPSET,
    allow_incomplete: bool = False,
) -> dict:
    """Export a run's best model to ``onnx_path``, check parity on ``n_images`` real images, and return the
    parity numbers. Nothing is written when the check fails. A run whose training never finished is refused
    unless ``allow_incomplete``."""
    onnx_path = Path(onnx_path)
    if onnx_path.is_dir():  # checked before any work (the rename at the end would fail)
        raise DataonomyError(f"--onnx {onnx_path}: is a folder; name the file to write")
    if n_images < 1:
        raise DataonomyError(f"--images {n_images}: must be at least 1")
    if tolerance < 0:
        raise DataonomyError(f"--tolerance {tolerance}: must not be negative")
    loaded = load_model(run, "cpu", allow_incomplete, "--allow-incomplete")
    record, head = loaded.record, loaded.record.head_kind
    images = parity_images(loaded, data, split, n_images)
    metadata = {
        "transfer.arch": record.arch,
        "transfer.kind": record.kind,
        "transfer.classes": list(record.classes),
        "transfer.input": record.input,
        "transfer.input_size": record.input_size,
        "transfer.mean": list(record.mean),
        "transfer.std": list(record.std),
        "transfer.threshold": record.threshold,
        "transfer.head": head.name,
        "transfer.output": head.onnx_meaning,
        **{f"transfer.{name}": value for name, value in record.head_fields.items()},
    }
    if head.maps_in_one_pass:
        metadata.update(_pixel_threshold(loaded))
    example = record.input_size if head.image_input == "resized" else tuple(images[0].shape[-2:])
    with atomic_path(onnx_path) as tmp:
        export_onnx(loaded.model, tmp, example, opset, head=head)
        add_metadata(tmp, metadata)
        result = parity(tmp, loaded.model, images)
        check_parity(result, tolerance)
    return {**result, "tolerance": tolerance, "onnx": str(onnx_path)}


__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "add_metadata",
    "check_parity",
    "export_onnx",
    "export_run",
    "onnx_logits",
    "parity",
    "parity_images",
]
