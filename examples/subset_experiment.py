"""Does pretraining on the Dataonomy selection prepare a model for the defect task better than the same budget
spent on other classes? One command, seeded, resumable::

    python examples/subset_experiment.py --out experiment_out

Source pool: the standard 200 classes of ``../shared/data/tiny-imagenet-200-subset``. Targets: real DAGM Class1
(``../shared/data/dagm/Class1/Test``, K-fold cross-validated by the DAGM reader) and the synthetic DAGM target.
Conditions, at an equal budget of k classes and equal optimisation steps, the same architecture and the same
fine-tuning for all:

    dataonomy  the BIP selection for this target (``dataonomy select``)
    greedy     the k classes of highest AHP affinity (no coverage or diversity constraints)
    random     k classes drawn at random, a fresh draw for every seed
    all        all 200 classes, for the same number of steps
    none       no pretraining (fine-tuning from a random initialisation)

Every stage calls the product's functions (``run_selection``, ``transfer.training.train``, ``evaluate_run``);
this file only chooses the sizes and keeps the books. Each run lives in its own folder under ``--out`` and is
skipped when complete or resumed from its checkpoint when interrupted, so rerunning the command after Ctrl-C
continues where it stopped. ``results.json``, ``results.md`` and ``results.png`` are rewritten at the end.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from dataonomy.errors import DataonomyError  # noqa: E402
from dataonomy.io import atomic_path, write_json  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
# The shared copy holds two classes beyond the standard Tiny ImageNet 200 (see ../shared/data/README.md).
TINY_IMAGENET_EXTRAS = ("n02480855", "n10148035")
CONDITIONS = ("dataonomy", "greedy", "random", "all", "none")
TARGETS = ("dagm-class1", "synthetic")


@dataclass
class ExperimentConfig:
    """Every parameter of the experiment (saved as ``experiment_config.json`` in ``out``)."""

    out: Path = Path("experiment_out")
    source_root: Path = SHARED / "tiny-imagenet-200-subset"
    dagm_root: Path = SHARED / "dagm" / "Class1" / "Test"
    targets: tuple[str, ...] = TARGETS
    seeds: int = 3
    k: int = 20
    # Selection (class statistics from a sample of images per class).
    backbone: str = "efficientnet_lite0"
    affinity: str = "prototype"
    select_source_images_per_class: int = 10
    select_target_images_per_class: int = 100
    coverage: int = 1
    diversity_depth: int = 6
    diversity_max: int = 4
    # Targets: real Class1 resized (its defects are about 60 px blobs at 512) and cross-validated; synthetic.
    dagm_size: int = 128
    folds: int = 3
    synthetic_classes: int = 10
    synthetic_images_per_split: int = 60
    synthetic_size: int = 128
    # Pretraining: the same steps for every condition (k classes' worth of epochs, also for "all").
    arch: str = "small_cnn"
    pretrain_image_size: int = 64
    pretrain_epochs: int = 12
    pretrain_batch_size: int = 64
    pretrain_lr: float = 0.05
    # Fine-tuning: patch classifier, the same recipe for every condition.
    patch_size: int = 32
    patch_stride: int = 16
    finetune_epochs: int = 10
    finetune_steps_per_epoch: int = 60
    finetune_batch_size: int = 64
    finetune_lr: float = 0.05
    base_seed: int = 0
    device: str = "cpu"
    workers: int = 0
    quick: bool = False
    exclude_source: tuple[str, ...] = field(default=TINY_IMAGENET_EXTRAS)

    @classmethod
    def quick_config(cls, out: Path, **changes) -> ExperimentConfig:
        """Minutes-long sizes for the CI test: every stage and condition runs, on less data."""
        sizes = dict(
            out=out, k=4, select_source_images_per_class=3, select_target_images_per_class=12,
            diversity_depth=None, diversity_max=None, dagm_size=64, synthetic_classes=2,
            synthetic_images_per_split=30, synthetic_size=64, pretrain_image_size=32, pretrain_epochs=1,
            pretrain_batch_size=32, finetune_epochs=1, finetune_steps_per_epoch=3, finetune_batch_size=32, quick=True,
        )  # fmt: skip
        sizes.update(changes)
        return cls(**sizes)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def log(message: str) -> None:
    print(message, flush=True)


# --- 1. targets -------------------------------------------------------------------------------------------------


def prepare_targets(cfg: ExperimentConfig) -> dict[str, Path]:
    """The DAGM-layout folders fine-tuning reads: Class1 resized to ``dagm_size``, and the synthetic target."""
    from PIL import Image

    from dataonomy.datasets import DAGM
    from dataonomy.datasets.synthetic import make_synthetic_dagm

    roots = {}
    data = cfg.out / "data"
    if "dagm-class1" in cfg.targets:
        root = data / "dagm-class1"
        if not (root / "done").exists():
            source = DAGM(cfg.dagm_root)  # checks the copy: labels, masks, files
            tmp = data / "dagm-class1.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            split = tmp / "Class1" / "Test"
            (split / "Label").mkdir(parents=True)
            size = (cfg.dagm_size, cfg.dagm_size)
            for sample in source.samples:
                Image.open(sample.path).convert("L").resize(size, Image.BILINEAR).save(
                    split / sample.path.name
                )
                if sample.mask is not None:
                    mask = Image.open(sample.mask).convert("L").resize(size, Image.NEAREST)
                    mask.save(split / "Label" / Path(sample.mask).name)
            shutil.copy(Path(cfg.dagm_root) / "Label" / "Labels.txt", split / "Label" / "Labels.txt")
            (tmp / "done").write_text(f"Class1/Test of {cfg.dagm_root} resized to {cfg.dagm_size}\n")
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)
        roots["dagm-class1"] = root / "Class1" / "Test"
    if "synthetic" in cfg.targets:
        root = data / "synthetic"
        if not (root / "done").exists():
            tmp = data / "synthetic.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            make_synthetic_dagm(
                tmp / "dagm",
                classes=cfg.synthetic_classes,
                images_per_split=cfg.synthetic_images_per_split,
                size=cfg.synthetic_size,
                seed=cfg.base_seed,
            )
            (tmp / "done").write_text("synthetic DAGM\n")
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)
        roots["synthetic"] = root / "dagm"
    return roots


# --- 2. selection and the condition subsets ----------------------------------------------------------------------


def source_classes(cfg: ExperimentConfig) -> list[str]:
    wnids = (Path(cfg.source_root) / "wnids.txt").read_text().split()
    return [w for w in wnids if w not in cfg.exclude_source]


def select(cfg: ExperimentConfig, target: str, root: Path, pool: list[str]) -> dict:
    """The Dataonomy and greedy subsets for one target, and every pool class's affinity to it."""
    from dataonomy.selection import SelectConfig, run_selection

    path = cfg.out / "selection" / f"{target}.json"
    if path.exists():
        return json.loads(path.read_text())
    run = run_selection(
        SelectConfig(
            target_root=root,
            source_root=Path(cfg.source_root),
            source_classes=pool,
            target_split="all",
            images_per_class=cfg.select_source_images_per_class,
            target_images_per_class=cfg.select_target_images_per_class,
            seed=cfg.base_seed,
            backbone=cfg.backbone,
            affinity=cfg.affinity,
            k=cfg.k,
            coverage=cfg.coverage,
            diversity_depth=cfg.diversity_depth,
            diversity_max=cfg.diversity_max,
            device=cfg.device,
            num_workers=cfg.workers,
            cache_dir=cfg.out / "cache",
            out=cfg.out / "selection" / f"{target}_manifest.json",
        ),
        log=log,
    )
    classes = run.source_classes
    # A class's affinity to the target: its AHP share, averaged over the target's classes.
    affinity = run.affinity.mean(axis=0)
    record = {
        "dataonomy": sorted(classes[i] for i in run.result.selected),
        "greedy": sorted(classes[i] for i in run.result.greedy.selected),
        "greedy_violations": [v.message for v in run.result.greedy.violations],
        "affinity": {w: float(a) for w, a in zip(classes, affinity, strict=True)},
        "manifest": str(run.manifest_path),
    }
    write_json(path, record)
    return record


def random_subset(pool: list[str], k: int, draw: int, base_seed: int) -> list[str]:
    rng = np.random.default_rng([base_seed, 0x5AB5E7, draw])
    return sorted(pool[i] for i in rng.choice(len(pool), size=k, replace=False))


# --- 3. pretraining and fine-tuning -------------------------------------------------------------------------------


def train_run(config, run_dir: Path, runtime) -> None:
    """Train, resume or skip: a run with summary.json is complete, one with a checkpoint is resumed."""
    from transfer.training import last_checkpoint_path, train

    if (run_dir / "summary.json").exists():
        return
    resume = last_checkpoint_path(run_dir).exists()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # started but not a single checkpoint: start again
    train(config, run_dir, resume=resume, runtime=runtime)


def pretrain(
    cfg: ExperimentConfig, name: str, wnids: list[str], seed: int, steps_per_epoch: int, runtime
) -> Path:
    from transfer.config import PretrainConfig

    run_dir = cfg.out / "pretrain" / name / f"seed{seed}"
    manifest = cfg.out / "pretrain" / name / "classes.json"
    if not manifest.exists():
        # A manifest naming exactly this subset: what `transfer pretrain --manifest` reads.
        write_json(manifest, {"schema": "dataonomy.manifest/1", "selected": [{"wnid": w} for w in wnids]})
    config = PretrainConfig(
        manifest=str(manifest.resolve()),
        source_root=str(Path(cfg.source_root).resolve()),
        wnids=wnids,
        arch=cfg.arch,
        image_size=cfg.pretrain_image_size,
        epochs=cfg.pretrain_epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=cfg.pretrain_batch_size,
        lr=cfg.pretrain_lr,
        warmup_epochs=1.0,
        checkpoint_every=10_000,
        seed=seed,
    )
    train_run(config, run_dir, runtime)
    return run_dir


def finetune(
    cfg: ExperimentConfig, target: str, root: Path, condition: str, base: Path | None, seed: int, runtime
):
    from transfer.config import FinetuneConfig, finetune_base_fields

    run_dir = cfg.out / "finetune" / target / condition / f"seed{seed}"
    split = (
        {"folds": cfg.folds, "fold": seed % cfg.folds, "split_seed": cfg.base_seed}
        if target == "dagm-class1"
        else {}  # the synthetic target has its own Test split
    )
    config = FinetuneConfig(
        **finetune_base_fields(str(base) if base is not None else "scratch", cfg.arch),
        data=str(root.resolve()),
        **split,
        patches=True,
        patch_size=cfg.patch_size,
        patch_stride=cfg.patch_stride,
        epochs=cfg.finetune_epochs,
        steps_per_epoch=cfg.finetune_steps_per_epoch,
        batch_size=cfg.finetune_batch_size,
        lr=cfg.finetune_lr,
        patience=cfg.finetune_epochs,  # no early stop: every condition gets every step
        checkpoint_every=10_000,
        seed=seed,
    )
    train_run(config, run_dir, runtime)
    return run_dir


def evaluate(cfg: ExperimentConfig, run_dir: Path) -> dict:
    """Image-level metrics on the run's test fold at the threshold chosen on validation."""
    from transfer.evaluate import evaluate_run

    path = run_dir / "eval_test.json"
    report = (
        json.loads(path.read_text())
        if path.exists()
        else evaluate_run(run_dir, split="test", device=cfg.device)
    )
    rows = report["stored_threshold"]["rows"]
    overall = next(r for r in rows if r["group"] == "all") if len(rows) > 1 else rows[0]
    return {m: overall[m] for m in ("ap", "auroc", "accuracy", "tpr", "tnr", "n", "n_defective")}


# --- 4. the whole experiment ----------------------------------------------------------------------------------------


def run_experiment(cfg: ExperimentConfig) -> dict:
    from transfer.training import Runtime

    started = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    saved = cfg.out / "experiment_config.json"
    # More --seeds only adds runs (seed s's runs do not depend on how many seeds there are): allowed.
    same = {k: v for k, v in json.loads(json.dumps(cfg.to_dict())).items() if k != "seeds"}
    if saved.exists() and {k: v for k, v in json.loads(saved.read_text()).items() if k != "seeds"} != same:
        raise DataonomyError(
            f"--out {cfg.out}: holds an experiment with other parameters; choose another folder"
        )
    write_json(saved, cfg.to_dict())
    runtime = Runtime(device=cfg.device, num_workers=cfg.workers, progress=False)
    pool = source_classes(cfg)
    log(f"source pool: {len(pool)} classes of {cfg.source_root}")

    log("== targets ==")
    roots = prepare_targets(cfg)
    log("== selection ==")
    selections = {t: select(cfg, t, roots[t], pool) for t in cfg.targets}
    for t, s in selections.items():
        overlap = len(set(s["dataonomy"]) & set(s["greedy"]))
        log(
            f"{t}: dataonomy and greedy share {overlap} of {cfg.k} classes; greedy breaks: {s['greedy_violations']}"
        )

    # Equal steps: one epoch is one pass over k classes' training images, for every subset (and for "all").
    from transfer.data import pretrain_folds

    selected = selections[cfg.targets[0]]["dataonomy"]
    k_images = len(pretrain_folds(cfg.source_root, selected, 0.05, None, cfg.base_seed)[0])
    steps_per_epoch = max(1, k_images // cfg.pretrain_batch_size)
    log(
        f"pretraining: {cfg.pretrain_epochs} epochs x {steps_per_epoch} steps of {cfg.pretrain_batch_size} images"
    )

    rows = []
    for seed in range(cfg.seeds):
        subsets = {"all": pool, "random": random_subset(pool, cfg.k, seed, cfg.base_seed)}
        for t in cfg.targets:
            subsets[f"dataonomy-{t}"] = selections[t]["dataonomy"]
            subsets[f"greedy-{t}"] = selections[t]["greedy"]
        bases, trained = {}, {}
        for name, wnids in subsets.items():
            if (
                tuple(wnids) in trained
            ):  # e.g. greedy = dataonomy when no constraint binds: one run serves both
                bases[name] = trained[tuple(wnids)]
                continue
            log(f"[seed {seed}] pretrain {name} ({len(wnids)} classes)")
            pre_name = f"random-draw{seed}" if name == "random" else name
            bases[name] = trained[tuple(wnids)] = pretrain(
                cfg, pre_name, wnids, seed, steps_per_epoch, runtime
            )
        for t in cfg.targets:
            affinity = selections[t]["affinity"]
            for condition in CONDITIONS:
                key = f"{condition}-{t}" if condition in ("dataonomy", "greedy") else condition
                base = None if condition == "none" else bases[key]
                log(f"[seed {seed}] fine-tune {t} from {condition}")
                run_dir = finetune(cfg, t, roots[t], condition, base, seed, runtime)
                wnids = subsets.get(key, [])
                row = {
                    "target": t,
                    "condition": condition,
                    "seed": seed,
                    "classes": len(wnids),
                    "subset_affinity": float(np.mean([affinity[w] for w in wnids])) if wnids else None,
                    "pretrain_val_top1": _best(bases.get(key)),
                    "pretrain_run": str(bases[key]) if key in bases else None,
                    **evaluate(cfg, run_dir),
                    "run": str(run_dir),
                }
                rows.append(row)
                log(
                    f"    test AP {row['ap']:.3f}, accuracy {row['accuracy']:.3f}, TPR {row['tpr']:.3f}, TNR {row['tnr']:.3f}"
                )
    results = summarize(cfg, rows, selections)
    results["seconds_this_invocation"] = round(
        time.perf_counter() - started, 1
    )  # a resumed run skips done work
    write_json(cfg.out / "results.json", results)
    (cfg.out / "results.md").write_text(format_results(results))
    plot_results(results, cfg.out / "results.png")
    log(format_results(results))
    return results


def _best(run_dir: Path | None) -> float | None:
    if run_dir is None:
        return None
    return json.loads((run_dir / "summary.json").read_text()).get("best")


# --- 5. summary, table, picture -------------------------------------------------------------------------------------

METRICS = ("ap", "auroc", "accuracy", "tpr", "tnr")


def summarize(cfg: ExperimentConfig, rows: list[dict], selections: dict) -> dict:
    from scipy.stats import spearmanr

    table = []
    for t in cfg.targets:
        for condition in CONDITIONS:
            runs = [r for r in rows if r["target"] == t and r["condition"] == condition]
            entry = {"target": t, "condition": condition, "runs": len(runs)}
            for m in METRICS:
                values = np.array([r[m] for r in runs if r[m] is not None], dtype=float)
                entry[m] = {
                    "mean": float(values.mean()) if len(values) else None,
                    "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                }
            affinities = [r["subset_affinity"] for r in runs if r["subset_affinity"] is not None]
            entry["subset_affinity"] = float(np.mean(affinities)) if affinities else None
            table.append(entry)
    correlation = {}
    for t in cfg.targets:
        # One point per pretrained model: a run that served two conditions (greedy = dataonomy) counts once.
        unique = {r["pretrain_run"]: r for r in rows if r["target"] == t and r["subset_affinity"] is not None}
        runs = list(unique.values())
        x, y = [r["subset_affinity"] for r in runs], [r["ap"] for r in runs]
        rho, p = spearmanr(x, y) if len(set(x)) > 1 and len(set(y)) > 1 else (float("nan"), float("nan"))
        correlation[t] = {"spearman_rho": _finite(rho), "p_value": _finite(p), "runs": len(runs)}
    # Paired by seed (same folds, same initialisation seed): each condition against the Dataonomy selection.
    from scipy.stats import wilcoxon

    paired = {}
    for t in cfg.targets:
        ours = {r["seed"]: r["ap"] for r in rows if r["target"] == t and r["condition"] == "dataonomy"}
        for condition in CONDITIONS[1:]:
            other = {r["seed"]: r["ap"] for r in rows if r["target"] == t and r["condition"] == condition}
            seeds = sorted(set(ours) & set(other))
            diff = np.array([ours[s] - other[s] for s in seeds])
            p = wilcoxon(diff).pvalue if len(diff) > 1 and np.any(diff != 0) else float("nan")
            paired[f"{t}/{condition}"] = {
                "seeds": len(seeds),
                "mean_ap_difference": float(diff.mean()) if len(diff) else None,
                "dataonomy_better": int((diff > 0).sum()),
                "wilcoxon_p": _finite(p),
            }
    return {
        "config": cfg.to_dict(),
        "table": table,
        "dataonomy_vs": paired,
        "affinity_vs_ap": correlation,
        "selections": {t: {k: v for k, v in s.items() if k != "affinity"} for t, s in selections.items()},
        "runs": rows,
    }


def _finite(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _fmt(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if stat["std"] is not None else f"{stat['mean']:.3f}"


def format_results(results: dict) -> str:
    lines = [
        "| target | condition | runs | mean class affinity | AP | AUROC | accuracy | TPR | TNR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in results["table"]:
        aff = f"{e['subset_affinity']:.4f}" if e["subset_affinity"] is not None else "-"
        cells = " | ".join(_fmt(e[m]) for m in METRICS)
        lines.append(f"| {e['target']} | {e['condition']} | {e['runs']} | {aff} | {cells} |")
    lines.append("")
    lines.append(
        "Test AP of the Dataonomy selection minus each other condition's, paired by seed (Wilcoxon signed-rank):"
    )
    for key, c in results["dataonomy_vs"].items():
        p = "n/a" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.3f}"
        lines.append(
            f"- {key}: {c['mean_ap_difference']:+.3f} on average, Dataonomy better on {c['dataonomy_better']} of "
            f"{c['seeds']} seeds (p = {p})"
        )
    lines.append("")
    lines.append(
        "Spearman rank correlation between a pretraining subset's mean class affinity and the test AP:"
    )
    for t, c in results["affinity_vs_ap"].items():
        rho = "n/a" if c["spearman_rho"] is None else f"{c['spearman_rho']:+.2f} (p = {c['p_value']:.2f})"
        lines.append(f"- {t}: rho {rho} over {c['runs']} pretrained runs")
    return "\n".join(lines) + "\n"


def plot_results(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(e["target"] for e in results["table"]))
    fig, axes = plt.subplots(2, len(targets), figsize=(5.5 * len(targets), 8), squeeze=False)
    colours = dict(
        zip(CONDITIONS, ("tab:red", "tab:orange", "tab:blue", "tab:green", "tab:gray"), strict=True)
    )
    for j, t in enumerate(targets):
        ax = axes[0, j]
        for i, condition in enumerate(CONDITIONS):
            aps = [r["ap"] for r in results["runs"] if r["target"] == t and r["condition"] == condition]
            ax.scatter([i] * len(aps), aps, color=colours[condition], alpha=0.6)
            if aps:
                ax.errorbar(
                    i + 0.15,
                    np.mean(aps),
                    yerr=np.std(aps, ddof=1) if len(aps) > 1 else 0,
                    fmt="_k",
                    capsize=4,
                )
        runs = [r for r in results["runs"] if r["target"] == t]
        chance = sum(r["n_defective"] for r in runs) / max(1, sum(r["n"] for r in runs))
        ax.axhline(chance, color="k", ls=":", lw=1, label=f"chance (defect rate {chance:.2f})")
        ax.legend(fontsize=8, loc="best")
        ax.set_xticks(range(len(CONDITIONS)), CONDITIONS)
        ax.set_ylabel("test AP (image level)")
        ax.set_title(f"{t}: AP per run, mean ± sd")
        ax = axes[1, j]
        for r in results["runs"]:
            if r["target"] == t and r["subset_affinity"] is not None:
                ax.scatter(r["subset_affinity"], r["ap"], color=colours[r["condition"]], alpha=0.7)
        c = results["affinity_vs_ap"][t]
        rho = "n/a" if c["spearman_rho"] is None else f"{c['spearman_rho']:+.2f}"
        ax.set_xlabel("mean AHP affinity of the pretraining classes to the target")
        ax.set_ylabel("test AP")
        ax.set_title(f"{t}: Spearman rho {rho}")
        ax.legend(
            handles=[
                plt.Line2D([], [], marker="o", ls="", color=colours[c], label=c) for c in CONDITIONS[:-1]
            ],
            fontsize=8,
        )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


app = typer.Typer(add_completion=False)


@app.command()
def main(
    out: Path = typer.Option(
        Path("experiment_out"), "--out", help="Folder for every run and the results (resumable)."
    ),
    seeds: int = typer.Option(
        3, "--seeds", help="Seeds per condition (the random condition draws anew per seed)."
    ),
    k: int = typer.Option(None, "--k", help="Classes per pretraining subset (default 20; 4 with --quick)."),
    targets: str = typer.Option(
        ",".join(TARGETS), "--targets", help="Comma-separated: dagm-class1, synthetic."
    ),
    source_root: Path = typer.Option(
        SHARED / "tiny-imagenet-200-subset", "--source-root", help="Tiny ImageNet copy."
    ),
    dagm_root: Path = typer.Option(
        SHARED / "dagm" / "Class1" / "Test", "--dagm-root", help="DAGM Class1/Test copy."
    ),
    base_seed: int = typer.Option(
        0, "--base-seed", help="Seed of the folds, selection sample and synthetic data."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    quick: bool = typer.Option(
        False, "--quick", help="Tiny sizes (CI): checks the plumbing, measures nothing."
    ),
):
    """Run the subset experiment (Dataonomy vs greedy vs random vs all vs none) and write results.{json,md,png}."""
    chosen = tuple(t.strip() for t in targets.split(",") if t.strip())
    unknown = [t for t in chosen if t not in TARGETS]
    if unknown or not chosen:
        raise DataonomyError(f"--targets {targets}: choose from {', '.join(TARGETS)}")
    if seeds < 1 or (k is not None and k < 2):
        raise DataonomyError("--seeds must be at least 1 and --k at least 2")
    common = dict(out=out, seeds=seeds, targets=chosen, source_root=source_root, dagm_root=dagm_root,
                  base_seed=base_seed, device=device)  # fmt: skip
    if k is not None:
        common["k"] = k
    cfg = ExperimentConfig.quick_config(**common) if quick else ExperimentConfig(**common)
    run_experiment(cfg)


if __name__ == "__main__":
    from dataonomy.cli_utils import run_app

    raise SystemExit(run_app(app))
