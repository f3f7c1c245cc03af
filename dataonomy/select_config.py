"""``dataonomy select``'s parameters: :class:`SelectConfig`, each field with its command-line option.

Kept apart from :mod:`dataonomy.selection` (which runs the selection and imports torch) so that the command
line builds its options from these fields and answers ``--help`` at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from dataonomy.builtin_names import AFFINITIES, BACKBONES
from dataonomy.cli_options import opt, parse_list, same_option
from dataonomy.datasets.options import DefectLayout
from dataonomy.errors import DataonomyError

FEATURES, CONSTRAINTS = "Features", "Constraints"


def read_wnids(path: Path, option: str) -> list[tuple[int, str]]:
    """A file of wnids, one per line ('#' starts a comment) -> (line number, wnid) pairs."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DataonomyError(f"{option} {path}: cannot read ({exc})") from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        words = line.split("#", 1)[0].split()
        if words:
            out.append((lineno, words[0]))
    return out


def _wnid_file(path, flag: str) -> list[str]:
    return [w for _, w in read_wnids(path, flag)]


def _target_layout(name: str, default=None):
    """The target reader's option ``name``: the defect layout's (``--masks``), set as ``target_<name>``."""
    return same_option(DefectLayout, name, default, flag="--" + name.replace("_", "-"))


def _wnid_files(help: str):
    """A repeatable option naming files of wnids (``--include a.txt --include b.txt``), kept as strings."""
    parse = lambda files, flag: [str(f) for f in files]  # noqa: E731
    return opt(
        help=help, default_factory=list, type=list[Path], option_default=[], parse=parse, panel=CONSTRAINTS
    )


@dataclass
class SelectConfig:
    """Every parameter of one selection run (recorded in the manifest)."""

    target_root: Path = opt(help="Folder of the target dataset; required.", option_default=None)
    # None: the pool is the backbone's ImageNet-1k classifier (softmax only).
    source_root: Path | None = opt(
        None,
        "Folder of the source pool (ILSVRC train, Tiny ImageNet, or a folder of class folders). Optional for "
        "--source imagenet --affinity softmax: without it the pool is the backbone's 1000 ImageNet-1k classes and "
        "only the target images are read.",
    )
    target: str = opt("dagm", "Target dataset reader (dagm, folder, ...).")
    source: str = opt("imagenet", "Source pool reader (imagenet, folder).")
    target_classes: list[str] | None = opt(
        None, "Comma-separated target classes (DAGM: 1,3 or Class1,Class3).", parse=parse_list
    )
    target_split: str | None = opt(None, "Target split to embed (DAGM: all|train|val|trainval|test).")
    target_labels_root: Path | None = _target_layout("labels_root")
    target_allow_partial: bool = _target_layout("allow_partial", False)
    # The pairs reader's options (images + masks folders, or anomalib's normal/abnormal/mask trio).
    target_masks: Path | None = _target_layout("masks")
    target_mask_suffix: str | None = _target_layout("mask_suffix")
    target_normal_dir: Path | None = _target_layout("normal_dir")
    target_abnormal_dir: Path | None = _target_layout("abnormal_dir")
    target_mask_dir: Path | None = _target_layout("mask_dir")
    target_skip_bad: bool = opt(
        False,
        "Decode every file first; skip bad ones with a warning instead of failing.",
        flag="--skip-bad",
        panel="Data layout",
    )
    source_classes: list[str] | None = opt(
        None,
        "File of wnids (one per line) that make up the source pool; default every class found.",
        type=Path,
        parse=_wnid_file,
    )
    images_per_class: int | None = opt(
        50,
        "Source images sampled per class (seeded); 0 reads every image.",
        parse=lambda n, flag: n or None,  # 0 reads every image
        panel=FEATURES,
    )
    target_images_per_class: int | None = opt(
        None, "Target images sampled per class (seeded by --seed); default every image.", panel=FEATURES
    )
    seed: int = opt(0, "Seed for source sampling and target splits.")
    # inception_v3 where its weights are present, else efficientnet_lite0.
    backbone: str = opt(
        "auto",
        f"Pretrained backbone: {', '.join(BACKBONES)}, or auto: inception_v3 (the method's) when its ImageNet "
        "weights are in the torch cache or --weights is not imagenet, else efficientnet_lite0 (weights installed "
        "with the package).",
        panel=FEATURES,
    )
    weights: str = opt(
        "imagenet", "imagenet, a state_dict file, or none (random; tests only).", panel=FEATURES
    )
    affinity: str = opt(
        "softmax", f"Per-image score: {', '.join(AFFINITIES)} (softmax needs an ImageNet-1k pool)."
    )
    k: int = opt(500, "Number of source classes to select.")
    coverage: int = opt(
        1,
        "Every target class must be served by at least this many selected sources (0: off).",
        panel=CONSTRAINTS,
    )
    coverage_floor: float | None = opt(
        None,
        "A source serves a target only if its normalised affinity exceeds this (default 1/S).",
        panel=CONSTRAINTS,
    )
    image_budget: int | None = opt(
        None, "At most this many source images in the selected classes (off by default).", panel=CONSTRAINTS
    )
    diversity_depth: int | None = opt(
        None,
        "WordNet depth (shortest is-a path from the root, 0 to 18) whose nodes group classes for "
        "--diversity-max; some source class must lie that deep.",
        panel=CONSTRAINTS,
    )
    diversity_max: int | None = opt(
        None,
        "At most this many selected classes under any one WordNet node at --diversity-depth.",
        panel=CONSTRAINTS,
    )
    include: list[str] = _wnid_files("File of wnids that must be selected (one per line); repeatable.")
    exclude: list[str] = _wnid_files("File of wnids that must not be selected (one per line); repeatable.")
    time_limit: float = opt(
        600.0,
        "Solver time limit in seconds (the best selection so far is kept, with its gap).",
        panel=CONSTRAINTS,
    )
    batch_size: int = opt(32, "Images per forward pass during feature extraction.", panel=FEATURES)
    num_workers: int = opt(2, "Image-decoding worker processes.", flag="--workers", panel=FEATURES)
    device: str = opt("auto", "auto (a GPU if there is one), cpu or cuda.", panel=FEATURES)
    cache_dir: Path = opt(
        Path(".dataonomy_cache"), "Where the HDF5 feature caches live (reused across runs).", panel=FEATURES
    )
    # An HDF5 cache written by `dataonomy features`; default: by cache_dir.
    target_features: Path | None = opt(
        None,
        "Target feature cache written by `dataonomy features --out FILE` (checked against these inputs); "
        "default: the cache under --cache-dir.",
        panel=FEATURES,
    )
    source_features: Path | None = opt(
        None, "Source feature cache, as --target-features (needs --source-root).", panel=FEATURES
    )
    out: Path = opt(
        Path("data_manifests/selection.json"),
        "Manifest to write (JSON); the taxonomy GraphML goes beside it.",
    )

    def recorded(self) -> dict:
        """The parameters that define the result (paths as strings; run-only knobs left out)."""
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}
        for key in (
            "batch_size",
            "num_workers",
            "device",
            "cache_dir",
            "target_features",
            "source_features",
            "out",
        ):
            d.pop(key)
        # Reader options added later are recorded only when set, so a manifest made without them reads
        # the same as before they existed.
        for key in _LATER_TARGET_OPTIONS:
            if d[key] is None or d[key] is False:
                d.pop(key)
        return d


_LATER_TARGET_OPTIONS = (
    "target_masks", "target_mask_suffix", "target_normal_dir", "target_abnormal_dir", "target_mask_dir",
    "target_skip_bad",
)  # fmt: skip


__all__ = ["SelectConfig", "read_wnids"]
