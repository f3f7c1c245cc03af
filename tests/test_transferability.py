"""LogME and LEEP (dataonomy.transferability): the evidence at the returned precisions equals the dense formula
and is a maximum, informative features score above noise, and LEEP on hand-checked probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from dataonomy.errors import DataonomyError
from dataonomy.transferability import column_evidence, leep, logme


def dense_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y | 0, I/beta + F F^T / alpha): the marginal likelihood written out, per example."""
    n = len(y)
    covariance = np.eye(n) / beta + f @ f.T / alpha
    sign, logdet = np.linalg.slogdet(covariance)
    assert sign > 0
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(covariance, y))) / n


def test_evidence_equals_the_dense_marginal_likelihood_and_is_maximal():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(60, 8))
    y = (f @ rng.normal(size=8) + 0.5 * rng.normal(size=60) > 0).astype(float)
    result = column_evidence(f, y, tolerance=1e-8)
    assert result.iterations < 100
    assert result.log_evidence == pytest.approx(dense_log_evidence(f, y, result.alpha, result.beta), rel=1e-8)
    for da, db in ((1.2, 1), (1 / 1.2, 1), (1, 1.2), (1, 1 / 1.2)):
        assert dense_log_evidence(f, y, result.alpha * da, result.beta * db) < result.log_evidence


def test_logme_ranks_informative_features_above_noise():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=300)
    informative = np.eye(3)[labels] * 2 + rng.normal(size=(300, 3))
    features = np.hstack([informative, rng.normal(size=(300, 13))])
    noise = rng.normal(size=(300, 16))
    assert logme(features, labels) > logme(noise, labels) + 0.1
    # Two classes: the mean over both columns, as the reference code computes it.
    binary = labels == 0
    both = np.mean([column_evidence(features, binary == c).log_evidence for c in (False, True)])
    assert logme(features, binary) == pytest.approx(both)


def test_leep_hand_checked():
    # Two source classes, two target labels; source class 0 goes with label 0 in 2 of 3 examples.
    theta = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 0, 1, 1])
    # P(y=0|z=0) = 2/3, P(y=1|z=0) = 1/3, P(y=1|z=1) = 1.
    expected = np.mean(np.log([2 / 3, 2 / 3, 1 / 3, 1.0]))
    assert leep(theta, labels) == pytest.approx(expected)
    # A source prediction that determines the label: LEEP 0, its maximum.
    assert leep(np.eye(2)[labels], labels) == pytest.approx(0.0)
    # Uninformative (uniform) probabilities: the log of the label frequencies.
    assert leep(np.full((4, 2), 0.5), labels) == pytest.approx(np.log(0.5))


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(DataonomyError, match="logme: features must be"):
        logme(np.zeros(5), np.arange(5))
    with pytest.raises(DataonomyError, match="logme: 3 labels for 4 examples"):
        logme(np.zeros((4, 2)), np.array([0, 1, 0]))
    with pytest.raises(DataonomyError, match="one class"):
        logme(np.ones((4, 2)), np.zeros(4))
    with pytest.raises(DataonomyError, match="sum to 1"):
        leep(np.ones((3, 2)), np.array([0, 1, 1]))


def test_run_logme_reads_the_runs_training_cells(dagm_class1_test):
    """The estimate for a fine-tuning run: its training fold (N defects kept), every defective cell of the
    trunk's grid and a seeded sample of clean ones; the same inputs give the same figure."""
    from transfer.config import FinetuneConfig
    from transfer.data import run_fold
    from transfer.transferability import run_logme

    config = FinetuneConfig(
        base="scratch", arch="small_cnn", data=str(dagm_class1_test), folds=3, split_seed=0, head="segdec",
        output_stride=8, image_size=64, defective_train=3, seed=0,
    )  # fmt: skip
    first = run_logme(config, clean_cells_per_image=5)
    fold = run_fold(config, "train")
    assert first["images"] == len(fold) and sum(fold.targets) == 3
    assert 0 < first["defective_cells"] < first["cells"] <= first["defective_cells"] + 5 * len(fold)
    assert first["dimensions"] == 128 and np.isfinite(first["logme"])
    assert run_logme(config, clean_cells_per_image=5) == first
