"""Configs made of option groups: a field that holds a whole options dataclass (the split, the data layout).

A stage config nests the groups it shares with other stages (``FinetuneConfig.split`` is a
:class:`~dataonomy.datasets.splits.SplitOptions`, ``.layout`` a :class:`~dataonomy.datasets.options.DefectLayout`),
so each group is declared once and a stage reads ``config.split.folds``. The command line and ``config.json``
stay flat, one name per option as users type it (``--folds``, ``"folds": 3``): runs saved before the groups
load unchanged, and scripts that read a ``config.json`` keep working. A config decorated with :func:`grouped`
takes those flat names as keyword arguments too (``FinetuneConfig(base=..., data=..., folds=3)``), gathering
them into their groups; :func:`to_flat` is the way back.

Every flat name is unique across a config's own fields and its groups' (checked when the class is decorated).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any


def group(cls: type) -> Any:
    """A config field holding the options group ``cls`` (a dataclass whose fields all have defaults)."""
    return dataclasses.field(default_factory=cls, metadata={"group": cls})


def group_fields(config_cls: type) -> dict[str, type]:
    """Group field name -> its options class, in field order."""
    return {f.name: f.metadata["group"] for f in dataclasses.fields(config_cls) if "group" in f.metadata}


@dataclasses.dataclass(frozen=True)
class FlatField:
    """One option of a config as the command line and ``config.json`` name it: the field (of the config or of
    one of its groups), the class that declares it, the group it sits in (None: the config's own) and its
    type."""

    field: dataclasses.Field
    owner: type
    group: str | None
    annotation: Any

    @property
    def name(self) -> str:
        return self.field.name


@functools.cache
def flat_fields(config_cls: type) -> tuple[FlatField, ...]:
    """The config's options, flat: its own fields in order, each group's fields in the group's place (read once
    per class: every construction of a grouped config asks)."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        cls = f.metadata.get("group")
        if cls is None:
            out.append(FlatField(f, config_cls, None, hints.get(f.name)))
            continue
        group_hints = typing.get_type_hints(cls)
        out.extend(FlatField(g, cls, f.name, group_hints.get(g.name)) for g in dataclasses.fields(cls))
    return tuple(out)


def flat_names(config_cls: type) -> list[str]:
    return [f.name for f in flat_fields(config_cls)]


def nest(config_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Flat ``values`` (name -> value, as a command line or ``config.json`` gives them) as ``config_cls``'s
    constructor arguments: the groups' options gathered into group objects. A group given whole is kept, and
    one of its options given beside it is applied to it. Unknown names are passed on (the constructor refuses
    them)."""
    groups = group_fields(config_cls)
    owner = {f.name: f.group for f in flat_fields(config_cls) if f.group is not None}
    kwargs: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name in owner:
            parts.setdefault(owner[name], {})[name] = value
        else:
            kwargs[name] = value
    for name, changes in parts.items():
        kwargs[name] = (
            dataclasses.replace(kwargs[name], **changes) if name in kwargs else groups[name](**changes)
        )
    return kwargs


def to_flat(config) -> dict[str, Any]:
    """A config as flat name -> value (``dataclasses.asdict`` of each group spliced in its place)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "group" in f.metadata:
            out.update(dataclasses.asdict(value))
        else:
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def grouped(config_cls: type) -> type:
    """Let the dataclass ``config_cls`` (decorated after ``@dataclass``) take its groups' options as flat keyword
    arguments; a flat name that two of its parts declare is a ``TypeError`` here, when the class is made."""
    names = flat_names(config_cls)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TypeError(f"{config_cls.__name__}: option(s) {', '.join(twice)} declared twice")
    init = config_cls.__init__

    @functools.wraps(init)
    def __init__(self, **values):
        init(self, **nest(config_cls, values))

    config_cls.__init__ = __init__
    return config_cls


__all__ = ["FlatField", "flat_fields", "flat_names", "group", "group_fields", "grouped", "nest", "to_flat"]
