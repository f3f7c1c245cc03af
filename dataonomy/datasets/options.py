"""Build a reader from CLI options, refusing options the chosen reader does not take."""

from __future__ import annotations

import inspect
from typing import Any

from dataonomy.datasets.registry import get_dataset_reader
from dataonomy.errors import DataonomyError


def open_dataset(name: str, root, **options: Any):
    """``get_dataset(name, root, **options)`` where options left at None are dropped.

    An option set by the user that the reader does not accept is an error naming the option,
    rather than being silently ignored.
    """
    reader = get_dataset_reader(name)
    accepted = inspect.signature(reader.__init__).parameters
    kwargs = {}
    for key, value in options.items():
        if value is None or value is False:
            continue
        if key not in accepted:
            raise DataonomyError(f"--{key.replace('_', '-')} is not an option of the '{name}' reader")
        kwargs[key] = value
    return reader(root, **kwargs)
