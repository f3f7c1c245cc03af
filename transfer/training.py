"""One training loop for pretraining and fine-tuning: DDP, mixed precision, checkpoints, resume, early stopping.

A run's folder, checkpoints and saved models are :mod:`transfer.checkpoint`'s. :func:`train` sets a run up
(:func:`setup`: task, model, optimiser, sampler; restored from ``checkpoints/last.pt`` on ``--resume``), then
for each epoch calls :func:`train_one_epoch` and :func:`finish_epoch` (validation, best model, checkpoint,
early stopping); where it stands is a :class:`Position`. A task says what differs between kinds of run
(:func:`make_task`: :mod:`transfer.tasks` for pretraining and classifiers, the fine-tuning head's own otherwise);
a kind fitted in one pass (the frozen probe) skips the epochs (:func:`_fit_once`).

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
environment (NCCL on CUDA, gloo on CPU). Stopping on a signal and resuming mid-epoch are
:mod:`transfer.resumable`'s; the process group is :class:`dataonomy.processes.Processes`.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from dataonomy.errors import DataonomyError
from dataonomy.io import atomic_path, json_safe, make_dirs, write_json
from dataonomy.processes import Processes
from transfer.checkpoint import (
    RUN_IN_PROGRESS,
    finish_run,
    last_checkpoint_path,
    load_training_checkpoint,
    model_record,
    reopen_run,
    save,
    save_model,
    training_checkpoint,
    unwrap,
)
from transfer.config import (
    PretrainConfig,
    TrainConfig,
    config_differences,
    config_from_dict,
)
from transfer.config import replace as replace_config
from transfer.data import (
    seed_for,
    size_batches,
)
from transfer.models import load_state, model_loss
from transfer.resumable import ResumableSampler, StopRequest, TrainingInterrupted, ignore_sigint
from transfer.tasks import FinetuneTask, PretrainTask


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


def make_task(config: TrainConfig):
    """The run's task: pretraining's, or its fine-tuning head's (:meth:`transfer.heads.Head.make_task`)."""
    if isinstance(config, PretrainConfig):
        return PretrainTask(config)
    from transfer.heads import get_head, head_name

    return get_head(head_name(config.head, "patch" if config.patch.patches else "image")).make_task(config)


# --------------------------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------------------------


def sgd(
    model: nn.Module,
    lr: float,
    momentum: float,
    weight_decay: float,
    trunk: nn.Module | None = None,
    trunk_lr_scale: float = 1.0,
) -> torch.optim.SGD:
    """SGD with momentum; no weight decay on biases and normalisation weights (1-d parameters). With a
    ``trunk`` (a submodule of ``model``) and ``trunk_lr_scale`` other than 1, its parameters train at
    ``lr * trunk_lr_scale`` and the rest (the new heads) at ``lr``: a pretrained trunk kept near what it learned."""
    trunk_ids = {id(p) for p in trunk.parameters()} if trunk is not None and trunk_lr_scale != 1 else set()
    parts = [(lr, [p for p in model.parameters() if id(p) not in trunk_ids])]
    if trunk_ids:
        parts.insert(0, (lr * trunk_lr_scale, [p for p in model.parameters() if id(p) in trunk_ids]))
    groups = []
    for group_lr, params in parts:
        decay = [p for p in params if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in params if p.requires_grad and p.ndim <= 1]
        groups += [
            {"params": decay, "weight_decay": weight_decay, "lr": group_lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": group_lr},
        ]
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
    loader, indices = _eval_loader(dataset, indices, batch_size, num_workers)
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


def _eval_loader(
    dataset, indices: list[int], batch_size: int, num_workers: int
) -> tuple[DataLoader, list[int]]:
    """A loader over ``dataset[indices]`` and the order it yields them in: batched by size where the dataset
    knows its samples' ``sizes()``, else in order."""
    if not hasattr(dataset, "sizes"):
        return DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers), indices
    sizes = dataset.sizes()
    batches = size_batches([sizes[i] for i in indices], batch_size)
    indices = [indices[p] for batch in batches for p in batch]
    batches = [list(range(b, b + len(batch))) for b, batch in zip(_starts(batches), batches, strict=True)]
    return DataLoader(Subset(dataset, indices), batch_sampler=batches, num_workers=num_workers), indices


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
# Run folder: the config a run resumes with, the metrics log
# --------------------------------------------------------------------------------------------------------------


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
# The loop: setup and resume, one epoch of training, the end of an epoch
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Position:
    """Where a run stands; saved in ``last.pt`` as ``state``, from which the loop resumes exactly."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in the current epoch
    step: int = 0  # optimiser steps completed
    best: float | None = None  # the best value of the task's monitor so far
    best_loss: float = math.inf  # the validation loss at the best (a tie goes to the lower loss)
    best_epoch: int | None = None
    stale_epochs: int = 0  # epochs since the best
    # Loss sum, correct, examples in the current epoch (all processes).
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    finished: str | None = None  # ``complete`` or ``stopped early`` once training ended
    extensions: list[dict] = field(default_factory=list)  # --epochs changed on resume (module docstring)
    seconds: float = 0.0  # wall-clock seconds of the completed epochs, validation included (over resumes)
    stop_reason: str | None = None  # why a run stopped early: ``patience`` or ``time budget``


@dataclass
class Trainer:
    """What a run holds while it trains: the task, the model (``ddp_model`` wraps it under DDP), the
    optimisation, the sampler, and its :class:`Position`."""

    config: TrainConfig
    run_dir: Path
    runtime: Runtime
    procs: Processes
    task: PretrainTask | FinetuneTask
    model: nn.Module
    sampler: ResumableSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: nn.Module | None
    position: Position = field(default_factory=Position)
    ddp_model: nn.Module | None = None
    running: torch.Tensor | None = None  # the position's sums, kept on the device while an epoch runs
    steps_here: int = 0  # optimiser steps taken by this invocation (for ``Runtime.stop_after_steps``)
    clock: dict = field(default_factory=dict)  # when this invocation's first steps ran (the time estimate)

    @property
    def per_process_batch(self) -> int:
        return self.config.batch_size // self.procs.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.num_samples // self.per_process_batch

    @property
    def last_path(self) -> Path:
        return last_checkpoint_path(self.run_dir)

    def save_checkpoint(self) -> None:
        sums = self.procs.sum(self.running).tolist()
        if self.procs.main:
            state = {**asdict(self.position), "sums": sums}
            record = training_checkpoint(
                self.config, self.model, self.optimizer, self.scheduler, self.scaler, state
            )
            save(record, self.last_path)
        self.procs.barrier()


def train(
    config: TrainConfig, run_dir: str | Path, resume: bool = False, runtime: Runtime | None = None
) -> dict:
    """Train ``config`` into ``run_dir`` (see :mod:`transfer.checkpoint` for the folder); return the summary.

    ``resume`` continues from ``run_dir/checkpoints/last.pt``; without it ``run_dir`` must not hold a run.
    Raises :class:`TrainingInterrupted` after saving a checkpoint when SIGINT/SIGTERM arrives.
    """
    runtime = runtime or Runtime()
    run_dir = Path(run_dir)
    head = _one_pass_head(config)
    if head is not None:  # a kind fitted in one pass (the frozen probe): no epochs, nothing to resume
        if resume and (run_dir / "summary.json").is_file():
            return json.loads((run_dir / "summary.json").read_text())
        return _fit_once(config, run_dir, runtime, head)
    procs = Processes.from_env(runtime.device)
    try:
        return _train(config, run_dir, resume, runtime, procs)
    finally:
        procs.close()


def _one_pass_head(config: TrainConfig):
    """The run's head where its kind is fitted in one pass rather than by the SGD loop (None otherwise)."""
    name = getattr(config, "head", None)
    if name is None:
        return None
    from transfer.heads import get_head

    head = get_head(name)
    return head if head.one_pass else None


def _metrics_text(val: dict) -> str:
    """Validation metrics for a log line: numbers to 4 places, names (the chosen image score) as they are."""
    return ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in val.items()
        if isinstance(v, float | str)
    )


def _fit_once(config: TrainConfig, run_dir: Path, runtime: Runtime, head) -> dict:
    """A one-pass run: the task's fit, then validation, threshold and run folder as the loop writes them
    (``config.json``, ``best.pt``, ``metrics.jsonl``, ``summary.json``)."""
    started = time.perf_counter()
    _checkpoint_to_resume(config, run_dir, resume=False)  # refuses a folder that already holds a run
    make_dirs(run_dir, "--out")
    write_json(run_dir / "config.json", config.to_dict())
    procs = Processes.from_env(runtime.device)
    task = head.make_task(config)
    torch.manual_seed(config.seed)
    model = task.build_model().to(procs.device)
    fit = task.fit(model, runtime.progress)
    outputs, targets = predict(model, task.val_set, task, procs, 2, runtime.num_workers, False, False)
    val = task.val_metrics(outputs, targets)
    seconds = time.perf_counter() - started
    record = json_safe({"epoch": 1, "step": 0, **val, "fit": fit, "epoch_seconds": seconds})
    meta = {**task.model_meta(), **task.best_extras(outputs, targets)}
    save_model(model_record(config, model, meta, 1, record, status=RUN_IN_PROGRESS), run_dir / "best.pt")
    _append_metrics(run_dir / "metrics.jsonl", record)
    summary = {
        "rank": 0, "status": "complete", "epochs": 1, "steps": 0, "best_epoch": 1, "monitor": task.monitor,
        "best": val[task.monitor], "best_model": str(run_dir / "best.pt"), "seconds": round(seconds, 1),
        "fit": fit,
    }  # fmt: skip
    finish_run(run_dir, "complete", summary)
    tqdm.write(
        f"{head.name}: fitted on {fit['examples']} map cells ({fit['defective']} defective) of {fit['images']} "
        f"training images in {_duration(seconds)}; " + _metrics_text(val)
    )
    return summary


def _train(config: TrainConfig, run_dir: Path, resume: bool, runtime: Runtime, procs: Processes) -> dict:
    checkpoint = _checkpoint_to_resume(config, run_dir, resume)
    trainer = setup(config, run_dir, runtime, procs)
    if checkpoint is not None:
        _restore(trainer, checkpoint)
    if trainer.position.finished:
        return _already_finished(trainer)
    _start(trainer)
    with StopRequest() as stop_request:
        while trainer.position.epoch < config.epochs:
            started = time.perf_counter()
            if train_one_epoch(trainer, stop_request):
                return _stopped(trainer, stop_request)
            if finish_epoch(trainer, started):
                break
    summary = _summary(trainer)
    if procs.main:
        finish_run(run_dir, summary["status"], summary)
    procs.barrier()
    return summary


def _checkpoint_to_resume(config: TrainConfig, run_dir: Path, resume: bool) -> dict | None:
    """The checkpoint ``--resume`` continues from (None: start afresh), after checking the run folder."""
    last_path = last_checkpoint_path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise DataonomyError(f"--out {run_dir}: is a file, not a run folder")
    if resume and last_path.exists():
        checkpoint = load_training_checkpoint(last_path)
        # Only --epochs may change on resume (extending the run; see the module docstring).
        saved = config_from_dict(checkpoint["config"], str(last_path)).to_dict()  # older runs: legacy fields
        if {**saved, "epochs": None} != {**config.to_dict(), "epochs": None}:
            raise DataonomyError(f"--resume: the config differs from the one saved in {last_path}")
        return checkpoint
    if not resume and (last_path.exists() or (run_dir / "best.pt").exists()):
        raise DataonomyError(
            f"--out {run_dir}: already holds a run; pass --resume to continue it or choose a new folder"
        )
    # Otherwise no progress was saved (a run that failed in its first epoch leaves config.json alone): start
    # afresh, with or without --resume.
    return None


def setup(config: TrainConfig, run_dir: Path, runtime: Runtime, procs: Processes) -> Trainer:
    """The task, model, sampler and optimisation of a run at its start (:func:`_restore` resumes it)."""
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
    total_steps, warmup_steps = config.epochs * steps_per_epoch, round(config.warmup_epochs * steps_per_epoch)
    trunk_of = getattr(task, "trunk", None)  # fine-tuning tasks name the base's trunk; pretraining has none
    optimizer = sgd(
        model,
        config.lr,
        config.momentum,
        config.weight_decay,
        trunk=trunk_of(model) if trunk_of is not None else None,
        trunk_lr_scale=getattr(config, "trunk_lr_scale", 1.0),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=_needs_scaler(procs.device, config.amp))
    criterion = task.criterion()
    criterion = criterion.to(procs.device) if criterion is not None else None
    return Trainer(
        config, run_dir, runtime, procs, task, model, sampler, optimizer, scheduler, scaler, criterion
    )


def _restore(trainer: Trainer, checkpoint: dict) -> None:
    """Continue from ``checkpoint`` (``last.pt``): weights, optimisation, position; a changed ``--epochs``
    extends the run."""
    load_state(unwrap(trainer.model), checkpoint["model"], str(trainer.last_path), "the run's model")
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    trainer.scheduler.load_state_dict(checkpoint["scheduler"])
    trainer.scaler.load_state_dict(checkpoint["scaler"])
    trainer.position = position = Position(**checkpoint["state"])
    if not trainer.procs.main:
        position.sums = [0.0, 0.0, 0.0]  # rank 0 carries the totals so far
    saved_epochs, epochs = checkpoint["config"]["epochs"], trainer.config.epochs
    if epochs == saved_epochs:
        return
    if epochs < position.epoch + (position.batch > 0):
        raise DataonomyError(
            f"--epochs {epochs}: the run in {trainer.run_dir} has already trained {position.epoch} epochs"
            + (" and part of the next" if position.batch else "")
        )
    if position.finished == "complete":
        position.finished = None  # extended: more epochs to train
    position.extensions.append({"step": position.step, "from_epochs": saved_epochs, "epochs": epochs})
    # The current step's learning rate on the new schedule (the optimiser holds the old one).
    optimizer, scheduler = trainer.optimizer, trainer.scheduler
    for group, base, factor in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _already_finished(trainer: Trainer) -> dict:
    """A resumed run whose training had ended: nothing to train; the summary (written again if a kill between
    the final checkpoint and the end of training left it out, and ``best.pt`` unmarked)."""
    if trainer.procs.main:
        tqdm.write(f"{trainer.run_dir}: training already {trainer.position.finished}; nothing to do")
        finish_run(trainer.run_dir, trainer.position.finished, _summary(trainer))
    trainer.procs.barrier()
    return json.loads((trainer.run_dir / "summary.json").read_text())


def _start(trainer: Trainer) -> None:
    """Write the run's config, reopen its folder (see :func:`transfer.checkpoint.reopen_run`), wrap the model
    for DDP."""
    procs, run_dir = trainer.procs, trainer.run_dir
    if procs.main:
        make_dirs(run_dir, "--out")
        write_json(run_dir / "config.json", trainer.config.to_dict())
        _truncate_metrics(run_dir / "metrics.jsonl", trainer.position.epoch)  # a fresh start keeps none
        reopen_run(run_dir)
    procs.barrier()
    trainer.ddp_model = trainer.model
    if procs.distributed:
        trainer.ddp_model = DistributedDataParallel(
            trainer.model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None
        )


def _loader(trainer: Trainer) -> DataLoader:
    """The training set from the sampler's current place."""
    workers, device = trainer.runtime.num_workers, trainer.procs.device
    return DataLoader(
        trainer.task.train_set,
        batch_size=trainer.per_process_batch,
        sampler=trainer.sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_sigint if workers else None,
        collate_fn=getattr(trainer.task, "collate_fn", None),  # segdec: pads images of different sizes
    )


def train_one_epoch(trainer: Trainer, stop_request: StopRequest) -> bool:
    """Train the rest of the current epoch (from ``position.batch``), saving a checkpoint every
    ``checkpoint_every`` steps; True when it stopped part-way (Ctrl-C/SIGTERM, the step budget) with one saved."""
    position = trainer.position
    trainer.sampler.set_epoch(position.epoch)
    trainer.sampler.start = position.batch * trainer.per_process_batch
    trainer.task.train_set.set_epoch(position.epoch)
    # Loss sum, correct, examples: kept on the device so that steps do not wait for the GPU.
    trainer.running = torch.tensor(position.sums, dtype=torch.float64, device=trainer.procs.device)
    progress = _Progress(trainer)
    trainer.ddp_model.train()
    try:
        for x, y in _loader(trainer):
            _train_step(trainer, x, y)
            _estimate_after_first_steps(trainer)
            progress.update(trainer)
            stop = _stop_now(trainer, stop_request)
            if stop or position.step % trainer.config.checkpoint_every == 0:
                trainer.save_checkpoint()
            if stop:
                return True
        return False
    finally:
        progress.close()


def _train_step(trainer: Trainer, x, y) -> None:
    config, device, position = trainer.config, trainer.procs.device, trainer.position
    x, y = _to_device(x, y, device, config.channels_last)
    _seed_step(seed_for(config.seed, position.step, trainer.procs.rank), device)
    # A task with its own loss (segdec: pixel + image) says so; classifiers use model_loss and argmax accuracy.
    task_loss = getattr(trainer.task, "loss", model_loss)
    correct = getattr(trainer.task, "correct", lambda logits, y: (logits.argmax(1) == y).sum())
    with _autocast(device, config.amp):
        loss, logits = task_loss(trainer.ddp_model(x), y, trainer.criterion, config.aux_weight)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(loss).backward()
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.scheduler.step()
    position.step += 1
    position.batch += 1
    trainer.steps_here += 1
    with torch.no_grad():
        count = trainer.running.new_tensor(len(x))
        trainer.running += torch.stack([loss.detach().double() * len(x), correct(logits, y).double(), count])


# Steps timed before the first estimate (the first step, with its warm-up, is left out of the rate).
ESTIMATE_STEPS = 5
# Validation batches timed for the first estimate, spread over the validation set so that its image sizes are
# represented; the first one (its warm-up) is left out of the rate when there are more.
ESTIMATE_VALIDATION_BATCHES = 3


def _estimate_after_first_steps(trainer: Trainer) -> None:
    """Once this invocation has timed ``ESTIMATE_STEPS`` steps, say how long an epoch and the rest of the run take
    at that rate, validation included (timed on a sample of the validation images): on NEU-Seg's own split, 10
    training images against 894 validation images, the validations took most of a 22-minute run."""
    clock, now = trainer.clock, time.perf_counter()
    if trainer.steps_here == 1:
        clock["first"] = now
        return
    if trainer.steps_here != ESTIMATE_STEPS + 1 or not trainer.procs.main:
        return
    per_step = (now - clock["first"]) / ESTIMATE_STEPS
    position, config = trainer.position, trainer.config
    steps_left = (trainer.steps_per_epoch - position.batch) + (
        config.epochs - position.epoch - 1
    ) * trainer.steps_per_epoch
    epochs_left = config.epochs - position.epoch
    per_image, images = _validation_image_seconds(trainer)
    training, validation = per_step * steps_left, per_image * images * epochs_left
    budget = "" if config.time_budget is None else f"; time budget {_duration(config.time_budget)}"
    tqdm.write(
        f"time estimate: {per_step:.2f} s per step of {config.batch_size}, an epoch of {trainer.steps_per_epoch} "
        f"steps about {_duration(per_step * trainer.steps_per_epoch)} and its validation of {images} images "
        f"about {_duration(per_image * images)}; the {epochs_left} epochs left at most about "
        f"{_duration(training + validation)} ({_duration(training)} of training, {_duration(validation)} of "
        f"validation; early stopping may end sooner){budget}"
    )


def _validation_image_seconds(trainer: Trainer) -> tuple[float, int]:
    """Seconds a validation image takes on this process (a timed sample of ``ESTIMATE_VALIDATION_BATCHES``
    validation batches, read and scored as :func:`predict` does), and how many images its validation scores.
    It leaves the run as it was: evaluation mode draws nothing, and each training step seeds itself."""
    dataset, procs = trainer.task.val_set, trainer.procs
    images = len(range(procs.rank, len(dataset), procs.world_size))
    if images == 0:
        return 0.0, 0
    batch = 2 * trainer.per_process_batch  # as finish_epoch validates
    count = min(images, ESTIMATE_VALIDATION_BATCHES * batch)
    sample = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, count).round()})
    loader, _ = _eval_loader(dataset, sample, batch, 0)
    model, config = trainer.model, trainer.config
    was_training = model.training
    model.eval()
    timed, started = 0, time.perf_counter()
    with torch.no_grad():
        for number, (x, y) in enumerate(loader):
            if number <= 1:  # the clock restarts after the first batch, its warm-up
                timed, started = 0, time.perf_counter()
            x, y = _to_device(x, y, procs.device, config.channels_last)
            with _autocast(procs.device, config.amp):
                trainer.task.per_sample(model(x), y)
            timed += len(x)
        if procs.device.type == "cuda":
            torch.cuda.synchronize(procs.device)
        elapsed = time.perf_counter() - started
    model.train(was_training)
    return elapsed / max(timed, 1), images


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _stop_now(trainer: Trainer, stop_request: StopRequest) -> bool:
    """Stop after this step: a signal arrived, or this invocation spent its step budget (any process)."""
    budget = trainer.runtime.stop_after_steps
    stop = stop_request.requested or (budget is not None and trainer.steps_here >= budget)
    return trainer.procs.any(stop) if trainer.procs.distributed else stop


class _Progress:
    """An epoch's progress bar, or without a terminal a line every ``Runtime.log_every`` seconds on stderr that
    shows the run is alive."""

    def __init__(self, trainer: Trainer):
        position, epochs = trainer.position, trainer.config.epochs
        show = trainer.procs.main and trainer.runtime.progress is not False
        self.log_every = trainer.runtime.log_every if show and not sys.stderr.isatty() else None
        self.bar = tqdm(
            total=trainer.steps_per_epoch,
            initial=position.batch,
            desc=f"epoch {position.epoch + 1}/{epochs}",
            disable=None if show else True,
            leave=False,
        )
        self.logged_at, self.logged_batch = time.perf_counter(), position.batch

    def update(self, trainer: Trainer) -> None:
        position = trainer.position
        self.bar.update(1)
        if self.log_every is not None and time.perf_counter() - self.logged_at >= self.log_every:
            self._log(trainer)
        if position.step % 10 == 0 and not self.bar.disable:
            loss_so_far, _, seen = trainer.running.tolist()
            lr = trainer.scheduler.get_last_lr()[0]
            self.bar.set_postfix(loss=f"{loss_so_far / max(seen, 1):.4f}", lr=f"{lr:.3g}")

    def _log(self, trainer: Trainer) -> None:
        position, config, now = trainer.position, trainer.config, time.perf_counter()
        loss_so_far, _, seen = trainer.running.tolist()
        rate = (position.batch - self.logged_batch) * config.batch_size / max(now - self.logged_at, 1e-9)
        print(
            f"epoch {position.epoch + 1}/{config.epochs} step {position.batch}/{trainer.steps_per_epoch} "
            f"(step {position.step} of the run): loss {loss_so_far / max(seen, 1):.4f}, {rate:.1f} images/s",
            file=sys.stderr,
            flush=True,
        )
        self.logged_at, self.logged_batch = now, position.batch

    def close(self) -> None:
        self.bar.close()


def _stopped(trainer: Trainer, stop_request: StopRequest) -> dict:
    """A run stopped part-way, its checkpoint saved: raise :class:`TrainingInterrupted` on a signal, else (the
    step budget) say how to continue."""
    step, last_path = trainer.position.step, trainer.last_path
    if stop_request.requested:
        raise TrainingInterrupted(last_path, step, trainer.procs.rank, stop_request.signum)
    if trainer.procs.main:
        tqdm.write(
            f"stopped after {trainer.steps_here} steps (step {step}); checkpoint saved to {last_path}, "
            "continue with --resume"
        )
    return {"status": "stopped", "step": step, "checkpoint": str(last_path)}


def finish_epoch(trainer: Trainer, started: float) -> bool:
    """The end of an epoch: training totals, validation, the best model, the metrics line, a checkpoint; True when
    early stopping ends the run."""
    config, procs, task, position = trainer.config, trainer.procs, trainer.task, trainer.position
    totals = procs.sum(trainer.running).tolist()
    batch = 2 * trainer.per_process_batch  # no gradients: twice the batch fits
    workers = trainer.runtime.num_workers
    outputs, targets = predict(
        trainer.model, task.val_set, task, procs, batch, workers, config.amp, config.channels_last
    )
    val = task.val_metrics(outputs, targets)
    record = {
        "epoch": position.epoch + 1,
        "step": position.step,
        "lr": trainer.scheduler.get_last_lr()[0],
        "train_loss": totals[0] / max(totals[2], 1),
        "train_accuracy": totals[1] / max(totals[2], 1),
        **val,
        "epoch_seconds": time.perf_counter() - started,
    }
    _keep_best(trainer, val, json_safe(record), (outputs, targets))
    if procs.main:
        _append_metrics(trainer.run_dir / "metrics.jsonl", json_safe(record))
        tqdm.write(
            f"epoch {position.epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, "
            + _metrics_text(val)
        )
    position.epoch, position.batch, position.sums = position.epoch + 1, 0, [0.0, 0.0, 0.0]
    position.seconds += record["epoch_seconds"]
    trainer.running.zero_()
    per_epoch = position.seconds / position.epoch
    if task.patience is not None and position.stale_epochs >= task.patience:
        position.finished, position.stop_reason = "stopped early", "patience"
    elif position.epoch >= config.epochs:
        position.finished = "complete"
    elif config.time_budget is not None and position.seconds + per_epoch > config.time_budget:
        position.finished, position.stop_reason = "stopped early", "time budget"
    trainer.save_checkpoint()
    if procs.main:
        _report_time(trainer, per_epoch)
    return position.finished == "stopped early"


def _report_time(trainer: Trainer, per_epoch: float) -> None:
    """After an epoch: why the run stopped, or how long the rest takes at the epochs' mean pace."""
    position, config, task = trainer.position, trainer.config, trainer.task
    if position.stop_reason == "patience":
        tqdm.write(f"early stopping: no improvement of {task.monitor} for {task.patience} epochs")
    elif position.stop_reason == "time budget":
        tqdm.write(
            f"time budget: {_duration(position.seconds)} of {_duration(config.time_budget)} spent, and an epoch "
            f"takes about {_duration(per_epoch)}; stopping with the best epoch ({position.best_epoch})"
        )
    elif position.finished is None:
        left = config.epochs - position.epoch
        fits = (
            ""
            if config.time_budget is None
            else (
                f", {int((config.time_budget - position.seconds) // per_epoch)} of them within the time budget"
            )
        )
        tqdm.write(
            f"time: {_duration(position.seconds)} so far, {_duration(per_epoch)} per epoch; at most {left} "
            f"epoch{'s' if left != 1 else ''} left, about {_duration(left * per_epoch)}{fits} (early stopping may "
            "end sooner)"
        )


def _keep_best(trainer: Trainer, val: dict, metrics: dict, predictions: tuple) -> None:
    """Save the model as ``best.pt`` when the task's monitor improved; a tie (a small validation fold at AP
    1.0) goes to the lower validation loss, the better-separated model. An epoch that did not improve the
    monitor counts as stale even when it wins a tie: patience is the monitor's plateau, so a run whose
    validation AP sits at 1.0 stops instead of training on while its loss keeps falling (on real Class1 with 5
    defects the default fine-tune reached validation AP 1.0 at epoch 3 and would have run all 30 epochs)."""
    task, position = trainer.task, trainer.position
    value, loss = val[task.monitor], val.get("val_loss", math.inf)
    better = position.best is None or (value > position.best if task.mode == "max" else value < position.best)
    tie_won = value == position.best and loss < position.best_loss
    if not ((better or tie_won) and math.isfinite(value)):
        position.stale_epochs += 1
        return
    epoch = position.epoch + 1
    stale = 0 if better else position.stale_epochs + 1
    position.best, position.best_loss, position.best_epoch, position.stale_epochs = value, loss, epoch, stale
    if trainer.procs.main:
        meta = {**task.model_meta(), **task.best_extras(*predictions)}
        record = model_record(trainer.config, trainer.model, meta, epoch, metrics, status=RUN_IN_PROGRESS)
        save_model(record, trainer.run_dir / "best.pt")


def _summary(trainer: Trainer) -> dict:
    position = trainer.position
    summary = {
        "rank": trainer.procs.rank,
        "status": position.finished or "complete",
        "epochs": position.epoch,
        "steps": position.step,
        "best_epoch": position.best_epoch,
        "monitor": trainer.task.monitor,
        "best": position.best,
        "best_model": str(trainer.run_dir / "best.pt"),
    }
    if position.extensions:
        summary["extensions"] = position.extensions
    if position.stop_reason is not None:
        summary["stop_reason"] = position.stop_reason
    summary["seconds"] = round(position.seconds, 1)
    return summary


__all__ = [
    "FinetuneTask",
    "Position",
    "PretrainTask",
    "Runtime",
    "Trainer",
    "finish_epoch",
    "make_task",
    "predict",
    "resume_config",
    "setup",
    "sgd",
    "train",
    "train_one_epoch",
    "warmup_cosine",
]
