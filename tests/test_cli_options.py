"""Options declared once, on the config field they set (dataonomy.cli_options): a new field with its help is a
new option of every command built from the config, named, defaulted, parsed and documented from the field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from dataonomy.cli_options import config_options, opt, parse_list
from dataonomy.errors import DataonomyError


@dataclass(kw_only=True)
class ToyConfig:
    kind: str = "toy"
    data: str = opt(help="Where the images are.", type=Path, option_default=None)
    epochs: int = opt(3, "Training epochs.")
    augment: bool = opt(True, "Flips and crops.")
    patches: bool = opt(False, "Train on patches.")
    classes: list[str] | None = opt(None, "Comma-separated classes.", parse=parse_list)
    crop: int | None = opt(None, "Crop side (default: whole images).", flag="--crop --crop-size")


@dataclass(kw_only=True)
class LongerToyConfig(ToyConfig):
    epochs: int = 10  # a new default, the option's help kept from ToyConfig
    warmup: float = opt(0.5, "Warm-up epochs.")  # the one new line a new option takes


def _app(config_cls, received: list):
    app = typer.Typer(add_completion=False)

    @app.command()
    @config_options(config_cls, skip=("kind",))
    def train(ctx: typer.Context, out: Path = typer.Option(..., "--out", help="Run folder."), **fields):
        received.append({"out": out, **fields})

    return app


def test_fields_become_options_with_their_defaults_flags_and_help():
    params = {p.name: p for p in typer.main.get_command(_app(ToyConfig, [])).params}
    assert set(params) == {"out", "data", "epochs", "augment", "patches", "classes", "crop"}
    assert params["epochs"].default == 3 and params["epochs"].help == "Training epochs."
    assert params["augment"].opts == ["--augment"] and params["augment"].secondary_opts == ["--no-augment"]
    assert params["patches"].opts == ["--patches"] and params["patches"].secondary_opts == []
    assert params["crop"].opts == ["--crop", "--crop-size"]
    assert params["data"].default is None  # required by the config, which names it when missing


def test_values_arrive_parsed_and_defaults_untouched():
    received: list = []
    result = CliRunner().invoke(
        _app(ToyConfig, received), ["--out", "runs/a", "--data", "imgs", "--classes", "1, 3", "--no-augment"]
    )
    assert result.exit_code == 0, result.output
    assert received == [
        {
            "out": Path("runs/a"),
            "data": Path("imgs"),
            "epochs": 3,
            "augment": False,
            "patches": False,
            "classes": ["1", "3"],
            "crop": None,
        }
    ]


def test_a_new_field_is_a_new_option_and_a_redeclared_default_keeps_its_help():
    received: list = []
    app = _app(LongerToyConfig, received)
    params = {p.name: p for p in typer.main.get_command(app).params}
    assert params["warmup"].help == "Warm-up epochs." and params["warmup"].default == 0.5
    assert params["epochs"].default == 10 and params["epochs"].help == "Training epochs."
    result = CliRunner().invoke(app, ["--out", "r", "--warmup", "1.5", "--crop-size", "64"])
    assert result.exit_code == 0, result.output
    assert received[0]["warmup"] == 1.5 and received[0]["crop"] == 64
    help_text = CliRunner().invoke(app, ["--help"]).output
    assert "--warmup" in help_text and "Warm-up epochs." in help_text


def test_a_parser_error_names_the_option():
    def parse_even(text, flag):
        if int(text) % 2:
            raise DataonomyError(f"{flag} {text}: must be even")
        return int(text)

    @dataclass(kw_only=True)
    class EvenConfig:
        side: int | None = opt(None, "An even side.", type=str, parse=parse_even)

    app = typer.Typer(add_completion=False)

    @app.command()
    @config_options(EvenConfig)
    def run(**fields):
        typer.echo(repr(fields))

    assert CliRunner().invoke(app, ["--side", "4"]).output.strip() == "{'side': 4}"
    result = CliRunner().invoke(app, ["--side", "3"])
    assert isinstance(result.exception, DataonomyError) and str(result.exception) == "--side 3: must be even"


def test_an_option_without_help_is_refused_where_it_is_declared():
    with pytest.raises(ValueError, match="help text"):
        opt(3)


def test_a_hand_declared_command_reuses_a_fields_option_in_its_own_panel():
    """`dataonomy features --backbone` asks select's question: one declaration, shown in features' main panel."""
    from dataonomy.cli_options import field_option
    from dataonomy.select_config import SelectConfig

    shared = field_option(SelectConfig, "backbone")
    moved = field_option(SelectConfig, "backbone", panel=None)
    assert moved.help == shared.help and moved.default == shared.default == "auto"
    assert moved.rich_help_panel is None and shared.rich_help_panel is not None
    assert field_option(SelectConfig, "backbone").rich_help_panel == shared.rich_help_panel  # not changed
