"""Dataset readers registered by name, looked up with :func:`get_dataset` (as torchvision's
``get_model``)."""

from __future__ import annotations

from collections.abc import Callable

from dataonomy.errors import DataonomyError

_READERS: dict[str, Callable] = {}


def register_dataset(name: str) -> Callable:
    """Class decorator: make a reader available as ``get_dataset(name, ...)``."""

    def wrap(cls):
        if name in _READERS:
            raise ValueError(f"dataset reader {name!r} registered twice")
        _READERS[name] = cls
        return cls

    return wrap


def list_datasets() -> list[str]:
    return sorted(_READERS)


def get_dataset_reader(name: str) -> Callable:
    try:
        return _READERS[name]
    except KeyError:
        raise DataonomyError(
            f"--dataset '{name}': unknown dataset reader (known: {', '.join(list_datasets())})"
        ) from None


def get_dataset(name: str, root, **kwargs):
    """Build the reader registered as ``name`` on ``root``; kwargs go to its constructor."""
    return get_dataset_reader(name)(root, **kwargs)
