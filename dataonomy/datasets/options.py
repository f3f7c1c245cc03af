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


def reader_options(
    *,
    classes: list[str] | None = None,
    split: str | None = None,
    images_per_class: int | None = None,
    seed: int = 0,
    labels_root=None,
    allow_partial: bool = False,
    skip_bad: bool = False,
    masks=None,
    mask_suffix: str | None = None,
    normal_dir=None,
    abnormal_dir=None,
    mask_dir=None,
) -> dict[str, Any]:
    """The dataset options a command sets, for :func:`open_dataset` and feature-cache provenance.

    Options left unset are dropped, and so is ``seed`` unless something uses it (sampling, or a seeded
    train/val split): an unused seed must not change a feature cache's identity. ``masks``,
    ``mask_suffix``, ``normal_dir``, ``abnormal_dir`` and ``mask_dir`` are the ``pairs`` reader's
    (an empty ``mask_suffix`` is kept: it means masks named exactly as their images).
    """
    seeded = bool(images_per_class) or split in ("train", "val")
    options = {
        "classes": classes,
        "split": split,
        "images_per_class": images_per_class,
        "seed": seed if seeded else None,
        "labels_root": labels_root,
        "allow_partial": allow_partial,
        "skip_bad": skip_bad,
        "masks": masks,
        "mask_suffix": mask_suffix,
        "normal_dir": normal_dir,
        "abnormal_dir": abnormal_dir,
        "mask_dir": mask_dir,
    }
    return {k: v for k, v in options.items() if v is not None and v is not False}
