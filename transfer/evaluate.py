"""The ``evaluate`` stage: score a fold of a defect set with a fine-tuned run and report it.

Image scores as the run's model sees the images (:func:`image_scores`: segdec decisions, classifier
probabilities, or a patch run's highest patch), the units a run's threshold decides (images, map cells,
patches), the per-group TPR/TNR/AP/AUROC tables at the stored and at the optimistic threshold
(:func:`evaluation_report`), the PR curves, and :func:`evaluate_run`, which writes ``eval_<split>.json`` and
``eval_<split>_pr.png`` into the run folder. Models are read by :func:`transfer.checkpoint.load_model`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from dataonomy.devices import resolve_device
from dataonomy.errors import DataonomyError
from dataonomy.io import atomic_path, json_safe, write_json
from dataonomy.progress import progress as show_progress
from transfer import metrics as M
from transfer.checkpoint import LoadedModel, load_model
from transfer.data import (
    PatchDataset,
    SeededTransform,
    check_overlap,
    run_fold,
    scaled_size,
    size_batches,
    training_overlap,
)
from transfer.stage_config import EvaluateConfig


def image_scores(
    loaded: LoadedModel, dataset, batch_size: int = 32, num_workers: int = 0, progress: bool | None = None
) -> np.ndarray:
    """Defect probabilities of every image of a defect set (PIL images), as the run's model sees them: segdec
    models' decision scores at native resolution, whole images resized to a classifier's input size, or (patch
    models) the highest score of the image's patches."""
    from torchvision.transforms import v2

    from dataonomy.datasets.base import image_size

    record, model, head = loaded.record, loaded.model, loaded.record.head_kind
    device = next(model.parameters()).device
    native, size = head.image_input == "native", record.input_size
    if native:
        # segdec runs see each image at its own size, or with its longer side at the size they were trained
        # with; batches hold images of one size (nothing padded or stretched to fit another).
        sizes = []
        for s in dataset.samples:
            width, height = image_size(s.path)
            sizes.append(scaled_size(height, width, size))
        resize = []  # per image, below
    else:
        sizes = [(0, 0)] * len(dataset)  # classifiers: every image resized to the input size, one batch shape
        resized = head.image_input == "resized" and size is not None
        resize = [v2.Resize((size, size), antialias=True)] if resized else []
    to_tensor = v2.Compose([v2.ToImage(), *resize])

    class _Tensors(torch.utils.data.Dataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            image, target = dataset[i]
            x = to_tensor(image)
            if native and tuple(x.shape[-2:]) != sizes[i]:
                x = v2.functional.resize(x, list(sizes[i]), antialias=True)
            return x, target

    batches = size_batches(sizes, 1 if head.image_input == "as_is" else batch_size)
    order = [i for batch in batches for i in batch]
    loader = DataLoader(_Tensors(), batch_sampler=batches, num_workers=num_workers)
    scores = []
    with torch.no_grad():
        for images, _ in show_progress(
            loader, desc="scoring", weights=[len(b) for b in batches], enabled=progress
        ):
            scores.append(head.score_images(loaded, loaded.normalize(images.to(device)), batch_size))
    out = np.empty(len(order), dtype=np.float64)
    out[order] = torch.cat(scores).cpu().numpy() if scores else []
    return out


OPTIMISTIC_NOTE = "optimistic: each class's threshold is chosen on the evaluated images themselves"


def evaluation_report(scores, labels, groups, threshold: float, criterion: str = "balanced_accuracy") -> dict:
    """Per-group (DAGM class, MVTec category/type, ...) classification tables at the stored threshold and at the best threshold.

    The stored threshold was chosen on validation data: its table is the honest one. The best-threshold table
    picks, per group, the threshold that maximises ``criterion`` on these very images, an upper bound reported
    separately (groups with one kind of image only keep the stored threshold).
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    groups = np.asarray(groups, dtype=object)
    best = {}
    for group in sorted(set(groups.tolist()), key=str):
        member = groups == group
        both = 0 < labels[member].sum() < member.sum()
        best[group] = (
            M.best_threshold(scores[member], labels[member], criterion) if both else float(threshold)
        )
    return {
        "stored_threshold": {
            "threshold": float(threshold),
            "rows": M.per_group_table(scores, labels, groups, float(threshold)),
        },
        "best_threshold": {
            "note": OPTIMISTIC_NOTE,
            "criterion": criterion,
            "thresholds": best,
            "rows": M.per_group_table(scores, labels, groups, best),
        },
    }


TABLE_COLUMNS = (
    "group",
    "n",
    "n_defective",
    "threshold",
    "tp",
    "fp",
    "tn",
    "fn",
    "tpr",
    "tnr",
    "accuracy",
    "ap",
    "auroc",
)


def plot_pr_curves(scores, labels, groups, threshold: float, path: Path, title: str) -> Path:
    """Precision-recall curve per group (and pooled), the stored threshold's operating point marked; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    scores, labels, groups = np.asarray(scores), np.asarray(labels), np.asarray(groups, dtype=object)
    names = sorted(set(groups.tolist()), key=str)
    sets = [(name, groups == name) for name in names]
    if len(names) > 1:
        sets.append(("all", np.ones(len(scores), dtype=bool)))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, member in sets:
        if labels[member].sum() == 0:
            continue
        precision, recall, _ = M.pr_curve(scores[member], labels[member])
        ap = M.average_precision(scores[member], labels[member])
        line = ax.step(
            np.r_[0, recall], np.r_[precision[0], precision], where="post", label=f"{name} (AP {ap:.3f})"
        )
        counts = M.confusion(scores[member], labels[member], threshold)
        if counts.tp + counts.fp:
            ax.plot(counts.tpr, counts.precision, "o", color=line[0].get_color())
    ax.set(xlabel="recall (TPR)", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02), title=title)
    ax.legend(loc="lower left", fontsize="small", title=f"o: threshold {threshold:.3g}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def evaluate_run(config: EvaluateConfig, device: str | None = None, num_workers: int = 0) -> dict:
    """Score a fold of a defect set with the fine-tuned run ``config.model`` and write ``eval_<split>.json``
    (holding the config too, for ``--config``) and ``eval_<split>_pr.png`` into the run folder; return the
    report (per-group tables, per-image predictions, file paths).

    With ``config.data`` left out (or the run's own set) the fold is the run's own seeded split; another set's
    ``test`` split is its own test split (its ``format`` defaults to the run's). ``skip_bad`` drops unreadable
    images and masks with a warning instead of failing. ``errors``: on the run's own set, also score its
    training and validation folds and report the error analysis (:func:`transfer.metrics.error_analysis`:
    error = 1 - accuracy at the stored threshold, per fold, with the gaps; ``human_error`` adds the avoidable
    bias).

    The evaluated images are matched by content against the images the run was trained and validated on (the
    hashes in ``best.pt``); the counts are reported as ``overlap``. A ``test`` fold holding any of them is
    refused (another copy of the set, whose own test split the run's ``--folds``/``--test-fraction`` trained
    on), or with ``allow_overlap`` scored with a warning.
    """
    run, split, batch_size, skip_bad = Path(config.model), config.split, config.batch_size, config.skip_bad
    loaded = load_model(run, resolve_device(device))
    if loaded.record.kind != "finetune":
        raise DataonomyError(f"--model {run}: a {loaded.record.kind} run; evaluate a fine-tuned run")
    request, config = config, loaded.config
    data = request.defect_data(default_format=config.format)
    unit = loaded.record.decision
    dataset = run_fold(config, split, data, skip_bad)
    overlap = training_overlap(loaded.record.seen_images, [s.path for s in dataset.samples])
    if split == "test":  # the other folds hold training images by design (error analysis scores them)
        where = f"--split test of {data.root if data is not None else config.data}"
        check_overlap(overlap, where, request.allow_overlap)
    decided = _decided(loaded, dataset, unit, batch_size, num_workers)
    image_groups = [s.group or s.label for s in dataset.samples]
    groups = [image_groups[i] for i in decided["image"]]
    scores, labels = decided["scores"], decided["labels"]
    report = evaluation_report(scores, labels, groups, loaded.threshold, config.threshold_criterion)
    same_set = data is None or config.defect_data().same_set(data)
    if request.errors and same_set and split in ("train", "val", "test"):
        folds = {split: (scores, labels)} | {
            other: _fold_scores(loaded, request, data, other, unit, num_workers)
            for other in ("train", "val")
            if other != split
        }
        report["error_analysis"] = _error_analysis(folds, loaded.threshold, request.human_error)
    run_dir = loaded.path.parent
    json_path, png_path = run_dir / f"eval_{split}.json", run_dir / f"eval_{split}_pr.png"
    title = f"{run_dir.name}: {split} split" + ("" if unit == "image" else f" ({unit}s)")
    plot_pr_curves(scores, labels, groups, loaded.threshold, png_path, title)
    report = {
        "model": str(loaded.path),
        "data": str(data.root if data is not None else config.data),
        "format": data.format if data is not None else config.format,
        "split": split,
        "unit": unit,
        "overlap": overlap,
        **report,
        "predictions": [
            {"path": str(s.path), "group": g, "defect": int(t), "score": float(v)}
            for s, g, t, v in zip(
                dataset.samples, image_groups, dataset.targets, decided["image_scores"], strict=True
            )
        ],
        "files": {"json": str(json_path), "pr_curve": str(png_path)},
        "config": request.to_dict(),
    }
    write_json(json_path, json_safe(report))
    return report


def _fold_scores(loaded: LoadedModel, request: EvaluateConfig, data, split: str, unit: str, num_workers: int):
    """Scores and labels of what the run's threshold decides over another fold of the evaluated set."""
    fold = run_fold(loaded.config, split, data, request.skip_bad)
    decided = _decided(loaded, fold, unit, request.batch_size, num_workers)
    return decided["scores"], decided["labels"]


def _error_analysis(folds: dict, threshold: float, human_error: float | None) -> dict:
    """:func:`transfer.metrics.error_analysis` of each fold's (scores, labels) at the stored threshold."""
    errors = {split: _error(scores, labels, threshold) for split, (scores, labels) in folds.items()}
    return M.error_analysis(errors, human_error)


def _decided(loaded: LoadedModel, dataset, unit: str, batch_size: int, num_workers: int) -> dict:
    """Scores and labels of what the run's threshold decides (images, map cells or patches) over ``dataset``,
    each with its image's index, and every image's own score."""
    if unit == "cell":
        from transfer.heads.segdec import map_cells

        return map_cells(loaded, dataset, batch_size, num_workers)
    scores = image_scores(loaded, dataset, batch_size, num_workers)
    if unit == "patch":
        return {**patch_scores(loaded, dataset, batch_size, num_workers), "image_scores": scores}
    index = np.arange(len(dataset))
    return {"scores": scores, "labels": np.asarray(dataset.targets), "image": index, "image_scores": scores}


def patch_scores(loaded: LoadedModel, dataset, batch_size: int = 256, num_workers: int = 0) -> dict:
    """Defect probabilities and labels of a patch run's training patches (the fine-tuning's own patch rule) over
    ``dataset``, with each patch's image index."""
    record, head = loaded.record, loaded.record.head_kind
    patches = PatchDataset(
        dataset, record.patch_size, record.patch_stride, loaded.config.patch.patch_defect_fraction
    )
    loader = DataLoader(
        SeededTransform(patches, loaded.transforms(), 0), batch_size=batch_size, num_workers=num_workers
    )
    device = next(loaded.model.parameters()).device
    scores = []
    with torch.no_grad():
        for x, _ in loader:
            scores.append(head.defect_probability(loaded.model(x.to(device))).cpu())
    return {
        "scores": torch.cat(scores).double().numpy(),
        "labels": np.asarray(patches.targets),
        "image": np.array([i for i, _, _ in patches.patches], dtype=np.int64),
    }


def _error(scores, labels, threshold: float) -> float:
    """Share of images misclassified at ``threshold`` (1 - accuracy)."""
    return 1.0 - M.confusion(scores, labels, threshold).accuracy


__all__ = [
    "OPTIMISTIC_NOTE",
    "TABLE_COLUMNS",
    "evaluate_run",
    "evaluation_report",
    "image_scores",
    "patch_scores",
    "plot_pr_curves",
]
