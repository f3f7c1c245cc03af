"""Dataset readers registered by name, looked up with :func:`get_dataset` (as torchvision's
``get_model``)."""

from __future__ import annotations

from collections.abc import Callable

from dataonomy.registry import Registry

_READERS: Registry[Callable] = Registry(
    "dataset reader", "--dataset '{name}': unknown dataset reader (known: {known})"
)


def register_dataset(name: str) -> Callable:
    """Class decorator: make a reader available as ``get_dataset(name, ...)``."""

    return _READERS.decorator(name)


# The modules whose readers register themselves on import; imported when a reader is first looked up, so that
# importing the package (a CLI's --help) does not load torchvision.
READER_MODULES = ("dagm", "folder", "imagenet", "kolektor", "mvtec", "pairs")


def _load_readers() -> None:
    import importlib

    for module in READER_MODULES:
        importlib.import_module(f"dataonomy.datasets.{module}")


def list_datasets() -> list[str]:
    _load_readers()
    return _READERS.names()


def get_dataset_reader(name: str) -> Callable:
    _load_readers()
    return _READERS.get(name)
