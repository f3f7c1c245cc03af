"""The synthetic DAGM target and source pool: read back by the real readers, seeded, separable,
with detectable defects confined to their ellipses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataonomy.cli import app as dataonomy_app
from dataonomy.cli_utils import run_app
from dataonomy.datasets import DAGM, ImageNet, Sampling, get_dataset
from dataonomy.datasets.dagm import Ellipse, parse_labels_txt, rasterize_ellipse
from dataonomy.datasets.synthetic import (
    DAGM_TEXTURES,
    SOURCE_CLASSES,
    Ksdd2Layout,
    KsddLayout,
    Rendering,
    bandpass_noise,
    ellipse_frame,
    kolektor_layout,
    labels_txt,
    make_synthetic_dagm,
    make_synthetic_kolektor,
    make_synthetic_source,
    render_dagm_class,
    render_source_class,
)
from dataonomy.errors import DataonomyError
from dataonomy.wordnet import load_wordnet


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synthetic_dagm(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dagm") / "dagm"
    return make_synthetic_dagm(
        out, classes=10, images_per_split=12, defect_fraction=0.25, rendering=Rendering(size=64, seed=3)
    )


@pytest.fixture(scope="module")
def synthetic_source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("source") / "pool"
    return make_synthetic_source(out, images_per_class=3, size=48, seed=5)


# --- DAGM ---------------------------------------------------------------------------------------


def test_dagm_reader_reads_synthetic_dagm(synthetic_dagm):
    ds = DAGM(synthetic_dagm)
    assert len(ds) == 10 * 2 * 12
    summary = ds.summary()
    assert summary["per_class"] == {f"Class{c}": 24 for c in range(1, 11)}
    assert summary["defective"] == summary["masks"] == 10 * 2 * 3  # round(0.25 * 12) per split
    for split in ("test", "trainval"):
        part = DAGM(synthetic_dagm, split=split)
        assert len(part) == 120 and sum(s.defect for s in part.samples) == 30
    # Test is numbered 0001..0012 and Train 0013..0024, as in the Kaggle copy.
    assert sorted(p.name for p in (synthetic_dagm / "Class3" / "Test").glob("*.PNG"))[0] == "0001.PNG"
    assert sorted(p.name for p in (synthetic_dagm / "Class3" / "Train").glob("*.PNG"))[-1] == "0024.PNG"
    ellipses = json.loads((synthetic_dagm / "synthetic.json").read_text())["ellipses"]
    assert len(ellipses) == 60
    for i, s in enumerate(ds.samples):
        image = Image.open(s.path)
        assert image.mode == "L" and image.size == (64, 64)
        mask = ds.mask(i)
        assert mask.shape == (64, 64)
        key = f"{s.label}/{s.path.parent.name}/{s.path.name}"
        if s.defect:
            assert s.mask.name == s.path.stem + "_label.PNG"
            assert set(np.unique(np.asarray(Image.open(s.mask)))) == {0, 255}
            np.testing.assert_array_equal(mask, rasterize_ellipse(64, 64, Ellipse(*ellipses[key])))
        else:
            assert key not in ellipses and not mask.any()


def test_dagm_labels_txt_matches_the_real_format(shared_data, synthetic_dagm):
    real = (shared_data / "dagm-labels" / "Class7" / "Train" / "Label" / "Labels.txt").read_bytes()
    ours = (synthetic_dagm / "Class7" / "Train" / "Label" / "Labels.txt").read_bytes()
    real_lines, our_lines = real.split(b"\r\n"), ours.split(b"\r\n")
    assert real_lines[0] == our_lines[0] == b"1" and real_lines[-1] == our_lines[-1] == b""
    assert b"\n" not in b"".join(our_lines)  # CRLF only

    def shape(line: bytes) -> tuple:
        parts = line.split(b"\t")
        return parts[1], len(parts), parts[-1] == b""

    # Same columns, flags and trailing tabs as the real file, row kind by row kind.
    assert {shape(line) for line in our_lines[1:-1]} == {shape(line) for line in real_lines[1:-1]}
    row = labels_txt([("0042", True), ("0043", False)])
    assert row == "1\r\n0042\t1\t0042.PNG\t0\t0042_label.PNG\r\n0043\t0\t0043.PNG\t0\t0\t\r\n"
    path = synthetic_dagm / "Class7" / "Train" / "Label" / "Labels.txt"
    assert [r.id for r in parse_labels_txt(path)] == [f"{i:04d}" for i in range(13, 25)]


def test_dagm_is_deterministic_for_a_seed(tmp_path):
    kwargs = {"classes": [2, 9], "images_per_split": 5, "defect_fraction": 0.4}
    a = _files(make_synthetic_dagm(tmp_path / "a", rendering=Rendering(size=48, seed=1), **kwargs))
    b = _files(make_synthetic_dagm(tmp_path / "b", rendering=Rendering(size=48, seed=1), **kwargs))
    c = _files(make_synthetic_dagm(tmp_path / "c", rendering=Rendering(size=48, seed=2), **kwargs))
    assert a == b
    images = [k for k in a if k.endswith(".PNG") and "Label" not in k]
    assert all(a[k] != c[k] for k in images)
    # Rendering in chunks gives the same images as one batch: an image depends on its index only.
    whole = render_dagm_class(5, 6, Rendering(size=48, seed=1), defective=[1, 0, 0, 1, 0, 1])
    tail = render_dagm_class(5, 3, Rendering(size=48, seed=1), start=3, defective=[1, 0, 1])
    np.testing.assert_array_equal(whole.images[3:], tail.images)


def test_dagm_defects_are_inside_the_ellipse_and_visible():
    for number in range(1, 11):
        batch = render_dagm_class(number, 8, Rendering(size=128, seed=0), defective=np.ones(8, bool))
        diff = np.abs(batch.images.astype(np.float32) - batch.clean)
        for i, e in enumerate(batch.ellipses):
            mask = rasterize_ellipse(128, 128, e)
            assert diff[i][~mask].max() == 0, f"Class{number}: defect outside its ellipse"
            # Clearly visible: several gray levels on average over the whole (weak, generous) ellipse.
            assert diff[i][mask].mean() > 4.0, f"Class{number} ({DAGM_TEXTURES[number - 1].defect}) too faint"
        # Even in the smallest images every defect changes some pixels, and only inside its ellipse.
        small = render_dagm_class(number, 8, Rendering(size=32, seed=0), defective=np.ones(8, bool))
        for i, e in enumerate(small.ellipses):
            changed = small.images[i] != small.clean[i]
            assert changed.any() and not changed[~rasterize_ellipse(32, 32, e)].any()
            assert e.semi_minor <= e.semi_major
        # Defect-free images are their own clean rendering.
        clean = render_dagm_class(number, 8, Rendering(size=128, seed=0))
        np.testing.assert_array_equal(clean.images, clean.clean)
        np.testing.assert_array_equal(clean.images, batch.clean)


def test_dagm_severity_scales_the_defects():
    def strength(number: int, severity: float) -> float:
        rendering = Rendering(size=96, seed=1, severity=severity)
        batch = render_dagm_class(number, 6, rendering, defective=np.ones(6, bool))
        diff = np.abs(batch.images.astype(np.float32) - batch.clean)
        return float(
            np.mean([diff[i][rasterize_ellipse(96, 96, e)].mean() for i, e in enumerate(batch.ellipses)])
        )

    for number in (1, 2, 5, 6, 7):  # smudge, scratch, frequency, orientation, sharp-rimmed stain
        weak, normal, strong = (
            strength(number, 0.4),
            strength(number, 1.0),
            strength(number, 1.0 if number == 6 else 2.0),
        )
        assert weak < normal <= strong, (number, weak, normal, strong)
    # Same images and ellipses whatever the severity: only the defect changes.
    a = render_dagm_class(3, 4, Rendering(size=64, seed=2, severity=0.5), defective=np.ones(4, bool))
    b = render_dagm_class(3, 4, Rendering(size=64, seed=2, severity=1.5), defective=np.ones(4, bool))
    assert a.ellipses == b.ellipses
    np.testing.assert_array_equal(a.clean, b.clean)


def test_dagm_explicit_ellipses_place_a_recurring_defect():
    e = Ellipse(20.0, 6.0, 0.4, 64.0, 64.0)
    batch = render_dagm_class(2, 4, Rendering(size=128, seed=0), ellipses=[e, None, e, e])
    assert [x is not None for x in batch.ellipses] == [True, False, True, True]
    changed = batch.images != batch.clean
    assert not changed[1].any()
    assert all(changed[i].any() and not changed[i][~rasterize_ellipse(128, 128, e)].any() for i in (0, 2, 3))
    u, v = ellipse_frame(128, [e])
    np.testing.assert_array_equal(u[0] ** 2 + v[0] ** 2 <= 1, rasterize_ellipse(128, 128, e))


def _spectral_features(images: np.ndarray) -> np.ndarray:
    """Simple, backbone-free image statistics: log FFT energy in radial x angular bins, plus
    mean and standard deviation per channel."""
    gray = images.mean(axis=-1) if images.ndim == 4 else images.astype(np.float32)
    n, h, w = gray.shape
    power = np.abs(np.fft.fft2(gray - gray.mean(axis=(1, 2), keepdims=True))) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")
    radius, angle = np.hypot(fx, fy), np.mod(np.arctan2(fy, fx), np.pi)
    r_bin = np.clip(np.log2(np.maximum(radius, 1)).astype(int), 0, 5)
    a_bin = (angle / np.pi * 4).astype(int) % 4
    bins = (r_bin * 4 + a_bin).ravel()
    energy = np.stack([np.bincount(bins, weights=p.ravel(), minlength=24) for p in power])
    colour = images.reshape(n, -1, images.shape[-1] if images.ndim == 4 else 1)
    return np.concatenate([np.log1p(energy), colour.mean(1) / 32, colour.std(1) / 16], axis=1)


def _nearest_mean_accuracy(features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    mu, sd = features[train].mean(0), features[train].std(0) + 1e-6
    z = (features - mu) / sd
    classes = np.unique(labels)
    means = np.stack([z[train & (labels == c)].mean(0) for c in classes])
    predicted = classes[np.argmin(((z[~train, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    return float((predicted == labels[~train]).mean())


def test_dagm_texture_classes_are_separable():
    rendering = Rendering(size=64, seed=4)
    images = np.concatenate([render_dagm_class(c, 16, rendering).images for c in range(1, 11)])
    labels = np.repeat(np.arange(10), 16)
    train = np.tile(np.arange(16) < 8, 10)
    assert _nearest_mean_accuracy(_spectral_features(images), labels, train) >= 0.8  # chance: 0.1


def test_dagm_bad_options(tmp_path):
    for kwargs, message in (
        ({"classes": 11}, "--classes 11"),
        ({"classes": ["Class0"]}, "--classes 0"),
        ({"classes": ["x"]}, "--classes 'x'"),
        ({"classes": [1, 1]}, "listed twice"),
        ({"images_per_split": 0}, "--images-per-split"),
        ({"defect_fraction": 1.5}, "--defect-fraction"),
    ):
        with pytest.raises(DataonomyError, match=message):
            make_synthetic_dagm(tmp_path / "x", **kwargs)
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
    for kwargs, message in (
        ({"size": 16}, "--size 16: must be at least 32 pixels"),
        ({"seed": -1}, "--seed -1: must be a non-negative integer"),
        ({"severity": 0}, r"--severity 0: must be in \(0, 4\]"),
        ({"severity": 4.5}, "--severity 4.5"),
    ):
        with pytest.raises(DataonomyError, match=message):
            Rendering(**kwargs)


def test_kolektor_layouts_from_the_flat_options(tmp_path):
    assert kolektor_layout("ksdd") == KsddLayout(items=4, parts=8)
    assert kolektor_layout("ksdd", parts=2) == KsddLayout(items=4, parts=2)
    assert kolektor_layout("ksdd2") == Ksdd2Layout(images_per_split=12)
    assert kolektor_layout("ksdd2", images_per_split=3) == Ksdd2Layout(images_per_split=3)
    for args, message in (
        (("ksdd3",), "--layout 'ksdd3': must be one of ksdd, ksdd2"),
        (("ksdd", None, None, 3), "--images-per-split applies to --layout ksdd2"),
        (("ksdd2", 2), "--items applies to --layout ksdd"),
        (("ksdd2", None, 2), "--parts applies to --layout ksdd"),
        (("ksdd", 100), "--items 100: must be 1-99"),
        (("ksdd", None, 0), "--parts 0: must be at least 1"),
        (("ksdd2", None, None, 50000), "--images-per-split 50000: must be 1-49999"),
    ):
        with pytest.raises(DataonomyError, match=message):
            kolektor_layout(*args)
    with pytest.raises(TypeError, match="KsddLayout or a Ksdd2Layout"):
        make_synthetic_kolektor(tmp_path / "k", "ksdd2")
    assert not (tmp_path / "k").exists()


# --- source pool --------------------------------------------------------------------------------


def test_source_classes_are_real_wordnet_synsets():
    wordnet = load_wordnet()
    assert 24 <= len(SOURCE_CLASSES) <= 32
    assert (
        len({c.wnid for c in SOURCE_CLASSES}) == len({c.name for c in SOURCE_CLASSES}) == len(SOURCE_CLASSES)
    )
    for c in SOURCE_CLASSES:
        assert c.wnid in wordnet
        assert wordnet.depth(c.wnid) > 0  # reaches the root
        assert c.name.split()[0] in wordnet.names[c.wnid], (c.wnid, c.name, wordnet.names[c.wnid])
    # The pool spans several WordNet branches, so diversity constraints have something to limit.
    assert len({frozenset(wordnet.ancestors_at_depth(c.wnid, 3)) for c in SOURCE_CLASSES}) >= 5


def test_imagenet_reader_reads_the_source_pool_with_names(synthetic_source):
    ds = get_dataset("imagenet", synthetic_source)
    assert len(ds.classes) == len(SOURCE_CLASSES) and len(ds) == 3 * len(SOURCE_CLASSES)
    assert ds.classes == sorted(c.wnid for c in SOURCE_CLASSES)
    names = dict(zip(ds.classes, ds.class_names, strict=True))
    assert names["n14974264"] == "paper" and names["n04950952"] == "wood grain"
    assert ds.imagenet_indices[ds.classes.index("n04525038")] == 885  # velvet is an ImageNet-1k class
    image, target = ds[0]
    assert image.mode == "RGB" and image.size == (48, 48) and ds.classes[target] == ds.samples[0].label
    assert ds.samples[0].path.name == f"{ds.samples[0].label}_0.JPEG"
    sub = ImageNet(synthetic_source, classes=["n14698884"], sampling=Sampling(images_per_class=2, seed=1))
    assert len(sub) == 2


def test_source_is_deterministic_and_selectable(tmp_path):
    a = _files(
        make_synthetic_source(tmp_path / "a", classes=["paper", "n03978300"], images_per_class=2, size=40)
    )
    b = _files(
        make_synthetic_source(tmp_path / "b", classes=["paper", "n03978300"], images_per_class=2, size=40)
    )
    c = _files(
        make_synthetic_source(
            tmp_path / "c", classes=["paper", "n03978300"], images_per_class=2, size=40, seed=1
        )
    )
    assert a == b
    jpegs = [k for k in a if k.endswith(".JPEG")]
    assert len(jpegs) == 4 and all(a[k] != c[k] for k in jpegs)
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir()) == ["n03978300", "n14974264"]
    first = make_synthetic_source(tmp_path / "d", classes=3, images_per_class=1, size=40)
    assert len([p for p in first.iterdir() if p.is_dir()]) == 3
    with pytest.raises(DataonomyError, match="--classes 'velvett'"):
        make_synthetic_source(tmp_path / "e", classes=["velvett"])
    with pytest.raises(DataonomyError, match="--images-per-class 0"):
        make_synthetic_source(tmp_path / "e", images_per_class=0)


def test_source_classes_are_separable_and_vary_within_class():
    per_class = 12
    images = np.concatenate([render_source_class(c.wnid, per_class, 64, seed=2) for c in SOURCE_CLASSES])
    labels = np.repeat(np.arange(len(SOURCE_CLASSES)), per_class)
    train = np.tile(np.arange(per_class) < per_class // 2, len(SOURCE_CLASSES))
    accuracy = _nearest_mean_accuracy(_spectral_features(images.astype(np.float32)), labels, train)
    assert accuracy >= 0.6  # chance: 1/30
    # Images vary within each class (random phase, scale, rotation, colour).
    for k in range(len(SOURCE_CLASSES)):
        block = images[k * per_class : (k + 1) * per_class].astype(np.float32)
        assert np.abs(block[1:] - block[:-1]).mean() > 5, SOURCE_CLASSES[k].name


def test_material_classes_look_more_like_dagm_than_shapes_do():
    """Gray-level texture statistics: the DAGM-like materials (paper, concrete, sand, crack) sit
    nearer to the synthetic DAGM textures than shapes and bold designs, which is what affinity-based
    selection should find."""
    dagm = np.concatenate([render_dagm_class(c, 6, Rendering(size=64, seed=0)).images for c in range(1, 11)])
    dagm_features = _spectral_features(np.repeat(dagm[..., None], 3, axis=-1).astype(np.float32))
    centre = dagm_features.mean(0)

    def distance(name: str) -> float:
        f = _spectral_features(render_source_class(name, 6, 64, seed=0).astype(np.float32))
        return float(np.linalg.norm(f.mean(0)[:24] - centre[:24]))  # texture energy, not colour

    materials = np.mean([distance(n) for n in ("paper", "concrete", "sand", "crack")])
    shapes = np.mean([distance(n) for n in ("circle", "triangle", "polka dot", "checkerboard")])
    assert materials < shapes


def test_bandpass_noise_orientation():
    white = np.random.default_rng(0).standard_normal((2, 64, 64)).astype(np.float32)
    # Fibres running vertically (orientation pi/2) vary along x, hardly along y.
    fibres = bandpass_noise(white, 12.0, 0.3, np.pi / 2, 0.05)
    along_x = np.abs(np.diff(fibres, axis=2)).mean()
    along_y = np.abs(np.diff(fibres, axis=1)).mean()
    assert along_x > 3 * along_y
    np.testing.assert_allclose(fibres.std(axis=(1, 2)), 1.0, rtol=1e-4)


# --- folders and the command line ---------------------------------------------------------------


def test_output_folder_is_atomic_and_not_overwritten(tmp_path):
    out = tmp_path / "pool"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataonomyError, match="not empty"):
        make_synthetic_source(out, classes=1, images_per_class=1, size=32)
    assert (out / "keep.txt").read_text() == "mine"
    # A failure while generating leaves the old folder as it was and no partial folder.
    with pytest.raises(DataonomyError):
        make_synthetic_source(out, classes=["circle", "nope"], images_per_class=1, size=32, overwrite=True)
    assert (out / "keep.txt").exists() and not (tmp_path / "pool.partial").exists()
    make_synthetic_source(out, classes=1, images_per_class=1, size=32, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "LOC_synset_mapping.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool"]
    # An empty folder is fine; a leftover <out>.partial from an interrupted run is cleared.
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "empty.partial").mkdir()
    (tmp_path / "empty.partial" / "junk").write_text("x")
    make_synthetic_dagm(empty, classes=1, images_per_split=2, rendering=Rendering(size=32))
    assert not (tmp_path / "empty.partial").exists() and len(DAGM(empty)) == 4


def test_cli_synth_commands(tmp_path, capsys):
    out = tmp_path / "dagm"
    argv = ["synth", "dagm", "--out", str(out), "--classes", "1,4", "--images-per-split", "4", "--size", "32"]
    assert run_app(dataonomy_app, argv) == 0
    assert sorted(DAGM(out).summary()["per_class"]) == ["Class1", "Class4"]
    assert run_app(dataonomy_app, argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert run_app(dataonomy_app, [*argv, "--overwrite", "--seed", "7"]) == 0
    pool = tmp_path / "pool"
    argv = [
        "synth",
        "source",
        "--out",
        str(pool),
        "--classes",
        "2",
        "--images-per-class",
        "2",
        "--size",
        "32",
    ]
    assert run_app(dataonomy_app, argv) == 0
    assert len(ImageNet(pool)) == 4
    assert run_app(dataonomy_app, ["synth", "dagm", "--out", str(tmp_path / "z"), "--classes", "12"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --classes 12") and err.count("\n") == 1


def test_cli_synth_options_have_help(capsys):
    import typer.main

    group = typer.main.get_command(dataonomy_app).commands["synth"]
    assert set(group.commands) == {"dagm", "kolektor", "mvtec", "source"}
    for name, cmd in group.commands.items():
        assert cmd.get_short_help_str().strip()
        for param in cmd.params:
            assert param.name == "help" or (param.help or "").strip(), f"synth {name} --{param.name}"
        assert run_app(dataonomy_app, ["synth", name, "--help"]) == 0
        assert "--out" in capsys.readouterr().out
