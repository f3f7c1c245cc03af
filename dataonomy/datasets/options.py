"""Build a reader from CLI options, refusing options the chosen reader does not take."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
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


@dataclass(frozen=True)
class ReaderOptions:
    """The dataset options a command can set. ``masks``, ``mask_suffix``, ``normal_dir``, ``abnormal_dir`` and
    ``mask_dir`` are the ``pairs`` reader's."""

    classes: list[str] | None = None
    split: str | None = None
    images_per_class: int | None = None
    seed: int = 0
    labels_root: Any = None
    allow_partial: bool = False
    skip_bad: bool = False
    masks: Any = None
    mask_suffix: str | None = None
    normal_dir: Any = None
    abnormal_dir: Any = None
    mask_dir: Any = None

    def as_dict(self) -> dict[str, Any]:
        """Options left unset are dropped, and so is ``seed`` unless something uses it (sampling, or a seeded
        train/val split): an unused seed must not change a feature cache's identity (an empty ``mask_suffix`` is
        kept: it means masks named exactly as their images)."""
        seeded = bool(self.images_per_class) or self.split in ("train", "val")
        options = {f.name: getattr(self, f.name) for f in fields(self)}
        options["seed"] = self.seed if seeded else None
        return {k: v for k, v in options.items() if v is not None and v is not False}


def reader_options(**options: Any) -> dict[str, Any]:
    """The dataset options a command sets (:class:`ReaderOptions`' fields, by keyword), for :func:`open_dataset`
    and feature-cache provenance: see :meth:`ReaderOptions.as_dict`."""
    return ReaderOptions(**options).as_dict()
