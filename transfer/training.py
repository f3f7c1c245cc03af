"""One training loop for pretraining and fine-tuning: DDP, mixed precision, checkpoints, resume, early stopping.

A run lives in one folder::

    config.json          the run's config (transfer.config), written before training starts
    checkpoints/last.pt  the latest state (model, optimiser, schedule, position in the epoch), written every
                         ``checkpoint_every`` steps, at every epoch's end and on Ctrl-C (atomically)
    best.pt              the best model so far on validation, with what inference needs (classes, input size,
                         normalisation, and for fine-tuning the decision threshold)
    metrics.jsonl        one JSON line per epoch: training loss/accuracy, validation metrics, learning rate
    summary.json         written when training ends: status, best epoch, best metrics

A run is finished once training ends (all epochs, or early stopping): ``best.pt`` then records ``status``
``complete`` or ``stopped early``; while training runs, or after it was killed or stopped with a step budget, it
records ``in progress`` and ``summary.json`` is absent. :func:`load_model` (evaluate, localize, export) and
``finetune --base`` refuse an unfinished run unless asked. Resuming removes what described the run as it was
(``summary.json``, ``eval_*.json``, ``eval_*_pr.png``): they are written again from the finished run.

Determinism: the data order is a function of (seed, epoch) (``DistributedSampler``), augmentation of
(seed, epoch, sample) (:class:`transfer.data.SeededTransform`), and the random state used by the model (dropout)
is reseeded at every step from (seed, step, rank). A run resumed from any checkpoint therefore ends with the
same weights as an uninterrupted one, and ``torchrun --nproc_per_node=W`` with the same global batch matches a
single process (for models whose normalisation does not depend on the batch split; use ``sync_bn`` otherwise).

Extending a finished run (``--resume --epochs E`` with E above the run's epochs): training continues from the
step reached, and the remaining steps follow the warmup-cosine schedule of an E-epoch run (the learning rate
rises from the end of the old schedule to that schedule's value at that step, then decays to 0 at the end of
epoch E). The result is a function of the config and of the step at which each extension was made (recorded as
``extensions`` in the checkpoint and ``summary.json``): deterministic, though not equal to an E-epoch run.

Multi-GPU and multi-node: launch the same command with ``torchrun``; the process group is read from its
environment (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm.auto import tqdm

from dataonomy.devices import resolve_device
from dataonomy.errors import DataonomyError
from dataonomy.io import atomic_path, json_safe, write_json
from transfer import metrics as M
from transfer.config import (
    FinetuneConfig,
    PretrainConfig,
    TrainConfig,
    config_differences,
    config_from_dict,
)
from transfer.config import replace as replace_config
from transfer.data import (
    PatchDataset,
    SeededTransform,
    one_kind_error,
    pretrain_folds,
    pretrain_transforms,
    run_fold,
    seed_for,
    seen_images,
    size_batches,
    texture_transforms,
)
from transfer.models import (
    RUN_IN_PROGRESS,
    ClassifierNet,
    build_model,
    load_state,
    model_loss,
    read_checkpoint,
    replace_head,
    unfinished_run,
)

MODEL_FORMAT = "transfer.model/1"
CHECKPOINT_FORMAT = "transfer.checkpoint/1"


class TrainingInterrupted(Exception):
    """Raised after an interrupted run saved its checkpoint (the CLI exits 130)."""

    def __init__(self, checkpoint: Path, step: int, rank: int = 0):
        super().__init__(
            f"interrupted at step {step}; checkpoint saved to {checkpoint} (continue with --resume)"
        )
        self.checkpoint, self.step, self.rank = checkpoint, step, rank


@dataclass
class Runtime:
    """How to run, without changing the result: device, loader workers, progress bars, and a step budget.

    ``stop_after_steps``: stop (saving a checkpoint) after that many optimiser steps in this invocation, for
    time-limited job slots; the run continues with ``resume``. ``log_every``: when stderr is not a terminal (no
    progress bar), print a progress line (step, loss, images/s) to it every that many seconds; None: never.
    """

    device: str | None = None
    num_workers: int = 0
    progress: bool | None = None
    stop_after_steps: int | None = None
    log_every: float | None = 30.0


# --------------------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Processes:
    """This process's place in a (possibly single-process) job, as torchrun's environment describes it."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @classmethod
    def from_env(cls, device: str | None) -> Processes:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device)  # cuda without an index: this rank's GPU
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        owns_group = False
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            owns_group = True
        return cls(rank, world_size, local_rank, dev, owns_group)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over processes, as a new float64 tensor on this device (``values`` is left as it is)."""
        values = values.detach().to(self.device, torch.float64, copy=True)
        if self.distributed:
            dist.all_reduce(values)
        return values

    def any(self, flag: bool) -> bool:
        return bool(self.sum(torch.tensor([float(flag)])).item() > 0)

    def gather(self, obj):
        """A list with every process's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start part-way through an epoch (after ``start`` of its samples), with an
    optional fixed epoch length.

    ``epoch_samples`` (per process) makes every epoch that long whatever the dataset's size: shorter than the
    dataset, an epoch is the first part of a fresh seeded permutation; longer, it chains fresh permutations, and
    the ``r``-th pass over sample ``i`` is yielded as ``i + r * len(dataset)`` so that
    :class:`transfer.data.SeededTransform` gives it its own augmentation. The order is a function of (seed, epoch).
    """

    start = 0

    def __init__(self, dataset, *, epoch_samples: int | None = None, **kwargs):
        super().__init__(dataset, **kwargs)
        self.epoch_samples = epoch_samples
        if epoch_samples is not None:
            self.num_samples = epoch_samples
            self.total_size = epoch_samples * self.num_replicas

    def _fixed_length_indices(self) -> list[int]:
        n = len(self.dataset)
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        passes = -(-self.total_size // n)
        order = torch.cat([torch.randperm(n, generator=generator) + r * n for r in range(passes)])
        return order[: self.total_size][self.rank :: self.num_replicas].tolist()

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__()) if self.epoch_samples is None else self._fixed_length_indices()
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


class StopRequest:
    """Turn SIGINT/SIGTERM into a flag checked between steps, so a checkpoint is only written in a consistent
    state. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _ignore_sigint(_worker_id: int) -> None:
    # Loader workers share the terminal's process group; the main process alone decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------------------------------------------
# Tasks: what differs between pretraining and fine-tuning
# --------------------------------------------------------------------------------------------------------------


class PretrainTask:
    """Classify the manifest's source classes; validation top-1/top-5 accuracy and loss; best = top-1."""

    monitor, mode, patience = "val_top1", "max", None

    def __init__(self, config: PretrainConfig):
        self.config = config
        train, val = pretrain_folds(
            config.source_root,
            config.wnids,
            config.val_fraction,
            config.images_per_class,
            config.seed,
            config.manifest,
        )
        if len(val) == 0:  # nothing to choose the best epoch on (was a KeyError on val_top1)
            per_class = (
                f"--images-per-class {config.images_per_class}" if config.images_per_class else "the pool"
            )
            raise DataonomyError(
                f"--val-fraction {config.val_fraction}: leaves no validation images ({len(train)} training images "
                f"from {len(config.wnids)} classes, {per_class}); raise --val-fraction or --images-per-class"
            )
        train_tf, eval_tf = pretrain_transforms(config.image_size, config.mean, config.std, config.augment)
        self.train_set = SeededTransform(train, train_tf, config.seed)
        self.val_set = SeededTransform(val, eval_tf, config.seed)
        self.classes = list(train.classes)
        self.class_names = list(train.class_names)
        self.train_targets = np.asarray(train.targets)

    def build_model(self) -> ClassifierNet:
        c = self.config
        return build_model(c.arch, len(self.classes), c.init, c.dropout, c.aux_logits)

    def criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss(label_smoothing=self.config.label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        return {
            "loss": nn.functional.cross_entropy(logits, targets, reduction="none"),
            "top1": (top[:, 0] == targets).float(),
            "top5": (top == targets[:, None]).any(dim=1).float(),
        }

    def val_metrics(self, outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict:
        return {f"val_{k}": float(np.mean(v)) for k, v in outputs.items()}

    def best_extras(self, outputs, targets) -> dict:
        return {}

    def model_meta(self) -> dict:
        return {"classes": self.classes, "class_names": self.class_names, "input": "image"}


class FinetuneTask:
    """Defect / no defect on a defect set, class-weighted cross entropy, early stopping, validation threshold.

    Scores are defect probabilities (softmax of the two logits). With ``patches`` the examples are patches and
    an image's score is its highest patch score (an image is defective when any patch is). The stored decision
    threshold decides images, so it is chosen on the validation images' scores: a threshold chosen on patches
    sits too low for the maximum over dozens of patches and flags nearly every image. Validation reports the
    patch metrics (``val_ap``, ``val_auroc``, what early stopping watches) and the image ones (``val_image_*``).
    When the validation images are all of one kind (every image defective) there is no image threshold to
    choose: it is chosen on the patches (``decision = "patch"``), and evaluation reports patches. A validation
    image's score is its highest patch over the whole grid, patches the defect-share rule leaves out of the
    patch metrics included: the statistic :func:`image_scores` gives the test images.
    """

    mode_of = {"ap": "max", "auroc": "max", "loss": "min"}

    def __init__(self, config: FinetuneConfig):
        self.config = c = config
        self.monitor, self.mode, self.patience = f"val_{c.monitor}", self.mode_of[c.monitor], c.patience
        folds = {split: run_fold(c, split) for split in ("train", "val")}
        self.seen_images = seen_images(folds)  # evaluate/localize refuse to test on these (by content)
        self.val_patch_scored = None  # which validation examples the patch metrics count (None: all)
        if c.patches:
            train = PatchDataset(folds["train"], c.patch_size, c.patch_stride, c.patch_defect_fraction)
            # Validation keeps every grid patch: the image score (max over patches) that places the threshold
            # must be the one the test images get (transfer.evaluate.image_scores), not a max over the
            # patches that passed the defect-share filter.
            val = PatchDataset(
                folds["val"], c.patch_size, c.patch_stride, c.patch_defect_fraction, every_patch=True
            )
            self.val_patch_scored = ~val.ambiguous
            train_tf, eval_tf = texture_transforms(None, c.mean, c.std, c.augment)
        else:
            train, val = folds["train"], folds["val"]
            train_tf, eval_tf = texture_transforms(c.image_size, c.mean, c.std, c.augment)
        for name, ds in (("training", train), ("validation", val)):
            labelled = np.asarray(ds.targets)[~ds.ambiguous] if c.patches else np.asarray(ds.targets)
            n_def = int(np.sum(labelled))
            if n_def == 0 or n_def == len(labelled):
                what = "patches" if c.patches else "images"
                raise one_kind_error(c, name, n_def, len(labelled), what, folds["train"])
        self.train_set = SeededTransform(train, train_tf, c.seed)
        self.val_set = SeededTransform(val, eval_tf, c.seed)
        self.train_targets = np.asarray(train.targets)
        if c.patches:
            # Which validation image each patch comes from, and the images' labels: image-level decisions.
            self.val_patch_image = np.array([i for i, _, _ in val.patches], dtype=np.int64)
            self.val_image_targets = np.asarray(folds["val"].targets)
        # A validation fold of one kind of image (every image defective, as road cracks) cannot place an image
        # threshold: the patches' own labels do (decision "patch"; evaluate then reports patches).
        one_kind = c.patches and self.val_image_targets.min() == self.val_image_targets.max()
        self.decision = "patch" if one_kind else "image"
        self.classes = ["ok", "defect"]
        self.groups = sorted({s.group or s.label for s in folds["train"].samples})
        counts = np.bincount(self.train_targets, minlength=2)
        # Inverse class frequency, scaled so that a balanced set would get weights (1, 1).
        self.class_weights = torch.tensor(counts.sum() / (2.0 * counts), dtype=torch.float32)

    def build_model(self) -> ClassifierNet:
        c = self.config
        # The base's trunk (and head, if it had two classes) is loaded; the last layer is always a new one.
        model = build_model(c.arch, 2, c.base, c.dropout, c.aux_logits)
        return replace_head(model, 2)

    def criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss(weight=self.class_weights, label_smoothing=self.config.label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        weights = self.class_weights.to(logits.device)[targets]
        return {
            "score": torch.softmax(logits.float(), dim=1)[:, 1],
            "weighted_loss": nn.functional.cross_entropy(logits.float(), targets, reduction="none") * weights,
            "weight": weights,
        }

    def decision_scores(
        self, outputs: dict[str, np.ndarray], targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels) of the validation images: the examples' own, or each image's highest patch score over
        every grid patch (as :func:`image_scores` scores test images); ``decision = "patch"``: the labelled
        patches (the fine-tuning's patch rule, as :func:`patch_scores`)."""
        if not self.config.patches:
            return outputs["score"], targets
        if self.decision == "patch":
            return outputs["score"][self.val_patch_scored], targets[self.val_patch_scored]
        images = np.zeros(len(self.val_image_targets), dtype=np.float64)  # every image has a clean patch
        np.maximum.at(images, self.val_patch_image, outputs["score"].astype(np.float64))
        return images, self.val_image_targets

    def val_metrics(self, outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict:
        keep = self.val_patch_scored if self.val_patch_scored is not None else slice(None)
        scores, labels = outputs["score"][keep], targets[keep]
        metrics = {
            "val_loss": float(outputs["weighted_loss"][keep].sum() / outputs["weight"][keep].sum()),
            "val_ap": M.average_precision(scores, labels),
            "val_auroc": M.auroc(scores, labels),
        }
        images, labels = self.decision_scores(outputs, targets)
        if self.config.patches and self.decision == "image":
            metrics.update(
                val_image_ap=M.average_precision(images, labels), val_image_auroc=M.auroc(images, labels)
            )
        threshold = M.best_threshold(images, labels, self.config.threshold_criterion)
        counts = M.confusion(images, labels, threshold)
        return {**metrics, "val_threshold": threshold, "val_tpr": counts.tpr, "val_tnr": counts.tnr}

    def best_extras(self, outputs, targets) -> dict:
        images, labels = self.decision_scores(outputs, targets)
        threshold = M.best_threshold(images, labels, self.config.threshold_criterion)
        return {"threshold": threshold, "threshold_criterion": self.config.threshold_criterion}

    def model_meta(self) -> dict:
        c = self.config
        meta = {
            "classes": self.classes,
            "groups": self.groups,
            "input": "patch" if c.patches else "image",
            "seen_images": self.seen_images,
        }
        if c.patches:
            meta.update(patch_size=c.patch_size, patch_stride=c.patch_stride, decision=self.decision)
        return meta


def make_task(config: TrainConfig):
    if isinstance(config, PretrainConfig):
        return PretrainTask(config)
    if config.head == "segdec":
        from transfer.segdec_task import SegDecTask

        return SegDecTask(config)
    return FinetuneTask(config)


# --------------------------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------------------------


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with momentum; no weight decay on biases and normalisation weights (1-d parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warmup from ~0 to 1 over ``warmup_steps``, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _seed_step(seed: int, device: torch.device) -> None:
    """Seed the generators a training step draws from (dropout): the CPU's and this process's GPU."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def _autocast(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _needs_scaler(device: torch.device, amp: bool) -> bool:
    return device.type == "cuda" and amp and not torch.cuda.is_bf16_supported()


# --------------------------------------------------------------------------------------------------------------
# Evaluation pass
# --------------------------------------------------------------------------------------------------------------


def predict(
    model: nn.Module,
    dataset,
    task,
    procs: Processes,
    batch_size: int,
    num_workers: int,
    amp: bool,
    channels_last: bool,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-sample outputs (``task.per_sample``) and targets over ``dataset``, each process taking every W-th
    sample, gathered in dataset order on every process. A dataset that knows its samples' ``sizes()`` (segdec's)
    is batched by size, so that no image is padded for another."""
    indices = list(range(procs.rank, len(dataset), procs.world_size))
    if hasattr(dataset, "sizes"):
        sizes = dataset.sizes()
        batches = size_batches([sizes[i] for i in indices], batch_size)
        indices = [indices[p] for batch in batches for p in batch]
        batches = [list(range(b, b + len(batch))) for b, batch in zip(_starts(batches), batches, strict=True)]
        loader = DataLoader(Subset(dataset, indices), batch_sampler=batches, num_workers=num_workers)
    else:
        loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers)
    was_training = model.training
    model.eval()
    parts: dict[str, list] = {}
    targets = []
    with torch.no_grad():
        for x, y in loader:
            x, y = _to_device(x, y, procs.device, channels_last)
            with _autocast(procs.device, amp):
                outputs = model(x)
            for k, v in task.per_sample(outputs, y).items():
                parts.setdefault(k, []).append(v.cpu().numpy())
            targets.append((y["label"] if isinstance(y, dict) else y).cpu().numpy())
    model.train(was_training)
    local = {k: np.concatenate(v) for k, v in parts.items()}
    local["_target"] = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
    local["_index"] = np.asarray(indices, dtype=np.int64)
    pieces = procs.gather(local)
    merged = {k: np.concatenate([p[k] for p in pieces if k in p]) for k in pieces[0]}
    order = np.argsort(merged.pop("_index"), kind="stable")
    targets_all = merged.pop("_target")[order]
    return {k: v[order] for k, v in merged.items()}, targets_all


def _starts(batches: list[list]) -> list[int]:
    """Where each batch begins in the concatenation of ``batches``."""
    return np.cumsum([0] + [len(b) for b in batches[:-1]]).tolist()


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    if channels_last and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    if isinstance(y, dict):  # segdec targets: label, mask, pixel weights
        return x, {k: v.to(device, non_blocking=True) for k, v in y.items()}
    return x, y.to(device, non_blocking=True)


# --------------------------------------------------------------------------------------------------------------
# Run folder
# --------------------------------------------------------------------------------------------------------------


def last_checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def load_training_checkpoint(path: Path) -> dict:
    obj = read_checkpoint(path)
    if obj.get("format") != CHECKPOINT_FORMAT:
        raise DataonomyError(f"{path}: not a training checkpoint of transfer (format {obj.get('format')!r})")
    return obj


def resume_config(run_dir: Path, requested: dict) -> TrainConfig:
    """The config of the run in ``run_dir``; options in ``requested`` (given on the command line) must agree,
    except ``epochs``, which extends (or shortens, down to the epochs done) the run.

    A run that saved no checkpoint yet (it failed in its first epoch) is taken from its ``config.json``, and
    :func:`train` starts it afresh."""
    path = last_checkpoint_path(run_dir)
    if path.is_file():
        saved = config_from_dict(load_training_checkpoint(path)["config"], str(path))
    elif (Path(run_dir) / "config.json").is_file():
        config_path = Path(run_dir) / "config.json"
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataonomyError(f"{config_path}: not a readable config ({type(exc).__name__})") from None
        saved = config_from_dict(data, str(config_path))
    else:
        raise DataonomyError(f"--resume: no checkpoint to resume from in {run_dir} ({path} not found)")
    epochs = requested.get("epochs", saved.epochs)
    diffs = config_differences(saved, {k: v for k, v in requested.items() if k != "epochs"})
    if diffs:
        raise DataonomyError(
            f"--resume: options differ from the run's config in {run_dir}: {'; '.join(diffs)}"
        )
    return saved if epochs == saved.epochs else replace_config(saved, epochs=epochs)


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _unwrap(model: nn.Module) -> ClassifierNet:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _model_state(model: nn.Module) -> dict:
    # Contiguous copies: a channels_last model's weights load into any model, and files do not keep strides.
    return {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}


def model_record(
    config: TrainConfig,
    model: nn.Module,
    meta: dict,
    epoch: int = 0,
    metrics: dict | None = None,
    status: str = "complete",
) -> dict:
    """What ``best.pt`` holds: the weights and what inference needs (see :class:`LoadedModel`).

    ``meta`` adds run facts such as ``classes``, ``input`` (``image``/``patch``), ``patch_size``/``patch_stride``
    and, for fine-tuned models, ``threshold`` and ``threshold_criterion``. ``status``: ``complete``,
    ``stopped early``, or ``in progress`` (the training loop's saves until training ends; see the module
    docstring). Save it with :func:`save_model`.
    """
    net = _unwrap(model)
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


def save_model(record: dict, path: str | Path) -> Path:
    """Write a :func:`model_record` atomically (``RUN_DIR/best.pt`` is what the other commands read)."""
    _save(record, Path(path))
    return Path(path)


def _append_metrics(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop lines for epochs a resumed run will redo (written after the checkpoint it resumes from)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    keep = []
    for number, line in enumerate(lines, 1):
        try:
            epoch = json.loads(line).get("epoch", 0)
        except (json.JSONDecodeError, AttributeError):
            if number == len(lines):
                break  # torn by a kill during the append: its epoch is after the checkpoint and is redone
            raise DataonomyError(f"{path}: line {number} is not a JSON record (damaged file)") from None
        if epoch <= epochs_done:
            keep.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------


def train(
    config: TrainConfig, run_dir: str | Path, resume: bool = False, runtime: Runtime | None = None
) -> dict:
    """Train ``config`` into ``run_dir`` (see the module docstring for the folder); return the summary.

    ``resume`` continues from ``run_dir/checkpoints/last.pt``; without it ``run_dir`` must not hold a run.
    Raises :class:`TrainingInterrupted` after saving a checkpoint when SIGINT/SIGTERM arrives.
    """
    runtime = runtime or Runtime()
    run_dir = Path(run_dir)
    procs = Processes.from_env(runtime.device)
    try:
        return _train(config, run_dir, resume, runtime, procs)
    finally:
        procs.close()


def _train(config: TrainConfig, run_dir: Path, resume: bool, runtime: Runtime, procs: Processes) -> dict:
    last_path = last_checkpoint_path(run_dir)
    checkpoint = None
    if run_dir.exists() and not run_dir.is_dir():
        raise DataonomyError(f"--out {run_dir}: is a file, not a run folder")
    if resume and last_path.exists():
        checkpoint = load_training_checkpoint(last_path)
        # Only --epochs may change on resume (extending the run; see the module docstring).
        if {**checkpoint["config"], "epochs": None} != {**config.to_dict(), "epochs": None}:
            raise DataonomyError(f"--resume: the config differs from the one saved in {last_path}")
    elif not resume and (last_path.exists() or (run_dir / "best.pt").exists()):
        raise DataonomyError(
            f"--out {run_dir}: already holds a run; pass --resume to continue it or choose a new folder"
        )
    # Otherwise no progress was saved (a run that failed in its first epoch leaves config.json alone): start
    # afresh, with or without --resume.
    if config.batch_size % procs.world_size:
        raise DataonomyError(
            f"--batch-size {config.batch_size}: must be divisible by the number of processes ({procs.world_size})"
        )
    per_process_batch = config.batch_size // procs.world_size

    task = make_task(config)
    torch.manual_seed(config.seed)  # the same initial weights in every process and every run
    model = task.build_model().to(procs.device)
    if config.channels_last and procs.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if procs.distributed and config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    sampler = ResumableSampler(
        task.train_set,
        num_replicas=procs.world_size,
        rank=procs.rank,
        shuffle=True,
        seed=config.seed,
        epoch_samples=None if config.steps_per_epoch is None else config.steps_per_epoch * per_process_batch,
    )
    steps_per_epoch = sampler.num_samples // per_process_batch
    if steps_per_epoch == 0:
        raise DataonomyError(
            f"--batch-size {config.batch_size}: larger than the training set ({len(task.train_set)} examples)"
        )
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    optimizer = sgd(model, config.lr, config.momentum, config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=_needs_scaler(procs.device, config.amp))
    criterion = task.criterion()
    criterion = criterion.to(procs.device) if criterion is not None else None
    # A task with its own loss (segdec: pixel + image) says so; classifiers use model_loss and argmax accuracy.
    task_loss = getattr(task, "loss", model_loss)
    correct = getattr(task, "correct", lambda logits, y: (logits.argmax(1) == y).sum())

    state = {
        "epoch": 0,  # epochs completed
        "batch": 0,  # batches completed in the current epoch
        "step": 0,  # optimiser steps completed
        "best": None,
        "best_epoch": None,
        "stale_epochs": 0,
        "sums": [0.0, 0.0, 0.0],  # loss sum, correct, examples in the current epoch (all processes)
        "finished": None,
    }
    if checkpoint is not None:
        load_state(_unwrap(model), checkpoint["model"], str(last_path), "the run's model")
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state.update(checkpoint["state"])
        if not procs.main:
            state["sums"] = [0.0, 0.0, 0.0]  # rank 0 carries the totals so far
        saved_epochs = checkpoint["config"]["epochs"]
        if config.epochs != saved_epochs:
            if config.epochs < state["epoch"] + (state["batch"] > 0):
                raise DataonomyError(
                    f"--epochs {config.epochs}: the run in {run_dir} has already trained {state['epoch']} epochs"
                    + (" and part of the next" if state["batch"] else "")
                )
            if state["finished"] == "complete":
                state["finished"] = None  # extended: more epochs to train
            state["extensions"] = [
                *state.get("extensions", []),
                {"step": state["step"], "from_epochs": saved_epochs, "epochs": config.epochs},
            ]
            # The current step's learning rate on the new schedule (the optimiser holds the old one).
            for group, base, factor in zip(
                optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
            ):
                group["lr"] = base * factor(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if state["finished"]:
        if procs.main:
            tqdm.write(f"{run_dir}: training already {state['finished']}; nothing to do")
            # A kill between the final checkpoint and the end of training left best.pt unmarked.
            _finish_run(run_dir, state["finished"], _summary(state, run_dir, task, procs))
        procs.barrier()
        return json.loads((run_dir / "summary.json").read_text())

    metrics_path = run_dir / "metrics.jsonl"
    if procs.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config.to_dict())
        _truncate_metrics(metrics_path, state["epoch"])  # a fresh start keeps none
        _reopen_run(run_dir)
    procs.barrier()

    ddp_model = model
    if procs.distributed:
        ddp_model = DistributedDataParallel(
            model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None
        )
    loader_args = {
        "batch_size": per_process_batch,
        "sampler": sampler,
        "drop_last": True,
        "num_workers": runtime.num_workers,
        "pin_memory": procs.device.type == "cuda",
        "worker_init_fn": _ignore_sigint if runtime.num_workers else None,
        "collate_fn": getattr(task, "collate_fn", None),  # segdec: pads images of different sizes
    }

    def save_checkpoint() -> None:
        sums = procs.sum(running).tolist()
        if procs.main:
            record = {
                "format": CHECKPOINT_FORMAT,
                "config": config.to_dict(),
                "model": _model_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "state": {**state, "sums": sums},
            }
            _save(record, last_path)
        procs.barrier()

    show = procs.main and runtime.progress is not False
    # Without a terminal there is no progress bar: a line every log_every seconds shows the run is alive.
    log_every = runtime.log_every if show and not sys.stderr.isatty() else None
    steps_here = 0
    with StopRequest() as stop_request:
        while state["epoch"] < config.epochs:
            epoch = state["epoch"]
            sampler.set_epoch(epoch)
            sampler.start = state["batch"] * per_process_batch
            task.train_set.set_epoch(epoch)
            # Loss sum, correct, examples: kept on the device so that steps do not wait for the GPU.
            running = torch.tensor(state["sums"], dtype=torch.float64, device=procs.device)
            loader = DataLoader(task.train_set, **loader_args)
            bar = tqdm(
                total=steps_per_epoch,
                initial=state["batch"],
                desc=f"epoch {epoch + 1}/{config.epochs}",
                disable=None if show else True,
                leave=False,
            )
            started = time.perf_counter()
            logged_at, logged_batch = started, state["batch"]
            ddp_model.train()
            stop = False
            for x, y in loader:
                x, y = _to_device(x, y, procs.device, config.channels_last)
                _seed_step(seed_for(config.seed, state["step"], procs.rank), procs.device)
                with _autocast(procs.device, config.amp):
                    loss, logits = task_loss(ddp_model(x), y, criterion, config.aux_weight)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                state["step"] += 1
                state["batch"] += 1
                steps_here += 1
                with torch.no_grad():
                    running += torch.stack(
                        [
                            loss.detach().double() * len(x),
                            correct(logits, y).double(),
                            running.new_tensor(len(x)),
                        ]
                    )
                bar.update(1)
                if log_every is not None and time.perf_counter() - logged_at >= log_every:
                    now = time.perf_counter()
                    loss_so_far, _, seen = running.tolist()
                    rate = (state["batch"] - logged_batch) * config.batch_size / max(now - logged_at, 1e-9)
                    print(
                        f"epoch {epoch + 1}/{config.epochs} step {state['batch']}/{steps_per_epoch} "
                        f"(step {state['step']} of the run): loss {loss_so_far / max(seen, 1):.4f}, "
                        f"{rate:.1f} images/s",
                        file=sys.stderr,
                        flush=True,
                    )
                    logged_at, logged_batch = now, state["batch"]
                if state["step"] % 10 == 0 and not bar.disable:
                    loss_so_far, _, seen = running.tolist()
                    bar.set_postfix(
                        loss=f"{loss_so_far / max(seen, 1):.4f}", lr=f"{scheduler.get_last_lr()[0]:.3g}"
                    )
                budget_spent = runtime.stop_after_steps is not None and steps_here >= runtime.stop_after_steps
                stop = (
                    procs.any(stop_request.requested or budget_spent)
                    if procs.distributed
                    else (stop_request.requested or budget_spent)
                )
                if stop or state["step"] % config.checkpoint_every == 0:
                    save_checkpoint()
                if stop:
                    break
            bar.close()
            if stop:
                if stop_request.requested:
                    raise TrainingInterrupted(last_path, state["step"], procs.rank)
                if procs.main:
                    tqdm.write(
                        f"stopped after {steps_here} steps (step {state['step']}); checkpoint saved to {last_path}, "
                        "continue with --resume"
                    )
                return {"status": "stopped", "step": state["step"], "checkpoint": str(last_path)}

            # End of epoch: training totals, validation, best model, metrics line, checkpoint.
            totals = procs.sum(running).tolist()
            outputs, targets = predict(
                model,
                task.val_set,
                task,
                procs,
                2 * per_process_batch,  # no gradients: twice the batch fits
                runtime.num_workers,
                config.amp,
                config.channels_last,
            )
            val = task.val_metrics(outputs, targets)
            record = {
                "epoch": epoch + 1,
                "step": state["step"],
                "lr": scheduler.get_last_lr()[0],
                "train_loss": totals[0] / max(totals[2], 1),
                "train_accuracy": totals[1] / max(totals[2], 1),
                **val,
                "epoch_seconds": time.perf_counter() - started,
            }
            value = val[task.monitor]
            loss = val.get("val_loss", math.inf)
            better = state["best"] is None or (
                value > state["best"] if task.mode == "max" else value < state["best"]
            )
            # A tie (a small validation fold at AP 1.0) goes to the lower validation loss: the better-separated model.
            tie_won = value == state["best"] and loss < state.get("best_loss", math.inf)
            if (better or tie_won) and math.isfinite(value):
                state.update(best=value, best_loss=loss, best_epoch=epoch + 1, stale_epochs=0)
                if procs.main:
                    extras = task.best_extras(outputs, targets)
                    meta = {**task.model_meta(), **extras}
                    best_record = model_record(
                        config, model, meta, epoch + 1, json_safe(record), status=RUN_IN_PROGRESS
                    )
                    save_model(best_record, run_dir / "best.pt")
            else:
                state["stale_epochs"] += 1
            if procs.main:
                _append_metrics(metrics_path, json_safe(record))
                tqdm.write(
                    f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, "
                    + ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float))
                )
            state.update(epoch=epoch + 1, batch=0, sums=[0.0, 0.0, 0.0])
            running.zero_()
            if task.patience is not None and state["stale_epochs"] >= task.patience:
                state["finished"] = "stopped early"
            elif state["epoch"] >= config.epochs:
                state["finished"] = "complete"
            save_checkpoint()
            if state["finished"] == "stopped early":
                if procs.main:
                    tqdm.write(f"early stopping: no improvement of {task.monitor} for {task.patience} epochs")
                break

    summary = _summary(state, run_dir, task, procs)
    if procs.main:
        _finish_run(run_dir, summary["status"], summary)
    procs.barrier()
    return summary


def _summary(state: dict, run_dir: Path, task, procs: Processes) -> dict:
    summary = {
        "rank": procs.rank,
        "status": state["finished"] or "complete",
        "epochs": state["epoch"],
        "steps": state["step"],
        "best_epoch": state["best_epoch"],
        "monitor": task.monitor,
        "best": state["best"],
        "best_model": str(run_dir / "best.pt"),
    }
    if state.get("extensions"):
        summary["extensions"] = state["extensions"]
    return summary


# What a finished run's folder holds besides its training files; resuming makes them stale.
_FINISHED_OUTPUTS = ("summary.json", "eval_*.json", "eval_*_pr.png")


def _reopen_run(run_dir: Path) -> None:
    """Before training (again) in ``run_dir``: drop the outputs of the run as it was and mark ``best.pt`` in
    progress, so that nothing reads the folder as a finished run until training ends."""
    for pattern in _FINISHED_OUTPUTS:
        for path in sorted(run_dir.glob(pattern)):
            path.unlink()
    best = run_dir / "best.pt"
    if best.is_file():
        record = read_checkpoint(best)
        if record.get("status") != RUN_IN_PROGRESS:
            save_model({**record, "status": RUN_IN_PROGRESS}, best)


def _finish_run(run_dir: Path, status: str, summary: dict) -> None:
    """Mark the run finished: ``best.pt`` records ``status``, then ``summary.json`` is written (each atomically,
    so a kill in between leaves a run that ``--resume`` finishes)."""
    best = run_dir / "best.pt"
    if best.is_file():
        record = read_checkpoint(best)
        if record.get("status") != status:
            save_model({**record, "status": status}, best)
    write_json(run_dir / "summary.json", json_safe(summary))


# --------------------------------------------------------------------------------------------------------------
# Inference and evaluation of a fine-tuned run
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A trained model (from ``best.pt``) in eval mode, with what inference needs to know about it.

    ``record`` is the saved file without its weights: ``arch``, ``classes``, ``input`` (``image`` or ``patch``),
    ``input_size``, ``mean``/``std``, for fine-tuned runs ``threshold``, ``patch_size``/``patch_stride``, and
    ``config`` (the run's config as a dict).
    """

    model: ClassifierNet
    record: dict
    path: Path

    @property
    def config(self) -> TrainConfig:
        return config_from_dict(self.record["config"], str(self.path))

    @property
    def threshold(self) -> float | None:
        return self.record.get("threshold")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images (B, 3, H, W) -> the model's input normalisation."""
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        mean = torch.tensor(self.record["mean"], device=images.device)[:, None, None]
        std = torch.tensor(self.record["std"], device=images.device)[:, None, None]
        return (images - mean) / std


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
    path = Path(run)
    path = path / "best.pt" if path.is_dir() else path
    obj = read_checkpoint(path)
    if obj.get("format") != MODEL_FORMAT:
        raise DataonomyError(f"--model {path}: not a model saved by transfer pretrain/finetune")
    why = unfinished_run(obj, path)
    if why is not None and not allow_incomplete:
        kind = obj.get("kind") if obj.get("kind") in ("pretrain", "finetune") else "finetune"
        also = f", or pass {allow_option} to use it as it is" if allow_option else ""
        raise DataonomyError(
            f"--model {path}: {why}; finish it with `transfer {kind} --out {path.parent} --resume`{also}"
        )
    from transfer.models import get_model, load_weights

    if obj.get("head") == "segdec":
        from transfer.segdec import SegDecNet, cut_trunk, segdec_from_record

        try:
            model = segdec_from_record(obj, str(path))
        except DataonomyError:
            # Name the wrong-shaped tensor (torch's message does only on a later line): a shell model, built
            # as segdec_from_record builds it, gives the shapes.
            stride, channels = int(obj["output_stride"]), int(obj["head_channels"])
            trunk, trunk_channels = cut_trunk(get_model(obj["arch"], 2, init=False), stride)
            shell = SegDecNet(trunk, trunk_channels, stride, channels)
            load_state(shell, obj["model"], str(path), "the segdec model it describes")
            raise
    else:
        model = get_model(
            obj["arch"], int(obj["num_classes"]), obj.get("dropout"), aux_logits=False, init=False
        )
        load_weights(model, obj["model"], str(path), obj["arch"])
    record = {k: v for k, v in obj.items() if k != "model"}
    return LoadedModel(model.to(device).eval(), record, path)


__all__ = [
    "CHECKPOINT_FORMAT",
    "FinetuneTask",
    "LoadedModel",
    "MODEL_FORMAT",
    "PretrainTask",
    "Processes",
    "ResumableSampler",
    "Runtime",
    "StopRequest",
    "TrainingInterrupted",
    "last_checkpoint_path",
    "load_model",
    "load_training_checkpoint",
    "make_task",
    "model_record",
    "predict",
    "resume_config",
    "save_model",
    "sgd",
    "train",
    "warmup_cosine",
]
