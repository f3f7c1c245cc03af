"""The selection against the same budget elsewhere (issue 25, part 4), as pre-registered in docs/experiment.md::

    python examples/selection_comparison.py --out comparison_out           # 36 seeds x 5 conditions (hours on 2 cores)
    python examples/selection_comparison.py --out comparison_out --quick   # every stage on tiny sizes (CI)
    python examples/selection_comparison.py --out comparison_k100 --k 100 --diversity-max 20 \
        --conditions dataonomy,random,bottom,all                            # the k = 100 comparison (registered too)

The instrument is the pretraining ablation's scratch arm (``examples/pretrain_ablation.py``, shared with
``examples/affinity_transfer.py``): ``small_cnn`` pretrained from random on a condition's classes to the validation
plateau, segdec fine-tuned 120 steps on real DAGM Class1 with ``--defective-train`` 10 defective training images.
Conditions, each a trunk of the same converged recipe:

    dataonomy  the BIP selection of k = 20 pool classes for the seed's Class1 fold, on its training images only,
               with the README's constraints (``--diversity-depth 6 --diversity-max 4``: with one target class and
               no diversity constraint the programme is the greedy top k)
    greedy     the k pool classes of highest affinity for the same fold (the selection without constraints)
    random     draw ``seed mod --random-draws`` of k random pool classes (``affinity_transfer.py``'s subsets)
    all        all 200 pool classes
    bottom     the k pool classes of lowest affinity for the same fold (the k = 100 comparison: does the affinity
               rank transfer at all?)
    neu-seg    a defect-domain source: NEU-Seg's images as three classes, one per defect type (the most common
               class index of the image's mask), at the budget of k pool classes (as many training and validation
               images as k classes of 50 give)

Seed s fine-tunes every condition on fold s mod 3 with initialisation seed s. The paired analysis (two-sided
Wilcoxon signed-rank on the seeds' differences, Holm-corrected within each family) is computed once every planned
seed is done: ``results.json`` holds the runs as they finish and ``analysis`` only then. Runs are skipped when
complete and resumed from their checkpoint when interrupted, so a run stopped at any point continues where it stood.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "examples"))

from affinity_transfer import (  # noqa: E402
    AffinityTransferConfig,
    finetune_config,
    pretrain,
    selection_run,
    source_pool,
)
from pretrain_ablation import _wilcoxon, stage_neu  # noqa: E402
from subset_experiment import (  # noqa: E402
    SHARED,
    DeviceOpt,
    LocalizeOpt,
    QuickOpt,
    check_study_folder,
    evaluate,
    log,
    random_subset,
    run_or_exit,
    train_run,
)

from dataonomy.errors import DataonomyError  # noqa: E402
from dataonomy.io import write_json  # noqa: E402

CONDITIONS = ("dataonomy", "greedy", "random", "all", "neu-seg")  # the k = 20 comparison, as registered
# ``bottom`` (the k classes of lowest affinity) is the k = 100 comparison's: does the affinity rank at all?
KNOWN_CONDITIONS = (*CONDITIONS, "bottom")
# (condition, baseline, metric) per family, each test kept where a run has both conditions; the primary family
# decides, the secondary one is reported.
PRIMARY = (
    ("dataonomy", "greedy", "ap"),
    ("dataonomy", "random", "ap"),
    ("dataonomy", "all", "ap"),
    ("dataonomy", "bottom", "ap"),
)
SECONDARY = (
    ("dataonomy", "greedy", "mean_iou"),
    ("dataonomy", "random", "mean_iou"),
    ("dataonomy", "all", "mean_iou"),
    ("dataonomy", "bottom", "mean_iou"),
    ("neu-seg", "all", "ap"),
)
# NEU-Seg's defect types (its masks' class indices) as source classes, under ids outside WordNet's numbering so
# the Tiny ImageNet reader takes them and nothing mistakes them for ImageNet classes.
NEU_TYPES = {1: "n99000001", 2: "n99000002", 3: "n99000003"}


@dataclass
class ComparisonConfig(AffinityTransferConfig):
    """Every parameter of the comparison (saved as ``comparison_config.json`` in ``out``). The instrument's
    fields are the affinity study's; ``subsets`` is the number of random draws."""

    out: Path = Path("comparison_out")
    seeds: int = 36
    subsets: int = 6
    conditions: tuple[str, ...] = CONDITIONS
    affinities: tuple[str, ...] = ("softmax",)  # the selection's affinity: the product's default
    diversity_depth: int | None = 6
    diversity_max: int | None = 4
    neu_root: Path = SHARED / "neu-seg"
    neu_images_per_type: int | None = None  # None: k x 50 / 3 training and as many validation images a type

    @classmethod
    def quick_config(cls, out: Path, **changes) -> ComparisonConfig:
        sizes = dataclasses.asdict(AffinityTransferConfig.quick_config(out))
        return cls(**(sizes | dict(seeds=2, subsets=2, neu_images_per_type=4) | changes))

    def images_per_type(self) -> int:
        return self.neu_images_per_type or self.k * 50 // len(NEU_TYPES)


# --- 1. the conditions' classes ------------------------------------------------------------------------------------


def fold_subsets(cfg: ComparisonConfig, fold: int, pool: list[str]) -> dict[str, list[str]]:
    """The ``dataonomy`` (BIP with the constraints), ``greedy`` (top k) and ``bottom`` (the k of lowest affinity)
    classes for Class1's fold ``fold``, kept in ``OUT/selection/foldF.json``."""
    path = cfg.out / "selection" / f"fold{fold}.json"
    if path.exists() and "bottom" in (record := json.loads(path.read_text())):
        return record
    run = selection_run(
        cfg, fold, cfg.affinities[0], pool, f"fold{fold}-selection",
        diversity_depth=cfg.diversity_depth, diversity_max=cfg.diversity_max,
    )  # fmt: skip
    names = run.source_classes
    record = {
        "fold": fold,
        "dataonomy": sorted(names[i] for i in run.result.selected),
        "greedy": sorted(names[i] for i in run.result.greedy.selected),
        # the affinity the programme maximised, summed over target classes; ties go to the lower index
        "bottom": sorted(names[i] for i in np.argsort(run.affinity.sum(0), kind="stable")[: cfg.k]),
        "greedy_violations": [v.message for v in run.result.greedy.violations],
        "manifest": str(run.manifest_path),
    }
    write_json(path, record)
    return record


def neu_type(mask: Path) -> int:
    """The defect type of a NEU-Seg image: the most common non-zero class index of its mask."""
    from PIL import Image

    values = np.asarray(Image.open(mask))
    counts = np.bincount(values[values > 0].ravel(), minlength=max(NEU_TYPES) + 1)
    return int(counts.argmax())


def stage_neu_source(cfg: ComparisonConfig) -> Path:
    """NEU-Seg (without its repeated images) as a Tiny ImageNet-layout pool of three classes in
    ``OUT/source/neu-seg``: per type a seeded draw of ``images_per_type`` training and as many validation images,
    as links; written under a temporary name and renamed when complete."""
    import shutil

    root = (cfg.out / "source" / "neu-seg").resolve()
    if (root / "wnids.txt").exists():
        return root
    target = stage_neu(cfg)
    by_type: dict[int, list[Path]] = {t: [] for t in NEU_TYPES}
    for image in sorted((target / "images").iterdir()):
        kind = neu_type(target / "masks" / f"{image.stem}.png")
        if kind in by_type:
            by_type[kind].append(image)
    n = cfg.images_per_type()
    tmp = root.with_name("neu-seg.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "val" / "images").mkdir(parents=True)
    annotations = []
    for kind, wnid in NEU_TYPES.items():
        images = by_type[kind]
        if len(images) < 2 * n:
            raise DataonomyError(
                f"{cfg.neu_root}: defect type {kind} has {len(images)} images, {2 * n} needed"
            )
        rng = np.random.default_rng([cfg.base_seed, kind])
        drawn = [images[i] for i in rng.choice(len(images), size=2 * n, replace=False)]
        (tmp / "train" / wnid / "images").mkdir(parents=True)
        for image in drawn[:n]:
            os.symlink(image.resolve(), tmp / "train" / wnid / "images" / image.name)
        for image in drawn[n:]:
            os.symlink(image.resolve(), tmp / "val" / "images" / f"{kind}_{image.name}")
            annotations.append(f"{kind}_{image.name}\t{wnid}\t0\t0\t0\t0")
    (tmp / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    (tmp / "wnids.txt").write_text("\n".join(NEU_TYPES.values()) + "\n")
    (tmp / "words.txt").write_text("".join(f"{w}\tNEU-Seg defect type {t}\n" for t, w in NEU_TYPES.items()))
    tmp.rename(root)
    return root


class Trunks:
    """Each condition's pretrained trunk for a seed, pretrained the first time it is asked for."""

    def __init__(self, cfg: ComparisonConfig, pool: list[str], runtime):
        self.cfg, self.pool, self.runtime = cfg, pool, runtime
        self.selections: dict[int, dict] = {}

    def name_and_classes(self, condition: str, seed: int) -> tuple[str, list[str]]:
        cfg = self.cfg
        if condition in ("dataonomy", "greedy", "bottom"):
            fold = cfg.fold(seed)
            if fold not in self.selections:
                self.selections[fold] = fold_subsets(cfg, fold, self.pool)
            return f"{condition}-fold{fold}", self.selections[fold][condition]
        if condition == "random":
            draw = seed % cfg.subsets
            return f"subset{draw:02d}", random_subset(self.pool, cfg.k, draw, cfg.base_seed)
        if condition == "all":
            return "all", self.pool
        return "neu-seg", list(NEU_TYPES.values())

    def __call__(self, condition: str, seed: int) -> tuple[str, Path]:
        name, wnids = self.name_and_classes(condition, seed)
        source = stage_neu_source(self.cfg) if condition == "neu-seg" else None
        return name, pretrain(self.cfg, name, wnids, self.runtime, source_root=source)


# --- 2. the pre-registered analysis --------------------------------------------------------------------------------


def holm(pvalues: list[float | None]) -> list[float]:
    """Holm's step-down adjustment of a family's p-values (a test without a p, every difference zero, counts
    as p = 1)."""
    p = np.array([1.0 if v is None else v for v in pvalues])
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def contrast(rows: list[dict], condition: str, baseline: str, metric: str) -> dict:
    """``condition`` minus ``baseline`` on ``metric``, paired by seed over the seeds that have both."""
    values = {(r["condition"], r["seed"]): r.get(metric) for r in rows}
    seeds = sorted(
        s
        for (c, s), v in values.items()
        if c == condition and v is not None and values.get((baseline, s)) is not None
    )
    diffs = np.array([values[(condition, s)] - values[(baseline, s)] for s in seeds])
    return {
        "condition": condition,
        "baseline": baseline,
        "metric": metric,
        "n": len(seeds),
        "mean_difference": float(diffs.mean()) if len(diffs) else None,
        "sd_difference": float(diffs.std(ddof=1)) if len(diffs) > 1 else None,
        "better": int((diffs > 0).sum()),
        "worse": int((diffs < 0).sum()),
        "wilcoxon_p": _wilcoxon(diffs),
    }


def family(rows: list[dict], tests, conditions) -> list[dict]:
    out = [contrast(rows, *t) for t in tests if t[0] in conditions and t[1] in conditions]
    for test, adjusted in zip(out, holm([t["wilcoxon_p"] for t in out]), strict=True):
        test["holm_p"] = adjusted
    return out


def analyse(cfg: ComparisonConfig, rows: list[dict]) -> dict:
    primary = family(rows, PRIMARY, cfg.conditions)
    by_baseline = {t["baseline"]: t for t in primary}

    def wins(baseline: str) -> bool:
        t = by_baseline.get(baseline)
        return bool(t and t["holm_p"] < 0.05 and (t["mean_difference"] or 0) > 0)

    return {
        "primary": primary,
        "secondary": family(rows, SECONDARY, cfg.conditions),
        # the rule written before the run: beats random *and* all on the primary endpoint after Holm
        "selection_helps": wins("random") and wins("all"),
    }


def summarize(cfg: ComparisonConfig, rows: list[dict], seeds_done: int) -> dict:
    per_condition = {}
    for condition in cfg.conditions:
        mine = [r for r in rows if r["condition"] == condition]
        per_condition[condition] = {
            m: _mean_sd([r.get(m) for r in mine]) for m in ("ap", "auroc", "mean_iou")
        } | {"runs": len(mine)}
    return {
        "config": cfg.to_dict(),
        "seeds_planned": cfg.seeds,
        "seeds_done": seeds_done,
        "conditions": per_condition,
        # computed only on the planned seeds, as pre-registered: no look at a partial run
        "analysis": analyse(cfg, rows) if seeds_done >= cfg.seeds else None,
        "runs": rows,
    }


def _mean_sd(values: list) -> dict:
    kept = [v for v in values if v is not None]
    return {
        "mean": float(np.mean(kept)) if kept else None,
        "sd": float(np.std(kept, ddof=1)) if len(kept) > 1 else None,
    }


def format_results(results: dict) -> str:
    lines = [
        f"# The selection against the same budget elsewhere ({results['seeds_done']} of "
        f"{results['seeds_planned']} seeds)",
        "",
    ]
    analysis = results["analysis"]
    if analysis is None:
        lines.append("The analysis is computed once every planned seed is done (pre-registered).")
        return "\n".join(lines) + "\n"
    lines += ["| condition | AP | AUROC | pixel mean IoU |", "|---|---|---|---|"]
    for condition, stats in results["conditions"].items():
        cells = [
            f"{s['mean']:.3f} +- {s['sd']:.3f}" if s["sd"] is not None else str(s["mean"])
            for s in (stats["ap"], stats["auroc"], stats["mean_iou"])
        ]
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    for title in ("primary", "secondary"):
        lines += [
            "",
            f"{title} family (Holm)",
            "",
            "| contrast | metric | n | mean diff | better/worse | p | Holm p |",
        ]
        lines.append("|---|---|---|---|---|---|---|")
        for t in analysis[title]:
            mean = "n/a" if t["mean_difference"] is None else f"{t['mean_difference']:+.3f}"
            p = "n/a" if t["wilcoxon_p"] is None else f"{t['wilcoxon_p']:.4f}"
            lines.append(
                f"| {t['condition']} - {t['baseline']} | {t['metric']} | {t['n']} | {mean} | "
                f"{t['better']}/{t['worse']} | {p} | {t['holm_p']:.4f} |"
            )
    lines += ["", f"selection helps (beats random and all after Holm): {analysis['selection_helps']}"]
    return "\n".join(lines) + "\n"


# --- 3. the whole comparison ---------------------------------------------------------------------------------------


def check_saved_config(cfg: ComparisonConfig) -> None:
    check_study_folder(
        cfg.out / "comparison_config.json",
        cfg.to_dict(),
        ComparisonConfig().to_dict(),
        ("seeds",),
        "a comparison",
    )


def run_comparison(cfg: ComparisonConfig) -> dict:
    from transfer.training import Runtime

    unknown = sorted(set(cfg.conditions) - set(KNOWN_CONDITIONS))
    if unknown:
        raise DataonomyError(
            f"--conditions: unknown {', '.join(unknown)} (known: {', '.join(KNOWN_CONDITIONS)})"
        )
    started = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    check_saved_config(cfg)
    runtime = Runtime(device=cfg.device, progress=False)
    pool = source_pool(cfg)
    if cfg.k > len(pool):
        raise DataonomyError(f"--k {cfg.k}: the pool holds only {len(pool)} classes")
    trunks = Trunks(cfg, pool, runtime)
    rows, worked = [], []
    results = summarize(cfg, rows, 0)
    for seed in range(cfg.seeds):
        remaining = f", about {np.mean(worked) * (cfg.seeds - seed) / 60:.0f} min left" if worked else ""
        log(f"== seed {seed} ({seed + 1} of {cfg.seeds}, fold {cfg.fold(seed)}{remaining}) ==")
        seed_started = time.perf_counter()
        fresh = False
        for condition in cfg.conditions:
            name, base = trunks(condition, seed)
            run_dir = cfg.out / "finetune" / condition / f"seed{seed}"
            fresh |= not (run_dir / "experiment_metrics.json").exists()
            train_run(finetune_config(cfg, base, seed), run_dir, runtime)
            row = {"condition": condition, "seed": seed, "fold": cfg.fold(seed), "trunk": name}
            rows.append(row | evaluate(cfg, run_dir))
            log(f"    {condition} ({name}): done")
        if fresh:
            worked.append(time.perf_counter() - seed_started)
        results = summarize(cfg, rows, seed + 1)
        results["seconds_this_invocation"] = round(time.perf_counter() - started, 1)
        write_json(cfg.out / "results.json", results)
        (cfg.out / "results.md").write_text(format_results(results))
    log(format_results(results))
    return results


def main(
    out: Path = typer.Option(Path("comparison_out"), "--out", help="Folder for every run and the results."),
    seeds: int = typer.Option(
        None, "--seeds", help="Paired seeds (default 36, pre-registered; --quick: 2); more extends a run."
    ),
    conditions: str = typer.Option(
        ",".join(CONDITIONS), "--conditions", help="Comma-separated conditions to run (default: all five)."
    ),
    k: int = typer.Option(
        None, "--k", help="Classes per subset (default 20, the registered comparison; the k = 100 one: 100)."
    ),
    diversity_max: int = typer.Option(
        None,
        "--diversity-max",
        help="The selection's limit of classes under one WordNet node at depth 6 (default 4 = k / 5 at k = 20).",
    ),
    localize: bool = LocalizeOpt,
    device: str = DeviceOpt,
    quick: bool = QuickOpt,
) -> None:
    """The selection against greedy, random, all and a defect-domain source; see the module docstring."""
    changes = dict(device=device, localize=localize, conditions=tuple(c for c in conditions.split(",") if c))
    for name, value in (("seeds", seeds), ("k", k), ("diversity_max", diversity_max)):
        if value is not None:
            changes[name] = value
    cfg = ComparisonConfig.quick_config(out, **changes) if quick else ComparisonConfig(out=out, **changes)
    run_or_exit(run_comparison, cfg)


if __name__ == "__main__":
    typer.run(main)
