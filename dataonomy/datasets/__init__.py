"""Dataset readers by name: ``get_dataset("dagm" | "imagenet" | "folder", root, **options)``."""

from dataonomy.datasets import dagm, folder, imagenet  # noqa: F401  (registers the readers)
from dataonomy.datasets.base import Sample, SampleDataset, load_mask, open_image
from dataonomy.datasets.dagm import DAGM, stratified_folds
from dataonomy.datasets.folder import ImageFolderDataset
from dataonomy.datasets.imagenet import ImageNet
from dataonomy.datasets.registry import get_dataset, get_dataset_reader, list_datasets, register_dataset

__all__ = [
    "DAGM",
    "ImageFolderDataset",
    "ImageNet",
    "Sample",
    "SampleDataset",
    "get_dataset",
    "get_dataset_reader",
    "list_datasets",
    "load_mask",
    "open_image",
    "register_dataset",
    "stratified_folds",
]
