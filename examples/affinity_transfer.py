"""Does affinity predict transfer? (issue 25, part 3: Taskonomy's question, the method's foundation)

Random k-class subsets of the source pool, each pretrained to convergence and fine-tuned on a few-defect
target; for every affinity the product offers, Spearman's rho (with a bootstrap 95 % interval) between a
subset's affinity score and its fine-tuned test AP and pixel IoU::

    python examples/affinity_transfer.py --out affinity_out              # 20 subsets x 3 seeds (hours on 2 cores)
    python examples/affinity_transfer.py --out affinity_out --quick      # every stage on tiny sizes (CI)

Source pool: the 200 standard Tiny ImageNet classes. Target: real DAGM Class1 with ``--defective-train N``
defective training images (every clean one kept), segdec on ``small_cnn`` from the subset-pretrained trunk, the
pretraining ablation's recipe (``examples/pretrain_ablation.py``: converged pretraining, 120 fine-tuning steps).
Seed s fine-tunes Class1's fold s mod 3.

A subset's affinity score is the selection programme's objective for it (``SelectionProblem.objective``: the
sum over its classes of their AHP-normalised affinity to the target's classes), computed by ``run_selection``
on the fold's training images only (staged as links, as in ``examples/subset_experiment.py``), one score per
fold, averaged over the folds the subset is tested on. Predictors besides the affinities, computed without
fine-tuning: LogME of the subset-pretrained trunk's cell features of the fold's training images
(``transfer.transferability``), and the pretraining's own validation top-1.

Every run is skipped when complete and resumed from its checkpoint when interrupted; ``results.json``,
``results.md`` and ``results.png`` are rewritten after every subset, so a run cut short still reports the
subsets it finished (and says how many).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "examples"))

from subset_experiment import (  # noqa: E402
    SHARED,
    TINY_IMAGENET_EXTRAS,
    DeviceOpt,
    LocalizeOpt,
    QuickOpt,
    check_study_folder,
    evaluate,
    log,
    random_subset,
    run_or_exit,
    stage_training_fold,
    train_run,
)

from dataonomy.errors import DataonomyError  # noqa: E402
from dataonomy.io import atomic_path, write_json  # noqa: E402
from dataonomy.selection import SelectConfig  # noqa: E402

AFFINITIES = ("softmax", "prototype", "gaussian", "frechet")
# Predictors computed without fine-tuning, besides the affinities.
ESTIMATORS = ("logme", "pretrain_val_top1")
OUTCOMES = ("ap", "mean_iou")


@dataclass
class AffinityTransferConfig:
    """Every parameter of the study (saved as ``affinity_transfer_config.json`` in ``out``)."""

    out: Path = Path("affinity_out")
    source_root: Path = SHARED / "tiny-imagenet-200-subset"
    dagm_root: Path = SHARED / "dagm" / "Class1" / "Test"
    subsets: int = 20
    k: int = 20
    seeds: int = 3  # fine-tuning seeds per subset: seed s tests fold s mod folds
    defective_train: int = 10
    folds: int = 3
    affinities: tuple[str, ...] = AFFINITIES
    # the selection's features: a sample of images per class, as examples/subset_experiment.py's selection
    backbone: str = "efficientnet_lite0"
    select_source_images_per_class: int = 10
    select_target_images_per_class: int = 100
    # pretraining: the ablation's converged recipe (an epoch budget, early stop on validation top-1)
    arch: str = "small_cnn"
    output_stride: int = 8
    pretrain_image_size: int = 64
    pretrain_epochs: int = 30
    pretrain_patience: int = 4
    pretrain_batch_size: int = 64
    pretrain_lr: float = 0.1
    pretrain_images_per_class: int | None = None
    # fine-tuning: the ablation's recipe
    crop_size: int = 192
    finetune_epochs: int = 3
    finetune_steps_per_epoch: int = 40
    finetune_batch_size: int = 8
    finetune_lr: float = 0.02
    localize: bool = True
    bootstrap_resamples: int = 2000
    base_seed: int = 0
    device: str = "cpu"
    workers: int = 0
    quick: bool = False

    @classmethod
    def quick_config(cls, out: Path, **changes) -> AffinityTransferConfig:
        sizes = dict(
            out=out, subsets=4, k=3, seeds=1, defective_train=3, select_source_images_per_class=2,
            select_target_images_per_class=4, pretrain_image_size=16, pretrain_epochs=2, pretrain_patience=1,
            pretrain_batch_size=8, pretrain_images_per_class=4, crop_size=64, finetune_epochs=1,
            finetune_steps_per_epoch=2, finetune_batch_size=4, bootstrap_resamples=200, quick=True,
        )  # fmt: skip
        return cls(**(sizes | changes))

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    def fold(self, seed: int) -> int:
        return seed % self.folds


def source_pool(cfg: AffinityTransferConfig) -> list[str]:
    wnids = (Path(cfg.source_root) / "wnids.txt").read_text().split()
    pool = [w for w in wnids if w not in TINY_IMAGENET_EXTRAS]
    return pool[:8] if cfg.quick else pool


# --- 1. every pool class's affinity to each training fold, per affinity --------------------------------------------


def selection_run(cfg, fold: int, affinity: str, pool: list[str], name: str, **constraints):
    """``run_selection`` of ``cfg.k`` pool classes for Class1's fold ``fold`` on its training images only (staged
    as links), under ``affinity`` and the BIP ``constraints`` (``SelectConfig`` fields); the manifest is
    ``OUT/affinity/NAME_manifest.json``, the features cached in ``OUT/cache``."""
    from dataonomy.selection import SelectConfig, run_selection

    staged, _ = stage_training_fold(cfg, Path(cfg.dagm_root), fold)
    return run_selection(
        SelectConfig(
            target_root=staged,
            source_root=Path(cfg.source_root),
            source_classes=pool,
            target_split="all",
            images_per_class=cfg.select_source_images_per_class,
            target_images_per_class=cfg.select_target_images_per_class,
            seed=cfg.base_seed,
            backbone=cfg.backbone,
            affinity=affinity,
            k=cfg.k,
            device=cfg.device,
            num_workers=cfg.workers,
            cache_dir=cfg.out / "cache",
            out=cfg.out / "affinity" / f"{name}_manifest.json",
            **constraints,
        ),  # fmt: skip
        log=log,
    )


def class_values(cfg: AffinityTransferConfig, fold: int, affinity: str, pool: list[str]) -> dict[str, float]:
    """Pool class -> what selecting it adds to the selection objective (``SelectionProblem.source_value``) for
    Class1's fold ``fold``, under ``affinity``; kept in ``OUT/affinity/foldF-AFFINITY.json``."""
    from dataonomy.bip import SelectionProblem

    path = cfg.out / "affinity" / f"fold{fold}-{affinity}.json"
    if path.exists():
        return json.loads(path.read_text())["values"]
    run = selection_run(cfg, fold, affinity, pool, f"fold{fold}-{affinity}")
    values = SelectionProblem(run.affinity, k=cfg.k).source_value
    record = {
        "fold": fold,
        "affinity": affinity,
        "target_classes": run.target_classes,
        "values": {w: float(v) for w, v in zip(run.source_classes, values, strict=True)},
    }
    write_json(path, record)
    return record["values"]


def subset_score(values: dict[str, float], wnids: list[str]) -> float:
    """The objective of selecting exactly ``wnids`` (every class serving every target)."""
    return float(sum(values[w] for w in wnids))


# --- 2. pretraining each subset, fine-tuning it on Class1 -----------------------------------------------------------


def pretrain(cfg: AffinityTransferConfig, name: str, wnids: list[str], runtime, source_root=None) -> Path:
    """``small_cnn`` pretrained from random on ``wnids`` of ``source_root`` (default: the pool) to the validation
    plateau, in ``OUT/pretrain/NAME``."""
    from transfer.config import PretrainConfig

    manifest = cfg.out / "pretrain" / f"{name}.json"
    write_json(manifest, {"schema": "dataonomy.manifest/1", "selected": [{"wnid": w} for w in wnids]})
    config = PretrainConfig(
        manifest=str(manifest.resolve()), source_root=str(Path(source_root or cfg.source_root).resolve()),
        wnids=wnids, arch=cfg.arch, init="scratch", image_size=cfg.pretrain_image_size, seed=cfg.base_seed,
        images_per_class=cfg.pretrain_images_per_class, checkpoint_every=10_000, epochs=cfg.pretrain_epochs,
        patience=cfg.pretrain_patience, batch_size=cfg.pretrain_batch_size, lr=cfg.pretrain_lr,
    )  # fmt: skip
    run_dir = cfg.out / "pretrain" / name
    train_run(config, run_dir, runtime)
    return run_dir


def finetune_config(cfg: AffinityTransferConfig, base: Path, seed: int):
    from transfer.checkpoint import finetune_base_fields
    from transfer.config import FinetuneConfig

    fields = dict(
        data=str(Path(cfg.dagm_root).resolve()), folds=cfg.folds, fold=cfg.fold(seed),
        split_seed=cfg.base_seed, defective_train=cfg.defective_train, head="segdec",
        output_stride=cfg.output_stride, crop_size=cfg.crop_size, epochs=cfg.finetune_epochs,
        steps_per_epoch=cfg.finetune_steps_per_epoch, batch_size=cfg.finetune_batch_size, lr=cfg.finetune_lr,
        patience=cfg.finetune_epochs, checkpoint_every=10_000, seed=seed,
    )  # fmt: skip
    if cfg.quick:
        fields["image_size"] = 96
    return FinetuneConfig(**finetune_base_fields(str(base), cfg.arch), **fields)


def trunk_logme(cfg: AffinityTransferConfig, name: str, base: Path, seed: int) -> float:
    from transfer.transferability import run_logme

    path = cfg.out / "logme" / f"{name}-fold{cfg.fold(seed)}.json"
    if not path.exists():
        write_json(path, run_logme(finetune_config(cfg, base, seed), device=cfg.device))
    return json.loads(path.read_text())["logme"]


# --- 3. the correlations --------------------------------------------------------------------------------------------


def spearman_with_interval(x, y, resamples: int, seed: int) -> dict:
    """Spearman's rho of paired ``x``, ``y`` with a percentile bootstrap 95 % interval (subsets resampled in
    pairs, ``scipy.stats.bootstrap``); None where fewer than 3 pairs or either side is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    out = {"n": int(len(x)), "rho": None, "p": None, "ci95": None}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    rho, p = spearmanr(x, y)
    out["rho"], out["p"] = float(rho), float(p)

    def statistic(a, b):
        return spearmanr(a, b).statistic

    out["ci95"] = _paired_interval((x, y), statistic, resamples, seed)
    return out


def _paired_interval(data: tuple, statistic, resamples: int, seed: int) -> list[float] | None:
    """Percentile bootstrap 95 % interval of ``statistic`` over ``data`` resampled in pairs (subsets), or None
    when fewer than 90 % of the resamples define it. A resample that repeats one subset throughout has no rank
    order: its rho is nan (scipy warns per draw); the interval is read from the defined ones."""
    from scipy.stats import bootstrap

    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore")
        distribution = bootstrap(
            data, statistic, paired=True, vectorized=False, n_resamples=resamples, method="percentile",
            random_state=np.random.default_rng(seed),
        ).bootstrap_distribution  # fmt: skip
    defined = distribution[np.isfinite(distribution)]
    if len(defined) < 0.9 * resamples:
        return None
    return [float(v) for v in np.percentile(defined, [2.5, 97.5])]


def rho_difference_with_interval(a, b, y, resamples: int, seed: int) -> dict:
    """rho(a, y) - rho(b, y) over the same subsets, with a percentile bootstrap 95 % interval (subsets
    resampled once for both predictors, so the interval is of the paired difference): whether one predictor
    ranks transfer better than another, not only whether each differs from 0."""
    from scipy.stats import spearmanr

    a, b, y = (np.asarray(v, dtype=float) for v in (a, b, y))
    out = {"n": int(len(y)), "difference": None, "ci95": None}
    if len(y) < 3 or 0 in (np.ptp(a), np.ptp(b), np.ptp(y)):
        return out
    out["difference"] = float(spearmanr(a, y).statistic - spearmanr(b, y).statistic)

    def statistic(a_, b_, y_):
        return spearmanr(a_, y_).statistic - spearmanr(b_, y_).statistic

    out["ci95"] = _paired_interval((a, b, y), statistic, resamples, seed)
    return out


def summarize(cfg: AffinityTransferConfig, subsets: list[dict]) -> dict:
    predictors = (*cfg.affinities, *ESTIMATORS)
    correlations = {}
    for outcome in OUTCOMES:
        for predictor in predictors:
            pairs = [
                (s[predictor], s[outcome])
                for s in subsets
                if s.get(predictor) is not None and s.get(outcome) is not None
            ]
            x, y = (list(v) for v in zip(*pairs, strict=True)) if pairs else ([], [])
            correlations[f"{predictor}_vs_{outcome}"] = spearman_with_interval(
                x, y, cfg.bootstrap_resamples, cfg.base_seed
            )
    best = {}
    for outcome in OUTCOMES:
        ranked = [
            (correlations[f"{a}_vs_{outcome}"]["rho"], a)
            for a in cfg.affinities
            if correlations[f"{a}_vs_{outcome}"]["rho"] is not None
        ]
        best[outcome] = max(ranked)[1] if ranked else None
    # Each predictor against the product's default affinity, paired over the same subsets.
    default = SelectConfig.affinity
    against_default = {}
    for outcome in OUTCOMES:
        for predictor in predictors:
            if predictor == default or default not in cfg.affinities:
                continue
            rows = [s for s in subsets if all(s.get(k) is not None for k in (predictor, default, outcome))]
            against_default[f"{predictor}_vs_{outcome}"] = rho_difference_with_interval(
                [s[predictor] for s in rows], [s[default] for s in rows], [s[outcome] for s in rows],
                cfg.bootstrap_resamples, cfg.base_seed,
            )  # fmt: skip
    return {
        "config": cfg.to_dict(),
        "subsets_done": len(subsets),
        "subsets_planned": cfg.subsets,
        "correlations": correlations,
        "best_affinity": best,
        "default_affinity": default,
        "against_default": against_default,
        "subsets": subsets,
    }


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _against_default_lines(results: dict) -> list[str]:
    against = results.get("against_default") or {}
    if not against:
        return []

    def cell(c: dict) -> str:
        if c["difference"] is None:
            return "-"
        ci = "" if c["ci95"] is None else f" [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
        return f"{c['difference']:+.2f}{ci}"

    default = results["default_affinity"]
    lines = [
        f"Each predictor's rho minus the product's default affinity's (**{default}**), the same subsets "
        "resampled for both (paired bootstrap 95 % interval):",
        "",
        f"| predictor | rho - rho({default}) vs AP | vs pixel IoU |",
        "|---|---|---|",
    ]
    for predictor in dict.fromkeys(k.rsplit("_vs_", 1)[0] for k in against if k.endswith("_vs_ap")):
        lines.append(
            f"| {predictor} | {cell(against[f'{predictor}_vs_ap'])} | {cell(against[f'{predictor}_vs_mean_iou'])} |"
        )
    return [*lines, ""]


def format_results(results: dict) -> str:
    cfg = results["config"]
    lines = [
        f"# Does affinity predict transfer? {results['subsets_done']} of {results['subsets_planned']} random "
        f"{cfg['k']}-class subsets, real Class1 with {cfg['defective_train']} defective training images",
        "",
        f"Each subset pretrained to convergence (at most {cfg['pretrain_epochs']} epochs, patience "
        f"{cfg['pretrain_patience']}) and fine-tuned with {cfg['seeds']} seed(s); Spearman's rho between the "
        "predictor and the subset's mean test metric, with a percentile bootstrap 95 % interval over subsets.",
        "",
        "| predictor | rho vs AP | 95 % CI | p | rho vs pixel IoU | 95 % CI | p |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(c: dict) -> list[str]:
        if c["rho"] is None:
            return ["-", "-", "-"]
        ci = "-" if c["ci95"] is None else f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
        return [f"{c['rho']:+.2f}", ci, f"{c['p']:.3f}"]

    predictors = (*cfg["affinities"], *ESTIMATORS)
    for p in predictors:
        corr = results["correlations"]
        lines.append(
            "| " + " | ".join([p, *cell(corr[f"{p}_vs_ap"]), *cell(corr[f"{p}_vs_mean_iou"])]) + " |"
        )
    lines += [
        "",
        f"Best affinity by rho: against AP **{results['best_affinity']['ap']}**, against pixel IoU "
        f"**{results['best_affinity']['mean_iou']}**.",
        "",
        *_against_default_lines(results),
        "| subset | pretrain val top-1 | epochs | AP (mean) | pixel IoU (mean) | LogME | "
        + " | ".join(cfg["affinities"])
        + " |",
        "|" + "---|" * (6 + len(cfg["affinities"])),
    ]

    def f(x, spec=".3f"):
        return "-" if x is None else format(x, spec)

    for s in results["subsets"]:
        cells = [
            s["name"], f(s["pretrain_val_top1"]), str(s["pretrain_epochs"]), f(s["ap"]), f(s["mean_iou"]),
            f(s["logme"], ".4f"), *(f(s[a], ".4f") for a in cfg["affinities"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_results(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predictors = (*results["config"]["affinities"], *ESTIMATORS)
    fig, axes = plt.subplots(
        len(OUTCOMES), len(predictors), figsize=(3.2 * len(predictors), 6), squeeze=False
    )
    for i, outcome in enumerate(OUTCOMES):
        for j, predictor in enumerate(predictors):
            ax = axes[i, j]
            pts = [
                (s[predictor], s[outcome])
                for s in results["subsets"]
                if s.get(predictor) is not None and s.get(outcome) is not None
            ]
            if pts:
                ax.scatter(*zip(*pts, strict=True), color="tab:blue", alpha=0.7)
            c = results["correlations"][f"{predictor}_vs_{outcome}"]
            rho = "n/a" if c["rho"] is None else f"{c['rho']:+.2f}"
            ci = "" if c["ci95"] is None else f" [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
            ax.set_title(f"rho {rho}{ci}", fontsize=9)
            ax.set_xlabel(predictor, fontsize=8)
            ax.set_ylabel("test AP" if outcome == "ap" else "pixel mean IoU", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


# --- 4. the whole study ---------------------------------------------------------------------------------------------


def check_saved_config(cfg: AffinityTransferConfig) -> None:
    """A folder holds one study: the same parameters, more subsets or seeds allowed (they extend it)."""
    check_study_folder(
        cfg.out / "affinity_transfer_config.json", cfg.to_dict(), AffinityTransferConfig().to_dict(),
        ("subsets", "seeds"), "a study",
    )  # fmt: skip


def run_study(cfg: AffinityTransferConfig) -> dict:
    from transfer.training import Runtime

    unknown = sorted(set(cfg.affinities) - set(AFFINITIES))
    if unknown:
        raise DataonomyError(f"--affinities: unknown {', '.join(unknown)} (known: {', '.join(AFFINITIES)})")
    if cfg.subsets < 3:
        raise DataonomyError(f"--subsets must be at least 3 for a rank correlation, got {cfg.subsets}")
    started = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    check_saved_config(cfg)
    runtime = Runtime(device=cfg.device, progress=False)
    pool = source_pool(cfg)
    if cfg.k > len(pool):
        raise DataonomyError(f"--k {cfg.k}: the pool holds only {len(pool)} classes")
    folds = sorted({cfg.fold(s) for s in range(cfg.seeds)})
    log("== affinity of every pool class to each training fold ==")
    values = {(f, a): class_values(cfg, f, a, pool) for f in folds for a in cfg.affinities}
    subsets, worked = [], []
    results = summarize(cfg, subsets)
    for draw in range(cfg.subsets):
        name = f"subset{draw:02d}"
        wnids = random_subset(pool, cfg.k, draw, cfg.base_seed)
        remaining = f", about {np.mean(worked) * (cfg.subsets - draw) / 60:.0f} min left" if worked else ""
        log(f"== {name} ({draw + 1} of {cfg.subsets}{remaining}) ==")
        subset_started = time.perf_counter()
        done = all(
            (cfg.out / "finetune" / name / f"seed{s}" / "experiment_metrics.json").exists()
            for s in range(cfg.seeds)
        )
        base = pretrain(cfg, name, wnids, runtime)
        summary = json.loads((base / "summary.json").read_text())
        runs = []
        for seed in range(cfg.seeds):
            run_dir = cfg.out / "finetune" / name / f"seed{seed}"
            train_run(finetune_config(cfg, base, seed), run_dir, runtime)
            row = {"seed": seed, "fold": cfg.fold(seed), **evaluate(cfg, run_dir)}
            row["logme"] = trunk_logme(cfg, name, base, seed)
            runs.append(row)
            log(f"    seed {seed}: test AP {row['ap']:.3f}, pixel mean IoU {row['mean_iou']}")
        record = {
            "name": name,
            "wnids": wnids,
            "pretrain_val_top1": summary["best"],
            "pretrain_epochs": summary["epochs"],
            "pretrain_status": summary["status"],
            "ap": _mean([r["ap"] for r in runs]),
            "mean_iou": _mean([r["mean_iou"] for r in runs]),
            "logme": _mean([r["logme"] for r in runs]),
            "runs": runs,
        }
        for a in cfg.affinities:  # the score on the folds this subset was tested on
            record[a] = float(np.mean([subset_score(values[(r["fold"], a)], wnids) for r in runs]))
        subsets.append(record)
        if not done:
            worked.append(time.perf_counter() - subset_started)
        results = summarize(cfg, subsets)
        results["seconds_this_invocation"] = round(time.perf_counter() - started, 1)
        write_json(cfg.out / "results.json", results)
        (cfg.out / "results.md").write_text(format_results(results))
        plot_results(results, cfg.out / "results.png")
    log(format_results(results))
    return results


def main(
    out: Path = typer.Option(Path("affinity_out"), "--out", help="Folder for every run and the results."),
    subsets: int = typer.Option(
        None, "--subsets", help="Random subsets (default 20; --quick: 4); more extends a run."
    ),
    k: int = typer.Option(None, "--k", help="Classes per subset (default 20; --quick: 3)."),
    seeds: int = typer.Option(
        None,
        "--seeds",
        help="Fine-tuning seeds per subset (default 3; --quick: 1); seed s tests fold s mod 3.",
    ),
    defective_train: int = typer.Option(
        None, "--defective-train", help="Defective Class1 training images kept (default 10; --quick: 3)."
    ),
    affinities: str = typer.Option(
        ",".join(AFFINITIES), "--affinities", help="Comma-separated affinities to score the subsets with."
    ),
    localize: bool = LocalizeOpt,
    device: str = DeviceOpt,
    quick: bool = QuickOpt,
) -> None:
    """Random subsets' affinity scores against their fine-tuned transfer; see the module docstring."""
    changes = dict(
        localize=localize,
        device=device,
        affinities=tuple(x for x in affinities.split(",") if x),
    )
    for name, value in (
        ("subsets", subsets),
        ("k", k),
        ("seeds", seeds),
        ("defective_train", defective_train),
    ):
        if value is not None:
            changes[name] = value
    cfg = (
        AffinityTransferConfig.quick_config(out, **changes)
        if quick
        else AffinityTransferConfig(out=out, **changes)
    )
    run_or_exit(run_study, cfg)


if __name__ == "__main__":
    typer.run(main)
