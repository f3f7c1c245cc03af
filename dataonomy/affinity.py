"""Per-image scores and class-level affinities between target and source classes (METHOD.md section 2).

A *measure* turns embeddings into a per-image score matrix ``scores[i, s] = score(x_i, s)`` of shape
(N_images, S): how well source class ``s`` matches target image ``x_i``, higher meaning closer. The raw
class-level affinity is the mean score over each target class's images,
``A[t, s] = mean_{i: label_i = t} scores[i, s]`` (:func:`class_affinity`). AHP (:mod:`dataonomy.ahp`)
consumes the per-image scores, because its tournaments are run image by image.

Measures (registered by name, see :func:`get_affinity` / :func:`list_affinities`):

``softmax``
    The backbone's ImageNet-1k probability of source class ``s`` (softmax over all 1000 logits, then the
    columns of the source classes). Needs the target logits and each source class's ImageNet index.
``prototype``
    Cosine similarity of the image's feature to the source class prototype: the mean of the class's
    L2-normalised features.
``gaussian``
    Distribution level. Each source class is modelled as a diagonal Gaussian N(mu_s, diag sigma_s^2);
    the per-image score is the Gaussian log-likelihood of the image's feature, averaged over the D
    feature dimensions. Its mean over a target class t is exactly
    ``-(KL(N_t || N_s) + H(N_t)) / D`` where N_t is the diagonal Gaussian with t's empirical mean and
    (biased) variance and H its entropy: a constant per target class, so for every t the sources are
    ranked by the Kullback-Leibler divergence of their Gaussians from the target's.
``frechet``
    Distribution level. The diagonal Frechet (2-Wasserstein between Gaussians) distance
    ``FD(t, s) = ||mu_t - mu_s||^2 + ||tau_t - sigma_s||^2`` (tau, sigma: per-dimension standard
    deviations) turned into the similarity ``-FD / D``. The per-image score
    ``-(||x - mu_s||^2 + ||sigma_s||^2 - 2 tau_t . sigma_s) / D`` is each image's contribution: its mean
    over the images of t is exactly ``-FD(t, s) / D`` (because the mean of ``||x - mu_s||^2`` over t is
    ``||mu_t - mu_s||^2 + ||tau_t||^2``). It needs the target labels, for tau_t.

Why diagonal covariances, with shrinkage: pooled CNN features have D = 1280..2048 dimensions while a
source class is usually represented by tens of images (``--images-per-class``). A full covariance
would be singular (rank <= n_s - 1 < D) and cost S x D^2 floats (16 GB for 1000 classes at D = 2048);
Frechet distances with full covariances would also need a D x D matrix square root per pair. A
per-dimension variance from n_s images is unbiased but noisy, and dimensions that are (nearly) zero for
a class's few images - common after a ReLU - get variances near zero, which makes log-likelihoods blow up
and dominate the score. So each class's variances are shrunk toward the pooled within-class variance,
``sigma_s^2 = ((n_s - 1) v_s + k v_pool) / (n_s - 1 + k)`` with ``k = shrinkage`` pseudo-observations
(the posterior mean under a conjugate prior centred on the pooled variance), and floored at
``variance_floor`` times the mean pooled variance.

Everything runs on torch tensors on any device (numpy arrays are accepted and moved to ``device``),
in blocks of ``block_size`` rows, so thousands of images x 1000 source classes never materialise more
than one block's worth of intermediates. Feature and logit arrays are only ever sliced by rows, so an
``h5py`` dataset from the feature cache can be passed as is and is read one block at a time. Results
are torch tensors on the compute device (``device``, else the inputs' device, else the CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from dataonomy.errors import DataonomyError
from dataonomy.registry import Registry

ArrayLike = torch.Tensor | np.ndarray

DEFAULT_BLOCK_SIZE = 1024
DEFAULT_SHRINKAGE = 10.0
DEFAULT_VARIANCE_FLOOR = 1e-4


# ---------------------------------------------------------------------------------------------------
# helpers


def array_device(device: torch.device | str | None, *arrays: ArrayLike | None) -> torch.device:
    """The device to compute on: ``device`` if given (already resolved, see :mod:`dataonomy.devices`), else that of
    the first torch tensor, else CPU."""
    if device is not None:
        return torch.device(device)
    for a in arrays:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


def as_tensor(a: ArrayLike, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``a`` as a torch tensor on ``device`` (and ``dtype`` if given); numpy arrays are not copied twice."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device=device)


def _check_matrix(name: str, a: ArrayLike, width: int | None = None) -> None:
    if a.ndim != 2:
        raise DataonomyError(f"{name} must be a 2-D array (rows x columns), got shape {tuple(a.shape)}")
    if width is not None and a.shape[1] != width:
        raise DataonomyError(f"{name} has {a.shape[1]} columns, expected {width}")


def _label_tensor(
    name: str, labels: ArrayLike, num_classes: int, rows: int, dev: torch.device
) -> torch.Tensor:
    """Validate class indices (1-D, integer, one per row, in 0..num_classes-1) and return them as int64."""
    lab = as_tensor(labels, dev)
    if lab.ndim != 1 or lab.shape[0] != rows:
        raise DataonomyError(
            f"{name} must be a 1-D array of {rows} class indices, got shape {tuple(lab.shape)}"
        )
    if lab.dtype.is_floating_point or lab.dtype.is_complex or lab.dtype == torch.bool:
        raise DataonomyError(f"{name} must hold integer class indices, got dtype {lab.dtype}")
    lab = lab.long()
    if rows:
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi >= num_classes:
            raise DataonomyError(
                f"{name} holds class index {lo if lo < 0 else hi} outside 0..{num_classes - 1}"
            )
    return lab


def _check_finite(name: str, t: torch.Tensor) -> None:
    if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
        raise DataonomyError(f"{name} contains NaN or infinite values")


# ---------------------------------------------------------------------------------------------------
# class statistics


@dataclass(frozen=True)
class GaussianStats:
    """Per-class diagonal Gaussians: ``counts`` (C,), ``means`` (C, D), ``variances`` (C, D), float64."""

    counts: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor


def class_prototypes(
    features: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    device: torch.device | str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> torch.Tensor:
    """Unit-length prototype per class: the mean of the class's L2-normalised features, renormalised.

    ``features`` (M, D), ``labels`` (M,) in 0..num_classes-1 -> (num_classes, D) float32 on ``device``.
    Every class needs at least one image.
    """
    dev = array_device(device, features)
    _check_matrix("source features", features)
    lab = _label_tensor("source labels", labels, num_classes, features.shape[0], dev)
    _require_all_classes_present("source", lab, num_classes)
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=dev)
    for start in range(0, features.shape[0], block_size):
        block = as_tensor(features[start : start + block_size], dev, torch.float32)
        _check_finite("source features", block)
        sums.index_add_(
            0, lab[start : start + block_size], torch.nn.functional.normalize(block, dim=1).double()
        )
    return torch.nn.functional.normalize(sums, dim=1).float()


def _class_moments(
    features: ArrayLike, labels: ArrayLike, num_classes: int, dev: torch.device, block_size: int, role: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts (C,), means (C, D), summed squared deviations from the class means (C, D)), float64.

    Two passes over ``features`` in blocks - means, then squared deviations from them - which is
    more accurate than E[x^2] - E[x]^2 when features are large relative to their spread.
    """
    num_rows, dim = features.shape
    labels = _label_tensor(f"{role} labels", labels, num_classes, num_rows, dev)
    counts = _require_all_classes_present(role, labels, num_classes)
    sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=dev)
    for start in range(0, num_rows, block_size):
        block = as_tensor(features[start : start + block_size], dev, torch.float64)
        _check_finite(f"{role} features", block)
        sums.index_add_(0, labels[start : start + block_size], block)
    means = sums / counts[:, None]
    sq_dev = torch.zeros_like(sums)
    for start in range(0, num_rows, block_size):
        block_labels = labels[start : start + block_size]
        block = as_tensor(features[start : start + block_size], dev, torch.float64)
        sq_dev.index_add_(0, block_labels, (block - means[block_labels]) ** 2)
    return counts, means, sq_dev


def class_gaussians(
    features: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    shrinkage: float = DEFAULT_SHRINKAGE,
    variance_floor: float = DEFAULT_VARIANCE_FLOOR,
    device: torch.device | str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> GaussianStats:
    """Diagonal Gaussian per (source) class, variances shrunk toward the pooled within-class variance.

    ``features`` (M, D), ``labels`` (M,) in 0..num_classes-1. The variance of class s is
    ``((n_s - 1) v_s + shrinkage * v_pool) / (n_s - 1 + shrinkage)`` with v_s the unbiased class
    variance and v_pool the pooled within-class variance, then floored at ``variance_floor`` times
    the mean of v_pool (see the module docstring for why). With ``shrinkage = 0`` the variances are
    the unbiased per-class ones, and a class with a single image gets the pooled variance.
    Every class needs at least one image.
    """
    if shrinkage < 0:
        raise DataonomyError(f"shrinkage must be >= 0, got {shrinkage}")
    dev = array_device(device, features)
    _check_matrix("source features", features)
    counts, means, sq_dev = _class_moments(features, labels, num_classes, dev, block_size, "source")
    dof = (counts - 1).double()  # degrees of freedom of each class's own variance estimate
    total_dof = float(dof.sum())
    pooled = sq_dev.sum(0) / total_dof if total_dof > 0 else torch.zeros_like(sq_dev[0])
    if shrinkage > 0:
        variances = (sq_dev + shrinkage * pooled) / (dof + shrinkage)[:, None]
    else:
        variances = torch.where(dof[:, None] > 0, sq_dev / dof.clamp_min(1)[:, None], pooled)
    pooled_mean = float(pooled.mean())
    variances = variances.clamp_min(variance_floor * (pooled_mean if pooled_mean > 0 else 1.0))
    return GaussianStats(counts=counts, means=means, variances=variances)


def target_moments(
    features: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    device: torch.device | str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> GaussianStats:
    """Empirical mean and *biased* (1/n) variance per target class, with no shrinkage.

    These are the moments of the target sample itself, which is what makes the per-image
    ``gaussian`` and ``frechet`` scores average exactly to their class-level divergences.
    """
    dev = array_device(device, features)
    _check_matrix("target features", features)
    counts, means, sq_dev = _class_moments(features, labels, num_classes, dev, block_size, "target")
    return GaussianStats(counts=counts, means=means, variances=sq_dev / counts[:, None])


def _require_all_classes_present(role: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=num_classes)
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():
        raise DataonomyError(
            f"{role} class {int(empty[0])} has no images ({empty.numel()} of {num_classes} {role} classes are"
            " empty); every class needs at least one image"
        )
    return counts


# ---------------------------------------------------------------------------------------------------
# per-image scores


def _score_blocks(
    rows: ArrayLike, num_columns: int, device: torch.device, dtype: torch.dtype, block_size: int, score
) -> torch.Tensor:
    """(N, ``num_columns``) scores of the N ``rows``, ``block_size`` rows at a time: ``score(start, block)``
    of each block (as ``dtype`` on ``device``; ``start``: its first row), so memory stays bounded."""
    out = torch.empty(rows.shape[0], num_columns, dtype=dtype, device=device)
    for start in range(0, rows.shape[0], block_size):
        block = as_tensor(rows[start : start + block_size], device, dtype)
        out[start : start + block.shape[0]] = score(start, block)
    return out


def softmax_scores(
    target_logits: ArrayLike,
    source_logit_index: ArrayLike,
    *,
    device: torch.device | str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> torch.Tensor:
    """``scores[i, s]`` = softmax probability of logit column ``source_logit_index[s]`` for image i.

    ``target_logits`` (N, C) (C = 1000 for ImageNet-1k), ``source_logit_index`` (S,) -> (N, S) float32.
    The softmax runs over all C logits, so the probabilities of the chosen columns need not sum to 1.
    """
    dev = array_device(device, target_logits)
    _check_matrix("target logits", target_logits)
    index = as_tensor(source_logit_index, dev).long()
    num_logits = target_logits.shape[1]
    if index.ndim != 1:
        raise DataonomyError(f"source logit indices must be 1-D, got shape {tuple(index.shape)}")
    bad = torch.nonzero((index < 0) | (index >= num_logits)).flatten()
    if bad.numel():  # name the offending entry itself (a negative one is as wrong as one too large)
        first = int(bad[0])
        raise DataonomyError(
            f"source logit index {int(index[first])} (source class {first}) is outside the backbone's"
            f" {num_logits} logits 0..{num_logits - 1} (is the source pool an ImageNet-1k subset?)"
        )

    def score(start: int, block: torch.Tensor) -> torch.Tensor:
        _check_finite("target logits", block)
        return torch.softmax(block, dim=1)[:, index]

    return _score_blocks(target_logits, index.numel(), dev, torch.float32, block_size, score)


def prototype_scores(
    target_features: ArrayLike,
    source_features: ArrayLike,
    source_labels: ArrayLike,
    num_sources: int,
    *,
    device: torch.device | str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> torch.Tensor:
    """``scores[i, s]`` = cosine similarity of target feature i to source class s's prototype.

    ``target_features`` (N, D), ``source_features`` (M, D), ``source_labels`` (M,) -> (N, S) in [-1, 1].
    """
    dev = array_device(device, target_features, source_features)
    _check_matrix("target features", target_features)
    _check_matrix("source features", source_features, target_features.shape[1])
    protos = class_prototypes(source_features, source_labels, num_sources, device=dev, block_size=block_size)

    def score(start: int, block: torch.Tensor) -> torch.Tensor:
        _check_finite("target features", block)
        return torch.nn.functional.normalize(block, dim=1) @ protos.T

    return _score_blocks(target_features, num_sources, dev, torch.float32, block_size, score)


def gaussian_scores(
    target_features: ArrayLike,
    source_stats: GaussianStats,
    *,
    device: torch.device | str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> torch.Tensor:
    """``scores[i, s]`` = mean over dimensions of log N(x_i,d; mu_s,d, sigma_s,d^2).

    ``target_features`` (N, D) and :class:`GaussianStats` of the S source classes -> (N, S) float64 on
    ``device``. Computed as three matrix products per block (x^2 / sigma^2, x mu / sigma^2 and a
    per-class constant) after centring features and means on the mean of the source means, in float64
    on the CPU whatever ``device`` is: the expansion of the squared distance subtracts large terms, and
    float32 lost about 1 % of the score at extreme feature scales (GPUs are slow in float64; these
    products are small next to feature extraction).
    """
    dev = array_device(device, target_features)
    _check_matrix("target features", target_features, source_stats.means.shape[1])
    cpu = torch.device("cpu")
    dim = source_stats.means.shape[1]
    means = source_stats.means.to(cpu, torch.float64)
    variances = source_stats.variances.to(cpu, torch.float64)
    centre = means.mean(0)
    means = means - centre
    inv_var = 1.0 / variances
    weighted_means = means * inv_var
    const = (means**2 * inv_var).sum(1) + torch.log(variances).sum(1) + dim * math.log(2 * math.pi)

    def score(start: int, x: torch.Tensor) -> torch.Tensor:
        _check_finite("target features", x)
        x = x - centre
        sq = (x * x) @ inv_var.T - 2.0 * (x @ weighted_means.T) + const
        return -0.5 * sq / dim

    return _score_blocks(target_features, means.shape[0], cpu, torch.float64, block_size, score).to(dev)


def frechet_scores(
    target_features: ArrayLike,
    target_labels: ArrayLike,
    num_targets: int,
    source_stats: GaussianStats,
    *,
    device: torch.device | str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> torch.Tensor:
    """Per-image contribution to the diagonal Frechet distance, as a similarity (see module docstring).

    ``scores[i, s] = -(||x_i - mu_s||^2 + ||sigma_s||^2 - 2 tau_t . sigma_s) / D`` with t = label of i;
    the mean of ``scores[:, s]`` over the images of t equals ``-frechet_distance(t, s) / D``.
    (N, S) float64 on ``device``, computed in float64 on the CPU.
    """
    dev = array_device(device, target_features)
    dim = source_stats.means.shape[1]
    _check_matrix("target features", target_features, dim)
    # float64 on the CPU, as gaussian_scores (float32 lost about 1 % at extreme feature scales).
    cpu = torch.device("cpu")
    labels = _label_tensor("target labels", target_labels, num_targets, target_features.shape[0], cpu)
    target = target_moments(target_features, labels, num_targets, device=cpu, block_size=block_size)
    src_std = source_stats.variances.to(cpu, torch.float64).sqrt()
    tgt_std = target.variances.to(cpu, torch.float64).sqrt()
    # Per (t, s) offset: ||sigma_s||^2 - 2 tau_t . sigma_s, shape (T, S).
    offset = (src_std**2).sum(1)[None, :] - 2.0 * tgt_std @ src_std.T
    means = source_stats.means.to(cpu, torch.float64)
    centre = means.mean(0)
    means = means - centre
    mean_sq = (means * means).sum(1)

    def score(start: int, x: torch.Tensor) -> torch.Tensor:
        x = x - centre
        sq_dist = (x * x).sum(1, keepdim=True) - 2.0 * (x @ means.T) + mean_sq
        return -(sq_dist + offset[labels[start : start + x.shape[0]]]) / dim

    return _score_blocks(target_features, means.shape[0], cpu, torch.float64, block_size, score).to(dev)


def frechet_distance(target: GaussianStats, source: GaussianStats) -> torch.Tensor:
    """Diagonal Frechet distance ``||mu_t - mu_s||^2 + ||tau_t - sigma_s||^2`` for every (t, s): (T, S)."""
    dev = target.means.device
    mt, ms = target.means.double(), source.means.to(dev).double()
    st, ss = target.variances.double().sqrt(), source.variances.to(dev).double().sqrt()
    return torch.cdist(mt, ms) ** 2 + torch.cdist(st, ss) ** 2


def class_affinity(scores: ArrayLike, target_labels: ArrayLike, num_targets: int) -> torch.Tensor:
    """Raw class-level affinity ``A[t, s]`` = mean of ``scores[i, s]`` over the images i of class t.

    ``scores`` (N, S), ``target_labels`` (N,) -> (T, S) float32 on the scores' device. Sums are
    accumulated in float64. Every target class needs at least one image.
    """
    dev = array_device(None, scores)
    sc = as_tensor(scores, dev)
    _check_matrix("scores", sc)
    labels = _label_tensor("target labels", target_labels, num_targets, sc.shape[0], dev)
    counts = _require_all_classes_present("target", labels, num_targets)
    sums = torch.zeros(num_targets, sc.shape[1], dtype=torch.float64, device=dev)
    sums.index_add_(0, labels, sc.double())
    return (sums / counts[:, None]).float()


# ---------------------------------------------------------------------------------------------------
# registry


@dataclass
class AffinityInputs:
    """Everything a measure may need; each measure uses a subset (``AffinityMeasure.requires``).

    ``target_features`` (N, D), ``target_logits`` (N, C), ``target_labels`` (N,) in 0..T-1,
    ``source_features`` (M, D), ``source_labels`` (M,) in 0..S-1, ``source_logit_index`` (S,): each
    source class's column in the backbone's logits, ``num_sources`` S, ``num_targets`` T.
    """

    target_features: ArrayLike | None = None
    target_logits: ArrayLike | None = None
    target_labels: ArrayLike | None = None
    source_features: ArrayLike | None = None
    source_labels: ArrayLike | None = None
    source_logit_index: ArrayLike | None = None
    num_sources: int | None = None
    num_targets: int | None = None

    def missing(self, names: tuple[str, ...]) -> list[str]:
        """The names among ``names`` that are None."""
        return [n for n in names if getattr(self, n) is None]


@dataclass(frozen=True)
class AffinityMeasure:
    """A named per-image score: ``compute(inputs, device=..., block_size=..., **options)`` -> (N, S).

    ``requires`` names the :class:`AffinityInputs` fields it reads; ``options`` holds the defaults of
    its extra keyword options (e.g. ``shrinkage``), which :func:`per_image_scores` lets callers override.
    """

    name: str
    summary: str
    requires: tuple[str, ...]
    compute: Callable[..., torch.Tensor] = field(repr=False)
    options: dict = field(default_factory=dict)


def _softmax_measure(inputs: AffinityInputs, *, device=None, block_size=DEFAULT_BLOCK_SIZE) -> torch.Tensor:
    return softmax_scores(
        inputs.target_logits, inputs.source_logit_index, device=device, block_size=block_size
    )


def _num_sources(inputs: AffinityInputs) -> int:
    if inputs.num_sources is not None:
        return int(inputs.num_sources)
    labels = inputs.source_labels
    return int(labels.max()) + 1 if len(labels) else 0


def _prototype_measure(inputs: AffinityInputs, *, device=None, block_size=DEFAULT_BLOCK_SIZE) -> torch.Tensor:
    return prototype_scores(
        inputs.target_features,
        inputs.source_features,
        inputs.source_labels,
        _num_sources(inputs),
        device=device,
        block_size=block_size,
    )


def _source_gaussians(inputs: AffinityInputs, device, block_size, shrinkage, variance_floor) -> GaussianStats:
    dev = array_device(device, inputs.target_features, inputs.source_features)
    _check_matrix("target features", inputs.target_features)
    _check_matrix("source features", inputs.source_features, inputs.target_features.shape[1])
    return class_gaussians(
        inputs.source_features,
        inputs.source_labels,
        _num_sources(inputs),
        shrinkage=shrinkage,
        variance_floor=variance_floor,
        device=dev,
        block_size=block_size,
    )


def _gaussian_measure(
    inputs: AffinityInputs,
    *,
    device=None,
    block_size=DEFAULT_BLOCK_SIZE,
    shrinkage=DEFAULT_SHRINKAGE,
    variance_floor=DEFAULT_VARIANCE_FLOOR,
) -> torch.Tensor:
    stats = _source_gaussians(inputs, device, block_size, shrinkage, variance_floor)
    return gaussian_scores(inputs.target_features, stats, device=stats.means.device, block_size=block_size)


def _frechet_measure(
    inputs: AffinityInputs,
    *,
    device=None,
    block_size=DEFAULT_BLOCK_SIZE,
    shrinkage=DEFAULT_SHRINKAGE,
    variance_floor=DEFAULT_VARIANCE_FLOOR,
) -> torch.Tensor:
    stats = _source_gaussians(inputs, device, block_size, shrinkage, variance_floor)
    labels = inputs.target_labels
    num_targets = inputs.num_targets
    if num_targets is None:
        num_targets = int(labels.max()) + 1 if len(labels) else 0
    return frechet_scores(
        inputs.target_features, labels, num_targets, stats, device=stats.means.device, block_size=block_size
    )


_REGISTRY: Registry[AffinityMeasure] = Registry(
    "affinity measure", "--affinity {name!r} is not a known affinity measure; choose one of: {known}"
)


def register_affinity(measure: AffinityMeasure) -> AffinityMeasure:
    """Add ``measure`` to the registry under its name (replacing one of the same name)."""
    return _REGISTRY.add(measure.name, measure, replace=True)


def list_affinities() -> list[str]:
    """Names of the registered measures, sorted."""
    return _REGISTRY.names()


def get_affinity(name: str) -> AffinityMeasure:
    """The registered measure called ``name``; unknown names raise a one-line :class:`DataonomyError`."""
    return _REGISTRY.get(name)


_INPUT_HELP = {
    "target_features": "the target images' backbone features",
    "target_logits": "the target images' ImageNet-1k logits",
    "target_labels": "the target images' class labels",
    "source_features": "the source images' backbone features",
    "source_labels": "the source images' class labels",
    "source_logit_index": "each source class's ImageNet-1k index",
}
assert set(_INPUT_HELP) <= {f.name for f in fields(AffinityInputs)}


def per_image_scores(
    measure: str | AffinityMeasure,
    inputs: AffinityInputs,
    *,
    device: torch.device | str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    **options,
) -> torch.Tensor:
    """Per-image score matrix (N, S) of the named measure; ``options`` go to the measure (e.g. shrinkage)."""
    m = get_affinity(measure) if isinstance(measure, str) else measure
    missing = inputs.missing(m.requires)
    if missing:
        what = "; ".join(f"{n} ({_INPUT_HELP.get(n, n)})" for n in missing)
        raise DataonomyError(f"--affinity {m.name} needs inputs that were not given: {what}")
    unknown = set(options) - set(m.options)
    if unknown:
        raise DataonomyError(f"--affinity {m.name} takes no option(s) {', '.join(sorted(unknown))}")
    return m.compute(inputs, device=device, block_size=block_size, **{**m.options, **options})


register_affinity(
    AffinityMeasure(
        name="softmax",
        summary="backbone's ImageNet-1k softmax probability of the source class",
        requires=("target_logits", "source_logit_index"),
        compute=_softmax_measure,
    )
)
register_affinity(
    AffinityMeasure(
        name="prototype",
        summary="cosine similarity to the mean normalised feature of the source class",
        requires=("target_features", "source_features", "source_labels"),
        compute=_prototype_measure,
    )
)
register_affinity(
    AffinityMeasure(
        name="gaussian",
        summary="log-likelihood under the source class's shrunk diagonal Gaussian (class mean = -KL - H)",
        requires=("target_features", "source_features", "source_labels"),
        compute=_gaussian_measure,
        options={"shrinkage": DEFAULT_SHRINKAGE, "variance_floor": DEFAULT_VARIANCE_FLOOR},
    )
)
register_affinity(
    AffinityMeasure(
        name="frechet",
        summary="per-image share of the diagonal Frechet distance, negated (class mean = -FD / D)",
        requires=("target_features", "target_labels", "source_features", "source_labels"),
        compute=_frechet_measure,
        options={"shrinkage": DEFAULT_SHRINKAGE, "variance_floor": DEFAULT_VARIANCE_FLOOR},
    )
)
