"""What both CLIs share: turning a DataonomyError into a one-line message and exit code 2."""

from __future__ import annotations

import warnings

import typer

from dataonomy.cli_options import parse_duration, parse_list  # noqa: F401  (re-exported)
from dataonomy.errors import DataonomyError


def new_app(help: str) -> typer.Typer:
    """A command-line app as both CLIs make one: help without arguments, no completion, plain tracebacks."""
    typer_app = typer.Typer(
        help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
    )

    @typer_app.callback()
    def _app() -> None:
        """Keep subcommands as subcommands even while a group has only one."""

    return typer_app


def run_app(typer_app: typer.Typer, argv: list[str] | None = None) -> int:
    """Run a typer app; a DataonomyError becomes ``error: <message>`` on stderr and exit code 2.

    Usage errors are click's own (exit 2); an interrupt exits 130 after the command's own
    cleanup (partial outputs are written under temporary names, so nothing looks complete).
    """
    # Warnings (skipped files, fallbacks) read as one line each, like errors.
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    try:
        typer_app(args=argv, standalone_mode=True)
    except DataonomyError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def given_options(ctx: typer.Context) -> set[str]:
    """The options given explicitly (not left at their defaults, even where a value equals the default)."""
    return {k for k in ctx.params if ctx.get_parameter_source(k).name != "DEFAULT"}


def with_config(ctx: typer.Context, saved: dict | None, options: dict, rename: dict | None = None) -> dict:
    """A stage's config fields from a ``--config`` file's ``saved`` fields and the command's ``options`` (option
    name -> value; ``rename`` maps option names to field names where they differ): without a file, every option;
    with one, the file's values where no option was given explicitly. The rule behind every ``--config``."""
    rename = rename or {}
    given = given_options(ctx) if saved is not None else set(options)
    return {**(saved or {}), **{rename.get(k, k): v for k, v in options.items() if k in given}}


def old_option_name(ctx: typer.Context, name: str, old_name: str):
    """The value of option ``name`` that kept its old spelling as the hidden option ``old_name``: the one given
    (the old one's if only it was), both is an error."""
    given, spelling = given_options(ctx), {p.name: p.opts[0] for p in ctx.command.params}
    if name in given and old_name in given:
        option, old = spelling[name], spelling[old_name]
        raise DataonomyError(f"{option} and {old}: the same option ({old} is its old name); give one")
    return ctx.params[old_name] if old_name in given else ctx.params[name]
