"""Does pretraining on the Dataonomy selection prepare a defect detector better than the same budget spent on
other classes? Two arms, one command, seeded, resumable::

    python examples/subset_experiment.py --out experiment_out              # the full run (hours on 2 cores)
    python examples/subset_experiment.py --out experiment_out --estimate   # time a few steps, project the cost
    python examples/subset_experiment.py --out experiment_out --quick      # every arm and condition, tiny (CI)

Source pool: the standard 200 classes of ``../shared/data/tiny-imagenet-200-subset``. Targets: real DAGM Class1
(``../shared/data/dagm/Class1/Test``, native 512 px, 3-fold cross-validated by the tool's folds) and the synthetic
DAGM target. Fine-tuning is the segdec detector (``--head segdec``: defect map and decision, trained from the
masks, training crops of ``--crop-size``, tested on whole images). Arms:

    scratch   the small trunk (``small_cnn`` cut at stride 8), the same network in every condition, pretrained
              from a random initialisation on the condition's classes, or not at all (``none``)
    imagenet  the ImageNet ``efficientnet_lite0`` trunk given an intermediate pretraining on the condition's
              classes at the product's lower from-weights learning rate, or ImageNet alone (``imagenet``)

Conditions, at an equal budget of k classes, equal pretraining steps and equal fine-tuning steps within an arm:

    dataonomy  the BIP selection for this target (``dataonomy select``), made on the training folds' images only
    greedy     the k classes of highest AHP affinity (no coverage or diversity constraints)
    random     k classes drawn at random, a fresh draw for every seed
    all        all 200 classes, for the same number of steps
    none / imagenet   no (intermediate) pretraining: the arm's baseline

Seeds are paired: seed s fine-tunes every condition on Class1's fold s mod 3 with initialisation seed s, and the
Class1 selection for that fold reads only the fold's train+validation images (staged as links in
``OUT/selection/dagm-class1-foldK/``). Every stage calls the product's functions (``run_selection``,
``transfer.training.train``, ``evaluate_run``, ``localize_images``); this file only chooses the sizes and keeps
the books. Each run lives in its own folder under ``--out`` and is skipped when complete or resumed from its
checkpoint when interrupted. ``results.json``, ``results.md`` and ``results.png`` are rewritten at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
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
# Options the study scripts (this one, pretrain_ablation, affinity_transfer, selection_comparison) share.
LocalizeOpt = typer.Option(True, "--localize/--no-localize", help="Pixel mean IoU of each test fold.")
DeviceOpt = typer.Option("cpu", "--device", help="cpu or cuda.")
QuickOpt = typer.Option(False, "--quick", help="Tiny sizes: every stage in a few minutes (CI).")
ARMS = ("scratch", "imagenet")
SUBSET_CONDITIONS = ("dataonomy", "greedy", "random", "all")
# The arm's condition without (intermediate) pretraining.
BASELINE = {"scratch": "none", "imagenet": "imagenet"}
TARGETS = ("dagm-class1", "synthetic")


def conditions(arm: str) -> tuple[str, ...]:
    return (*SUBSET_CONDITIONS, BASELINE[arm])


@dataclass
class ExperimentConfig:
    """Every parameter of the experiment (saved as ``experiment_config.json`` in ``out``)."""

    out: Path = Path("experiment_out")
    source_root: Path = SHARED / "tiny-imagenet-200-subset"
    dagm_root: Path = SHARED / "dagm" / "Class1" / "Test"
    arms: tuple[str, ...] = ARMS
    targets: tuple[str, ...] = TARGETS
    # 6: every Class1 fold tested twice, and 6 pairs let the Wilcoxon test reach p = 0.031 (5 pairs: 0.0625)
    seeds: int = 6
    k: int = 20
    # Selection (class statistics from a sample of images per class), per Class1 fold on its training images.
    backbone: str = "efficientnet_lite0"
    affinity: str = "prototype"
    select_source_images_per_class: int = 10
    select_target_images_per_class: int = 100
    coverage: int = 1
    diversity_depth: int | None = 6
    diversity_max: int | None = 4
    # Targets. Class1 at native resolution (dagm_size None) or resized to dagm_size; dagm_images keeps a seeded,
    # stratified sample of that many images (None: all 575).
    dagm_size: int | None = None
    dagm_images: int | None = None
    folds: int = 3
    synthetic_classes: int = 10
    synthetic_images_per_split: int = 60
    synthetic_size: int = 128
    # Pretraining on Tiny ImageNet (64 px): the same steps for every subset of an arm (also "all").
    scratch_arch: str = "small_cnn"
    imagenet_arch: str = "efficientnet_lite0"
    scratch_output_stride: int = 8  # small_cnn's whole trunk
    imagenet_output_stride: int = 16
    pretrain_image_size: int = 64
    pretrain_steps: int = 100
    pretrain_epochs: int = 1  # validation (the pool's val images of the subset, 50 a class) after each epoch
    pretrain_batch_size: int = 32
    pretrain_images_per_class: int | None = None  # caps training and validation images (None: 50 and 50)
    scratch_pretrain_lr: float = 0.05
    # None: the product's from-weights default (0.1 x batch / 256 / 10).
    imagenet_pretrain_lr: float | None = None
    # Fine-tuning: segdec, the same recipe for every condition of an arm, no early stop.
    crop_size: int | None = 192  # Class1 training crops (the synthetic target trains on whole images)
    # A short budget on purpose: in probes on Class1 fold 0 the scratch baseline was at chance after 10 steps
    # and at validation AP 1.0 after 20 (ImageNet alone: chance after 10), so longer budgets saturate the image
    # metrics for every condition and only the pixel IoU is left to compare.
    finetune_epochs: int = 3
    finetune_steps_per_epoch: int = 40
    finetune_batch_size: int = 8
    scratch_finetune_lr: float = 0.02
    imagenet_finetune_lr: float = 0.01
    localize: bool = True  # pixel mean IoU of the test fold (transfer localize)
    base_seed: int = 0
    device: str = "cpu"
    workers: int = 0
    quick: bool = False
    exclude_source: tuple[str, ...] = field(default=TINY_IMAGENET_EXTRAS)

    @classmethod
    def quick_config(cls, out: Path, **changes) -> ExperimentConfig:
        """Minutes-long sizes for the CI test: every arm, stage and condition runs, on less data."""
        sizes = dict(
            out=out, k=4, select_source_images_per_class=2, select_target_images_per_class=8,
            diversity_depth=None, diversity_max=None, dagm_size=96, dagm_images=45, synthetic_classes=2,
            synthetic_images_per_split=16, synthetic_size=64, pretrain_image_size=32, pretrain_steps=2,
            pretrain_epochs=1, pretrain_batch_size=16, pretrain_images_per_class=4, crop_size=64, finetune_epochs=1, finetune_steps_per_epoch=2,
            finetune_batch_size=4, quick=True,
        )  # fmt: skip
        sizes.update(changes)
        return cls(**sizes)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    def arch(self, arm: str) -> str:
        return self.scratch_arch if arm == "scratch" else self.imagenet_arch

    def output_stride(self, arm: str) -> int:
        return self.scratch_output_stride if arm == "scratch" else self.imagenet_output_stride

    def fold(self, seed: int) -> int:
        return seed % self.folds


def log(message: str) -> None:
    print(message, flush=True)


# --- 1. targets -------------------------------------------------------------------------------------------------


def prepare_targets(cfg: ExperimentConfig) -> dict[str, Path]:
    """The DAGM-layout folders fine-tuning reads: Class1 (the shared copy itself at native size and in full, else
    a resized or sampled copy), and the synthetic target."""
    from PIL import Image

    from dataonomy.datasets import DAGM
    from dataonomy.datasets.synthetic import Rendering, make_synthetic_dagm

    roots = {}
    data = cfg.out / "data"
    if "dagm-class1" in cfg.targets:
        if cfg.dagm_size is None and cfg.dagm_images is None:
            DAGM(cfg.dagm_root)  # checks the copy: labels, masks, files
            roots["dagm-class1"] = Path(cfg.dagm_root).resolve()
        else:
            root = data / "dagm-class1"
            if not (root / "done").exists():
                source = DAGM(cfg.dagm_root)
                samples = list(source.samples)
                if cfg.dagm_images is not None:  # stratified: the defect rate of the whole set
                    rng = np.random.default_rng([cfg.base_seed, 0xDA6])
                    bad = [s for s in samples if s.target]
                    good = [s for s in samples if not s.target]
                    n_bad = max(cfg.folds * 2, round(cfg.dagm_images * len(bad) / len(samples) * 2))
                    keep = [bad[i] for i in rng.choice(len(bad), min(n_bad, len(bad)), replace=False)]
                    keep += [
                        good[i] for i in rng.choice(len(good), cfg.dagm_images - len(keep), replace=False)
                    ]
                    samples = sorted(keep, key=lambda s: s.path.name)
                tmp = data / "dagm-class1.partial"
                shutil.rmtree(tmp, ignore_errors=True)
                split = tmp / "Class1" / "Test"
                (split / "Label").mkdir(parents=True)
                for sample in samples:
                    image = Image.open(sample.path).convert("L")
                    mask = Image.open(sample.mask).convert("L") if sample.mask is not None else None
                    if cfg.dagm_size is not None:
                        size = (cfg.dagm_size, cfg.dagm_size)
                        image = image.resize(size, Image.BILINEAR)
                        mask = mask.resize(size, Image.NEAREST) if mask is not None else None
                    image.save(split / sample.path.name)
                    if mask is not None:
                        mask.save(split / "Label" / Path(sample.mask).name)
                _write_labels(Path(cfg.dagm_root), split, {s.path.name for s in samples})
                (tmp / "done").write_text(
                    f"Class1/Test of {cfg.dagm_root}: {len(samples)} images, size {cfg.dagm_size or 'native'}\n"
                )
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
                rendering=Rendering(size=cfg.synthetic_size, seed=cfg.base_seed),
            )
            (tmp / "done").write_text("synthetic DAGM\n")
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)
        roots["synthetic"] = root / "dagm"
    return roots


def _write_labels(source_split: Path, split: Path, names: set[str]) -> None:
    """``split/Label/Labels.txt``: the header and the rows of ``source_split``'s Labels.txt naming ``names``."""
    lines = (source_split / "Label" / "Labels.txt").read_text().splitlines()
    rows = [line for line in lines[1:] if len(line.split()) > 2 and line.split()[2] in names]
    (split / "Label" / "Labels.txt").write_text("\n".join([lines[0], *rows]) + "\n")


# --- 2. selection on the training images, and the condition subsets ---------------------------------------------


def source_classes(cfg: ExperimentConfig) -> list[str]:
    wnids = (Path(cfg.source_root) / "wnids.txt").read_text().split()
    return [w for w in wnids if w not in cfg.exclude_source]


def stage_training_fold(cfg: ExperimentConfig, root: Path, fold: int) -> tuple[Path, list[str]]:
    """A DAGM folder of links to the train+validation images (and masks) of Class1's fold ``fold``: the images
    the selection may see. The fold is the tool's (:func:`transfer.data.defect_fold`, split seed ``base_seed``)."""
    from dataonomy.datasets import SplitSpec
    from transfer.data import DefectData, defect_fold

    staged = cfg.out / "selection" / f"dagm-class1-fold{fold}" / "Class1" / "Test"
    spec = SplitSpec("trainval", folds=cfg.folds, fold=fold, seed=cfg.base_seed)
    trainval = defect_fold(DefectData(str(root)), spec)
    names = sorted(s.path.name for s in trainval.samples)
    if not (staged.parent.parent / "done").exists():
        shutil.rmtree(staged.parent.parent, ignore_errors=True)
        (staged / "Label").mkdir(parents=True)
        for s in trainval.samples:
            os.symlink(Path(s.path).resolve(), staged / s.path.name)
            if s.mask is not None:
                os.symlink(Path(s.mask).resolve(), staged / "Label" / Path(s.mask).name)
        _write_labels(root, staged, set(names))
        (staged.parent.parent / "done").write_text(
            f"fold {fold} of {cfg.folds}: train+val images of {root}\n"
        )
    return staged, names


def select(cfg: ExperimentConfig, name: str, root: Path, split: str, pool: list[str]) -> dict:
    """The Dataonomy and greedy subsets for one target (or Class1 fold), and every pool class's affinity to it."""
    from dataonomy.selection import SelectConfig, run_selection

    path = cfg.out / "selection" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    run = run_selection(
        SelectConfig(
            target_root=root,
            source_root=Path(cfg.source_root),
            source_classes=pool,
            target_split=split,
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
            out=cfg.out / "selection" / f"{name}_manifest.json",
        ),
        log=log,
    )
    classes = run.source_classes
    # A class's affinity to the target: its AHP share, averaged over the target's classes.
    affinity = run.affinity.mean(axis=0)
    record = {
        "target_root": str(root),
        "target_split": split,
        "dataonomy": sorted(classes[i] for i in run.result.selected),
        "greedy": sorted(classes[i] for i in run.result.greedy.selected),
        "greedy_violations": [v.message for v in run.result.greedy.violations],
        "affinity": {w: float(a) for w, a in zip(classes, affinity, strict=True)},
        "manifest": str(run.manifest_path),
    }
    write_json(path, record)
    return record


def selections_for(cfg: ExperimentConfig, roots: dict[str, Path], pool: list[str]) -> dict[str, dict]:
    """Selections keyed ``dagm-class1-foldK`` (one per fold a seed tests on) and ``synthetic``."""
    out = {}
    if "dagm-class1" in cfg.targets:
        for fold in sorted({cfg.fold(s) for s in range(cfg.seeds)}):
            staged, names = stage_training_fold(cfg, roots["dagm-class1"], fold)
            record = select(cfg, f"dagm-class1-fold{fold}", staged, "all", pool)
            record["images"] = names
            out[f"dagm-class1-fold{fold}"] = record
    if "synthetic" in cfg.targets:  # its own Train split (train + validation); never its Test images
        out["synthetic"] = select(cfg, "synthetic", roots["synthetic"], "trainval", pool)
    return out


def selection_key(target: str, cfg: ExperimentConfig, seed: int) -> str:
    return f"dagm-class1-fold{cfg.fold(seed)}" if target == "dagm-class1" else target


def random_subset(pool: list[str], k: int, draw: int, base_seed: int) -> list[str]:
    rng = np.random.default_rng([base_seed, 0x5AB5E7, draw])
    return sorted(pool[i] for i in rng.choice(len(pool), size=k, replace=False))


# --- 3. pretraining and fine-tuning -------------------------------------------------------------------------------


def _last_checkpoint_path(run_dir: Path) -> Path:
    from transfer.checkpoint import last_checkpoint_path

    return last_checkpoint_path(run_dir)


def train_run(config, run_dir: Path, runtime) -> None:
    """Train, resume or skip: a run with summary.json is complete, one with a checkpoint is resumed."""
    from transfer.training import train

    if (run_dir / "summary.json").exists():
        return
    resume = _last_checkpoint_path(run_dir).exists()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # started but not a single checkpoint: start again
    train(config, run_dir, resume=resume, runtime=runtime)


def pretrain_config(cfg: ExperimentConfig, arm: str, manifest: Path, wnids: list[str], seed: int):
    from transfer.config import PretrainConfig

    return PretrainConfig(
        manifest=str(manifest.resolve()),
        source_root=str(Path(cfg.source_root).resolve()),
        wnids=wnids,
        arch=cfg.arch(arm),
        init="scratch" if arm == "scratch" else "imagenet",
        image_size=cfg.pretrain_image_size,
        epochs=cfg.pretrain_epochs,
        steps_per_epoch=max(1, cfg.pretrain_steps // cfg.pretrain_epochs),
        batch_size=cfg.pretrain_batch_size,
        lr=cfg.scratch_pretrain_lr if arm == "scratch" else cfg.imagenet_pretrain_lr,
        warmup_epochs=min(1.0, cfg.pretrain_epochs / 3),
        images_per_class=cfg.pretrain_images_per_class,
        checkpoint_every=10_000,
        seed=seed,
    )


def pretrain(cfg: ExperimentConfig, arm: str, name: str, wnids: list[str], seed: int, runtime) -> Path:
    run_dir = cfg.out / "pretrain" / arm / name / f"seed{seed}"
    manifest = cfg.out / "pretrain" / "subsets" / f"{name}.json"
    if not manifest.exists():
        # A manifest naming exactly this subset: what `transfer pretrain --manifest` reads.
        write_json(manifest, {"schema": "dataonomy.manifest/1", "selected": [{"wnid": w} for w in wnids]})
    train_run(pretrain_config(cfg, arm, manifest, wnids, seed), run_dir, runtime)
    return run_dir


def finetune_config(cfg: ExperimentConfig, arm: str, target: str, root: Path, base: str, seed: int):
    from transfer.checkpoint import finetune_base_fields
    from transfer.config import FinetuneConfig

    split = (
        {"folds": cfg.folds, "fold": cfg.fold(seed), "split_seed": cfg.base_seed}
        if target == "dagm-class1"
        else {"split_seed": cfg.base_seed}  # the synthetic target has its own Test split
    )
    return FinetuneConfig(
        **finetune_base_fields(base, cfg.arch(arm)),
        data=str(root.resolve()),
        **split,
        head="segdec",
        output_stride=cfg.output_stride(arm),
        crop_size=cfg.crop_size if target == "dagm-class1" else None,
        epochs=cfg.finetune_epochs,
        steps_per_epoch=cfg.finetune_steps_per_epoch,
        batch_size=cfg.finetune_batch_size,
        lr=cfg.scratch_finetune_lr if arm == "scratch" else cfg.imagenet_finetune_lr,
        patience=cfg.finetune_epochs,  # no early stop: every condition gets every step
        checkpoint_every=10_000,
        seed=seed,
    )


def finetune(cfg, arm, target, root, condition, base: str, seed, runtime) -> Path:
    run_dir = cfg.out / "finetune" / arm / target / condition / f"seed{seed}"
    train_run(finetune_config(cfg, arm, target, root, base, seed), run_dir, runtime)
    return run_dir


def evaluate(cfg: ExperimentConfig, run_dir: Path) -> dict:
    """Test-fold metrics of a fine-tuned run, kept in ``RUN/experiment_metrics.json``: image AP, AUROC, and
    TPR/TNR/accuracy at the validation threshold (``evaluate_run``); pixel mean IoU over the defective test
    images at the pixel threshold chosen on validation (``localize_images``)."""
    from transfer.evaluate import evaluate_run
    from transfer.stage_config import EvaluateConfig, LocalizeConfig

    path = run_dir / "experiment_metrics.json"
    if path.exists():
        return json.loads(path.read_text())
    started = time.perf_counter()
    report = evaluate_run(EvaluateConfig(model=str(run_dir), split="test", errors=False), device=cfg.device)
    rows = report["stored_threshold"]["rows"]
    overall = next((r for r in rows if r["group"] == "all"), rows[0])
    out = {m: overall[m] for m in ("ap", "auroc", "accuracy", "tpr", "tnr", "n", "n_defective")}
    out["evaluate_seconds"] = round(time.perf_counter() - started, 1)
    out["mean_iou"] = None
    if cfg.localize:
        from transfer.localize_run import localize_images

        started = time.perf_counter()
        loc_dir = run_dir / "localize"
        loc = localize_images(LocalizeConfig(model=str(run_dir)), loc_dir, overwrite=True, progress=False)
        iou = loc["metrics"].get("mean_iou_defective")
        out["mean_iou"] = float(iou) if iou is not None and math.isfinite(iou) else None
        out["pixel_threshold"] = loc["threshold"]["value"]
        out["localize_seconds"] = round(time.perf_counter() - started, 1)
        for heavy in ("heatmaps", "overlays", "masks"):  # 1 MB a heatmap: keep localize.json only
            shutil.rmtree(loc_dir / heavy, ignore_errors=True)
    write_json(path, out)
    return out


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# --- 4. the whole experiment ----------------------------------------------------------------------------------------


def run_or_exit(study, cfg):
    """Run a study script's ``study(cfg)``; a DataonomyError is one ``error:`` line and exit code 2."""
    try:
        return study(cfg)
    except DataonomyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def check_study_folder(
    saved: Path, current: dict, defaults: dict, extends: tuple[str, ...], what: str
) -> None:
    """One study per ``--out`` folder: refuse a folder whose saved config (``saved``) has other parameters than
    ``current`` (both ``to_dict()`` forms), then save ``current``. The ``extends`` fields only add runs (more
    seeds, more subsets, another lever) and may differ; a field saved before it existed takes its ``defaults``
    value, the one that run was made with."""

    def comparable(d: dict) -> dict:
        return {k: v for k, v in json.loads(json.dumps(d)).items() if k not in extends}

    same = comparable(current)
    if saved.exists():
        old = comparable(json.loads(saved.read_text()))
        if set(old) <= set(same):
            old = {k: old.get(k, comparable(defaults)[k]) for k in same}
        if old != same:
            raise DataonomyError(
                f"--out {saved.parent}: holds {what} with other parameters; choose another folder"
            )
    write_json(saved, current)


def check_saved_config(cfg: ExperimentConfig) -> None:
    # More --seeds only adds runs (seed s's runs do not depend on how many seeds there are): allowed.
    check_study_folder(
        cfg.out / "experiment_config.json",
        cfg.to_dict(),
        ExperimentConfig().to_dict(),
        ("seeds",),
        "an experiment",
    )


def run_experiment(cfg: ExperimentConfig) -> dict:
    from transfer.training import Runtime

    started = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    check_saved_config(cfg)
    runtime = Runtime(device=cfg.device, num_workers=cfg.workers, progress=False)
    pool = source_classes(cfg)
    log(f"source pool: {len(pool)} classes of {cfg.source_root}")

    log("== targets ==")
    roots = prepare_targets(cfg)
    log("== selection (on training images only) ==")
    selections = selections_for(cfg, roots, pool)
    for key, s in selections.items():
        overlap = len(set(s["dataonomy"]) & set(s["greedy"]))
        log(
            f"{key}: dataonomy and greedy share {overlap} of {cfg.k}; greedy breaks: {s['greedy_violations']}"
        )

    rows = []
    for seed in range(cfg.seeds):
        subsets = {"all": pool, "random": random_subset(pool, cfg.k, seed, cfg.base_seed)}
        for t in cfg.targets:
            s = selections[selection_key(t, cfg, seed)]
            subsets[f"dataonomy-{t}"], subsets[f"greedy-{t}"] = s["dataonomy"], s["greedy"]
        for arm in cfg.arms:
            bases, trained = {}, {}
            for name, wnids in subsets.items():
                # e.g. greedy = dataonomy when no constraint binds: one run serves both
                if tuple(wnids) in trained:
                    bases[name] = trained[tuple(wnids)]
                    continue
                pre_name = {"random": f"random-draw{seed}"}.get(name, name)
                if name.endswith("dagm-class1"):
                    pre_name = f"{name}-fold{cfg.fold(seed)}"
                log(f"[seed {seed}] {arm}: pretrain {pre_name} ({len(wnids)} classes)")
                bases[name] = trained[tuple(wnids)] = pretrain(cfg, arm, pre_name, wnids, seed, runtime)
            for t in cfg.targets:
                affinity = selections[selection_key(t, cfg, seed)]["affinity"]
                for condition in conditions(arm):
                    key = f"{condition}-{t}" if condition in ("dataonomy", "greedy") else condition
                    base = bases[key] if key in bases else None
                    log(f"[seed {seed}] {arm}: fine-tune {t} from {condition}")
                    base_arg = (
                        str(base) if base is not None else ("scratch" if arm == "scratch" else "imagenet")
                    )
                    run_dir = finetune(cfg, arm, t, roots[t], condition, base_arg, seed, runtime)
                    wnids = subsets.get(key, [])
                    row = {
                        "arm": arm,
                        "target": t,
                        "condition": condition,
                        "seed": seed,
                        "fold": cfg.fold(seed) if t == "dagm-class1" else None,
                        "classes": len(wnids),
                        "subset_affinity": float(np.mean([affinity[w] for w in wnids])) if wnids else None,
                        "pretrain_val_top1": _summary(base).get("best") if base is not None else None,
                        "pretrain_steps": _summary(base).get("steps") if base is not None else 0,
                        "pretrain_run": str(base) if base is not None else None,
                        "finetune_steps": _summary(run_dir).get("steps"),
                        **evaluate(cfg, run_dir),
                        "run": str(run_dir),
                    }
                    rows.append(row)
                    iou = "-" if row["mean_iou"] is None else f"{row['mean_iou']:.3f}"
                    log(
                        f"    test AP {row['ap']:.3f}, AUROC {row['auroc']:.3f}, TPR {row['tpr']:.3f}, "
                        f"TNR {row['tnr']:.3f}, pixel mean IoU {iou}"
                    )
    results = summarize(cfg, rows, selections)
    results["seconds_this_invocation"] = round(time.perf_counter() - started, 1)  # a resumed run skips work
    write_json(cfg.out / "results.json", results)
    (cfg.out / "results.md").write_text(format_results(results))
    plot_results(results, cfg.out / "results.png")
    log(format_results(results))
    return results


# --- 5. summary, table, picture -------------------------------------------------------------------------------------

METRICS = ("ap", "auroc", "tpr", "tnr", "accuracy", "mean_iou")
PAIRED_METRICS = ("ap", "auroc", "mean_iou")


def _stat(values: list) -> dict:
    v = np.array([x for x in values if x is not None], dtype=float)
    return {
        "mean": float(v.mean()) if len(v) else None,
        "std": float(v.std(ddof=1)) if len(v) > 1 else None,
        "n": int(len(v)),
    }


def summarize(cfg: ExperimentConfig, rows: list[dict], selections: dict) -> dict:
    from scipy.stats import spearmanr, wilcoxon

    table, paired, correlation = [], {}, {}
    for arm in cfg.arms:
        for t in cfg.targets:
            mine = [r for r in rows if r["arm"] == arm and r["target"] == t]
            for condition in conditions(arm):
                runs = [r for r in mine if r["condition"] == condition]
                entry = {"arm": arm, "target": t, "condition": condition, "runs": len(runs)}
                entry.update({m: _stat([r[m] for r in runs]) for m in METRICS})
                entry["subset_affinity"] = _stat([r["subset_affinity"] for r in runs])["mean"]
                entry["pretrain_steps"] = sorted({r["pretrain_steps"] for r in runs})
                entry["finetune_steps"] = sorted({r["finetune_steps"] for r in runs})
                table.append(entry)
            # Paired by seed (same fold, same initialisation seed): Dataonomy minus each other condition.
            ours = {r["seed"]: r for r in mine if r["condition"] == "dataonomy"}
            for condition in conditions(arm)[1:]:
                other = {r["seed"]: r for r in mine if r["condition"] == condition}
                seeds = sorted(set(ours) & set(other))
                entry = {"arm": arm, "target": t, "condition": condition, "seeds": len(seeds)}
                for m in PAIRED_METRICS:
                    pairs = [(ours[s][m], other[s][m]) for s in seeds]
                    diff = np.array([a - b for a, b in pairs if a is not None and b is not None], dtype=float)
                    p = wilcoxon(diff).pvalue if len(diff) > 1 and np.any(diff != 0) else float("nan")
                    entry[m] = {
                        "mean_difference": float(diff.mean()) if len(diff) else None,
                        "dataonomy_better": int((diff > 0).sum()),
                        "pairs": int(len(diff)),
                        "wilcoxon_p": _finite(p),
                    }
                paired[f"{arm}/{t}/{condition}"] = entry
            # One point per pretrained model: a run that served two conditions (greedy = dataonomy) counts once.
            unique = {r["pretrain_run"]: r for r in mine if r["subset_affinity"] is not None}
            points = list(unique.values())
            x, y = [r["subset_affinity"] for r in points], [r["ap"] for r in points]
            rho, p = spearmanr(x, y) if len(set(x)) > 1 and len(set(y)) > 1 else (float("nan"), float("nan"))
            correlation[f"{arm}/{t}"] = {
                "spearman_rho": _finite(rho),
                "p_value": _finite(p),
                "runs": len(points),
            }
    return {
        "config": cfg.to_dict(),
        "table": table,
        "dataonomy_vs": paired,
        "affinity_vs_ap": correlation,
        "selections": {
            k: {f: v for f, v in s.items() if f not in ("affinity", "images")} for k, s in selections.items()
        },
        "selection_images": {k: s["images"] for k, s in selections.items() if "images" in s},
        "runs": rows,
    }


def _finite(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _fmt(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if stat["std"] is not None else f"{stat['mean']:.3f}"


def _p(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def format_results(results: dict) -> str:
    lines = [
        "| arm | target | condition | runs | mean class affinity | AP | AUROC | TPR | TNR | accuracy | pixel mean IoU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in results["table"]:
        aff = f"{e['subset_affinity']:.4f}" if e["subset_affinity"] is not None else "-"
        cells = " | ".join(_fmt(e[m]) for m in METRICS)
        lines.append(f"| {e['arm']} | {e['target']} | {e['condition']} | {e['runs']} | {aff} | {cells} |")
    lines += [
        "",
        "Dataonomy minus each other condition, paired by seed (same fold, same seed), Wilcoxon signed-rank p:",
        "",
        "| arm | target | against | seeds | AP difference | better on | p | AUROC difference | p | IoU difference | p |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["dataonomy_vs"].values():
        ap, au, iou = c["ap"], c["auroc"], c["mean_iou"]

        def d(x):
            return "-" if x["mean_difference"] is None else f"{x['mean_difference']:+.3f}"

        lines.append(
            f"| {c['arm']} | {c['target']} | {c['condition']} | {c['seeds']} | {d(ap)} | "
            f"{ap['dataonomy_better']}/{ap['pairs']} | {_p(ap['wilcoxon_p'])} | {d(au)} | {_p(au['wilcoxon_p'])} | "
            f"{d(iou)} | {_p(iou['wilcoxon_p'])} |"
        )
    lines += [
        "",
        "Spearman rank correlation between a pretraining subset's mean class affinity and its test AP:",
        "",
    ]
    for key, c in results["affinity_vs_ap"].items():
        rho = "n/a" if c["spearman_rho"] is None else f"{c['spearman_rho']:+.2f} (p = {_p(c['p_value'])})"
        lines.append(f"- {key}: rho {rho} over {c['runs']} pretrained models")
    return "\n".join(lines) + "\n"


def plot_results(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((e["arm"], e["target"]) for e in results["table"]))
    fig, axes = plt.subplots(2, len(panels), figsize=(4.8 * len(panels), 8), squeeze=False)
    palette = ("tab:red", "tab:orange", "tab:blue", "tab:green", "tab:gray")
    for j, (arm, t) in enumerate(panels):
        names = conditions(arm)
        colours = dict(zip(names, palette, strict=True))
        runs = [r for r in results["runs"] if r["arm"] == arm and r["target"] == t]
        ax = axes[0, j]
        for i, condition in enumerate(names):
            aps = [r["ap"] for r in runs if r["condition"] == condition]
            ax.scatter([i] * len(aps), aps, color=colours[condition], alpha=0.6)
            if aps:
                mean, sd = np.mean(aps), (np.std(aps, ddof=1) if len(aps) > 1 else 0.0)
                # AP lives in [0, 1]: clip the bar there rather than draw a spread past a perfect score
                yerr = [[min(sd, mean)], [min(sd, 1.0 - mean)]]
                ax.errorbar(i + 0.15, mean, yerr=yerr, fmt="_k", capsize=4)
        chance = sum(r["n_defective"] for r in runs) / max(1, sum(r["n"] for r in runs))
        ax.axhline(chance, color="k", ls=":", lw=1, label=f"chance (defect rate {chance:.2f})")
        ax.legend(fontsize=8, loc="best")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel("test AP (image level)")
        ax.set_title(f"{arm} / {t}: AP per run, mean ± sd", fontsize=10)
        ax = axes[1, j]
        for r in runs:
            if r["subset_affinity"] is not None:
                ax.scatter(r["subset_affinity"], r["ap"], color=colours[r["condition"]], alpha=0.7)
        c = results["affinity_vs_ap"][f"{arm}/{t}"]
        rho = "n/a" if c["spearman_rho"] is None else f"{c['spearman_rho']:+.2f}"
        ax.set_xlabel("mean AHP affinity of the pretraining classes")
        ax.set_ylabel("test AP")
        ax.set_title(f"{arm} / {t}: Spearman rho {rho}", fontsize=10)
        handles = [
            plt.Line2D([], [], marker="o", ls="", color=colours[n], label=n) for n in SUBSET_CONDITIONS
        ]
        ax.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


# --- 6. the cost of the full run, from a few timed steps ----------------------------------------------------------


class _Probe:
    """Timed training runs in ``work`` at ``cfg``'s device: the seconds of one optimiser step, and each probe's
    set-up time (model, data; the last one's is used)."""

    def __init__(self, cfg: ExperimentConfig, work: Path, probe_steps: int):
        self.cfg, self.work, self.probe_steps = cfg, work, probe_steps
        self.setup: list[float] = []

    def _timed_train(self, config, run_dir: Path, steps: int | None = None) -> float:
        from transfer.training import Runtime, train

        started = time.perf_counter()
        train(
            config, run_dir, runtime=Runtime(device=self.cfg.device, progress=False, stop_after_steps=steps)
        )
        return time.perf_counter() - started

    def per_step(self, make_config) -> float:
        """Two fresh runs of 2 and 2 + ``probe_steps`` steps, so set-up cancels out."""
        times = [
            self._timed_train(make_config(), self.work / f"probe{len(os.listdir(self.work))}", steps)
            for steps in (2, 2 + self.probe_steps)
        ]
        step = max(1e-3, (times[1] - times[0]) / self.probe_steps)
        self.setup.append(max(0.0, times[0] - 2 * step))
        return step

    def finetune_row(self, arm: str, t: str, root: Path) -> tuple[dict, float]:
        """One target's fine-tuning: a step, and one finished one-step run with its evaluation and localisation,
        timed as the experiment runs them (validation, the one epoch's, and scoring are measured, not modelled);
        also the seconds per seed of all its conditions."""
        cfg = self.cfg
        base = "scratch" if arm == "scratch" else "imagenet"
        ft = self.per_step(lambda: finetune_config(cfg, arm, t, root, base, 0))
        one = dataclasses.replace(cfg, finetune_epochs=1, finetune_steps_per_epoch=1)
        run_dir = self.work / f"whole-{arm}-{t}"
        one_epoch = self._timed_train(
            finetune_config(one, arm, t, root, base, 0), run_dir
        )  # set-up + step + val
        started = time.perf_counter()
        evaluate(cfg, run_dir)
        scoring = time.perf_counter() - started
        validation = max(0.0, one_epoch - self.setup[-1] - ft)
        run_seconds = (
            self.setup[-1] + cfg.finetune_epochs * (cfg.finetune_steps_per_epoch * ft + validation) + scoring
        )
        per_seed = len(conditions(arm)) * run_seconds
        return {
            "finetune_step_s": round(ft, 3),
            "validation_s": round(validation, 1),
            "evaluate_and_localize_s": round(scoring, 1),
            "run_s": round(run_seconds, 1),
            "per_seed_s": round(per_seed, 1),
        }, per_seed


def _estimate_arm(
    probe: _Probe, arm: str, manifest: Path, pool: list[str], roots: dict[str, Path]
) -> tuple[dict, float]:
    """One arm's row (its pretraining and each target's fine-tuning, per seed) and its seconds per seed."""
    cfg = probe.cfg
    # dataonomy and greedy per target, random, all (fewer when two are equal)
    n_subset_runs = 2 * len(cfg.targets) + 2
    pre = probe.per_step(lambda: pretrain_config(cfg, arm, manifest, pool[: cfg.k], 0))
    # Pretraining validation: the subset's val images (50 a class) after each epoch, at 64 px; "all" has 200.
    pre_val_images = (
        cfg.pretrain_epochs
        * (cfg.pretrain_images_per_class or 50)
        * (cfg.k * (n_subset_runs - 1) + len(pool))
    )
    pre_seconds = (
        n_subset_runs * cfg.pretrain_steps * pre + pre_val_images * pre / cfg.pretrain_batch_size / 3
    )
    arm_total = pre_seconds
    row = {"pretrain_step_s": round(pre, 3), "pretrain_per_seed_s": round(pre_seconds, 1)}
    for t in cfg.targets:
        row[t], per_seed = probe.finetune_row(arm, t, roots[t])
        arm_total += per_seed
    row["per_seed_s"] = round(arm_total, 1)
    return row, arm_total


def estimate(cfg: ExperimentConfig, probe_steps: int = 6) -> dict:
    """Time ``probe_steps`` optimiser steps of every kind of training run at ``cfg``'s sizes (two fresh runs of
    2 and 2 + ``probe_steps`` steps each, so set-up cancels out), and per arm and target one finished one-step
    fine-tuning with its evaluation and localisation (validation and scoring measured as the experiment runs
    them); project the full run's wall time. Selection is counted at a flat 3 minutes per selection. Other jobs
    on the machine only add time: the projection is for the load at the moment it was measured."""
    pool = source_classes(cfg)
    work = Path(tempfile.mkdtemp(prefix="estimate_", dir=cfg.out))
    roots = prepare_targets(cfg)
    probe = _Probe(cfg, work, probe_steps)
    manifest = work / "subset.json"
    write_json(manifest, {"schema": "dataonomy.manifest/1", "selected": [{"wnid": w} for w in pool[: cfg.k]]})
    rows, total = {}, 0.0
    for arm in cfg.arms:
        rows[arm], arm_total = _estimate_arm(probe, arm, manifest, pool, roots)
        total += arm_total
    selections = len({cfg.fold(s) for s in range(cfg.seeds)}) + 1
    selection_seconds = selections * 180.0  # measured order: about 2-3 min per selection on this machine
    projected = cfg.seeds * total + selection_seconds
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "arms": rows,
        "selections": selections,
        "selection_s": selection_seconds,
        "seeds": cfg.seeds,
        "projected_s": round(projected, 0),
        "projected_h": round(projected / 3600, 2),
        "config": cfg.to_dict(),
    }
    write_json(cfg.out / "estimate.json", result)
    log(json.dumps(result["arms"], indent=1))
    log(
        f"projected wall time of the full run: {projected / 3600:.2f} h ({cfg.seeds} seeds; {selections} selections)"
    )
    return result


app = typer.Typer(add_completion=False)


@app.command()
def main(
    out: Path = typer.Option(
        Path("experiment_out"), "--out", help="Folder for every run and the results (resumable)."
    ),
    seeds: int = typer.Option(
        6, "--seeds", help="Paired seeds (seed s tests on Class1 fold s mod 3; a fresh random draw)."
    ),
    k: int = typer.Option(None, "--k", help="Classes per pretraining subset (default 20; 4 with --quick)."),
    arms: str = typer.Option(",".join(ARMS), "--arms", help="Comma-separated: scratch, imagenet."),
    targets: str = typer.Option(
        ",".join(TARGETS), "--targets", help="Comma-separated: dagm-class1, synthetic."
    ),
    crop_size: int = typer.Option(
        None, "--crop-size", help="Class1 segdec training crop (default 192; 0: whole images)."
    ),
    finetune_epochs: int = typer.Option(
        None, "--finetune-epochs", help="Fine-tuning epochs, i.e. validations (default 3)."
    ),
    finetune_steps: int = typer.Option(
        None, "--finetune-steps-per-epoch", help="Fine-tuning steps per epoch (default 40)."
    ),
    finetune_batch: int = typer.Option(None, "--finetune-batch-size", help="Fine-tuning batch (default 8)."),
    pretrain_steps: int = typer.Option(
        None, "--pretrain-steps", help="Pretraining steps, every subset of an arm (default 100)."
    ),
    pretrain_epochs: int = typer.Option(
        None, "--pretrain-epochs", help="Pretraining epochs, i.e. validations (default 1)."
    ),
    pretrain_batch: int = typer.Option(None, "--pretrain-batch-size", help="Pretraining batch (default 32)."),
    imagenet_pretrain_lr: float = typer.Option(
        None,
        "--imagenet-pretrain-lr",
        help="Intermediate pretraining lr of the imagenet arm (default: product's).",
    ),
    localize: bool = typer.Option(True, "--localize/--no-localize", help="Pixel mean IoU of the test folds."),
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
    estimate_only: bool = typer.Option(
        False,
        "--estimate",
        help="Time a few steps of each kind of run and print the projected wall time; no experiment.",
    ),
):
    """Run the two-arm subset experiment and write results.{json,md,png} (or, with --estimate, its projected cost)."""
    chosen = tuple(t.strip() for t in targets.split(",") if t.strip())
    if not chosen or any(t not in TARGETS for t in chosen):
        raise DataonomyError(f"--targets {targets}: choose from {', '.join(TARGETS)}")
    chosen_arms = tuple(a.strip() for a in arms.split(",") if a.strip())
    if not chosen_arms or any(a not in ARMS for a in chosen_arms):
        raise DataonomyError(f"--arms {arms}: choose from {', '.join(ARMS)}")
    if seeds < 1 or (k is not None and k < 2):
        raise DataonomyError("--seeds must be at least 1 and --k at least 2")
    common = dict(out=out, seeds=seeds, arms=chosen_arms, targets=chosen, source_root=source_root,
                  dagm_root=dagm_root, base_seed=base_seed, device=device, localize=localize)  # fmt: skip
    for name, value in (("k", k), ("finetune_epochs", finetune_epochs), ("finetune_steps_per_epoch", finetune_steps),
                        ("finetune_batch_size", finetune_batch), ("pretrain_steps", pretrain_steps),
                        ("pretrain_epochs", pretrain_epochs), ("pretrain_batch_size", pretrain_batch)):  # fmt: skip
        if value is not None:
            if value < 1:
                raise DataonomyError(f"--{name.replace('_', '-')} {value}: must be at least 1")
            common[name] = value
    if imagenet_pretrain_lr is not None:
        if imagenet_pretrain_lr <= 0:
            raise DataonomyError(f"--imagenet-pretrain-lr {imagenet_pretrain_lr}: must be positive")
        common["imagenet_pretrain_lr"] = imagenet_pretrain_lr
    if crop_size is not None:
        common["crop_size"] = crop_size or None
    cfg = ExperimentConfig.quick_config(**common) if quick else ExperimentConfig(**common)
    if estimate_only:
        cfg.out.mkdir(parents=True, exist_ok=True)
        estimate(cfg)
        return
    run_experiment(cfg)


if __name__ == "__main__":
    from dataonomy.cli_utils import run_app

    raise SystemExit(run_app(app))
