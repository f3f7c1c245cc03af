"""AHP normalisation by per-image tournaments (dataonomy.ahp): cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataonomy import ahp
from dataonomy.errors import DataonomyError


def _naive_wins(scores: np.ndarray) -> np.ndarray:
    """Reference tournament: W[s, s'] = mean over images of [a > b] + [a == b] / 2, with Python loops."""
    n, s = scores.shape
    w = np.zeros((s, s))
    for x in scores:
        for i in range(s):
            for j in range(s):
                w[i, j] += 1.0 if x[i] > x[j] else 0.5 if x[i] == x[j] else 0.0
    return w / n


def test_dominant_source_class_wins():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 12))
    scores[:, 7] = scores.max(1) + 0.5  # source 7 beats every other source on every image
    result = ahp.ahp_class(scores)
    assert int(np.argmax(result.priorities)) == 7
    assert result.priorities[7] > 2 * np.sort(result.priorities)[-2]
    win = ahp.win_fractions(scores).numpy()
    assert np.all(np.delete(win[7], 7) == 1.0)


def test_consistent_matrix_gives_its_weights_in_closed_form_with_zero_cr():
    # A consistent reciprocal matrix M[i, j] = w_i / w_j has eigenvector w and eigenvalue n.
    w = torch.tensor([1.0, 2.0, 4.0, 0.5, 3.0, 7.0, 1.5], dtype=torch.float64)
    pair = ahp.principal_eigenvector(w[:, None] / w[None, :])
    torch.testing.assert_close(pair.vector, w / w.sum(), rtol=1e-12, atol=1e-14)
    assert pair.value == pytest.approx(7.0, abs=1e-10)
    ci, cr = ahp.consistency_ratio(pair.value, 7)
    assert abs(ci) < 1e-10 and abs(cr) < 1e-10


def test_bradley_terry_win_fractions_are_consistent_after_w_over_wt():
    # Win fractions w_s / (w_s + w_s') make W / W^T = w_s / w_s': AHP returns w / sum(w) exactly.
    w = torch.tensor([0.2, 0.9, 1.0, 2.5, 0.7], dtype=torch.float64)
    win = w[:, None] / (w[:, None] + w[None, :])
    pair = ahp.principal_eigenvector(ahp.comparison_matrix(win))
    torch.testing.assert_close(pair.vector, w / w.sum(), rtol=1e-12, atol=1e-14)
    assert ahp.consistency_ratio(pair.value, 5)[1] == pytest.approx(0.0, abs=1e-10)


def test_two_sources_priorities_are_the_win_fractions():
    # With two sources W' = [[1, f/(1-f)], [(1-f)/f, 1]], whose eigenvector is (f, 1 - f).
    scores = np.zeros((20, 2))
    scores[:13, 0] = 1.0  # source 0 wins on 13 images
    scores[13:17, 1] = 1.0  # source 1 wins on 4
    # 3 ties count half each: f = (13 + 1.5) / 20
    result = ahp.ahp_class(scores)
    np.testing.assert_allclose(result.priorities, [0.725, 0.275], rtol=1e-12)
    assert result.consistency_ratio == 0.0


def test_plackett_luce_scores_recover_the_strengths():
    # score = log w_s + Gumbel noise: s beats s' with probability w_s / (w_s + w_s') (Bradley-Terry),
    # so with many images the AHP priorities approach w / sum(w) and the matrix is nearly consistent.
    rng = np.random.default_rng(1)
    w = np.array([1.0, 2.0, 3.0, 5.0, 0.5, 1.5])
    scores = np.log(w) + rng.gumbel(size=(40_000, w.size))
    result = ahp.ahp_class(torch.from_numpy(scores).float())
    np.testing.assert_allclose(result.priorities, w / w.sum(), atol=0.01)
    assert result.consistency_ratio < 0.01


def test_cyclic_preferences_are_inconsistent():
    # Rock-paper-scissors: each source beats the next on 2 of 3 images, so W' is a cycle of 2s.
    scores = np.array([[3, 2, 1], [1, 3, 2], [2, 1, 3]], dtype=np.float64)
    result = ahp.ahp_class(scores)
    m = ahp.comparison_matrix(ahp.win_fractions(scores)).numpy()
    assert m[0, 1] == pytest.approx(2.0) and m[1, 2] == pytest.approx(2.0) and m[2, 0] == pytest.approx(2.0)
    lam = max(np.linalg.eigvals(m).real)
    assert result.lambda_max == pytest.approx(lam, rel=1e-10)
    np.testing.assert_allclose(result.priorities, [1 / 3] * 3, rtol=1e-10)
    assert result.consistency_ratio == pytest.approx((lam - 3) / 2 / 0.58, rel=1e-10)
    assert result.consistency_ratio > 0.1


def test_ties_count_half():
    scores = np.array([[1.0, 1.0, 2.0], [0.0, 5.0, 5.0], [3.0, 3.0, 3.0]])
    np.testing.assert_allclose(ahp.win_fractions(scores).numpy(), _naive_wins(scores), rtol=0, atol=1e-15)
    # All scores equal: every comparison is a tie, W = 1/2, W' = 1, uniform priorities, CR 0.
    result = ahp.ahp_class(np.full((5, 9), 0.25))
    np.testing.assert_allclose(result.priorities, np.full(9, 1 / 9), rtol=1e-12)
    assert result.consistency_ratio == pytest.approx(0.0, abs=1e-12)


def test_clipping_keeps_ratios_finite():
    scores = np.array([[2.0, 1.0]] * 4)  # source 0 wins every time: W = 1 would give W' = inf
    m = ahp.comparison_matrix(ahp.win_fractions(scores))
    assert m[0, 1] == pytest.approx(0.999 / 0.001) and m[1, 0] == pytest.approx(0.001 / 0.999)
    np.testing.assert_allclose(ahp.ahp_class(scores).priorities, [0.999, 0.001], rtol=1e-12)


def test_blocked_tournament_equals_unblocked_and_naive():
    rng = np.random.default_rng(2)
    # Coarse values so that ties occur often.
    scores = rng.integers(0, 6, size=(23, 17)).astype(np.float32)
    whole = ahp.win_fractions(scores, image_block=10_000, source_block=10_000)
    for image_block, source_block in [(1, 1), (3, 5), (7, 16), (22, 17), (64, 4)]:
        blocked = ahp.win_fractions(scores, image_block=image_block, source_block=source_block)
        assert torch.equal(blocked, whole)
    np.testing.assert_allclose(whole.numpy(), _naive_wins(scores), rtol=0, atol=1e-15)
    a = ahp.ahp_normalize(scores, np.zeros(23, int), 1, image_block=3, source_block=5)
    b = ahp.ahp_normalize(scores, np.zeros(23, int), 1, image_block=10_000, source_block=10_000)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_scores_dtype_does_not_change_the_tournament():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(30, 40))
    as64 = ahp.win_fractions(scores)
    as32 = ahp.win_fractions(torch.from_numpy(scores).float())  # float32 keeps these orders
    assert torch.equal(as64, as32)


def test_power_iteration_matches_dense_eigendecomposition():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(15, 60)) + np.linspace(0, 1, 60)
    m = ahp.comparison_matrix(ahp.win_fractions(scores))
    power = ahp.principal_eigenvector(m)
    assert power.method == "power"
    values, vectors = np.linalg.eig(m.numpy())
    k = np.argmax(values.real)
    ref = vectors[:, k].real / vectors[:, k].real.sum()
    np.testing.assert_allclose(power.vector.numpy(), ref, rtol=1e-8)
    assert power.value == pytest.approx(values[k].real, rel=1e-10)
    # Not converged within max_iter -> the dense fallback gives the same pair.
    fallback = ahp.principal_eigenvector(m, max_iter=1)
    assert fallback.method == "dense-eig"
    np.testing.assert_allclose(fallback.vector.numpy(), ref, rtol=1e-8)


def test_ahp_normalize_rows_sum_to_one_per_target_class():
    rng = np.random.default_rng(5)
    num_targets, num_sources = 4, 30
    labels = rng.permutation(np.repeat(np.arange(num_targets), [5, 9, 1, 14]))
    scores = rng.normal(size=(labels.size, num_sources))
    favourite = [3, 17, 0, 29]
    for t, s in enumerate(favourite):
        scores[labels == t, s] += 10.0  # each target class has its own dominant source
    p, cr = ahp.ahp_normalize(torch.from_numpy(scores), torch.from_numpy(labels), num_targets)
    assert p.shape == (num_targets, num_sources) and cr.shape == (num_targets,)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    assert np.all(p > 0)
    assert p.argmax(1).tolist() == favourite
    # The per-class function gives the same row.
    np.testing.assert_allclose(ahp.ahp_class(scores[labels == 1]).priorities, p[1], rtol=0, atol=0)


def test_random_index_table_and_large_n_approximation():
    assert ahp.random_index(1) == 0.0 and ahp.random_index(2) == 0.0
    assert ahp.random_index(3) == 0.58 and ahp.random_index(10) == 1.49 and ahp.random_index(15) == 1.59
    assert ahp.random_index(16) == pytest.approx(1.598, abs=1e-3)  # continues the table
    assert 1.76 < ahp.random_index(1000) < 1.77
    assert ahp.consistency_ratio(5.0, 2) == (0.0, 0.0)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(DataonomyError, match="target class 1 has no images"):
        ahp.ahp_normalize(np.zeros((3, 4)), np.array([0, 0, 2]), 3)
    with pytest.raises(DataonomyError, match="NaN"):
        ahp.ahp_class(np.array([[0.0, np.nan]]))
    with pytest.raises(DataonomyError, match="one label per scores row"):
        ahp.ahp_normalize(np.zeros((3, 4)), np.array([0, 1]), 2)
    with pytest.raises(DataonomyError, match="0..1"):
        ahp.ahp_normalize(np.zeros((3, 4)), np.array([0, 1, 2]), 2)


def test_cpu_thread_setting_is_restored_and_does_not_change_the_result():
    rng = np.random.default_rng(6)
    scores = torch.from_numpy(rng.normal(size=(12, 30)))
    before = torch.get_num_threads()
    single = ahp.win_fractions(scores, cpu_threads=1)
    assert torch.get_num_threads() == before
    assert torch.equal(single, ahp.win_fractions(scores, cpu_threads=None))


@pytest.mark.parametrize("n", [15, 30])
def test_random_index_matches_a_monte_carlo_estimate(n):
    """RI(n) is the mean CI of random reciprocal matrices on Saaty's 1/9..9 scale: estimate it and compare
    (Saaty's table at n = 15, Alonso & Lamata's fit above)."""
    from dataonomy.ahp import random_index

    rng = np.random.default_rng(0)
    scale = np.array([1 / v for v in range(9, 1, -1)] + list(range(1, 10)), dtype=float)
    upper = np.triu_indices(n, 1)
    cis = []
    for _ in range(300):
        a = np.ones((n, n))
        values = rng.choice(scale, size=len(upper[0]))
        a[upper], a[upper[::-1]] = values, 1 / values
        cis.append((np.linalg.eigvals(a).real.max() - n) / (n - 1))
    assert random_index(n) == pytest.approx(np.mean(cis), rel=0.02)
