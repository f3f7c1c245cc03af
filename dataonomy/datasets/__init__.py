"""Dataset readers by name: ``get_dataset("dagm" | "mvtec" | "kolektor" | "pairs" | "imagenet" | "folder", root,
**options)``.

The names below are imported on first use (PEP 562), so that ``import dataonomy.datasets`` (and a command's
``--help``) does not load torch and torchvision; the readers register themselves when one is looked up.
"""

from __future__ import annotations

import importlib

# name -> the module that defines it
_WHERE = {
    "DAGM": "dagm",
    "ImageFolderDataset": "folder",
    "ImageNet": "imagenet",
    "KolektorSDD": "kolektor",
    "MVTecAD": "mvtec",
    "ImageMaskPairs": "pairs",
    "AnomalibFolders": "pairs",
    "Sample": "base",
    "SampleDataset": "base",
    "Sampling": "base",
    "binarize_mask": "base",
    "load_mask": "base",
    "mask_has_defect": "base",
    "open_image": "base",
    "get_dataset": "options",
    "get_dataset_reader": "registry",
    "list_datasets": "registry",
    "register_dataset": "registry",
    "SPLITS": "splits",
    "SplitSpec": "splits",
    "listed_split": "splits",
    "split_samples": "splits",
    "stratified_folds": "splits",
}


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dataonomy.datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dataonomy.datasets.{module}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_WHERE)
