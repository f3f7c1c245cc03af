"""Command-line options declared once: on the config dataclass field each one sets.

A config field carries its option in its metadata (:func:`opt`): the help text and, only where the command
line differs from the field, the flag, the type typed on the command line with its parser, and the default the
option shows (None where the field's default is derived: from the architecture, the base, the head).
:func:`config_options` turns a config class's fields into a typer command's options, so that a new option is
one field (HfArgumentParser's idea, with typer): its name, default and help come from the field, and
``tests/test_config_cli.py`` holds every command to its config's fields.

Typer is imported only when a command is built, so a config module stays light to import.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

FIELD_DEFAULT: Any = object()  # the option's default is the field's


# Parsers from what is typed to a field's value: ``parse(text, flag)``, a one-line error naming the flag.


def parse_list(value: str | None, flag: str = "") -> list[str] | None:
    """``"1, 3,Class4"`` -> ``["1", "3", "Class4"]``; None or empty -> None."""
    items = [c.strip() for c in value.split(",") if c.strip()] if value else []
    return items or None


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | None, option: str) -> float | None:
    """Seconds of a duration such as ``90s``, ``30m``, ``1h30m`` or ``2.5h`` (None stays None); a bare number
    or an unknown unit is a one-line error naming ``option``."""
    import re

    from dataonomy.errors import DataonomyError

    if text is None:
        return None
    compact = re.sub(r"\s", "", text.lower())
    if not re.fullmatch(r"(\d+(\.\d+)?[smhd])+", compact):
        raise DataonomyError(
            f"{option} '{text}': give a duration with its unit, such as 90s, 30m, 1h30m or 2h"
        )
    return sum(
        float(value) * _DURATION_UNITS[unit]
        for value, unit in re.findall(r"(\d+(?:\.\d+)?)([smhd])", compact)
    )


def parse_rgb(text: str | None, option: str) -> tuple[float, float, float] | None:
    """``"0.5,0.5,0.5"`` -> three floats (the config checks there are three)."""
    from dataonomy.errors import DataonomyError

    if text is None:
        return None
    try:
        return tuple(float(v) for v in parse_list(text) or [])
    except ValueError:
        raise DataonomyError(f"{option} {text}: give three comma-separated numbers (R,G,B)") from None


def parse_size(text: str | None, option: str) -> tuple[int, int] | None:
    """``"256"`` -> (256, 256), ``"320,240"`` -> (320, 240) (width, height); one-line error otherwise."""
    from dataonomy.errors import DataonomyError

    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).replace("x", ",").split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 8:
        raise DataonomyError(f"{option} {text}: give one side or width,height in pixels (at least 8)")
    return (values[0], values[-1])


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """How a config field appears on the command line (see :func:`opt`)."""

    help: str
    flag: str | None = None
    option_default: Any = FIELD_DEFAULT
    type: Any = None
    parse: Callable[[Any, str], Any] | None = None
    hidden: bool = False
    panel: str | None = None


def opt(default: Any = dataclasses.MISSING, help: str = "", **spec: Any) -> Any:
    """A dataclass field with its command-line option: ``lr: float = opt(0.01, "Peak learning rate.")``; a
    required field: ``base: str = opt(help="...")``.

    ``spec`` takes :class:`OptionSpec`'s other fields: ``flag`` (default ``--field-name``, and
    ``--x/--no-x`` for a boolean that is on or undecided by default), ``option_default`` (what the option
    shows, when not the field's: None for a derived default), ``type`` (what is typed, when not the field's:
    ``str`` for a list given comma-separated), ``parse`` (``parse(text, flag)`` -> the field's value; None
    stays None), ``hidden``, ``panel`` (the ``--help`` section) and ``default_factory``."""
    if not help:
        raise ValueError("opt(): every option needs its help text")
    factory = spec.pop("default_factory", dataclasses.MISSING)
    metadata = {"cli": OptionSpec(help, **spec)}
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def same_option(config_cls: type, name: str, default: Any = dataclasses.MISSING, **changes: Any) -> Any:
    """A field whose option is ``config_cls``'s field ``name``'s (its help, flag, parser), with ``changes``:
    one declaration for one option that two configs hold (``SelectConfig.target_masks`` is ``--masks``)."""
    spec = option_spec(config_cls, name)
    if spec is None:
        raise ValueError(f"same_option(): {config_cls.__name__}.{name} has no option")
    return dataclasses.field(default=default, metadata={"cli": dataclasses.replace(spec, **changes)})


def option_spec(config_cls: type, name: str) -> OptionSpec | None:
    """The option of field ``name``: its own, or, for a field a subclass redeclares only to change its default,
    the nearest base class's."""
    for cls in config_cls.__mro__:
        field = getattr(cls, "__dataclass_fields__", {}).get(name)
        if field is not None and "cli" in field.metadata:
            return field.metadata["cli"]
    return None


def _plain_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; a list or tuple is typed as text (its ``parse`` splits it)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0] if len(args) == 1 else str
    if typing.get_origin(annotation) in (list, tuple):
        return str
    return annotation


def _flag(name: str, spec: OptionSpec, annotation: Any, default: Any) -> str:
    if spec.flag is not None:
        return spec.flag
    flag = "--" + name.replace("_", "-")
    if annotation is bool and default is not False:
        return f"{flag}/--no-{flag[2:]}"  # on (or left to the run) by default: say how to turn it off
    return flag


@dataclasses.dataclass(frozen=True)
class FieldOption:
    """One generated option: the command parameter it is (named after its flag, which a field may spell
    differently: ``--workers`` sets ``num_workers``) and how its text becomes the field's value."""

    name: str
    flag: str
    parameter: inspect.Parameter
    parse: Callable[[Any, str], Any] | None

    @property
    def param(self) -> str:
        return self.parameter.name

    def value(self, text: Any) -> Any:
        return (
            self.parse(text, self.flag.split("/")[0].split(" ")[0])
            if self.parse is not None and text is not None
            else text
        )


def field_options(config_cls: type, skip: tuple[str, ...] = ()) -> list[FieldOption]:
    """The options of ``config_cls``'s fields that have one (:func:`opt`), but ``skip``, in field order; an
    option group's fields (:func:`dataonomy.option_groups.group`) in the group's place, named flat."""
    import typer

    from dataonomy.option_groups import flat_fields

    out = []
    for flat in flat_fields(config_cls):
        field = flat.field
        spec = option_spec(flat.owner, field.name)
        if spec is None or field.name in skip:
            continue
        annotation = spec.type or _plain_type(flat.annotation)
        default = spec.option_default if spec.option_default is not FIELD_DEFAULT else field.default
        if default is dataclasses.MISSING:
            default = None  # a required field: the config says which option is missing, in its own words
        flag = _flag(field.name, spec, annotation, default)
        info = typer.Option(
            default, *flag.split(" "), help=spec.help, hidden=spec.hidden, rich_help_panel=spec.panel
        )
        param = flag.split("/")[0].split(" ")[0].lstrip("-").replace("-", "_")
        parameter = inspect.Parameter(
            param, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation
        )
        out.append(FieldOption(field.name, flag, parameter, spec.parse))
    return out


def option_fields(config_cls: type, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Parameter name -> field name, where a field's option is spelled otherwise (``workers`` -> ``num_workers``)."""
    return {o.param: o.name for o in field_options(config_cls, skip) if o.param != o.name}


def field_option(config_cls: type, name: str, *, panel: Any = FIELD_DEFAULT) -> Any:
    """Field ``name``'s option alone (a typer ``OptionInfo``), for a command that declares its options by hand
    but sets that field or asks the same question; ``panel`` puts it in another ``--help`` section (None: the
    command's main one)."""
    (option,) = [o for o in field_options(config_cls) if o.name == name]
    info = option.parameter.default
    if panel is not FIELD_DEFAULT:
        info = copy.copy(info)
        info.rich_help_panel = panel
    return info


def config_options(config_cls: type, *, skip: tuple[str, ...] = (), first: tuple[str, ...] = ()) -> Callable:
    """Give a typer command one option per field of ``config_cls`` (:func:`field_options`).

    The command declares only what is not a field (``ctx``, ``--out``, ``--device``, ...) and ends with
    ``**fields``: it is called with the fields' values, parsed (``--classes 1,3`` -> ``["1", "3"]``). A
    parameter the command declares itself wins over the field of that name. ``--help`` lists the command's
    own options, then the fields named in ``first``, then the others in field order (each in its panel)."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        options = [o for o in field_options(config_cls, skip) if o.param not in {p.name for p in own}]
        options.sort(key=lambda o: first.index(o.name) if o.name in first else len(first))

        @functools.wraps(command)
        def with_fields(**kwargs):
            fields = {o.name: o.value(kwargs.pop(o.param)) for o in options}
            return command(**kwargs, **fields)

        with_fields.__signature__ = signature.replace(parameters=[*own, *(o.parameter for o in options)])
        return with_fields

    return decorate


__all__ = [
    "FIELD_DEFAULT",
    "FieldOption",
    "OptionSpec",
    "config_options",
    "field_option",
    "field_options",
    "option_fields",
    "opt",
    "option_spec",
    "parse_duration",
    "parse_list",
    "parse_rgb",
    "parse_size",
    "same_option",
]
