"""The ``transfer`` command line: pretrain on a manifest, fine-tune on the target, inspect.

Each command parses options, calls the stage modules (training, metrics, localize, rootcause,
export), and prints a short report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from dataonomy.cli_utils import parse_list, run_app
from dataonomy.datasets import DAGM
from dataonomy.io import write_json

app = typer.Typer(
    help="Transfer: pretrain on a Dataonomy manifest, fine-tune a defect classifier, evaluate and localise defects.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _app() -> None:
    """Keep subcommands as subcommands even while a group has only one."""


@app.command("split")
def split_cmd(
    dagm: Path = typer.Option(
        ..., "--dagm", help="DAGM root, a ClassN folder, or one split folder (ClassN/Test)."
    ),
    out: Path = typer.Option(..., "--out", help="JSON file to write with the train/val/test file lists."),
    classes: str = typer.Option(
        None, "--classes", help="Comma-separated DAGM classes (1,3 or Class1,Class3); default all."
    ),
    val_fraction: float = typer.Option(
        0.2, "--val-fraction", help="Share of the training images held out for validation."
    ),
    test_fraction: float = typer.Option(
        0.0,
        "--test-fraction",
        help="Carve a test fold from the images found (for copies without a Test split).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the stratified split."),
    labels_root: Path = typer.Option(
        None,
        "--labels-root",
        help="Folder with ClassN/{Train,Test}/Label/Labels.txt for copies without labels.",
    ),
    allow_partial: bool = typer.Option(
        False, "--allow-partial", help="Accept a Labels.txt listing images missing on disk."
    ),
):
    """Write the seeded, stratified train/validation(/test) split of a DAGM copy that fine-tuning uses."""
    folds = {}
    splits = ("train", "val", "test") if test_fraction > 0 else ("train", "val")
    for split in splits:
        ds = DAGM(
            dagm,
            classes=parse_list(classes),
            split=split,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            labels_root=labels_root,
            allow_partial=allow_partial,
        )
        folds[split] = [{"path": str(s.path), "label": s.label, "defect": bool(s.defect)} for s in ds.samples]
        n_def = sum(r["defect"] for r in folds[split])
        typer.echo(f"{split}: {len(folds[split])} images, {n_def} defective")
    params = {
        "dagm": str(dagm),
        "classes": classes,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
    }
    write_json(out, {"params": params, "folds": folds})
    typer.echo(f"wrote {out}")


def main() -> None:
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
