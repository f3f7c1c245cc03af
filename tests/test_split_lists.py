"""A set published with its own split as lists of file stems (NEU-Seg's splits/{train,val,test}.txt): --split-lists
makes the folds those lists in `transfer split` and `transfer finetune`, and a list that cannot be honoured is a
one-line error naming it."""

from __future__ import annotations

import json
import shutil

import pytest

from dataonomy.cli_utils import run_app
from dataonomy.datasets import SplitSpec
from dataonomy.errors import DataonomyError
from transfer.cli import app
from transfer.data import DefectData, defect_fold


def test_neu_seg_own_split_is_read_as_published(shared_data, tmp_path, capsys):
    neu = shared_data / "neu-seg"
    out = tmp_path / "split.json"
    args = ["split", "--data", str(neu / "images"), "--format", "pairs", "--masks", str(neu / "masks")]
    assert run_app(app, [*args, "--split-lists", str(neu / "splits"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train: 3129 images" in printed and "val: 894 images" in printed and "test: 447 images" in printed
    test_stems = set((neu / "splits" / "test.txt").read_text().split())
    data = DefectData(str(neu / "images"), format="pairs", masks=str(neu / "masks"))
    test = defect_fold(data, SplitSpec("test", split_lists=str(neu / "splits")))
    assert {p.stem for p in (s.path for s in test.samples)} == test_stems
    assert json.loads(out.read_text())  # the split file was written


@pytest.fixture
def twelve(shared_data, tmp_path):
    """12 real NEU-Seg images with their masks, and lists naming 6 / 2 / 3 of them (one unlisted)."""
    images, masks, lists = tmp_path / "images", tmp_path / "masks", tmp_path / "lists"
    for folder in (images, masks, lists):
        folder.mkdir()
    stems = []
    for path in sorted((shared_data / "neu-seg" / "images").iterdir())[:12]:
        shutil.copy(path, images / path.name)
        shutil.copy(shared_data / "neu-seg" / "masks" / f"{path.stem}.png", masks / f"{path.stem}.png")
        stems.append(path.stem)
    for name, part in (("train", stems[:6]), ("val", stems[6:8]), ("test", stems[8:11])):
        (lists / f"{name}.txt").write_text("\n".join(part) + "\n\n")
    return DefectData(str(images), format="pairs", masks=str(masks)), lists, stems


def test_lists_decide_every_fold_and_unlisted_images_are_left_out_with_a_note(twelve):
    data, lists, stems = twelve
    folds = {
        s: defect_fold(data, SplitSpec(s, split_lists=str(lists))) for s in ("train", "val", "test", "all")
    }
    got = {s: sorted(p.path.stem for p in fold.samples) for s, fold in folds.items()}
    assert got["train"] == stems[:6] and got["val"] == stems[6:8] and got["test"] == stems[8:11]
    assert got["all"] == stems[:11]
    assert any("1 images are in none of --split-lists" in n for n in folds["train"].notes)
    # without val.txt, a seeded --val-fraction of train validates
    (lists / "val.txt").unlink()
    train, val = (
        defect_fold(data, SplitSpec(s, val_fraction=0.5, split_lists=str(lists))) for s in ("train", "val")
    )
    assert sorted(p.path.stem for p in train.samples + val.samples) == stems[:6] and len(val.samples) == 3


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda lists: (lists / "test.txt").unlink(), "no test.txt"),
        (lambda lists: (lists / "val.txt").write_text("000001\n"), "000001 is in both train.txt and val.txt"),
        (
            lambda lists: (lists / "test.txt").write_text("nosuchimage\n"),
            "no image of the set is in test.txt",
        ),
    ],
)
def test_a_list_that_cannot_be_honoured_is_a_one_line_error(twelve, spoil, message):
    data, lists, _ = twelve
    spoil(lists)
    with pytest.raises(DataonomyError, match=message):
        defect_fold(data, SplitSpec("train", split_lists=str(lists)))


def test_split_lists_and_folds_are_two_ways_to_cut(twelve, tmp_path, capsys):
    data, lists, _ = twelve
    with pytest.raises(DataonomyError, match="--split-lists and --folds"):
        SplitSpec("train", folds=3, split_lists=str(lists))
    args = [
        "split",
        "--data",
        data.root,
        "--format",
        "pairs",
        "--masks",
        data.masks,
        "--out",
        str(tmp_path / "s.json"),
    ]
    assert run_app(app, [*args, "--split-lists", str(tmp_path / "missing")]) != 0
    assert "--split-lists" in capsys.readouterr().err and not (tmp_path / "s.json").exists()


def test_finetune_saves_the_lists_it_was_cut_by(twelve, tmp_path, capsys):
    data, lists, stems = twelve
    out = tmp_path / "run"
    args = [
        *"finetune --base scratch --arch small_cnn --output-stride 8 --format pairs --device cpu --no-amp".split(),
        *"--stop-after-steps 1 --batch-size 2".split(),
        *["--data", data.root, "--masks", data.masks, "--split-lists", str(lists), "--out", str(out)],
    ]
    assert run_app(app, args) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["split_lists"] == str(lists.resolve())
