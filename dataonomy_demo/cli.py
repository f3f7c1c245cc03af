"""The ``dataonomy`` command: :mod:`dataonomy.cli`'s commands plus ``demo``.

The demo trains and inspects with :mod:`transfer`, which builds on :mod:`dataonomy`; registering it here keeps
:mod:`dataonomy` free of imports from the layer above it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from dataonomy.cli import app
from dataonomy.cli_utils import run_app


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(
        Path("demo_out"), "--out", help="Folder for everything the demo writes (must be new or empty)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic data, sampling and training."),
    quick: bool = typer.Option(
        False, "--quick", help="Reduced sizes (every stage, less data): about a minute."
    ),
):
    """Run the whole pipeline on built-in synthetic data: select, pretrain, fine-tune, evaluate, localise, root cause."""
    from dataonomy_demo.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick(out, seed) if quick else DemoConfig(out=out, seed=seed)
    run_demo(cfg, log=typer.echo)


def main() -> None:
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
