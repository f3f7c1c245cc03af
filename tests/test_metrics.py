"""Metrics against hand-computed values, and on real DAGM masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from dataonomy.errors import DataonomyError
from transfer import metrics

# Ten images, hand-checked: at threshold 0.5 the first five are called defective.
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.2, 0.1, 0.05])
LABELS = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0])


def test_confusion_matrix_hand_checked():
    counts = metrics.confusion(SCORES, LABELS, 0.5)
    assert (counts.tp, counts.fp, counts.tn, counts.fn) == (3, 2, 4, 1)
    assert counts.tpr == pytest.approx(3 / 4)
    assert counts.tnr == pytest.approx(4 / 6)
    assert counts.accuracy == pytest.approx(7 / 10)
    assert counts.precision == pytest.approx(3 / 5)
    assert counts.f1 == pytest.approx(6 / 9)
    # A score equal to the threshold counts as defective.
    assert metrics.confusion(SCORES, LABELS, 0.6).tp == 3


def test_average_precision_and_auroc_hand_checked():
    # Positives at ranks 1, 2, 4, 7: precisions 1, 1, 3/4, 4/7.
    assert metrics.average_precision(SCORES, LABELS) == pytest.approx((1 + 1 + 0.75 + 4 / 7) / 4)
    # Clean images below each defective one: 6, 6, 5, 3 of 6 -> 20 of 24 pairs.
    assert metrics.auroc(SCORES, LABELS) == pytest.approx(20 / 24)
    fpr, tpr, thresholds = metrics.roc_curve(SCORES, LABELS)
    assert np.trapezoid(tpr, fpr) == pytest.approx(20 / 24)
    assert thresholds[0] == np.inf and (fpr[0], tpr[0]) == (0, 0) and (fpr[-1], tpr[-1]) == (1, 1)


def test_ties_count_half_and_cannot_be_split():
    scores, labels = [0.5, 0.5, 0.2], [1, 0, 0]
    assert metrics.auroc(scores, labels) == pytest.approx(0.75)
    precision, recall, thresholds = metrics.pr_curve(scores, labels)
    np.testing.assert_allclose(thresholds, [0.5, 0.2])
    np.testing.assert_allclose(precision, [0.5, 1 / 3])
    np.testing.assert_allclose(recall, [1, 1])
    assert metrics.average_precision(scores, labels) == pytest.approx(0.5)


def test_undefined_rates_are_nan():
    counts = metrics.confusion([0.1, 0.2], [0, 0], 0.5)
    assert np.isnan(counts.tpr) and counts.tnr == 1.0
    assert np.isnan(metrics.auroc([0.1, 0.2], [0, 0]))
    assert np.isnan(metrics.average_precision([0.1, 0.2], [0, 0]))


def test_best_threshold_by_criterion():
    # Balanced accuracy peaks at score 0.6 (TPR 3/4, TNR 5/6); the threshold sits between 0.6 and 0.55.
    assert metrics.best_threshold(SCORES, LABELS) == pytest.approx(0.575)
    scores, labels = [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]
    # Balanced accuracy ties (0.75) at 0.9 and 0.7: the higher threshold wins.
    assert metrics.best_threshold(scores, labels, "balanced_accuracy") == pytest.approx(0.85)
    # F1: 2/3 at 0.9, 1/2 at 0.8, 4/5 at 0.7, 2/3 at 0.6.
    threshold = metrics.best_threshold(scores, labels, "f1")
    assert threshold == pytest.approx(0.65)
    assert metrics.confusion(scores, labels, threshold).f1 == pytest.approx(0.8)


def test_best_threshold_errors():
    with pytest.raises(DataonomyError, match="both defective and clean"):
        metrics.best_threshold([0.1, 0.9], [1, 1])
    with pytest.raises(DataonomyError, match="threshold-criterion"):
        metrics.best_threshold(SCORES, LABELS, "youden")
    with pytest.raises(DataonomyError, match="labels"):
        metrics.confusion([0.1, 0.9], [0, 2], 0.5)
    with pytest.raises(DataonomyError, match="differ in length"):
        metrics.confusion([0.1, 0.9], [0], 0.5)


def test_per_group_table_with_per_class_thresholds():
    groups = ["Class1"] * 5 + ["Class2"] * 5
    rows = metrics.per_group_table(SCORES, LABELS, groups, {"Class1": 0.75, "Class2": 0.25})
    assert [r["group"] for r in rows] == ["Class1", "Class2", "all"]
    first, second, overall = rows
    # Class1 (0.9 .. 0.55, labels 1 1 0 1 0) at 0.75: TP 2, FN 1, TN 2.
    assert (first["tp"], first["fp"], first["tn"], first["fn"]) == (2, 0, 2, 1)
    # Class2 (0.4 .. 0.05, labels 0 1 0 0 0) at 0.25: TP 1 (0.3), FP 1 (0.4).
    assert (second["tp"], second["fp"], second["tn"], second["fn"]) == (1, 1, 3, 0)
    for key in ("tp", "fp", "tn", "fn"):
        assert overall[key] == first[key] + second[key]
    assert overall["auroc"] == pytest.approx(20 / 24)
    # Class1's defective images rank 1, 2 and 4: AP = (1 + 1 + 3/4) / 3.
    assert first["ap"] == pytest.approx(2.75 / 3)
    text = metrics.format_table(rows, ["group", "n", "tpr", "tnr", "ap"])
    assert text.splitlines()[1].split() == ["Class1", "5", "0.667", "1.000", "0.917"]


def test_pixel_metrics_hand_checked():
    mask = np.zeros((4, 4), bool)
    mask[0:2, 0:2] = True
    pred = np.zeros((4, 4), bool)
    pred[0:2, 1:3] = True
    counts = metrics.pixel_counts(pred, mask)
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (2, 2, 2, 10)
    assert (counts.precision, counts.recall, counts.f1) == (0.5, 0.5, 0.5)
    assert counts.iou == pytest.approx(1 / 3)
    # DAGM masks are 0/255: any non-zero pixel is defect.
    assert metrics.iou(pred.astype(np.uint8) * 255, mask) == pytest.approx(1 / 3)


def test_pixel_metric_edge_cases():
    empty, some = np.zeros((3, 3), bool), np.eye(3, dtype=bool)
    both_empty = metrics.pixel_counts(empty, empty)
    assert (both_empty.precision, both_empty.recall, both_empty.f1, both_empty.iou) == (1, 1, 1, 1)
    missed = metrics.pixel_counts(empty, some)
    assert (missed.precision, missed.recall, missed.f1, missed.iou) == (0, 0, 0, 0)
    false_alarm = metrics.pixel_counts(some, empty)
    assert (false_alarm.precision, false_alarm.recall, false_alarm.f1, false_alarm.iou) == (0, 0, 0, 0)
    assert metrics.mean_iou([empty, some, empty], [empty, some, some]) == pytest.approx(2 / 3)
    with pytest.raises(DataonomyError, match="differ in shape"):
        metrics.iou(np.zeros((2, 2)), np.zeros((3, 3)))


def test_he_liu_ar():
    assert metrics.he_liu_ar([0.9, 0.5, 0.2, 1.0]) == pytest.approx(2 / 4 * (0.4 + 0.5))
    assert metrics.he_liu_ar([1.0, 1.0]) == 1.0
    assert metrics.he_liu_ar([0.3]) == 0.0


def test_detection_hand_checked():
    mask = np.zeros((8, 8), bool)
    mask[0:2, 0:2] = True  # defect A, 4 px
    mask[5:7, 5:8] = True  # defect B, 6 px
    pred = np.zeros((8, 8), bool)
    pred[0:2, 0:2] = True
    pred[2, 0] = True  # A plus one pixel: IoU 4/5
    pred[5, 5:7] = True  # 2 of B's 6 pixels: IoU 1/3
    pred[0, 6] = True  # a blob touching no defect
    assert metrics.detect_defects(pred, mask) == metrics.Detection(
        n_defects=2, n_detected=1, n_predicted=3, n_false=1
    )
    assert metrics.detect_defects(pred, mask, iou_threshold=0.3).n_detected == 2


def test_detection_judges_split_predictions_together_and_diagonals_as_one():
    mask = np.zeros((8, 8), bool)
    mask[5, 1:7] = True
    pred = np.zeros((8, 8), bool)
    pred[5, 1:3] = True
    pred[5, 4:7] = True  # two blobs covering 5 of 6 pixels: IoU 5/6 as a whole
    assert metrics.detect_defects(pred, mask) == metrics.Detection(1, 1, 2, 0)
    diagonal = np.eye(5, dtype=bool)
    assert metrics.detect_defects(diagonal, diagonal) == metrics.Detection(1, 1, 1, 0)
    assert metrics.detect_defects(np.zeros((5, 5)), np.zeros((5, 5))) == metrics.Detection(0, 0, 0, 0)


def _dagm_masks(folder, count):
    masks = []
    for line in (folder / "Label" / "Labels.txt").read_text().splitlines()[1:]:
        fields = line.split()
        masks.append(np.zeros((512, 512), bool) if fields[1] == "0" else None)
        if fields[1] == "1":
            masks[-1] = np.asarray(Image.open(folder / "Label" / fields[4])) > 0
        if len(masks) == count:
            return masks
    return masks


def test_localization_report_on_dagm_masks(dagm_class1_test):
    masks = _dagm_masks(dagm_class1_test, 40)
    defective = [m.any() for m in masks]
    assert 0 < sum(defective) < len(masks)

    perfect = metrics.localization_report(masks, masks)
    assert perfect["iou"] == perfect["mean_iou"] == perfect["ar"] == perfect["detection_rate"] == 1.0
    assert perfect["n_defects"] == sum(defective) and perfect["false_alarm_images"] == 0

    nothing = metrics.localization_report([np.zeros_like(m) for m in masks], masks)
    assert nothing["recall"] == 0 and nothing["n_detected"] == 0 and nothing["ar"] == 0
    assert nothing["mean_iou"] == pytest.approx(1 - sum(defective) / len(masks))

    # Dilating by 5 pixels: IoU per image = |mask| / |dilated mask|, checked independently.
    grown = [ndimage.binary_dilation(m, iterations=5) for m in masks]
    report = metrics.localization_report(grown, masks)
    expected = [m.sum() / g.sum() for m, g in zip(masks, grown, strict=True) if m.any()]
    assert report["mean_iou_defective"] == pytest.approx(np.mean(expected))
    assert report["recall"] == 1.0 and report["precision"] < 1.0
    assert report["n_detected"] == sum(e >= 0.5 for e in expected)


def test_a_one_pixel_crack_traced_one_pixel_off_is_found_with_a_tolerance():
    """Thin defects: a 1-px crack drawn one pixel beside the truth scores 0 by plain pixel counts and IoU, and
    1 with crack benchmarks' 2-pixel tolerance; a prediction far away stays wrong with the tolerance."""
    mask = np.zeros((64, 64), bool)
    rows = np.arange(5, 60)
    mask[rows, rows] = True  # a diagonal crack, one pixel wide
    beside = np.zeros_like(mask)
    beside[rows, np.minimum(rows + 1, 63)] = True
    far = np.zeros_like(mask)
    far[rows, np.minimum(rows + 8, 63)] = True

    assert metrics.pixel_counts(beside, mask).f1 == 0.0 and metrics.iou(beside, mask) == 0.0
    assert metrics.detect_defects(beside, mask).n_detected == 0
    near = metrics.tolerant_counts(beside, mask, 2)
    assert near.precision == near.recall == near.f1 == 1.0
    assert (near.n_defects, near.n_detected) == (1, 1)
    off = metrics.tolerant_counts(far, mask, 2)
    assert off.f1 == 0.0 and off.n_detected == 0
    # Tolerance 0 is the plain rule.
    assert metrics.tolerant_counts(beside, mask, 0).f1 == metrics.pixel_counts(beside, mask).f1
    # Half the crack drawn: recall about 1/2, precision 1, the defect found (half its pixels are near).
    half = beside.copy()
    half[32:] = False
    partial = metrics.tolerant_counts(half, mask, 2)
    assert partial.precision == 1.0 and 0.45 < partial.recall < 0.6 and partial.n_detected == 1

    report = metrics.localization_report(
        [beside, far, np.zeros_like(mask)], [mask, mask, np.zeros_like(mask)], tolerance=2
    )
    assert report["f1"] == 0.0 and report["n_detected"] == 0
    assert report["n_detected_tolerant"] == 1 and report["detection_rate_tolerant"] == 0.5
    assert report["tolerant_precision"] == pytest.approx(0.5, abs=0.02)
    assert "tolerance" not in metrics.localization_report([beside], [mask])
    with pytest.raises(DataonomyError, match="--tolerance -1"):
        metrics.tolerant_counts(beside, mask, -1)


def test_binned_ap_and_auroc_equal_the_exact_ones_when_no_two_classes_share_a_bin():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(400), 3)
    labels = (rng.random(400) < 0.2 + 0.6 * scores).astype(int)
    edges = np.linspace(0, 1 + 1e-9, 1001)
    pos = np.histogram(scores[labels == 1], edges)[0]
    neg = np.histogram(scores[labels == 0], edges)[0]
    ap, auc = metrics.binned_ap_auroc(pos, neg)
    # One bin per distinct 3-decimal score: the binned figures are the exact ones (ties in a bin count 1/2).
    assert ap == pytest.approx(metrics.average_precision(scores, labels), abs=1e-12)
    assert auc == pytest.approx(metrics.auroc(scores, labels), abs=1e-12)
    assert np.isnan(metrics.binned_ap_auroc(pos, np.zeros_like(neg))[0])
