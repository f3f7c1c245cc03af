"""Configs of the stages that read a fine-tuned run or a defect set: split, evaluate, localize, predict,
rootcause.

One dataclass per stage, its fields the stage's parameters that shape the result, checked in ``__post_init__``
(one-line :class:`DataonomyError` messages naming the option). Where and how a stage runs (output folder,
device, workers, overwrite) are runtime arguments, not fields. Each stage saves its config beside its outputs
(``config.json`` in localize's and rootcause's folders; a ``config`` entry in split's JSON and in evaluate's
``eval_<split>.json``), and ``--config FILE`` reads it back (:func:`read_stage_config`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from dataonomy.cli_options import opt, parse_size
from dataonomy.datasets.options import LAYOUT_FIELDS, DefectLayout, DefectSetOptions
from dataonomy.datasets.splits import SPLITS, SplitOptions
from dataonomy.errors import DataonomyError
from dataonomy.option_groups import flat_names, group, grouped, to_flat

# Help texts several stages share.
_MODEL_HELP = "A fine-tuning run folder (or its best.pt); required."
_SKIP_BAD_HELP = "Skip unreadable images and masks with a warning and a count instead of failing."
_ALLOW_OVERLAP_HELP = (
    "Score a test fold even when it holds images the run was trained or validated on (matched by file content), "
    "with a warning; refused otherwise."
)
_COLORMAP_HELP = "Matplotlib colormap of the overlays."
_ALPHA_HELP = "Opacity of the heatmap over the image."


def _at_least(value, least, option: str) -> None:
    if value is not None and value < least:
        raise DataonomyError(f"{option} {value}: must be at least {least}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataonomyError(f"--split '{split}': must be one of {', '.join(SPLITS)}")


def _image_spec(images):
    """A folder, file or glob as a string, or a list of files as strings (None stays None)."""
    if images is None or isinstance(images, str | Path):
        return None if images is None else str(images)
    return [str(p) for p in images]


def _check_drawing(colormap: str, alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise DataonomyError(f"--alpha {alpha}: must be in [0, 1]")
    from matplotlib import colormaps

    if colormap not in colormaps:
        raise DataonomyError(f"--colormap '{colormap}': not a matplotlib colormap (try inferno or jet)")


def _need_model(config) -> None:
    if config.model is None:
        raise DataonomyError(
            f"--model: which fine-tuned run to {config.kind} with (a run folder or its best.pt)"
        )


@dataclass(kw_only=True)
class StageConfig:
    """What every stage config shares: its ``kind`` (the command) and its JSON form."""

    kind: str = ""

    def to_dict(self) -> dict:
        """The config as it is saved: flat, one name per option (option groups spliced in)."""
        return to_flat(self)

    def save(self, path: str | Path) -> Path:
        """Write the config as JSON, atomically."""
        from dataonomy.io import write_json

        return write_json(path, self.to_dict())


# The defect set's fields (named after the --data options), shared by the stages that read one.
DATA_FIELDS = ("data", "format", *LAYOUT_FIELDS)


@grouped
@dataclass(kw_only=True)
class DefectSetFields(DefectSetOptions, StageConfig):
    """A defect set as ``--data ROOT --format F`` and the layout's options name it (None: the run's own set;
    ``format`` None: dagm for split, the run's own layout elsewhere)."""

    def __post_init__(self):
        if self.data is None:
            values = to_flat(self)
            given = [n for n in DATA_FIELDS[1:] if values[n] not in (None, False)]
            if given:
                raise DataonomyError(
                    f"--{given[0].replace('_', '-')}: describes the --data set; give --data (or --dagm) with it"
                )
        else:
            self.defect_data("dagm")  # an unknown --format is refused here

    def defect_data(self, default_format: str = "dagm"):
        """The set as a :class:`transfer.data.DefectData`, or None for the run's own."""
        return defect_set(self, default_format)


def defect_set(fields, default_format: str = "dagm"):
    """The :class:`transfer.data.DefectData` that a config's defect-set fields (:data:`DATA_FIELDS`: a stage
    config's or a fine-tuning run's) name, or None where ``data`` is None."""
    from transfer.data import DefectData

    if fields.data is None:
        return None
    return DefectData(root=fields.data, format=fields.format or default_format, **asdict(fields.layout))


@dataclass(kw_only=True)
class SplitCut(SplitOptions):
    """The split options of ``transfer split``: finetune's, with a seed of their own (no --seed to default to)."""

    # Named as finetune's --split-seed, which cuts the same folds.
    split_seed: int = opt(
        0, "Seed of the stratified split (as finetune's --split-seed: the same folds).", panel="Split"
    )


@grouped
@dataclass(kw_only=True)
class SplitConfig(DefectSetFields):
    """``transfer split``: the seeded, stratified train/val(/test) cut of a defect set that fine-tuning uses."""

    kind: str = "split"
    split: SplitCut = group(SplitCut)

    def __post_init__(self):
        if self.data is None:
            raise DataonomyError("--data (or --dagm): which defect set to split")
        self.format = self.format or "dagm"
        super().__post_init__()
        self.split_spec("train")  # options that cannot be honoured are refused here

    def split_spec(self, split: str):
        """Fold ``split`` of this cut, as the readers take it (:class:`dataonomy.datasets.SplitSpec`)."""
        return self.split.spec(split)


@grouped
@dataclass(kw_only=True)
class EvaluateConfig(DefectSetFields):
    """``transfer evaluate``: score ``split`` of the run's own set (or of ``data``) with the run ``model``."""

    kind: str = "evaluate"
    model: str = opt(help=_MODEL_HELP, type=Path, option_default=None)
    split: str = opt(
        "test",
        "Fold to evaluate: test, val, train, trainval or all (of the run's own set: its own cut; of another "
        "--data set: that set's own split).",
    )
    skip_bad: bool = opt(False, _SKIP_BAD_HELP)
    allow_overlap: bool = opt(False, _ALLOW_OVERLAP_HELP)
    batch_size: int = opt(32, "Images (or patches) per forward pass.")
    errors: bool = opt(
        True,
        "On the run's own copy, also score its training and validation folds: errors side by side with the gaps.",
    )
    human_error: float | None = opt(
        None,
        "A person's (or the best known) error rate on this task, e.g. 0.01: adds the avoidable bias (training "
        "error minus it).",
    )

    def __post_init__(self):
        _need_model(self)
        super().__post_init__()
        _check_split(self.split)
        _at_least(self.batch_size, 1, "--batch-size")
        if self.human_error is not None and not 0 <= self.human_error <= 1:
            raise DataonomyError(f"--human-error {self.human_error}: must be in [0, 1] (an error rate)")


@grouped
@dataclass(kw_only=True)
class LocalizeConfig(DefectSetFields):
    """``transfer localize``: defect heatmaps, masks and boxes of ``images`` (or a fold) with the run ``model``;
    see :mod:`transfer.localize_run` for the threshold's origin (``threshold``, ``threshold_from``, validation)."""

    kind: str = "localize"
    model: str = opt(help=_MODEL_HELP, type=Path, option_default=None)
    images: str | list[str] | None = opt(
        None,
        "Image folder, file or glob (quote it) to localise, unlabelled. Default: a fold of the run's set (or of "
        "--data) with its masks.",
        type=str,
    )
    split: str = opt("test", "Fold: test, val, train, trainval or all.")
    skip_bad: bool = opt(False, _SKIP_BAD_HELP)
    allow_overlap: bool = opt(False, _ALLOW_OVERLAP_HELP)
    patch_size: int | None = opt(
        None, "Patch side in pixels (default: the run's training patch size, for patch-trained runs)."
    )
    stride: int | None = opt(None, "Step between patches (default: half the patch).")
    mode: str | None = opt(
        None,
        "segmap (segdec runs, the default for them: the model's own defect map, one pass per image); for "
        "classifier runs loop (reference, one patch at a time), batched (their default: same numbers, faster) "
        "or dense (one trunk pass).",
        flag="--mode --method",
    )
    threshold: float | None = opt(
        None, "Binarisation threshold to use instead of choosing one on validation data."
    )
    threshold_from: str | None = opt(
        None,
        "Reuse the threshold of an earlier localize.json (same model, patch, stride and heat kind).",
        type=Path,
    )
    val_limit: int | None = opt(
        None, "Choose the threshold on a seeded sample of N validation images (default: the whole fold)."
    )
    limit: int | None = opt(
        None,
        "Localise N images, taken evenly across the groups (defect types, classes; a file's folder for "
        "--images) in a seeded order.",
    )
    batch_size: int | None = opt(
        None, "Patches per forward pass (batched mode); default 256 on a GPU, 32 on a CPU."
    )
    colormap: str = opt("inferno", _COLORMAP_HELP)
    alpha: float = opt(0.45, _ALPHA_HELP)
    tolerance: float | None = opt(
        None,
        "Also score with a pixel tolerance, as crack benchmarks do (e.g. 2): a predicted pixel within that "
        "distance of a defect pixel is right, a defect with half its pixels that near a prediction is found.",
    )

    def __post_init__(self):
        _need_model(self)
        super().__post_init__()
        if self.images is not None and self.data is not None:
            raise DataonomyError("--images and --data: give one of them, not both")
        self.images = _image_spec(self.images)
        _check_split(self.split)
        _check_drawing(self.colormap, self.alpha)
        if self.threshold is not None and self.threshold_from is not None:
            raise DataonomyError("--threshold and --threshold-from: give one of them, not both")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise DataonomyError(f"--threshold {self.threshold}: must be in [0, 1] (a defect probability)")
        for name in ("patch_size", "stride", "val_limit", "limit", "batch_size"):
            _at_least(getattr(self, name), 1, "--" + name.replace("_", "-"))
        _at_least(self.tolerance, 0, "--tolerance")


@dataclass(kw_only=True)
class PredictConfig(StageConfig):
    """``transfer predict``: decisions and defects of unlabelled ``images`` with the run ``model`` or the export
    ``onnx``; see :mod:`transfer.predict` for where both thresholds come from."""

    kind: str = "predict"
    model: str | None = opt(
        None, "A segdec fine-tuning run folder (or its best.pt), run with PyTorch.", type=Path
    )
    onnx: str | None = opt(
        None,
        "An ONNX file written by transfer export, run with ONNX Runtime (instead of --model).",
        type=Path,
    )
    images: str | list[str] | None = opt(
        None, "Image folder, file or glob (quote it) to score; no labels needed.", type=str
    )
    skip_bad: bool = opt(False, _SKIP_BAD_HELP)
    decision_threshold: float | None = opt(
        None,
        "Image decision threshold on the defect probability (default: the one fine-tuning chose on validation, "
        "stored in the run and in the ONNX file).",
    )
    threshold: float | None = opt(
        None,
        "Pixel threshold that binarises the defect map (default: --threshold-from, the ONNX file's, or chosen on "
        "the run's validation fold as transfer localize does).",
    )
    threshold_from: str | None = opt(
        None, "Reuse the pixel threshold of a localize.json made with the same run (--model only).", type=Path
    )
    val_limit: int | None = opt(
        None,
        "Choose the pixel threshold on a seeded sample of N validation images (default: the whole fold).",
    )
    batch_size: int = opt(8, "Images of one size per forward pass.")
    write_masks: bool = opt(False, "Also write each image's binary defect mask (PNG at the image's size).")
    write_overlays: bool = opt(
        False, "Also write each image's defect map over it, the defects outlined (PNG)."
    )
    colormap: str = opt("inferno", _COLORMAP_HELP)
    alpha: float = opt(0.45, _ALPHA_HELP)

    def __post_init__(self):
        if (self.model is None) == (self.onnx is None):
            raise DataonomyError(
                "--model or --onnx: which model to predict with (a run folder or its best.pt, or an ONNX "
                "file from transfer export); give one of them"
            )
        if self.images is None:
            raise DataonomyError("--images: which images to score (a folder, a file or a glob)")
        self.images = _image_spec(self.images)
        for name in ("decision_threshold", "threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                option = "--" + name.replace("_", "-")
                raise DataonomyError(f"{option} {value}: must be in [0, 1] (a defect probability)")
        if self.threshold is not None and self.threshold_from is not None:
            raise DataonomyError("--threshold and --threshold-from: give one of them, not both")
        _check_drawing(self.colormap, self.alpha)
        for name in ("val_limit", "batch_size"):
            _at_least(getattr(self, name), 1, "--" + name.replace("_", "-"))


@dataclass(kw_only=True)
class RootcauseConfig(StageConfig):
    """``transfer rootcause``: the common-defect analysis of ``images`` (see :mod:`transfer.rootcause_run`);
    ``resize``/``crop`` are (width, height)."""

    kind: str = "rootcause"
    images: str | list[str] = opt(
        help="Folder or glob (quote it) of one production run's images, read in natural name order; required.",
        type=str,
        option_default=None,
    )
    window: int = opt(30, "Consecutive images per window.")
    stride: int = opt(5, "Step between windows, in images.")
    z_threshold: float = opt(5.0, "A common defect stands this many noise sigmas above the map's floor.")
    min_area: int = opt(30, "Smallest common defect kept, in pixels.")
    window_maps: bool = opt(False, "Also save every window's map and mask under OUT/windows/.")
    resize: list[int] | None = opt(
        None,
        "Scale every image to W,H (or S for S,S) pixels first: for images of different sizes.",
        parse=lambda text, flag: list(parse_size(text, flag)),
    )
    crop: list[int] | None = opt(
        None,
        "Cut the centre W,H (or S) of every image first (before --resize): keeps the pixels.",
        parse=lambda text, flag: list(parse_size(text, flag)),
    )
    border: int = opt(
        4,
        "Leave this many pixels along the frame out of the masks (edges from resizing, padding or tiling sit at "
        "the same place in every image).",
    )
    skip_bad: bool = opt(False, _SKIP_BAD_HELP)

    def __post_init__(self):
        if self.images is None:
            raise DataonomyError("--images: which production run's images to analyse (a folder or a glob)")
        self.images = _image_spec(self.images)
        _at_least(self.window, 3, "--window")
        _at_least(self.stride, 1, "--stride")
        _at_least(self.min_area, 1, "--min-area")
        _at_least(self.border, 0, "--border")
        for name in ("resize", "crop"):
            size = getattr(self, name)
            if size is not None and (len(size) != 2 or min(size) < 8):
                raise DataonomyError(f"--{name} {size}: give one side or width,height in pixels (at least 8)")
            if size is not None:
                setattr(self, name, [int(v) for v in size])


STAGE_CONFIGS = {"split": SplitConfig, "evaluate": EvaluateConfig, "localize": LocalizeConfig,
                 "predict": PredictConfig, "rootcause": RootcauseConfig}  # fmt: skip

# Each stage command has one option per config field, named after it, except for the fields below; options
# without a field only say where and how the stage runs (--config only supplies the fields), and --dagm is
# short for the --data and --format fields. tests/test_config_cli.py holds the commands to these lists.
STAGE_DERIVED_FIELDS = {kind: {"kind": "the command"} for kind in STAGE_CONFIGS}
STAGE_RUN_OPTIONS = {
    "split": ("out", "config", "dagm", "old_seed"),
    "evaluate": ("config", "dagm", "device", "workers"),
    "localize": ("out", "config", "dagm", "device", "overwrite", "old_patch"),
    "predict": ("out", "config", "device", "overwrite"),
    "rootcause": ("out", "config", "device", "overwrite"),
}


# Fields renamed since configs were first saved: kind -> {old name: new name}.
LEGACY_FIELDS = {"split": {"seed": "split_seed"}}


def read_stage_config(path: str | Path, kind: str) -> dict:
    """The fields (kind left out) of the ``kind`` config saved in ``path``: a bare config (localize's and
    rootcause's ``config.json``) or a file holding one under ``config`` (split's JSON, ``eval_<split>.json``),
    checked by building it; any problem is a one-line error naming the file."""
    from dataonomy.io import check_field_types, read_config_json

    where = f"--config {path}"
    data = read_config_json(path)
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    found = data.get("kind") if isinstance(data, dict) else None
    if found != kind:
        raise DataonomyError(
            f"{where}: a {found or 'unknown'} config; `transfer {kind}` takes a {kind} config"
        )
    cls = STAGE_CONFIGS[kind]
    for old, new in LEGACY_FIELDS.get(kind, {}).items():  # configs saved before a field was renamed
        if old in data and new not in data:
            data[new] = data.pop(old)
    unknown = sorted(set(data) - set(flat_names(cls)))
    if unknown:
        raise DataonomyError(f"{where}: unknown config field(s) {', '.join(unknown)}")
    check_field_types(cls, data, where)
    try:
        cls(**data)
    except TypeError as exc:
        raise DataonomyError(f"{where}: incomplete config ({exc})") from None
    return {k: v for k, v in data.items() if k != "kind"}


__all__ = [
    "DATA_FIELDS",
    "LAYOUT_FIELDS",
    "DefectLayout",
    "STAGE_CONFIGS",
    "STAGE_DERIVED_FIELDS",
    "STAGE_RUN_OPTIONS",
    "DefectSetFields",
    "EvaluateConfig",
    "LocalizeConfig",
    "PredictConfig",
    "RootcauseConfig",
    "SplitConfig",
    "StageConfig",
    "defect_set",
    "read_stage_config",
]
