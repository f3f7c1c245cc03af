"""What makes a pretrained trunk fine-tune better than a random one on a few-defect target? (issue 25, part 1)

The scratch arm of docs/experiment.md, one lever at a time, seeds paired::

    python examples/pretrain_ablation.py --out ablation_out            # the full run (about 1.5 h on 2 cores)
    python examples/pretrain_ablation.py --out ablation_quick --quick  # every stage on tiny sizes (CI)

Source: all 200 standard Tiny ImageNet classes (``../shared/data/tiny-imagenet-200-subset``), ``small_cnn``
pretrained from a random initialisation. Targets (``--target``), 3-fold cross-validated by the tool and
fine-tuned with ``--defective-train N`` defective training images (every clean one kept), segdec at output
stride 8:

    class1    real DAGM Class1 (``dagm/Class1/Test``, 512 px, 192 px training crops): image AP and pixel IoU
    neu-seg   real NEU-Seg steel defects (``neu-seg``, 200 px whole images, read as ``--format pairs --masks``):
              every image is defective, so N is the whole training set, the decision is segdec's per cell,
              and the outcome is pixel IoU, overall and per defect type (the mask's class index); staged
              without the 4 images it holds twice (``stage_neu``)
    synthetic docs/experiment.md's synthetic DAGM (10 texture classes, 60 images per class and split, 128 px,
              ``stage_synthetic``), trained on whole images; it has its own Test split, so every seed tests
              the same images and seeds differ by initialisation and by which N defects are kept

Seed s fine-tunes fold s mod 3 with initialisation seed s in every condition; the
pretrained trunks are trained once (seed 0) and shared by every fine-tuning seed, so the paired difference is
the trunk's, measured over fine-tuning seeds and folds.

Conditions (``LEVERS``): each names the base it starts from and what its fine-tuning changes; each is compared,
paired by seed, with the baseline of the same fine-tuning resolution (``none`` or ``none-256``). Every stage
calls the product (``transfer.training.train``, ``evaluate_run``, ``localize_images``); runs are skipped when
complete and resumed from their checkpoint when interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
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
    run_or_exit,
    train_run,
)

from dataonomy.errors import DataonomyError  # noqa: E402
from dataonomy.io import write_json  # noqa: E402

METRICS = ("ap", "auroc", "tpr", "tnr", "mean_iou")
TARGETS = ("class1", "neu-seg", "synthetic")
# NEU-Seg's class-index masks: 1, 2, 3 are its three defect types (the source does not say which is which).
NEU_TYPES = (1, 2, 3)


@dataclass(frozen=True)
class Lever:
    """One condition: the base (``None``: a random initialisation; else a key of ``BASES``), and the fine-tuning
    fields it changes; ``baseline`` is the condition it is paired with."""

    base: str | None
    baseline: str | None
    finetune: dict = field(default_factory=dict)
    what: str = ""


# Fine-tuning Class1 at half resolution: the 512 px images resized to 256, crops of 96 (192 at native size).
HALF = {"image_size": 256, "crop_size": 96}
# A fine-tuning budget at which a random trunk can learn: 5 x the 120 steps, stopped on validation AP.
LONG = {"epochs": 15, "patience": 5}
LEVERS = {
    "none": Lever(None, None, what="random initialisation (the baseline), the target at native resolution"),
    "short": Lever("short", "none", what="pretrained 100 steps of 32 (docs/experiment.md's recipe)"),
    "converged": Lever("converged", "none", what="pretrained to the validation plateau"),
    "converged-trunk0.1": Lever(
        "converged", "none", {"trunk_lr_scale": 0.1}, "converged, the trunk at 0.1 x the fine-tuning lr"
    ),
    "none-256": Lever(None, None, HALF, "random initialisation, Class1 resized to 256 px, 96 px crops"),
    "converged-256": Lever("converged", "none-256", HALF, "converged, Class1 resized to 256 px, 96 px crops"),
    "none-long": Lever(
        None, None, LONG, "random initialisation, up to 600 fine-tuning steps, early stop (patience 5)"
    ),
    "converged-long": Lever(
        "converged", "none-long", LONG, "converged, up to 600 fine-tuning steps, early stop (patience 5)"
    ),
}


@dataclass
class AblationConfig:
    """Every parameter of the ablation (saved as ``ablation_config.json`` in ``out``)."""

    out: Path = Path("ablation_out")
    source_root: Path = SHARED / "tiny-imagenet-200-subset"
    dagm_root: Path = SHARED / "dagm" / "Class1" / "Test"
    neu_root: Path = SHARED / "neu-seg"
    # the synthetic target: issue 16's (docs/experiment.md), generated from base_seed
    synthetic_classes: int = 10
    synthetic_images_per_split: int = 60
    synthetic_size: int = 128
    target: str = "class1"
    seeds: int = 6
    levers: tuple[str, ...] = tuple(LEVERS)
    defective_train: int = 10
    folds: int = 3
    arch: str = "small_cnn"
    output_stride: int = 8
    pretrain_image_size: int = 64
    # converged: an epoch budget with early stopping on validation top-1 (the product's rule)
    pretrain_epochs: int = 30
    pretrain_patience: int = 4
    pretrain_batch_size: int = 64
    pretrain_lr: float = 0.1
    pretrain_images_per_class: int | None = None  # None: all 50 training and 50 validation images
    # short: docs/experiment.md's 100 steps of 32 at lr 0.05
    short_steps: int = 100
    short_batch_size: int = 32
    short_lr: float = 0.05
    # fine-tuning: docs/experiment.md's scratch-arm recipe (120 steps of 8, lr 0.02, no early stop)
    crop_size: int = 192
    finetune_epochs: int = 3
    finetune_steps_per_epoch: int = 40
    finetune_batch_size: int = 8
    finetune_lr: float = 0.02
    localize: bool = True
    base_seed: int = 0
    device: str = "cpu"
    quick: bool = False

    @classmethod
    def quick_config(cls, out: Path, **changes) -> AblationConfig:
        sizes = dict(
            out=out, seeds=2, levers=("converged-trunk0.1",), defective_train=3,
            pretrain_image_size=16, pretrain_epochs=3, pretrain_patience=1, pretrain_batch_size=16,
            pretrain_images_per_class=4, short_steps=2, short_batch_size=8, crop_size=64, finetune_epochs=1,
            finetune_steps_per_epoch=2, finetune_batch_size=4, synthetic_classes=2, synthetic_images_per_split=16,
            synthetic_size=64, quick=True,
        )  # fmt: skip
        return cls(**(sizes | changes))

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def source_classes(cfg: AblationConfig) -> list[str]:
    wnids = (Path(cfg.source_root) / "wnids.txt").read_text().split()
    pool = [w for w in wnids if w not in TINY_IMAGENET_EXTRAS]
    return pool[:8] if cfg.quick else pool


def pretrain(cfg: AblationConfig, name: str, runtime) -> Path:
    """The ``converged`` or ``short`` trunk, trained once (seed ``base_seed``) on every source class."""
    from transfer.config import PretrainConfig

    wnids = source_classes(cfg)
    manifest = cfg.out / "pretrain" / "all.json"
    write_json(manifest, {"schema": "dataonomy.manifest/1", "selected": [{"wnid": w} for w in wnids]})
    common = dict(
        manifest=str(manifest.resolve()), source_root=str(Path(cfg.source_root).resolve()), wnids=wnids,
        arch=cfg.arch, init="scratch", image_size=cfg.pretrain_image_size, seed=cfg.base_seed,
        images_per_class=cfg.pretrain_images_per_class, checkpoint_every=10_000,
    )  # fmt: skip
    if name == "converged":
        config = PretrainConfig(
            **common, epochs=cfg.pretrain_epochs, patience=cfg.pretrain_patience,
            batch_size=cfg.pretrain_batch_size, lr=cfg.pretrain_lr,
        )  # fmt: skip
    else:
        config = PretrainConfig(
            **common, epochs=1, steps_per_epoch=cfg.short_steps, batch_size=cfg.short_batch_size,
            lr=cfg.short_lr, warmup_epochs=1 / 3, patience=None,
        )  # fmt: skip
    run_dir = cfg.out / "pretrain" / name
    train_run(config, run_dir, runtime)
    return run_dir


def stage_neu(cfg: AblationConfig) -> Path:
    """NEU-Seg without its repeated images, as links in ``OUT/target/neu-seg/{images,masks}``.

    NEU-Seg holds a few images twice under two names (with different masks); a random split puts copies in
    two folds, and the tool then rightly refuses the test fold (it holds images the run validated on). The
    first name of each content is kept; the dropped names are listed in ``dropped.json``."""
    import hashlib
    import os

    staged = (cfg.out / "target" / "neu-seg").resolve()
    if (staged / "dropped.json").exists():
        return staged
    source = Path(cfg.neu_root).resolve()
    seen, dropped = {}, []
    for d in ("images", "masks"):
        (staged / d).mkdir(parents=True, exist_ok=True)
    for image in sorted((source / "images").glob("*.jpg")):
        digest = hashlib.sha256(image.read_bytes()).hexdigest()
        if digest in seen:
            dropped.append({"image": image.name, "same_as": seen[digest]})
            continue
        seen[digest] = image.name
        mask = source / "masks" / f"{image.stem}.png"
        for link, target in ((staged / "images" / image.name, image), (staged / "masks" / mask.name, mask)):
            if not link.is_symlink():
                os.symlink(target, link)
    write_json(staged / "dropped.json", {"source": str(source), "kept": len(seen), "dropped": dropped})
    return staged


def stage_synthetic(cfg: AblationConfig) -> Path:
    """The synthetic DAGM target in ``OUT/target/synthetic/dagm``, generated once (written under a temporary
    name, renamed when complete)."""
    import shutil

    from dataonomy.datasets.synthetic import Rendering, make_synthetic_dagm

    root = (cfg.out / "target" / "synthetic").resolve()
    if not (root / "dagm").exists():
        tmp = root / "dagm.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        make_synthetic_dagm(
            tmp,
            classes=cfg.synthetic_classes,
            images_per_split=cfg.synthetic_images_per_split,
            rendering=Rendering(size=cfg.synthetic_size, seed=cfg.base_seed),
        )
        tmp.rename(root / "dagm")
    return root / "dagm"


def target_fields(cfg: AblationConfig, seed: int) -> dict:
    """The fine-tuning fields that name the target's images, its split and how it trains on them."""
    if cfg.target == "synthetic":  # its own Train/Test split; whole 128 px images
        return {"data": str(stage_synthetic(cfg)), "crop_size": None, "split_seed": cfg.base_seed}
    folds = {"folds": cfg.folds, "fold": seed % cfg.folds, "split_seed": cfg.base_seed}
    if cfg.target == "neu-seg":  # 200 px images: trained whole
        root = stage_neu(cfg)
        return {
            "data": str(root / "images"),
            "format": "pairs",
            "masks": str(root / "masks"),
            "crop_size": None,
            **folds,
        }
    return {"data": str(Path(cfg.dagm_root).resolve()), "crop_size": cfg.crop_size, **folds}


def iou_by_defect_type(localize_json: Path, masks: Path) -> dict[str, float | None]:
    """Mean pixel IoU of the test images holding each NEU-Seg defect type (an image with two types counts in
    both), from ``localize.json``'s per-image IoU and the class indices of the image's mask."""
    from PIL import Image

    per_type: dict[int, list[float]] = {t: [] for t in NEU_TYPES}
    for image in json.loads(localize_json.read_text())["images"]:
        if not image["defect"]:
            continue
        classes = np.unique(np.asarray(Image.open(masks / f"{image['name']}.png")))
        for t in NEU_TYPES:
            if t in classes:
                per_type[t].append(image["iou"])
    return {f"type{t}": (float(np.mean(v)) if v else None) for t, v in per_type.items()}


def finetune_config(cfg: AblationConfig, lever: str, base: Path | None, seed: int):
    from transfer.checkpoint import finetune_base_fields
    from transfer.config import FinetuneConfig

    fields = dict(
        **target_fields(cfg, seed), defective_train=cfg.defective_train, head="segdec",
        output_stride=cfg.output_stride, epochs=cfg.finetune_epochs,
        steps_per_epoch=cfg.finetune_steps_per_epoch, batch_size=cfg.finetune_batch_size, lr=cfg.finetune_lr,
        patience=cfg.finetune_epochs, checkpoint_every=10_000, seed=seed,
    )  # fmt: skip
    if cfg.quick:  # the quick run's 96 px images stand in for the half-resolution lever's
        fields["image_size"] = 96
    fields.update(LEVERS[lever].finetune)
    if cfg.quick and "crop_size" in LEVERS[lever].finetune:
        fields["crop_size"] = 32
    if cfg.quick and "epochs" in LEVERS[lever].finetune:  # the long budget's shape, at the quick run's size
        fields.update(epochs=2, patience=1)
    base_arg = str(base) if base is not None else "scratch"
    return FinetuneConfig(**finetune_base_fields(base_arg, cfg.arch), **fields)


def finetune(cfg: AblationConfig, lever: str, base: Path | None, seed: int, runtime) -> Path:
    run_dir = cfg.out / "finetune" / lever / f"seed{seed}"
    train_run(finetune_config(cfg, lever, base, seed), run_dir, runtime)
    return run_dir


def trunk_logme(cfg: AblationConfig, lever: str, base: Path | None, seed: int) -> dict:
    """LogME of the lever's starting trunk on the seed's training fold (transfer.transferability), before any
    fine-tuning; kept in ``OUT/logme/`` (levers with the same trunk and resolution share one)."""
    from transfer.transferability import run_logme

    config = finetune_config(cfg, lever, base, seed)
    path = (
        cfg.out
        / "logme"
        / f"{LEVERS[lever].base or 'random'}-{config.image_size or 'native'}-seed{seed}.json"
    )
    if not path.exists():
        write_json(path, run_logme(config, device=cfg.device))
    return json.loads(path.read_text())


def check_saved_config(cfg: AblationConfig) -> None:
    check_study_folder(
        cfg.out / "ablation_config.json",
        cfg.to_dict(),
        AblationConfig().to_dict(),
        ("seeds", "levers"),
        "an ablation",
    )


def run_ablation(cfg: AblationConfig) -> dict:
    from transfer.training import Runtime

    unknown = sorted(set(cfg.levers) - set(LEVERS))
    if unknown:
        raise DataonomyError(f"--levers: unknown {', '.join(unknown)} (known: {', '.join(LEVERS)})")
    if cfg.target not in TARGETS:
        raise DataonomyError(f"--target {cfg.target}: must be one of {', '.join(TARGETS)}")
    resized = [x for x in cfg.levers if "image_size" in LEVERS[x].finetune]
    if cfg.target != "class1" and resized:
        raise DataonomyError(
            f"--levers {', '.join(resized)}: resize Class1's 512 px images; not for {cfg.target}"
        )
    started = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    check_saved_config(cfg)
    runtime = Runtime(device=cfg.device, progress=False)
    levers = [name for name in LEVERS if name in cfg.levers or any(
        LEVERS[x].baseline == name for x in cfg.levers)]  # fmt: skip
    bases = {}
    for name in sorted({LEVERS[x].base for x in levers} - {None}):
        log(f"== pretrain {name} ==")
        bases[name] = pretrain(cfg, name, runtime)
    rows, total, worked = [], cfg.seeds * len(levers), []
    for seed in range(cfg.seeds):
        for lever in levers:
            base = bases.get(LEVERS[lever].base)
            log(
                f"[seed {seed}] fine-tune {lever} (run {len(rows) + 1} of {total}{_remaining(worked, total - len(rows))})"
            )
            run_started = time.perf_counter()
            done = (cfg.out / "finetune" / lever / f"seed{seed}" / "experiment_metrics.json").exists()
            run_dir = finetune(cfg, lever, base, seed, runtime)
            fold = None if cfg.target == "synthetic" else seed % cfg.folds
            row = {"lever": lever, "seed": seed, "fold": fold, **evaluate(cfg, run_dir)}
            if cfg.target == "neu-seg" and row["mean_iou"] is not None:
                row |= iou_by_defect_type(run_dir / "localize" / "localize.json", stage_neu(cfg) / "masks")
            row["run"] = str(run_dir)
            if not done:  # a finished run is skipped in no time: only work done here predicts the rest
                worked.append(time.perf_counter() - run_started)
            if seed < (1 if fold is None else cfg.folds):  # one estimate per fold and starting trunk
                row["logme"] = trunk_logme(cfg, lever, base, seed)["logme"]
            rows.append(row)
            log(f"    test AP {row['ap']}, AUROC {row['auroc']}, pixel mean IoU {row['mean_iou']}")
    results = summarize(cfg, rows, bases)
    results["seconds_this_invocation"] = round(time.perf_counter() - started, 1)
    write_json(cfg.out / "results.json", results)
    (cfg.out / "results.md").write_text(format_results(results))
    log(format_results(results))
    return results


def _remaining(worked: list[float], runs_left: int) -> str:
    """ ", about N min left" from the mean time of the runs trained in this invocation (none yet: no estimate)."""
    if not worked:
        return ""
    return f", about {np.mean(worked) * runs_left / 60:.0f} min left"


def _curve(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    keep = ("epoch", "step", "train_loss", "val_loss", "val_top1", "val_top5")
    return [{k: json.loads(x).get(k) for k in keep} for x in lines if x.strip()]


def _paired_t(diffs: np.ndarray) -> float | None:
    from scipy.stats import ttest_1samp

    if len(diffs) < 2 or np.std(diffs) == 0:
        return None
    return float(ttest_1samp(diffs, 0.0).pvalue)


def _wilcoxon(diffs: np.ndarray) -> float | None:
    from scipy.stats import wilcoxon

    if len(diffs) < 2 or not np.any(diffs != 0):
        return None
    return float(wilcoxon(diffs).pvalue)


def seeds_for_power(differences: np.ndarray, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Paired seeds a two-sided paired t-test needs to detect the mean of ``differences`` at ``alpha`` with
    ``power``, taking their spread as the population's (noncentral t); None when there is no effect or spread
    to plan on, or more than 1000 would be needed. The pre-registered comparison's seed count comes from here."""
    from scipy.stats import nct, t

    d = np.asarray(differences, dtype=float)
    if len(d) < 2 or d.std(ddof=1) == 0 or d.mean() == 0:
        return None
    effect = abs(d.mean()) / d.std(ddof=1)
    for n in range(2, 1001):
        critical = t.ppf(1 - alpha / 2, n - 1)
        reached = (
            1 - nct.cdf(critical, n - 1, effect * np.sqrt(n)) + nct.cdf(-critical, n - 1, effect * np.sqrt(n))
        )
        if reached >= power:
            return n
    return None


def type_metrics(cfg: AblationConfig) -> tuple[str, ...]:
    return tuple(f"type{t}" for t in NEU_TYPES) if cfg.target == "neu-seg" else ()


def metrics(cfg: AblationConfig) -> tuple[str, ...]:
    return (*METRICS, *type_metrics(cfg))


def summarize(cfg: AblationConfig, rows: list[dict], bases: dict[str, Path]) -> dict:
    by = {(r["lever"], r["seed"]): r for r in rows}
    table = []
    for lever in dict.fromkeys(r["lever"] for r in rows):
        mine = [r for r in rows if r["lever"] == lever]
        entry = {"lever": lever, "what": LEVERS[lever].what, "runs": len(mine)}
        for m in metrics(cfg):
            v = np.array([r[m] for r in mine if r.get(m) is not None], dtype=float)
            entry[m] = {
                "mean": float(v.mean()) if len(v) else None,
                "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            }
        estimates = [r["logme"] for r in mine if r.get("logme") is not None]
        entry["logme"] = float(np.mean(estimates)) if estimates else None
        baseline = LEVERS[lever].baseline
        if baseline is not None:
            seeds = [r["seed"] for r in mine if (baseline, r["seed"]) in by]
            for m in ("ap", "auroc", "mean_iou", *type_metrics(cfg)):
                pairs = [(by[(lever, s)].get(m), by[(baseline, s)].get(m)) for s in seeds]
                d = np.array([a - b for a, b in pairs if a is not None and b is not None], dtype=float)
                entry[f"{m}_vs_{baseline}"] = {
                    "mean_difference": float(d.mean()) if len(d) else None,
                    "sd_difference": float(d.std(ddof=1)) if len(d) > 1 else None,
                    "better_on": int(np.sum(d > 0)),
                    "pairs": len(d),
                    "wilcoxon_p": _wilcoxon(d),
                    "paired_t_p": _paired_t(d),
                    "seeds_for_80_power": seeds_for_power(d),
                }
        table.append(entry)
    pretrain = {}
    for name, run_dir in bases.items():
        summary = json.loads((run_dir / "summary.json").read_text())
        pretrain[name] = {
            "status": summary["status"], "epochs": summary["epochs"], "steps": summary["steps"],
            "best_epoch": summary["best_epoch"], "val_top1": summary["best"], "curve": _curve(run_dir),
        }  # fmt: skip
    return {
        "config": cfg.to_dict(),
        "pretrain": pretrain,
        "levers": table,
        "logme_vs_ap": _logme_vs(rows, "ap"),
        "logme_vs_iou": _logme_vs(rows, "mean_iou"),
        "runs": rows,
    }


def _logme_vs(rows: list[dict], metric: str) -> dict:
    """Spearman's rho between a run's starting-trunk LogME and its fine-tuned test ``metric`` (runs with both)."""
    from scipy.stats import spearmanr

    pairs = [(r["logme"], r[metric]) for r in rows if r.get("logme") is not None and r[metric] is not None]
    if len(pairs) < 3:
        return {"runs": len(pairs), "rho": None, "p": None}
    rho, p = spearmanr(*zip(*pairs, strict=True))
    return {"runs": len(pairs), "rho": float(rho), "p": float(p)}


def _fmt(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.3f}" + (f" ± {stat['std']:.3f}" if stat["std"] is not None else "")


def format_results(results: dict) -> str:
    cfg = results["config"]
    n, target = cfg["defective_train"], cfg.get("target", "class1")
    what = {
        "class1": "real Class1",
        "neu-seg": "real NEU-Seg (every image defective; AP per cell)",
        "synthetic": "synthetic DAGM (its own Test split)",
    }[target]
    lines = [f"# Pretraining ablation: scratch arm, {what} with {n} defective training images", ""]
    for name, p in results["pretrain"].items():
        lines.append(
            f"- pretrain **{name}**: {p['status']}, {p['epochs']} epochs ({p['steps']} steps), best validation "
            f"top-1 {p['val_top1']:.3f} at epoch {p['best_epoch']}"
        )
    lines += [
        "",
        "| lever | runs | AP | AUROC | TPR | TNR | pixel mean IoU | vs | AP diff | better on | p (AP) | IoU diff | better on | p (IoU) | seeds for 80 % power (AP / IoU) |",
    ]
    lines.append("|" + "---|" * 15)
    for e in results["levers"]:
        baseline = LEVERS[e["lever"]].baseline
        cells = [e["lever"], str(e["runs"]), *(_fmt(e[m]) for m in METRICS)]
        if baseline is None:
            cells += ["-"] * 8
        else:
            ap, iou = e[f"ap_vs_{baseline}"], e[f"mean_iou_vs_{baseline}"]

            def f(x, spec="+.3f"):
                return "-" if x is None else format(x, spec)

            cells += [
                baseline, f(ap["mean_difference"]), f"{ap['better_on']}/{ap['pairs']}", f(ap["wilcoxon_p"], ".3f"),
                f(iou["mean_difference"]), f"{iou['better_on']}/{iou['pairs']}", f(iou["wilcoxon_p"], ".3f"),
                f"{ap['seeds_for_80_power'] or '-'} / {iou['seeds_for_80_power'] or '-'}",
            ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    corr, iou = results["logme_vs_ap"], results["logme_vs_iou"]
    if corr["rho"] is not None:
        also = (
            f"; against pixel mean IoU {iou['rho']:+.2f} (p = {iou['p']:.3f})"
            if iou["rho"] is not None
            else ""
        )
        lines += [
            "",
            f"Starting trunk's LogME (transfer.transferability, before fine-tuning) against test AP: Spearman rho "
            f"{corr['rho']:+.2f} (p = {corr['p']:.3f}) over {corr['runs']} runs (one per fold and trunk){also}. "
            "Per lever: "
            + ", ".join(f"{e['lever']} {e['logme']:.4f}" for e in results["levers"] if e["logme"] is not None)
            + ".",
        ]
    types = [k for k in results["levers"][0] if k.startswith("type") and "_vs_" not in k]
    if types:  # NEU-Seg: pixel IoU of the images holding each defect type
        lines += [
            "",
            "Pixel mean IoU per defect type (mask class index), and the paired difference to the baseline:",
            "",
        ]
        lines += ["| lever | " + " | ".join(types) + " |", "|" + "---|" * (1 + len(types))]
        for e in results["levers"]:
            baseline = LEVERS[e["lever"]].baseline
            cells = []
            for t in types:
                cell = _fmt(e[t])
                paired = e.get(f"{t}_vs_{baseline}") if baseline else None
                if paired and paired["mean_difference"] is not None:
                    p = "-" if paired["wilcoxon_p"] is None else f"{paired['wilcoxon_p']:.3f}"
                    cell += (
                        f" ({paired['mean_difference']:+.3f}, {paired['better_on']}/{paired['pairs']}, p {p})"
                    )
                cells.append(cell)
            lines.append(f"| {e['lever']} | " + " | ".join(cells) + " |")
    lines += ["", "Conditions:", ""] + [f"- **{e['lever']}**: {e['what']}" for e in results["levers"]]
    return "\n".join(lines) + "\n"


def main(
    out: Path = typer.Option(Path("ablation_out"), "--out", help="Folder for every run and the results."),
    seeds: int = typer.Option(
        None,
        "--seeds",
        help="Fine-tuning seeds (default 6; --quick: 2); seed s tests fold s mod 3; more extends a run.",
    ),
    levers: str = typer.Option(
        None,
        "--levers",
        help=f"Comma-separated conditions (default all; --quick: three): {', '.join(LEVERS)}.",
    ),
    defective_train: int = typer.Option(
        None, "--defective-train", help="Defective training images kept (default 10; --quick: 3)."
    ),
    target: str = typer.Option("class1", "--target", help=f"The few-defect target: {', '.join(TARGETS)}."),
    localize: bool = LocalizeOpt,
    device: str = DeviceOpt,
    quick: bool = QuickOpt,
) -> None:
    """Pretrained against random trunks on a few-defect Class1, one lever at a time; see the module docstring."""
    changes = dict(target=target, localize=localize, device=device)
    if defective_train is not None:
        changes["defective_train"] = defective_train
    if seeds is not None:
        changes["seeds"] = seeds
    if levers is not None:
        changes["levers"] = tuple(x for x in levers.split(",") if x)
    elif target != "class1" and not quick:  # the resized levers are Class1's
        changes["levers"] = tuple(x for x in LEVERS if "image_size" not in LEVERS[x].finetune)
    cfg = AblationConfig.quick_config(out, **changes) if quick else AblationConfig(out=out, **changes)
    run_or_exit(run_ablation, cfg)


if __name__ == "__main__":
    typer.run(main)
