"""Dataset readers by name: ``get_dataset("dagm" | "mvtec" | "kolektor" | "pairs" | "imagenet" | "folder", root,
**options)``."""

from dataonomy.datasets import dagm, folder, imagenet, kolektor, mvtec, pairs  # noqa: F401  (registers the readers)
from dataonomy.datasets.base import (
    Sample,
    SampleDataset,
    Sampling,
    binarize_mask,
    load_mask,
    mask_has_defect,
    open_image,
)
from dataonomy.datasets.dagm import DAGM
from dataonomy.datasets.folder import ImageFolderDataset
from dataonomy.datasets.imagenet import ImageNet
from dataonomy.datasets.kolektor import KolektorSDD
from dataonomy.datasets.mvtec import MVTecAD
from dataonomy.datasets.options import get_dataset
from dataonomy.datasets.pairs import ImageMaskPairs
from dataonomy.datasets.registry import get_dataset_reader, list_datasets, register_dataset
from dataonomy.datasets.splits import SPLITS, SplitSpec, split_samples, stratified_folds

__all__ = [
    "DAGM",
    "ImageFolderDataset",
    "ImageMaskPairs",
    "ImageNet",
    "KolektorSDD",
    "MVTecAD",
    "Sample",
    "SampleDataset",
    "Sampling",
    "SplitSpec",
    "binarize_mask",
    "get_dataset",
    "get_dataset_reader",
    "list_datasets",
    "load_mask",
    "mask_has_defect",
    "open_image",
    "register_dataset",
    "SPLITS",
    "split_samples",
    "stratified_folds",
]
