"""A run's files: the model it keeps (``best.pt``), the training checkpoint (``checkpoints/last.pt``), its status.

A run lives in one folder::

    config.json          the run's config (transfer.config), written before training starts
    checkpoints/last.pt  the latest training state (model, optimiser, schedule, position in the epoch), written
                         every ``checkpoint_every`` steps, at every epoch's end and on Ctrl-C (atomically)
    best.pt              the best model so far on validation, with what inference needs (:class:`ModelRecord`)
    metrics.jsonl        one JSON line per epoch: training loss/accuracy, validation metrics, learning rate
    summary.json         written when training ends: status, best epoch, best metrics

A run is finished once training ends (all epochs, or early stopping): ``best.pt`` then records ``status``
``complete`` or ``stopped early``; while training runs, or after it was killed or stopped with a step budget, it
records ``in progress`` and ``summary.json`` is absent. :func:`load_model` (evaluate, localize, export) and
``finetune --base`` (:func:`finetune_base_fields`) refuse an unfinished run unless asked. Resuming
(:func:`reopen_run`) removes what described the run as it was (``summary.json``, ``eval_*.json``,
``eval_*_pr.png``): they are written again from the finished run (:func:`finish_run`).

A loaded model owns its preprocessing and geometry (:class:`ModelRecord`: ``transforms()``, ``normalize``,
``input_size``, ``patch_size``...), as torchvision's ``Weights.transforms()`` does: no caller reads the saved
dict's keys.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dataonomy.errors import DataonomyError
from dataonomy.io import atomic_path, json_safe, write_json
from transfer.config import TrainConfig, config_from_dict
from transfer.models import ClassifierNet, model_spec, read_checkpoint

MODEL_FORMAT = "transfer.model/1"
CHECKPOINT_FORMAT = "transfer.checkpoint/1"
RUN_IN_PROGRESS = "in progress"


# --------------------------------------------------------------------------------------------------------------
# What a saved model says about itself
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRecord:
    """``best.pt`` without its weights, read once and checked: what inference needs to know about the model.

    ``input``: ``image`` (whole images resized to ``input_size``) or ``patch`` (patches of ``patch_size`` at their
    own scale, on a grid of ``patch_stride``). ``head``: None (a classifier) or ``segdec`` (with ``output_stride``
    and ``head_channels``). ``decision``: what the stored ``threshold`` decides (``image``, or where validation
    could not hold both kinds of image, a classifier ``patch`` or a segdec map ``cell``). ``input_size`` None: a
    segdec model that takes images at their own size. ``head_fields``: the fields its kind
    (:attr:`transfer.heads.Head.record_fields`) records, by name.
    """

    path: Path
    kind: str
    arch: str
    num_classes: int
    input_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    saved_config: dict
    classes: tuple = ()
    input: str = "image"
    patch_size: int | None = None
    patch_stride: int | None = None
    head: str | None = None
    output_stride: int | None = None
    head_channels: int | None = None
    dropout: float | None = None
    threshold: float | None = None
    threshold_criterion: str | None = None
    decision: str = "image"
    epoch: int | None = None
    status: str | None = None
    seen_images: dict | None = None
    head_fields: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: dict, path: str | Path) -> ModelRecord:
        """The record of a loaded ``best.pt`` (``obj``, read from ``path``); a missing key is a one-line error."""
        path = Path(path)
        if obj.get("format") != MODEL_FORMAT:
            raise DataonomyError(f"{path}: not a model saved by transfer pretrain/finetune")
        from transfer.heads import get_head, head_name

        head = get_head(head_name(obj.get("head"), obj.get("input")))
        head_fields = head.record_fields
        required = ["kind", "arch", "num_classes", "input_size", "mean", "std", "config", *head_fields]
        missing = [key for key in required if key not in obj]
        if missing:
            raise DataonomyError(
                f"{path}: the saved model lacks {', '.join(missing)} (a damaged or foreign file)"
            )
        optional = {name: obj[name] for name in cls._OPTIONAL if obj.get(name) is not None}
        return cls(
            path=path,
            kind=obj["kind"],
            arch=obj["arch"],
            num_classes=int(obj["num_classes"]),
            input_size=None if obj["input_size"] is None else int(obj["input_size"]),
            mean=tuple(obj["mean"]),
            std=tuple(obj["std"]),
            saved_config=obj["config"],
            classes=tuple(obj.get("classes", ())),
            head_fields={name: obj[name] for name in head_fields}
            | {name: obj.get(name, default) for name, default in head.record_defaults.items()},
            **optional,
        )

    _OPTIONAL = (
        "input", "patch_size", "patch_stride", "head", "output_stride", "head_channels", "dropout", "threshold",
        "threshold_criterion", "decision", "epoch", "status", "seen_images",
    )  # fmt: skip

    @functools.cached_property
    def config(self) -> TrainConfig:
        """The run's config."""
        return config_from_dict(self.saved_config, str(self.path))

    @property
    def head_kind(self):
        """The model's kind (:class:`transfer.heads.Head`): what it outputs and how it is used."""
        from transfer.heads import head_of

        return head_of(self)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images (B, 3, H, W) -> the model's input normalisation."""
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        mean = torch.tensor(self.mean, device=images.device)[:, None, None]
        std = torch.tensor(self.std, device=images.device)[:, None, None]
        return (images - mean) / std

    def transforms(self) -> Callable:
        """PIL image (or uint8 tensor) -> the normalised tensor the model was validated on: a pretrained model's
        resize and centre crop, a patch model's patch as it is, a classifier's image resized to ``input_size``.
        A segdec model takes images at their own size (longer side scaled to ``input_size``: see
        :func:`transfer.data.scaled_size`); this gives them as they are."""
        from transfer.data import pretrain_transforms, texture_transforms

        if self.kind == "pretrain":
            return pretrain_transforms(self.input_size, self.mean, self.std, False)[1]
        size = self.input_size if self.head_kind.image_input == "resized" else None
        return texture_transforms(size, self.mean, self.std, False)[1]

    def unfinished(self) -> str | None:
        """Why the run is not finished (see the module docstring), or None when it is. A file saved before
        ``status`` was recorded is judged by its folder: a checkpoint without ``summary.json`` never ended."""
        status, run_dir = self.status, self.path.parent
        if (
            status is None
            and last_checkpoint_path(run_dir).is_file()
            and not (run_dir / "summary.json").is_file()
        ):
            status = RUN_IN_PROGRESS
        if status != RUN_IN_PROGRESS:
            return None
        epochs = self.saved_config.get("epochs")
        of = f" of {epochs}" if epochs else ""
        return f"its training never finished (killed or stopped; best.pt holds epoch {self.epoch}{of})"

    def refuse_unfinished(self, option: str, allow_option: str) -> None:
        """A one-line error when the run is unfinished: how to finish it, or ``allow_option`` to use it as it is."""
        why = self.unfinished()
        if why is not None:
            kind = self.kind if self.kind in ("pretrain", "finetune") else "finetune"
            raise DataonomyError(
                f"{option} {self.path}: {why}; finish it with `transfer {kind} --out {self.path.parent} --resume`"
                f"{f', or pass {allow_option} to use it as it is' if allow_option else ''}"
            )


def read_model_record(run: str | Path) -> tuple[ModelRecord, dict]:
    """The record of a run folder's ``best.pt`` (or of a model file), and the weights it holds."""
    path = Path(run)
    path = path / "best.pt" if path.is_dir() else path
    obj = read_checkpoint(path)
    return ModelRecord.from_dict(obj, path), obj.get("model", {})


# --------------------------------------------------------------------------------------------------------------
# Loading a model
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A trained model (from ``best.pt``) in eval mode, with its :class:`ModelRecord`."""

    model: ClassifierNet
    record: ModelRecord
    path: Path

    @property
    def config(self) -> TrainConfig:
        return self.record.config

    @property
    def threshold(self) -> float | None:
        return self.record.threshold

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images (B, 3, H, W) -> the model's input normalisation."""
        return self.record.normalize(images)

    def transforms(self) -> Callable:
        return self.record.transforms()


def load_model(
    run: str | Path,
    device: str | torch.device = "cpu",
    allow_incomplete: bool = False,
    allow_option: str | None = None,
) -> LoadedModel:
    """The best model of a run folder (or a ``best.pt`` file), in eval mode on ``device``.

    A run whose training never finished (killed, or stopped with a step budget) is refused unless
    ``allow_incomplete``; ``allow_option`` names the caller's option that allows it, for the message.
    """
    record, weights = read_model_record(run)
    if not allow_incomplete:
        record.refuse_unfinished("--model", allow_option)
    model = record.head_kind.build(record, weights)
    return LoadedModel(model.to(device).eval(), record, record.path)


def finetune_base_fields(base: str, arch: str | None, allow_incomplete: bool = False) -> dict:
    """Config fields implied by ``finetune --base``: the architecture and input normalisation of the base model.

    A base whose training never finished (a pretrain killed or stopped part-way) is refused unless
    ``allow_incomplete`` (``--allow-incomplete-base``)."""
    if base in ("imagenet", "scratch"):
        return _builtin_base_fields(base, arch or "inception_v3")
    record, _ = read_model_record(base)
    if arch is not None and arch != record.arch:
        raise DataonomyError(f"--arch {arch}: --base {base} holds a {record.arch} model")
    if not allow_incomplete:
        record.refuse_unfinished("--base", "--allow-incomplete-base")
    return {"base": str(record.path.resolve()), "arch": record.arch, "mean": record.mean, "std": record.std}


def _builtin_base_fields(base: str, arch: str) -> dict:
    # The architecture's own normalisation: what its ImageNet weights were trained with (dataonomy.architectures),
    # used from scratch too so that a run's inputs look the same whatever it starts from.
    spec = model_spec(arch)
    return {"base": base, "arch": arch, "mean": spec.mean, "std": spec.std}


# --------------------------------------------------------------------------------------------------------------
# Saving: best.pt, last.pt, the run's status
# --------------------------------------------------------------------------------------------------------------


def last_checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def load_training_checkpoint(path: Path) -> dict:
    obj = read_checkpoint(path)
    if obj.get("format") != CHECKPOINT_FORMAT:
        raise DataonomyError(f"{path}: not a training checkpoint of transfer (format {obj.get('format')!r})")
    return obj


def training_checkpoint(
    config: TrainConfig, model: nn.Module, optimizer, scheduler, scaler, state: dict
) -> dict:
    """What ``checkpoints/last.pt`` holds: the config, weights, optimiser, schedule, scaler and loop ``state``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "model": _model_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "state": state,
    }


def save(obj: dict, path: str | Path) -> Path:
    """Write a :func:`model_record` or :func:`training_checkpoint` atomically."""
    with atomic_path(Path(path)) as tmp:
        torch.save(obj, tmp)
    return Path(path)


save_model = save  # RUN_DIR/best.pt is what the other commands read


def unwrap(model: nn.Module) -> ClassifierNet:
    """The model a DistributedDataParallel wraps (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _model_state(model: nn.Module) -> dict:
    # Contiguous copies: a channels_last model's weights load into any model, and files do not keep strides.
    return {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}


def model_record(
    config: TrainConfig,
    model: nn.Module,
    meta: dict,
    epoch: int = 0,
    metrics: dict | None = None,
    status: str = "complete",
) -> dict:
    """What ``best.pt`` holds: the weights and what inference needs (read back as :class:`ModelRecord`).

    ``meta`` adds run facts such as ``classes``, ``input`` (``image``/``patch``), ``patch_size``/``patch_stride``
    and, for fine-tuned models, ``threshold`` and ``threshold_criterion``. ``status``: ``complete``,
    ``stopped early``, or ``in progress`` (the training loop's saves until training ends; see the module
    docstring). Save it with :func:`save_model`.
    """
    net = unwrap(model)
    return {
        "format": MODEL_FORMAT,
        "kind": config.kind,
        "arch": config.arch,
        "num_classes": getattr(net, "num_classes", 2),
        "aux_logits": getattr(net, "aux_classifier", None) is not None,
        "dropout": config.dropout,
        "image_size": config.image_size,
        "input_size": config.input_size,
        "mean": list(config.mean),
        "std": list(config.std),
        "input": "image",
        **meta,
        "status": status,
        "epoch": epoch,
        "metrics": metrics or {},
        "config": config.to_dict(),
        "model": _model_state(model),
    }


# What a finished run's folder holds besides its training files; resuming makes them stale.
_FINISHED_OUTPUTS = ("summary.json", "eval_*.json", "eval_*_pr.png")


def reopen_run(run_dir: Path) -> None:
    """Before training (again) in ``run_dir``: drop the outputs of the run as it was and mark ``best.pt`` in
    progress, so that nothing reads the folder as a finished run until training ends."""
    for pattern in _FINISHED_OUTPUTS:
        for path in sorted(run_dir.glob(pattern)):
            path.unlink()
    _mark_best(run_dir, RUN_IN_PROGRESS)


def finish_run(run_dir: Path, status: str, summary: dict) -> None:
    """Mark the run finished: ``best.pt`` records ``status``, then ``summary.json`` is written (each atomically,
    so a kill in between leaves a run that ``--resume`` finishes)."""
    _mark_best(run_dir, status)
    write_json(run_dir / "summary.json", json_safe(summary))


def _mark_best(run_dir: Path, status: str) -> None:
    best = run_dir / "best.pt"
    if best.is_file():
        record = read_checkpoint(best)
        if record.get("status") != status:
            save_model({**record, "status": status}, best)


__all__ = [
    "CHECKPOINT_FORMAT",
    "LoadedModel",
    "MODEL_FORMAT",
    "ModelRecord",
    "RUN_IN_PROGRESS",
    "finetune_base_fields",
    "finish_run",
    "last_checkpoint_path",
    "load_model",
    "load_training_checkpoint",
    "model_record",
    "read_model_record",
    "reopen_run",
    "save",
    "save_model",
    "training_checkpoint",
    "unwrap",
]
