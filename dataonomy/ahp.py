"""AHP normalisation of affinities by per-image tournaments (METHOD.md section 3; Taskonomy Step III).

For one target class t with per-image scores ``scores`` (N_t, S):

1. ``W[s, s']`` = fraction of t's images on which ``score(x, s) > score(x, s')``, ties counting one half
   (so ``W + W^T = 1`` and the diagonal is 1/2), clipped to [0.001, 0.999] so no ratio is 0 or infinite;
2. ``W' = W / W^T`` element-wise: a positive reciprocal matrix (``W'[s, s'] = 1 / W'[s', s]``), the
   odds that s beats s';
3. ``P[t, :]`` = the principal (Perron) eigenvector of W', scaled to sum to 1;
4. consistency: ``CI = (lambda_max - n) / (n - 1)``, ``CR = CI / RI(n)`` with Saaty's random index.
   RI is the mean CI of random matrices on Saaty's 1/9..9 scale, while the odds in W' reach 999 (the clip):
   a CR above Saaty's 0.1 rule of thumb, even above 1, is common here and compares runs, not the scale.

If the win fractions follow a Bradley-Terry model, ``W[s, s'] = w_s / (w_s + w_s')``, then
``W'[s, s'] = w_s / w_s'`` is perfectly consistent and P is exactly ``w / sum(w)`` with CR = 0.

Cost: the tournaments are O(N_t S^2) comparisons (5e8 for N_t = 500, S = 1000). They are computed
with torch in tiles of ``image_block`` images x ``source_block`` x ``source_block`` source pairs, only
for the upper triangle of tiles (the lower one is its negated transpose), as sums of
``sign(rank_s - rank_s')``: +1 win, -1 loss, 0 tie, where ``rank`` is each image's dense rank of its
scores (equal scores, equal rank). Ranks and these sums are small integers, exact in float32 whatever
the scores' dtype, so any blocking gives bit-identical results. The tiles run wherever the scores are
(GPU when they are on one). On a CPU the default tile (32 images x 128 x 128 sources, 2 MB of float32)
stays in cache and runs on one thread: N_t = 500, S = 1000 takes about 0.15-0.5 s.

The eigenvector is found by power iteration, in float64 on the same device: W' is strictly positive,
so by Perron-Frobenius its largest eigenvalue is simple and strictly dominant and the iteration
converges from any positive start to the positive eigenvector. We start from the row geometric means
(exact when W' is consistent), need only O(S^2) matrix-vector products that run on a GPU too, and
stop when successive vectors differ by less than ``tol`` in L1. A dense non-symmetric
eigendecomposition (``torch.linalg.eig`` / ``scipy.linalg.eig``) costs O(S^3), returns complex
values and all S eigenpairs we do not need; it is kept only as the fallback when power iteration
has not converged within ``max_iter`` steps (reported in ``AHPClassResult.method``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from dataonomy.affinity import ArrayLike, array_device, as_tensor
from dataonomy.errors import DataonomyError

CLIP_LOW, CLIP_HIGH = 0.001, 0.999
# Tiles (images, sources): cache-sized on a CPU; larger on a GPU to amortise kernel launches (128 MB).
DEFAULT_BLOCKS = {"cpu": (32, 128), "cuda": (128, 512)}
DEFAULT_TOL = 1e-12
DEFAULT_MAX_ITER = 2000

# Saaty's random consistency index RI(n) for n = 1..15 (T. L. Saaty, The Analytic Hierarchy Process,
# McGraw-Hill 1980): the mean CI of random reciprocal matrices on the 1/9..9 scale.
SAATY_RANDOM_INDEX = (0.0, 0.0, 0.58, 0.90, 1.12, 1.24, 1.32, 1.41, 1.45, 1.49, 1.51, 1.48, 1.56, 1.57, 1.59)


def random_index(n: int) -> float:
    """Random consistency index RI(n) for an n x n reciprocal matrix.

    n <= 15: Saaty's table. Beyond it: Alonso & Lamata's linear fit of the mean principal eigenvalue
    of random reciprocal matrices, lambda_max ~ 2.7699 n - 4.3513 (J. A. Alonso, M. T. Lamata,
    "Consistency in the analytic hierarchy process: a new approach", Int. J. Uncertainty, Fuzziness and
    Knowledge-Based Systems 14(4):445-459, 2006), i.e. RI(n) = (1.7699 n - 4.3513) / (n - 1), which
    continues Saaty's table (1.59 at n = 15, 1.60 at n = 16) and tends to 1.77. A test checks both against a
    Monte Carlo estimate (within 2 % at n = 15 and 30).
    """
    if n < 1:
        raise ValueError(f"matrix size must be >= 1, got {n}")
    if n <= len(SAATY_RANDOM_INDEX):
        return SAATY_RANDOM_INDEX[n - 1]
    return (1.7699 * n - 4.3513) / (n - 1)


def consistency_ratio(lambda_max: float, n: int) -> tuple[float, float]:
    """(CI, CR) for principal eigenvalue ``lambda_max`` of an n x n reciprocal matrix; both 0 for n <= 2."""
    if n <= 2:
        return 0.0, 0.0  # every 1x1 and 2x2 reciprocal matrix is consistent
    ci = (lambda_max - n) / (n - 1)
    return ci, ci / random_index(n)


@contextmanager
def _cpu_threads(device: torch.device, threads: int | None):
    """Run torch CPU ops with ``threads`` intra-op threads, restoring the previous setting after."""
    if device.type != "cpu" or threads is None or threads == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def win_fractions(
    scores: ArrayLike,
    *,
    image_block: int | None = None,
    source_block: int | None = None,
    device: torch.device | str | None = None,
    cpu_threads: int | None = 1,
) -> torch.Tensor:
    """``W[s, s']`` = fraction of images (rows of ``scores`` (N, S)) with score_s > score_s', ties = 1/2.

    Returns an (S, S) float64 tensor on the compute device (``device``, else the scores'). Not
    clipped. Computed in tiles of ``image_block`` images x ``source_block`` x ``source_block`` sources
    (None: :data:`DEFAULT_BLOCKS` for the device); the result does not depend on the tiling.
    ``cpu_threads``: torch intra-op threads for the tiles on a CPU (None: leave torch's setting). The
    default, 1, is deliberate: each tile is a cache-sized elementwise op, too small for threads to pay
    for their synchronisation - on 2 cores N = 500, S = 1000 took 0.15 s of CPU with one thread and
    1-4 s with two.
    """
    dev = array_device(device, scores)
    x = as_tensor(scores, dev)
    if x.ndim != 2:
        raise DataonomyError(
            f"scores must be a 2-D array (images x source classes), got shape {tuple(x.shape)}"
        )
    num_images, num_sources = x.shape
    if num_images == 0:
        raise DataonomyError("scores has no images: AHP needs at least one image per target class")
    if x.dtype.is_floating_point and not bool(torch.isfinite(x).all()):
        raise DataonomyError("scores contain NaN or infinite values")
    default_images, default_sources = DEFAULT_BLOCKS.get(dev.type, DEFAULT_BLOCKS["cpu"])
    image_block = default_images if image_block is None else image_block
    source_block = default_sources if source_block is None else source_block
    if image_block < 1 or source_block < 1:
        raise ValueError("image_block and source_block must be >= 1")
    # Ranks (< S) and sums of +-1/0 (|sum| <= N) are integers, exact in float32 below 2**24.
    acc_dtype = torch.float32 if max(num_images, num_sources) < 2**24 else torch.float64
    with _cpu_threads(dev, cpu_threads):
        net = _net_wins(dense_ranks(x).to(acc_dtype), image_block, source_block)
    # wins + losses + ties = N and wins - losses = net  =>  wins + ties / 2 = (N + net) / 2.
    return (net.double() + num_images) / (2.0 * num_images)


def _net_wins(ranks: torch.Tensor, image_block: int, source_block: int) -> torch.Tensor:
    """``net[s, s'] = sum over images of sign(rank_s - rank_s')``, upper triangle of tiles mirrored."""
    num_images, num_sources = ranks.shape
    x, acc_dtype, dev = ranks, ranks.dtype, ranks.device
    net = torch.zeros(num_sources, num_sources, dtype=acc_dtype, device=dev)
    for a in range(0, num_sources, source_block):
        a_end = min(a + source_block, num_sources)
        for b in range(a, num_sources, source_block):
            b_end = min(b + source_block, num_sources)
            tile = torch.zeros(a_end - a, b_end - b, dtype=acc_dtype, device=dev)
            for i in range(0, num_images, image_block):
                rows = x[i : i + image_block]
                diff = rows[:, a:a_end, None] - rows[:, None, b:b_end]
                tile += torch.sign(diff).sum(0, dtype=acc_dtype)
            net[a:a_end, b:b_end] = tile
            if b != a:
                net[b:b_end, a:a_end] = -tile.T
    return net


def dense_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Per-row dense ranks (0 = lowest; equal values share a rank), int64, same shape as ``scores``.

    Comparing ranks gives exactly the same wins, losses and ties as comparing the scores.
    """
    values, order = scores.sort(dim=1)
    step = torch.zeros_like(order)
    step[:, 1:] = (values[:, 1:] != values[:, :-1]).long()
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, step.cumsum(1))
    return ranks


def comparison_matrix(win: torch.Tensor, clip: tuple[float, float] = (CLIP_LOW, CLIP_HIGH)) -> torch.Tensor:
    """``W' = W / W^T`` after clipping W to ``clip``: a positive reciprocal matrix (float64)."""
    w = win.double().clamp(*clip)
    return w / w.T


@dataclass(frozen=True)
class Eigenpair:
    """Principal eigenvector (positive, summing to 1) and eigenvalue of a positive matrix."""

    vector: torch.Tensor
    value: float
    iterations: int
    method: str  # "power" or "dense-eig" (fallback)


def principal_eigenvector(
    matrix: torch.Tensor, *, tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER
) -> Eigenpair:
    """Perron eigenpair of a strictly positive square matrix by power iteration (float64).

    Starts from the normalised row geometric means, iterates ``v <- M v / sum(M v)`` until the L1
    change is below ``tol``; if that has not happened after ``max_iter`` products, falls back to a dense
    eigendecomposition (CPU). With ``sum(v) = 1``, ``M v = lambda v`` gives ``lambda = sum(M v)``.
    """
    m = matrix.double()
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square, got shape {tuple(m.shape)}")
    if not bool((m > 0).all()):
        raise ValueError("principal_eigenvector needs a strictly positive matrix")
    v = torch.exp(torch.log(m).mean(1))
    v = v / v.sum()
    lam = float("nan")
    for it in range(1, max_iter + 1):
        w = m @ v
        total = w.sum()
        w = w / total
        change = float((w - v).abs().sum())
        v = w
        if change < tol:
            lam = float((m @ v).sum())
            return Eigenpair(vector=v, value=lam, iterations=it, method="power")
    values, vectors = torch.linalg.eig(m.cpu())
    k = int(torch.argmax(values.real))
    vec = vectors[:, k].real
    vec = (vec / vec.sum()).to(m.device)
    return Eigenpair(vector=vec, value=float(values[k].real), iterations=max_iter, method="dense-eig")


@dataclass(frozen=True)
class AHPClassResult:
    """AHP for one target class: ``priorities`` (S,) summing to 1, and the consistency of W'."""

    priorities: np.ndarray
    lambda_max: float
    consistency_index: float
    consistency_ratio: float
    num_images: int
    iterations: int
    method: str


def ahp_class(
    scores: ArrayLike,
    *,
    image_block: int | None = None,
    source_block: int | None = None,
    clip: tuple[float, float] = (CLIP_LOW, CLIP_HIGH),
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    device: torch.device | str | None = None,
    cpu_threads: int | None = 1,
) -> AHPClassResult:
    """AHP priorities of the S source classes for one target class from its images' scores (N_t, S).

    Options: tile sizes and ``cpu_threads`` as in :func:`win_fractions`, the clipping interval, and the
    power iteration's ``tol`` / ``max_iter`` (:func:`principal_eigenvector`).
    """
    win = win_fractions(
        scores, image_block=image_block, source_block=source_block, device=device, cpu_threads=cpu_threads
    )
    pair = principal_eigenvector(comparison_matrix(win, clip), tol=tol, max_iter=max_iter)
    n = win.shape[0]
    ci, cr = consistency_ratio(pair.value, n)
    return AHPClassResult(
        priorities=pair.vector.cpu().numpy(),
        lambda_max=pair.value,
        consistency_index=ci,
        consistency_ratio=cr,
        num_images=int(scores.shape[0]),
        iterations=pair.iterations,
        method=pair.method,
    )


def ahp_classes(
    scores: ArrayLike,
    target_labels: ArrayLike,
    num_targets: int,
    **options,
) -> list[AHPClassResult]:
    """:func:`ahp_class` for every target class t = 0..num_targets-1 (its rows of ``scores`` (N, S)).

    ``options`` are those of :func:`ahp_class`. Every target class needs at least one image.
    """
    dev = array_device(options.get("device"), scores)
    labels = as_tensor(target_labels, dev)
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise DataonomyError(
            f"target labels must be 1-D with one label per scores row ({scores.shape[0]}),"
            f" got shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataonomyError(f"target labels must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_targets):
        raise DataonomyError(f"target labels must lie in 0..{num_targets - 1}")
    counts = torch.bincount(labels, minlength=num_targets)
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():
        raise DataonomyError(f"target class {int(empty[0])} has no images: AHP needs at least one per class")
    x = as_tensor(scores, dev)
    return [ahp_class(x[labels == t], **options) for t in range(num_targets)]


def ahp_normalize(
    scores: ArrayLike,
    target_labels: ArrayLike,
    num_targets: int,
    **options,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised affinities ``P`` (T, S), rows summing to 1, and consistency ratios ``CR`` (T,).

    ``scores`` (N, S) per-image scores, ``target_labels`` (N,) in 0..num_targets-1; ``options`` as in
    :func:`ahp_class` (``image_block``, ``source_block``, ``clip``, ``tol``, ``max_iter``, ``device``,
    ``cpu_threads``).
    Both results are float64 numpy arrays (small, and bound for the BIP and the manifest).
    """
    results = ahp_classes(scores, target_labels, num_targets, **options)
    if not results:
        return np.zeros((0, scores.shape[1])), np.zeros(0)
    priorities = np.stack([r.priorities for r in results])
    ratios = np.array([r.consistency_ratio for r in results], dtype=np.float64)
    return priorities, ratios
