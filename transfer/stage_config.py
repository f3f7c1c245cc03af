"""Configs of the stages that read a fine-tuned run or a defect set: split, evaluate, localize, predict,
rootcause.

One dataclass per stage, its fields the stage's parameters that shape the result, checked in ``__post_init__``
(one-line :class:`DataonomyError` messages naming the option). Where and how a stage runs (output folder,
device, workers, overwrite) are runtime arguments, not fields. Each stage saves its config beside its outputs
(``config.json`` in localize's and rootcause's folders; a ``config`` entry in split's JSON and in evaluate's
``eval_<split>.json``), and ``--config FILE`` reads it back (:func:`read_stage_config`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from dataonomy.datasets.options import LAYOUT_FIELDS, DefectLayout
from dataonomy.datasets.splits import SPLITS
from dataonomy.errors import DataonomyError


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
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the config as JSON, atomically."""
        from dataonomy.io import write_json

        return write_json(path, self.to_dict())


# The defect set's fields (named after the --data options), shared by the stages that read one.
DATA_FIELDS = ("data", "format", *LAYOUT_FIELDS)


@dataclass(kw_only=True)
class DefectSetFields(DefectLayout, StageConfig):
    """A defect set as ``--data ROOT --format F`` and the layout's options name it (None: the run's own set;
    ``format`` None: dagm for split, the run's own layout elsewhere)."""

    data: str | None = None
    format: str | None = None

    def __post_init__(self):
        if self.data is None:
            given = [n for n in DATA_FIELDS[1:] if getattr(self, n) not in (None, False)]
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
    values = {n: getattr(fields, n) for n in LAYOUT_FIELDS}
    return DefectData(root=fields.data, format=fields.format or default_format, **values)


@dataclass(kw_only=True)
class SplitConfig(DefectSetFields):
    """``transfer split``: the seeded, stratified train/val(/test) cut of a defect set that fine-tuning uses."""

    kind: str = "split"
    classes: list[str] | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    folds: int | None = None
    fold: int = 0
    split_seed: int = 0  # named as finetune's --split-seed, which cuts the same folds

    def __post_init__(self):
        if self.data is None:
            raise DataonomyError("--data (or --dagm): which defect set to split")
        self.format = self.format or "dagm"
        super().__post_init__()
        self.split_spec("train")  # options that cannot be honoured are refused here

    def split_spec(self, split: str):
        """Fold ``split`` of this cut, as the readers take it (:class:`dataonomy.datasets.SplitSpec`)."""
        from dataonomy.datasets.splits import SplitSpec

        return SplitSpec(split, self.val_fraction, self.test_fraction, self.folds, self.fold, self.split_seed)


@dataclass(kw_only=True)
class EvaluateConfig(DefectSetFields):
    """``transfer evaluate``: score ``split`` of the run's own set (or of ``data``) with the run ``model``."""

    kind: str = "evaluate"
    model: str
    split: str = "test"
    skip_bad: bool = False
    allow_overlap: bool = False
    batch_size: int = 32
    errors: bool = True
    human_error: float | None = None

    def __post_init__(self):
        _need_model(self)
        super().__post_init__()
        _check_split(self.split)
        _at_least(self.batch_size, 1, "--batch-size")
        if self.human_error is not None and not 0 <= self.human_error <= 1:
            raise DataonomyError(f"--human-error {self.human_error}: must be in [0, 1] (an error rate)")


@dataclass(kw_only=True)
class LocalizeConfig(DefectSetFields):
    """``transfer localize``: defect heatmaps, masks and boxes of ``images`` (or a fold) with the run ``model``;
    see :mod:`transfer.localize_run` for the threshold's origin (``threshold``, ``threshold_from``, validation)."""

    kind: str = "localize"
    model: str
    images: str | list[str] | None = None
    split: str = "test"
    skip_bad: bool = False
    allow_overlap: bool = False
    patch_size: int | None = None
    stride: int | None = None
    mode: str | None = None
    threshold: float | None = None
    threshold_from: str | None = None
    val_limit: int | None = None
    limit: int | None = None
    batch_size: int | None = None
    colormap: str = "inferno"
    alpha: float = 0.45
    tolerance: float | None = None

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
    model: str | None = None
    onnx: str | None = None
    images: str | list[str] | None = None
    skip_bad: bool = False
    decision_threshold: float | None = None
    threshold: float | None = None
    threshold_from: str | None = None
    val_limit: int | None = None
    batch_size: int = 8
    write_masks: bool = False
    write_overlays: bool = False
    colormap: str = "inferno"
    alpha: float = 0.45

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
    images: str | list[str]
    window: int = 30
    stride: int = 5
    z_threshold: float = 5.0
    min_area: int = 30
    window_maps: bool = False
    resize: list[int] | None = None
    crop: list[int] | None = None
    border: int = 4
    skip_bad: bool = False

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
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
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
