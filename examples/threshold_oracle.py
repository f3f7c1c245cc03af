"""How much pixel IoU does a segdec run's threshold leave on the table? (issue 27)

    python examples/threshold_oracle.py --model RUN --out RUN/threshold_oracle.json

``transfer localize`` binarises the defect map at the threshold that maximises the pooled pixel F1 on the run's
validation fold. This script scores the defective images' mean IoU at every threshold of a fine grid (the
localize grid, 0.01 ... 0.99, and a logit-spaced one that reaches 1 - 1e-6, where an over-confident map's best
threshold lies), on the validation fold and on the test fold, and reports three thresholds side by side:

    chosen         what ``transfer localize`` chooses (pooled pixel F1 on validation)
    best on val    the mean IoU of the defective validation images at its highest
    best on test   the oracle: the best threshold for the test images themselves (not a usable choice, the
                   bound any threshold rule stays under)

When the oracle is close to the chosen threshold's IoU, the threshold is not what holds the IoU back: the maps
are. Test images are the run's own test fold (``--folds``/``--test-fraction``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from dataonomy.datasets import open_image  # noqa: E402
from dataonomy.errors import DataonomyError  # noqa: E402
from dataonomy.io import write_json  # noqa: E402
from dataonomy.progress import progress  # noqa: E402
from transfer import localize as L  # noqa: E402
from transfer.data import run_fold  # noqa: E402
from transfer.localize_run import load_localization_model, segmap_settings  # noqa: E402

# The localize grid and a logit-spaced one up to sigmoid(14) (about 1 - 8e-7), merged.
THRESHOLDS = np.unique(np.r_[L.DEFAULT_THRESHOLDS, np.round(1 / (1 + np.exp(-np.linspace(-4, 14, 73))), 7)])


def fold_curves(loaded, settings, split: str, defective_only: bool) -> tuple[L.ThresholdCurves, ...]:
    """Pixel counts of a fold's images (only its defective ones with ``defective_only``) at every threshold of
    our grid and of the localize grid (on which the product chooses)."""
    fold = run_fold(loaded.config, split)
    curves = L.ThresholdCurves(THRESHOLDS), L.ThresholdCurves()
    chosen = [i for i, s in enumerate(fold.samples) if s.defect or not defective_only]
    for i in progress(chosen, desc=f"{split} heatmaps"):  # a bar on a terminal, steady lines in a log
        sample = fold.samples[i]
        pixels = torch.tensor(np.asarray(open_image(sample.path, "RGB"))).permute(2, 0, 1)[None]
        heat = settings.heatmap(loaded.model, loaded.normalize(pixels.to(settings.device))[0])
        for c in curves:
            c.add(heat, fold.mask(i))
    return curves


def oracle(model: str, device: str = "cpu") -> dict:
    """The three thresholds and the test images' mean IoU at each, with both curves."""
    loaded = load_localization_model(model, device)
    if "segmap" not in loaded.record.head_kind.localize_modes:
        raise DataonomyError(f"--model {model}: not a segdec run (this script scores its defect map)")
    settings = segmap_settings(loaded, device)
    with torch.no_grad():
        val, val_on_localize_grid = fold_curves(loaded, settings, "val", defective_only=False)
        test, _ = fold_curves(loaded, settings, "test", defective_only=True)
    chosen = val_on_localize_grid.best()["value"]  # validation_threshold's choice
    val_iou, test_iou = (c.iou_defective / c.n_defective for c in (val, test))
    at = {t: i for i, t in enumerate(THRESHOLDS)}

    def row(name: str, value: float) -> dict:
        i = at[value]
        return {
            "rule": name,
            "threshold": value,
            "val_iou": float(val_iou[i]),
            "test_iou": float(test_iou[i]),
        }

    # Ties go to the highest threshold, as the product's choice does.
    last = len(THRESHOLDS) - 1
    return {
        "model": str(model),
        "n_val_images": val.n_images,
        "n_val_defective": val.n_defective,
        "n_test_defective": test.n_defective,
        "rows": [
            row("chosen (pooled pixel F1 on validation)", chosen),
            row("best on validation", float(THRESHOLDS[last - int(np.argmax(val_iou[::-1]))])),
            row("best on test (oracle)", float(THRESHOLDS[last - int(np.argmax(test_iou[::-1]))])),
        ],
        "thresholds": THRESHOLDS.tolist(),
        "val_mean_iou_defective": val_iou.tolist(),
        "test_mean_iou_defective": test_iou.tolist(),
    }


def main(
    model: str = typer.Option(..., help="A segdec fine-tuning run folder (or its best.pt)."),
    out: Path = typer.Option(
        ..., help="Where to write the JSON report (the curves and the three thresholds)."
    ),
    device: str = typer.Option("cpu", help="cpu or cuda."),
) -> None:
    try:
        report = oracle(model, device)
    except DataonomyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    write_json(out, report)
    typer.echo("| threshold rule | threshold | val mean IoU (defective) | test mean IoU (defective) |")
    typer.echo("|---|---|---|---|")
    for r in report["rows"]:
        typer.echo(f"| {r['rule']} | {r['threshold']:.6g} | {r['val_iou']:.3f} | {r['test_iou']:.3f} |")


if __name__ == "__main__":
    typer.run(main)
