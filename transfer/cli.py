"""The ``transfer`` command line: pretrain on a manifest, fine-tune on the target, inspect.

Each command parses options, calls the stage modules (training, evaluate, localize_run, predict,
rootcause_run, export), and prints a short report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from dataonomy.cli_utils import (
    given_options,
    new_app,
    old_option_name,
    parse_duration,
    parse_list,
    run_app,
    with_config,
)
from transfer.config import (
    FinetuneConfig,
    PretrainConfig,
    TrainConfig,
    read_config_file,
)

app = new_app(
    "Transfer: pretrain on a Dataonomy manifest, fine-tune a defect classifier, evaluate and localise defects."
)


_DEVICE_HELP = "Device (cpu, cuda, cuda:1); default cuda when available. Under torchrun each process takes its LOCAL_RANK GPU."
_WORKERS_HELP = "Data-loader worker processes (default 4 with CUDA, else 0)."
_STOP_HELP = "Stop after N steps in this invocation, saving a checkpoint (for time-limited job slots); continue with --resume."


def _default(config_cls, name: str):
    """The config dataclass's default for ``name``: the one place defaults live."""
    from dataclasses import MISSING, fields

    for f in fields(config_cls):
        if f.name == name:
            return None if f.default is MISSING else f.default
    raise KeyError(name)


# Options shared by several commands (one definition, one help text).
RunOutOpt = typer.Option(..., "--out", help="Run folder: config.json, checkpoints/, metrics.jsonl, best.pt.")
MomentumOpt = typer.Option(TrainConfig.momentum, "--momentum", help="SGD momentum.")
WeightDecayOpt = typer.Option(
    TrainConfig.weight_decay, "--weight-decay", help="Weight decay (not on biases/norms)."
)
CheckpointEveryOpt = typer.Option(
    TrainConfig.checkpoint_every, "--checkpoint-every", help="Save a checkpoint every N steps."
)


def _warmup_epochs_opt(config_cls):
    return typer.Option(
        _default(config_cls, "warmup_epochs"),
        "--warmup-epochs",
        help="Linear warmup before the cosine decay.",
    )


def _label_smoothing_opt(config_cls):
    return typer.Option(
        _default(config_cls, "label_smoothing"), "--label-smoothing", help="Label smoothing of the loss."
    )


AmpOpt = typer.Option(True, "--amp/--no-amp", help="Mixed precision on CUDA.")
ChannelsLastOpt = typer.Option(
    True, "--channels-last/--no-channels-last", help="Channels-last memory format on CUDA."
)
ResumeOpt = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint.")
TrainDeviceOpt = typer.Option(None, "--device", help=_DEVICE_HELP)
TrainWorkersOpt = typer.Option(None, "--workers", help=_WORKERS_HELP)
StopAfterStepsOpt = typer.Option(None, "--stop-after-steps", help=_STOP_HELP)
LogEveryOpt = typer.Option(
    30.0,
    "--log-every",
    help="When stderr is not a terminal (no progress bar), print a progress line (step, loss, images/s) to it "
    "every N seconds.",
)
ColormapOpt = typer.Option("inferno", "--colormap", help="Matplotlib colormap of the overlays.")
AlphaOpt = typer.Option(0.45, "--alpha", help="Opacity of the heatmap over the image.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder.")
TimeBudgetOpt = typer.Option(
    None,
    "--time-budget",
    help="Wall-clock budget of training and validation, such as 30m or 2h (over resumes): the run ends, keeping "
    "its best epoch, before an epoch that would pass it. The run prints its time estimate after its first steps "
    "and the time left after every epoch either way.",
)
ConfigOpt = typer.Option(
    None,
    "--config",
    help="A run's config.json: rerun it with the options given here changed (--out names the new run).",
)
DropoutOpt = typer.Option(
    None, "--dropout", help="Dropout before the last layer (default: the architecture's)."
)
AuxWeightOpt = typer.Option(
    TrainConfig.aux_weight, "--aux-weight", help="Weight of the auxiliary head's loss (Inception V3)."
)
AuxLogitsOpt = typer.Option(
    None,
    "--aux-logits/--no-aux-logits",
    help="Train the auxiliary head (Inception V3; default: on where the input size allows it, off for segdec).",
)
SyncBnOpt = typer.Option(False, "--sync-bn", help="Synchronise batch norm across torchrun processes.")
StepsPerEpochOpt = typer.Option(
    None,
    "--steps-per-epoch",
    help="Optimiser steps per epoch (default: one pass over the training set). Fixes the step budget, so runs on "
    "training sets of different sizes train equally long.",
)
LabelsRootOpt = typer.Option(
    None, "--labels-root", help="Folder with ClassN/{Train,Test}/Label/Labels.txt for copies without labels."
)
FoldsOpt = typer.Option(
    None,
    "--folds",
    help="K-fold cross-validation: cut the images found (Train and Test pooled) into K seeded, stratified parts.",
)
FoldOpt = typer.Option(
    0, "--fold", help="With --folds: the part held out as test (0..K-1); train/val split the rest."
)
AllowPartialOpt = typer.Option(
    False, "--allow-partial", help="dagm: accept a Labels.txt listing images missing on disk."
)
DataOpt = typer.Option(
    None,
    "--data",
    help="Defect set: its root folder, laid out as --format says (see the README's 'Your data').",
)
_FORMAT_HELP = (
    "Layout of --data: dagm (ClassN/{Train,Test}/Label/Labels.txt), mvtec (<category>/{train,test,ground_truth}), "
    "kolektor (KolektorSDD kosNN/ or KolektorSDD2 train/test), pairs (images + masks by file stem, or anomalib's "
    "--normal-dir/--abnormal-dir/--mask-dir), folder (class folders; --defect-classes or masks beside the images)."
)
FormatOpt = typer.Option(
    None, "--format", help=_FORMAT_HELP + " Default: dagm for finetune and split; the run's own elsewhere."
)
DagmOpt = typer.Option(None, "--dagm", help="Short for --data ROOT --format dagm.")
MasksOpt = typer.Option(
    None, "--masks", help="pairs: folder of masks named after the images (default: beside the images)."
)
MaskSuffixOpt = typer.Option(
    None,
    "--mask-suffix",
    help="pairs: what a mask's file stem adds to its image's (_label, _GT, _mask, '' for none); default: found.",
)
NormalDirOpt = typer.Option(
    None, "--normal-dir", help="pairs, anomalib layout: defect-free images (under --data)."
)
AbnormalDirOpt = typer.Option(
    None, "--abnormal-dir", help="pairs, anomalib layout: defective images (under --data)."
)
MaskDirOpt = typer.Option(None, "--mask-dir", help="pairs, anomalib layout: the defective images' masks.")
DefectClassesOpt = typer.Option(
    None,
    "--defect-classes",
    help="folder: comma-separated class folders that hold defective images (NG,defect).",
)
AllowOverlapOpt = typer.Option(
    False,
    "--allow-overlap",
    help="Score a test fold even when it holds images the run was trained or validated on (matched by file "
    "content), with a warning; refused otherwise.",
)
SkipBadOpt = typer.Option(
    False,
    "--skip-bad",
    help="Skip unreadable images and masks with a warning and a count instead of failing.",
)


def _defect_data(args: dict, default_format: str = "dagm"):
    """The defect set the data options (:func:`_data_args`) name, or None without one (``--dagm ROOT`` is
    ``--data ROOT --format dagm``); checked as every stage config checks it."""
    from transfer.stage_config import DefectSetFields

    return DefectSetFields(**_layout_fields(args)).defect_data(default_format)


def _dagm_shorthand(data, dagm, format):
    """(data, format) with ``--dagm ROOT`` read as ``--data ROOT --format dagm``."""
    from dataonomy.errors import DataonomyError

    if data is not None and dagm is not None:
        raise DataonomyError(
            "--data and --dagm: give one (--dagm ROOT is short for --data ROOT --format dagm)"
        )
    if dagm is not None:
        if format not in (None, "dagm"):
            raise DataonomyError(f"--dagm with --format {format}: --dagm reads the dagm layout; use --data")
        data, format = dagm, "dagm"
    return data, format


def _other_set(model: Path, args: dict):
    """The set a command on a fine-tuned run reads instead of the run's own (None: the run's own); its --format
    defaults to the run's."""
    default_format = "dagm"
    config_path = (model if model.is_dir() else model.parent) / "config.json"
    if args["data"] is not None and args["format"] is None and config_path.is_file():
        import json

        default_format = json.loads(config_path.read_text(encoding="utf-8")).get("format", "dagm")
    return _defect_data(args, default_format)


_DATA_OPTIONS = (
    "data", "dagm", "format", "labels_root", "allow_partial", "masks", "mask_suffix", "normal_dir", "abnormal_dir",
    "mask_dir", "defect_classes",
)  # fmt: skip


def _data_args(params: dict, given: set[str], saved: dict | None) -> dict:
    """:func:`_defect_data`'s arguments from the options; with a --config file, its values for those not given."""
    args = {name: params[name] for name in _DATA_OPTIONS}
    if saved is None:
        return args
    for name in set(_DATA_OPTIONS) - given - {"dagm"}:
        value = saved.get(name)
        args[name] = ",".join(value) if name == "defect_classes" and value is not None else value
    if "dagm" in given:  # --dagm names the set and its layout anew
        args["data"] = params["data"] if "data" in given else None
        args["format"] = params["format"] if "format" in given else None
    return args


def _data_fields(params: dict, given: set[str], saved: dict | None) -> dict:
    """The defect-set fields of a stage config (:data:`transfer.stage_config.DATA_FIELDS`) from the options and a
    --config file's values (:func:`_data_args`); --format stays None where not given (the stage's default)."""
    return _layout_fields(_data_args(params, given, saved))


def _layout_fields(args: dict) -> dict:
    """:func:`_data_args`'s values as the defect-set fields: --dagm read, paths as strings (--data and
    --labels-root resolved; the pairs folders stay relative to --data), --defect-classes as a list."""
    args = dict(args)
    data, format = _dagm_shorthand(args.pop("data"), args.pop("dagm"), args.pop("format"))
    resolved = lambda p: str(Path(p).resolve()) if p is not None else None  # noqa: E731
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in args.items()}
    return fields | {
        "data": resolved(data),
        "format": format,
        "labels_root": resolved(args["labels_root"]),
        "defect_classes": parse_list(args["defect_classes"]),
    }


def _stage_config(ctx: typer.Context, kind: str, convert: dict | None = None, **overrides):
    """A stage's config (:mod:`transfer.stage_config`): the --config file's fields, replaced by the options named
    after fields (every one without a file, those given with one; ``convert`` maps an option's value to its
    field's), the defect-set options, then ``overrides``. The one way every stage command builds its config."""
    from transfer.stage_config import DATA_FIELDS, STAGE_CONFIGS, DefectSetFields, read_stage_config

    cls, convert = STAGE_CONFIGS[kind], convert or {}
    path = ctx.params.get("config")
    saved = read_stage_config(path, kind) if path is not None else None
    options = {}
    for name, value in _field_options(ctx, cls, DATA_FIELDS).items():
        value = str(value) if isinstance(value, Path) else value
        options[name] = convert[name](value) if name in convert and value is not None else value
    fields = with_config(ctx, saved, options)
    if issubclass(cls, DefectSetFields):
        fields.update(_data_fields(ctx.params, _given(ctx), saved))
    return cls(**(fields | overrides))


@app.command("split")
def split_cmd(
    ctx: typer.Context,
    config: Path = typer.Option(
        None,
        "--config",
        help="A split JSON written before (or a split config): redo it with the options given here changed.",
    ),
    data: Path = DataOpt,
    format: str = FormatOpt,
    dagm: Path = DagmOpt,
    out: Path = typer.Option(..., "--out", help="JSON file to write with the train/val/test file lists."),
    classes: str = typer.Option(
        None,
        "--classes",
        help="Comma-separated classes (DAGM: 1,3 or Class1,Class3; MVTec: categories); default all.",
    ),
    val_fraction: float = typer.Option(
        0.2, "--val-fraction", help="Share of the training images held out for validation."
    ),
    test_fraction: float = typer.Option(
        0.0,
        "--test-fraction",
        help="Carve a test fold from the images found (for sets without their own test split).",
    ),
    folds: int = FoldsOpt,
    fold: int = FoldOpt,
    split_seed: int = typer.Option(
        0, "--split-seed", help="Seed of the stratified split (as finetune's --split-seed: the same folds)."
    ),
    # The old name, hidden: scripts written with it still run.
    old_seed: int = typer.Option(
        None, "--seed", hidden=True, help="Old name of --split-seed (still accepted)."
    ),
    labels_root: Path = LabelsRootOpt,
    allow_partial: bool = AllowPartialOpt,
    masks: Path = MasksOpt,
    mask_suffix: str = MaskSuffixOpt,
    normal_dir: Path = NormalDirOpt,
    abnormal_dir: Path = AbnormalDirOpt,
    mask_dir: Path = MaskDirOpt,
    defect_classes: str = DefectClassesOpt,
):
    """Write the seeded, stratified train/validation(/test) split of a defect set that fine-tuning uses.

    With --config, the saved split's fields are the defaults and the options given here change them."""
    from transfer.split import write_split

    check_output_file(out, "--out")
    seed = {"split_seed": old_option_name(ctx, "split_seed", "old_seed")} if old_seed is not None else {}
    write_split(_stage_config(ctx, "split", {"classes": parse_list}, **seed), out, log=typer.echo)


# --------------------------------------------------------------------------------------------------------------
# pretrain / finetune / evaluate / export
# --------------------------------------------------------------------------------------------------------------


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work, an output file path that names a folder or lies under a file."""
    from dataonomy.errors import DataonomyError

    path = Path(path)
    if path.is_dir():
        raise DataonomyError(f"{option} {path}: is a folder; name the file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataonomyError(f"{option} {path}: {parent} is a file, not a folder")
            break


_given = given_options


def _field_options(ctx: typer.Context, config_cls, special: tuple[str, ...]) -> dict:
    """The options named after a field of ``config_cls``, but the ``special`` ones the command converts itself."""
    from dataclasses import fields

    names = {f.name for f in fields(config_cls)} - set(special)
    return {k: v for k, v in ctx.params.items() if k in names}


def _triple(value: str | None, option: str) -> tuple[float, float, float] | None:
    """``"0.5,0.5,0.5"`` -> three floats (the config checks there are three)."""
    from dataonomy.errors import DataonomyError

    if value is None:
        return None
    try:
        return tuple(float(v) for v in parse_list(value) or [])
    except ValueError:
        raise DataonomyError(f"{option} {value}: give three comma-separated numbers (R,G,B)") from None


def _run_training(config_or_none, out: Path, resume: bool, requested: dict, runtime) -> None:
    from transfer.training import TrainingInterrupted, resume_config, train

    config = resume_config(out, requested) if resume else config_or_none()
    try:
        summary = train(config, out, resume=resume, runtime=runtime)
    except TrainingInterrupted as exc:
        if exc.rank == 0:
            typer.echo(f"interrupted: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if summary.get("status") in ("complete", "stopped early") and summary.get("rank", 0) == 0:
        typer.echo(
            f"{summary['status']}: {summary['epochs']} epochs, best {summary['monitor']} {summary['best']} "
            f"at epoch {summary['best_epoch']}; model {summary['best_model']}"
        )


def _runtime(device, workers, stop_after_steps, log_every=30.0):
    import torch

    from dataonomy.errors import DataonomyError
    from transfer.training import Runtime

    if workers is None:
        workers = 4 if torch.cuda.is_available() else 0
    if log_every is not None and log_every < 0:
        raise DataonomyError(f"--log-every {log_every}: must not be negative")
    return Runtime(device=device, num_workers=workers, stop_after_steps=stop_after_steps, log_every=log_every)


@app.command("pretrain")
def pretrain_cmd(
    ctx: typer.Context,
    config: Path = ConfigOpt,
    manifest: Path = typer.Option(
        None, "--manifest", help="Manifest JSON from `dataonomy select`; its selected classes are trained on."
    ),
    source_root: Path = typer.Option(
        None, "--source-root", help="The ImageNet-style source pool (ILSVRC train folders or Tiny ImageNet)."
    ),
    out: Path = RunOutOpt,
    arch: str = typer.Option("inception_v3", "--arch", help="Architecture (transfer.models registry)."),
    init: str = typer.Option(
        "scratch", "--init", help="Initial weights: scratch, imagenet, or a weights/checkpoint file."
    ),
    epochs: int = typer.Option(_default(PretrainConfig, "epochs"), "--epochs", help="Training epochs."),
    steps_per_epoch: int = StepsPerEpochOpt,
    batch_size: int = typer.Option(
        _default(PretrainConfig, "batch_size"),
        "--batch-size",
        help="Global batch size (divided among torchrun processes).",
    ),
    lr: float = typer.Option(
        None,
        "--lr",
        help="Peak learning rate (SGD). Default 0.1 x batch size / 256 with --init scratch, 10x lower from "
        "trained weights (imagenet or a file); config.json records the value used.",
    ),
    momentum: float = MomentumOpt,
    weight_decay: float = WeightDecayOpt,
    warmup_epochs: float = _warmup_epochs_opt(PretrainConfig),
    label_smoothing: float = _label_smoothing_opt(PretrainConfig),
    image_size: int = typer.Option(
        None, "--image-size", help="Training resolution (default: the architecture's)."
    ),
    mean: str = typer.Option(
        None, "--mean", help="Input normalisation mean R,G,B (default: the architecture's)."
    ),
    std: str = typer.Option(
        None, "--std", help="Input normalisation std R,G,B (default: the architecture's)."
    ),
    dropout: float = DropoutOpt,
    aux_weight: float = AuxWeightOpt,
    aux_logits: bool = AuxLogitsOpt,
    val_fraction: float = typer.Option(
        _default(PretrainConfig, "val_fraction"),
        "--val-fraction",
        help="Share of each class held out for validation when the pool has no val split.",
    ),
    images_per_class: int = typer.Option(
        None,
        "--images-per-class",
        help="Read at most N images per class for training and validation (seeded sample).",
    ),
    patience: int = typer.Option(
        _default(PretrainConfig, "patience"),
        "--patience",
        help="Early stopping: end the run once validation top-1 has not improved for N epochs (--epochs is the "
        "budget). metrics.jsonl records the curve.",
    ),
    augment: bool = typer.Option(
        True, "--augment/--no-augment", help="Random resized crops and flips (off: centre crops)."
    ),
    amp: bool = AmpOpt,
    channels_last: bool = ChannelsLastOpt,
    sync_bn: bool = SyncBnOpt,
    checkpoint_every: int = CheckpointEveryOpt,
    seed: int = typer.Option(0, "--seed", help="Seed of data order, augmentation and initialisation."),
    resume: bool = ResumeOpt,
    device: str = TrainDeviceOpt,
    workers: int = TrainWorkersOpt,
    stop_after_steps: int = StopAfterStepsOpt,
    log_every: float = LogEveryOpt,
    time_budget: str = TimeBudgetOpt,
):
    """Pretrain the base model on exactly the manifest's classes (also under torchrun for several GPUs/nodes).

    With --config, the saved run's fields are the defaults and the options given here change them."""
    from transfer.train_request import TrainRequest, pretrain_fields, pretrain_requested

    options = _field_options(ctx, PretrainConfig, ("manifest", "source_root", "mean", "std", "time_budget"))
    options.update(mean=_triple(mean, "--mean"), std=_triple(std, "--std"))
    options["time_budget"] = parse_duration(time_budget, "--time-budget")
    saved = read_config_file(config, "pretrain") if config is not None else None
    request = TrainRequest(options, _given(ctx), saved)
    requested = pretrain_requested(request, manifest, source_root)
    new_config = lambda: PretrainConfig(**pretrain_fields(request, manifest, source_root))  # noqa: E731
    _run_training(new_config, out, resume, requested, _runtime(device, workers, stop_after_steps, log_every))


@app.command("finetune")
def finetune_cmd(
    ctx: typer.Context,
    config: Path = ConfigOpt,
    base: str = typer.Option(
        None,
        "--base",
        help="Base model: a pretrain run folder or checkpoint, imagenet (ImageNet weights of --arch), or scratch.",
    ),
    data: Path = DataOpt,
    format: str = FormatOpt,
    dagm: Path = DagmOpt,
    out: Path = RunOutOpt,
    classes: str = typer.Option(
        None,
        "--classes",
        help="Comma-separated classes (DAGM: 1,3 or Class1; MVTec: categories); default all.",
    ),
    arch: str = typer.Option(
        None,
        "--arch",
        help="Architecture for --base imagenet/scratch (default inception_v3; else the base's).",
    ),
    epochs: int = typer.Option(_default(FinetuneConfig, "epochs"), "--epochs", help="Most training epochs."),
    steps_per_epoch: int = StepsPerEpochOpt,
    batch_size: int = typer.Option(
        _default(FinetuneConfig, "batch_size"),
        "--batch-size",
        help="Global batch size (divided among processes).",
    ),
    lr: float = typer.Option(_default(FinetuneConfig, "lr"), "--lr", help="Peak learning rate (SGD)."),
    momentum: float = MomentumOpt,
    weight_decay: float = WeightDecayOpt,
    warmup_epochs: float = _warmup_epochs_opt(FinetuneConfig),
    head: str = typer.Option(
        None,
        "--head",
        help="segdec (default): a defect map and an image score from one pass, trained from the masks at native "
        "resolution; probe: the base's trunk frozen and a per-location logistic regression fitted from the masks "
        "in one pass (the fastest detector, and the floor a fine-tune must beat); classify: an image classifier "
        "(the default with --patches).",
    ),
    output_stride: int = typer.Option(
        _default(FinetuneConfig, "output_stride"),
        "--output-stride",
        help="segdec: cut the trunk where its feature map is 1/N of the image (8 or 16; 4 and 32 where the trunk has them).",
    ),
    head_channels: int = typer.Option(
        _default(FinetuneConfig, "head_channels"),
        "--head-channels",
        help="segdec: width of the segmentation head.",
    ),
    crop_size: int = typer.Option(
        None,
        "--crop-size",
        help="segdec: train on random crops of this side (a defective image's crop holds defect pixels); "
        "validation and test see whole images. Default: whole images.",
    ),
    pixel_weighting: str = typer.Option(
        _default(FinetuneConfig, "pixel_weighting"),
        "--pixel-weighting",
        help="segdec: uniform (every mask pixel counts the same) or distance (pixels weigh (distance to the "
        "label's border / its largest)^2, for loose labels such as DAGM's ellipses).",
    ),
    seg_loss_weight: float = typer.Option(
        _default(FinetuneConfig, "seg_loss_weight"),
        "--seg-loss-weight",
        help="segdec: weight of the pixel loss.",
    ),
    image_loss_weight: float = typer.Option(
        _default(FinetuneConfig, "image_loss_weight"),
        "--image-loss-weight",
        help="segdec: weight of the image (decision) loss.",
    ),
    label_smoothing: float = _label_smoothing_opt(FinetuneConfig),
    dropout: float = DropoutOpt,
    aux_weight: float = AuxWeightOpt,
    aux_logits: bool = AuxLogitsOpt,
    image_size: int = typer.Option(
        None,
        "--image-size",
        help="--head segdec: resize each image's longer side to this, keeping its aspect ratio (default: every "
        "image at its own size; a set of mixed sizes is padded per training batch, never stretched). --head "
        "classify: the square input side (default: the architecture's).",
    ),
    val_fraction: float = typer.Option(
        _default(FinetuneConfig, "val_fraction"),
        "--val-fraction",
        help="Share held out for validation (seeded).",
    ),
    test_fraction: float = typer.Option(
        _default(FinetuneConfig, "test_fraction"),
        "--test-fraction",
        help="Carve a test fold from the images found first (for one folder such as Class1/Test).",
    ),
    folds: int = FoldsOpt,
    fold: int = FoldOpt,
    split_seed: int = typer.Option(
        None,
        "--split-seed",
        help="Seed of the train/val/test cut (default --seed): several seeds, same folds.",
    ),
    labels_root: Path = LabelsRootOpt,
    allow_partial: bool = AllowPartialOpt,
    masks: Path = MasksOpt,
    mask_suffix: str = MaskSuffixOpt,
    normal_dir: Path = NormalDirOpt,
    abnormal_dir: Path = AbnormalDirOpt,
    mask_dir: Path = MaskDirOpt,
    defect_classes: str = DefectClassesOpt,
    patches: bool = typer.Option(
        False, "--patches", help="Train on full-resolution patches (for localisation)."
    ),
    patch_size: int = typer.Option(
        _default(FinetuneConfig, "patch_size"), "--patch-size", help="Patch side."
    ),
    patch_stride: int = typer.Option(
        _default(FinetuneConfig, "patch_stride"), "--patch-stride", help="Step between patches."
    ),
    patch_defect_fraction: float = typer.Option(
        _default(FinetuneConfig, "patch_defect_fraction"),
        "--patch-defect-fraction",
        help="A patch is defective when at least this share of its pixels is in the mask.",
    ),
    patience: int = typer.Option(
        _default(FinetuneConfig, "patience"), "--patience", help="Stop after N epochs without improvement."
    ),
    defective_train: int = typer.Option(
        None,
        "--defective-train",
        help="Train on only N of the training fold's defective images (seeded by --split-seed, nested: the 5 "
        "kept are among the 10 kept); every clean image and the validation fold stay. How many defects do you need?",
    ),
    trunk_lr_scale: float = typer.Option(
        None,
        "--trunk-lr-scale",
        help="The base's trunk trains at --lr times this; the new heads at --lr. Default: 1 from scratch, "
        "the measured default from a pretrained base (docs/experiment.md).",
    ),
    monitor: str = typer.Option(
        _default(FinetuneConfig, "monitor"),
        "--monitor",
        help="Validation metric for early stopping: ap, auroc, loss.",
    ),
    threshold_criterion: str = typer.Option(
        _default(FinetuneConfig, "threshold_criterion"),
        "--threshold-criterion",
        help="What the validation threshold maximises: balanced_accuracy or f1.",
    ),
    augment: bool = typer.Option(
        True, "--augment/--no-augment", help="Flips, 90-degree rotations, brightness/contrast, noise."
    ),
    amp: bool = AmpOpt,
    channels_last: bool = ChannelsLastOpt,
    sync_bn: bool = SyncBnOpt,
    checkpoint_every: int = CheckpointEveryOpt,
    seed: int = typer.Option(0, "--seed", help="Seed of the split, data order, augmentation and new head."),
    allow_incomplete_base: bool = typer.Option(
        False,
        "--allow-incomplete-base",
        help="Accept a --base run whose training never finished (killed or stopped part-way); refused otherwise.",
    ),
    resume: bool = ResumeOpt,
    device: str = TrainDeviceOpt,
    workers: int = TrainWorkersOpt,
    stop_after_steps: int = StopAfterStepsOpt,
    log_every: float = LogEveryOpt,
    time_budget: str = TimeBudgetOpt,
    fit_machine: bool = typer.Option(
        True,
        "--fit-machine/--no-fit-machine",
        help="segdec: size the training crop (images larger than 256 px on a CPU, 512 on a GPU, train on crops "
        "of that side) and the batch (what fits in half the free memory, measured on the model) for this machine, "
        "where --crop-size/--batch-size are not given; the chosen values are printed and saved in config.json.",
    ),
):
    """Fine-tune every layer of a base model to find defects in a defect set of any layout (a defect map and an
    image score with --head segdec, the default; an image classifier with --head classify); store the validation
    threshold.

    With --config, the saved run's fields are the defaults and the options given here change them."""
    from transfer.train_request import BaseRequest, TrainRequest, finetune_fields, finetune_requested

    given = _given(ctx)
    saved = read_config_file(config, "finetune") if config is not None else None
    options = _field_options(ctx, FinetuneConfig, ("base", "arch", "classes", "time_budget", *_DATA_OPTIONS))
    options["classes"] = parse_list(classes)
    options["time_budget"] = parse_duration(time_budget, "--time-budget")
    source = _defect_data(_data_args(ctx.params, given, saved))
    request, base_request = (
        TrainRequest(options, given, saved),
        BaseRequest(base, arch, allow_incomplete_base),
    )
    requested = finetune_requested(request, source, base_request)

    def new_config():
        config = FinetuneConfig(**finetune_fields(request, source, base_request))
        if fit_machine and saved is None:  # a --config rerun keeps the sizes it was saved with
            from transfer.sizing import fit_to_machine

            config = fit_to_machine(config, device, given, log=typer.echo)
        return config

    _run_training(new_config, out, resume, requested, _runtime(device, workers, stop_after_steps, log_every))
    _print_threshold(out)


def _print_threshold(out: Path) -> None:
    best = out / "best.pt"
    import os

    if best.is_file() and int(os.environ.get("RANK", "0")) == 0:
        from transfer.checkpoint import read_model_record

        record, _ = read_model_record(best)
        if record.threshold is not None:
            typer.echo(
                f"decision threshold {record.threshold:.4g} ({record.threshold_criterion} on validation, "
                f"epoch {record.epoch})"
            )


def _overlap_line(overlap: dict) -> str:
    """One line on how many evaluated images the run was trained or validated on (matched by content)."""
    if not overlap.get("checked"):
        return f"overlap with the run's training images: not checked ({overlap.get('reason')})"
    return (
        f"overlap with the run's training images (by file content): {overlap['train']} training and "
        f"{overlap['val']} validation images of {overlap['images']}"
    )


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    config: Path = typer.Option(
        None,
        "--config",
        help="An eval_<split>.json written before (or an evaluate config): redo it with the options "
        "given here changed.",
    ),
    model: Path = typer.Option(None, "--model", help="A fine-tuning run folder (or its best.pt); required."),
    data: Path = DataOpt,
    format: str = FormatOpt,
    dagm: Path = DagmOpt,
    labels_root: Path = LabelsRootOpt,
    allow_partial: bool = AllowPartialOpt,
    masks: Path = MasksOpt,
    mask_suffix: str = MaskSuffixOpt,
    normal_dir: Path = NormalDirOpt,
    abnormal_dir: Path = AbnormalDirOpt,
    mask_dir: Path = MaskDirOpt,
    defect_classes: str = DefectClassesOpt,
    split: str = typer.Option(
        "test",
        "--split",
        help="Fold to evaluate: test, val, train, trainval or all (of the run's own set: its own cut; of another "
        "--data set: that set's own split).",
    ),
    skip_bad: bool = SkipBadOpt,
    allow_overlap: bool = AllowOverlapOpt,
    batch_size: int = typer.Option(32, "--batch-size", help="Images (or patches) per forward pass."),
    device: str = typer.Option(
        None, "--device", help="Device (cpu, cuda, cuda:1); default cuda when available."
    ),
    workers: int = typer.Option(0, "--workers", help="Data-loader worker processes."),
    errors: bool = typer.Option(
        True,
        "--errors/--no-errors",
        help="On the run's own copy, also score its training and validation folds: errors side by side with the gaps.",
    ),
    human_error: float = typer.Option(
        None,
        "--human-error",
        help="A person's (or the best known) error rate on this task, e.g. 0.01: adds the avoidable bias "
        "(training error minus it).",
    ),
):
    """Per-group TPR/TNR (DAGM class, MVTec category/type, ...: the paper's Table 1), accuracy, AP, AUROC at the
    stored and the best threshold, and the training / validation / test errors side by side.

    Default data: the run's own set (--data of finetune, in its layout). --data evaluates another set; its
    --format defaults to the run's. With --config, the saved evaluation's fields are the defaults and the
    options given here change them."""
    from transfer.evaluate import evaluate_run

    report = evaluate_run(_stage_config(ctx, "evaluate"), device, workers)
    _print_evaluation(report)


def _print_evaluation(report: dict) -> None:
    from transfer.evaluate import OPTIMISTIC_NOTE, TABLE_COLUMNS
    from transfer.metrics import format_table

    stored = report["stored_threshold"]
    typer.echo(
        f"{report['split']} split of {report['data']} ({report['format']}): at the stored threshold "
        f"{stored['threshold']:.4g} (chosen on validation)"
    )
    typer.echo(_overlap_line(report["overlap"]))
    if report["unit"] != "image":
        typer.echo(
            f"rows count {report['unit']}s, not images: the run's validation fold held one kind of image, so its "
            f"threshold was chosen on the masks' {report['unit']}s (image scores are in the JSON)"
        )
    typer.echo(format_table(stored["rows"], TABLE_COLUMNS))
    typer.echo(f"\nat the best threshold per class ({OPTIMISTIC_NOTE})")
    typer.echo(format_table(report["best_threshold"]["rows"], TABLE_COLUMNS))
    analysis = report.get("error_analysis")
    if analysis:
        typer.echo("\nerror analysis (error = 1 - accuracy at the stored threshold)")
        typer.echo(format_table([analysis], list(analysis)))
    typer.echo(f"\nwrote {report['files']['json']} and {report['files']['pr_curve']}")


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    model: Path = typer.Option(..., "--model", help="A pretrain or fine-tuning run folder (or its best.pt)."),
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file to write (only when the parity check passes)."),
    data: Path = DataOpt,
    format: str = FormatOpt,
    dagm: Path = DagmOpt,
    labels_root: Path = LabelsRootOpt,
    allow_partial: bool = AllowPartialOpt,
    masks: Path = MasksOpt,
    mask_suffix: str = MaskSuffixOpt,
    normal_dir: Path = NormalDirOpt,
    abnormal_dir: Path = AbnormalDirOpt,
    mask_dir: Path = MaskDirOpt,
    defect_classes: str = DefectClassesOpt,
    split: str = typer.Option(
        None, "--split", help="Fold the parity images come from (default: test, or val without a test fold)."
    ),
    images: int = typer.Option(8, "--images", help="Number of real images (or patches) to check parity on."),
    tolerance: float = typer.Option(
        1e-4,
        "--tolerance",
        help="Largest accepted |ONNX - PyTorch| logit difference, relative to max(1, largest |logit|).",
    ),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
    allow_incomplete: bool = typer.Option(
        False,
        "--allow-incomplete",
        help="Export the best model of a run whose training never finished (killed or stopped); refused otherwise.",
    ),
):
    """Export the run's best model to ONNX and check it against PyTorch on real images."""
    from transfer.export import export_run

    check_output_file(onnx, "--onnx")
    source = _other_set(model, _data_args(ctx.params, set(), None))
    result = export_run(model, onnx, source, split, images, tolerance, opset, allow_incomplete)
    typer.echo(
        f"parity on {result['images']} real images: max |logit difference| {result['max_abs_logit_diff']:.3g}, "
        f"max |probability difference| {result['max_abs_prob_diff']:.3g} "
        f"(tolerance {tolerance:g} x logit scale {result['logit_scale']:.3g})"
    )
    typer.echo(f"wrote {result['onnx']}")


# --------------------------------------------------------------------------------------------------------------
# localize / rootcause / stamp (I/O in transfer.localize_run and transfer.rootcause_run)
# --------------------------------------------------------------------------------------------------------------


@app.command("localize")
def localize_cmd(
    ctx: typer.Context,
    config: Path = typer.Option(
        None,
        "--config",
        help="The config.json of an earlier localize output: redo it with the options given here changed.",
    ),
    model: Path = typer.Option(None, "--model", help="A fine-tuning run folder (or its best.pt); required."),
    images: str = typer.Option(
        None,
        "--images",
        help="Image folder, file or glob (quote it) to localise, unlabelled. Default: a fold of the run's set "
        "(or of --data) with its masks.",
    ),
    data: Path = DataOpt,
    format: str = FormatOpt,
    dagm: Path = DagmOpt,
    labels_root: Path = LabelsRootOpt,
    allow_partial: bool = AllowPartialOpt,
    masks: Path = MasksOpt,
    mask_suffix: str = MaskSuffixOpt,
    normal_dir: Path = NormalDirOpt,
    abnormal_dir: Path = AbnormalDirOpt,
    mask_dir: Path = MaskDirOpt,
    defect_classes: str = DefectClassesOpt,
    split: str = typer.Option("test", "--split", help="Fold: test, val, train, trainval or all."),
    skip_bad: bool = SkipBadOpt,
    allow_overlap: bool = AllowOverlapOpt,
    out: Path = typer.Option(
        ..., "--out", help="Output folder: localize.json, heatmaps/*.npy, overlays/*.png, masks/*.png."
    ),
    patch_size: int = typer.Option(
        None,
        "--patch-size",
        help="Patch side in pixels (default: the run's training patch size, for patch-trained runs).",
    ),
    # The old name (finetune says --patch-size), hidden: scripts written with it still run.
    old_patch: int = typer.Option(
        None, "--patch", hidden=True, help="Old name of --patch-size (still accepted)."
    ),
    stride: int = typer.Option(None, "--stride", help="Step between patches (default: half the patch)."),
    mode: str = typer.Option(
        None,
        "--mode",
        "--method",
        help="segmap (segdec runs, the default for them: the model's own defect map, one pass per image); for "
        "classifier runs loop (reference, one patch at a time), batched (their default: same numbers, faster) "
        "or dense (one trunk pass).",
    ),
    threshold: float = typer.Option(
        None, "--threshold", help="Binarisation threshold to use instead of choosing one on validation data."
    ),
    threshold_from: Path = typer.Option(
        None,
        "--threshold-from",
        help="Reuse the threshold of an earlier localize.json (same model, patch, stride and heat kind).",
    ),
    val_limit: int = typer.Option(
        None,
        "--val-limit",
        help="Choose the threshold on a seeded sample of N validation images (default: the whole fold).",
    ),
    limit: int = typer.Option(
        None,
        "--limit",
        help="Localise N images, taken evenly across the groups (defect types, classes; a file's folder for "
        "--images) in a seeded order.",
    ),
    batch_size: int = typer.Option(
        None,
        "--batch-size",
        help="Patches per forward pass (batched mode); default 256 on a GPU, 32 on a CPU.",
    ),
    colormap: str = ColormapOpt,
    alpha: float = AlphaOpt,
    tolerance: float = typer.Option(
        None,
        "--tolerance",
        help="Also score with a pixel tolerance, as crack benchmarks do (e.g. 2): a predicted pixel within that "
        "distance of a defect pixel is right, a defect with half its pixels that near a prediction is found.",
    ),
    overwrite: bool = OverwriteOpt,
    device: str = typer.Option(
        None, "--device", help="Device (cpu, cuda, cuda:1); default cuda when available."
    ),
):
    """Defect localisation: heatmaps, overlays, masks, one box per defect; with masks, P/R/F1, IoU, mean IoU, AR.

    segdec runs map each image in one pass; classifier runs by patches. The threshold is chosen on the run's
    validation fold by maximising the pooled pixel F1, stored in OUT/localize.json, and reused with
    --threshold-from.
    """
    from transfer.localize_run import format_localize_summary, localize_images

    patch = {"patch_size": old_option_name(ctx, "patch_size", "old_patch")} if old_patch is not None else {}
    report = localize_images(_stage_config(ctx, "localize", **patch), out, device=device, overwrite=overwrite)
    typer.echo(format_localize_summary(report))


@app.command("predict")
def predict_cmd(
    ctx: typer.Context,
    config: Path = typer.Option(
        None,
        "--config",
        help="The config.json of an earlier predict output: redo it with the options given here changed.",
    ),
    model: Path = typer.Option(
        None, "--model", help="A segdec fine-tuning run folder (or its best.pt), run with PyTorch."
    ),
    onnx: Path = typer.Option(
        None,
        "--onnx",
        help="An ONNX file written by transfer export, run with ONNX Runtime (instead of --model).",
    ),
    images: str = typer.Option(
        None, "--images", help="Image folder, file or glob (quote it) to score; no labels needed."
    ),
    skip_bad: bool = SkipBadOpt,
    decision_threshold: float = typer.Option(
        None,
        "--decision-threshold",
        help="Image decision threshold on the defect probability (default: the one fine-tuning chose on "
        "validation, stored in the run and in the ONNX file).",
    ),
    threshold: float = typer.Option(
        None,
        "--threshold",
        help="Pixel threshold that binarises the defect map (default: --threshold-from, the ONNX file's, or "
        "chosen on the run's validation fold as transfer localize does).",
    ),
    threshold_from: Path = typer.Option(
        None,
        "--threshold-from",
        help="Reuse the pixel threshold of a localize.json made with the same run (--model only).",
    ),
    val_limit: int = typer.Option(
        None,
        "--val-limit",
        help="Choose the pixel threshold on a seeded sample of N validation images (default: the whole fold).",
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Images of one size per forward pass."),
    write_masks: bool = typer.Option(
        False, "--write-masks", help="Also write each image's binary defect mask (PNG at the image's size)."
    ),
    write_overlays: bool = typer.Option(
        False,
        "--write-overlays",
        help="Also write each image's defect map over it, the defects outlined (PNG).",
    ),
    colormap: str = ColormapOpt,
    alpha: float = AlphaOpt,
    out: Path = typer.Option(
        ..., "--out", help="Output folder: predictions.csv, predict.json, config.json (masks/, overlays/)."
    ),
    overwrite: bool = OverwriteOpt,
    device: str = typer.Option(
        None, "--device", help="Device (cpu, cuda, cuda:1); default cuda when available."
    ),
):
    """Score new images with a segdec run or its ONNX export: predictions.csv with each image's score, decision
    and defects (count, largest area and box).

    Both runtimes read the same raw pixels the same way (the run's resize and normalisation, stored in the ONNX
    file), so they give the same decisions. Unlike localize, no masks are needed or scored.
    """
    from transfer.predict import format_predict_summary, predict_images

    report = predict_images(_stage_config(ctx, "predict"), out, device=device, overwrite=overwrite)
    typer.echo(format_predict_summary(report))


@app.command("rootcause")
def rootcause_cmd(
    ctx: typer.Context,
    config: Path = typer.Option(
        None,
        "--config",
        help="The config.json of an earlier rootcause output: redo it with the options given here changed.",
    ),
    images: str = typer.Option(
        None,
        "--images",
        help="Folder or glob (quote it) of one production run's images, read in natural name order; required.",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: rootcause.json, windows.jsonl, map.npy, map.png, mask.png."
    ),
    window: int = typer.Option(30, "--window", help="Consecutive images per window."),
    stride: int = typer.Option(5, "--stride", help="Step between windows, in images."),
    z_threshold: float = typer.Option(
        5.0, "--z-threshold", help="A common defect stands this many noise sigmas above the map's floor."
    ),
    min_area: int = typer.Option(30, "--min-area", help="Smallest common defect kept, in pixels."),
    window_maps: bool = typer.Option(
        False, "--window-maps", help="Also save every window's map and mask under OUT/windows/."
    ),
    overwrite: bool = OverwriteOpt,
    device: str = typer.Option(None, "--device", help="Device for the gradients and medians (default cpu)."),
    resize: str = typer.Option(
        None,
        "--resize",
        help="Scale every image to W,H (or S for S,S) pixels first: for images of different sizes.",
    ),
    crop: str = typer.Option(
        None,
        "--crop",
        help="Cut the centre W,H (or S) of every image first (before --resize): keeps the pixels.",
    ),
    border: int = typer.Option(
        4,
        "--border",
        help="Leave this many pixels along the frame out of the masks (edges from resizing, padding or tiling sit "
        "at the same place in every image).",
    ),
    skip_bad: bool = SkipBadOpt,
):
    """Common-defect (root-cause) analysis: median-gradient map over a sliding window, mask, verdict, onset.

    The onset is where the fault starts: in the first window that detects a common defect, the first image of the
    run of images that carry it (an index into the images in name order, and its file)."""
    from transfer.rootcause_run import format_window, parse_size, rootcause_stream

    sizes = {name: lambda text, name=name: list(parse_size(text, f"--{name}")) for name in ("resize", "crop")}
    report = rootcause_stream(
        _stage_config(ctx, "rootcause", sizes),
        out,
        device=device,
        overwrite=overwrite,
        on_window=lambda entry: typer.echo(format_window(entry)),
    )
    _print_rootcause(report)


def _print_rootcause(report: dict) -> None:
    verdict = f"common defect: {report['verdict']} (score {report['score']:.1f})"
    if report["onset_image"] is not None:
        verdict += f"; onset: image {report['onset']} ({report['onset_image']})"
    typer.echo(verdict)
    if report.get("warning"):
        typer.echo(f"warning: {report['warning']}")
    typer.echo(f"wrote {report['files']['report']}, windows.jsonl, map.npy, map.png, mask.png")


@app.command("stamp")
def stamp_cmd(
    images: str = typer.Option(..., "--images", help="Folder or glob (quote it) of same-size images."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: images/<name>.png (stamped copies), stamp_mask.png, stamp.json."
    ),
    kind: str = typer.Option(
        "scratch", "--kind", help="scratch (a bright curved line) or blot (a dark blob)."
    ),
    start: int = typer.Option(
        0, "--start", help="First stamped image (0-based, natural name order): the fault's onset."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the stamp's shape and place."),
    strength: float = typer.Option(
        None,
        "--strength",
        help="Scratch: added brightness as a share of the range (default 0.3); blot: opacity (default 0.7).",
    ),
    overwrite: bool = OverwriteOpt,
):
    """Write copies of images with the same synthetic systematic defect from --start on (to try rootcause)."""
    from transfer.rootcause_run import stamp_images

    record = stamp_images(images, out, kind, start, seed, strength, overwrite)
    typer.echo(
        f"stamped a {record['kind']} on images {record['start']}..{record['n_images'] - 1} "
        f"(first: {record['first_stamped']}); wrote {record['images']}/ and {record['mask']}"
    )


def main() -> None:
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
