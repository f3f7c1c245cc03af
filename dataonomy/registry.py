"""Things registered by name (backbones, dataset readers, affinity measures): added once, listed sorted, and
looked up with a one-line error that names the known ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from dataonomy.errors import DataonomyError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> item table. ``kind`` names the items in errors ("backbone"); ``unknown`` is the error for a
    name not registered, formatted with ``{name}`` and ``{known}`` (the registered names, comma-separated)."""

    def __init__(self, kind: str, unknown: str):
        self.kind, self.unknown = kind, unknown
        self.items: dict[str, T] = {}

    def add(self, name: str, item: T, replace: bool = False) -> T:
        """Register ``item`` as ``name``; a second item of one name is an error unless ``replace``."""
        if name in self.items and not replace:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self.items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator(name)``: register what it decorates."""
        return lambda item: self.add(name, item)

    def names(self) -> list[str]:
        return sorted(self.items)

    def get(self, name: str) -> T:
        try:
            return self.items[name]
        except KeyError:
            raise DataonomyError(self.unknown.format(name=name, known=", ".join(self.names()))) from None
