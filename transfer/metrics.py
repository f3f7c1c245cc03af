"""Evaluation metrics: image-level classification (METHOD.md section 6) and pixel-level localisation (section 7).

Classification
    Scores are defect probabilities (higher = more likely defective), labels are 1 for a defective image and 0
    for a clean one. An image is predicted defective when ``score >= threshold``. TPR = TP/(TP+FN) and
    TNR = TN/(TN+FP) are the Dataonomy paper's Table 1 columns; AP and AUROC are threshold-free. The decision
    threshold is chosen on validation data with :func:`best_threshold`, never on the test set.

Localisation
    Predictions and masks are boolean pixel maps, one per image (anything non-zero counts as True, so DAGM's
    0/255 masks can be passed as read). Ratios whose denominator is zero follow one rule, stated once here and
    used everywhere in this module:

        a 0/0 ratio is 1 when prediction and mask agree that there is nothing (both empty), and 0 otherwise.

    So on a clean image an empty prediction scores precision = recall = F1 = IoU = 1; a prediction that marks
    pixels on a clean image scores recall 0 (and precision 0, IoU 0); an empty prediction on a defective image
    scores precision 0 (and recall 0, IoU 0).

Undefined classification rates (TPR with no defective images, TNR with no clean ones, AP/AUROC with a single
class present) are NaN, because there is no convention that would not mislead a results table.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage, stats

from dataonomy.errors import DataonomyError

# 8-connectivity: a defect drawn with diagonal steps is still one defect.
_EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)


# --------------------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------------------


def _scores_and_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels_in = np.asarray(labels).ravel()
    if scores.shape != labels_in.shape:
        raise DataonomyError(f"scores and labels differ in length ({scores.size} vs {labels_in.size})")
    if scores.size == 0:
        raise DataonomyError("scores: no images to evaluate")
    if not np.all(np.isfinite(scores)):
        raise DataonomyError("scores: contains NaN or infinite values")
    if not np.all(np.isin(labels_in, (0, 1))):
        raise DataonomyError("labels: must be 0 (clean) or 1 (defective)")
    return scores, labels_in.astype(bool)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else float("nan")


@dataclass(frozen=True)
class Confusion:
    """Confusion counts at one threshold, with the rates derived from them (NaN where undefined)."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def tpr(self) -> float:
        """TP / (TP + FN): the fraction of defective images found (recall, sensitivity)."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def tnr(self) -> float:
        """TN / (TN + FP): the fraction of clean images passed (specificity)."""
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.n)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def balanced_accuracy(self) -> float:
        return (self.tpr + self.tnr) / 2


def confusion(scores, labels, threshold: float) -> Confusion:
    """Confusion counts when an image is called defective if ``score >= threshold``."""
    scores, labels = _scores_and_labels(scores, labels)
    predicted = scores >= threshold
    return Confusion(
        tp=int(np.sum(predicted & labels)),
        fp=int(np.sum(predicted & ~labels)),
        tn=int(np.sum(~predicted & ~labels)),
        fn=int(np.sum(~predicted & labels)),
    )


def _cumulative_counts(scores: np.ndarray, labels: np.ndarray):
    """Distinct scores in decreasing order, and TP/FP counts when predicting ``score >= that value``."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    # The last index of each run of tied scores: a threshold cannot split ties.
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    tp = np.cumsum(sorted_labels)[last_of_run]
    fp = (last_of_run + 1) - tp
    return sorted_scores[last_of_run], tp, fp


def pr_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall points ``(precision, recall, thresholds)``, one per distinct score, decreasing threshold.

    Point i is the operating point of ``score >= thresholds[i]``. Precision is always defined (at least one image
    scores at or above each threshold); recall is NaN when there are no defective images.
    """
    scores, labels = _scores_and_labels(scores, labels)
    thresholds, tp, fp = _cumulative_counts(scores, labels)
    n_pos = labels.sum()
    recall = tp / n_pos if n_pos else np.full(tp.shape, np.nan)
    return tp / (tp + fp), recall, thresholds


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)`` starting at (0, 0) with threshold +inf, then one per distinct score."""
    scores, labels = _scores_and_labels(scores, labels)
    thresholds, tp, fp = _cumulative_counts(scores, labels)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    tpr = np.r_[0, tp] / n_pos if n_pos else np.full(tp.size + 1, np.nan)
    fpr = np.r_[0, fp] / n_neg if n_neg else np.full(tp.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, thresholds]


def average_precision(scores, labels) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over the PR points (the step-wise sum, no interpolation); NaN if no defects."""
    precision, recall, _ = pr_curve(scores, labels)
    if np.isnan(recall).any():
        return float("nan")
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def auroc(scores, labels) -> float:
    """Area under the ROC curve = P(score of a defective image > score of a clean one), ties counting 1/2.

    Computed as the Mann-Whitney U statistic divided by n_defective * n_clean; NaN when one class is absent.
    """
    scores, labels = _scores_and_labels(scores, labels)
    positives, negatives = scores[labels], scores[~labels]
    if positives.size == 0 or negatives.size == 0:
        return float("nan")
    u = stats.mannwhitneyu(positives, negatives, alternative="two-sided").statistic
    return float(u) / (positives.size * negatives.size)


def binned_ap_auroc(positives, negatives) -> tuple[float, float]:
    """(AP, AUROC) from counts of defective and of clean examples per score bin (bins in increasing score order),
    for more examples than fit in memory as scores: every pixel of a set of defect maps. Operating points are
    the bins' lower edges; examples in one bin tie (AUROC counts them 1/2, as :func:`auroc` does ties). NaN where
    one class is absent."""
    pos, neg = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan"), float("nan")
    tp, fp = np.cumsum(pos[::-1]), np.cumsum(neg[::-1])  # predicting "defect" from the top bin down
    kept = (tp + fp) > 0
    precision, recall = tp[kept] / (tp[kept] + fp[kept]), tp[kept] / n_pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    above = np.r_[0.0, tp[:-1]]  # defective examples in higher bins than each (reversed) bin
    auroc_value = float(np.sum(neg[::-1] * (above + 0.5 * pos[::-1])) / (n_pos * n_neg))
    return ap, auroc_value


THRESHOLD_CRITERIA = ("balanced_accuracy", "f1")


def best_threshold(scores, labels, criterion: str = "balanced_accuracy") -> float:
    """The decision threshold that maximises ``criterion`` on (validation) scores and labels.

    ``balanced_accuracy`` = (TPR + TNR) / 2 is the default: DAGM is imbalanced (about 1 defective image in 8) and
    the paper reports TPR and TNR side by side, so both count equally. ``f1`` is the alternative.

    Candidates are the distinct scores. Among equally good candidates the highest threshold wins (fewest false
    alarms). The returned value is the midpoint between the chosen score and the next lower distinct score, so it
    makes exactly the same calls on the validation set without sitting on a validation sample; when the lowest
    score is chosen it is returned as is.
    """
    if criterion not in THRESHOLD_CRITERIA:
        raise DataonomyError(
            f"--threshold-criterion: unknown '{criterion}', expected one of {THRESHOLD_CRITERIA}"
        )
    scores, labels = _scores_and_labels(scores, labels)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataonomyError("validation labels: need both defective and clean images to choose a threshold")
    thresholds, tp, fp = _cumulative_counts(scores, labels)
    if criterion == "balanced_accuracy":
        value = (tp / n_pos + (n_neg - fp) / n_neg) / 2
    else:
        value = 2 * tp / (tp + fp + n_pos)  # 2TP / (2TP + FP + FN) with FN = n_pos - TP
    best = int(np.argmax(value))  # first maximum = highest threshold
    if best + 1 < thresholds.size:
        return float((thresholds[best] + thresholds[best + 1]) / 2)
    return float(thresholds[best])


def classification_report(scores, labels, threshold: float) -> dict:
    """Counts and rates at ``threshold`` plus the threshold-free AP and AUROC, as one flat dict."""
    counts = confusion(scores, labels, threshold)
    return {
        "n": counts.n,
        "n_defective": counts.tp + counts.fn,
        "threshold": float(threshold),
        **asdict(counts),
        "tpr": counts.tpr,
        "tnr": counts.tnr,
        "accuracy": counts.accuracy,
        "balanced_accuracy": counts.balanced_accuracy,
        "precision": counts.precision,
        "f1": counts.f1,
        "ap": average_precision(scores, labels),
        "auroc": auroc(scores, labels),
    }


def per_group_table(
    scores,
    labels,
    groups: Sequence[Hashable],
    threshold: float | Mapping[Hashable, float],
    overall: str | None = "all",
) -> list[dict]:
    """One :func:`classification_report` row per group (e.g. per DAGM class), sorted by group name.

    ``threshold`` is one value for all groups or a mapping group -> threshold (one classifier per DAGM class, as in
    the paper, each with its own validation threshold). When ``overall`` is a name and there is more than one
    group, a last row of that name pools all images, each judged at its own group's threshold.
    """
    scores, labels = _scores_and_labels(scores, labels)
    groups = np.asarray(groups, dtype=object).ravel()
    if groups.shape != scores.shape:
        raise DataonomyError(f"groups and scores differ in length ({groups.size} vs {scores.size})")
    names = sorted(set(groups.tolist()), key=str)
    if isinstance(threshold, Mapping):
        missing = [g for g in names if g not in threshold]
        if missing:
            raise DataonomyError(f"thresholds: no threshold for group(s) {missing}")
        thresholds = {g: float(threshold[g]) for g in names}
    else:
        thresholds = dict.fromkeys(names, float(threshold))
    rows = []
    for name in names:
        member = groups == name
        rows.append(
            {"group": name, **classification_report(scores[member], labels[member], thresholds[name])}
        )
    if overall is not None and len(names) > 1:
        # Judging each image at its own group's threshold is the same as shifting its score by that threshold.
        per_image_threshold = np.array([thresholds[g] for g in groups])
        row = classification_report(scores - per_image_threshold, labels, 0.0)
        row["threshold"] = float("nan") if isinstance(threshold, Mapping) else float(threshold)
        # AP and AUROC pool the raw scores (they are threshold-free).
        row["ap"], row["auroc"] = average_precision(scores, labels), auroc(scores, labels)
        rows.append({"group": overall, **row})
    return rows


def error_analysis(errors: Mapping[str, float], human_error: float | None = None) -> dict:
    """Errors of one model on its training, validation and test images side by side, with the gaps between them
    (the bias/variance reading of the reed-straw inspection paper, after Ng): a large training error is bias,
    a large train-to-validation gap is variance (overfitting), a large validation-to-test gap is a mismatch
    between those folds. ``errors`` maps ``train``, ``val`` and ``test`` (any present) to an error rate;
    ``human_error`` (a person's error on the task, or the best known) gives the avoidable bias, training error
    minus it."""
    out = {f"{k}_error": float(errors[k]) for k in ("train", "val", "test") if k in errors}
    if "train" in errors and "val" in errors:
        out["train_val_gap"] = float(errors["val"] - errors["train"])
    if "val" in errors and "test" in errors:
        out["val_test_gap"] = float(errors["test"] - errors["val"])
    if human_error is not None:
        if not 0 <= human_error <= 1:
            raise DataonomyError(f"--human-error {human_error}: must be an error rate in [0, 1]")
        out["human_error"] = float(human_error)
        if "train" in errors:
            out["avoidable_bias"] = float(errors["train"] - human_error)
    return out


def format_table(rows: Sequence[Mapping], columns: Sequence[str], digits: int = 3) -> str:
    """Plain-text table of ``rows`` (dicts) for a terminal: one header line, one line per row."""

    def cell(value) -> str:
        if isinstance(value, float | np.floating):
            return "nan" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    body = [[cell(row.get(col, "")) for col in columns] for row in rows]
    widths = [
        max(len(col), *(len(line[i]) for line in body)) if body else len(col) for i, col in enumerate(columns)
    ]
    lines = ["  ".join(col.rjust(w) for col, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in body]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Localisation
# --------------------------------------------------------------------------------------------------------------


def _pair(pred, mask) -> tuple[np.ndarray, np.ndarray]:
    pred, mask = np.asarray(pred) != 0, np.asarray(mask) != 0
    if pred.shape != mask.shape:
        raise DataonomyError(f"prediction and mask differ in shape ({pred.shape} vs {mask.shape})")
    return pred, mask


def _agreeing_ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    """numerator/denominator, with 0/0 -> 1 when prediction and mask are both empty, else 0 (module rule)."""
    if denominator:
        return numerator / denominator
    return 1.0 if both_empty else 0.0


@dataclass(frozen=True)
class PixelCounts:
    """Pixel confusion counts of a prediction against a mask (one image or pooled over images)."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def _both_empty(self) -> bool:
        return self.tp + self.fp + self.fn == 0

    @property
    def precision(self) -> float:
        return _agreeing_ratio(self.tp, self.tp + self.fp, self._both_empty)

    @property
    def recall(self) -> float:
        return _agreeing_ratio(self.tp, self.tp + self.fn, self._both_empty)

    @property
    def f1(self) -> float:
        return _agreeing_ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, self._both_empty)

    @property
    def iou(self) -> float:
        return _agreeing_ratio(self.tp, self.tp + self.fp + self.fn, self._both_empty)

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)


def pixel_counts(pred, mask) -> PixelCounts:
    """Pixel TP/FP/FN/TN of a binary prediction against a binary mask of the same shape (any shape)."""
    pred, mask = _pair(pred, mask)
    tp = int(np.count_nonzero(pred & mask))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(mask)) - tp
    return PixelCounts(tp=tp, fp=fp, fn=fn, tn=pred.size - tp - fp - fn)


def iou(pred, mask) -> float:
    """Intersection over union of one prediction and its mask (1 when both are empty, see the module rule)."""
    return pixel_counts(pred, mask).iou


def mean_iou(preds, masks) -> float:
    """Mean over images of the per-image IoU; ``preds`` and ``masks`` are sequences or (N, H, W) stacks."""
    if len(preds) != len(masks):
        raise DataonomyError(f"predictions and masks differ in number ({len(preds)} vs {len(masks)})")
    if len(preds) == 0:
        raise DataonomyError("masks: no images to evaluate")
    return float(np.mean([iou(p, m) for p, m in zip(preds, masks, strict=True)]))


def he_liu_ar(ious) -> float:
    """AR of He & Liu (2020): ``2/n * sum_i max(IoU_i - 0.5, 0)``, 0 (no overlap) .. 1 (every IoU = 1).

    The sum runs over ground-truth defects: pass one IoU per defect (:func:`defect_ious`, a connected component
    of a mask), not one per image, so that an image with one defect found and one missed scores 0.5, not 0.
    A defect counts only by how far its IoU exceeds 0.5; n is the number of IoUs passed.
    """
    ious = np.asarray(ious, dtype=np.float64).ravel()
    if ious.size == 0:
        raise DataonomyError("AR: no IoU values (no defective images?)")
    return float(2.0 / ious.size * np.sum(np.maximum(ious - 0.5, 0.0)))


@dataclass(frozen=True)
class Detection:
    """Per-defect detection on one image (or summed over images).

    ``n_defects``: connected components of the mask; ``n_detected``: those matched at IoU >= the threshold;
    ``n_predicted``: connected components of the prediction; ``n_false``: predicted components touching no defect.
    """

    n_defects: int
    n_detected: int
    n_predicted: int
    n_false: int

    def __add__(self, other: Detection) -> Detection:
        return Detection(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True)))


def _defect_overlaps(pred, mask, what: str) -> tuple[np.ndarray, int, int, np.ndarray]:
    """(IoU per defect, n_defects, n_predicted, which predicted components touch no defect)."""
    pred, mask = _pair(pred, mask)
    if pred.ndim != 2:
        raise DataonomyError(f"{what}: expected one 2-D image, got shape {pred.shape}")
    mask_labels, n_defects = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    pred_labels, n_predicted = ndimage.label(pred, structure=_EIGHT_CONNECTED)
    # overlap[g, j]: pixels shared by defect g and predicted component j (row/column 0: background).
    overlap = np.bincount(
        (mask_labels.astype(np.int64) * (n_predicted + 1) + pred_labels).ravel(),
        minlength=(n_defects + 1) * (n_predicted + 1),
    ).reshape(n_defects + 1, n_predicted + 1)
    defect_area, pred_area = overlap.sum(axis=1)[1:], overlap.sum(axis=0)[1:]
    touching = overlap[1:, 1:] > 0  # (defects, predicted components)
    intersection = overlap[1:, 1:].sum(axis=1)
    union = defect_area + touching @ pred_area - intersection
    ious = intersection / np.maximum(union, 1)
    return ious.astype(np.float64), n_defects, n_predicted, ~touching.any(axis=0)


def defect_ious(pred, mask) -> np.ndarray:
    """One IoU per defect of a 2-D mask (its 8-connected components, in label order), each against the union of
    the predicted components that overlap it (see :func:`detect_defects`); empty for a clean mask."""
    return _defect_overlaps(pred, mask, "defect_ious")[0]


def detect_defects(pred, mask, iou_threshold: float = 0.5) -> Detection:
    """Match the mask's defects (8-connected components) against a 2-D binary prediction.

    A defect's IoU is taken against the union of the predicted components that overlap it: a defect split into
    several predicted blobs is judged as a whole, and a predicted blob that spills far beyond the defect lowers
    its IoU. The defect is detected when that IoU >= ``iou_threshold``.
    """
    ious, n_defects, n_predicted, untouched = _defect_overlaps(pred, mask, "detect_defects")
    detected = int(np.sum(ious >= iou_threshold))
    n_false = int(np.sum(untouched))
    return Detection(n_defects=n_defects, n_detected=detected, n_predicted=n_predicted, n_false=n_false)


@dataclass(frozen=True)
class TolerantCounts:
    """Pixel matches within a distance, the crack benchmarks' rule (Shi et al. 2016, CrackForest; a 1-3 px crack
    drawn one pixel off is found, which plain pixel counts call a miss and a false alarm).

    ``matched_pred``: predicted pixels within the tolerance of a defect pixel, of ``pred``; ``matched_true``:
    defect pixels within the tolerance of a predicted pixel, of ``true``; ``n_defects`` / ``n_detected``:
    defects (8-connected components of the mask) with at least half their pixels matched.
    """

    matched_pred: int
    pred: int
    matched_true: int
    true: int
    n_defects: int
    n_detected: int

    @property
    def precision(self) -> float:
        return _agreeing_ratio(self.matched_pred, self.pred, self.pred + self.true == 0)

    @property
    def recall(self) -> float:
        return _agreeing_ratio(self.matched_true, self.true, self.pred + self.true == 0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    def __add__(self, other: TolerantCounts) -> TolerantCounts:
        return TolerantCounts(
            *(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True))
        )


def tolerant_counts(pred, mask, tolerance: float) -> TolerantCounts:
    """:class:`TolerantCounts` of a 2-D prediction against its mask, distances Euclidean in pixels (a pixel is
    within ``tolerance`` of a set when its distance to the nearest pixel of the set is at most ``tolerance``)."""
    pred, mask = _pair(pred, mask)
    if tolerance < 0:
        raise DataonomyError(f"--tolerance {tolerance}: must not be negative")

    def near(target: np.ndarray) -> np.ndarray:  # pixels within the tolerance of ``target``
        if not target.any():
            return np.zeros_like(target)
        return ndimage.distance_transform_edt(~target) <= tolerance

    near_true, near_pred = near(mask), near(pred)
    found = mask & near_pred
    labels, n_defects = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if n_defects:
        index = np.arange(1, n_defects + 1)
        share = ndimage.mean(found, labels, index)
        n_detected = int(np.sum(np.asarray(share) >= 0.5))
    else:
        n_detected = 0
    return TolerantCounts(
        matched_pred=int(np.count_nonzero(pred & near_true)),
        pred=int(np.count_nonzero(pred)),
        matched_true=int(np.count_nonzero(found)),
        true=int(np.count_nonzero(mask)),
        n_defects=n_defects,
        n_detected=n_detected,
    )


def localization_report(preds, masks, iou_threshold: float = 0.5, tolerance: float | None = None) -> dict:
    """All localisation numbers for a set of images (binary predictions vs masks), as one flat dict.

    - ``precision``, ``recall``, ``f1``, ``iou``: from pixel counts pooled over all images (micro average);
    - ``mean_iou``: mean of per-image IoUs over all images (clean images count, an empty prediction scoring 1);
    - ``mean_iou_defective``: mean of per-image IoUs over the images whose mask is not empty (NaN if none);
    - ``ar`` (He & Liu): over every ground-truth defect (a connected component of a mask, its IoU as in
      :func:`detect_defects`), NaN without any;
    - ``n_defects``, ``n_detected``, ``detection_rate``: per-defect detection at ``iou_threshold``;
    - ``n_false_components``: predicted blobs touching no defect; ``false_alarm_images``: clean images with any
      predicted pixel;
    - with ``tolerance`` (pixels): ``tolerant_precision``/``recall``/``f1`` pooled over all images and
      ``n_detected_tolerant``/``detection_rate_tolerant`` (:class:`TolerantCounts`), as crack benchmarks score.
    """
    if len(preds) != len(masks):
        raise DataonomyError(f"predictions and masks differ in number ({len(preds)} vs {len(masks)})")
    if len(preds) == 0:
        raise DataonomyError("masks: no images to evaluate")
    total = PixelCounts(0, 0, 0, 0)
    detection = Detection(0, 0, 0, 0)
    ious, defective, per_defect, false_alarms = [], [], [], 0
    tolerant = TolerantCounts(0, 0, 0, 0, 0, 0)
    for pred, mask in zip(preds, masks, strict=True):
        if tolerance is not None:
            tolerant += tolerant_counts(pred, mask, tolerance)
        counts = pixel_counts(pred, mask)
        total += counts
        ious.append(counts.iou)
        has_defect = counts.tp + counts.fn > 0
        defective.append(has_defect)
        false_alarms += int(not has_defect and counts.fp > 0)
        found, n_defects, n_predicted, untouched = _defect_overlaps(pred, mask, "localization_report")
        per_defect.append(found)
        detection += Detection(
            n_defects, int(np.sum(found >= iou_threshold)), n_predicted, int(np.sum(untouched))
        )
    ious, defective, per_defect = np.asarray(ious), np.asarray(defective), np.concatenate(per_defect)
    extra = {}
    if tolerance is not None:
        extra = {
            "tolerance": tolerance,
            "tolerant_precision": tolerant.precision,
            "tolerant_recall": tolerant.recall,
            "tolerant_f1": tolerant.f1,
            "n_detected_tolerant": tolerant.n_detected,
            "detection_rate_tolerant": _ratio(tolerant.n_detected, tolerant.n_defects),
        }
    return {
        "n_images": len(ious),
        "n_defective_images": int(defective.sum()),
        "precision": total.precision,
        "recall": total.recall,
        "f1": total.f1,
        "iou": total.iou,
        "mean_iou": float(ious.mean()),
        "mean_iou_defective": float(ious[defective].mean()) if defective.any() else float("nan"),
        "ar": he_liu_ar(per_defect) if per_defect.size else float("nan"),
        "n_defects": detection.n_defects,
        "n_detected": detection.n_detected,
        "detection_rate": _ratio(detection.n_detected, detection.n_defects),
        "n_false_components": detection.n_false,
        "false_alarm_images": false_alarms,
        **extra,
    }
