"""transfer finetune --fit-machine (the default): the training crop from the set's image sizes and the batch from
the memory a training image takes on this machine, for options the user did not give, recorded in config.json."""

from __future__ import annotations

import json

import pytest
import torch

from dataonomy.cli_utils import run_app
from transfer import sizing
from transfer.cli import app
from transfer.segdec import build_segdec


def test_crop_is_capped_per_device_and_a_multiple_of_the_output_stride():
    assert sizing.choose_crop(512, 16, 256) == 256
    assert sizing.choose_crop(200, 16, 256) is None  # every image under the cap: whole images
    assert sizing.choose_crop(300, 16, 250) == 240
    assert sizing.choose_crop(1000, 8, 512) == 512


def test_batch_is_what_fits_in_the_memory_share_within_bounds():
    mb = 2**20
    assert sizing.choose_batch(100 * mb, 0, 2000 * mb) == 10  # half of 2000 MB at 100 MB an image
    assert sizing.choose_batch(100 * mb, 500 * mb, 2000 * mb) == 5  # after the weights' share
    assert sizing.choose_batch(100 * mb, 0, 10 * mb) == 2  # never below 2
    assert sizing.choose_batch(1 * mb, 0, 100_000 * mb) == 32  # never above the product's default


def test_activation_bytes_grow_with_the_image_area():
    model = build_segdec("small_cnn", "scratch", 8, 16)
    small, large = sizing.activation_bytes(model, 64), sizing.activation_bytes(model, 128)
    assert small > 3 * 64 * 64 * 4  # more than the input image itself
    assert large / small == pytest.approx(4.0, rel=0.1)
    assert model.training  # left in the mode it was in


def test_less_memory_gives_a_smaller_batch(monkeypatch):
    model = build_segdec("small_cnn", "scratch", 8, 16)
    monkeypatch.setattr(sizing, "available_memory", lambda device: 64 * 2**20)
    sides = [512, 600] * 100  # 200 training images: the memory decides
    tight = sizing.fit_sizes(model, sides, 8, torch.device("cpu"), None, None)
    monkeypatch.setattr(sizing, "available_memory", lambda device: 64 * 2**30)
    roomy = sizing.fit_sizes(model, sides, 8, torch.device("cpu"), None, None)
    assert tight.crop_size == roomy.crop_size == 256 and tight.training_side == 256
    assert 2 <= tight.batch_size < roomy.batch_size == 32
    assert tight.batch_size == sizing.choose_batch(tight.bytes_per_image, tight.fixed_bytes, 64 * 2**20)
    given = sizing.fit_sizes(model, sides, 8, torch.device("cpu"), 128, 4)
    assert (given.crop_size, given.batch_size) == (128, 4)  # what the user gave is kept


def test_a_few_image_set_gets_a_batch_that_leaves_an_epoch_several_steps(monkeypatch):
    """NEU-Seg with 10 training images: the memory's batch of 32 was refused mid-run as larger than the set."""
    model = build_segdec("small_cnn", "scratch", 8, 16)
    monkeypatch.setattr(sizing, "available_memory", lambda device: 64 * 2**30)
    ten = sizing.fit_sizes(model, [200] * 10, 8, torch.device("cpu"), None, None)
    assert ten.batch_size == 2 and ten.capped_by_set  # 10 // 4: five steps an epoch
    assert "10 training images, at least 4 steps an epoch" in ten.line("cpu")
    assert sizing.fit_sizes(model, [200] * 3, 8, torch.device("cpu"), None, None).batch_size == 1
    assert sizing.fit_sizes(model, [200] * 10, 8, torch.device("cpu"), None, 8).batch_size == 8  # given: kept
    assert not sizing.fit_sizes(model, [200] * 400, 8, torch.device("cpu"), None, None).capped_by_set


@pytest.mark.parametrize(
    "extra, expected",
    [
        ([], (256, None)),  # real Class1 is 512 px: CPU crops of 256, a measured batch
        (["--crop-size", "128"], (128, None)),
        (["--no-fit-machine"], (None, 32)),
        (["--crop-size", "96", "--batch-size", "4"], (96, 4)),
    ],
)
def test_finetune_sizes_what_was_not_given(dagm_class1_test, tmp_path, capsys, extra, expected):
    out = tmp_path / "run"
    args = [
        *"finetune --base scratch --arch small_cnn --output-stride 8 --test-fraction 0.2".split(),
        *"--device cpu --no-amp --stop-after-steps 1".split(),
        *["--dagm", str(dagm_class1_test), "--out", str(out), *extra],
    ]
    assert run_app(app, args) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    crop, batch = expected
    assert config["crop_size"] == crop
    if batch is not None:
        assert config["batch_size"] == batch
    else:
        assert 2 <= config["batch_size"] <= 32
    printed = capsys.readouterr().out
    fitted = "--no-fit-machine" not in extra and "--batch-size" not in extra
    assert ("sized for this machine (cpu" in printed) == fitted


@pytest.mark.parametrize(
    "given, steps", [([], "sized"), (["--steps-per-epoch", "3"], 3), (["--batch-size", "2"], None)]
)
def test_a_few_image_set_trains_epochs_of_enough_images(shared_data, tmp_path, capsys, given, steps):
    """Real NEU-Seg images (every one defective), 12 of them: a sized run's epoch sees at least MIN_EPOCH_IMAGES
    images, so early stopping does not end it after a few dozen steps; a given epoch length or batch is kept."""
    import shutil

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for path in sorted((shared_data / "neu-seg" / "images").iterdir())[:12]:
        shutil.copy(path, images / path.name)
        shutil.copy(shared_data / "neu-seg" / "masks" / f"{path.stem}.png", masks / f"{path.stem}.png")
    out = tmp_path / "run"
    args = [
        *"finetune --base scratch --arch small_cnn --output-stride 8 --format pairs --folds 3".split(),
        *"--device cpu --no-amp --stop-after-steps 1".split(),
        *["--data", str(images), "--masks", str(masks), "--out", str(out), *given],
    ]
    assert run_app(app, args) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    if steps == "sized":
        assert config["batch_size"] >= 1
        assert config["steps_per_epoch"] == -(-sizing.MIN_EPOCH_IMAGES // config["batch_size"])
        assert f"(at least {sizing.MIN_EPOCH_IMAGES} images" in capsys.readouterr().out
    else:
        assert config["steps_per_epoch"] == steps
