"""What both CLIs share: turning a DataonomyError into a one-line message and exit code 2."""

from __future__ import annotations

import warnings

import typer

from dataonomy.errors import DataonomyError


def parse_list(value: str | None) -> list[str] | None:
    """``"1, 3,Class4"`` -> ``["1", "3", "Class4"]``; None or empty -> None."""
    items = [c.strip() for c in value.split(",") if c.strip()] if value else []
    return items or None


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
