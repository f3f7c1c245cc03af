"""Dataset readers on the real data in ../shared/data, and every bad-input case."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataonomy.cli import app as dataonomy_app
from dataonomy.cli_utils import run_app
from dataonomy.datasets import DAGM, ImageNet, Sample, Sampling, SplitSpec, get_dataset, list_datasets
from dataonomy.datasets.dagm import Ellipse, rasterize_ellipse
from dataonomy.datasets.options import reader_arguments
from dataonomy.errors import BadImageError, DataonomyError
from dataonomy.wordnet import imagenet_classes, load_wordnet
from transfer.cli import app as transfer_app


def test_registry_names():
    assert {"dagm", "imagenet", "folder"} <= set(list_datasets())
    with pytest.raises(DataonomyError, match="unknown dataset reader"):
        get_dataset("nope", ".")


# --- DAGM on real data -------------------------------------------------------------------------


def test_dagm_class1_test_counts_and_masks(dagm_class1_test):
    ds = get_dataset("dagm", dagm_class1_test)
    assert len(ds) == 575
    defective = [s for s in ds.samples if s.defect]
    assert len(defective) == 71
    assert all(s.mask is not None and s.mask.is_file() for s in defective)
    assert all(s.mask is None for s in ds.samples if not s.defect)
    assert {s.label for s in ds.samples} == {"Class1"}
    # Every defective image is paired with its own 512x512 mask, with defect pixels in it.
    i = next(i for i, s in enumerate(ds.samples) if s.defect)
    m = ds.mask(i)
    assert m.shape == (512, 512) and m.dtype == bool and 0 < m.sum() < m.size
    assert ds.samples[i].mask.name == ds.samples[i].path.stem + "_label.PNG"
    image, target = ds[i]
    assert image.size == (512, 512) and image.mode == "RGB" and target == 1
    clean = next(i for i, s in enumerate(ds.samples) if not s.defect)
    assert ds.mask(clean).sum() == 0


def test_dagm_partial_train_with_external_labels(shared_data):
    for cls in ("Class1", "Class2", "Class4"):
        ds = DAGM(
            shared_data / "dagm" / cls / "Train",
            labels_root=shared_data / "dagm-labels",
            allow_partial=True,
        )
        assert len(ds) == 5
        assert sum(s.defect for s in ds.samples) == 3
        assert all(s.mask.is_file() for s in ds.samples if s.defect)
    # Without allow_partial the mismatch between Labels.txt (575 rows) and disk is an error.
    with pytest.raises(DataonomyError, match="missing on disk"):
        DAGM(shared_data / "dagm" / "Class1" / "Train", labels_root=shared_data / "dagm-labels")
    # Dataset-level root with a class filter reads the Train folders of the chosen classes.
    ds = DAGM(
        shared_data / "dagm",
        classes=[1, "Class4"],
        split="trainval",
        labels_root=shared_data / "dagm-labels",
        allow_partial=True,
    )
    assert sorted({s.label for s in ds.samples}) == ["Class1", "Class4"] and len(ds) == 10


def test_dagm_seeded_stratified_split(dagm_class1_test):
    train = DAGM(dagm_class1_test, split=SplitSpec("train", seed=3))
    val = DAGM(dagm_class1_test, split=SplitSpec("val", seed=3))
    assert len(train) + len(val) == 575
    assert abs(len(val) - 115) <= 2
    assert not {s.path for s in train.samples} & {s.path for s in val.samples}
    # Stratified: the rare defects are shared out in proportion.
    assert abs(sum(s.defect for s in val.samples) - 71 * 0.2) <= 1
    again = get_dataset("dagm", dagm_class1_test, split="val", seed=3)  # the flat options: the same cut
    other = DAGM(dagm_class1_test, split=SplitSpec("val", seed=4))
    assert [s.path for s in again.samples] == [s.path for s in val.samples]
    assert [s.path for s in other.samples] != [s.path for s in val.samples]
    # Three folds carved from one folder cover it exactly once.
    folds = [DAGM(dagm_class1_test, split=SplitSpec(f, test_fraction=0.2)) for f in ("train", "val", "test")]
    paths = [p for f in folds for p in (s.path for s in f.samples)]
    assert len(paths) == len(set(paths)) == 575


def test_dagm_kfold_cross_validation_tests_every_image_once(dagm_class1_test):
    """--folds 3: the three test folds partition Class1/Test, each stratified; train/val split the rest."""
    tests = []
    for fold in range(3):
        parts = {
            split: DAGM(dagm_class1_test, split=SplitSpec(split, folds=3, fold=fold, seed=5))
            for split in ("train", "val", "test")
        }
        paths = {split: {s.path for s in ds.samples} for split, ds in parts.items()}
        assert len(paths["train"]) + len(paths["val"]) + len(paths["test"]) == 575
        assert not (paths["train"] & paths["val"]) and not (paths["test"] & (paths["train"] | paths["val"]))
        assert abs(len(paths["test"]) - 575 / 3) <= 2
        assert abs(sum(parts["test"].targets) - 71 / 3) <= 1  # the rare defects shared out evenly
        tests.append(paths["test"])
    assert set().union(*tests) == {s.path for s in DAGM(dagm_class1_test).samples}
    assert sum(map(len, tests)) == 575
    # Same seed, same parts; another seed, other parts.
    again = get_dataset("dagm", dagm_class1_test, split="test", folds=3, fold=1, seed=5)
    other = DAGM(dagm_class1_test, split=SplitSpec("test", folds=3, fold=1, seed=6))
    assert {s.path for s in again.samples} == tests[1] != {s.path for s in other.samples}
    for kwargs, message in (
        ({"folds": 1}, "--folds 1: must be at least 2"),
        ({"folds": 3, "fold": 3}, r"--fold 3: must be in 0..2"),
        ({"folds": 3, "test_fraction": 0.2}, "--folds and --test-fraction"),
    ):
        with pytest.raises(DataonomyError, match=message):
            DAGM(dagm_class1_test, split=SplitSpec("test", **kwargs))
        with pytest.raises(DataonomyError, match=message):
            get_dataset("dagm", dagm_class1_test, split="test", **kwargs)


Fold = SplitSpec  # a user's alias: what matters is the type, not how the annotation is spelled


class _FoldReader:
    def __init__(self, root: str, split: str | Fold = "all", sampling: Sampling | None = None):
        pass


class _NamedSplitReader:
    def __init__(self, root: str, split: str = "train", sampling: Sampling | None = None):
        pass


def test_reader_arguments_group_split_options_by_the_annotated_type():
    # A user-registered reader whose split takes a SplitSpec (under an alias) gets one built from the flat
    # options; a reader whose split is a plain name gets it as given, and a fold option is refused.
    kwargs = reader_arguments("fold", _FoldReader, {"split": "test", "folds": 3, "fold": 1, "seed": 2})
    assert kwargs == {"split": SplitSpec("test", folds=3, fold=1, seed=2), "sampling": Sampling(seed=2)}
    kwargs = reader_arguments("named", _NamedSplitReader, {"split": "val", "seed": 2})
    assert kwargs == {"split": "val", "sampling": Sampling(seed=2)}
    with pytest.raises(DataonomyError, match="--folds is not an option of the 'named' reader"):
        reader_arguments("named", _NamedSplitReader, {"split": "val", "folds": 3})


def test_dagm_2007_layout_rasterises_ellipses(tmp_path, dagm_class1_test):
    src = sorted(dagm_class1_test.glob("*.PNG"))[:4]
    (tmp_path / "Class1").mkdir()
    (tmp_path / "Class1_def").mkdir()
    for p in src[:2]:
        shutil.copy(p, tmp_path / "Class1" / p.name)
    shutil.copy(src[2], tmp_path / "Class1_def" / "1.png")
    shutil.copy(src[3], tmp_path / "Class1_def" / "2.png")
    (tmp_path / "Class1_def" / "labels.txt").write_text(
        "1\t60.0\t20.0\t0.5\t250.0\t300.0\n2\t10.0\t10.0\t0.0\t100.0\t100.0\n"
    )
    ds = DAGM(tmp_path)
    assert ds.layout == "2007" and len(ds) == 4 and sum(s.defect for s in ds.samples) == 2
    i = next(i for i, s in enumerate(ds.samples) if s.path.name == "2.png")
    m = ds.mask(i)
    # A circle of radius 10: area close to pi r^2, centred at (100, 100).
    assert abs(int(m.sum()) - np.pi * 100) < 15 and m[100, 100] and not m[100, 115]


def test_rasterize_ellipse_rotation():
    m = rasterize_ellipse(101, 101, Ellipse(40, 5, np.pi / 2, 50, 50))
    assert m[10:91, 50].all() and not m[50, 10]  # rotated 90 degrees: long axis is vertical


# --- ImageNet-style pools ----------------------------------------------------------------------


def test_tiny_imagenet_classes_and_seeded_sampling(tiny_imagenet):
    ds = get_dataset("imagenet", tiny_imagenet, images_per_class=10, seed=7)
    assert len(ds.classes) == 202
    assert len(ds) == 2020
    assert all(name and name != wnid for name, wnid in zip(ds.class_names, ds.classes, strict=True))
    assert ds.class_names[ds.classes.index("n01443537")] == "goldfish"
    again = get_dataset("imagenet", tiny_imagenet, images_per_class=10, seed=7)
    assert [s.path for s in again.samples] == [s.path for s in ds.samples]
    other = get_dataset("imagenet", tiny_imagenet, images_per_class=10, seed=8)
    assert [s.path for s in other.samples] != [s.path for s in ds.samples]
    # A class's sample depends only on (seed, wnid): reading fewer classes keeps it.
    sub = get_dataset("imagenet", tiny_imagenet, images_per_class=10, seed=7, classes=["n01443537"])
    assert [s.path for s in sub.samples] == [s.path for s in ds.samples if s.label == "n01443537"]
    index = {w: i for i, (w, _) in enumerate(imagenet_classes())}
    assert ds.imagenet_indices == [index[w] for w in ds.classes]
    image, target = ds[0]
    assert image.size == (64, 64) and image.mode == "RGB" and target == 0


def test_tiny_imagenet_val_split(tiny_imagenet):
    ds = ImageNet(tiny_imagenet, split="val", classes=["n01443537", "n01629819"])
    assert len(ds) == 100 and ds.targets.count(0) == 50


def test_ilsvrc_layout(tmp_path, tiny_imagenet):
    for wnid in ("n01443537", "n01629819"):
        (tmp_path / "train" / wnid).mkdir(parents=True)
        for p in sorted((tiny_imagenet / "train" / wnid / "images").glob("*.JPEG"))[:3]:
            shutil.copy(p, tmp_path / "train" / wnid / p.name)
    ds = get_dataset("imagenet", tmp_path)
    assert ds.layout == "ilsvrc" and len(ds) == 6
    assert ds.class_names == ["goldfish", "European fire salamander"]
    assert ds.imagenet_indices == [1, 25]


def test_folder_reader(tmp_path, dagm_class1_test):
    for cls in ("defect", "ok"):
        (tmp_path / cls).mkdir()
    for p in sorted(dagm_class1_test.glob("*.PNG"))[:3]:
        shutil.copy(p, tmp_path / "ok" / p.name)
    shutil.copy(dagm_class1_test / "0002.PNG", tmp_path / "defect" / "0002.PNG")
    ds = get_dataset("folder", tmp_path, defect_classes=["defect"])
    assert ds.classes == ["defect", "ok"] and len(ds) == 4
    assert [s.defect for s in ds.samples] == [True, False, False, False]


def test_wordnet_ancestors_and_depth():
    wn = load_wordnet()
    goldfish = "n01443537"
    assert wn.name(goldfish) == "goldfish"
    assert wn.root in wn.ancestors(goldfish)
    path = wn.path_to_root(goldfish)
    assert path[0] == goldfish and path[-1] == wn.root and len(path) == wn.depth(goldfish) + 1
    assert "n01440764" in load_wordnet().graph  # tench
    for wnid, _ in imagenet_classes():
        assert wn.depth(wnid) > 0
    d = wn.depth(goldfish)
    assert wn.ancestors_at_depth(goldfish, d) == {goldfish}
    assert all(wn.depth(a) == 3 for a in wn.ancestors_at_depth(goldfish, 3))
    with pytest.raises(DataonomyError, match="unknown WordNet id 'n99999999'"):
        wn.depth("n99999999")


# --- Bad input: one-line errors naming the file, and nothing written --------------------------


def _copy_split(src: Path, dst: Path, ids: list[str]) -> Path:
    """A small Kaggle-layout split with a consistent Labels.txt, from real DAGM files."""
    (dst / "Label").mkdir(parents=True)
    rows = []
    labels = {
        line.split()[2]: line for line in (src / "Label" / "Labels.txt").read_text().splitlines()[1:] if line
    }
    for i in ids:
        shutil.copy(src / f"{i}.PNG", dst / f"{i}.PNG")
        row = labels[f"{i}.PNG"]
        rows.append(row)
        mask = row.split()[4] if len(row.split()) >= 5 else "0"
        if mask != "0":
            shutil.copy(src / "Label" / mask, dst / "Label" / mask)
    (dst / "Label" / "Labels.txt").write_text("1\r\n" + "\r\n".join(rows) + "\r\n")
    return dst


def _cli(app, argv: list[str], capsys) -> tuple[int, str]:
    code = run_app(app, argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _inspect_imagenet(root: Path, out: Path, capsys, *options: str) -> tuple[int, str]:
    """``dataonomy inspect --dataset imagenet --root ROOT OPTIONS --out OUT``: its exit code and stderr."""
    argv = ["inspect", "--dataset", "imagenet", "--root", str(root), *options, "--out", str(out)]
    return _cli(dataonomy_app, argv, capsys)


def _assert_clean_failure(code: int, err: str, out: Path, *needles: str):
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "a temporary file was left behind"


@pytest.fixture()
def small_split(tmp_path, dagm_class1_test) -> Path:
    return _copy_split(dagm_class1_test, tmp_path / "Class1" / "Test", ["0001", "0002", "0003", "0010"])


def test_small_split_reads(small_split):
    ds = DAGM(small_split)
    assert len(ds) == 4 and sum(s.defect for s in ds.samples) == 2


def test_bad_missing_folder(tmp_path, capsys):
    out = tmp_path / "out" / "samples.json"
    code, err = _cli(
        dataonomy_app,
        ["inspect", "--dataset", "dagm", "--root", str(tmp_path / "nope"), "--out", str(out)],
        capsys,
    )
    _assert_clean_failure(code, err, out, str(tmp_path / "nope"), "does not exist")


def test_bad_labels_disagree_with_disk(small_split, capsys):
    out = small_split.parent / "split.json"
    extra = small_split / "0999.PNG"
    shutil.copy(small_split / "0001.PNG", extra)
    code, err = _cli(transfer_app, ["split", "--dagm", str(small_split), "--out", str(out)], capsys)
    _assert_clean_failure(code, err, out, str(extra), "not listed in")
    extra.unlink()
    (small_split / "0003.PNG").unlink()
    code, err = _cli(transfer_app, ["split", "--dagm", str(small_split), "--out", str(out)], capsys)
    _assert_clean_failure(code, err, out, "0003.PNG", "missing on disk")
    # A defective row whose mask file is gone.
    shutil.copy(small_split / "0001.PNG", small_split / "0003.PNG")
    (small_split / "Label" / "0002_label.PNG").unlink()
    code, err = _cli(transfer_app, ["split", "--dagm", str(small_split), "--out", str(out)], capsys)
    _assert_clean_failure(code, err, out, "0002_label.PNG", "missing")


def test_bad_malformed_labels_row(small_split, capsys):
    lf = small_split / "Label" / "Labels.txt"
    lf.write_text(lf.read_text() + "0011\t7\t0011.PNG\t0\t0\r\n")
    out = small_split.parent / "samples.json"
    code, err = _cli(
        dataonomy_app, ["inspect", "--dataset", "dagm", "--root", str(small_split), "--out", str(out)], capsys
    )
    _assert_clean_failure(code, err, out, f"{lf}:6", "flag 0 or 1")


def test_bad_truncated_and_unreadable_images(small_split, capsys, tmp_path):
    img = small_split / "0001.PNG"
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])  # truncated
    ds = DAGM(small_split)  # the listing is fine; decoding the file is what fails
    i = next(i for i, s in enumerate(ds.samples) if s.path == img)
    with pytest.raises(BadImageError, match=r"0001\.PNG: unreadable or truncated image"):
        ds[i]
    out = tmp_path / "samples.json"
    with pytest.warns(UserWarning, match=r"skipped 1 bad file\(s\) of 4"):
        code, err = _cli(
            dataonomy_app,
            ["inspect", "--dataset", "dagm", "--root", str(small_split), "--skip-bad", "--out", str(out)],
            capsys,
        )
    assert code == 0
    assert out.is_file()
    # A file that is not an image at all.
    img.write_text("not a png")
    with pytest.raises(BadImageError, match=r"0001\.PNG: not an image file"):
        DAGM(small_split, sampling=Sampling(skip_bad=False))[i]
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        assert len(DAGM(small_split, sampling=Sampling(skip_bad=True))) == 3


def _damage(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # a text file under an image's name
        path.write_text("this is not a PNG\n")


@pytest.mark.parametrize(
    "file, kind, message",
    [
        ("0001.PNG", "zero-byte", "not an image file"),
        ("0001.PNG", "truncated", "unreadable or truncated image"),
        ("0003.PNG", "text", "not an image file"),
        ("Label/0002_label.PNG", "truncated", "unreadable or truncated image"),
        ("Label/0010_label.PNG", "zero-byte", "not an image file"),
    ],
)
def test_inspect_decodes_every_image_and_mask(small_split, tmp_path, capsys, file, kind, message):
    # Listing the split succeeds (names and Labels.txt agree); only decoding finds the bad file.
    bad = small_split / file
    _damage(bad, kind)
    out = tmp_path / "samples.json"
    argv = ["inspect", "--dataset", "dagm", "--root", str(small_split), "--out", str(out)]
    code, err = _cli(dataonomy_app, argv, capsys)
    _assert_clean_failure(code, err, out, f"{bad}: {message}", "--skip-bad")
    # --skip-bad reports the file and leaves its image out of what inspect vouches for.
    with pytest.warns(UserWarning) as warned:
        code, err = _cli(dataonomy_app, [*argv, "--skip-bad"], capsys)
    assert code == 0 and out.is_file()
    messages = [str(w.message) for w in warned]
    assert any(m.startswith(f"skipping {bad}: {message}") for m in messages)
    assert "skipped 1 bad file(s) of 4" in messages
    import json

    listed = json.loads(out.read_text())["samples"]
    assert len(listed) == 3 and str(bad) not in {r["path"] for r in listed} | {r["mask"] for r in listed}


@pytest.mark.parametrize("kind, message", [("truncated", "truncated"), ("zero-byte", "not an image file")])
def test_inspect_decodes_every_jpeg_of_an_imagenet_pool(tiny_imagenet, tmp_path, capsys, kind, message):
    folder = tmp_path / "train" / "n01443537"
    folder.mkdir(parents=True)
    for src in sorted((tiny_imagenet / "train" / "n01443537" / "images").glob("*.JPEG"))[:3]:
        shutil.copy(src, folder / src.name)
    bad = sorted(folder.iterdir())[1]
    _damage(bad, kind)
    out = tmp_path / "samples.json"
    argv = ["inspect", "--dataset", "imagenet", "--root", str(tmp_path), "--out", str(out)]
    code, err = _cli(dataonomy_app, argv, capsys)
    _assert_clean_failure(code, err, out, str(bad), message)
    with pytest.warns(UserWarning, match=r"skipped 1 bad file\(s\) of 3"):
        code, err = _cli(dataonomy_app, [*argv, "--skip-bad"], capsys)
    import json

    assert code == 0 and json.loads(out.read_text())["summary"]["images"] == 2


def test_inspect_out_naming_a_folder_is_one_line(small_split, tmp_path, capsys):
    folder = tmp_path / "reports"
    folder.mkdir()
    argv = ["inspect", "--dataset", "dagm", "--root", str(small_split), "--out", str(folder)]
    code, err = _cli(dataonomy_app, argv, capsys)
    assert (
        code == 2 and err == f"error: --out {folder}: is a folder, expected a file name such as samples.json"
    )
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "Class1",
        "reports",
    ]


def test_bad_mask_size(small_split, capsys):
    mask = small_split / "Label" / "0002_label.PNG"
    Image.fromarray(np.zeros((256, 256), dtype=np.uint8)).save(mask)
    out = small_split.parent / "samples.json"
    code, err = _cli(
        dataonomy_app, ["inspect", "--dataset", "dagm", "--root", str(small_split), "--out", str(out)], capsys
    )
    _assert_clean_failure(code, err, out, str(mask), "mask is 256x256", "512x512")


def test_bad_unknown_wnid(tmp_path, tiny_imagenet, capsys):
    (tmp_path / "train" / "n12345678").mkdir(parents=True)
    shutil.copy(
        next((tiny_imagenet / "train" / "n01443537" / "images").glob("*.JPEG")),
        tmp_path / "train" / "n12345678",
    )
    out = tmp_path / "samples.json"
    code, err = _cli(
        dataonomy_app,
        ["inspect", "--dataset", "imagenet", "--root", str(tmp_path), "--out", str(out)],
        capsys,
    )
    _assert_clean_failure(code, err, out, "n12345678", "unknown wnid")
    code, err = _inspect_imagenet(tiny_imagenet, out, capsys, "--classes", "n01443537,n00000001")
    _assert_clean_failure(code, err, out, "unknown wnid 'n00000001'")


def test_bad_option_for_reader(tiny_imagenet, tmp_path, capsys):
    out = tmp_path / "x.json"
    code, err = _inspect_imagenet(tiny_imagenet, out, capsys, "--labels-root", "x")
    _assert_clean_failure(code, err, out, "--labels-root", "imagenet")


# --- CLIs ------------------------------------------------------------------------------------


def _commands(app) -> dict:
    """Every command of a typer app, sub-groups included, as {"group sub": click command}."""
    import typer.main

    found = {}

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            found[f"{prefix}{name}"] = cmd
            if hasattr(cmd, "commands"):
                walk(cmd, f"{prefix}{name} ")

    walk(typer.main.get_command(app), "")
    return found


@pytest.mark.parametrize("app", [dataonomy_app, transfer_app], ids=["dataonomy", "transfer"])
def test_help_lists_every_subcommand(app, capsys):
    code = run_app(app, ["--help"])
    out = capsys.readouterr().out
    assert code == 0
    commands = _commands(app)
    assert commands
    for name, cmd in commands.items():
        if " " not in name:
            assert name in out
        assert (cmd.get_short_help_str(limit=200) or "").strip(), f"{name} has no one-line description"
        assert run_app(app, [*name.split(), "--help"]) == 0
        assert "Usage" in capsys.readouterr().out
        # Every option of every (sub)command explains itself.
        for param in cmd.params:
            if param.name != "help" and not (getattr(param, "help", None) or "").strip():
                pytest.fail(f"{name} option {param.name} has no help text")


def test_inspect_writes_sample_list(dagm_class1_test, tmp_path, capsys):
    out = tmp_path / "samples.json"
    code = run_app(
        dataonomy_app, ["inspect", "--dataset", "dagm", "--root", str(dagm_class1_test), "--out", str(out)]
    )
    assert code == 0
    import json

    data = json.loads(out.read_text())
    assert data["summary"]["images"] == 575 and data["summary"]["defective"] == 71
    assert "575 images" in capsys.readouterr().out


def test_dagm_images_per_class_is_seeded(dagm_class1_test):
    a = DAGM(dagm_class1_test, sampling=Sampling(images_per_class=50, seed=1))
    b = get_dataset("dagm", dagm_class1_test, images_per_class=50, seed=1)
    c = DAGM(dagm_class1_test, sampling=Sampling(images_per_class=50, seed=2))
    assert len(a) == 50 and [s.path for s in a.samples] == [s.path for s in b.samples]
    assert [s.path for s in a.samples] != [s.path for s in c.samples]
    with pytest.raises(DataonomyError, match="--images-per-class 0"):
        get_dataset("dagm", dagm_class1_test, images_per_class=0)


def test_split_samples_is_the_dagm_readers_cut_for_any_samples(dagm_class1_test):
    # The generic split (dataonomy.datasets.splits) on the samples of a reader gives DAGM's own folds.
    from dataonomy.datasets.splits import split_samples

    every = DAGM(dagm_class1_test).samples
    for split in ("train", "val", "test"):
        spec = SplitSpec(split, folds=3, fold=1, seed=0)
        cut = split_samples(lambda which: every, spec, own_split=False)
        assert cut == DAGM(dagm_class1_test, split=spec).samples
    # A dataset with its own train/test split: test is its own test files, train/val cut its train files.
    own = [
        Sample(path=Path(f"/x/{part}/{i:03d}.png"), label="a", target=int(i % 4 == 0), defect=i % 4 == 0,
               split=part)
        for part in ("train", "test")
        for i in range(40)
    ]  # fmt: skip

    def read(which):
        return [s for s in own if which == "all" or s.split == which]

    test = split_samples(read, SplitSpec("test"), own_split=True)
    train, val = (
        split_samples(read, SplitSpec(name, val_fraction=0.25), own_split=True) for name in ("train", "val")
    )
    assert {s.split for s in test} == {"test"} and len(test) == 40
    assert {s.split for s in train + val} == {"train"} and (len(train), len(val)) == (30, 10)
    assert sum(s.defect for s in val) == 2 and not set(train) & set(val)
    with pytest.raises(DataonomyError, match="--fold 3: must be in 0..2"):
        split_samples(read, SplitSpec("test", folds=3, fold=3), own_split=True)
