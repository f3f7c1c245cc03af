"""The defect-dataset readers (mvtec, kolektor, pairs), the folder reader's mask pairing, the mask
binarisation rule, and the group/split fields: on synthetic trees and on real DAGM Class1 images and
masks copied into each layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataonomy.cli import app as dataonomy_app
from dataonomy.cli_utils import run_app
from dataonomy.datasets import (
    DAGM,
    ImageFolderDataset,
    ImageMaskPairs,
    KolektorSDD,
    MVTecAD,
    Sample,
    Sampling,
    binarize_mask,
    get_dataset,
    list_datasets,
    load_mask,
)
from dataonomy.datasets.dagm import DAGMSample, Ellipse, rasterize_ellipse
from dataonomy.datasets.pairs import AnomalibFolders, pair_masks_in_folder
from dataonomy.datasets.synthetic import (
    Ksdd2Layout,
    KsddLayout,
    Rendering,
    make_synthetic_dagm,
    make_synthetic_kolektor,
    make_synthetic_mvtec,
)
from dataonomy.errors import BadImageError, DataonomyError

# --- shared material --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(dagm_class1_test):
    """Six defect-free and four defective real DAGM Class1 images, and each defective one's mask as
    DAGM's own rule reads it (a 0/255 ellipse, > 127)."""
    ds = DAGM(dagm_class1_test)
    clean = [s for s in ds.samples if not s.defect][:6]
    bad = [s for s in ds.samples if s.defect][:4]
    truth = {s.path.stem: np.asarray(Image.open(s.mask).convert("L")) > 127 for s in bad}
    assert all(0 < m.sum() < m.size for m in truth.values())
    return clean, bad, truth


@pytest.fixture(scope="module")
def synthetic_mvtec(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mvtec") / "mvtec"
    return make_synthetic_mvtec(
        out, classes=[1, 2], train_images=4, test_good=2, test_defective=3, rendering=Rendering(size=48)
    )


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_app(dataonomy_app, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def _one_line_error(argv: list[str], capsys, *needles: str) -> str:
    code, _, err = _cli(argv, capsys)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _zeros_like(image: Path, dst: Path) -> Path:
    w, h = Image.open(image).size
    Image.fromarray(np.zeros((h, w), np.uint8)).save(dst)
    return dst


def _ellipse_masks(root: Path) -> dict[str, np.ndarray]:
    record = json.loads((root / "synthetic.json").read_text())
    size = record["parameters"]["size"]
    return {k: rasterize_ellipse(size, size, Ellipse(*v)) for k, v in record["ellipses"].items()}


# --- Sample fields and the mask rule ------------------------------------------------------------------


def test_readers_are_registered(capsys):
    names = {"dagm", "folder", "imagenet", "kolektor", "mvtec", "pairs"}
    assert names <= set(list_datasets())
    code, out, _ = _cli(["datasets"], capsys)
    assert code == 0 and names <= set(out.split())


def test_sample_group_and_split_default_to_none():
    s = Sample(Path("a.png"), "x", 0)
    assert s.group is None and s.split is None and s.defect is None and s.mask is None
    d = DAGMSample(Path("a.png"), "Class1", 1, True, Path("m.png"), ellipse=Ellipse(1, 1, 0, 2, 2))
    assert d.group is None and d.ellipse is not None


def test_binarize_mask_rule(tmp_path):
    # At most 127: any non-zero pixel (0/1 masks, class indices, dim colours).
    np.testing.assert_array_equal(binarize_mask(np.array([0, 1, 1, 0])), [False, True, True, False])
    np.testing.assert_array_equal(binarize_mask(np.array([0, 2, 3, 100])), [False, True, True, True])
    # 128 or more: above 127 (0/255 masks; anti-aliased edges cut at half).
    np.testing.assert_array_equal(binarize_mask(np.array([0, 100, 127, 128, 255])), [0, 0, 0, 1, 1])
    assert not binarize_mask(np.zeros((3, 3), np.uint8)).any()
    # Files: 0/1 gray, a red-on-black colour mask, a 1-bit mask, a 16-bit mask.
    a = np.zeros((4, 6), np.uint8)
    a[1:3, 2:5] = 1
    Image.fromarray(a).save(tmp_path / "01.png")
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[1:3, 2:5, 0] = 255
    Image.fromarray(rgb, "RGB").save(tmp_path / "red.png")
    Image.fromarray(a.astype(bool)).save(tmp_path / "bits.png")
    Image.fromarray(a.astype(np.uint16) * 65535).save(tmp_path / "16.png")
    for name in ("01.png", "red.png", "bits.png", "16.png"):
        np.testing.assert_array_equal(load_mask(tmp_path / name, (6, 4)), a.astype(bool), err_msg=name)
    with pytest.raises(BadImageError, match=r"mask is 6x4, image is 4x6"):
        load_mask(tmp_path / "01.png", (4, 6))


def test_dagm_masks_unchanged_and_group_split(dagm_class1_test, real, tmp_path):
    ds = DAGM(dagm_class1_test)
    assert {(s.group, s.split) for s in ds.samples} == {("Class1", "test")}
    _, bad, truth = real
    index = {s.path: i for i, s in enumerate(ds.samples)}
    for s in bad:
        np.testing.assert_array_equal(ds.mask(index[s.path]), truth[s.path.stem])
    synthetic = make_synthetic_dagm(
        tmp_path / "d", classes=[1, 3], images_per_split=2, rendering=Rendering(size=32)
    )
    ds = DAGM(synthetic)
    assert {(s.label, s.group, s.split) for s in ds.samples} == {
        (c, c, split) for c in ("Class1", "Class3") for split in ("train", "test")
    }
    assert all(s.split == "train" for s in DAGM(synthetic, split="trainval").samples)
    assert all(s.split == "test" for s in DAGM(synthetic / "Class3" / "Test").samples)
    summary = DAGM(synthetic).summary()
    assert summary["per_split"] == {"test": 4, "train": 4}
    assert set(summary["per_group"]) == {"Class1", "Class3"}


# --- MVTec AD -----------------------------------------------------------------------------------------


def test_mvtec_reads_the_synthetic_tree(synthetic_mvtec):
    ds = MVTecAD(synthetic_mvtec)
    assert ds.categories == ["crossed_fine_grain", "vertical_fibres"] and ds.classes == ["ok", "defect"]
    assert len(ds) == 2 * (4 + 2 + 3)
    summary = ds.summary()
    assert summary["defective"] == summary["masks"] == 6
    assert summary["per_class"] == {"crossed_fine_grain": 9, "vertical_fibres": 9}
    assert summary["per_split"] == {"train": 8, "test": 10}
    assert summary["per_group"] == {
        "crossed_fine_grain/good": {"images": 6, "defective": 0},
        "crossed_fine_grain/smudge": {"images": 3, "defective": 3},
        "vertical_fibres/good": {"images": 6, "defective": 0},
        "vertical_fibres/scratch": {"images": 3, "defective": 3},
    }
    ellipses = _ellipse_masks(synthetic_mvtec)
    for i, s in enumerate(ds.samples):
        kind = s.path.parent.name
        assert s.group == f"{s.label}/{kind}" and s.split == s.path.parent.parent.name
        assert s.target == int(s.defect) and s.defect == (kind != "good")
        if s.defect:
            assert s.mask == synthetic_mvtec / s.label / "ground_truth" / kind / f"{s.path.stem}_mask.png"
            np.testing.assert_array_equal(ds.mask(i), ellipses[f"{s.label}/test/{kind}/{s.path.name}"])
        else:
            assert s.mask is None and not ds.mask(i).any()
    image, target = ds[0]
    assert image.mode == "RGB" and image.size == (48, 48) and target == 0
    # One category folder as root; a category filter; one split; seeded sampling.
    one = MVTecAD(synthetic_mvtec / "vertical_fibres", split="test")
    assert len(one) == 5 and {s.split for s in one.samples} == {"test"}
    assert [s.path for s in one.samples] == [
        s.path for s in ds.samples if s.label == "vertical_fibres" and s.split == "test"
    ]
    assert len(MVTecAD(synthetic_mvtec, classes=["vertical_fibres"])) == 9
    assert len(MVTecAD(synthetic_mvtec, classes=["crossed_fine_grain"], split="train")) == 4
    a = MVTecAD(synthetic_mvtec, sampling=Sampling(images_per_class=5, seed=1))
    assert len(a) == 10 and [s.path for s in a.samples] == [
        s.path for s in get_dataset("mvtec", synthetic_mvtec, images_per_class=5, seed=1).samples
    ]
    for kwargs, message in (
        ({"split": "val"}, "--split 'val'"),
        ({"classes": ["bottle"]}, "--classes: bottle not found"),
        ({"categories": ["a"]}, "--categories is not an option of the 'mvtec' reader"),
    ):
        with pytest.raises(DataonomyError, match=message):
            get_dataset("mvtec", synthetic_mvtec, **kwargs)


def _mvtec_from_real(root: Path, real) -> Path:
    clean, bad, _ = real
    category = root / "class1"
    for folder in ("train/good", "test/good", "test/defect", "ground_truth/defect"):
        (category / folder).mkdir(parents=True)
    for s in clean[:3]:
        shutil.copy(s.path, category / "train" / "good" / s.path.name)
    for s in clean[3:]:
        shutil.copy(s.path, category / "test" / "good" / s.path.name)
    for s in bad:
        shutil.copy(s.path, category / "test" / "defect" / s.path.name)
        shutil.copy(s.mask, category / "ground_truth" / "defect" / f"{s.path.stem}_mask.png")
    return category


def test_mvtec_on_real_dagm_images(tmp_path, real):
    _, _, truth = real
    category = _mvtec_from_real(tmp_path / "mv", real)
    ds = get_dataset("mvtec", tmp_path / "mv")
    assert len(ds) == 10 and sum(s.defect for s in ds.samples) == 4
    assert ds.summary()["per_split"] == {"train": 3, "test": 7}
    for i, s in enumerate(ds.samples):
        assert s.label == "class1" and s.group == f"class1/{s.path.parent.name}"
        if s.defect:
            assert s.mask == category / "ground_truth" / "defect" / f"{s.path.stem}_mask.png"
            np.testing.assert_array_equal(ds.mask(i), truth[s.path.stem])
            np.testing.assert_array_equal(load_mask(s.mask), truth[s.path.stem])


def test_mvtec_bad_trees(tmp_path, real, capsys):
    category = _mvtec_from_real(tmp_path / "mv", real)
    gt = category / "ground_truth" / "defect"
    argv = ["inspect", "--dataset", "mvtec", "--root", str(category)]
    masks = sorted(gt.iterdir())
    # A defective image without its mask.
    masks[0].rename(tmp_path / "kept.png")
    image = category / "test" / "defect" / (masks[0].name.replace("_mask.png", ".PNG"))
    _one_line_error(argv, capsys, str(image), "defective image without a mask", str(masks[0]))
    # A mask without its image.
    shutil.copy(tmp_path / "kept.png", gt / "9999_mask.png")
    (tmp_path / "kept.png").rename(masks[0])
    _one_line_error(argv, capsys, str(gt / "9999_mask.png"), "mask without an image")
    (gt / "9999_mask.png").unlink()
    # A mask of another size.
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(masks[1])
    _one_line_error(argv, capsys, str(masks[1]), "mask is 256x256", "512x512")
    # An unreadable mask.
    masks[1].write_bytes(b"not a png")
    _one_line_error(argv, capsys, str(masks[1]), "not an image file")
    # Masks of a type with no test folder; defects in train; a root that is no MVTec tree.
    masks[1].unlink()
    shutil.copy(masks[2], masks[1])
    (category / "ground_truth" / "hole").mkdir()
    shutil.copy(masks[2], category / "ground_truth" / "hole" / "0001_mask.png")
    _one_line_error(argv, capsys, "hole/0001_mask.png", "mask without an image")
    shutil.rmtree(category / "ground_truth" / "hole")
    assert len(MVTecAD(category)) == 10
    (category / "train" / "defect").mkdir()
    _one_line_error(argv, capsys, str(category / "train" / "defect"), "good images only")
    _one_line_error(
        ["inspect", "--dataset", "mvtec", "--root", str(category / "test")], capsys, "no MVTec AD category"
    )


# --- Kolektor -----------------------------------------------------------------------------------------


def test_kolektor_reads_synthetic_ksdd_and_ksdd2(tmp_path):
    k1 = make_synthetic_kolektor(
        tmp_path / "k1", KsddLayout(items=3, parts=4), rendering=Rendering(size=48, seed=2)
    )
    ds = KolektorSDD(k1)
    assert ds.layout == "KolektorSDD" and len(ds) == 12 and ds.classes == ["ok", "defect"]
    assert sum(s.defect for s in ds.samples) == 3  # round(0.25 * 12)
    assert [s.group for s in ds.samples] == [f"kos0{k}" for k in (1, 2, 3) for _ in range(4)]
    assert {s.label for s in ds.samples} == {"KolektorSDD"} and {s.split for s in ds.samples} == {None}
    ellipses = _ellipse_masks(k1)
    for i, s in enumerate(ds.samples):
        assert s.path.suffix == ".jpg" and s.mask == s.path.with_name(f"{s.path.stem}_label.bmp")
        key = f"{s.group}/{s.path.name}"
        assert s.defect == (key in ellipses) and s.target == int(s.defect)
        if s.defect:
            np.testing.assert_array_equal(ds.mask(i), ellipses[key])
        else:
            assert not ds.mask(i).any()
    assert len(KolektorSDD(k1 / "kos02")) == 4
    with pytest.raises(DataonomyError, match="KolektorSDD has no train/test split"):
        KolektorSDD(k1, split="test")

    k2 = make_synthetic_kolektor(
        tmp_path / "k2", Ksdd2Layout(images_per_split=5), rendering=Rendering(size=48, seed=2)
    )
    ds = KolektorSDD(k2)
    assert ds.layout == "KolektorSDD2" and len(ds) == 10
    assert ds.summary()["per_split"] == {"train": 5, "test": 5}
    assert sum(s.defect for s in ds.samples) == 2 and {s.group for s in ds.samples} == {"KolektorSDD2"}
    ellipses = _ellipse_masks(k2)
    for i, s in enumerate(ds.samples):
        assert s.mask.name == f"{s.path.stem}_GT.png"
        key = f"{s.split}/{s.path.name}"
        assert s.defect == (key in ellipses)
        if s.defect:
            np.testing.assert_array_equal(ds.mask(i), ellipses[key])
    test = KolektorSDD(k2, split="test")
    assert len(test) == 5 and [s.path.name for s in test.samples][0] == "00005.png"
    assert len(KolektorSDD(k2 / "train")) == 5


def test_kolektor_on_real_dagm_images(tmp_path, real):
    clean, bad, truth = real
    # KolektorSDD: kos01 and kos02, five parts each (JPEG images, BMP labels; empty for clean parts).
    root = tmp_path / "ksdd"
    chosen = [*clean[:3], *bad[:2], *clean[3:], *bad[2:]]
    for k, part_samples in enumerate((chosen[:5], chosen[5:]), start=1):
        folder = root / f"kos{k:02d}"
        folder.mkdir(parents=True)
        for j, s in enumerate(part_samples):
            Image.open(s.path).save(folder / f"Part{j}.jpg", quality=95)
            if s.defect:
                Image.open(s.mask).save(folder / f"Part{j}_label.bmp")
            else:
                _zeros_like(s.path, folder / f"Part{j}_label.bmp")
    ds = get_dataset("kolektor", root)
    assert len(ds) == 10 and [s.defect for s in ds.samples] == [bool(s.defect) for s in chosen]
    assert [s.group for s in ds.samples] == ["kos01"] * 5 + ["kos02"] * 5
    for i, (s, orig) in enumerate(zip(ds.samples, chosen, strict=True)):
        assert s.mask.suffix == ".bmp"
        if orig.defect:
            np.testing.assert_array_equal(ds.mask(i), truth[orig.path.stem])
        else:
            assert not ds.mask(i).any()
    # KolektorSDD2: train and test, PNG images with _GT.png masks.
    root2 = tmp_path / "ksdd2"
    for split, part in (("train", chosen[:5]), ("test", chosen[5:])):
        (root2 / split).mkdir(parents=True)
        for s in part:
            shutil.copy(s.path, root2 / split / f"1{s.path.stem}.png")
            if s.defect:
                shutil.copy(s.mask, root2 / split / f"1{s.path.stem}_GT.png")
            else:
                _zeros_like(s.path, root2 / split / f"1{s.path.stem}_GT.png")
    ds = get_dataset("kolektor", root2)
    assert ds.layout == "KolektorSDD2" and len(ds) == 10 and sum(s.defect for s in ds.samples) == 4
    for i, s in enumerate(ds.samples):
        stem = s.path.stem[1:]
        if s.defect:
            np.testing.assert_array_equal(ds.mask(i), truth[stem])
    assert [s.split for s in ds.samples] == ["train"] * 5 + ["test"] * 5  # train's folder, then test's
    assert {s.path.stem[1:] for s in ds.samples if s.defect} == set(truth)


def test_kolektor_bad_trees(tmp_path, capsys):
    k1 = make_synthetic_kolektor(tmp_path / "k1", KsddLayout(items=1, parts=3), rendering=Rendering(size=32))
    argv = ["inspect", "--dataset", "kolektor", "--root", str(k1)]
    label = k1 / "kos01" / "Part1_label.bmp"
    label.rename(tmp_path / "label.bmp")
    _one_line_error(argv, capsys, str(k1 / "kos01" / "Part1.jpg"), "without its label")
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(label)
    _one_line_error(argv, capsys, str(label), "mask is 32x20", "32x32")
    shutil.copy(tmp_path / "label.bmp", label)
    shutil.copy(label, k1 / "kos01" / "Part7_label.bmp")
    _one_line_error(argv, capsys, str(k1 / "kos01" / "Part7_label.bmp"), "label without an image")
    (k1 / "kos01" / "Part7_label.bmp").write_bytes(b"junk")
    (k1 / "kos01" / "Part7.jpg").write_bytes(b"junk")
    _one_line_error(argv, capsys, "Part7", "not an image file")
    (tmp_path / "nothing").mkdir()
    _one_line_error(
        ["inspect", "--dataset", "kolektor", "--root", str(tmp_path / "nothing")],
        capsys,
        "neither KolektorSDD",
        "KolektorSDD2",
    )


@pytest.mark.parametrize("reader", ["kolektor", "folder", "pairs"])
def test_skip_bad_skips_a_bad_mask_that_the_reader_reads_while_listing(reader, tmp_path, capsys):
    # kolektor, folder and pairs read every mask to tell defective images from clean ones: a bad mask must be
    # skipped there under --skip-bad too, not stop the listing (and inspect names it without).
    if reader == "kolektor":
        root = make_synthetic_kolektor(
            tmp_path / "k1", KsddLayout(items=1, parts=3), rendering=Rendering(size=32)
        )
        bad = root / "kos01" / "Part1_label.bmp"
        bad.write_bytes(b"")
    else:  # folder: class folders of JPEGs with PNG masks beside them; pairs: one such folder
        root = tmp_path / "lots"
        images = root / "ok" if reader == "folder" else root
        images.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(images / f"{i}.jpg")
            Image.fromarray(np.zeros((32, 32), np.uint8)).save(images / f"{i}.png")
        bad = images / "1.png"
        bad.write_bytes(bad.read_bytes()[:40])  # a truncated mask whose header no longer reads
    argv = ["inspect", "--dataset", reader, "--root", str(root)]
    _one_line_error(argv, capsys, str(bad))
    with pytest.warns(UserWarning, match=f"skipping {bad}"):
        code, out, _ = _cli([*argv, "--skip-bad"], capsys)
    assert code == 0 and "2 images" in out


# --- pairs --------------------------------------------------------------------------------------------


def _pairs_from_real(root: Path, real, masks_dir: Path | None, suffix: str, ext: str = ".PNG") -> Path:
    clean, bad, _ = real
    root.mkdir(parents=True)
    if masks_dir is not None:
        masks_dir.mkdir(parents=True)
    for s in [*clean, *bad]:
        shutil.copy(s.path, root / s.path.name)
        if s.defect:
            shutil.copy(s.mask, (masks_dir or root) / f"{s.path.stem}{suffix}{ext}")
    return root


def test_pairs_images_and_masks_on_real_dagm(tmp_path, real, capsys):
    clean, bad, truth = real
    defective = {s.path.name for s in bad}
    for name, masks_dir, suffix, option in (
        ("separate_label", "masks", "_label", None),
        ("separate_same_stem", "m2", "", None),
        ("separate_explicit", "m3", "_GT", "_GT"),
        ("same_folder", None, "_mask", None),
    ):
        images = _pairs_from_real(
            tmp_path / name / "images", real, tmp_path / name / masks_dir if masks_dir else None, suffix
        )
        ds = ImageMaskPairs(
            images, masks=tmp_path / name / masks_dir if masks_dir else None, mask_suffix=option
        )
        assert ds.layout == "pairs" and len(ds) == 10, name
        assert {s.path.name for s in ds.samples if s.defect} == defective, name
        assert {s.label for s in ds.samples} == {"images"} and {s.group for s in ds.samples} == {"images"}
        assert {s.split for s in ds.samples} == {None}
        for i, s in enumerate(ds.samples):
            if s.defect:
                assert s.mask.name == f"{s.path.stem}{suffix}.PNG"
                np.testing.assert_array_equal(ds.mask(i), truth[s.path.stem])
            else:
                assert s.mask is None and not ds.mask(i).any()
        assert any("paired 4 masks" in n for n in ds.notes) and any(
            "6 images have no mask" in n for n in ds.notes
        )
    # An empty mask: the image is defect-free (its mask is kept).
    images = tmp_path / "separate_label" / "images"
    empty = _zeros_like(
        clean[0].path, tmp_path / "separate_label" / "masks" / f"{clean[0].path.stem}_label.PNG"
    )
    ds = ImageMaskPairs(images, masks="../masks")  # relative to root
    s = next(s for s in ds.samples if s.path.name == clean[0].path.name)
    assert s.mask == images / "../masks" / empty.name and s.defect is False
    assert sum(s.defect for s in ds.samples) == 4
    # The command line: --root IMAGES --masks MASKS.
    code, out, _ = _cli(
        ["inspect", "--dataset", "pairs", "--root", str(images), "--masks", str(images.parent / "masks")],
        capsys,
    )
    assert (
        code == 0 and "10 images in 1 classes, 4 defective, 5 masks" in out and "mask suffix '_label'" in out
    )
    # Errors: a mask without an image, a mask of another size, a folder that does not exist.
    stray = images.parent / "masks" / "9999_label.PNG"
    shutil.copy(empty, stray)
    argv = ["inspect", "--dataset", "pairs", "--root", str(images), "--masks", str(images.parent / "masks")]
    _one_line_error(argv, capsys, str(stray), "mask without an image")
    stray.unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(empty)
    _one_line_error(argv, capsys, str(empty), "mask is 8x8", "512x512")
    _one_line_error(
        ["inspect", "--dataset", "pairs", "--root", str(images), "--masks", "nope"],
        capsys,
        "--masks nope",
        "not found",
    )
    same = tmp_path / "same_folder" / "images"
    shutil.copy(same / f"{bad[0].path.stem}_mask.PNG", same / "0999_mask.PNG")
    _one_line_error(
        ["inspect", "--dataset", "pairs", "--root", str(same)], capsys, "0999_mask.PNG", "without an image"
    )


def test_pairs_anomalib_folder_layout(tmp_path, real, synthetic_mvtec, capsys):
    clean, bad, truth = real
    root = tmp_path / "data"
    for folder in ("good", "crack", "mask/crack"):
        (root / folder).mkdir(parents=True)
    for s in clean:
        shutil.copy(s.path, root / "good" / s.path.name)
    for s in bad:
        shutil.copy(s.path, root / "crack" / s.path.name)
        shutil.copy(s.mask, root / "mask" / "crack" / s.path.name)  # same stem
    ds = ImageMaskPairs(root, folders=AnomalibFolders("good", "crack", "mask/crack"))
    assert ds.layout == "anomalib" and len(ds) == 10 and sum(ds.targets) == 4
    assert [s.group for s in ds.samples] == ["data/good"] * 6 + ["data/crack"] * 4
    for i, s in enumerate(ds.samples):
        assert s.defect == (s.path.parent.name == "crack")
        if s.defect:
            assert s.mask == root / "mask" / "crack" / s.path.name
            np.testing.assert_array_equal(ds.mask(i), truth[s.path.stem])
    # The flat options (as the command line gives them) group into the same folders; mixing both is refused.
    flat = get_dataset("pairs", root, normal_dir="good", abnormal_dir="crack", mask_dir="mask/crack")
    assert [(s.path, s.defect, s.mask) for s in flat.samples] == [
        (s.path, s.defect, s.mask) for s in ds.samples
    ]
    with pytest.raises(DataonomyError, match="give normal_dir inside folders"):
        get_dataset("pairs", root, folders=AnomalibFolders(abnormal_dir="crack"), normal_dir="good")
    assert len(ImageMaskPairs(root, folders=AnomalibFolders(normal_dir="good"))) == 6
    assert all(
        s.mask is None for s in ImageMaskPairs(root, folders=AnomalibFolders(abnormal_dir="crack")).samples
    )
    # An MVTec category read as anomalib folders gives what the mvtec reader gives.
    category = synthetic_mvtec / "vertical_fibres"
    folders = ImageMaskPairs(
        category, folders=AnomalibFolders("test/good", "test/scratch", "ground_truth/scratch")
    )
    mvtec = MVTecAD(category, split="test")
    assert [(s.path, s.defect, s.mask) for s in folders.samples] == [
        (s.path, s.defect, s.mask) for s in mvtec.samples
    ]
    # The command line, and its errors.
    argv = [
        "inspect",
        "--dataset",
        "pairs",
        "--root",
        str(root),
        "--normal-dir",
        "good",
        "--abnormal-dir",
        "crack",
    ]
    code, out, _ = _cli([*argv, "--mask-dir", "mask/crack"], capsys)
    assert (
        code == 0 and "10 images in 1 classes, 4 defective, 4 masks" in out and "data/crack: 4 images" in out
    )
    (root / "mask" / "crack" / bad[0].path.name).unlink()
    _one_line_error(
        [*argv, "--mask-dir", "mask/crack"], capsys, bad[0].path.name, "defective image without a mask"
    )
    _one_line_error([*argv, "--masks", "mask/crack"], capsys, "--masks and --normal-dir")
    _one_line_error(
        ["inspect", "--dataset", "pairs", "--root", str(root), "--mask-dir", "mask"], capsys, "--mask-dir"
    )


# --- folder: masks beside their images ----------------------------------------------------------------


def test_folder_pairs_masks_beside_jpegs(tmp_path, real, capsys):
    """The issue's case: a JPEG and its PNG mask side by side are one image, not two."""
    clean, bad, truth = real
    root = tmp_path / "parts"
    for cls, samples in (("lot_a", [*clean[:3], *bad[:2]]), ("lot_b", [*clean[3:], *bad[2:]])):
        (root / cls).mkdir(parents=True)
        for s in samples:
            Image.open(s.path).save(root / cls / f"{s.path.stem}.jpg", quality=90)
            if s.defect:
                shutil.copy(s.mask, root / cls / f"{s.path.stem}.png")
            else:
                _zeros_like(s.path, root / cls / f"{s.path.stem}.png")
    (root / "lot_a" / "notes.txt").write_text("x")
    ds = ImageFolderDataset(root)
    assert len(ds) == 10 and all(s.path.suffix == ".jpg" for s in ds.samples)
    assert ds.summary()["masks"] == 10 and sum(s.defect for s in ds.samples) == 4
    assert ds.pairing == {"paired": 10, "skipped": [], "ignored": 1}
    for i, s in enumerate(ds.samples):
        assert s.mask == s.path.with_suffix(".png") and s.group == s.label
        if s.defect:
            np.testing.assert_array_equal(ds.mask(i), truth[s.path.stem])
    # defect_classes still decides when given; masks stay attached.
    flagged = ImageFolderDataset(root, defect_classes=["lot_b"])
    assert [s.defect for s in flagged.samples] == [False] * 5 + [True] * 5
    # A mask-named file without its image is skipped with a warning, never read as an image.
    shutil.copy(bad[0].mask, root / "lot_a" / "0999_label.PNG")
    with pytest.warns(UserWarning, match=r"skipped 1 mask-named file.*0999_label\.PNG"):
        ds = ImageFolderDataset(root)
    assert len(ds) == 10 and ds.pairing["skipped"] == [root / "lot_a" / "0999_label.PNG"]
    with pytest.warns(UserWarning):
        code, out, _ = _cli(["inspect", "--dataset", "folder", "--root", str(root)], capsys)
    assert code == 0 and "10 images in 2 classes, 4 defective, 10 masks" in out and "paired 10 masks" in out
    # Suffixed masks beside PNG images (the DAGM naming) pair too, and select/features see no mask.
    (root / "lot_a" / "0999_label.PNG").unlink()
    dagm_like = tmp_path / "dagm_like" / "Class1"
    dagm_like.mkdir(parents=True)
    for s in [*clean, *bad]:
        shutil.copy(s.path, dagm_like / s.path.name)
        if s.defect:
            shutil.copy(s.mask, dagm_like / s.mask.name)
    ds = get_dataset("folder", dagm_like.parent)
    assert len(ds) == 10 and sum(s.defect for s in ds.samples) == 4 and ds.summary()["masks"] == 4


def test_pair_masks_in_folder_rules():
    p = [
        Path(n)
        for n in ("a.jpg", "a.png", "b.PNG", "b_GT.png", "c.png", "c_mask.bmp", "d_label.png", "e.tif")
    ]
    found = pair_masks_in_folder(p)
    assert found.images == [Path("a.jpg"), Path("b.PNG"), Path("c.png"), Path("e.tif")]
    assert found.masks == {
        Path("a.jpg"): Path("a.png"),
        Path("b.PNG"): Path("b_GT.png"),
        Path("c.png"): Path("c_mask.bmp"),
    }
    assert [s[0] for s in found.skipped] == [Path("d_label.png")]
    # Two PNGs of one stem are two images; a JPEG with a suffixed mask keeps its same-stem PNG as an image.
    found = pair_masks_in_folder(
        [Path("x.png"), Path("x.bmp"), Path("y.jpg"), Path("y.png"), Path("y_mask.png")]
    )
    assert found.masks == {Path("y.jpg"): Path("y_mask.png")}
    assert found.images == [Path("x.bmp"), Path("x.png"), Path("y.jpg"), Path("y.png")]


# --- the synth commands ---------------------------------------------------------------------------------


def test_cli_synth_mvtec_and_kolektor(tmp_path, capsys):
    out = tmp_path / "mv"
    argv = ["synth", "mvtec", "--out", str(out), "--classes", "3", "--train-images", "2", "--size", "32"]
    code, text, _ = _cli(argv, capsys)
    assert code == 0 and "--dataset mvtec" in text
    ds = MVTecAD(out)
    assert ds.categories == ["crossed_fine_grain", "oriented_grain", "vertical_fibres"] and len(ds) == 3 * 10
    again = make_synthetic_mvtec(tmp_path / "again", classes=3, train_images=2, rendering=Rendering(size=32))
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((out / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert _cli(argv, capsys)[0] == 2  # not empty
    for layout, extra, count in (
        ("ksdd", ["--items", "2", "--parts", "3"], 6),
        ("ksdd2", ["--images-per-split", "3"], 6),
    ):
        k = tmp_path / layout
        code, _, _ = _cli(
            ["synth", "kolektor", "--out", str(k), "--layout", layout, "--size", "32", *extra], capsys
        )
        assert code == 0 and len(KolektorSDD(k)) == count
    _one_line_error(
        ["synth", "kolektor", "--out", str(tmp_path / "z"), "--layout", "ksdd2", "--items", "2"],
        capsys,
        "--items",
    )
    _one_line_error(
        ["synth", "kolektor", "--out", str(tmp_path / "z"), "--layout", "ksdd3"], capsys, "--layout"
    )
    _one_line_error(
        ["synth", "mvtec", "--out", str(tmp_path / "z"), "--test-defective", "-1"], capsys, "--test-defective"
    )
    assert not (tmp_path / "z").exists() and not (tmp_path / "z.partial").exists()


def test_cli_inspect_each_layout_writes_group_and_split(tmp_path, synthetic_mvtec, capsys):
    k1 = make_synthetic_kolektor(tmp_path / "k1", KsddLayout(items=2, parts=2), rendering=Rendering(size=32))
    k2 = make_synthetic_kolektor(
        tmp_path / "k2", Ksdd2Layout(images_per_split=2), rendering=Rendering(size=32)
    )
    for dataset, root, extra, images in (
        ("mvtec", synthetic_mvtec, ["--classes", "vertical_fibres", "--split", "test"], 5),
        ("kolektor", k1, [], 4),
        ("kolektor", k2, ["--split", "train"], 2),
    ):
        out = tmp_path / f"{dataset}-{root.name}.json"
        code, text, err = _cli(
            ["inspect", "--dataset", dataset, "--root", str(root), *extra, "--out", str(out)], capsys
        )
        assert code == 0, err
        assert f"{images} images" in text
        data = json.loads(out.read_text())
        assert len(data["samples"]) == images
        assert all(r["group"] and "split" in r for r in data["samples"])
    assert {r["split"] for r in data["samples"]} == {"train"}
    _one_line_error(
        ["inspect", "--dataset", "kolektor", "--root", str(k1), "--masks", "x"],
        capsys,
        "--masks",
        "'kolektor'",
    )


# --- one reading of the same data (issue 28) --------------------------------------------------------


def test_an_empty_mask_means_defect_free_in_every_reader(tmp_path, real):
    """The same four real defective images, one of them given an empty mask: the mask decides in `folder`,
    `pairs` and in MVTec's defect folders alike, and each reader warns how many masks were empty."""
    clean, bad, _ = real
    category = _mvtec_from_real(tmp_path / "mv", real)
    blank = bad[0].path.stem
    _zeros_like(bad[0].path, category / "ground_truth" / "defect" / f"{blank}_mask.png")
    folder = tmp_path / "folder" / "defect"
    folder.mkdir(parents=True)
    for s in bad:
        shutil.copy(s.path, folder / s.path.name)
        shutil.copy(
            category / "ground_truth" / "defect" / f"{s.path.stem}_mask.png",
            folder / f"{s.path.stem}_mask.png",
        )
    for s in clean[:2]:
        shutil.copy(s.path, folder / s.path.name)
    with pytest.warns(UserWarning, match="1 of 4 masks are empty"):
        mvtec = MVTecAD(tmp_path / "mv", split="test")
    with pytest.warns(UserWarning, match="1 of 4 masks are empty"):
        tree = ImageFolderDataset(tmp_path / "folder")
    with pytest.warns(UserWarning, match="1 of 4 masks are empty"):
        pairs = ImageMaskPairs(folder)
    defective = [sorted(s.path.stem for s in ds.samples if s.defect) for ds in (mvtec, tree, pairs)]
    assert defective[0] == defective[1] == defective[2] and len(defective[0]) == 3
    for ds in (mvtec, tree, pairs):
        (empty,) = [s for s in ds.samples if s.path.stem == blank]
        assert empty.defect is False and empty.target == 0
        assert sum(bool(s.defect) for s in ds.samples) == 3


def test_a_class_value_mask_with_a_background_of_one_warns(tmp_path, real):
    """Masks saved as class values 1 (background) / 2 (defect): every pixel is non-zero, so under the 0/1 rule
    every pixel is a defect; the reader says so instead of reporting every image defective in silence."""
    _, bad, truth = real
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for s in bad:
        shutil.copy(s.path, images / s.path.name)
        Image.fromarray(np.where(truth[s.path.stem], 2, 1).astype(np.uint8)).save(
            masks / f"{s.path.stem}.png"
        )
    with pytest.warns(UserWarning, match=r"all 4 masks mark more than 90% .*values \[1, 2\]"):
        ImageMaskPairs(images, masks=masks, mask_suffix="")


def test_foreign_masks_and_class_folder_trees_get_a_clear_word(tmp_path, real, capsys):
    _, bad, _ = real
    images, mats = tmp_path / "images", tmp_path / "mats"
    images.mkdir()
    mats.mkdir()
    for s in bad:
        shutil.copy(s.path, images / s.path.name)
        (mats / f"{s.path.stem}.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(DataonomyError, match=r"holds \.mat masks \(MATLAB arrays\).*save them as PNG"):
        ImageMaskPairs(images, masks=mats)
    tree = tmp_path / "tree"
    for cls in ("crack", "scratch"):
        (tree / cls).mkdir(parents=True)
        shutil.copy(bad[0].path, tree / cls / bad[0].path.name)
    with pytest.raises(DataonomyError, match=r"holds folders of images \(crack, scratch\).*--format folder"):
        ImageMaskPairs(tree)
