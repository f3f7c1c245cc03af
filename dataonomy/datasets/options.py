"""Build a reader from CLI options, refusing options the chosen reader does not take."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args

from dataonomy.cli_options import opt, parse_list, same_option
from dataonomy.datasets.registry import get_dataset_reader
from dataonomy.datasets.splits import SplitSpec
from dataonomy.errors import DataonomyError
from dataonomy.option_groups import group

# The flat options readers take grouped: into ``sampling`` (every reader), into ``split`` for a reader
# whose ``split`` takes a SplitSpec (DAGM), into ``folders`` for one that reads anomalib's folder layout
# (pairs). ``seed`` seeds both sampling and split.
SAMPLING_OPTIONS = ("images_per_class", "seed", "skip_bad")
SPLIT_OPTIONS = ("split", "val_fraction", "test_fraction", "folds", "fold", "seed")
FOLDER_OPTIONS = ("normal_dir", "abnormal_dir", "mask_dir")


def _init_parameters(reader: Callable) -> dict[str, inspect.Parameter]:
    """``reader.__init__``'s parameters, with postponed (string) annotations evaluated where they resolve."""
    try:
        return dict(inspect.signature(reader.__init__, eval_str=True).parameters)
    except (NameError, AttributeError, SyntaxError, TypeError):
        # An annotation that does not resolve (a name imported only for type checkers): keep the strings;
        # the reader's ``split`` then counts as a plain value.
        return dict(inspect.signature(reader.__init__).parameters)


def _accepts(annotation: Any, cls: type) -> bool:
    """Whether a parameter annotated ``annotation`` takes a ``cls`` (the class itself, or in a union)."""
    return annotation is cls or cls in get_args(annotation)


def reader_arguments(name: str, reader: Callable, options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``reader`` (registered as ``name``) for ``options``, as users and the CLI give
    them: flat (``images_per_class=5, seed=1, skip_bad=True``, ``split="val", val_fraction=0.25``) or already
    grouped (``sampling=Sampling(...)``, ``split=SplitSpec(...)``).

    ``images_per_class``/``seed``/``skip_bad`` become a :class:`~dataonomy.datasets.base.Sampling`; where the
    reader's ``split`` takes a :class:`~dataonomy.datasets.splits.SplitSpec`, ``split``/``val_fraction``/
    ``test_fraction``/``folds``/``fold``/``seed`` become one (``seed`` seeds both); where it takes
    ``folders``, ``normal_dir``/``abnormal_dir``/``mask_dir`` become an
    :class:`~dataonomy.datasets.pairs.AnomalibFolders`. Other options go to the
    reader as they are. An option the reader does not take is an error naming it (``--x-y is not an option
    of the 'name' reader``), and so is a flat option beside the grouped argument it belongs to.
    """
    # torchvision: loaded with the readers, not with the options
    from dataonomy.datasets.base import Sampling
    from dataonomy.datasets.pairs import AnomalibFolders

    params = _init_parameters(reader)
    groups: dict[str, tuple[type, tuple[str, ...]]] = {}  # argument -> (its class, the flat options it holds)
    if "split" in params and _accepts(params["split"].annotation, SplitSpec):
        # First, so that split errors come before sampling's, as they did.
        groups["split"] = (SplitSpec, SPLIT_OPTIONS)
    if "sampling" in params:
        groups["sampling"] = (Sampling, SAMPLING_OPTIONS)
    if "folders" in params and _accepts(params["folders"].annotation, AnomalibFolders):
        groups["folders"] = (AnomalibFolders, FOLDER_OPTIONS)
    built = {g: options[g] for g, (cls, _) in groups.items() if isinstance(options.get(g), cls)}
    flat: dict[str, dict[str, Any]] = {g: {} for g in groups if g not in built}
    kwargs: dict[str, Any] = dict(built)
    for key, value in options.items():
        if key in built:
            continue
        owners = [g for g in flat if key in groups[g][1]]
        if owners:
            for g in owners:
                flat[g][key] = value
        elif key in params:
            kwargs[key] = value
        else:
            holder = next((g for g in built if key in groups[g][1]), None)
            if holder is not None:
                raise DataonomyError(
                    f"{key}={value!r} and {holder}={built[holder]!r}: give {key} inside {holder}"
                )
            raise DataonomyError(f"--{key.replace('_', '-')} is not an option of the '{name}' reader")
    for g, values in flat.items():
        if values:
            kwargs[g] = groups[g][0](**values)
    return kwargs


def get_dataset(name: str, root, **options):
    """Build the reader registered as ``name`` on ``root``. ``options`` are its constructor's arguments or the
    flat options the CLI gives (``images_per_class=5, seed=1``, ``split="val", val_fraction=0.25``), mapped by
    :func:`reader_arguments`; an option the reader does not take is an error."""
    reader = get_dataset_reader(name)
    return reader(root, **reader_arguments(name, reader, options))


def open_dataset(name: str, root, **options: Any):
    """``get_dataset(name, root, **options)`` where options left at None (or False) are dropped.

    Options are flat, as the CLI gives them (see :func:`reader_arguments`). An option set by the user that
    the reader does not accept is an error naming the option, rather than being silently ignored.
    """
    return get_dataset(name, root, **{k: v for k, v in options.items() if v is not None and v is not False})


@dataclass(kw_only=True)
class DefectLayout:
    """A defect set's layout options, one field per ``--data`` option, as every reader of a defect set (the
    fine-tuning config, the stage configs, ``transfer.data.DefectData``) names them.

    ``labels_root``/``allow_partial`` are the ``dagm`` reader's; ``masks``, ``mask_suffix``, ``normal_dir``,
    ``abnormal_dir``, ``mask_dir`` the ``pairs`` reader's; ``defect_classes`` the ``folder`` reader's (which
    class folders hold defective images). Options another layout does not take are refused by name.
    """

    labels_root: str | None = opt(
        None,
        "dagm: folder with ClassN/{Train,Test}/Label/Labels.txt for copies without labels.",
        type=Path,
        panel="Data layout",
    )
    allow_partial: bool = opt(
        False, "dagm: accept a Labels.txt listing images missing on disk.", panel="Data layout"
    )
    masks: str | None = opt(
        None,
        "pairs: folder of masks named after the images (the set's root is the images folder; default: masks "
        "beside the images; a relative folder is looked up under the root first).",
        type=Path,
        panel="Data layout",
    )
    mask_suffix: str | None = opt(
        None,
        "pairs: what a mask's file stem adds to its image's (_label, _GT, _mask, or '' for the same stem); "
        "default: found from the files.",
        panel="Data layout",
    )
    normal_dir: str | None = opt(
        None,
        "pairs, anomalib layout: folder of defect-free images (under the set's root).",
        type=Path,
        panel="Data layout",
    )
    abnormal_dir: str | None = opt(
        None,
        "pairs, anomalib layout: folder of defective images (under the set's root).",
        type=Path,
        panel="Data layout",
    )
    mask_dir: str | None = opt(
        None, "pairs, anomalib layout: folder of the defective images' masks.", type=Path, panel="Data layout"
    )
    defect_classes: list[str] | tuple[str, ...] | None = opt(
        None,
        "folder: comma-separated class folders that hold defective images (NG,defect).",
        parse=parse_list,
        panel="Data layout",
    )

    def layout_options(self) -> dict:
        """The layout options set (not None, not False), as the reader's keyword arguments."""
        out = {f.name: getattr(self, f.name) for f in fields(DefectLayout)}
        if self.defect_classes is not None:
            out["defect_classes"] = list(self.defect_classes)
        return {k: v for k, v in out.items() if v is not None and v is not False}


LAYOUT_FIELDS = tuple(f.name for f in fields(DefectLayout))

FORMAT_HELP = (
    "Layout of --data: dagm (ClassN/{Train,Test}/Label/Labels.txt), mvtec (<category>/{train,test,ground_truth}), "
    "kolektor (KolektorSDD kosNN/ or KolektorSDD2 train/test), pairs (images + masks by file stem, or anomalib's "
    "--normal-dir/--abnormal-dir/--mask-dir), folder (class folders; --defect-classes or masks beside the images)."
)


@dataclass(kw_only=True)
class DefectSetOptions:
    """A defect set as the commands name it: ``--data ROOT --format F`` and the layout's options, the group
    ``layout`` (None: the command's default set; ``format`` None: the command's default layout)."""

    data: str | None = opt(
        None,
        "Defect set: its root folder, laid out as --format says (see the README's 'Your data').",
        type=Path,
    )
    format: str | None = opt(
        None,
        FORMAT_HELP + " Default: dagm for finetune and split; the run's own elsewhere.",
        option_default=None,
    )
    layout: DefectLayout = group(DefectLayout)


@dataclass(frozen=True)
class ReaderOptions:
    """The dataset options a command can set. ``masks``, ``mask_suffix``, ``normal_dir``, ``abnormal_dir`` and
    ``mask_dir`` are the ``pairs`` reader's."""

    classes: list[str] | None = opt(
        None,
        "Comma-separated classes to read (DAGM: 1,3 or Class1,Class3; ImageNet: wnids; MVTec: categories).",
        parse=parse_list,
    )
    split: str | None = opt(
        None, "DAGM: all|train|val|trainval|test; ImageNet: train|val; MVTec, Kolektor(SDD2): all|train|test."
    )
    images_per_class: int | None = opt(None, "Sample at most N images per class (seeded).")
    seed: int = opt(0, "Seed for sampling and train/validation splits.")
    labels_root: Any = same_option(DefectLayout, "labels_root", None)
    allow_partial: bool = same_option(DefectLayout, "allow_partial", False)
    skip_bad: bool = opt(
        False,
        "Decode every file first; skip bad ones with a warning instead of failing.",
        panel="Data layout",
    )
    masks: Any = same_option(DefectLayout, "masks", None)
    mask_suffix: str | None = same_option(DefectLayout, "mask_suffix", None)
    normal_dir: Any = same_option(DefectLayout, "normal_dir", None)
    abnormal_dir: Any = same_option(DefectLayout, "abnormal_dir", None)
    mask_dir: Any = same_option(DefectLayout, "mask_dir", None)

    def as_dict(self) -> dict[str, Any]:
        """Options left unset are dropped, and so is ``seed`` unless something uses it (sampling, or a seeded
        train/val split): an unused seed must not change a feature cache's identity (an empty ``mask_suffix`` is
        kept: it means masks named exactly as their images)."""
        seeded = bool(self.images_per_class) or self.split in ("train", "val")
        options = {f.name: getattr(self, f.name) for f in fields(self)}
        options["seed"] = self.seed if seeded else None
        return {k: v for k, v in options.items() if v is not None and v is not False}


def reader_options(**options: Any) -> dict[str, Any]:
    """The dataset options a command sets (:class:`ReaderOptions`' fields, by keyword), for :func:`open_dataset`
    and feature-cache provenance: see :meth:`ReaderOptions.as_dict`."""
    return ReaderOptions(**options).as_dict()
