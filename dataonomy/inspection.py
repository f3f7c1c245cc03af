"""``dataonomy inspect``: read a dataset, decode every image and mask, and describe it."""

from __future__ import annotations

import warnings
from pathlib import Path

from dataonomy.datasets.options import open_dataset

SHOWN = 20  # classes and groups listed before "... N more"


def open_verified(dataset: str, root: Path, options: dict, skip_bad: bool):
    """The dataset with every image and mask decoded: a bad file fails (or, with ``skip_bad``, the reader has
    already skipped it with a warning)."""
    from dataonomy.datasets.base import verify_samples
    from dataonomy.errors import BadImageError

    try:
        ds = open_dataset(dataset, root, **options)
        if not skip_bad:
            # Listing the files vouches for names and labels only; inspect vouches for the pixels too, as
            # --skip-bad already does (the readers decode every file then, and skip bad ones).
            verify_samples(ds.samples, False, lambda m: warnings.warn(m, stacklevel=2))
    except BadImageError as exc:
        raise BadImageError(f"{exc} (pass --skip-bad to report and skip every bad file)") from None
    return ds


def summary_lines(ds, dataset: str, root: Path) -> list[str]:
    """A few lines for a terminal: the counts, the reader's notes, per class, per split and per group."""
    summary = ds.summary()
    lines = [
        f"{dataset} at {root}: {summary['images']} images in {len(summary['per_class'])} classes, "
        f"{summary['defective']} defective, {summary['masks']} masks"
    ]
    lines += [f"  {note}" for note in getattr(ds, "notes", [])]
    lines += [f"  {label}: {n}" for label, n in sorted(summary["per_class"].items())[:SHOWN]]
    if len(summary["per_class"]) > SHOWN:
        lines.append(f"  ... {len(summary['per_class']) - SHOWN} more classes")
    if summary["per_split"]:
        lines.append("  splits: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["per_split"].items())))
    groups = summary["per_group"]
    if groups and set(groups) != set(summary["per_class"]):
        for group, counts in sorted(groups.items())[:SHOWN]:
            lines.append(f"  {group}: {counts['images']} images, {counts['defective']} defective")
        if len(groups) > SHOWN:
            lines.append(f"  ... {len(groups) - SHOWN} more groups")
    return lines


def sample_list(ds, dataset: str, root: Path) -> dict:
    """What ``inspect --out`` writes: the dataset, its summary and every sample (path, label, defect, mask...)."""
    rows = [
        {
            "path": str(s.path),
            "label": s.label,
            "target": s.target,
            "defect": s.defect,
            "mask": str(s.mask) if s.mask else None,
            "group": s.group,
            "split": s.split,
        }
        for s in ds.samples
    ]
    return {"dataset": dataset, "root": str(root), "summary": ds.summary(), "samples": rows}


__all__ = ["open_verified", "sample_list", "summary_lines"]
