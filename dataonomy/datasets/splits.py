"""Train / validation / test folds of a labelled defect set, the same for every reader.

:func:`split_samples` cuts a reader's samples the way fine-tuning, evaluation and export read them: from the
dataset's own train/test split where it has one, else (or with ``test_fraction`` / ``folds``) from seeded,
stratified parts of every image found. Pure: it takes samples (through a ``read`` function) and returns samples.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dataonomy.cli_options import opt, parse_list
from dataonomy.errors import DataonomyError

if TYPE_CHECKING:
    from dataonomy.datasets.base import Sample

SPLITS = ("all", "train", "val", "trainval", "test")


def stratified_folds(
    samples: Sequence[Sample], fractions: dict[str, float], seed: int
) -> dict[str, list[Sample]]:
    """Split samples into named folds with the given fractions, stratified by (class, defect).

    Each stratum is shuffled with its own generator, seeded by (seed, class name, defect flag), and cut by
    rounding, so every fold gets its share of the rare defective images, the same seed gives the same folds,
    and a class's folds do not depend on which other classes are read with it.
    """
    names = list(fractions)
    out: dict[str, list[Sample]] = {n: [] for n in names}
    strata: dict[tuple, list[Sample]] = {}
    for s in samples:
        strata.setdefault((s.label, bool(s.defect)), []).append(s)
    for label, defect in sorted(strata, key=lambda k: (str(k[0]), k[1])):
        group = strata[(label, defect)]
        # Seeded by the stratum's own name, not its position: adding a class must not reshuffle another.
        rng = np.random.default_rng([seed, zlib.crc32(str(label).encode()), int(defect)])
        order = rng.permutation(len(group))
        cuts = np.round(np.cumsum([fractions[n] for n in names]) * len(group)).astype(int)
        start = 0
        for n, end in zip(names, cuts, strict=True):
            out[n].extend(group[j] for j in order[start:end])
            start = end
    return {n: sorted(v, key=lambda s: str(s.path)) for n, v in out.items()}


def check_split_options(
    split: str, val_fraction: float, test_fraction: float, folds: int | None, fold: int
) -> None:
    """One-line errors for split options that cannot be honoured, before any file is read."""
    if split not in SPLITS:
        raise DataonomyError(f"--split '{split}': must be one of {', '.join(SPLITS)}")
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise DataonomyError(f"--{name.replace('_', '-')} {f}: must be in [0, 1)")
    if folds is not None:
        if folds < 2:
            raise DataonomyError(f"--folds {folds}: must be at least 2")
        if not 0 <= fold < folds:
            raise DataonomyError(f"--fold {fold}: must be in 0..{folds - 1} (--folds {folds})")
        if test_fraction > 0:
            raise DataonomyError("--folds and --test-fraction: choose one way to hold out test images")


@dataclass(kw_only=True)
class SplitOptions:
    """The seeded, stratified cut of a defect set into train/val(/test) as the commands name it; the same
    values give the same folds in ``transfer split`` and ``transfer finetune``."""

    classes: list[str] | None = opt(
        None,
        "Comma-separated classes (DAGM: 1,3 or Class1,Class3; MVTec: categories); default all.",
        parse=parse_list,
        panel="Split",
    )
    val_fraction: float = opt(
        0.2, "Share of the training images held out for validation (seeded).", panel="Split"
    )
    test_fraction: float = opt(
        0.0,
        "Carve a test fold from the images found first (for a set without its own test split, such as Class1/Test).",
        panel="Split",
    )
    folds: int | None = opt(
        None,
        "K-fold cross-validation: cut the images found (Train and Test pooled) into K seeded, stratified parts.",
        panel="Split",
    )
    fold: int = opt(
        0, "With --folds: the part held out as test (0..K-1); train/val split the rest.", panel="Split"
    )
    split_seed: int | None = opt(
        None,
        "Seed of the train/val/test cut (default --seed): several seeds, same folds.",
        panel="Split",
    )
    # A set published with its own split as lists of file stems (NEU-Seg's splits/{train,val,test}.txt).
    split_lists: str | None = opt(
        None,
        "Folder with train.txt and test.txt (and val.txt) listing the set's own split, one file stem a line: the "
        "folds are these lists (without val.txt, --val-fraction of train validates), not a seeded cut.",
        type=Path,
        parse=lambda text, flag: str(Path(text).resolve()),  # saved absolute: a rerun from elsewhere finds it
        panel="Split",
    )

    def spec(self, split: str, seed: int = 0, *, own_cut: bool = True) -> SplitSpec:
        """Fold ``split`` of this cut, as the readers take it; ``seed`` seeds it where ``split_seed`` is None (a
        run's --seed). A set other than the one cut (``own_cut`` False) keeps only the validation share and
        the seed: its test fold is its own, not this cut's."""
        return SplitSpec(
            split,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction if own_cut else 0.0,
            folds=self.folds if own_cut else None,
            fold=self.fold,
            seed=self.split_seed if self.split_seed is not None else seed,
            split_lists=self.split_lists if own_cut else None,
        )

    def has_test_fold(self) -> bool:
        """Whether the cut holds test images out of the images found (--test-fraction or --folds)."""
        return self.test_fraction > 0 or self.folds is not None


@dataclass(frozen=True)
class SplitSpec:
    """Which fold of a defect set to read, and how the folds are cut (see :func:`split_samples`).

    ``split`` is one of :data:`SPLITS`; ``val_fraction`` the share of the training images held out for
    validation; ``test_fraction`` > 0 holds out seeded, stratified test images from every image found;
    ``folds``/``fold``: K-fold cross-validation, part ``fold`` of ``folds`` is ``test`` (excludes
    ``test_fraction``); ``seed`` seeds the cut. Options that cannot be honoured are a one-line error here.
    """

    split: str = "all"
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    folds: int | None = None
    fold: int = 0
    seed: int = 0
    split_lists: str | None = None  # a folder of train.txt / val.txt / test.txt: the set's own split

    def __post_init__(self):
        check_split_options(self.split, self.val_fraction, self.test_fraction, self.folds, self.fold)
        if self.split_lists is not None and (self.folds is not None or self.test_fraction > 0):
            raise DataonomyError("--split-lists and --folds/--test-fraction: choose one way to cut the folds")

    @classmethod
    def of(cls, split: str | SplitSpec) -> SplitSpec:
        """``split`` as a spec: a name becomes ``SplitSpec(split=name)``; a spec is returned as it is."""
        return split if isinstance(split, SplitSpec) else cls(split=split)


def split_samples(read: Callable[[str], list[Sample]], spec: SplitSpec, *, own_split: bool) -> list[Sample]:
    """The samples of ``spec.split`` (one of :data:`SPLITS`), cut as ``spec`` says.

    ``read(which)`` returns the samples of the dataset's own ``train`` or ``test`` split, or ``all`` of them;
    ``own_split`` says whether the dataset has one. With ``folds``: K seeded, stratified parts of all the
    images, part ``fold`` is ``test`` and ``train``/``val`` split the rest by ``val_fraction``. With
    ``test_fraction`` > 0, or without an own split: ``test``, ``train`` and ``val`` are stratified parts of all
    the images. Otherwise ``test`` and ``trainval`` are the dataset's own, and ``train``/``val`` a stratified
    cut of its training images. Strata are (label, defect); the same seed gives the same folds.
    """
    split, val_fraction, test_fraction, seed = spec.split, spec.val_fraction, spec.test_fraction, spec.seed
    folds, fold = spec.folds, spec.fold
    if folds is not None:
        samples = read("all")
        parts = stratified_folds(samples, {i: 1.0 / folds for i in range(folds)}, seed)
        rest = sorted((x for i in range(folds) if i != fold for x in parts[i]), key=lambda x: str(x.path))
        cut = stratified_folds(rest, {"train": 1 - val_fraction, "val": val_fraction}, seed)
        return {"all": samples, "test": parts[fold], "trainval": rest, **cut}[split]
    if test_fraction > 0 or not own_split:
        samples = read("all")
        parts = stratified_folds(
            samples,
            {
                "test": test_fraction,
                "train": (1 - test_fraction) * (1 - val_fraction),
                "val": (1 - test_fraction) * val_fraction,
            },
            seed,
        )
        parts["trainval"] = sorted(parts["train"] + parts["val"], key=lambda s: str(s.path))
        parts["all"] = samples
        return parts[split]
    if split in ("all", "test", "trainval"):
        return read({"all": "all", "test": "test", "trainval": "train"}[split])
    return stratified_folds(read("train"), {"train": 1 - val_fraction, "val": val_fraction}, seed)[split]


LIST_NAMES = ("train", "val", "test")


def read_split_lists(folder: str | Path) -> dict[str, set[str]]:
    """``{split: file stems}`` from ``folder``'s ``train.txt``, ``val.txt`` and ``test.txt`` (train and test
    required; blank lines skipped); a stem in two lists is a one-line error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataonomyError(f"--split-lists {folder}: not a folder")
    lists = {}
    for name in LIST_NAMES:
        path = folder / f"{name}.txt"
        if path.is_file():
            lists[name] = {line.strip() for line in path.read_text().splitlines() if line.strip()}
        elif name != "val":
            raise DataonomyError(f"--split-lists {folder}: no {name}.txt (one file stem a line)")
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(lists.get(a, set()) & lists.get(b, set()))
        if both:
            raise DataonomyError(f"--split-lists {folder}: {both[0]} is in both {a}.txt and {b}.txt")
    return lists


def listed_split(samples: list[Sample], spec: SplitSpec) -> tuple[list[Sample], int]:
    """``spec.split`` of ``samples`` as ``spec.split_lists`` lists them by file stem (``val``: val.txt, or without
    it a stratified ``val_fraction`` of train, seeded), and how many samples no list names (left out)."""
    lists = read_split_lists(spec.split_lists)
    by_split = {name: [s for s in samples if Path(s.path).stem in stems] for name, stems in lists.items()}
    for name, kept in by_split.items():
        if not kept:
            raise DataonomyError(f"--split-lists {spec.split_lists}: no image of the set is in {name}.txt")
    if "val" not in by_split:
        cut = stratified_folds(
            by_split["train"], {"train": 1 - spec.val_fraction, "val": spec.val_fraction}, spec.seed
        )
        by_split |= cut
    by_split["trainval"] = sorted(by_split["train"] + by_split["val"], key=lambda s: str(s.path))
    listed = {str(s.path) for name in LIST_NAMES for s in by_split[name]}
    by_split["all"] = [s for s in samples if str(s.path) in listed]
    return by_split[spec.split], len(samples) - len(listed)


__all__ = [
    "LIST_NAMES",
    "SPLITS",
    "SplitSpec",
    "check_split_options",
    "listed_split",
    "read_split_lists",
    "split_samples",
    "stratified_folds",
]
