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


def list_datasets() -> list[str]:
    return _READERS.names()


def get_dataset_reader(name: str) -> Callable:
    return _READERS.get(name)
