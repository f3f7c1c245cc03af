"""DAGM-2007 surface-defect dataset reader.

Two layouts are read:

* Kaggle (the common one): ``ClassN/{Train,Test}/NNNN.PNG`` with ``Label/Labels.txt`` and
  ``Label/NNNN_label.PNG`` masks. ``Labels.txt`` starts with a header line, then tab-separated rows
  ``id  flag  image  0  mask-or-0`` (CRLF or LF, trailing tabs possible).
* Original 2007: ``ClassN/`` (defect-free images) beside ``ClassN_def/`` (defective images and
  ``labels.txt`` with one ellipse per row: ``image semi_major semi_minor angle x y``, angle in
  radians). The ellipses are rasterised into masks on demand.

``root`` may be the dataset folder (holding ``ClassN`` folders), one ``ClassN`` folder, or one split
folder (``ClassN/Test``). ``target`` is the defect flag (0 ok, 1 defect): the fine-tuning task;
``label`` is the texture class (``Class1``): the target classes of Dataonomy's affinity. Every sample's
``group`` is its class too, and its ``split`` the folder it lives in (``Train`` -> ``train``,
``Test`` -> ``test``; None in the 2007 layout, which has no split).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from dataonomy.datasets.base import (
    IMAGE_EXTENSIONS,
    Sample,
    SampleDataset,
    Sampling,
    check_mask_sizes,
    image_size,
    require_dir,
)
from dataonomy.datasets.registry import register_dataset
from dataonomy.datasets.splits import SplitSpec, split_samples, stratified_folds
from dataonomy.errors import DataonomyError

_CLASS_RE = re.compile(r"^Class(\d+)$", re.IGNORECASE)
_SPLIT_DIRS = {"train": "Train", "test": "Test"}


@dataclass(frozen=True)
class Ellipse:
    """A DAGM 2007 defect label: semi-axes in pixels, angle in radians, centre (x, y)."""

    semi_major: float
    semi_minor: float
    angle: float
    x: float
    y: float


def rasterize_ellipse(height: int, width: int, e: Ellipse) -> np.ndarray:
    """Boolean mask (height, width) of the pixels inside ellipse ``e``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    dx, dy = xx - e.x, yy - e.y
    c, s = np.cos(e.angle), np.sin(e.angle)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    return (u / max(e.semi_major, 1e-9)) ** 2 + (v / max(e.semi_minor, 1e-9)) ** 2 <= 1.0


@dataclass(frozen=True)
class LabelRow:
    id: str
    defect: bool
    image: str
    mask: str | None


def _inside(name: str) -> bool:
    """Whether a file name from a labels file stays below the folder it is read from: relative (POSIX or
    Windows spelling) and without '..' parts. Labels files are data, and data must not point the reader at
    files outside the dataset."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        return False
    return ".." not in windows.parts  # PureWindowsPath splits on both / and \


def parse_labels_txt(path: Path) -> list[LabelRow]:
    """Parse a Kaggle-layout ``Labels.txt``; errors name the file and line."""
    try:
        lines = path.read_text(encoding="utf-8", errors="strict").splitlines()
    except FileNotFoundError:
        raise DataonomyError(f"{path}: labels file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataonomyError(f"{path}: cannot read labels file ({exc})") from None
    rows, seen = [], set()
    for lineno, line in enumerate(lines[1:], start=2):  # line 1 is a header ("1")
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3 or parts[1] not in ("0", "1"):
            raise DataonomyError(
                f"{path}:{lineno}: expected 'id flag image 0 mask-or-0' with flag 0 or 1, got {line.strip()!r}"
            )
        ident, flag, image = parts[0], parts[1] == "1", parts[2]
        mask = parts[4] if len(parts) >= 5 and parts[4] != "0" else None
        for what, name in (("image", image), ("mask", mask)):
            if name is not None and not _inside(name):
                raise DataonomyError(
                    f"{path}:{lineno}: {what} path {name!r} leaves the dataset folder "
                    "(absolute or '..'); name files inside it"
                )
        if flag and mask is None:
            raise DataonomyError(f"{path}:{lineno}: image {image} is flagged defective but names no mask")
        if not flag and mask is not None:
            raise DataonomyError(
                f"{path}:{lineno}: image {image} is flagged defect-free but names mask {mask}"
            )
        if image in seen:
            raise DataonomyError(f"{path}:{lineno}: image {image} is listed twice")
        seen.add(image)
        rows.append(LabelRow(ident, flag, image, mask))
    return rows


def parse_ellipse_labels(path: Path) -> dict[str, Ellipse]:
    """Parse a 2007-layout ``labels.txt`` (``image semi_major semi_minor angle x y`` per row)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataonomyError(f"{path}: cannot read labels file ({exc})") from None
    out = {}
    for lineno, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 6:
                raise ValueError
            out[parts[0]] = Ellipse(*(float(p) for p in parts[1:]))
        except ValueError:
            raise DataonomyError(
                f"{path}:{lineno}: expected 'image semi_major semi_minor angle x y', got {line.strip()!r}"
            ) from None
    return out


def _images_in(folder: Path) -> dict[str, Path]:
    return {
        p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    }


def _class_of(folder: Path) -> str:
    m = _CLASS_RE.match(folder.name)
    return f"Class{int(m.group(1))}" if m else folder.name


def _read_kaggle_split(split_dir: Path, label: str, labels_file: Path | None, allow_partial: bool) -> list:
    folder = split_dir.name.lower()
    split = folder if folder in _SPLIT_DIRS else None
    label_dir = split_dir / "Label"
    labels_file = labels_file or label_dir / "Labels.txt"
    if not labels_file.is_file():
        raise DataonomyError(
            f"{labels_file}: labels file not found (pass labels_root=/--labels-root for folders without one)"
        )
    rows = parse_labels_txt(labels_file)
    on_disk = _images_in(split_dir)
    listed = {r.image for r in rows}
    extra = sorted(set(on_disk) - listed)
    if extra:
        raise DataonomyError(
            f"{split_dir / extra[0]}: image on disk is not listed in {labels_file} ({len(extra)} such file(s))"
        )
    samples = []
    for r in rows:
        path = on_disk.get(r.image)
        if path is None:
            if allow_partial:
                continue  # a partial copy of the split: keep what is on disk
            raise DataonomyError(
                f"{split_dir / r.image}: listed in {labels_file} but missing on disk "
                "(use allow_partial/--allow-partial for a partial copy)"
            )
        mask = None
        if r.defect:
            mask = label_dir / r.mask
            if not mask.is_file():
                raise DataonomyError(f"{mask}: mask named in {labels_file} is missing")
        samples.append(
            Sample(
                path=path,
                label=label,
                target=int(r.defect),
                defect=r.defect,
                mask=mask,
                group=label,
                split=split,
            )
        )
    return samples


def _read_2007_class(class_dir: Path, label: str) -> list:
    samples = [
        Sample(path=p, label=label, target=0, defect=False, group=label)
        for p in _images_in(class_dir).values()
    ]
    def_dir = class_dir.with_name(class_dir.name + "_def")
    if def_dir.is_dir():
        labels_file = def_dir / "labels.txt"
        if not labels_file.is_file():
            raise DataonomyError(f"{labels_file}: labels file not found")
        ellipses = parse_ellipse_labels(labels_file)
        # Rows name images by number ("12") or file name ("12.png"); match on the number.
        by_number = {}
        for name, p in _images_in(def_dir).items():
            stem = Path(name).stem
            by_number[str(int(stem)) if stem.isdigit() else stem] = p
        for key, e in ellipses.items():
            stem = Path(key).stem
            k = str(int(stem)) if stem.isdigit() else stem
            if k not in by_number:
                raise DataonomyError(f"{labels_file}: image {key} is listed but missing in {def_dir}")
            samples.append(
                DAGMSample(path=by_number.pop(k), label=label, target=1, defect=True, group=label, ellipse=e)
            )
        if by_number:
            first = sorted(by_number.values())[0]
            raise DataonomyError(f"{first}: defective image has no ellipse in {labels_file}")
    return samples


@dataclass(frozen=True)
class DAGMSample(Sample):
    """A DAGM sample; ``ellipse`` carries a 2007-layout label (rasterised on demand)."""

    ellipse: Ellipse | None = None


@register_dataset("dagm")
class DAGM(SampleDataset):
    """DAGM-2007 as a torchvision dataset (``target`` = defect flag).

    Args:
        root: dataset folder, one ``ClassN`` folder, or one split folder (``ClassN/Test``).
        classes: DAGM classes to read (``[1, 3]`` or ``["Class1"]``); default all found.
        split: the fold to read, a name or a :class:`~dataonomy.datasets.splits.SplitSpec` (a name is
            ``SplitSpec(split=name)``, its seed 0). ``all``; ``test`` (the Test folders); ``trainval`` (the
            Train folders); ``train``/``val`` (a seeded, stratified ``1-val_fraction``/``val_fraction``
            split of Train, seeded by the spec's ``seed``). When ``root`` is a single split folder, or
            ``test_fraction`` > 0, the folds are carved from the images found instead: ``test`` first, then
            ``train``/``val`` of the rest. With ``folds``/``fold``: K-fold cross-validation of the images
            found (Train and Test pooled): the images are cut into ``folds`` seeded, stratified parts; part
            ``fold`` is ``test``, and ``train``/``val`` split the rest by ``val_fraction``. The same seed
            gives the same parts for every ``fold``, so ``fold`` = 0..K-1 test every image once.
        labels_root: a folder with ``ClassN/{Train,Test}/Label/Labels.txt`` for copies without
            their own labels (the partial Train folders in ../shared/data/dagm).
        allow_partial: accept a Labels.txt that lists images missing on disk (partial copies).
        sampling: :class:`~dataonomy.datasets.base.Sampling`: ``images_per_class`` keeps at most N images
            per DAGM class of the chosen fold, seeded by its own ``seed`` (class-level statistics such as
            affinities need a sample, not every image); ``skip_bad`` decodes every image and mask now and
            drops bad ones with a warning and a count, instead of failing on the first.
    """

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[int | str] | None = None,
        split: str | SplitSpec = "all",
        labels_root: str | Path | None = None,
        allow_partial: bool = False,
        sampling: Sampling | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ):
        spec = SplitSpec.of(split)
        sampling = sampling or Sampling()
        root = require_dir(Path(root), "DAGM root")
        self.layout, pools = self._discover(root, classes)
        labels_root = Path(labels_root) if labels_root is not None else None

        def read(folder_split: str) -> list[Sample]:
            out = []
            for label, class_dir, split_dirs in pools:
                if self.layout == "2007":
                    out += _read_2007_class(class_dir, label)
                    continue
                for split_name, split_dir in split_dirs.items():
                    if folder_split != "all" and split_name != folder_split:
                        continue
                    lf = None
                    if labels_root is not None:
                        lf = (
                            labels_root
                            / label
                            / _SPLIT_DIRS.get(split_name, split_dir.name)
                            / "Label"
                            / "Labels.txt"
                        )
                    out += _read_kaggle_split(split_dir, label, lf, allow_partial)
            return out

        single_pool = self.layout == "2007" or all(len(p[2]) == 1 and p[2].get("?") for p in pools)
        samples = split_samples(read, spec, own_split=not single_pool)
        if not samples:
            raise DataonomyError(f"{root}: no DAGM images found for split '{spec.split}'")
        samples = sampling.per_label(samples)
        self._check_masks(samples)
        samples = sampling.drop_bad(samples)
        self.split = spec.split
        self._init_defect_set(root, samples, (transform, target_transform))

    @staticmethod
    def _discover(root: Path, classes) -> tuple[str, list]:
        """Find (layout, [(label, class_dir, {split: split_dir})]) under root."""
        wanted = None
        if classes is not None:
            wanted = {f"Class{int(str(c).lower().removeprefix('class'))}" for c in classes}

        def split_dirs(class_dir: Path) -> dict[str, Path]:
            return {k: class_dir / v for k, v in _SPLIT_DIRS.items() if (class_dir / v).is_dir()}

        if (root / "Label").is_dir() or (root.name.lower() in ("train", "test") and _images_in(root)):
            # root is one split folder: its class is the parent folder's name.
            label = _class_of(root.parent) if _CLASS_RE.match(root.parent.name) else root.name
            return "kaggle", [(label, root.parent, {"?": root})]
        if split_dirs(root):
            return "kaggle", [(_class_of(root), root, split_dirs(root))]
        if root.with_name(root.name + "_def").is_dir():
            return "2007", [(_class_of(root), root, {})]
        class_dirs = sorted(
            (d for d in root.iterdir() if d.is_dir() and _CLASS_RE.match(d.name)),
            key=lambda d: int(_CLASS_RE.match(d.name).group(1)),
        )
        if not class_dirs:
            raise DataonomyError(f"{root}: no DAGM ClassN folders, Train/Test folders or Label/ folder found")
        if wanted is not None:
            missing = wanted - {_class_of(d) for d in class_dirs}
            if missing:
                raise DataonomyError(f"--classes: {', '.join(sorted(missing))} not found under {root}")
            class_dirs = [d for d in class_dirs if _class_of(d) in wanted]
        kaggle = [(_class_of(d), d, split_dirs(d)) for d in class_dirs if split_dirs(d)]
        if kaggle:
            return "kaggle", kaggle
        return "2007", [(_class_of(d), d, {}) for d in class_dirs]

    @staticmethod
    def _check_masks(samples: list[Sample]) -> None:
        # Header reads only: cheap, and a wrong-size mask is a labelling error worth failing early on.
        check_mask_sizes(samples)

    def mask(self, index: int) -> np.ndarray | None:
        s = self.samples[index]
        if isinstance(s, DAGMSample) and s.ellipse is not None:
            w, h = image_size(s.path)
            return rasterize_ellipse(h, w, s.ellipse)
        return super().mask(index)


__all__ = ["DAGM", "DAGMSample", "Ellipse", "parse_labels_txt", "rasterize_ellipse", "stratified_folds"]
