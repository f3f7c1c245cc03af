"""Transferability estimators: how well a trained model's features (or its source-class predictions) suit a
target task, computed without fine-tuning. Pure functions of arrays.

* :func:`logme` (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML
  2021): the log marginal evidence, per example, of a Bayesian linear model from the features to each one-hot
  label column, with the prior precision ``alpha`` and noise precision ``beta`` set by evidence maximisation
  (MacKay's fixed-point updates); averaged over the label columns. Higher: the features explain the labels with
  a simpler linear model.
* :func:`leep` (Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations",
  ICML 2020): the average log-likelihood of the target labels under the "expected empirical predictor" built
  from the source classifier's probabilities and the empirical P(target label | source class).

Issue 25 uses them to ask whether a transferability estimate ranks subsets as fine-tuning does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataonomy.errors import DataonomyError


@dataclass(frozen=True)
class Evidence:
    """The evidence maximisation of one label column: the log evidence per example and where it was reached."""

    log_evidence: float
    alpha: float
    beta: float
    iterations: int


def _check_labels(labels: np.ndarray, n: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise DataonomyError(f"{what}: {len(labels)} labels for {n} examples")
    if len(np.unique(labels)) < 2:
        raise DataonomyError(f"{what}: the labels hold one class; transferability needs at least two")
    return labels


def column_evidence(
    features: np.ndarray,
    y: np.ndarray,
    max_iterations: int = 100,
    tolerance: float = 1e-3,
    _eig: tuple[np.ndarray, np.ndarray] | None = None,
) -> Evidence:
    """Maximise the evidence of ``y`` (N,) under ``y = features @ w + noise``, ``w ~ N(0, 1/alpha)``, noise
    ``N(0, 1/beta)``; ``features`` is (N, D). Stops when alpha/beta changes by less than ``tolerance``
    (relative). ``_eig`` is the eigendecomposition of ``features.T @ features`` when the caller shares it."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = f.shape
    sigma, v = _eig if _eig is not None else np.linalg.eigh(f.T @ f)
    sigma = np.clip(sigma, 0.0, None)  # round-off can leave tiny negative eigenvalues
    projected = v.T @ (f.T @ y)  # F^T y in the eigenbasis
    alpha, beta, eps = 1.0, 1.0, 1e-12
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        lam = alpha / beta
        gamma = float(np.sum(sigma / (sigma + lam)))  # effective number of parameters
        m = v @ (projected / (sigma + lam))  # posterior mean of w
        m2 = float(m @ m)
        residual = float(np.sum((y - f @ m) ** 2))
        alpha = gamma / (m2 + eps)
        beta = (n - gamma) / (residual + eps)
        if abs(alpha / beta - lam) <= tolerance * lam:
            break
    m = v @ (projected / (sigma + alpha / beta))
    return Evidence(_log_evidence(f, y, m, sigma, alpha, beta) / n, float(alpha), float(beta), iterations)


def _log_evidence(f, y, m, sigma, alpha: float, beta: float) -> float:
    """log p(y | F, alpha, beta) at the posterior mean ``m`` (Bishop, PRML eq. 3.86)."""
    n, d = f.shape
    residual = float(np.sum((y - f @ m) ** 2))
    return float(
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - 0.5 * np.sum(np.log(alpha + beta * sigma))
        - beta / 2 * residual
        - alpha / 2 * float(m @ m)
        - n / 2 * np.log(2 * np.pi)
    )


def logme(features: np.ndarray, labels: np.ndarray, tolerance: float = 1e-3) -> float:
    """LogME of ``features`` (N, D) for class ``labels`` (N,): the mean over classes of the per-example log
    evidence of the one-hot column (see the module docstring). Comparable between models on the same target."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise DataonomyError(f"logme: features must be (examples, dimensions), got shape {f.shape}")
    labels = _check_labels(labels, len(f), "logme")
    eig = np.linalg.eigh(f.T @ f)  # shared by every label column
    # Every class's column, two classes included, as the paper's reference code does (without a bias term the
    # evidence of y and of 1 - y differ).
    evidences = [column_evidence(f, labels == c, tolerance=tolerance, _eig=eig) for c in np.unique(labels)]
    return float(np.mean([e.log_evidence for e in evidences]))


def leep(source_probabilities: np.ndarray, labels: np.ndarray) -> float:
    """LEEP of a source classifier for target ``labels`` (N,): ``source_probabilities`` (N, Z) are its softmax
    outputs over its Z source classes on the target's images. At most 0; 0 when the source prediction
    determines the target label."""
    theta = np.asarray(source_probabilities, dtype=np.float64)
    if theta.ndim != 2 or len(theta) < 2:
        raise DataonomyError(
            f"leep: probabilities must be (examples, source classes), got shape {theta.shape}"
        )
    if np.any(theta < 0) or not np.allclose(theta.sum(1), 1.0, atol=1e-4):
        raise DataonomyError("leep: each row of source probabilities must be non-negative and sum to 1")
    labels = _check_labels(labels, len(theta), "leep")
    classes, y = np.unique(labels, return_inverse=True)
    joint = np.zeros((len(classes), theta.shape[1]))
    np.add.at(joint, y, theta)  # empirical joint P(y, z), up to 1/N
    conditional = joint / np.maximum(joint.sum(0, keepdims=True), 1e-300)  # P(y | z)
    expected = theta @ conditional.T  # the expected empirical predictor, (N, classes)
    return float(np.mean(np.log(np.maximum(expected[np.arange(len(y)), y], 1e-300))))


__all__ = ["Evidence", "column_evidence", "leep", "logme"]
