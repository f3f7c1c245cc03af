"""Multi-process pretraining: `torchrun --nproc_per_node=2` (gloo, CPU) matches one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from transfer.config import PretrainConfig
from transfer.models import build_model
from transfer.training import Runtime, train

REPO = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_equal_one_process(tiny_imagenet, tmp_path):
    wnids = (tiny_imagenet / "wnids.txt").read_text().split()[:5]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "schema": "dataonomy.manifest/1",
                "source": {"dataset": "imagenet"},
                "selected": [{"wnid": w} for w in wnids],
            }
        )
    )
    options = {
        "arch": "small_cnn",  # GroupNorm: per-sample normalisation, independent of the per-process batch
        "image_size": 32,
        "images_per_class": 8,
        "epochs": 2,
        "batch_size": 8,  # global: 4 per process under torchrun
        "lr": 0.05,
        "checkpoint_every": 4,
        "seed": 3,
    }
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "transfer.cli", "pretrain", "--manifest", str(manifest), "--source-root", str(tiny_imagenet),
        "--out", str(tmp_path / "ddp"), "--device", "cpu",
    ]  # fmt: skip
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("complete: 2 epochs") == 1  # one report, from rank 0

    config = PretrainConfig(
        manifest=str(manifest.resolve()), source_root=str(tiny_imagenet.resolve()), wnids=wnids, **options
    )
    assert json.loads((tmp_path / "ddp" / "config.json").read_text()) == json.loads(
        json.dumps(config.to_dict())
    )
    train(config, tmp_path / "single", runtime=Runtime(device="cpu", progress=False))

    # Augmentation is on: it is seeded per sample, so both runs see the same crops and flips.
    for name in ("checkpoints/last.pt", "best.pt"):
        ddp = torch.load(tmp_path / "ddp" / name, map_location="cpu", weights_only=True)["model"]
        single = torch.load(tmp_path / "single" / name, map_location="cpu", weights_only=True)["model"]
        assert ddp.keys() == single.keys()
        for key in ddp:
            torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    # ... and they did train: the weights moved away from the seeded initialisation.
    torch.manual_seed(options["seed"])
    initial = build_model("small_cnn", 5).state_dict()
    assert not torch.allclose(initial["classifier.weight"], single["classifier.weight"])

    lines = [
        [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("ddp", "single")
    ]
    assert len(lines[0]) == len(lines[1]) == 2
    for a, b in zip(*lines, strict=True):
        assert a["step"] == b["step"] == 5 * a["epoch"]
        for key in ("train_loss", "train_accuracy", "val_loss", "val_top1"):
            assert abs(a[key] - b[key]) < 1e-4, key


def test_torchrun_trains_a_segdec_model(dagm_class1_test, tmp_path):
    """segdec under torchrun (gloo, CPU): dict targets and two-output models go through DDP; rank 0 reports once
    and writes the model. (Its pixel loss is class-balanced per batch, so the weights depend on how the global
    batch is split across processes: not compared with one process.)"""
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "transfer.cli", "finetune", "--base", "scratch", "--arch", "small_cnn", "--output-stride", "8",
        "--head-channels", "8", "--dagm", str(dagm_class1_test), "--folds", "3", "--fold", "2", "--epochs", "1",
        "--steps-per-epoch", "2", "--batch-size", "4", "--crop-size", "64", "--out", str(tmp_path / "ddp"),
        "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("complete: 1 epochs") == 1
    record = torch.load(tmp_path / "ddp" / "best.pt", map_location="cpu", weights_only=True)
    assert record["head"] == "segdec" and 0 <= record["threshold"] <= 1
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["steps"] == 2
