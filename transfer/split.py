"""``transfer split``: write the seeded, stratified train/val(/test) file lists of a defect set, as fine-tuning
reads them (:func:`transfer.data.defect_fold`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dataonomy.errors import DataonomyError
from dataonomy.io import write_json
from transfer.stage_config import SplitConfig

SPLITS = ("train", "val", "test")


def split_lists(config: SplitConfig, log: Callable[[str], None] = print) -> dict[str, list[dict]]:
    """Each fold's images (path, group, defect flag); ``test`` only where the set has or is given one."""
    from transfer.data import defect_fold

    source, lists = config.defect_data(), {}
    for split in SPLITS:
        try:
            ds = defect_fold(source, config.split_spec(split), config.split.classes)
        except DataonomyError:
            if split == "test":
                continue  # a set without a test fold of its own, and none asked for
            raise
        lists[split] = [
            {"path": str(s.path), "group": s.group or s.label, "defect": bool(s.defect)} for s in ds.samples
        ]
        log(f"{split}: {len(lists[split])} images, {sum(r['defect'] for r in lists[split])} defective")
    return lists


def write_split(config: SplitConfig, out: str | Path, log: Callable[[str], None] = print) -> dict:
    """Write ``out`` (JSON): ``params`` (the set and the cut), ``folds`` (:func:`split_lists`) and ``config``
    (what ``--config`` reads back); return what was written."""
    source, cut = config.defect_data(), config.split
    params = {
        "data": source.root,
        "format": source.format,
        **source.reader_options(),
        "classes": ",".join(cut.classes) if cut.classes is not None else None,
        "val_fraction": cut.val_fraction,
        "test_fraction": cut.test_fraction,
        "folds": cut.folds,
        "fold": cut.fold,
        "seed": cut.split_seed,
    }
    record = {"params": params, "folds": split_lists(config, log), "config": config.to_dict()}
    write_json(out, record)
    log(f"wrote {out}")
    return record


__all__ = ["split_lists", "write_split"]
