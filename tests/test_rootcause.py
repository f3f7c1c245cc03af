"""Root-cause analysis and synthetic systematic defects on real DAGM Class1 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from dataonomy.errors import DataonomyError
from transfer import metrics, rootcause, stamps


def _labels(folder) -> list[tuple[int, bool]]:
    rows = (folder / "Label" / "Labels.txt").read_text().splitlines()[1:]
    return [(int(fields[0]), fields[1] == "1") for fields in (row.split() for row in rows)]


def _load(folder, numbers) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / f"{n:04d}.PNG")) for n in numbers])


@pytest.fixture(scope="module")
def defective_window(dagm_class1_test) -> np.ndarray:
    """30 real DAGM images that each carry their own defect, at their own place: (30, 512, 512) uint8."""
    numbers = [n for n, defective in _labels(dagm_class1_test) if defective][:30]
    return _load(dagm_class1_test, numbers)


@pytest.fixture(scope="module")
def run_of_60(dagm_class1_test) -> np.ndarray:
    """The first 60 Class1 test images in order (clean and defective mixed), as a production run."""
    return _load(dagm_class1_test, range(1, 61))


# --- building blocks ------------------------------------------------------------------------------------------


def test_gradients_are_sobel(defective_window):
    images = defective_window[:3]
    gx, gy = rootcause.image_gradients(images)
    for i, image in enumerate(images.astype(np.float64)):
        # scipy's Sobel with edge replication, scaled so a step of h reads h/2 like a central difference.
        np.testing.assert_allclose(gx[i].numpy(), ndimage.sobel(image, axis=1, mode="nearest") / 8, atol=1e-3)
        np.testing.assert_allclose(gy[i].numpy(), ndimage.sobel(image, axis=0, mode="nearest") / 8, atol=1e-3)


@pytest.mark.parametrize("count", [30, 31])
def test_window_median_is_exact(count):
    values = torch.randn(count, 17, 23, generator=torch.Generator().manual_seed(count))
    expected = np.median(values.numpy(), axis=0)
    np.testing.assert_allclose(rootcause.window_median(values).numpy(), expected, rtol=1e-6)


def test_mask_bridges_lines_fills_blots_and_drops_specks():
    defect_map = np.random.default_rng(0).normal(1.0, 0.1, (100, 100))
    defect_map[20, 10:60] = defect_map[22, 10:60] = 10  # both sides of a 1-pixel line at row 21
    ring = np.zeros((100, 100), bool)
    ring[60:81, 60:81] = True
    ring[62:79, 62:79] = False  # outline of a 19x19 blot
    defect_map[ring] = 10
    defect_map[5, 90] = 50  # one hot pixel
    mask, z = rootcause.common_defect_mask(defect_map, z_threshold=5, min_area=20)
    line, blot = np.zeros_like(mask), np.zeros_like(mask)
    line[21, 10:60] = True
    blot[61:80, 61:80] = True
    # The one-pixel widening of the 3x3 gradient kernel is undone: the line and the blot come back exactly,
    # apart from the line's two end pixels (a gradient only marks the sides of a line, not its ends).
    assert metrics.iou(mask & (np.arange(100)[:, None] < 40), line) >= 0.95
    assert metrics.iou(mask & (np.arange(100)[:, None] >= 40), blot) == 1.0
    assert not mask[5, 90] and z[5, 90] > 100


# --- stamps ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", stamps.STAMP_KINDS)
def test_stamp_is_the_same_on_every_image_and_seeded(defective_window, kind):
    images = defective_window[:6]
    stamped, mask = stamps.stamp_systematic_defect(images, kind, seed=7, start=2)
    again, same_mask = stamps.stamp_systematic_defect(images, kind, seed=7, start=2)
    _, other_mask = stamps.stamp_systematic_defect(images, kind, seed=8)
    np.testing.assert_array_equal(stamped, again)
    np.testing.assert_array_equal(mask, same_mask)
    assert not np.array_equal(mask, other_mask)
    assert stamped.dtype == np.uint8 and not np.shares_memory(stamped, images)
    np.testing.assert_array_equal(stamped[:2], images[:2])  # before the fault starts
    changed = stamped.astype(int) != images.astype(int)
    assert not changed[:, ~mask].any()  # nothing outside the stamp
    assert (
        changed[2:, mask].mean() > 0.9
    )  # the stamp on every later image (except pixels already at the limit)
    _, parts = ndimage.label(mask, structure=np.ones((3, 3)))
    assert parts == 1
    if kind == "scratch":
        assert 200 < mask.sum() < 0.01 * mask.size  # a thin line
        assert (stamped[2:, mask] >= images[2:, mask]).all()  # brighter
    else:
        assert (stamped[2:, mask] <= images[2:, mask]).all()  # darker


def test_stamp_errors(defective_window):
    with pytest.raises(DataonomyError, match="stamp kind"):
        stamps.stamp_systematic_defect(defective_window[:2], "smudge")
    with pytest.raises(DataonomyError, match="does not match"):
        stamps.apply_stamp(defective_window[:2], np.zeros((10, 10), bool), "scratch", 0.3)
    with pytest.raises(DataonomyError, match="start"):
        stamps.stamp_systematic_defect(defective_window[:2], start=5)


# --- one window -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "seed"), [("scratch", 0), ("scratch", 1), ("blot", 0)])
def test_stamped_defect_is_found_on_dagm(defective_window, kind, seed):
    stamped, stamp = stamps.stamp_systematic_defect(defective_window, kind, seed=seed)
    result = rootcause.find_common_defects(stamped)
    assert result.verdict and result.score > rootcause.DEFAULT_Z_THRESHOLD
    assert metrics.iou(result.mask, stamp) >= 0.5
    # Every image carries the common gradient.
    assert np.all(result.support > 0.5) and result.onset == 0
    assert result.map.shape == result.mask.shape == stamp.shape


def test_random_defects_leave_the_map_blank(defective_window, run_of_60):
    # 30 images with real defects, each at its own place: none survives the median.
    result = rootcause.find_common_defects(defective_window)
    assert not result.verdict and result.score == 0 and result.area == 0
    assert not result.mask.any() and result.onset is None
    assert 0 < result.peak_z < rootcause.DEFAULT_Z_THRESHOLD * 2
    # A float copy scaled to [0, 1] gives the same answer (z-scores do not depend on the scale).
    assert not rootcause.find_common_defects(list(defective_window.astype(np.float32) / 255)).verdict
    assert not rootcause.find_common_defects(run_of_60[30:]).verdict


@pytest.mark.parametrize("border", [16, 64, 128])
def test_a_wide_frame_band_does_not_inflate_the_noise(defective_window, border):
    """The band along the frame is left out of the z-scores' statistics: set to the floor and counted, it shrank
    the MAD, so a wide band turned texture noise into a detection (and an early onset)."""
    result = rootcause.find_common_defects(defective_window, border=border)
    assert not result.verdict and result.peak_z < rootcause.DEFAULT_Z_THRESHOLD * 2
    inner = (slice(border, -border),) * 2
    np.testing.assert_allclose(
        rootcause.robust_zscore(result.map, border)[inner], rootcause.robust_zscore(result.map[inner])
    )
    assert not rootcause.robust_zscore(result.map, border)[:border].any()


def test_a_fault_on_a_minority_of_the_window_is_not_common(defective_window):
    # A glaring scratch on 5 of 30 images is a transient event, not a systematic one: the median ignores it
    # (a mean over the window would not: it shows this scratch at z > 10).
    mask = stamps.scratch_mask(defective_window.shape[1:], seed=4)
    images = defective_window.copy()
    images[:5] = stamps.apply_stamp(defective_window[:5], mask, "scratch", 1.0)
    assert not rootcause.find_common_defects(images).verdict


def test_window_errors(defective_window):
    with pytest.raises(DataonomyError, match="at least 3 images"):
        rootcause.find_common_defects(defective_window[:2])
    with pytest.raises(DataonomyError, match=r"image 2: size \(256, 512\) differs"):
        rootcause.find_common_defects([defective_window[0], defective_window[1], defective_window[2, :256]])
    with pytest.raises(DataonomyError, match="grayscale"):
        rootcause.find_common_defects(np.zeros((3, 32, 32, 3)))


# --- streaming ------------------------------------------------------------------------------------------------


def test_stream_finds_a_fault_where_it_starts(run_of_60):
    onset = 24
    stamped, stamp = stamps.stamp_systematic_defect(run_of_60, "scratch", seed=3, start=onset)
    results = list(rootcause.stream_common_defects(iter(stamped), window=30, stride=3))
    assert [r.start for r in results] == list(range(0, 31, 3))
    for result in results:
        carriers = max(0, result.stop - onset)
        if carriers <= 8:
            assert not result.verdict, result.summary()
        if carriers >= 16:  # more than half the window
            assert result.verdict, result.summary()
        if carriers >= 20:
            assert metrics.iou(result.mask, stamp) >= 0.5
    first = rootcause.first_detection(results)
    assert 9 <= first.stop - onset <= 16  # about half the window carries the fault when it first shows
    assert first.onset == onset
    assert np.all(first.support[onset - first.start :] > 0.5)
    assert np.all(np.abs(first.support[: onset - first.start]) < 0.5)


def test_stream_covers_the_end_and_rejects_bad_sequences(run_of_60):
    crops = run_of_60[:, :64, :64]
    starts = [r.start for r in rootcause.stream_common_defects(crops[:40], window=10, stride=7)]
    assert starts == [0, 7, 14, 21, 28, 30]  # the last window is flush with the end
    with pytest.raises(DataonomyError, match="--window 30 needs at least 30 images, got 12"):
        list(rootcause.stream_common_defects(crops[:12], window=30))
    mixed = [*crops[:5], run_of_60[5, :32, :64]]
    with pytest.raises(DataonomyError, match=r"image 5: size \(32, 64\) differs from image 0 \(64, 64\)"):
        list(rootcause.stream_common_defects(mixed, window=3))
    with pytest.raises(DataonomyError, match="--stride"):
        list(rootcause.stream_common_defects(crops, window=10, stride=0))


def test_torch_path_gives_the_same_answer(defective_window, monkeypatch):
    # On a GPU the same steps run on torch tensors; force that path on the CPU to check it against numpy.
    stamped, _ = stamps.stamp_systematic_defect(defective_window[:12, :256, :256], "blot", seed=2, start=4)
    expected = rootcause.find_common_defects(stamped)
    monkeypatch.setattr(rootcause, "_on_cpu", lambda device: False)
    gx, _ = rootcause.image_gradients(stamped[:2], device="cpu")
    assert isinstance(gx, torch.Tensor)
    result = rootcause.find_common_defects(torch.from_numpy(stamped), device="cpu")
    np.testing.assert_allclose(result.map, expected.map, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(result.mask, expected.mask)
    np.testing.assert_allclose(result.support, expected.support, rtol=1e-4)
    assert result.verdict and result.onset == expected.onset == 4
    streamed = list(rootcause.stream_common_defects(torch.from_numpy(stamped), window=12, device="cpu"))
    np.testing.assert_array_equal(streamed[0].mask, expected.mask)


def test_open_edges_survive_the_erosion():
    # A step edge whose outline is not closed marks a two-pixel band: too thin to erode, kept as it is.
    defect_map = np.random.default_rng(1).normal(1.0, 0.1, (80, 80))
    defect_map[30:32, 10:70] = 10
    mask, _ = rootcause.common_defect_mask(defect_map, z_threshold=5, min_area=20)
    band = np.zeros_like(mask)
    band[30:32, 10:70] = True
    np.testing.assert_array_equal(mask, band)
