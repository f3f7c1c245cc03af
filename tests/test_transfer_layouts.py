"""Every transfer command on every defect-set layout: real DAGM Class1 images (and their masks) written as MVTec AD,
KolektorSDD, KolektorSDD2, image/mask pairs, anomalib's Folder trio and class folders with masks beside the
images, then split -> finetune -> evaluate -> localize -> export through the CLI, as a user with their own folders
runs them (no conversion to DAGM's layout)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataonomy.cli_utils import run_app
from dataonomy.datasets import DAGM, SplitSpec
from transfer.cli import app as transfer_app
from transfer.data import DefectData, defect_fold

SIZE = 96  # real 512 px images, scaled down: the commands' behaviour, not the detector's quality, is tested
N_CLEAN, N_DEFECT = 12, 8


@pytest.fixture(scope="module")
def real(dagm_class1_test):
    """(name, image, mask or None) for 12 clean and 8 defective real Class1 images at SIZE px."""
    ds = DAGM(dagm_class1_test)
    clean = [s for s in ds.samples if not s.defect][:N_CLEAN]
    bad = [s for s in ds.samples if s.defect][:N_DEFECT]
    out = []
    for s in clean + bad:
        image = Image.open(s.path).convert("L").resize((SIZE, SIZE), Image.BILINEAR)
        mask = None
        if s.defect:
            mask = (
                np.asarray(Image.open(s.mask).convert("L").resize((SIZE, SIZE), Image.NEAREST)) > 127
            ).astype(np.uint8) * 255
            assert mask.any()
        out.append((s.path.stem, image, mask))
    return out


def _save_mask(mask: np.ndarray | None, path: Path) -> None:
    Image.fromarray(mask if mask is not None else np.zeros((SIZE, SIZE), np.uint8)).save(path)


def _mvtec(root: Path, real) -> tuple[Path, list[str], dict]:
    category = root / "tiles"
    for sub in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (category / sub).mkdir(parents=True)
    clean = [r for r in real if r[2] is None]
    for j, (name, image, mask) in enumerate(real):
        if mask is None:
            image.save(category / ("train" if j < len(clean) // 2 else "test") / "good" / f"{name}.png")
        else:
            image.save(category / "test" / "scratch" / f"{name}.png")
            _save_mask(mask, category / "ground_truth" / "scratch" / f"{name}_mask.png")
    return root, ["--format", "mvtec", "--folds", "2"], {"tiles/good", "tiles/scratch"}


def _ksdd(root: Path, real) -> tuple[Path, list[str], dict]:
    for j, (_, image, mask) in enumerate(real):  # PartJ is real[j]
        item = root / f"kos{j % 4 + 1:02d}"
        item.mkdir(parents=True, exist_ok=True)
        image.save(item / f"Part{j}.jpg", quality=95)
        _save_mask(mask, item / f"Part{j}_label.bmp")
    return root, ["--format", "kolektor", "--folds", "2"], {f"kos{k:02d}" for k in range(1, 5)}


def _ksdd2(root: Path, real) -> tuple[Path, list[str], dict]:
    # The set's own split: half of each kind in train, half in test (train has defects: no --folds needed).
    for j, (_, image, mask) in enumerate(real):  # 1000J (10000 + j) is real[j]
        split = root / ("train" if j % 2 == 0 else "test")
        split.mkdir(parents=True, exist_ok=True)
        image.save(split / f"{10000 + j}.png")
        _save_mask(mask, split / f"{10000 + j}_GT.png")
    return root, ["--format", "kolektor"], {"KolektorSDD2"}


def _pairs(root: Path, real) -> tuple[Path, list[str], dict]:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name, image, mask in real:
        image.save(root / "images" / f"{name}.png")
        if mask is not None:  # a clean image has no mask at all
            _save_mask(mask, root / "labels" / f"{name}_label.png")
    args = ["--format", "pairs", "--masks", str(root / "labels"), "--mask-suffix", "_label", "--folds", "2"]
    return root / "images", args, {"images"}


def _anomalib(root: Path, real) -> tuple[Path, list[str], dict]:
    for sub in ("good", "bad", "masks"):
        (root / sub).mkdir(parents=True)
    for name, image, mask in real:
        image.save(root / ("good" if mask is None else "bad") / f"{name}.png")
        if mask is not None:
            _save_mask(mask // 255, root / "masks" / f"{name}.png")  # 0/1 masks: the rule reads them too
    args = ["--format", "pairs", "--normal-dir", "good", "--abnormal-dir", "bad", "--mask-dir", "masks"]
    return root, [*args, "--folds", "2"], {f"{root.name}/good", f"{root.name}/bad"}


def _folder(root: Path, real) -> tuple[Path, list[str], dict]:
    for sub in ("ok", "ng"):
        (root / sub).mkdir(parents=True)
    for name, image, mask in real:
        folder = root / ("ok" if mask is None else "ng")
        image.convert("RGB").save(folder / f"{name}.jpg", quality=95)
        if mask is not None:
            _save_mask(mask, folder / f"{name}.png")  # a PNG beside its JPEG: the JPEG's mask
    return root, ["--format", "folder", "--folds", "2"], {"ok", "ng"}


LAYOUTS = {
    "mvtec": _mvtec,
    "ksdd": _ksdd,
    "ksdd2": _ksdd2,
    "pairs": _pairs,
    "anomalib": _anomalib,
    "folder": _folder,
}


def _run(argv: list[str], capsys) -> str:
    code = run_app(transfer_app, argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_finetune_evaluate_localize_export_on_each_layout(layout, real, tmp_path, capsys):
    data, args, groups = LAYOUTS[layout](tmp_path / layout, real)
    data_args = ["--data", str(data), *args]

    # split: what fine-tuning will read, exactly (every image once, flags and masks as written).
    _run(["split", *data_args, "--out", str(tmp_path / "split.json")], capsys)
    folds = json.loads((tmp_path / "split.json").read_text())["folds"]
    listed = [r for split in folds.values() for r in split]
    assert len(listed) == N_CLEAN + N_DEFECT and len({r["path"] for r in listed}) == len(listed)
    assert sum(r["defect"] for r in listed) == N_DEFECT
    assert {r["group"] for r in listed} == groups
    source = DefectData(str(data), **_source_fields(args))
    truth = {name: mask for name, _, mask in real}
    test_fold = defect_fold(source, SplitSpec("test", folds=2 if "--folds" in args else None))
    for i, s in enumerate(test_fold.samples):
        stem = s.path.stem  # Kolektor names: PartJ / 1000J are real[j]
        name = (
            real[int(stem[4:])][0]
            if layout == "ksdd"
            else real[int(stem) - 10000][0]
            if layout == "ksdd2"
            else stem
        )
        mask = test_fold.mask(i)
        assert mask.shape == (SIZE, SIZE) and s.defect == (truth[name] is not None)
        np.testing.assert_array_equal(
            mask, truth[name] > 0 if truth[name] is not None else np.zeros_like(mask)
        )

    run = tmp_path / "run"
    _run(
        [
            "finetune", "--base", "scratch", "--arch", "small_cnn", *data_args, "--out", str(run),
            "--epochs", "1", "--batch-size", "4", "--output-stride", "8", "--head-channels", "8",
            "--device", "cpu", "--no-amp",
        ],
        capsys,
    )  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == str(data.resolve()) and config["format"] == args[1]

    out = _run(["evaluate", "--model", str(run), "--device", "cpu", "--no-errors"], capsys)
    report = json.loads((run / "eval_test.json").read_text())
    assert report["format"] == args[1] and f"({args[1]})" in out
    rows = {row["group"] for row in report["stored_threshold"]["rows"]} - {"all"}
    assert rows and rows <= groups  # the layout's own groups, not DAGM classes
    assert len(report["predictions"]) == len(folds["test"])

    loc = tmp_path / "loc"
    _run(["localize", "--model", str(run), "--out", str(loc), "--limit", "4", "--device", "cpu"], capsys)
    loc_report = json.loads((loc / "localize.json").read_text())
    assert len(loc_report["images"]) == 4 and loc_report.get("metrics") is not None
    # --limit spreads over the groups (the first 4 by name would often be one defect type).
    test_groups = {r["group"] for r in folds["test"]}
    assert len({r["group"] for r in loc_report["images"]}) == min(len(test_groups), 4)
    assert len(list((loc / "overlays").glob("*.png"))) == 4

    onnx = tmp_path / "model.onnx"
    _run(["export", "--model", str(run), "--onnx", str(onnx), "--images", "3"], capsys)
    assert onnx.is_file() and onnx.stat().st_size > 0


def _source_fields(args: list[str]) -> dict:
    names = {
        "--format": "format", "--masks": "masks", "--mask-suffix": "mask_suffix", "--normal-dir": "normal_dir",
        "--abnormal-dir": "abnormal_dir", "--mask-dir": "mask_dir",
    }  # fmt: skip
    out = {}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in names:
            out[names[flag]] = value
    return out


@pytest.mark.parametrize("layout", ["anomalib", "ksdd", "mvtec", "pairs"])
def test_select_reads_each_layout_as_its_target(layout, real, tmp_path, capsys):
    # `dataonomy select --target <format>` with the same folder options as the transfer commands; the pool
    # is the ImageNet-1k classifier, so only the 20 target images are embedded.
    from dataonomy.cli import app as dataonomy_app
    from dataonomy.manifest import read_manifest

    data, args, _ = LAYOUTS[layout](tmp_path / layout, real)
    fmt = args[1]
    options = [a for pair in zip(args[2::2], args[3::2], strict=True) if pair[0] != "--folds" for a in pair]
    out = tmp_path / "m.json"
    argv = [
        "select", "--target", fmt, "--target-root", str(data), *options, "--k", "5",
        "--backbone", "efficientnet_lite0", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
        "--num-workers", "0",
    ]  # fmt: skip
    code = run_app(dataonomy_app, argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    m = read_manifest(out)
    assert m["target"]["images"] == N_CLEAN + N_DEFECT and len(m["selected"]) == 5
    assert m["parameters"]["target"] == fmt
    for flag, value in zip(options[::2], options[1::2], strict=True):  # every folder option is recorded
        assert m["parameters"]["target_" + flag[2:].replace("-", "_")] == value


# ------------------------------------------------------------------ images of different sizes in one set (segdec)

SHAPES = [(96, 96), (64, 96), (96, 72), (80, 80)]  # (height, width), cycled over the 20 images


def _mixed_pairs(root: Path, real) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for j, (name, image, mask) in enumerate(real):
        height, width = SHAPES[j % len(SHAPES)]
        image.resize((width, height), Image.BILINEAR).save(root / "images" / f"{name}.png")
        if mask is not None:
            small = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
            assert small.any()
            Image.fromarray(small).save(root / "masks" / f"{name}_mask.png")
    return root / "images"


def test_mixed_sizes_train_padded_score_by_size_and_map_each_image_at_its_own_size(real, tmp_path, capsys):
    from transfer.checkpoint import load_model
    from transfer.data import DefectData, defect_fold
    from transfer.evaluate import image_scores

    images = _mixed_pairs(tmp_path / "mixed", real)
    data_args = [
        "--data",
        str(images),
        "--format",
        "pairs",
        "--masks",
        str(images.parent / "masks"),
        "--folds",
        "2",
    ]
    common = ["--base", "scratch", "--arch", "small_cnn", *data_args, "--epochs", "1", "--batch-size", "4",
              "--output-stride", "8", "--head-channels", "8", "--device", "cpu", "--no-amp"]  # fmt: skip
    native, resized = tmp_path / "native", tmp_path / "resized"
    _run(["finetune", *common, "--out", str(native)], capsys)  # batches of mixed sizes: padded, not refused
    _run(["finetune", *common, "--out", str(resized), "--image-size", "48"], capsys)

    fold = defect_fold(
        DefectData(str(images), format="pairs", masks=str(images.parent / "masks")),
        SplitSpec("test", folds=2),
    )
    for run in (native, resized):
        loaded = load_model(run, "cpu")
        # An image's score does not depend on the images batched with it: one at a time == batched by size.
        one = image_scores(loaded, fold, batch_size=1, progress=False)
        many = image_scores(loaded, fold, batch_size=8, progress=False)
        np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-6)

        loc = tmp_path / f"loc_{run.name}"
        _run(["localize", "--model", str(run), "--out", str(loc), "--device", "cpu"], capsys)
        report = json.loads((loc / "localize.json").read_text())
        assert len(report["images"]) == len(fold)
        for entry in report["images"]:
            heat = np.load(loc / "heatmaps" / f"{entry['name']}.npy")
            with Image.open(entry["image"]) as im:
                assert heat.shape == (im.height, im.width)  # written back at the image's own size
            with Image.open(loc / "masks" / f"{entry['name']}.png") as predicted:
                assert predicted.size == (heat.shape[1], heat.shape[0])
        _run(["evaluate", "--model", str(run), "--device", "cpu", "--no-errors"], capsys)
        assert len(json.loads((run / "eval_test.json").read_text())["predictions"]) == len(fold)


# --------------------------------------------------- every image defective (cracks): decisions from the masks

N_ALL_DEFECTIVE = 16


@pytest.fixture(scope="module")
def cracks(dagm_class1_test, tmp_path_factory):
    """A pairs set of 16 real defective Class1 images at SIZE px, each with its mask: no clean image."""
    root = tmp_path_factory.mktemp("cracks")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for s in [s for s in DAGM(dagm_class1_test).samples if s.defect][:N_ALL_DEFECTIVE]:
        Image.open(s.path).convert("L").resize((SIZE, SIZE), Image.BILINEAR).save(
            root / "images" / s.path.name
        )
        mask = Image.open(s.mask).convert("L").resize((SIZE, SIZE), Image.NEAREST)
        mask.save(root / "masks" / f"{s.path.stem}_mask.png")
    return root


@pytest.mark.parametrize("head, unit", [("segdec", "cell"), ("classify", "patch")])
def test_a_set_without_clean_images_trains_and_decides_from_its_masks(cracks, head, unit, tmp_path, capsys):
    data_args = ["--data", str(cracks / "images"), "--format", "pairs", "--masks", str(cracks / "masks"),
                 "--folds", "2"]  # fmt: skip
    model = (
        ["--output-stride", "8", "--head-channels", "8"]
        if head == "segdec"
        else ["--head", "classify", "--patches", "--patch-size", "32", "--patch-stride", "16"]
    )
    run = tmp_path / "run"
    _run(["finetune", "--base", "scratch", "--arch", "small_cnn", *data_args, *model, "--out", str(run),
          "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-amp"], capsys)  # fmt: skip
    record_decision = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (
        0 < record_decision["val_threshold"] < 1 and record_decision["val_tnr"] == record_decision["val_tnr"]
    )

    out = _run(["evaluate", "--model", str(run), "--device", "cpu", "--no-errors"], capsys)
    report = json.loads((run / "eval_test.json").read_text())
    assert report["unit"] == unit and f"rows count {unit}s" in out
    (everything,) = report["stored_threshold"]["rows"]  # one group: the images folder
    # Cells/patches of both kinds, so TPR, TNR, AP and AUROC are all defined though every image is defective.
    assert 0 < everything["n_defective"] < everything["n"]
    for key in ("tpr", "tnr", "ap", "auroc"):
        assert everything[key] is not None and 0 <= everything[key] <= 1
    assert len(report["predictions"]) == N_ALL_DEFECTIVE // 2 and all(
        p["defect"] for p in report["predictions"]
    )

    loc = tmp_path / "loc"
    _run(["localize", "--model", str(run), "--out", str(loc), "--device", "cpu", "--limit", "4"], capsys)
    assert len(json.loads((loc / "localize.json").read_text())["images"]) == 4


# ------------------------------------------------- the synthetic generator's layouts, end to end (no downloads)

SYNTH = {
    "mvtec": (["--classes", "1", "--train-images", "6", "--test-good", "4", "--test-defective", "10"],
              ["--format", "mvtec", "--folds", "2"]),
    "ksdd": (["--layout", "ksdd", "--items", "4", "--parts", "5", "--defect-fraction", "0.4"],
             ["--format", "kolektor", "--folds", "2"]),
    "ksdd2": (["--layout", "ksdd2", "--images-per-split", "10", "--defect-fraction", "0.4"],
              ["--format", "kolektor"]),
}  # fmt: skip


@pytest.mark.parametrize("layout", sorted(SYNTH))
def test_synth_writes_each_layout_and_every_command_reads_it(layout, tmp_path, capsys):
    from dataonomy.cli import app as dataonomy_app

    write, read = SYNTH[layout]
    command = "mvtec" if layout == "mvtec" else "kolektor"
    root = tmp_path / layout
    assert run_app(dataonomy_app, ["synth", command, "--out", str(root), "--size", "64", *write]) == 0
    capsys.readouterr()
    data_args = ["--data", str(root), *read]
    _run(["split", *data_args, "--out", str(tmp_path / "split.json")], capsys)
    folds = json.loads((tmp_path / "split.json").read_text())["folds"]
    listed = [r for split in folds.values() for r in split]
    pattern = {"mvtec": "*/ground_truth/*/*_mask.png", "ksdd": "kos*/*_label.bmp", "ksdd2": "*/*_GT.png"}[
        layout
    ]
    written = [p for p in root.glob(pattern) if np.asarray(Image.open(p)).any()]  # the defects on disk
    assert (
        len(listed) == len({r["path"] for r in listed})
        and sum(r["defect"] for r in listed) == len(written) > 0
    )
    run = tmp_path / "run"
    _run(["finetune", "--base", "scratch", "--arch", "small_cnn", *data_args, "--out", str(run), "--epochs", "1",
          "--batch-size", "4", "--output-stride", "8", "--head-channels", "8", "--device", "cpu", "--no-amp"],
         capsys)  # fmt: skip
    _run(["evaluate", "--model", str(run), "--device", "cpu", "--no-errors"], capsys)
    report = json.loads((run / "eval_test.json").read_text())
    assert len(report["predictions"]) == len(folds["test"]) and report["format"] == read[1]
    _run(
        ["localize", "--model", str(run), "--out", str(tmp_path / "loc"), "--limit", "3", "--device", "cpu"],
        capsys,
    )
    _run(["export", "--model", str(run), "--onnx", str(tmp_path / "m.onnx"), "--images", "2"], capsys)
    assert (tmp_path / "m.onnx").is_file()
