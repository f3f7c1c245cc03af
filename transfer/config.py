"""Run configurations: one dataclass per kind of run, whose fields are the training function's arguments.

A config is saved as ``config.json`` beside every run's outputs (and inside every checkpoint), and read back with
:func:`config_from_dict`. It holds everything that determines the result (data, model, optimisation, seed);
things that do not (device, data-loader workers, progress bars) are runtime arguments, not config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataonomy.cli_options import opt, parse_duration, parse_rgb
from dataonomy.datasets.options import DefectSetOptions
from dataonomy.datasets.splits import SplitOptions, check_split_options
from dataonomy.errors import DataonomyError
from dataonomy.io import check_field_types
from dataonomy.option_groups import flat_fields, flat_names, group, grouped, to_flat
from transfer.head_options import SEGDEC, PatchOptions, SegdecOptions

MONITORS = ("ap", "auroc", "loss")
# The --help sections of the training options beside the main ones.
OPTIMISATION = "Optimisation"
# The trunk's share of the fine-tuning learning rate when the base is pretrained (see FinetuneConfig).
PRETRAINED_TRUNK_LR_SCALE = 1.0


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(kw_only=True)
class TrainConfig:
    """What every training run shares.

    ``steps_per_epoch`` fixes the length of an epoch (default: one pass over the training set), so that runs on
    training sets of different sizes take the same number of optimiser steps; a shorter epoch samples the set
    afresh each time, a longer one passes over it more than once. ``batch_size`` is the global batch: under ``torchrun`` each of the W processes takes ``batch_size / W``
    images per step, so the same command gives the same optimisation on any number of processes. ``image_size``
    and ``mean``/``std`` default to the architecture's (``transfer.models.model_spec``, from :mod:`dataonomy.architectures`).
    """

    kind: str = ""
    arch: str = opt("inception_v3", "Architecture (transfer.models registry).")
    epochs: int = opt(30, "Training epochs.")
    steps_per_epoch: int | None = opt(
        None,
        "Optimiser steps per epoch (default: one pass over the training set). Fixes the step budget, so runs on "
        "training sets of different sizes train equally long.",
        panel=OPTIMISATION,
    )
    batch_size: int = opt(64, "Global batch size (divided among torchrun processes).")
    lr: float = opt(0.1, "Peak learning rate (SGD).")
    momentum: float = opt(0.9, "SGD momentum.", panel=OPTIMISATION)
    weight_decay: float = opt(1e-4, "Weight decay (not on biases/norms).", panel=OPTIMISATION)
    warmup_epochs: float = opt(1.0, "Linear warmup before the cosine decay.", panel=OPTIMISATION)
    label_smoothing: float = opt(0.0, "Label smoothing of the loss.", panel=OPTIMISATION)
    dropout: float | None = opt(
        None, "Dropout before the last layer (default: the architecture's).", panel=OPTIMISATION
    )
    aux_weight: float = opt(0.4, "Weight of the auxiliary head's loss (Inception V3).", panel=OPTIMISATION)
    aux_logits: bool | None = opt(
        None,
        "Train the auxiliary head (Inception V3; default: on where the input size allows it, off for segdec).",
        panel=OPTIMISATION,
    )
    image_size: int | None = opt(None, "Training resolution (default: the architecture's).")
    mean: tuple[float, float, float] | None = opt(
        None,
        "Input normalisation mean R,G,B (default: the architecture's).",
        parse=parse_rgb,
        panel=OPTIMISATION,
    )
    std: tuple[float, float, float] | None = opt(
        None,
        "Input normalisation std R,G,B (default: the architecture's).",
        parse=parse_rgb,
        panel=OPTIMISATION,
    )
    augment: bool = opt(True, "Random resized crops and flips (off: centre crops).")
    amp: bool = opt(True, "Mixed precision on CUDA.", panel=OPTIMISATION)
    channels_last: bool = opt(True, "Channels-last memory format on CUDA.", panel=OPTIMISATION)
    sync_bn: bool = opt(False, "Synchronise batch norm across torchrun processes.", panel=OPTIMISATION)
    checkpoint_every: int = opt(500, "Save a checkpoint every N steps.", panel=OPTIMISATION)
    seed: int = opt(0, "Seed of data order, augmentation and initialisation.")
    # Wall-clock seconds of training and validation (over resumes) the run may take: it ends, keeping its best
    # epoch, before an epoch that would pass it (None: --epochs and early stopping alone decide).
    time_budget: float | None = opt(
        None,
        "Wall-clock budget of training and validation, such as 30m or 2h (over resumes): the run ends, keeping "
        "its best epoch, before an epoch that would pass it. The run prints its time estimate after its first "
        "steps and the time left after every epoch either way.",
        type=str,
        parse=parse_duration,
    )

    def __post_init__(self):
        from transfer.models import model_spec  # torch: imported when a config is built, not for --help

        spec = model_spec(self.arch)
        if self.image_size is None and not self.native_resolution:
            self.image_size = spec.image_size
        if self.dropout is None:
            self.dropout = spec.dropout
        self.mean = tuple(float(v) for v in (self.mean if self.mean is not None else spec.mean))
        self.std = tuple(float(v) for v in (self.std if self.std is not None else spec.std))
        from transfer.models import uses_aux_logits

        aux_usable = self.input_size is not None and uses_aux_logits(self.arch, self.input_size)
        if self.aux_logits is None:
            self.aux_logits = aux_usable and not self.native_resolution
        elif self.aux_logits and not aux_usable:
            raise DataonomyError(f"--aux-logits: {self.arch} has no auxiliary head usable at this input size")
        self._check()

    @property
    def native_resolution(self) -> bool:
        """Whether images keep their own size when ``image_size`` is not given (segdec fine-tuning)."""
        return False

    @property
    def input_size(self) -> int | None:
        """Side of the model's input (the image size; fine-tuning on patches overrides it; None: native)."""
        return self.image_size

    def _check(self) -> None:
        positive = ("epochs", "batch_size", "image_size", "checkpoint_every")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DataonomyError(f"{_option(name)} {getattr(self, name)}: must be at least 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise DataonomyError(f"--steps-per-epoch {self.steps_per_epoch}: must be at least 1")
        if self.time_budget is not None and not self.time_budget > 0:
            raise DataonomyError(f"--time-budget {self.time_budget}: must be a positive duration")
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "label_smoothing", "aux_weight"):
            if getattr(self, name) < 0:
                raise DataonomyError(f"{_option(name)} {getattr(self, name)}: must not be negative")
        if not 0 <= self.dropout < 1:
            raise DataonomyError(f"--dropout {self.dropout}: must be in [0, 1)")
        if self.label_smoothing >= 1:
            raise DataonomyError(f"--label-smoothing {self.label_smoothing}: must be below 1")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise DataonomyError("--mean/--std: need three values each, std positive")
        if self.input_size is not None:
            option = "--patch-size" if self.input_size != self.image_size else "--image-size"
            from transfer.models import check_image_size

            check_image_size(self.arch, self.input_size, option)

    def to_dict(self) -> dict:
        """The config as ``config.json`` holds it: flat, one name per option (option groups spliced in)."""
        out = to_flat(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


@dataclass(kw_only=True)
class PretrainConfig(TrainConfig):
    """Pretraining the base model on a manifest's classes of an ImageNet-style source pool.

    ``wnids`` are the manifest's selected classes (recorded, so the run is reproducible without the manifest);
    ``init`` is ``scratch``, ``imagenet`` or a weights file. Validation uses the pool's labelled ``val`` split
    where it has one (the Tiny ImageNet layout), else ``val_fraction`` of each class's training images, seeded.
    ``lr`` left at None is :func:`default_pretrain_lr` of the batch size and init (the config records the value).
    """

    kind: str = "pretrain"
    manifest: str = opt(
        help="Manifest JSON from `dataonomy select`; its selected classes are trained on.",
        type=Path,
        option_default=None,
    )
    source_root: str = opt(
        help="The ImageNet-style source pool (ILSVRC train folders or Tiny ImageNet).",
        type=Path,
        option_default=None,
    )
    wnids: list[str]
    init: str = opt("scratch", "Initial weights: scratch, imagenet, or a weights/checkpoint file.")
    epochs: int = 90
    lr: float | None = opt(
        None,
        "Peak learning rate (SGD). Default 0.1 x batch size / 256 with --init scratch, 10x lower from trained "
        "weights (imagenet or a file); config.json records the value used.",
    )
    batch_size: int = 64
    label_smoothing: float = 0.1
    val_fraction: float = opt(
        0.05, "Share of each class held out for validation when the pool has no val split."
    )
    images_per_class: int | None = opt(
        None, "Read at most N images per class for training and validation (seeded sample)."
    )
    # Early stopping on validation top-1: ``epochs`` is the budget, the run ends once top-1 has not improved
    # for ``patience`` epochs (None: train every epoch). A run that stops short of converging transfers
    # nothing (docs/experiment.md: 100 steps made every pretrained trunk worse than a random one).
    patience: int | None = opt(
        10,
        "Early stopping: end the run once validation top-1 has not improved for N epochs (--epochs is the "
        "budget). metrics.jsonl records the curve.",
    )

    def __post_init__(self):
        if self.lr is None and isinstance(self.batch_size, int):
            self.lr = default_pretrain_lr(self.batch_size, self.init)
        super().__post_init__()

    def _check(self) -> None:
        super()._check()
        if len(self.wnids) < 2:
            raise DataonomyError(f"--manifest {self.manifest}: select at least 2 classes to pretrain on")
        if not 0 < self.val_fraction < 1:
            raise DataonomyError(f"--val-fraction {self.val_fraction}: must be in (0, 1)")
        if self.images_per_class is not None and self.images_per_class < 2:
            raise DataonomyError(f"--images-per-class {self.images_per_class}: must be at least 2")
        if self.patience is not None and self.patience < 1:
            raise DataonomyError(f"--patience {self.patience}: must be at least 1")


@grouped
@dataclass(kw_only=True)
class FinetuneConfig(DefectSetOptions, TrainConfig):
    """Fine-tuning a base model to defect / no defect, every layer trained, the last one replaced.

    ``base``: a pretrain run (folder or checkpoint), ``imagenet`` or ``scratch`` (with ``arch``). ``data`` is the
    defect set's root in layout ``format`` (``dagm``, ``mvtec``, ``kolektor``, ``pairs``, ``folder``; the layout's
    own options beside it, see :class:`transfer.data.DefectData`). The folds are
    :func:`transfer.data.defect_fold`'s seeded, stratified ``train``/``val`` (and ``test`` when ``test_fraction``
    > 0, or fold ``fold`` of ``folds``-fold cross-validation), cut with ``split_seed`` (default ``seed``: set it to
    train several seeds on the same folds). With
    ``patches``, training examples are ``patch_size`` crops on a ``patch_stride`` grid at full resolution: a
    patch is defective when at least ``patch_defect_fraction`` of its pixels are in the mask, clean when none
    are, and left out otherwise (its label would be a guess). Early stopping watches ``monitor`` on validation
    for ``patience`` epochs; the decision threshold maximises ``threshold_criterion`` on validation.

    The split, the layout and the heads' own options are option groups (``config.split.folds``,
    ``config.layout.masks``, ``config.segdec.crop_size``, ``config.patch.patch_size``:
    :mod:`transfer.head_options`); the constructor and ``config.json`` also take their options flat, as the
    command line names them.
    """

    kind: str = "finetune"
    base: str = opt(
        help="Base model: a pretrain run folder or checkpoint, imagenet (ImageNet weights of --arch), or scratch.",
        option_default=None,
    )
    data: str
    format: str = "dagm"
    arch: str = opt(
        "inception_v3",
        "Architecture for --base imagenet/scratch (default inception_v3; else the base's).",
        option_default=None,
    )
    image_size: int | None = opt(
        None,
        "--head segdec: resize each image's longer side to this, keeping its aspect ratio (default: every image at "
        "its own size; a set of mixed sizes is padded per training batch, never stretched). --head classify: the "
        "square input side (default: the architecture's).",
    )
    augment: bool = opt(True, "Flips, 90-degree rotations, brightness/contrast, noise.")
    seed: int = opt(0, "Seed of the split, data order, augmentation and new head.")
    epochs: int = opt(30, "Most training epochs.")
    lr: float = 0.01
    batch_size: int = 32
    warmup_epochs: float = 0.5
    patience: int = opt(5, "Stop after N epochs without improvement.")
    monitor: str = opt("ap", "Validation metric for early stopping: ap, auroc, loss.")
    threshold_criterion: str = opt(
        "balanced_accuracy", "What the validation threshold maximises: balanced_accuracy or f1."
    )
    split: SplitOptions = group(SplitOptions)
    segdec: SegdecOptions = group(SegdecOptions)
    patch: PatchOptions = group(PatchOptions)
    head: str | None = opt(
        None,
        "segdec (default): a defect map and an image score from one pass, trained from the masks at native "
        "resolution; probe: the base's trunk frozen and a per-location logistic regression fitted from the masks "
        "in one pass (the fastest detector, and the floor a fine-tune must beat); classify: an image classifier "
        "(the default with --patches).",
    )
    output_stride: int = opt(
        16,
        "segdec: cut the trunk where its feature map is 1/N of the image (8 or 16; 4 and 32 where the trunk has "
        "them).",
        panel=SEGDEC,
    )
    # Few defects, as users have them: keep ``defective_train`` of the training fold's defective images (a
    # seeded choice by ``split_seed``, nested: the 5 kept are among the 10 kept), every clean one, and the
    # validation fold as it is. None: every defective image.
    defective_train: int | None = opt(
        None,
        "Train on only N of the training fold's defective images (seeded by --split-seed, nested: the 5 kept are "
        "among the 10 kept); every clean image and the validation fold stay. How many defects do you need?",
    )
    # The pretrained trunk's learning rate as a multiple of ``lr`` (the new heads take ``lr``). None: 1 from
    # scratch, PRETRAINED_TRUNK_LR_SCALE from a pretrained base (the config records the value used).
    trunk_lr_scale: float | None = opt(
        None,
        "The base's trunk trains at --lr times this; the new heads at --lr. Default: 1 from scratch, the measured "
        "default from a pretrained base (docs/experiment.md).",
    )

    def __post_init__(self):
        if self.trunk_lr_scale is None and isinstance(self.base, str):
            self.trunk_lr_scale = 1.0 if self.base == "scratch" else PRETRAINED_TRUNK_LR_SCALE
        if self.head is None:
            self.head = "classify" if self.patch.patches else "segdec"
        if self.head_kind.native_resolution and self.aux_logits is None:
            self.aux_logits = False
        super().__post_init__()

    @property
    def head_kind(self):
        """The :class:`transfer.heads.Head` this run trains (``--head``; its own options and checks live there)."""
        from transfer.heads.base import HEADS, finetune_heads

        choices = finetune_heads()
        if self.head not in [h.name for h in choices]:
            raise DataonomyError(f"--head '{self.head}': must be one of {', '.join(h.name for h in choices)}")
        return HEADS.get(self.head)

    @property
    def native_resolution(self) -> bool:
        return self.head_kind.native_resolution

    def defect_data(self):
        """The run's defect set (:class:`transfer.data.DefectData`)."""
        from transfer.stage_config import defect_set

        return defect_set(self)

    @property
    def input_size(self) -> int | None:
        return self.patch.patch_size if self.patch.patches else self.image_size

    def _check(self) -> None:
        super()._check()
        self.defect_data()  # an unknown --format is refused here
        split = self.split
        if not 0 < split.val_fraction < 1:  # fine-tuning validates every epoch: it needs a validation fold
            raise DataonomyError(f"--val-fraction {split.val_fraction}: must be in (0, 1)")
        check_split_options("train", split.val_fraction, split.test_fraction, split.folds, split.fold)
        if self.patience < 1:
            raise DataonomyError(f"--patience {self.patience}: must be at least 1")
        if self.defective_train is not None and self.defective_train < 1:
            raise DataonomyError(f"--defective-train {self.defective_train}: must be at least 1")
        if self.trunk_lr_scale is not None and self.trunk_lr_scale < 0:
            raise DataonomyError(f"--trunk-lr-scale {self.trunk_lr_scale}: must not be negative")
        if self.monitor not in MONITORS:
            raise DataonomyError(f"--monitor '{self.monitor}': must be one of {', '.join(MONITORS)}")
        from transfer.metrics import THRESHOLD_CRITERIA

        if self.threshold_criterion not in THRESHOLD_CRITERIA:
            raise DataonomyError(
                f"--threshold-criterion '{self.threshold_criterion}': must be one of {', '.join(THRESHOLD_CRITERIA)}"
            )
        self._check_head_options()

    def _check_head_options(self) -> None:
        """Each head's own options (:attr:`transfer.heads.Head.options`), then the run's head's check. An option
        that is off by default (None or False, as ``--crop-size``, ``--patches``) switched on under a head that
        does not read it is refused, naming the heads that do; one with a value by default (``--output-stride
        16``) is carried harmlessly, so a ``--config`` rerun of a segdec run with ``--head classify`` and the runs
        saved so far still load."""
        from transfer.heads.base import finetune_heads

        head, values = self.head_kind, to_flat(self)
        defaults = {f.name: f.field.default for f in flat_fields(type(self))}
        owners: dict[str, list[str]] = {}
        for other in finetune_heads():
            for name in other.options:
                owners.setdefault(name, []).append(other.name)
        for name, kinds in owners.items():
            off = defaults[name] in (None, False)
            if off and name not in head.options and values[name] not in (None, False):
                raise DataonomyError(f"{_option(name)}: only for --head {' or '.join(kinds)}")
        head.check_config(self)


_KINDS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}
# Fields added after runs were saved without them, with the value that reproduces those runs (a saved run
# loads and resumes as it trained, not with today's default).
LEGACY_DEFAULTS = {
    "pretrain": {"patience": None},
    "finetune": {"defective_train": None, "trunk_lr_scale": 1.0},
}

# `transfer pretrain`/`finetune` have one option per config field, named after it, except for the fields below;
# tests/test_config_cli.py holds the commands to these lists so options and fields cannot drift apart.
# Fields without an option: the run kind is the command, and the rest follow from another option.
DERIVED_FIELDS = {
    "pretrain": {"kind": "the command", "wnids": "--manifest's selected classes"},
    "finetune": {"kind": "the command", "mean": "--base's normalisation", "std": "--base's normalisation"},
}
# Options without a field: where and how a run is carried out, which does not change its result (--config
# only supplies the fields), --dagm, short for the --data and --format fields, and --fit-machine, whose choices are
# saved as the --crop-size and --batch-size fields.
RUN_OPTIONS = {
    "pretrain": ("out", "config", "resume", "device", "workers", "stop_after_steps", "log_every"),
    "finetune": (
        "out", "config", "resume", "device", "workers", "stop_after_steps", "log_every", "allow_incomplete_base",
        "dagm", "fit_machine",
    ),
}  # fmt: skip
# Fields whose defaults come from the architecture: a --config rerun with another --arch takes the new one's.
ARCH_DEFAULTS = ("image_size", "mean", "std", "dropout", "aux_logits")


def read_config_file(path: Path, kind: str) -> dict:
    """The fields (kind left out) of the ``kind`` run config saved in ``path`` (a run's config.json), checked
    as :func:`config_from_dict` checks them; any problem is a one-line error naming the file."""
    from dataonomy.io import read_config_json

    where = f"--config {path}"
    data = read_config_json(path)
    if isinstance(data, dict) and data.get("kind") in _KINDS and data["kind"] != kind:
        raise DataonomyError(
            f"{where}: a {data['kind']} run's config; `transfer {kind}` takes a {kind} run's"
        )
    fields_ = config_from_dict(data, where).to_dict()
    fields_.pop("kind")
    return fields_


def default_pretrain_lr(batch_size: int, init: str) -> float:
    """Pretraining's default peak learning rate: 0.1 x batch / 256 from scratch (Goyal et al.'s linear scaling
    rule), 10 x lower from trained weights (``imagenet`` or a file), which a scratch rate wipes out: at 0.1 and
    batch 32 an ImageNet-initialised Inception stayed at chance where 0.01 learned."""
    lr = 0.1 * batch_size / 256
    return lr if init == "scratch" else lr / 10


def config_from_dict(data: dict, where: str = "config") -> TrainConfig:
    """Rebuild a saved config; unknown kinds or fields are one-line errors naming ``where``."""
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        kind = data.get("kind") if isinstance(data, dict) else None
        raise DataonomyError(f"{where}: unknown run kind {kind!r} (expected pretrain or finetune)")
    cls = _KINDS[data["kind"]]
    if data["kind"] == "finetune" and "dagm" in data and "data" not in data:
        data = {k: v for k, v in data.items() if k != "dagm"} | {
            "data": data["dagm"],
            "format": "dagm",
        }  # runs before --data
    data = LEGACY_DEFAULTS[data["kind"]] | data
    names = set(flat_names(cls))
    unknown = sorted(set(data) - names)
    if unknown:
        raise DataonomyError(f"{where}: unknown config field(s) {', '.join(unknown)}")
    check_field_types(cls, data, where)
    try:
        return cls(**data)
    except TypeError as exc:
        raise DataonomyError(f"{where}: incomplete config ({exc})") from None


def config_differences(saved: TrainConfig, requested: dict[str, Any]) -> list[str]:
    """The fields of ``requested`` (name -> value, as options given on a command line) that differ from ``saved``."""
    out, saved_fields = [], to_flat(saved)
    for name, value in requested.items():
        old = saved_fields[name]
        if isinstance(old, tuple):
            value = tuple(value) if value is not None else None
        if value != old:
            out.append(f"{_option(name)} {value} (the run has {old})")
    return out


def replace(config: TrainConfig, **changes) -> TrainConfig:
    """A copy of ``config`` with ``changes`` applied and checked."""
    return dataclasses.replace(config, **changes)


__all__ = [
    "ARCH_DEFAULTS",
    "DERIVED_FIELDS",
    "MONITORS",
    "RUN_OPTIONS",
    "FinetuneConfig",
    "PretrainConfig",
    "TrainConfig",
    "config_differences",
    "config_from_dict",
    "default_pretrain_lr",
    "read_config_file",
    "replace",
]
